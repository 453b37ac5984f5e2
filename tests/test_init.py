"""`edgefair init MODEL DATA`: a starter recipe that `edgefair run` accepts, with the model's input
names, group columns proposed from the data with their sizes, and the default gates."""

from __future__ import annotations

import json
import re

import numpy as np

from conftest import REPO, run_cli

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ADULT_MODEL = REPO / "models" / "adult_mlp.pt2"
ADULT_EVAL = REPO / "calibration_data" / "adult_eval.npz"


def _quick(text: str) -> str:
    """Fewer latency rounds and bootstrap replicates: the test checks that run accepts the recipe."""
    text = re.sub(r"^runs = \d+", "runs = 10", text, flags=re.M)
    text = re.sub(r"^warmup = \d+", "warmup = 1", text, flags=re.M)
    return re.sub(r"^bootstrap = \d+", "bootstrap = 100", text, flags=re.M) + "\n"


def test_init_on_the_bundled_model_and_data_gives_a_recipe_run_accepts(tmp_path):
    import pandas as pd

    recipe = tmp_path / "sub" / "recipe.toml"
    result = run_cli(["init", str(ADULT_MODEL), str(ADULT_EVAL), "--out", str(recipe)])
    assert result.exit_code == 0, result.output
    text = recipe.read_text()
    raw = tomllib.loads(text)
    # input names from the model, paths relative to the recipe
    assert "# model inputs: features" in text
    assert (recipe.parent / raw["model"]["source"]).resolve() == ADULT_MODEL.resolve()
    assert (recipe.parent / raw["data"]["eval"]).resolve() == ADULT_EVAL.resolve()
    # groups: the few-valued columns that are neither input nor label, with their sizes (pandas counts them)
    assert raw["data"]["groups"] == ["sex", "race", "age_group"] and raw["data"]["label"] == "label"
    with np.load(ADULT_EVAL) as z:
        for col in raw["data"]["groups"]:
            counts = pd.Series(z[col]).value_counts()
            line = next(line for line in text.splitlines() if line.startswith(f"#   {col}: "))
            for value, n in counts.items():
                assert f"{value} {n}" in line, (col, value)
    # the default gates for a labelled classifier, every key commented
    from edgefair.gates import DEFAULTS_LABELLED

    assert raw["gates"] == DEFAULTS_LABELLED
    assert all("#" in line for line in text.splitlines() if re.match(r"^[a-z_]+ = ", line))

    recipe.write_text(_quick(text))
    out = tmp_path / "out"
    result = run_cli(["run", str(recipe), "--out", str(out), "-q"])
    assert result.exit_code in (0, 1), result.output
    report = json.loads((out / "report.json").read_text())
    assert [s["kind"] for s in report["steps"]] == ["export", "quantize_dynamic"]
    assert set(report["gates_applied"]["thresholds"]) == set(DEFAULTS_LABELLED)


def test_init_keeps_an_existing_recipe_unless_forced(recipe_dir):
    out = recipe_dir / "recipe.toml"
    out.write_text("# mine\n")
    result = run_cli(["init", str(recipe_dir / "tiny.pt2"), str(recipe_dir / "eval.npz"), "--out", str(out)])
    assert result.exit_code == 2 and f"--out: {out} exists" in result.stderr
    assert out.read_text() == "# mine\n"
    result = run_cli(["init", str(recipe_dir / "tiny.pt2"), str(recipe_dir / "eval.npz"), "--out", str(out), "--force"])
    assert result.exit_code == 0 and 'groups = ["g", "h"]' in out.read_text()


def test_init_with_an_onnx_model_and_csv_data(recipe_dir, tmp_path):
    """Input names from the ONNX graph; in a csv only text columns are proposed as groups, and text
    columns that are neither group nor label are kept out of the features."""
    import csv

    import onnxruntime as ort

    base = tmp_path / "base"
    assert run_cli(["run", str(_tiny_recipe(recipe_dir)), "--out", str(base), "-q"]).exit_code in (0, 1)
    model = recipe_dir / "tiny.onnx"
    model.write_bytes((base / "00-baseline.onnx").read_bytes())
    with np.load(recipe_dir / "eval.npz") as z:
        x, y, g = z["features"], z["label"], z["g"]
    with open(recipe_dir / "eval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"f{i}" for i in range(6)] + ["label", "region", "row_id"])
        for i in range(len(y)):  # f5 a 0/1 feature: few values, but numeric
            w.writerow([*map(repr, map(float, x[i][:5])), i % 2, int(y[i]), f"r-{g[i]}", f"id{i}"])
    out = recipe_dir / "csv.toml"
    result = run_cli(["init", str(model), str(recipe_dir / "eval.csv"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    raw = tomllib.loads(text)
    (name,) = [i.name for i in ort.InferenceSession(str(model)).get_inputs()]
    assert f"# model inputs: {name}" in text
    assert raw["data"]["groups"] == ["region"]
    assert raw["data"]["features"] == [f"f{i}" for i in range(6)]  # not row_id
    assert "not proposed (numeric, probably a feature): f5: 0 400, 1 400" in text
    result = run_cli(["validate", str(out)])
    assert result.exit_code == 0, result.output


def test_init_with_a_factory_and_the_group_value_bound(recipe_dir):
    """A `module:factory` source gives its forward's argument names; a column with 12 values is
    proposed, one with 13 is not (MAX_GROUP_VALUES)."""
    from edgefair.init import MAX_GROUP_VALUES

    assert MAX_GROUP_VALUES == 12  # the README says "2 to 12 values"
    with np.load(recipe_dir / "eval.npz") as z:
        arrays = {k: z[k] for k in z.files}
    n = len(arrays["label"])
    arrays["region"] = np.array([f"r{i % 12}" for i in range(n)])
    arrays["zip"] = np.array([f"z{i % 13}" for i in range(n)])
    np.savez(recipe_dir / "more.npz", **arrays)
    out = recipe_dir / "f.toml"
    result = run_cli(["init", "tiny_model:build", str(recipe_dir / "more.npz"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    raw = tomllib.loads(out.read_text())
    assert raw["model"]["source"] == "tiny_model:build" and "# model inputs: features" in out.read_text()
    assert raw["data"]["groups"] == ["g", "h", "region"]
    assert run_cli(["validate", str(out)]).exit_code == 0


def test_init_names_what_does_not_fit(recipe_dir):
    np.savez(recipe_dir / "wrong.npz", pixels=np.zeros((10, 6), np.float32), g=np.array(["a", "b"] * 5))
    result = run_cli(["init", str(recipe_dir / "tiny.pt2"), str(recipe_dir / "wrong.npz"), "--out", str(recipe_dir / "x.toml")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: DATA: no array 'features' for model input 'features' in {recipe_dir / 'wrong.npz'} (arrays: g, pixels)"
    np.savez(recipe_dir / "nogroups.npz", features=np.zeros((10, 6), np.float32), label=np.zeros(10, np.int64))
    result = run_cli(["init", str(recipe_dir / "tiny.pt2"), str(recipe_dir / "nogroups.npz"), "--out", str(recipe_dir / "x.toml")])
    assert result.exit_code == 2 and "looks like a sensitive attribute" in result.stderr
    result = run_cli(["init", str(recipe_dir / "missing.pt2"), str(recipe_dir / "eval.npz"), "--out", str(recipe_dir / "x.toml")])
    assert result.exit_code == 2 and "missing.pt2" in result.stderr
    assert not (recipe_dir / "x.toml").exists()


def _tiny_recipe(recipe_dir):
    from conftest import BASE_RECIPE, write_recipe

    return write_recipe(recipe_dir / "base.toml", BASE_RECIPE)
