"""`edgefair tune`: the search, what it skips, its budget, Ctrl-C, the frontier, selection and tuned.toml."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import BASE_RECIPE, REPO, run_cli, write_recipe

LENIENT = "\n[gates]\nmax_group_accuracy_drop = 0.9\n"

# one Linear layer: its outputs are the model's outputs, so structured pruning has nothing it may remove
LINEAR_MODULE = """
import torch
from torch import nn


class OneLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, features):
        return self.fc(features)


def build():
    torch.manual_seed(0)
    return OneLayer()
"""


def test_tune_picks_the_fastest_passing_candidate_and_writes_a_runnable_recipe(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + LENIENT)
    out = tmp_path / "tune"
    result = run_cli(["tune", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    # progress per candidate on stderr (CliRunner mixes it into output), cheapest first
    assert "· candidate 1/11: dynamic-int8 (quantize_dynamic) ... " in result.output
    assert "· candidate 11/11: structured-75-int8 (quantize_static) ... " in result.output
    assert "frontier: p50 vs baseline" in result.output
    report = json.loads((out / "report.json").read_text())
    # the tiny calibration file has no group columns: the two keep-float repairs are skipped, with why
    assert [c["name"] for c in report["skipped"]] == ["static-int8-keep-float", "static-int8-per-channel-keep-float"]
    assert all("calibration" in c["reason"] for c in report["skipped"]), report["skipped"]
    assert report["mode"] == "tune" and len(report["steps"]) == 10 and report["not_tried"] == []
    assert report["search"] == {**report["search"], "candidates": 11, "evaluated": 9, "interrupted": False}
    speed = lambda s: (s["latency"]["p50_ms"], s["size_bytes"])  # noqa: E731
    passing = [s for s in report["steps"][1:] if s["passed"]]
    fastest = min(passing, key=speed)
    if speed(report["steps"][0]) <= speed(fastest):  # no compression beat the baseline: keep it
        fastest = report["steps"][0]
    # within timing noise of the fastest, the smallest ships (gates._choose)
    tied = report["selected"]["reason"].startswith("the smallest of")
    assert report["selected"]["name"] == fastest["name"] or tied
    chosen = report["steps"][report["selected"]["step"]]
    assert chosen["passed"]

    # the frontier: every evaluated candidate with its latency ratio, worst group per gate, and why it failed
    frontier = {r["name"]: r for r in report["frontier"]}
    assert set(frontier) == {s["name"] for s in report["steps"]}
    assert frontier["baseline"]["p50_ratio_vs_baseline"] == pytest.approx(1.0, abs=0.5)
    for s in report["steps"][1:]:
        row = frontier[s["name"]]
        assert row["passed"] == s["passed"] and row["selected"] == (s["index"] == chosen["index"])
        assert row["p50_ratio_vs_baseline"] > 0
        acc = [g for g in s["gates"] if g["gate"] == "max_group_accuracy_drop" and g["value"] is not None]
        assert row["worst"]["max_group_accuracy_drop"]["value"] == max(g["value"] for g in acc)
        fails = [(g["gate"], g["group"]) for g in s["gates"] if g["status"] == "fail"]
        assert [(f["gate"], f["group"]) for f in row["rejected_by"]] == fails
        assert bool(fails) != s["passed"]
        # no train data: pruning candidates recover label-free, distilled on the calibration inputs
        ft = (s.get("details") or {}).get("finetune")
        if s["kind"] == "prune":
            assert ft["data"] == "data.calibration" and not ft["labels_used"] and ft["distilled"]
        # the keep-float candidates repaired (or found nothing to repair) on the calibration rows
        if s["name"].endswith("keep-float"):
            assert "keep_float" in s["details"]

    tuned = (out / "tuned.toml").read_text()
    assert "[select]" in tuned and "max_group_accuracy_drop = 0.9" in tuned and "max_group_tpr_drop = 0.03" in tuned
    # published with the folder (never written after it): the manifest lists it with its hash
    from edgefair.io import sha256_file

    assert json.loads((out / "manifest.json").read_text())["files"]["tuned.toml"]["sha256"] == sha256_file(out / "tuned.toml")
    again = tmp_path / "again"
    result = run_cli(["run", str(out / "tuned.toml"), "--out", str(again), "-q"])
    assert result.exit_code == 0, result.output
    rerun = json.loads((again / "report.json").read_text())
    if chosen["index"]:
        assert rerun["steps"][-1]["name"] == chosen["name"]
        assert rerun["steps"][-1]["sha256"] == chosen["sha256"]  # same pipeline, same model bytes
        assert rerun["selected"]["name"] == chosen["name"]
    else:
        assert len(rerun["steps"]) == 1


def test_tune_keeps_the_baseline_when_nothing_is_faster(tmp_path):
    from edgefair.gates import apply_gates
    from edgefair.recipe import GatesConfig

    def step(i, p50):
        return {"index": i, "name": f"s{i}", "model": f"0{i}.onnx", "size_bytes": 100 - i, "overall": {},
                "groups": {}, "latency": {"p50_ms": p50, "p95_ms": p50}}

    report = {"steps": [step(0, 1.0), step(1, 1.2), step(2, 1.1)]}
    apply_gates(report, GatesConfig(max_size_mb=1.0), confidence=0.95, tune=True)
    assert report["selected"]["step"] == 0 and report["verdict"] == "pass"
    report = {"steps": [step(0, 1.0), step(1, 0.9), step(2, 0.7)]}
    apply_gates(report, GatesConfig(max_size_mb=1.0), confidence=0.95, tune=True)
    assert report["selected"]["step"] == 2


def _synthetic(sizes_p50):
    return {"steps": [{"index": i, "name": f"s{i}", "model": f"0{i}.onnx", "size_bytes": size, "overall": {},
                       "groups": {}, "latency": {"p50_ms": p50, "p95_ms": p50}} for i, (size, p50) in enumerate(sizes_p50)]}


def test_tune_selects_by_the_recipes_select_by(recipe_dir):
    from edgefair.recipe import load_recipe
    from edgefair.tune import select

    base = BASE_RECIPE + "\n[gates]\nmax_size_mb = 1.0\n"
    smallest = load_recipe(write_recipe(recipe_dir / "s.toml", base + "\n[select]\nby = 'smallest'\nrequire = 'all'\n"))
    fastest = load_recipe(write_recipe(recipe_dir / "f.toml", base))
    # s1 is the fastest, s2 the smallest; s3 fails the size gate (2 MB)
    rows = [(900_000, 1.0), (800_000, 0.5), (300_000, 0.9), (2_000_000, 0.1)]
    report = _synthetic(rows)
    select(report, smallest)
    assert report["selected"]["step"] == 2 and report["verdict"] == "pass"  # require = "all" does not apply to alternatives
    assert report["gates_applied"]["select"] == "smallest"
    report = _synthetic(rows)
    select(report, fastest)
    assert report["selected"]["step"] == 1 and report["gates_applied"]["select"] == "fastest"
    # no passing candidate smaller than the baseline: keep it
    report = _synthetic([(100_000, 1.0), (800_000, 0.5), (300_000, 0.9)])
    select(report, smallest)
    assert report["selected"]["step"] == 0 and "smaller" in report["selected"]["reason"]


def test_tune_skips_candidates_that_cannot_run_and_run_still_stops(recipe_dir, tmp_path):
    (recipe_dir / "one_layer.py").write_text(LINEAR_MODULE)
    text = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "one_layer.py:build"') + LENIENT
    recipe = write_recipe(recipe_dir / "r.toml", text)
    out = tmp_path / "tune"
    result = run_cli(["tune", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    skipped = {s["name"]: s for s in report["skipped"]}
    keep_float = {"static-int8-keep-float", "static-int8-per-channel-keep-float"}  # calib.npz has no group columns
    assert set(skipped) == {f"structured-{p}{x}" for p in (25, 50, 75) for x in ("", "-int8")} | keep_float
    assert "no neuron or channel can be removed" in skipped["structured-50"]["reason"]
    assert skipped["structured-50-int8"]["reason"].startswith("its input 'structured-50' was not built")
    assert [s["name"] for s in report["steps"]] == ["baseline", "dynamic-int8", "static-int8", "static-int8-per-channel"]
    assert [s["index"] for s in report["steps"]] == [0, 1, 2, 3]
    assert "skipped structured-25 (prune)" in result.output and "8 skipped" in result.output

    # `edgefair run` keeps stopping on a step that fails (bad input: exit 2, nothing written)
    run_recipe = write_recipe(recipe_dir / "run.toml", text + "\n[[steps]]\nkind = 'prune'\nstructured = true\nsparsity = 0.5\n")
    result = run_cli(["run", str(run_recipe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "no neuron or channel can be removed" in result.output
    assert not (tmp_path / "run").exists()


def test_tune_on_an_onnx_source_without_train_data(recipe_dir, tmp_path):
    base_out = tmp_path / "base"
    assert run_cli(["run", str(write_recipe(recipe_dir / "b.toml", BASE_RECIPE)), "--out", str(base_out), "-q"]).exit_code == 0
    (recipe_dir / "tiny.onnx").write_bytes((base_out / "00-baseline.onnx").read_bytes())
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE.replace("tiny.pt2", "tiny.onnx") + LENIENT)
    out = tmp_path / "tune"
    result = run_cli(["tune", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [s["kind"] for s in report["steps"][1:]] == ["quantize_dynamic", "quantize_static", "quantize_static"]
    assert report["source"]["kind"] == "onnx"
    assert {c["name"] for c in report["skipped"]} == {"static-int8-keep-float", "static-int8-per-channel-keep-float"}
    assert (out / "tuned.toml").is_file()
    rerun = run_cli(["run", str(out / "tuned.toml"), "--out", str(tmp_path / "again"), "-q"])
    assert rerun.exit_code == 0, rerun.output


def test_budget_parsing():
    from edgefair.errors import EdgefairError
    from edgefair.tune import parse_budget

    assert parse_budget("90s") == 90 and parse_budget("10m") == 600 and parse_budget("1.5h") == 5400
    assert parse_budget("45") == 45
    for bad in ("", "0s", "10 minutes", "-1m", "1d"):
        with pytest.raises(EdgefairError, match="--budget"):
            parse_budget(bad)


def test_tune_budget_spent_starts_no_candidate(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + LENIENT)
    assert run_cli(["tune", str(recipe), "--out", str(tmp_path / "x"), "--budget", "soon"]).exit_code == 2
    out = tmp_path / "tune"
    result = run_cli(["tune", str(recipe), "--out", str(out), "--budget", "0.001s"])  # spent by the export
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert len(report["steps"]) == 1 and report["search"]["budget_s"] == 0.001
    assert [s["name"] for s in report["not_tried"]] == [c["name"] for c in report["recipe"]["resolved"]["steps"]]
    assert "time budget of 0.001 s spent" in report["not_tried"][0]["reason"]
    assert "11 not tried" in result.output and report["selected"]["step"] == 0
    assert "no candidate was built: keep the uncompressed model" in result.output


def test_ctrl_c_keeps_what_was_found(recipe_dir, tmp_path):
    """A real `edgefair tune` process, interrupted after its first candidate: exit 130, and the
    candidates built until then are evaluated, gated and reported."""
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + LENIENT)
    out = tmp_path / "tune"
    cmd = [sys.executable, "-c", "from edgefair.cli import main; main()", "tune", str(recipe), "--out", str(out), "--no-cache"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ), cwd=REPO)
    seen = []
    deadline = time.monotonic() + 120
    for line in proc.stderr:  # progress lines
        seen.append(line)
        if line.startswith("· candidate 1/"):
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, seen
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, "".join(seen) + stderr
    assert "Interrupted" in stderr
    assert (out / "report.json").is_file(), "".join(seen) + stderr
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["interrupted"] is True
    names = [s["name"] for s in report["steps"]]
    assert names[:2] == ["baseline", "dynamic-int8"]
    assert report["steps"][1]["gates"] and "frontier" in report
    every = names[1:] + [s["name"] for s in report["skipped"] + report["not_tried"]]
    assert sorted(every) == sorted(c["name"] for c in report["recipe"]["resolved"]["steps"])
    if report["selected"]:
        assert "Interrupted" in (out / "tuned.toml").read_text()
    assert "frontier" in stdout


def test_tuned_recipe_round_trips_names_and_quotes(recipe_dir, tmp_path):
    import tomllib

    from edgefair.recipe import load_recipe
    from edgefair.tune import write_tuned_recipe

    odd = recipe_dir / 'say "hi" \\ data.npz'
    odd.symlink_to(recipe_dir / "eval.npz")
    np.savez(recipe_dir / "calib.1.npz", **{"input.1": np.zeros((4, 6), np.float32)})
    text = f"""
[model]
source = "tiny.pt2"
dynamic_axes = {{"input.1" = [1]}}

[data]
eval = {json.dumps(odd.name)}
calibration = "calib.1.npz"
groups = ["g", "h"]

[[steps]]
name = "q.1"
kind = "quantize_static"
exclude_nodes = ["node \\"quoted\\"", "/fc1/Gemm"]

[[steps]]
name = "other"
kind = "quantize_dynamic"
input = "baseline"

[gates]
max_group_accuracy_drop = 0.05

[select]
by = "smallest"
"""
    recipe = load_recipe(write_recipe(recipe_dir / "r.toml", text))
    path = tmp_path / "sub" / "tuned.toml"
    path.parent.mkdir()
    write_tuned_recipe(path, recipe, "q.1", thresholds={"max_group_accuracy_drop": 0.05, "max_group_tpr_drop": 0.03})
    raw = tomllib.loads(path.read_text())
    assert raw["model"]["dynamic_axes"] == {"input.1": [1]}
    assert raw["steps"] == [{"name": "q.1", "kind": "quantize_static", "input": "baseline", "exclude_nodes": ['node "quoted"', "/fc1/Gemm"]}]
    assert raw["select"] == {"by": "last", "require": "selected"}
    assert raw["gates"]["max_group_tpr_drop"] == 0.03 and raw["gates"]["max_group_accuracy_drop"] == 0.05
    again = load_recipe(path)
    assert again.resolve(again.data.eval) == odd.resolve()
    assert again.model.dynamic_axes == {"input.1": (1,)}
    assert [(s.name, s.config) for s in again.steps] == [(s.name, s.config) for s in recipe.steps[:1]]
    assert again.resolved()["evaluate"] == recipe.resolved()["evaluate"]


def test_labelled_recovery_epochs_follow_the_train_rows():
    """README: tune's structured candidates recover on data.train for about 1,000 optimizer steps
    (batch 64), 2 to 20 epochs: Adult's 36,177 rows get 2, the digits' 719 rows get 20."""
    from edgefair.recipe import load_recipe
    from edgefair.tune import candidates, recovery_epochs

    assert recovery_epochs(load_recipe(REPO / "calibration_data" / "adult_mlp.toml")) == 2
    digits = load_recipe(REPO / "calibration_data" / "digits_cnn.toml")
    assert recovery_epochs(digits) == 20
    pruned = [s for s in candidates(digits) if s.kind == "prune"]
    assert pruned and all(s.config.finetune_epochs == 20 and s.config.distill_alpha == 1.0 for s in pruned)
