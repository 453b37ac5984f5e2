"""Evaluation that scales with the rows: the streaming Poisson bootstrap against the stratified
multinomial bootstrap it replaced (on the reference data, within Monte Carlo error), and results
that do not depend on the batch size, BLAS threads or how inference was batched."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import norm
from threadpoolctl import threadpool_limits

from edgefair import stats as st
from edgefair.errors import DataError
from edgefair.groups import finest_cells, group_masks

from conftest import REPO

CI_FIELDS = {"accuracy": "accuracy_ci", "ece": "ece_ci", "accuracy_delta": "accuracy_delta_ci_bootstrap",
             "ece_delta": "ece_delta_ci", "flip_rate": "flip_rate_ci_bootstrap"}


def _fake_int8(model) -> None:
    """Round every weight tensor to 255 levels of its own max |w| (per-tensor symmetric int8)."""
    import torch

    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                scale = p.abs().max() / 127.0
                p.copy_(torch.round(p / scale) * scale)


def reference_case(name: str) -> dict:
    """Real outputs on a reference eval set: the float model (baseline) and the same model with
    int8-rounded weights (the step), with the recipe's groups."""
    import importlib.util

    import torch
    from safetensors.torch import load_file

    spec = importlib.util.spec_from_file_location(f"ref_{name}", REPO / "models" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = np.load(REPO / "calibration_data" / f"{name.split('_')[0]}_eval.npz", allow_pickle=False)
    x = torch.from_numpy(data["features" if name == "adult_mlp" else "pixels"])
    attrs = {"sex": data["sex"], "race": data["race"]} if name == "adult_mlp" else {"digit": data["digit"]}
    model = module.build()
    model.load_state_dict(load_file(str(REPO / "models" / f"{name}.safetensors")))
    model.eval()
    with torch.no_grad():
        base = model(x).numpy().astype(np.float64)
        _fake_int8(model)
        step = model(x).numpy().astype(np.float64)
    masks = group_masks(attrs, intersections=True)
    return {"y": data["label"], "masks": masks, "base_out": base, "step_out": step,
            "base": softmax(base, axis=1), "step": softmax(step, axis=1)}


@pytest.fixture(scope="module", params=["adult_mlp", "digits_cnn"])
def reference(request):
    return reference_case(request.param)


def multinomial_replicates(case: dict, keys: list[str], n_boot: int, seed: int) -> dict[str, np.ndarray]:
    """The bootstrap edgefair used before: inside every cell of identical group membership, each
    replicate draws the cell's size in rows uniformly with replacement. Per-row features summed
    with the drawn counts per cell, then over the cells of each group: name -> (B, len(keys))."""
    y, masks = case["y"], case["masks"]
    n = len(y)
    cell_of_row, membership = finest_cells(masks, n)
    edges = np.linspace(0.0, 1.0, 16)
    columns = []
    for which in ("step", "base"):  # correct, then confidence - correct in the row's calibration bin
        p = case[which]
        conf, hit = p.max(axis=1), p.argmax(axis=1) == y
        bins = np.digitize(conf, edges[1:-1], right=True)  # right-closed bins, as metrics.py documents
        columns += [hit[:, None], np.eye(15)[bins] * (conf - hit)[:, None]]
    columns.append((case["step"].argmax(axis=1) != case["base"].argmax(axis=1))[:, None])
    x = np.hstack(columns).astype(np.float64)  # (N, 1 + 15 + 1 + 15 + 1)
    rng = np.random.default_rng(seed)
    cell_sums = np.zeros((n_boot, membership.shape[1], x.shape[1]))
    for c in range(membership.shape[1]):
        rows = np.flatnonzero(cell_of_row == c)
        draws = rng.integers(0, len(rows), size=(n_boot, len(rows))) + len(rows) * np.arange(n_boot)[:, None]
        counts = np.bincount(draws.ravel(), minlength=n_boot * len(rows)).reshape(n_boot, len(rows))
        cell_sums[:, c] = counts @ x[rows]
    index = {key: i for i, key in enumerate(masks)}
    out = {name: np.zeros((n_boot, len(keys))) for name in CI_FIELDS}
    for j, key in enumerate(keys):
        s = cell_sums[:, membership[index[key]]].sum(axis=1) / masks[key].sum()  # (B, F) group means
        ece_step, ece_base = np.abs(s[:, 1:16]).sum(axis=1), np.abs(s[:, 17:32]).sum(axis=1)
        out["accuracy"][:, j] = s[:, 0]
        out["ece"][:, j] = ece_step
        out["accuracy_delta"][:, j] = s[:, 0] - s[:, 16]
        out["ece_delta"][:, j] = ece_step - ece_base
        out["flip_rate"][:, j] = s[:, 32]
    return out


def test_intervals_agree_with_the_multinomial_bootstrap_within_monte_carlo_error(reference):
    """Each endpoint of a percentile interval from B replicates is a sample quantile, with the
    Maritz-Jarrett standard error (scipy's ``mjci``, no normality assumed: ECE changes have skewed
    replicates). Old and new endpoints are independent estimates of nearly the same quantile, so
    their difference has about twice that variance; the tolerance is a Bonferroni z over every
    endpoint compared (a 1% chance of a false alarm for the whole test) times that standard
    error, plus, for rates, one step 1/n of the multinomial bootstrap's lattice (its quantiles are
    counts / n, the Poisson bootstrap's are not)."""
    from scipy.stats.mstats import mjci

    n_boot, confidence = 1000, 0.95
    config = st.StatsConfig(n_boot=n_boot, confidence=confidence, seed=0)
    result = st.evaluate_step(masks=reference["masks"], probs=reference["step"], outputs=reference["step_out"],
                              y_true=reference["y"], base_probs=reference["base"], base_outputs=reference["base_out"],
                              config=config)
    keys = [k for k, g in result["groups"].items() if g["status"] == "ok"]
    old = multinomial_replicates(reference, keys, n_boot, seed=12345)
    tail = (1.0 - confidence) / 2.0
    z = norm.ppf(1.0 - 0.01 / (2 * 2 * len(keys) * len(CI_FIELDS)))
    worst = 0.0
    for j, key in enumerate(keys):
        group = result["groups"][key]
        for name, field in CI_FIELDS.items():
            reps = old[name][:, j]
            expected = np.quantile(reps, [tail, 1.0 - tail])
            lattice = 1.0 / group["n"] if name in ("accuracy", "accuracy_delta", "flip_rate") else 0.0
            for got, want, se in zip(group[field], expected, mjci(reps, prob=[tail, 1.0 - tail])):
                tolerance = z * math.sqrt(2.0) * se + lattice
                assert abs(got - want) <= tolerance, (key, name, got, want, tolerance)
                worst = max(worst, abs(got - want) / tolerance)
    print(f"largest |new - old| / tolerance: {worst:.2f}")
    assert worst > 0  # the comparison ran on intervals with some width


def small_case(n: int = 3000, k: int = 3, seed: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    g = rng.choice(["a", "b", "c"], n, p=[0.5, 0.3, 0.2])
    h = rng.choice(["x", "y"], n)
    y = rng.integers(0, k, n)
    base = rng.normal(0, 1.5, (n, k))
    base[np.arange(n), y] += 1.0
    step = base + rng.normal(0, 0.4, (n, k))
    return {"y": y, "masks": group_masks({"g": g, "h": h}, intersections=True), "base_out": base.astype(np.float32),
            "step_out": step.astype(np.float32), "base": softmax(base, axis=1), "step": softmax(step, axis=1)}


def _batches(probs, outputs, size):
    for a in range(0, len(probs), size):
        yield probs[a:a + size], outputs[a:a + size]


@pytest.mark.parametrize("batch_size", [1, 7, 1000, 2048, 3000])
def test_streamed_batches_give_the_same_result_as_all_rows_at_once(batch_size):
    case = small_case()
    config = st.StatsConfig(n_boot=100, seed=4)
    expected = st.evaluate_step(masks=case["masks"], probs=case["step"], outputs=case["step_out"], y_true=case["y"],
                                base_probs=case["base"], base_outputs=case["base_out"], config=config)
    ev = st.Evaluator(case["masks"], case["y"], len(case["y"]), config)
    base = ev.model_from_batches(_batches(case["base"], case["base_out"], batch_size))
    step = ev.model_from_batches(_batches(case["step"], case["step_out"], batch_size))
    assert json.dumps(ev.compare(step, base)) == json.dumps(expected)


def test_results_do_not_depend_on_blas_threads():
    case = small_case(n=5000)
    results = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            results.append(json.dumps(st.evaluate_step(
                masks=case["masks"], probs=case["step"], outputs=case["step_out"], y_true=case["y"],
                base_probs=case["base"], base_outputs=case["base_out"], config=st.StatsConfig(n_boot=200, seed=1))))
    assert results[0] == results[1]


def test_kept_weights_give_the_same_result_as_drawing_them_again(monkeypatch):
    """Small sets keep their bootstrap weights for the next model; large ones draw them again."""
    from edgefair import bootstrap as bs

    case = small_case(n=5000)
    config = st.StatsConfig(n_boot=150, seed=8)
    results = []
    for limit in (bs.CACHED_WEIGHTS, 0):
        monkeypatch.setattr(bs, "CACHED_WEIGHTS", limit)
        ev = st.Evaluator(case["masks"], case["y"], 5000, config)
        base = ev.model(case["base"], case["base_out"])
        results.append(json.dumps([ev.compare(base), ev.compare(ev.model(case["step"], case["step_out"]), base)]))
        assert (ev._engine._kept is None) == (limit == 0)
    assert results[0] == results[1]


def test_replicates_beyond_one_pass_are_the_same_as_in_one_pass(monkeypatch):
    """More replicates than ``PASS_REPLICATES`` are summed pass by pass (bounded weights in memory)
    with the same weights as when all are held at once."""
    from edgefair import bootstrap as bs

    cells = np.random.default_rng(0).integers(0, 3, 3000)
    x = np.random.default_rng(1).random((3000, 2))
    builders = [(lambda rows: x[rows], np.array([False, True]))]
    got = bs.PoissonBootstrap(cells, 3, n_boot=600, seed=2).sums(builders)[0]
    monkeypatch.setattr(bs, "PASS_REPLICATES", bs.REPLICATE_BLOCK)  # three passes of 256, 256, 88
    monkeypatch.setattr(bs, "CACHED_WEIGHTS", 0)
    assert np.array_equal(bs.PoissonBootstrap(cells, 3, n_boot=600, seed=2).sums(builders)[0], got)


def test_batches_that_do_not_add_up_to_the_rows_are_refused():
    case = small_case(n=100)
    ev = st.Evaluator(case["masks"], case["y"], 100, st.StatsConfig(n_boot=10))
    with pytest.raises(DataError, match=r"probabilities has shape \(60, 3\), expected \(100, 3\)"):
        ev.model_from_batches(_batches(case["base"][:60], case["base_out"][:60], 25))
    with pytest.raises(DataError, match="a batch of probabilities"):
        ev.model_from_batches(_batches(np.vstack([case["base"], case["base"][:5]]),
                                       np.vstack([case["base_out"], case["base_out"][:5]]), 50))


def test_chunked_fidelity_equals_one_pass_on_wide_outputs():
    from edgefair import metrics as mt

    rng = np.random.default_rng(0)
    a = rng.normal(size=(5000, 384)).astype(np.float32)  # embedding-sized rows over several chunks
    b = a + rng.normal(0, 0.01, a.shape).astype(np.float32)
    got, want = st._row_fidelity(a, b), mt.row_fidelity(a, b)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def _compare_peak(n: int, n_boot: int) -> int:
    """Peak bytes numpy allocates while one step is compared with the baseline on n rows."""
    import tracemalloc

    case = small_case(n=n, k=2)
    ev = st.Evaluator(case["masks"], case["y"], n, st.StatsConfig(n_boot=n_boot, seed=0))
    base, step = ev.model(case["base"], case["base_out"]), ev.model(case["step"], case["step_out"])
    del case
    tracemalloc.start()
    try:
        ev.compare(step, base)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_bootstrap_memory_does_not_grow_with_replicates_times_rows():
    """10x the rows adds a few per-row columns (flips, cosines, group sums: under 400 bytes a row),
    not a replicates x rows matrix (4 bytes x 200 replicates = 800 bytes a row even as float32)."""
    small, large = _compare_peak(10_000, 200), _compare_peak(100_000, 200)
    assert (large - small) / 90_000 < 400


def test_memory_check_does_not_grow_with_rows_and_refuses_what_cannot_fit():
    from edgefair.errors import RecipeError

    need = [st.bootstrap_bytes(n_boot=1000, rows=rows, cells=10, groups=17, bins=15, labelled=True)
            for rows in (100_000, 1_000_000, 100_000_000)]
    assert need[0] == need[1] == need[2] < 50e6  # (B, cells, F) sums and one pass of weights, not B x rows
    masks = group_masks({"g": np.array(["a", "b"] * 50)}, intersections=False)
    with pytest.raises(RecipeError, match=r"evaluate.bootstrap: 1000000000 replicates over 2 cells .* GB"):
        st.check_bootstrap_memory(masks, 100, st.StatsConfig(n_boot=10**9), labelled=True)


def test_the_bootstrap_reports_its_progress_and_progress_changes_nothing():
    """The terminal hears how many rows the bootstrap has summed (every 16 chunks and at the end);
    listening does not change a statistic."""
    from scipy.special import softmax as sm

    rng = np.random.default_rng(4)
    n = 70_000
    masks = group_masks({"g": rng.choice(["a", "b"], n)}, intersections=False)
    y = rng.integers(0, 2, n)
    logits = rng.normal(size=(n, 2)).astype(np.float32)
    seen: list[tuple[int, int]] = []
    results = []
    for advance in (None, lambda done, total: seen.append((done, total))):
        ev = st.Evaluator(masks, y, n, st.StatsConfig(n_boot=50, seed=0), advance=advance)
        results.append(json.dumps(ev.compare(ev.model(sm(logits, axis=1), logits)), sort_keys=True))
    assert seen == [(32_768, n), (65_536, n), (n, n)]
    assert results[0] == results[1]
