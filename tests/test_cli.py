"""The CLI surface: commands, help, validate, report, probe and --latency-from."""

from __future__ import annotations

import json

from click.testing import CliRunner

from conftest import BASE_RECIPE, REPO, run_cli, write_recipe
from edgefair.cli import main


def test_every_command_has_help_and_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for name, cmd in main.commands.items():
        assert cmd.help, name
        assert f"edgefair {name}" in readme, name
        assert CliRunner().invoke(main, [name, "--help"]).exit_code == 0


def test_version():
    from edgefair import __version__

    result = run_cli(["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_validate_does_not_write(recipe_dir):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\n")
    before = set(recipe_dir.iterdir())
    result = run_cli(["validate", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "export parity" in result.output and "800 rows" in result.output
    assert set(recipe_dir.iterdir()) == before


def test_validate_bad_recipe(recipe_dir):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE.replace("[data]", "[data]\nlabel = 'nope'"))
    result = run_cli(["validate", str(recipe)])
    assert result.exit_code == 2 and result.output.startswith("Error: data.eval: label column 'nope'")


def test_report_rerenders_and_probe_replaces_latency(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\n")
    out = tmp_path / "out"
    assert run_cli(["run", str(recipe), "--out", str(out), "-q"]).exit_code == 0
    (out / "report.md").unlink()
    assert run_cli(["report", str(out)]).exit_code == 0
    assert (out / "report.md").is_file() and (out / "report.html").is_file()

    device = tmp_path / "device.json"
    result = run_cli(["probe", str(out / "01-quantize_dynamic.onnx"), "--runs", "20", "--warmup", "2", "--out", str(device)])
    assert result.exit_code == 0, result.output
    measured = json.loads(device.read_text())["models"][0]
    out2 = tmp_path / "out2"
    assert run_cli(["run", str(recipe), "--out", str(out2), "-q", "--latency-from", str(device)]).exit_code == 0
    steps = json.loads((out2 / "report.json").read_text())["steps"]
    assert steps[0]["latency"]["source"] == "local"
    assert steps[1]["latency"]["source"] == "device"
    assert steps[1]["latency"]["p95_ms"] == measured["latency"]["p95_ms"]
    assert steps[1]["sha256"] == measured["sha256"]


def test_latency_from_bad_file(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE)
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something-else"}')
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "o"), "--latency-from", str(bad)])
    assert result.exit_code == 2 and "schema" in result.output and not (tmp_path / "o").exists()


def test_report_on_missing_folder(tmp_path):
    result = run_cli(["report", str(tmp_path)])
    assert result.exit_code == 2 and "report.json: not found" in result.output


def test_tune_picks_the_fastest_passing_candidate_and_writes_a_runnable_recipe(recipe_dir, tmp_path):
    text = BASE_RECIPE + "\n[gates]\nmax_group_accuracy_drop = 0.9\n"
    recipe = write_recipe(recipe_dir / "r.toml", text)
    out = tmp_path / "tune"
    result = run_cli(["tune", str(recipe), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "tune" and len(report["steps"]) == 10
    speed = lambda s: (s["latency"]["p50_ms"], s["size_bytes"])  # noqa: E731
    passing = [s for s in report["steps"][1:] if s["passed"]]
    fastest = min(passing, key=speed)
    if speed(report["steps"][0]) <= speed(fastest):  # no compression beat the baseline: keep it
        fastest = report["steps"][0]
    assert report["selected"]["name"] == fastest["name"]
    again = tmp_path / "again"
    result = run_cli(["run", str(out / "tuned.toml"), "--out", str(again), "-q"])
    assert result.exit_code == 0, result.output
    rerun = json.loads((again / "report.json").read_text())
    assert rerun["steps"][-1]["name"] == fastest["name"]
    assert rerun["steps"][-1]["sha256"] == fastest["sha256"]  # same pipeline, same model bytes


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
