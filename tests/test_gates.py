"""Release gates: the decision rule on its own and through the real statistics, and real runs
where compression harms one group only."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from conftest import BASE_RECIPE, run_cli, write_recipe
from edgefair.gates import Harm, Rule, apply_gates, decide, effective_thresholds
from edgefair.intervals import smallest_failing_loss
from edgefair.recipe import GatesConfig, SelectConfig
from edgefair.stats import Evaluator, StatsConfig

RULE = Rule(on_undecided="warn")


@pytest.mark.parametrize(
    "harm, status, decision",
    [
        (Harm(0.002, (0.000, 0.008), 0.9, 500, p_holm=0.9), "pass", "pass"),  # upper bound within
        (Harm(0.030, (0.020, 0.040), 1e-4, 500, p_holm=1e-3), "fail", "fail"),  # evidence beyond the limit
        (Harm(0.030, (0.020, 0.040), 1e-3, 500, p_holm=0.2), "warn", "undecided"),  # beyond, but not after Holm
        (Harm(0.006, (0.001, 0.012), 0.3, 500, p_holm=0.9), "warn", "undecided"),  # within, not shown
        (Harm(None, None, reason="n < min_group_size (50)"), "warn", "undecided"),
    ],
)
def test_decide(harm, status, decision):
    assert decide(harm, 0.01, RULE)[:2] == (status, decision)


@pytest.mark.parametrize("policy, observed, status", [
    ("warn", 0.02, "warn"), ("fail", 0.0, "fail"), ("fail_if_observed", 0.02, "fail"), ("fail_if_observed", 0.005, "warn")])
def test_on_undecided(policy, observed, status):
    harm = Harm(observed, (-0.03, 0.05), 0.4, 80, p_holm=0.9)
    assert decide(harm, 0.01, Rule(on_undecided=policy))[:2] == (status, "undecided")


@pytest.mark.parametrize("p_zero_holm, status", [(0.01, "fail"), (0.3, "warn")])
def test_fail_if_significant_needs_some_harm_shown(p_zero_holm, status):
    """The default: an undecided group beyond the limit fails only when the data show it lost something."""
    harm = Harm(0.02, (-0.01, 0.05), 0.4, 300, p_holm=0.9, p_zero=p_zero_holm / 10, p_zero_holm=p_zero_holm)
    assert Rule().on_undecided == "fail_if_significant"
    assert decide(harm, 0.01, Rule())[:2] == (status, "undecided")
    assert decide(Harm(0.005, (-0.01, 0.05), 0.4, 300, p_holm=0.9, p_zero=0.001, p_zero_holm=0.01), 0.01, Rule())[0] == "warn"


def test_point_decision_ignores_interval():
    assert decide(Harm(0.006, (0.001, 0.012), 0.3, 100), 0.01, Rule(decision="point"))[0] == "pass"
    assert decide(Harm(0.011, (0.0, 0.02), 0.3, 100), 0.01, Rule(decision="point"))[0] == "fail"


# ---- the rule through the real statistics ------------------------------------------------------


def judge(y, base, step, groups, *, probs_k=2, select=None, n_boot=200, **gates):
    """Gate a step that predicts `step` against a baseline predicting `base` (class ids), through
    the real Evaluator and apply_gates."""
    n = len(y)
    masks = {f"g={v}": groups == v for v in np.unique(groups)}
    ev = Evaluator(masks, y, n, StatsConfig(n_boot=n_boot))
    onehot = lambda p: np.eye(probs_k)[p] * 0.9 + 0.1 / probs_k  # noqa: E731
    b, s = ev.model(onehot(base)), ev.model(onehot(step))
    entry = lambda i, r: {"index": i, "name": f"s{i}", "model": f"{i:02d}.onnx", "size_bytes": 1000 - i,  # noqa: E731
                          "latency": None, **r}
    report = {"steps": [entry(0, ev.compare(b)), entry(1, ev.compare(s, b))], "data": {"eval": {"labelled": True}}}
    apply_gates(report, GatesConfig(**{"defaults": False, **gates}), confidence=0.95, select=select)
    return report


def flip(pred, rows):
    out = pred.copy()
    out[rows] = 1 - out[rows]
    return out


def sized(n_groups: dict[str, int], acc=0.85, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.concatenate([[k] * n for k, n in n_groups.items()])
    y = rng.integers(0, 2, len(groups))
    base = np.where(rng.random(len(groups)) < acc, y, 1 - y)
    return y, base, groups


def gate(report, group):
    return next(g for g in report["steps"][1]["gates"] if g["group"] == group)


def test_null_churn_rarely_fails_a_build_however_many_groups():
    """README: testing many groups does not raise the chance of a false failure. 2% balanced churn in
    17 groups of 60 to 3,000 rows, 100 builds: the share of builds with any failing group stays low."""
    rng = np.random.default_rng(11)
    sizes = {f"s{i}": n for i, n in enumerate([60, 68, 80, 100, 150, 200, 264, 300, 400, 500, 600, 839, 1000, 1500, 2000, 2961, 3000])}
    y, base, groups = sized(sizes, seed=5)
    failed = 0
    for _ in range(100):
        right = base == y  # balanced churn: as many right rows turn wrong as wrong rows turn right, 2% in all
        rate = np.where(right, 0.01, 0.01 * right.sum() / (~right).sum())
        step = flip(base, rng.random(len(y)) < rate)
        report = judge(y, base, step, groups, max_group_accuracy_drop=0.01, max_group_tpr_drop=0.02, n_boot=0)
        failed += report["verdict"] == "fail"
    assert failed / 100 <= 0.05


def test_a_3_point_drop_in_a_1000_row_group_fails_nearly_always():
    """README: under the default policy a 3-point drop in a 1,000-row group among 17 churning groups
    fails >= 90% of builds (98% in benchmarks/gate_simulation.py)."""
    rng = np.random.default_rng(12)
    sizes = {f"s{i}": n for i, n in enumerate([60, 68, 80, 100, 150, 200, 264, 300, 400, 500, 600, 839, 1000, 1500, 2000, 2961, 3000])}
    y, base, groups = sized(sizes, seed=5)
    right = base == y
    target = np.flatnonzero(right & (groups == "s12"))  # the 1,000-row group
    caught = 0
    for _ in range(40):
        rate = np.where(right, 0.01, 0.01 * right.sum() / (~right).sum())
        churn = rng.random(len(y)) < rate
        churn[rng.choice(target, 30, replace=False)] = True  # 30 more of its right rows turn wrong
        report = judge(y, base, flip(base, churn), groups, max_group_accuracy_drop=0.01, n_boot=0)
        caught += gate(report, "g=s12")["status"] == "fail"
    assert caught / 40 >= 0.9


def test_a_drop_below_the_limit_never_fails_however_significant():
    """The old rule failed real drops below the limit (Holm tested "drop > 0"); the limit is what is tested."""
    y, base, groups = sized({"a": 10_000})
    right = np.flatnonzero(base == y)
    step = flip(base, right[:80])  # 80 of 10,000 rows lost: a certain drop of 0.8 points
    g = gate(judge(y, base, step, groups, max_group_accuracy_drop=0.01), "g=a")
    assert g["value"] == pytest.approx(0.008) and g["status"] == "pass"
    g = gate(judge(y, base, step, groups, max_group_accuracy_drop=0.005), "g=a")
    assert g["status"] == "fail" and g["decision"] == "fail"


def test_identical_model_passes_where_the_rows_can_show_it():
    """No changed prediction: the interval is +-z^2/(n + z^2), within 1 point from 381 rows on."""
    y, base, groups = sized({"a": 390, "b": 300})
    report = judge(y, base, base.copy(), groups, max_group_accuracy_drop=0.01)
    assert gate(report, "g=a")["status"] == "pass"
    b = gate(report, "g=b")
    assert b["decision"] == "undecided" and b["status"] == "warn"
    assert b["ci"][1] == pytest.approx(1.96 ** 2 / (300 + 1.96 ** 2), abs=1e-4)
    assert report["verdict"] == "pass"  # undecided warns by default


def test_the_same_counts_always_get_the_same_decision():
    """0.1 failed or warned 5 lost rows depending on where its bootstrap edges fell; the decision now
    rests on the counts alone."""
    y, base, groups = sized({"a": 264, "b": 3000}, seed=2)
    right = np.flatnonzero((base == y) & (groups == "a"))
    entries = []
    for seed in range(4):
        rows = np.random.default_rng(seed).choice(right, 5, replace=False)
        g = gate(judge(y, base, flip(base, rows), groups, max_group_accuracy_drop=0.01), "g=a")
        entries.append((g["status"], g["decision"], g["value"], tuple(g["ci"]), g["p_holm"]))
    assert len(set(entries)) == 1, entries


def test_clear_harm_to_a_group_fails_and_names_it():
    y, base, groups = sized({"a": 1000, "b": 2000})
    right = np.flatnonzero((base == y) & (groups == "a"))
    report = judge(y, base, flip(base, right[:60]), groups, max_group_accuracy_drop=0.01)  # -6 points in a
    a = gate(report, "g=a")
    assert a["status"] == "fail" and a["value"] == pytest.approx(0.06) and a["p_holm"] < 0.05
    assert gate(report, "g=b")["status"] == "pass"
    assert report["verdict"] == "fail" and report["selected"] is None
    assert [(e["group"], e["gate"]) for e in report["gate_summary"]["exceeded"]] == [("g=a", "max_group_accuracy_drop")]


def test_tpr_drop_hidden_by_accuracy_fails():
    """Positives lose what negatives gain: accuracy is flat, equal opportunity is broken."""
    y, base, groups = sized({"a": 2000})
    tp = np.flatnonzero((y == 1) & (base == 1))[:60]
    tn_err = np.flatnonzero((y == 0) & (base == 1))[:60]  # false positives that become right
    step = flip(flip(base, tp), tn_err)
    report = judge(y, base, step, groups, max_group_accuracy_drop=0.01, max_group_tpr_drop=0.02)
    gates = {g["gate"]: g for g in report["steps"][1]["gates"]}
    assert gates["max_group_accuracy_drop"]["value"] == pytest.approx(0.0)
    pos = int(((y == 1)).sum())
    assert gates["max_group_tpr_drop"]["value"] == pytest.approx(60 / pos)
    assert gates["max_group_tpr_drop"]["status"] == "fail"
    assert report["verdict"] == "fail"


def test_fpr_rise_and_selection_rate_change():
    y, base, groups = sized({"a": 2000})
    tn = np.flatnonzero((y == 0) & (base == 0))[:80]  # 80 negatives become false positives
    report = judge(y, base, flip(base, tn), groups, max_group_fpr_increase=0.02, max_group_selection_rate_change=0.02)
    gates = {g["gate"]: g for g in report["steps"][1]["gates"]}
    neg = int((y == 0).sum())
    assert gates["max_group_fpr_increase"]["value"] == pytest.approx(80 / neg)
    assert gates["max_group_fpr_increase"]["status"] == "fail"
    assert gates["max_group_selection_rate_change"]["value"] == pytest.approx(80 / 2000)
    assert gates["max_group_selection_rate_change"]["status"] == "fail"


def test_multiclass_reports_the_worst_class():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 3000)
    base = np.where(rng.random(3000) < 0.9, y, (y + 1) % 3)
    step = base.copy()
    hit2 = np.flatnonzero((y == 2) & (base == 2))[:80]
    step[hit2] = 0  # class 2 loses 80 rows of recall to class 0
    report = judge(y, base, step, np.array(["a"] * 3000), probs_k=3, max_group_tpr_drop=0.02, max_group_fpr_increase=0.02)
    gates = {g["gate"]: g for g in report["steps"][1]["gates"]}
    assert gates["max_group_tpr_drop"]["where"] == "class 2" and gates["max_group_tpr_drop"]["status"] == "fail"
    assert gates["max_group_tpr_drop"]["value"] == pytest.approx(80 / int((y == 2).sum()))
    assert gates["max_group_fpr_increase"]["where"] == "class 0"
    assert gates["max_group_fpr_increase"]["value"] == pytest.approx(80 / int((y != 0).sum()))


def test_min_detectable_is_what_fails_on_evidence():
    """A 68-row group under a 1-point limit can only fail on evidence from ~12 points on: the README says so."""
    md = smallest_failing_loss(68, 0.01, 0.05)
    assert md == pytest.approx(4 / 68)  # 4 rows lost of 68: one-sided p < 0.05 against a 1-point limit
    assert smallest_failing_loss(68, 0.01, 0.05 / 17) == pytest.approx(9 / 68)  # among 17 groups (README)
    y, base, groups = sized({"small": 68, "big": 3000})
    report = judge(y, base, base.copy(), groups, max_group_accuracy_drop=0.01)
    small = report["steps"][1]["groups"]["g=small"]["min_detectable"]["max_group_accuracy_drop"]
    big = report["steps"][1]["groups"]["g=big"]["min_detectable"]["max_group_accuracy_drop"]
    assert small == pytest.approx(smallest_failing_loss(68, 0.01, 0.05 / 2))  # Bonferroni over the 2 groups
    assert big < 0.02 < small
    # and it is exact: k rows lost fail, k - 1 do not
    k = round(small * 68)
    right = np.flatnonzero((base == y) & (groups == "small"))
    for lost, status in ((k, "fail"), (k - 1, "warn")):
        report = judge(y, base, flip(base, right[:lost]), groups, max_group_accuracy_drop=0.01, on_undecided="warn")
        assert gate(report, "g=small")["status"] == status


def test_cosine_floor_fails_an_embedding_step_at_089():
    g = {"n": 120, "status": "ok", "cosine_mean": 0.89, "cosine_sd": 0.05}
    report = {"steps": [{"index": 0, "name": "b", "model": "0", "size_bytes": 1, "overall": {}, "groups": {"g=a": dict(g, cosine_mean=1.0, cosine_sd=0.0)}},
                        {"index": 1, "name": "s", "model": "1", "size_bytes": 1, "overall": {}, "groups": {"g=a": g}}],
              "data": {"eval": {"labelled": False}}}
    apply_gates(report, GatesConfig(), confidence=0.95, output="embedding")
    entry = report["steps"][1]["gates"][0]
    assert (entry["gate"], entry["threshold"], entry["status"]) == ("min_group_cosine", 0.95, "fail")
    assert entry["value"] == pytest.approx(0.89) and entry["ci"][1] < 0.95
    assert report["verdict"] == "fail"


def test_defaults_cover_every_kind_of_model():
    labelled = effective_thresholds(GatesConfig(), labelled=True, output="logits")
    assert {"max_group_accuracy_drop", "max_group_tpr_drop", "max_group_fpr_increase", "max_group_ece_increase"} <= set(labelled)
    assert effective_thresholds(GatesConfig(), labelled=False, output="logits") == {"min_group_agreement": 0.95}
    assert effective_thresholds(GatesConfig(), labelled=True, output="embedding") == {"min_group_cosine": 0.95}
    assert effective_thresholds(GatesConfig(max_group_tpr_drop=0.05), labelled=True, output="auto")["max_group_tpr_drop"] == 0.05
    assert effective_thresholds(GatesConfig(defaults=False), labelled=True, output="auto") == {}


def test_a_model_no_gate_looked_at_is_never_selected():
    y, base, groups = sized({"a": 500})
    report = judge(y, base, base.copy(), groups)  # defaults = false and no gate
    assert report["selected"] is None and report["verdict"] == "fail"
    assert report["steps"][1]["gates"][-1]["gate"] == "no_gate"


@pytest.mark.parametrize("by, require, chosen, verdict", [
    ("fastest", "selected", 2, "pass"), ("smallest", "selected", 3, "pass"), ("last", "selected", 3, "pass"),
    ("fastest", "all", 2, "fail")])
def test_selection_among_passing_steps(by, require, chosen, verdict):
    def step(i, p50, size, passed_size=True):
        return {"index": i, "name": f"s{i}", "model": f"0{i}.onnx", "size_bytes": size, "overall": {}, "groups": {},
                "latency": {"p50_ms": p50, "p95_ms": p50}}

    report = {"steps": [step(0, 1.0, 900), step(1, 0.5, 2000), step(2, 0.6, 500), step(3, 0.8, 400)]}
    apply_gates(report, GatesConfig(max_size_mb=0.001), confidence=0.95, select=SelectConfig(by=by, require=require))
    assert not report["steps"][1]["passed"]  # too big
    assert report["selected"]["step"] == chosen and report["verdict"] == verdict
    assert report["selected"]["reason"]


def test_fastest_treats_steps_within_timing_noise_as_tied_and_ships_the_smallest():
    """README: timing noise must not decide between two steps that are equally fast."""
    def step(i, p50, size, ci):
        return {"index": i, "name": f"s{i}", "model": f"0{i}.onnx", "size_bytes": size, "overall": {}, "groups": {},
                "latency": {"p50_ms": p50, "p95_ms": p50, "ratio_p50_vs_first": p50, "ratio_p50_ci": ci}}

    steps = [step(0, 1.0, 900, [1, 1]), step(1, 0.50, 500, [0.45, 0.56]), step(2, 0.51, 400, [0.46, 0.57]), step(3, 0.70, 300, [0.6, 0.8])]
    report = {"steps": steps}
    apply_gates(report, GatesConfig(max_size_mb=1.0), confidence=0.95, select=SelectConfig(by="fastest"))
    assert report["selected"]["step"] == 2 and "within timing noise" in report["selected"]["reason"]
    steps[1]["latency"]["ratio_p50_ci"] = [0.499, 0.501]  # a precise measurement: step 1 is faster
    apply_gates(report, GatesConfig(max_size_mb=1.0), confidence=0.95, select=SelectConfig(by="fastest"))
    assert report["selected"]["step"] == 1
    # a wide interval (a noisy machine) ties at most 3% above the fastest: 6% slower is slower
    steps[1]["latency"]["ratio_p50_ci"] = [0.40, 0.70]
    steps[2]["latency"].update(p50_ms=0.53, ratio_p50_vs_first=0.53)
    apply_gates(report, GatesConfig(max_size_mb=1.0), confidence=0.95, select=SelectConfig(by="fastest"))
    assert report["selected"]["step"] == 1


def test_latency_gate_without_a_measurement_is_not_silent():
    report = {"steps": [{"index": 0, "name": "b", "model": "0", "size_bytes": 1, "overall": {}, "groups": {}, "latency": None},
                        {"index": 1, "name": "s", "model": "1", "size_bytes": 1, "overall": {}, "groups": {}, "latency": None}]}
    apply_gates(report, GatesConfig(max_latency_p95_ms=1.0), confidence=0.95)
    entry = report["steps"][1]["gates"][0]
    assert entry["decision"] == "undecided" and "no latency" in entry["reason"]
    apply_gates(report, GatesConfig(max_latency_p95_ms=1.0, on_undecided="fail"), confidence=0.95)
    assert report["steps"][1]["gates"][0]["status"] == "fail" and report["verdict"] == "fail"


# ---- a real case: calibration data that misses a group -------------------------------------------


@pytest.fixture(scope="module")
def harmed(tiny, tmp_path_factory):
    """Group z has inputs 8x wider than the calibration set (which holds group a only), so static
    int8 clips exactly their activations; dynamic int8 measures ranges at run time and does not."""
    import sys

    import torch

    root = tmp_path_factory.mktemp("harm")
    for f in tiny.iterdir():
        if f.is_file():
            (root / f.name).symlink_to(f)
    sys.path.insert(0, str(tiny))
    try:
        import tiny_model

        model = tiny_model.build().eval()
    finally:
        sys.path.remove(str(tiny))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(900, 6)).astype(np.float32)
    g = np.array(["a"] * 600 + ["z"] * 300)
    x[g == "z"] *= 8
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(root / "harm_eval.npz", features=x, label=y, g=g)
    np.savez(root / "harm_calib.npz", features=x[:64])
    return root


HARM_RECIPE = """
[model]
source = "tiny.pt2"

[data]
eval = "harm_eval.npz"
calibration = "harm_calib.npz"
groups = ["g"]
min_group_size = 50

[evaluate]
bootstrap = 300

[latency]
warmup = 2
runs = 20
min_time_s = 0

[[steps]]
kind = "quantize_dynamic"

[[steps]]
kind = "quantize_static"
input = "baseline"

[gates]
defaults = false
max_group_accuracy_drop = {drop}
{extra}
"""


def run_harm(harmed, tmp_path, *, drop: float, exit_code: int, extra: str = ""):
    """Run HARM_RECIPE with the given accuracy-drop limit; return (recipe, out folder, report)."""
    recipe = write_recipe(harmed / f"drop-{drop}-{len(extra)}.toml", HARM_RECIPE.format(drop=drop, extra=extra))
    out = tmp_path / "out"
    result = run_cli(["run", str(recipe), "--out", str(out)])
    assert result.exit_code == exit_code, result.output
    return recipe, out, json.loads((out / "report.json").read_text())


def test_harm_to_one_group_fails_its_step_and_ships_the_other(harmed, tmp_path):
    recipe, out, report = run_harm(harmed, tmp_path, drop=0.04, exit_code=0)
    static = report["steps"][2]
    assert static["groups"]["g=z"]["accuracy_delta"] < -0.05  # real harm, to group z only
    assert static["groups"]["g=a"]["accuracy_delta"] > -0.01
    failed = [g for g in static["gates"] if g["status"] == "fail"]
    assert {(g["gate"], g["group"]) for g in failed} == {("max_group_accuracy_drop", "g=z")}
    # the verdict is about what ships: the passing step is selected, the failing one named
    assert report["verdict"] == "pass" and report["gate_summary"]["failed_steps"] == [2]
    assert report["selected"]["name"] == "quantize_dynamic"
    assert (out / "selected.onnx").read_bytes() == (out / "01-quantize_dynamic.onnx").read_bytes()
    # report.md names gate and group, failing gates before the step table
    md = (out / "report.md").read_text()
    assert "g=z" in md and "FAIL" in md.upper()
    assert md.index("g=z") < md.index("| # |")
    # junit.xml parses and carries exactly that failure
    root = ET.parse(out / "junit.xml").getroot()
    failures = [tc for tc in root.iter("testcase") if tc.find("failure") is not None]
    assert [tc.get("name") for tc in failures] == ["max_group_accuracy_drop[g=z]"]
    assert failures[0].get("classname") == "edgefair.quantize_static"
    # manifest hashes match the files
    manifest = json.loads((out / "manifest.json").read_text())
    import hashlib

    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"]
    assert manifest["inputs"]["recipe"]["sha256"] == hashlib.sha256(recipe.read_bytes()).hexdigest()


def test_require_all_fails_the_build_when_any_step_fails(harmed, tmp_path):
    _, out, report = run_harm(harmed, tmp_path, drop=0.04, exit_code=1, extra="[select]\nrequire = \"all\"")
    assert report["verdict"] == "fail" and report["selected"]["name"] == "quantize_dynamic"
    assert (out / "selected.onnx").read_bytes() == (out / "01-quantize_dynamic.onnx").read_bytes()


def test_lenient_gates_pass_and_select_last_step(harmed, tmp_path):
    _, out, report = run_harm(harmed, tmp_path, drop=0.9, exit_code=0, extra="[select]\nby = \"last\"")
    assert report["verdict"] == "pass" and report["selected"]["name"] == "quantize_static"
    assert (out / "selected.onnx").read_bytes() == (out / "02-quantize_static.onnx").read_bytes()


def test_no_steps_failing_baseline_fails(recipe_dir, tmp_path):
    from conftest import BASE_RECIPE

    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + "\n[gates]\nmax_size_mb = 0.000001\n")
    out = tmp_path / "out"
    result = run_cli(["run", str(recipe), "--out", str(out)])
    assert result.exit_code == 1
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "fail" and report["selected"] is None and not (out / "selected.onnx").exists()


def test_failing_run_removes_an_earlier_selected_model(harmed, tmp_path):
    out = tmp_path / "out"
    assert run_cli(["run", str(write_recipe(harmed / "ok.toml", HARM_RECIPE.format(drop=0.9, extra=""))), "--out", str(out)]).exit_code == 0
    assert (out / "selected.onnx").exists()
    text = HARM_RECIPE.format(drop=0.9, extra="").replace("[[steps]]\nkind = \"quantize_dynamic\"\n", "") + "max_size_mb = 0.000001\n"
    assert run_cli(["run", str(write_recipe(harmed / "bad.toml", text)), "--out", str(out)]).exit_code == 1
    assert not (out / "selected.onnx").exists()
    assert not (out / "01-quantize_dynamic.onnx").exists()  # listed in the earlier manifest, not in this run
    assert (out / "01-quantize_static.onnx").exists()


def test_widened_intervals_never_collapse_and_keep_the_bootstrap():
    from statsmodels.stats.proportion import proportion_confint

    from edgefair.intervals import widen_intervals

    g = {"n": 70, "status": "ok", "accuracy": 0.9, "accuracy_delta": 0.0, "accuracy_delta_ci": [0.0, 0.0],
         "lost_correct": 0, "gained_correct": 0, "flip_rate": 0.0, "flip_rate_ci": [0.0, 0.0]}
    w = widen_intervals(g, 0.95)
    assert w["accuracy_delta_ci"][0] < -0.02 and w["accuracy_delta_ci"][1] > 0.02
    assert w["accuracy_delta_ci_bootstrap"] == [0.0, 0.0]
    assert w["flip_rate_ci"] == pytest.approx([0.0, proportion_confint(0, 70, alpha=0.05, method="beta")[1]])
    assert g["accuracy_delta_ci"] == [0.0, 0.0]  # input untouched


def test_step_with_nonfinite_outputs_fails_its_gate(recipe_dir, tmp_path):
    """A step whose model emits NaN for some rows is a failed step (exit 1), not bad input."""
    from dataclasses import dataclass

    import onnx
    from onnx import helper

    from conftest import BASE_RECIPE
    from edgefair.steps import REGISTRY, StepOutcome, register

    @dataclass(frozen=True)
    class NanConfig:
        pass

    def add_sqrt(cfg, src, dst, ctx):  # NaN wherever a logit is negative, like an overflowing step
        model = onnx.load(str(src))
        model.graph.node.append(helper.make_node("Sqrt", [model.graph.output[0].name], ["nan_out"]))
        model.graph.output[0].name = "nan_out"
        onnx.save(model, str(dst))
        return StepOutcome()

    register("test_nan", NanConfig)(add_sqrt)
    try:
        text = BASE_RECIPE + "\n[[steps]]\nkind = 'test_nan'\n"
        out = tmp_path / "o"
        result = run_cli(["run", str(write_recipe(recipe_dir / "b.toml", text)), "--out", str(out), "--no-cache"])
    finally:
        REGISTRY.pop("test_nan")
    assert result.exit_code == 1, result.output
    report = json.loads((out / "report.json").read_text())
    step = report["steps"][1]
    assert step["overall"]["nonfinite_rows"] > 0 and report["steps"][0]["overall"]["nonfinite_rows"] == 0
    assert [g["gate"] for g in step["gates"] if g["status"] == "fail"][:1] == ["finite_outputs"]
    # NaN rows count as wrong, not as whatever argmax makes of them (class 0 before): recompute with onnxruntime
    import onnxruntime as ort

    data = np.load(recipe_dir / "eval.npz")
    sess = ort.InferenceSession(str(out / "01-test_nan.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"features": data["features"]})[0]
    finite = np.isfinite(logits).all(axis=1)
    expected = float(np.mean(finite & (np.where(finite[:, None], logits, 0).argmax(1) == data["label"])))
    assert (~finite).sum() == step["overall"]["nonfinite_rows"]
    assert step["overall"]["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert step["overall"]["flip_rate"] >= (~finite).mean()  # a NaN row never agrees with the baseline


def test_baseline_with_nonfinite_outputs_is_bad_input(recipe_dir, tmp_path):
    import onnx
    from onnx import helper

    from conftest import BASE_RECIPE

    out = tmp_path / "first"
    assert run_cli(["run", str(write_recipe(recipe_dir / "a.toml", BASE_RECIPE)), "--out", str(out), "-q"]).exit_code == 0
    model = onnx.load(str(out / "00-baseline.onnx"))
    model.graph.node.append(helper.make_node("Sqrt", [model.graph.output[0].name], ["nan_out"]))  # NaN where a logit < 0
    model.graph.output[0].name = "nan_out"
    onnx.save(model, str(recipe_dir / "nan.onnx"))
    text = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "nan.onnx"')
    result = run_cli(["run", str(write_recipe(recipe_dir / "n.toml", text)), "--out", str(tmp_path / "n")])
    assert result.exit_code == 2 and "non-finite outputs" in result.output


def test_a_recipe_without_gates_is_judged_by_the_defaults(recipe_dir, tmp_path):
    """No [gates]: every compressed step is looked at by the documented default gates; on unlabelled
    data a step that no longer agrees with the baseline fails instead of shipping."""
    with np.load(recipe_dir / "eval.npz") as z:
        np.savez(recipe_dir / "unlabelled.npz", **{k: z[k] for k in z.files if k != "label"})
    steps = '\n[[steps]]\nkind = "quantize_dynamic"\n\n[[steps]]\nkind = "prune"\ninput = "baseline"\nsparsity = 0.95\n'
    for eval_file, defaults in (("eval.npz", {"max_group_accuracy_drop", "max_group_tpr_drop", "max_group_fpr_increase",
                                               "max_group_ece_increase"}),
                                ("unlabelled.npz", {"min_group_agreement"})):
        text = BASE_RECIPE.replace('eval = "eval.npz"', f'eval = "{eval_file}"') + steps
        out = tmp_path / f"out-{eval_file}"
        result = run_cli(["run", str(write_recipe(recipe_dir / f"{eval_file}.toml", text)), "--out", str(out)])
        report = json.loads((out / "report.json").read_text())
        assert set(report["gates_applied"]["thresholds"]) == defaults and report["gates_applied"]["defaults"]
        for step in report["steps"][1:]:
            assert {g["gate"] for g in step["gates"]} >= defaults, step["name"]
        pruned = report["steps"][2]
        assert pruned["overall"]["agreement"] < 0.9 and not pruned["passed"]
        assert report["selected"] is None or report["selected"]["name"] != "prune"
        assert result.exit_code == (0 if report["selected"] else 1), result.output


def test_tpr_on_too_few_positives_is_undecided_not_judged():
    """README: fewer than min_group_size positives leave the TPR gate undecided for that group,
    however large its observed drop."""
    rng = np.random.default_rng(7)
    n = 400
    y = (rng.random(n) < 0.08).astype(int)  # about 32 positives, below min_group_size 50
    base = y.copy()
    step = flip(base, np.flatnonzero(y == 1)[:10])  # a third of the positives lost
    g = gate(judge(y, base, step, np.array(["a"] * n), max_group_tpr_drop=0.02, on_undecided="warn"), "g=a")
    assert g["decision"] == "undecided" and "min_group_size" in g["reason"] and g["value"] > 0.25
    assert g["n"] == int(y.sum()) < 50
