"""docs/report.schema.json is the report.json contract: real `run` and `tune` reports validate
against it, it catches a broken report, and docs/report-schema.md describes every top-level and
step field the schema names."""

from __future__ import annotations

import json
import re

import pytest

from conftest import BASE_RECIPE, REPO, run_cli, write_recipe

jsonschema = pytest.importorskip("jsonschema")

SCHEMA = REPO / "docs" / "report.schema.json"
PROSE = REPO / "docs" / "report-schema.md"
STEPS = "\n[[steps]]\nkind = 'quantize_dynamic'\n\n[[steps]]\nkind = 'quantize_static'\ninput = 'baseline'\n"
LENIENT = "\n[gates]\nmax_group_accuracy_drop = 0.9\n"


def _validator():
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(report) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator().iter_errors(report)]


@pytest.fixture(scope="module")
def reports(tmp_path_factory, tiny):
    """report.json of a real run (two steps) and of a real tune on an ONNX source."""
    root = tmp_path_factory.mktemp("schema")
    for f in tiny.iterdir():
        if f.is_file():
            (root / f.name).symlink_to(f)
    run_out = root / "run"
    result = run_cli(["run", str(write_recipe(root / "r.toml", BASE_RECIPE + STEPS)), "--out", str(run_out), "-q"])
    assert result.exit_code in (0, 1), result.output
    (root / "tiny.onnx").write_bytes((run_out / "00-baseline.onnx").read_bytes())
    tune_out = root / "tune"
    recipe = write_recipe(root / "t.toml", BASE_RECIPE.replace("tiny.pt2", "tiny.onnx") + LENIENT)
    result = run_cli(["tune", str(recipe), "--out", str(tune_out), "--json"])
    assert result.exit_code in (0, 1), result.output
    return {"run": json.loads((run_out / "report.json").read_text()), "tune": json.loads((tune_out / "report.json").read_text()),
            "tune_stdout": result.stdout, "tune_exit": result.exit_code, "tune_out": tune_out}


@pytest.mark.parametrize("mode", ["run", "tune"])
def test_real_reports_validate(reports, mode):
    report = reports[mode]
    assert report["mode"] == mode
    assert _errors(report) == []


def test_tune_json_prints_the_summary_on_stdout(reports):
    summary = json.loads(reports["tune_stdout"])  # stdout is the JSON alone
    report = reports["tune"]
    assert summary["exit_code"] == reports["tune_exit"] and summary["verdict"] == report["verdict"]
    assert summary["search"] == report["search"] and summary["frontier"] == report["frontier"]
    assert summary["selected"] == report["selected"]
    if report["selected"]:
        assert summary["tuned_recipe"] == str(reports["tune_out"] / "tuned.toml") and (reports["tune_out"] / "tuned.toml").is_file()


def test_schema_catches_a_broken_report(reports):
    report = json.loads(json.dumps(reports["run"]))
    report["steps"][1]["groups"]["g=a"]["accuracy"] = 1.5
    del report["verdict"]
    report["steps"][1]["gates"][0]["status"] = "maybe"
    errors = _errors(report)
    assert any(e.startswith("steps/1/groups/g=a/accuracy") for e in errors)
    assert any("'verdict' is a required property" in e for e in errors)
    assert any(e.startswith("steps/1/gates/0/status") for e in errors)
    tune = json.loads(json.dumps(reports["tune"]))
    del tune["frontier"]
    assert any("'frontier' is a required property" in e for e in _errors(tune))


def test_prose_names_every_field_the_schema_lists():
    schema = json.loads(SCHEMA.read_text())
    prose = PROSE.read_text()
    documented = set(re.findall(r"`([a-z_0-9]+)`", prose))
    for where, props in [("top level", schema["properties"]), ("step", schema["$defs"]["step"]["properties"]),
                         ("check", schema["$defs"]["gate"]["properties"])]:
        missing = sorted(set(props) - documented)
        assert not missing, f"{where}: {missing} not in docs/report-schema.md"


def test_readme_points_to_the_schema():
    readme = (REPO / "README.md").read_text()
    assert "docs/report-schema.md" in readme and "docs/report.schema.json" in readme
    assert "../shared/" not in readme  # users of the package do not have it
