"""`edgefair run --previous DIR`: every model of a run compared, per group, with the model the last
release shipped, and the gate `max_group_regression_vs_previous`.

Real runs end to end: two factory models, the second one worse than the first in one group only
(but whose own int8 step is within the budget against its own fp32 baseline), exported, quantized,
evaluated and published; the per-group counts are checked against a plain recomputation from
onnxruntime predictions, and the interval against statsmodels' paired-difference interval."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, write_recipe

MODULE = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, harm: bool):
            super().__init__()
            torch.manual_seed(0)
            self.fc1 = nn.Linear(6, 16)
            self.fc2 = nn.Linear(16, 3)
            self.harm = harm

        def forward(self, features):
            logits = self.fc2(torch.relu(self.fc1(features)))
            if self.harm:  # far out on feature 0 (only group a lives there), push every class up by its index
                far = (features[:, :1] > 1.6).to(logits.dtype)
                logits = logits + far * torch.tensor([0.0, 50.0, 100.0])
            return logits


    def first():
        return Net(False).eval()


    def second():
        return Net(True).eval()
    '''
)


def _data(root: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("prev_models", root / "prev_models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import torch

    rng = np.random.default_rng(3)
    n = 1200
    x = rng.normal(size=(n, 6)).astype(np.float32)
    with torch.no_grad():
        label = mod.first()(torch.from_numpy(x)).argmax(1).numpy()
    noise = rng.random(n) < 0.1
    label = np.where(noise, rng.integers(0, 3, n), label).astype(np.int64)
    g = np.where(x[:, 0] > 0, "a", "b").astype("<U1")
    h = np.where(rng.random(n) < 0.5, "x", "y").astype("<U1")
    np.savez(root / "eval.npz", features=x, label=label, g=g, h=h)
    np.savez(root / "calib.npz", features=rng.normal(size=(64, 6)).astype(np.float32))


def _recipe(root: Path, name: str, factory: str, gate: str = "max_group_regression_vs_previous = 0.02") -> Path:
    return write_recipe(root / f"{name}.toml", f"""
        [model]
        source = "prev_models.py:{factory}"

        [data]
        eval = "eval.npz"
        calibration = "calib.npz"
        groups = ["g", "h"]
        min_group_size = 40

        [evaluate]
        bootstrap = 100

        [latency]
        warmup = 1
        runs = 10
        sessions = 1
        min_time_s = 0

        [gates]
        {gate}

        [[steps]]
        kind = "quantize_dynamic"
        """)


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("previous")
    (root / "prev_models.py").write_text(MODULE)
    _data(root)
    first = run_cli(["run", str(_recipe(root, "first", "first")), "--out", str(root / "v1"), "--no-cache", "-q"])
    assert first.exit_code == 0, first.output
    return root


def test_the_regression_gate_has_no_default_and_says_when_it_was_not_applied(releases):
    from edgefair.gates import effective_thresholds
    from edgefair.recipe import GatesConfig

    assert "max_group_regression_vs_previous" not in effective_thresholds(GatesConfig(), labelled=True, output="logits")
    assert "max_group_regression_vs_previous" not in effective_thresholds(GatesConfig(), labelled=False, output="logits")
    v1 = json.loads((releases / "v1" / "report.json").read_text())  # set in the recipe, run without --previous
    assert "previous" not in v1 and "vs_previous" not in v1["steps"][1]
    assert "max_group_regression_vs_previous" in v1["gates_applied"]["not_applied"]


def test_a_release_worse_for_one_group_fails_the_regression_gate(releases):
    root = releases
    res = run_cli(["run", str(_recipe(root, "second", "second")), "--out", str(root / "v2"), "--no-cache", "-q",
                   "--previous", str(root / "v1")])
    assert res.exit_code == 1, res.output
    report = json.loads((root / "v2" / "report.json").read_text())
    # within the fp32 budget: against its own baseline, the int8 step fails no other gate
    step = report["steps"][1]
    others = [g for g in step["gates"] if g["gate"] != "max_group_regression_vs_previous"]
    assert others and all(g["status"] != "fail" for g in others), others
    # ... but it is worse than what is in the field, for g=a only
    failed = {g["group"] for g in step["gates"] if g["gate"] == "max_group_regression_vs_previous" and g["status"] == "fail"}
    assert "g=a" in failed and "g=b" not in failed
    prev = report["previous"]
    assert prev["folder"] == "v1" and prev["measure"] == "accuracy" and prev["selected_step"] == "quantize_dynamic"
    from edgefair.io import sha256_file

    assert prev["model_sha256"] == sha256_file(root / "v1" / "selected.onnx")
    manifest = json.loads((root / "v2" / "manifest.json").read_text())
    assert manifest["previous"]["model_sha256"] == prev["model_sha256"]
    # the counts, recomputed from onnxruntime predictions of both models on the same rows
    import onnxruntime as ort

    data = np.load(root / "eval.npz")

    def pred(path):
        s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return s.run(None, {s.get_inputs()[0].name: data["features"]})[0].argmax(1)

    old, new = pred(root / "v1" / "selected.onnx"), pred(root / "v2" / step["model"])
    y = data["label"]
    for key, mask in (("g=a", data["g"] == "a"), ("g=b", data["g"] == "b"), ("g=a&h=x", (data["g"] == "a") & (data["h"] == "x"))):
        entry = step["vs_previous"]["groups"][key]
        lost = int(((old == y) & (new != y) & mask).sum())
        gained = int(((old != y) & (new == y) & mask).sum())
        assert (entry["n"], entry["lost"], entry["gained"]) == (int(mask.sum()), lost, gained)
        assert entry["change"] == pytest.approx((gained - lost) / mask.sum())
    a = step["vs_previous"]["groups"]["g=a"]
    assert a["change"] < -0.05 and a["change_ci"][1] < -0.02  # a real drop, beyond the limit
    # and the first screen says so
    assert "g=a" in (root / "v2" / "report.md").read_text()


def test_the_same_model_again_passes_the_regression_gate(releases):
    root = releases
    res = run_cli(["run", str(_recipe(root, "again", "first")), "--out", str(root / "v1b"), "--no-cache", "-q",
                   "--previous", str(root / "v1")])
    assert res.exit_code == 0, res.output
    report = json.loads((root / "v1b" / "report.json").read_text())
    step = report["steps"][1]  # the same int8 model as the one shipped: nothing changes on any row
    assert step["sha256"] == report["previous"]["model_sha256"]
    assert all(g["lost"] == 0 and g["gained"] == 0 for g in step["vs_previous"]["groups"].values())
    entries = [g for g in report["steps"][1]["gates"] if g["gate"] == "max_group_regression_vs_previous"]
    assert entries and all(g["status"] != "fail" for g in entries)


def test_the_interval_agrees_with_the_wald_interval_on_many_rows():
    """The change vs the previous model is a paired difference of proportions; with many
    discordant rows Tango's score interval and the textbook Wald interval for paired proportions
    (Agresti, Categorical Data Analysis, 10.1) agree closely (different intervals: to 0.5 points)."""
    from edgefair.previous import paired_changes

    rng = np.random.default_rng(0)
    n = 5000
    y = rng.integers(0, 2, n)
    old = np.where(rng.random(n) < 0.85, y, 1 - y)
    new = np.where(rng.random(n) < 0.1, 1 - old, old)
    masks = {"g=a": np.ones(n, bool)}
    out = paired_changes(masks, y, old, new, min_group_size=40, confidence=0.95)["g=a"]
    b = int(((old == y) & (new != y)).sum())
    c = int(((old != y) & (new == y)).sum())
    d = (c - b) / n
    se = np.sqrt((b + c) / n - ((c - b) / n) ** 2) / np.sqrt(n)
    assert out["change"] == pytest.approx(d)
    assert out["change_ci"][0] == pytest.approx(d - 1.959964 * se, abs=0.005)
    assert out["change_ci"][1] == pytest.approx(d + 1.959964 * se, abs=0.005)


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: None, "not a folder"),
        (lambda root: (root / "prevdir").mkdir(), "report.json: missing"),
        (lambda root: ((root / "prevdir").mkdir(), (root / "prevdir" / "report.json").write_text("{")), "cannot be read as JSON"),
        (lambda root: ((root / "prevdir").mkdir(), (root / "prevdir" / "report.json").write_text('{"steps": [], "verdict": "fail"}')),
         "nothing was shipped"),
    ],
)
def test_a_bad_previous_folder_is_bad_input(releases, tmp_path, setup, message):
    setup(tmp_path)
    res = run_cli(["run", str(_recipe(releases, "bad", "first")), "--out", str(tmp_path / "out"), "-q",
                   "--previous", str(tmp_path / "prevdir")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()
