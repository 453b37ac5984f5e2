"""edgefair.stats against fairlearn, statsmodels and a slow, obviously-correct bootstrap."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (MetricFrame, demographic_parity_difference, equalized_odds_difference,
                               false_positive_rate, selection_rate)
from scipy.special import softmax
from scipy.stats import binomtest, norm
from sklearn import metrics as skm
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.multitest import multipletests
from test_oracles import tango_reference
from threadpoolctl import threadpool_limits

from edgefair import bootstrap as bs
from edgefair import metrics as mt
from edgefair import stats as st
from edgefair.errors import DataError, RecipeError
from edgefair.groups import finest_cells, group_masks


def make_case(seed: int = 0, n: int = 1200, k: int = 2, flip: float = 0.05):
    """Two attributes (every intersection >= 50 rows for n=1200), labels, baseline and step outputs."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["Female", "Male"], n, p=[0.4, 0.6])
    race = rng.choice(["Black", "Other", "White"], n, p=[0.25, 0.15, 0.6])
    y = rng.integers(0, k, n)
    base_logits = rng.normal(0, 1.5, (n, k))
    base_logits[np.arange(n), y] += 1.2 + 0.5 * (sex == "Male")
    step_logits = base_logits + rng.normal(0, flip * 6, (n, k))
    return dict(sex=sex, race=race, y=y, base_out=base_logits, step_out=step_logits,
                base=softmax(base_logits, axis=1), step=softmax(step_logits, axis=1))


def run(case, config=st.StatsConfig(n_boot=200), *, labels=True, paired=True, intersections=True):
    masks = group_masks({"sex": case["sex"], "race": case["race"]}, intersections=intersections)
    return st.evaluate_step(
        masks=masks, probs=case["step"], outputs=case["step_out"], y_true=case["y"] if labels else None,
        base_probs=case["base"] if paired else None, base_outputs=case["base_out"] if paired else None,
        config=config)


def analytic_intervals(case, mask, confidence):
    """Independent references for the widened intervals of one group: Tango's interval for the
    accuracy change (numerical inversion, tests/test_oracles.py) and Clopper-Pearson for the flip
    rate (scipy)."""
    y, pred, base_pred = case["y"][mask], case["step"][mask].argmax(1), case["base"][mask].argmax(1)
    n = int(mask.sum())
    lost = int(((base_pred == y) & (pred != y)).sum())
    gained = int(((base_pred != y) & (pred == y)).sum())
    low, high = tango_reference(lost, gained, n, confidence)  # net loss; the accuracy change is its negative
    cp = binomtest(int((pred != base_pred).sum()), n).proportion_ci(confidence_level=confidence, method="exact")
    return {"accuracy_delta": (-high, -low), "flip_rate": (cp.low, cp.high)}


def assert_widened(group, analytic):
    """A widened interval is exactly the hull of its bootstrap interval and the analytic one."""
    for name, (a_lo, a_hi) in analytic.items():
        b_lo, b_hi = group[f"{name}_ci_bootstrap"]
        assert group[f"{name}_ci"] == pytest.approx([min(b_lo, a_lo), max(b_hi, a_hi)], abs=1e-9), name


@pytest.fixture(scope="module")
def case():
    return make_case()


@pytest.fixture(scope="module")
def result(case):
    return run(case)


# --- config and exact tests -------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_boot": -1}, st.N_BOOT_ERROR.format(value=-1)),
    ({"n_boot": 10.0}, st.N_BOOT_ERROR.format(value=10.0)),
    ({"confidence": 1.0}, st.CONFIDENCE_ERROR.format(value=1.0)),
    ({"seed": -3}, st.SEED_ERROR.format(value=-3)),
    ({"min_group_size": 0}, st.MIN_GROUP_SIZE_ERROR.format(value=0)),
    ({"n_bins": True}, st.N_BINS_ERROR.format(value=True)),
    ({"positive_label": -1}, st.POSITIVE_LABEL_ERROR.format(value=-1)),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(RecipeError, match=re.escape(message)):
        st.StatsConfig(**kwargs)


@pytest.mark.parametrize(("lost", "gained"), [(0, 0), (0, 1), (1, 0), (3, 3), (12, 2), (2, 30), (250, 199)])
def test_mcnemar_matches_statsmodels(lost, gained):
    table = [[10, lost], [gained, 5]]
    assert st.mcnemar_exact(lost, gained) == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12)


@pytest.mark.parametrize(("lost", "gained"), [(0, 0), (1, 0), (0, 4), (5, 5), (40, 10), (3, 20)])
def test_one_sided_mcnemar_matches_scipy_binomtest(lost, gained):
    expected = 1.0 if lost + gained == 0 else binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue
    assert st.mcnemar_exact(lost, gained, alternative="drop") == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match=re.escape(st.ALTERNATIVE_ERROR.format(value="less"))):
        st.mcnemar_exact(lost, gained, alternative="less")  # type: ignore[arg-type]


def test_holm_matches_statsmodels():
    p = np.random.default_rng(0).uniform(0, 0.1, 17).tolist() + [1.0, 0.0, 0.02, 0.02]
    assert st.holm(p) == pytest.approx(multipletests(p, method="holm")[1].tolist())
    assert st.holm([]) == []


# --- point metrics vs fairlearn MetricFrame ---------------------------------------------------


def fairlearn_frame(case, scope: str, probs):
    pred = probs.argmax(1)
    cols = scope.split("&")
    sf = pd.DataFrame({c: case[c] for c in cols})
    metrics = {
        "accuracy": skm.accuracy_score, "balanced_accuracy": skm.balanced_accuracy_score,
        "tpr": skm.recall_score, "fpr": false_positive_rate, "precision": skm.precision_score,
        "f1": skm.f1_score, "selection_rate": selection_rate,
    }
    frame = MetricFrame(metrics=metrics, y_true=case["y"], y_pred=pred, sensitive_features=sf)
    return frame, sf, pred


def key_of(scope: str, index) -> str:
    values = index if isinstance(index, tuple) else (index,)
    return "&".join(f"{c}={v}" for c, v in zip(scope.split("&"), values))


@pytest.mark.parametrize("scope", ["sex", "race", "sex&race"])
def test_groups_and_disparity_match_fairlearn(case, result, scope):
    frame, sf, pred = fairlearn_frame(case, scope, case["step"])
    disparity = result["disparity"][scope]
    assert disparity["excluded"] == []
    for index, row in frame.by_group.iterrows():
        group = result["groups"][key_of(scope, index)]
        assert group["status"] == "ok"
        for name in frame.by_group.columns:
            assert group[name] == pytest.approx(row[name], abs=1e-12), (index, name)
    for name, diff in frame.difference().items():
        assert disparity[name]["gap"] == pytest.approx(diff, abs=1e-12)
        assert disparity[name]["min_ratio"] == pytest.approx(frame.ratio()[name], abs=1e-12)
        best = frame.by_group[name].idxmin() if name == "fpr" else frame.by_group[name].idxmax()
        assert disparity[name]["best_group"] == key_of(scope, best)
    assert disparity["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(case["y"], pred, sensitive_features=sf))
    assert disparity["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(case["y"], pred, sensitive_features=sf))


def test_overall_and_calibration_fields(case, result):
    overall = result["overall"]
    y, p = case["y"], case["step"]
    assert overall["n"] == len(y)
    assert overall["accuracy"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert overall["brier"] == pytest.approx(skm.brier_score_loss(y, p[:, 1]))
    assert overall["nll"] == pytest.approx(skm.log_loss(y, p))
    assert overall["ece"] == pytest.approx(mt.ece(p, y))
    female = case["sex"] == "Female"
    group = result["groups"]["sex=Female"]
    assert group["ece"] == pytest.approx(mt.ece(p[female], y[female]))
    assert group["reliability"] == mt.reliability(p[female], y[female])
    delta = mt.ece(p[female], y[female]) - mt.ece(case["base"][female], y[female])
    assert group["ece_delta"] == pytest.approx(delta)


def test_compression_effects_by_hand(case, result):
    y, pred, base_pred = case["y"], case["step"].argmax(1), case["base"].argmax(1)
    mask = (case["sex"] == "Male") & (case["race"] == "Black")
    group = result["groups"]["sex=Male&race=Black"]
    flips = pred != base_pred
    assert group["flip_rate"] == pytest.approx(flips[mask].mean())
    assert group["agreement"] == pytest.approx(1 - flips[mask].mean())
    assert group["flip_share_ratio"] == pytest.approx((flips[mask].sum() / flips.sum()) / mask.mean())
    acc = lambda pr: (pr[mask] == y[mask]).mean()  # noqa: E731
    assert group["accuracy_delta"] == pytest.approx(acc(pred) - acc(base_pred))
    lost = int(((base_pred == y) & (pred != y))[mask].sum())
    gained = int(((base_pred != y) & (pred == y))[mask].sum())
    assert (group["lost_correct"], group["gained_correct"]) == (lost, gained)
    assert group["mcnemar_p"] == pytest.approx(mcnemar([[0, lost], [gained, 0]], exact=True).pvalue)
    assert not any(k.endswith("_holm") for k in group)  # decisions (and their corrections) are the gates'
    cos = (case["step_out"] * case["base_out"]).sum(1) / (
        np.linalg.norm(case["step_out"], axis=1) * np.linalg.norm(case["base_out"], axis=1))
    assert group["cosine_mean"] == pytest.approx(cos[mask].mean())
    assert group["cosine_min"] == pytest.approx(cos[mask].min())


def test_gap_growth_point_value(case, result):
    y, base_pred, pred = case["y"], case["base"].argmax(1), case["step"].argmax(1)
    accs = [[(pr[case["sex"] == s] == y[case["sex"] == s]).mean() for s in ("Female", "Male")]
            for pr in (pred, base_pred)]
    expected = (max(accs[0]) - min(accs[0])) - (max(accs[1]) - min(accs[1]))
    sex = result["disparity"]["sex"]
    assert sex["accuracy_gap_growth"] == pytest.approx(expected)
    lo, hi = sex["accuracy_gap_growth_ci"]
    assert lo <= sex["accuracy_gap_growth"] <= hi
    # and not merely wide: Male stays ahead, so the growth is (change of Male's accuracy) - (change of
    # Female's), two independent paired differences with variance (p_lost + p_gained - (p_lost -
    # p_gained)^2) / n each; the percentile interval should be about +-1.96 of that standard error
    var = 0.0
    for s in ("Female", "Male"):
        m = case["sex"] == s
        lost = ((base_pred == y) & (pred != y))[m].mean()
        gained = ((base_pred != y) & (pred == y))[m].mean()
        var += (lost + gained - (lost - gained) ** 2) / m.sum()
    assert 0.6 <= (hi - lo) / (2 * norm.ppf(0.975) * math.sqrt(var)) <= 1.4


# --- bootstrap --------------------------------------------------------------------------------


def naive_weights(masks, n, n_boot, seed):
    """(B, N) bootstrap weights as the engine documents them: rows visited by cell then index,
    chunk k of CHUNK_ROWS takes ``poisson_weights(seed, k, ...)``, then every cell's weights are
    rescaled to add up to its size (a cell drawn empty keeps weight 1 per row)."""
    cell_of_row, membership = finest_cells(masks, n)
    order = np.argsort(cell_of_row, kind="stable")
    w = np.zeros((n_boot, n))
    for k, a in enumerate(range(0, n, bs.CHUNK_ROWS)):
        rows = order[a:a + bs.CHUNK_ROWS]
        w[:, rows] = bs.poisson_weights(seed, k, n_boot, len(rows))
    for c in range(membership.shape[1]):
        cell = cell_of_row == c
        total = w[:, cell].sum(axis=1, keepdims=True)
        w[:, cell] = np.where(total > 0, w[:, cell] * cell.sum() / np.where(total > 0, total, 1), 1.0)
    return w


def naive_replicates(masks, case, n_boot, seed):
    """Replicate by replicate, group by group: weighted statistics written out by hand."""
    n = len(case["y"])
    w = naive_weights(masks, n, n_boot, seed)
    y, p, bp = case["y"], case["step"], case["base"]
    edges = np.linspace(0, 1, 16)

    def weighted_ece(weights, probs):
        conf, hit = probs.max(1), probs.argmax(1) == y[mask]
        bins = np.digitize(conf, edges[1:-1], right=True)  # (e_i, e_i+1], as metrics.py documents
        return sum(abs((weights * (conf - hit))[bins == b].sum()) for b in range(15)) / mask.sum()

    out = {key: {"accuracy_delta": [], "ece_delta": [], "flip_rate": [], "ece": []} for key in masks}
    for b in range(n_boot):
        for key, mask in masks.items():
            wb, size = w[b, mask], mask.sum()
            s_hit, b_hit = p[mask].argmax(1) == y[mask], bp[mask].argmax(1) == y[mask]
            out[key]["accuracy_delta"].append((wb * s_hit).sum() / size - (wb * b_hit).sum() / size)
            out[key]["ece"].append(weighted_ece(wb, p[mask]))
            out[key]["ece_delta"].append(weighted_ece(wb, p[mask]) - weighted_ece(wb, bp[mask]))
            out[key]["flip_rate"].append((wb * (p[mask].argmax(1) != bp[mask].argmax(1))).sum() / size)
    return out


def test_bootstrap_matches_a_slow_loop_over_replicates():
    case = make_case(seed=4, n=5000, k=3, flip=0.1)  # > 2 chunks of rows, cells across chunk edges
    masks = group_masks({"sex": case["sex"], "race": case["race"]}, intersections=True)
    config = st.StatsConfig(n_boot=40, seed=11, min_group_size=1, confidence=0.9)
    result = st.evaluate_step(masks=masks, probs=case["step"], outputs=case["step_out"], y_true=case["y"],
                              base_probs=case["base"], base_outputs=case["base_out"], config=config)
    naive = naive_replicates(masks, case, 40, 11)
    for key in masks:
        group = result["groups"][key]
        for name, reps in naive[key].items():
            expected = np.quantile(reps, [0.05, 0.95])
            widened = name in ("accuracy_delta", "flip_rate")  # the raw percentile interval is kept beside
            field = f"{name}_ci_bootstrap" if widened else f"{name}_ci"  # widened ones: assert_widened below
            np.testing.assert_allclose(group[field], expected, atol=1e-9, err_msg=f"{key} {name}")
        assert_widened(group, analytic_intervals(case, masks[key], 0.9))


def test_resampling_keeps_every_cell_size():
    cells = np.array([0, 0, 1, 1, 1, 2, 0, 2, 3])  # cell 3 has one row: drawn empty in about 37% of replicates
    engine = bs.PoissonBootstrap(cells, 4, n_boot=50, seed=0)
    (sums,) = engine.sums([(lambda rows: np.ones((len(rows), 1)), np.array([False]))])
    assert sums.shape == (50, 4, 1)
    assert (sums[:, :, 0] == [3, 3, 2, 1]).all()


def test_poisson_weights_have_poisson_moments_and_a_fixed_key():
    w = bs.poisson_weights(3, 7, 1000, 1000)
    assert w.mean() == pytest.approx(1.0, abs=4 * math.sqrt(1 / w.size))  # Poisson(1): mean 1, variance 1
    assert w.var() == pytest.approx(1.0, abs=4 * math.sqrt(3 / w.size))  # var of s^2: (mu4 - 1) / N = 3 / N
    np.testing.assert_array_equal(bs.poisson_weights(3, 7, 300, 1000), w[:300])  # fewer replicates: a prefix
    assert not np.array_equal(bs.poisson_weights(3, 8, 1000, 1000), w)  # another chunk
    assert not np.array_equal(bs.poisson_weights(4, 7, 1000, 1000), w)  # another seed


def test_seeded_and_reproducible(case):
    a, b = run(case, st.StatsConfig(n_boot=100, seed=5)), run(case, st.StatsConfig(n_boot=100, seed=5))
    c = run(case, st.StatsConfig(n_boot=100, seed=6))
    assert json.dumps(a) == json.dumps(b)
    assert a["groups"]["sex=Female"]["accuracy_delta_ci"] != c["groups"]["sex=Female"]["accuracy_delta_ci"]


@pytest.mark.parametrize("blas_threads", [1, 2])
def test_same_model_twice_has_zero_change_with_zero_width(case, blas_threads):
    same = dict(case, step=case["base"], step_out=case["base_out"])
    with threadpool_limits(limits=blas_threads, user_api="blas"):  # identical replicates whatever BLAS does
        result = run(same)
    z = norm.ppf(0.975)
    for group in [result["overall"], *result["groups"].values()]:
        if group.get("status", "ok") != "ok":
            continue
        assert group["accuracy_delta"] == 0 and group["accuracy_delta_ci_bootstrap"] == [0, 0]
        assert group["flip_rate_ci_bootstrap"] == [0, 0] and group["ece_delta_ci"] == [0, 0]
        # no flips seen is not "no flips possible": the reported intervals keep a real width, and
        # exactly the closed forms for zero counts: Tango's +-z^2 / (n + z^2), and Clopper-Pearson's
        # upper bound 1 - (alpha / 2)^(1 / n) for 0 of n
        n = group["n"]
        half = z * z / (n + z * z)
        assert group["accuracy_delta_ci"] == pytest.approx([-half, half], rel=1e-9)
        assert group["flip_rate_ci"] == pytest.approx([0.0, 1.0 - 0.025 ** (1.0 / n)], rel=1e-9)
        assert group["flip_rate_ci"][0] == 0
        assert group["cosine_min"] == pytest.approx(1.0) and group["rel_error_mean"] == 0
    for group in result["groups"].values():
        assert group["mcnemar_p"] == 1.0 and group["flip_share_ratio"] is None
    for scope in result["disparity"].values():
        for name in ("accuracy_gap", "equalized_odds", "demographic_parity"):
            assert scope[f"{name}_growth"] == 0 and scope[f"{name}_growth_ci"] == [0, 0], name


def test_intervals_cover_the_point_estimates_and_have_sound_widths(case, result):
    masks = group_masks({"sex": case["sex"], "race": case["race"]}, intersections=True)
    z = norm.ppf(0.975)
    y, pred = case["y"], case["step"].argmax(1)
    for key, mask in [("overall", np.ones(len(y), dtype=bool)), *masks.items()]:
        group = result["overall"] if key == "overall" else result["groups"][key]
        for name in ("accuracy", "ece", "accuracy_delta", "flip_rate"):
            lo, hi = group[f"{name}_ci"]
            assert lo <= group[name] <= hi, name
        # widths from independent references, so that a too-wide interval fails too
        n, hit = mask.sum(), pred[mask] == y[mask]
        width = lambda name: group[f"{name}_ci"][1] - group[f"{name}_ci"][0]  # noqa: E731
        acc = hit.mean()
        assert 0.8 <= width("accuracy") / (2 * z * math.sqrt(acc * (1 - acc) / n)) <= 1.2, key  # binomial SE
        # ECE linearised with each bin's sign fixed: a mean of +-(confidence - correct) over the rows
        conf = case["step"][mask].max(1)
        idx = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
        sign = np.sign(np.bincount(idx, weights=conf - hit, minlength=15))[idx]
        assert 0.6 <= width("ece") / (2 * z * np.std(sign * (conf - hit), ddof=1) / math.sqrt(n)) <= 1.3, key
        analytic = analytic_intervals(case, mask, 0.95)
        assert_widened(group, analytic)  # exactly the hull of bootstrap and Tango / Clopper-Pearson
        for name, (a_lo, a_hi) in analytic.items():
            assert width(name) <= 1.25 * (a_hi - a_lo), (key, name)  # the bootstrap adds little


# --- statuses, modes and edge cases ----------------------------------------------------------


def test_small_and_empty_groups_are_insufficient_and_excluded():
    case = make_case(seed=1, n=300)
    case["race"][case["sex"] == "Female"] = "White"  # Female&Black and Female&Other become empty
    result = run(case, st.StatsConfig(n_boot=50, min_group_size=40))
    empty = result["groups"]["sex=Female&race=Black"]
    assert empty == {"n": 0, "status": "insufficient_data", "reason": "n < min_group_size (40)"}
    scope = result["disparity"]["sex&race"]
    assert "sex=Female&race=Black" in scope["excluded"] and "sex=Female&race=White" in scope["groups"]
    ok = [k for k, g in result["groups"].items() if g["status"] == "ok"]
    assert all("paired_counts" in result["groups"][k] for k in ok)


def test_label_free_mode_has_fidelity_only(case):
    result = run(case, labels=False)
    group = result["groups"]["race=Black"]
    assert {"accuracy", "ece", "accuracy_delta", "mcnemar_p", "reliability"}.isdisjoint(group)
    assert {"flip_rate", "flip_rate_ci", "agreement", "cosine_mean", "cosine_min", "rel_error_mean",
            "flip_share_ratio"} <= set(group)
    assert "demographic_parity_difference" not in result["disparity"]["race"]
    assert result["disparity"]["race"]["flip_rate"]["gap"] is not None


def test_baseline_step_has_no_delta_fields(case):
    result = run(case, paired=False)
    fields = set(result["groups"]["sex=Male"]) | set(result["overall"])
    assert not any(f.endswith("_delta") or f.endswith("_delta_ci") for f in fields)
    assert {"flip_rate", "agreement", "mcnemar_p", "flip_share_ratio"}.isdisjoint(fields)
    assert "accuracy_ci" in fields and "ece_ci" in fields
    assert "accuracy_gap_growth" not in result["disparity"]["sex"]


def test_no_bootstrap_gives_null_intervals(case):
    result = run(case, st.StatsConfig(n_boot=0))
    assert result["overall"]["accuracy_delta_ci"] is None
    assert result["groups"]["sex=Male"]["ece_delta_ci"] is None
    assert not any(f.endswith("_ci_simultaneous") for f in result["groups"]["sex=Male"])  # removed: nothing read them
    assert result["disparity"]["sex"]["accuracy_gap_growth_ci"] is None


def test_result_is_plain_json(result):
    def walk(x):
        if isinstance(x, dict):
            assert all(type(k) is str for k in x)
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
        else:
            assert x is None or type(x) in (str, int, float, bool), type(x)
            assert not (type(x) is float and not math.isfinite(x))
    walk(result)
    json.dumps(result, allow_nan=False)


def test_one_class_group_and_identical_predictions():
    case = make_case(seed=2, n=600)
    case["y"][case["race"] == "Other"] = 0  # one class only in this group
    case["step"] = np.tile([0.7, 0.3], (600, 1))  # the step predicts class 0 everywhere
    case["step_out"] = case["step"]
    result = run(case, st.StatsConfig(n_boot=50))
    other = result["groups"]["race=Other"]
    assert other["tpr"] is None and other["tpr_delta"] is None and other["accuracy"] == 1.0
    assert result["overall"]["selection_rate"] == 0.0 and result["overall"]["precision"] is None
    race = result["disparity"]["race"]
    assert race["tpr"]["gap"] == 0.0 and race["precision"]["gap"] is None
    assert race["demographic_parity_difference"] == 0.0
    json.dumps(result, allow_nan=False)


def test_hard_zero_one_probabilities():
    case = make_case(seed=6, n=600)
    hard = np.eye(2)[case["step"].argmax(1)]  # a step that outputs exactly 0 and 1
    result = run(dict(case, step=hard, step_out=hard), st.StatsConfig(n_boot=50))
    json.dumps(result, allow_nan=False)
    male = case["sex"] == "Male"
    g = result["groups"]["sex=Male"]
    y = case["y"][male]
    assert g["nll"] == pytest.approx(skm.log_loss(y, hard[male]))
    assert g["brier"] == pytest.approx(skm.brier_score_loss(y, hard[male][:, 1]))
    assert g["ece"] == pytest.approx(1 - g["accuracy"])  # every row in the last bin, confidence 1
    assert g["reliability"][-1]["count"] == g["n"] and g["reliability"][-1]["confidence"] == 1.0


def test_multiclass_and_single_column_outputs_run():
    case = make_case(seed=3, n=600, k=4)
    result = run(case, st.StatsConfig(n_boot=30, positive_label=2))
    pred = case["step"].argmax(1)
    assert result["overall"]["selection_rate"] == pytest.approx((pred == 2).mean())
    binary = make_case(seed=3, n=600)
    z = binary["step_out"][:, 1] - binary["step_out"][:, 0]
    zb = binary["base_out"][:, 1] - binary["base_out"][:, 0]
    masks = group_masks({"sex": binary["sex"]}, intersections=False)
    r = st.evaluate_step(masks=masks, probs=mt.to_probabilities(z), outputs=z, y_true=binary["y"],
                         base_probs=mt.to_probabilities(zb), base_outputs=zb, config=st.StatsConfig(n_boot=20))
    assert r["overall"]["accuracy"] == pytest.approx(((z > 0) == binary["y"]).mean())
    assert r["groups"]["sex=Male"]["cosine_min"] in (-1.0, 1.0)  # 1-vector rows: sign agreement


def test_input_errors(case):
    masks = group_masks({"sex": case["sex"]}, intersections=False)
    kwargs = dict(masks=masks, probs=case["step"], outputs=None, y_true=case["y"],
                  base_probs=case["base"][:10], base_outputs=case["base_out"][:10], config=st.StatsConfig(n_boot=0))
    with pytest.raises(DataError, match="base_probs has shape"):
        st.evaluate_step(**kwargs)
    with pytest.raises(DataError, match=re.escape(st.BASE_OUTPUTS_ERROR)):
        st.evaluate_step(**{**kwargs, "base_probs": case["base"], "base_outputs": None})
    with pytest.raises(DataError, match=re.escape(st.NO_ROWS_ERROR)):
        st.evaluate_step(**{**kwargs, "masks": {}, "probs": np.zeros((0, 2)), "y_true": np.zeros(0, int),
                            "base_probs": None})


# --- one Evaluator for a run ------------------------------------------------------------------


def test_one_evaluator_for_several_steps_equals_one_off_calls(case):
    """The resamples and the baseline's work are shared, never its state: each step's result is
    what a separate evaluate_step gives, in any order and when a step is compared twice."""
    masks = group_masks({"sex": case["sex"], "race": case["race"]}, intersections=True)
    config = st.StatsConfig(n_boot=150, seed=3)
    other = make_case(seed=9)
    steps = [(case["step"], case["step_out"]), (other["step"], other["step_out"])]
    evaluator = st.Evaluator(masks, case["y"], len(case["y"]), config)
    base = evaluator.model(case["base"], case["base_out"])
    got = [evaluator.compare(evaluator.model(p, o), base) for p, o in steps + steps[:1]]
    for (p, o), result in zip(steps + steps[:1], got):
        expected = st.evaluate_step(masks=masks, probs=p, outputs=o, y_true=case["y"], base_probs=case["base"],
                                    base_outputs=case["base_out"], config=config)
        assert result == expected
    assert evaluator.compare(base) == st.evaluate_step(masks=masks, probs=case["base"], outputs=case["base_out"],
                                                       y_true=case["y"], base_probs=None, base_outputs=None, config=config)


def test_models_from_another_evaluator_are_refused(case):
    masks = group_masks({"sex": case["sex"], "race": case["race"]}, intersections=True)
    reordered = dict(reversed(list(masks.items())))  # same groups, other order: metrics would be swapped
    config = st.StatsConfig(n_boot=0)
    a = st.Evaluator(masks, case["y"], len(case["y"]), config)
    b = st.Evaluator(reordered, case["y"], len(case["y"]), config)
    with pytest.raises(ValueError, match=re.escape(st.FOREIGN_MODEL_ERROR)):
        a.compare(b.model(case["step"], case["step_out"]))
    with pytest.raises(ValueError, match=re.escape(st.FOREIGN_MODEL_ERROR)):
        a.compare(a.model(case["step"], case["step_out"]), b.model(case["base"], case["base_out"]))


def test_widening_twice_keeps_the_bootstrap_interval(result):
    from edgefair.intervals import widen_intervals

    for key, group in result["groups"].items():
        if group["status"] == "ok":
            again = widen_intervals(group, 0.95)
            for field in ("accuracy_delta_ci", "flip_rate_ci", "accuracy_delta_ci_bootstrap", "flip_rate_ci_bootstrap"):
                assert again[field] == group[field], (key, field)


@pytest.mark.parametrize("dense_limit", [0, mt.DENSE_GROUP_ELEMENTS])  # (group, row) pairs, and dense
def test_group_sums_and_minimum_match_masked_numpy(monkeypatch, dense_limit):
    monkeypatch.setattr(mt, "DENSE_GROUP_ELEMENTS", dense_limit)
    rng = np.random.default_rng(5)
    n = 300
    masks = [rng.random(n) < 0.3, np.zeros(n, dtype=bool), np.ones(n, dtype=bool), rng.random(n) < 0.01]
    values = rng.normal(size=(n, 2))
    groups = mt.Groups(masks)
    assert (groups._dense is None) == (dense_limit == 0)
    np.testing.assert_allclose(groups.sums(values[:, 1]), [values[m, 1].sum() for m in masks], atol=1e-12)
    np.testing.assert_allclose(groups.sums(values), [values[m].sum(axis=0) for m in masks], atol=1e-12)
    low = groups.minimum(values[:, 0])
    for m, v in zip(masks, low):
        assert (np.isnan(v) and not m.any()) or v == values[m, 0].min()
