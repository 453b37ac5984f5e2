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

