"""Release gates: the decision rule on its own, the intervals against independent references, and a
real case where static quantization harms one group only."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from conftest import run_cli, write_recipe
from edgefair.gates import Harm, decide
from edgefair.intervals import paired_difference_ci, proportion_ci

RULE = {"decision": "ci", "on_insufficient": "warn", "max_width": 2.0}


@pytest.mark.parametrize(
    "harm, status",
    [
        (Harm(0.002, (0.000, 0.008)), "pass"),  # upper bound within
        (Harm(0.030, (0.020, 0.040)), "fail"),  # even the lower bound beyond
        (Harm(0.006, (0.001, 0.012)), "fail"),  # non-inferiority not shown, interval narrow enough
        (Harm(0.000, (-0.03, 0.03)), "warn"),  # too wide to decide
        (Harm(0.015, (-0.01, 0.04)), "warn"),  # beyond the limit, but no evidence of any harm
        (Harm(0.015, (-0.01, 0.04), significant=True), "fail"),  # Holm-significant harm beyond the limit
        (Harm(0.015, (0.001, 0.04)), "fail"),  # interval excludes no harm (no test given)
        (Harm(0.005, (0.001, 0.04), significant=True), "warn"),  # real but within the limit; undecided
        (Harm(None, None), "warn"),
    ],
)
def test_decide(harm, status):
    assert decide(harm, 0.01, **RULE)[0] == status


def test_point_decision_ignores_interval():
    assert decide(Harm(0.006, (0.001, 0.012)), 0.01, decision="point", on_insufficient="warn", max_width=2.0)[0] == "pass"
    assert decide(Harm(0.011, (0.0, 0.02)), 0.01, decision="point", on_insufficient="warn", max_width=2.0)[0] == "fail"


def test_insufficient_can_fail():
    assert decide(Harm(None, None), 0.01, decision="ci", on_insufficient="fail", max_width=2.0)[0] == "fail"


@pytest.mark.parametrize("k, n", [(0, 70), (3, 70), (35, 70), (70, 70), (12, 5000)])
def test_clopper_pearson_matches_statsmodels(k, n):
    lo, hi = proportion_confint(k, n, alpha=0.05, method="beta")
    assert proportion_ci(k, n, 0.95) == pytest.approx((lo, hi), abs=1e-9)


def test_newcombe_paired_interval_covers_and_never_collapses():
    # no discordant pairs: the bootstrap says [0, 0]; the score interval still has width
    lo, hi = paired_difference_ci(60, 0, 0, 10, 0.95)
    assert lo < 0 < hi and hi - lo > 0.02
    # coverage by simulation: true difference -0.03 (lost 5%, gained 2%), n = 400
    rng = np.random.default_rng(1)
    probs = [0.80, 0.05, 0.02, 0.13]  # both, lost, gained, neither
    true = probs[2] - probs[1]
    hits = 0
    for _ in range(2000):
        c = rng.multinomial(400, probs)
        lo, hi = paired_difference_ci(*c, 0.95)
        hits += lo <= true <= hi
    assert 0.93 <= hits / 2000 <= 0.975


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
max_group_accuracy_drop = {drop}
"""


def run_harm(harmed, tmp_path, *, drop: float, exit_code: int):
    """Run HARM_RECIPE with the given accuracy-drop limit; return (recipe, out folder, report)."""
    recipe = write_recipe(harmed / f"drop-{drop}.toml", HARM_RECIPE.format(drop=drop))
    out = tmp_path / "out"
    result = run_cli(["run", str(recipe), "--out", str(out)])
    assert result.exit_code == exit_code, result.output
    return recipe, out, json.loads((out / "report.json").read_text())


def test_harm_to_one_group_fails_the_build(harmed, tmp_path):
    recipe, out, report = run_harm(harmed, tmp_path, drop=0.04, exit_code=1)
    static = report["steps"][2]
    assert static["groups"]["g=z"]["accuracy_delta"] < -0.05  # real harm, to group z only
    assert static["groups"]["g=a"]["accuracy_delta"] > -0.01
    failed = [g for g in static["gates"] if g["status"] == "fail"]
    assert {(g["gate"], g["group"]) for g in failed} == {("max_group_accuracy_drop", "g=z")}
    assert report["verdict"] == "fail"
    # the last passing step is the one to ship
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


def test_lenient_gates_pass_and_select_last_step(harmed, tmp_path):
    _, out, report = run_harm(harmed, tmp_path, drop=0.9, exit_code=0)
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
    assert run_cli(["run", str(write_recipe(harmed / "ok.toml", HARM_RECIPE.format(drop=0.9))), "--out", str(out)]).exit_code == 0
    assert (out / "selected.onnx").exists()
    text = HARM_RECIPE.format(drop=0.9).replace("[[steps]]\nkind = \"quantize_dynamic\"\n", "") + "max_size_mb = 0.000001\n"
    assert run_cli(["run", str(write_recipe(harmed / "bad.toml", text)), "--out", str(out)]).exit_code == 1
    assert not (out / "selected.onnx").exists()
    assert not (out / "01-quantize_dynamic.onnx").exists()  # listed in the earlier manifest, not in this run
    assert (out / "01-quantize_static.onnx").exists()


def test_widened_intervals_never_collapse_and_keep_the_bootstrap():
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
