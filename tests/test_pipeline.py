"""End to end on the tiny model: real export, real onnxruntime quantization, real sessions."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from sklearn.metrics import accuracy_score

from conftest import BASE_RECIPE, run_cli, write_recipe

RAN = (0, 1)  # passed or a gate failed: these tests look at what was measured, not at the verdict

STEPS = """
[[steps]]
kind = "prune"
sparsity = 0.5

[[steps]]
kind = "quantize_dynamic"
per_channel = true

[[steps]]
name = "static-entropy"
kind = "quantize_static"
input = "prune"
method = "entropy"
"""


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    for f in tiny.iterdir():
        if f.is_file():
            (root / f.name).symlink_to(f)
    recipe = write_recipe(root / "r.toml", BASE_RECIPE + STEPS)
    out = root / "out"
    result = run_cli(["run", str(recipe), "--out", str(out)])
    assert result.exit_code in RAN, result.output
    return root, out, json.loads((out / "report.json").read_text()), result.output


def test_report_has_every_step_and_group(tiny_run):
    _, out, report, _ = tiny_run
    assert report["schema_version"] == 1
    names = [s["name"] for s in report["steps"]]
    assert names == ["baseline", "prune", "quantize_dynamic", "static-entropy"]
    for step in report["steps"]:
        assert (out / step["model"]).is_file()
        for key in ["g=a", "g=b", "h=x", "h=y", "g=a&h=x"]:
            g = step["groups"][key]
            assert g["status"] == "ok" and 0 <= g["accuracy"] <= 1 and 0 <= g["ece"] <= 1
        lat = step["latency"]
        assert lat["runs"] == 20 and 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
    for step in report["steps"][1:]:
        for key, g in step["groups"].items():
            if g["status"] == "ok":
                assert 0 <= g["flip_rate"] <= 1
                lo, hi = g["accuracy_delta_ci"]
                assert lo <= g["accuracy_delta"] <= hi


def test_small_group_is_insufficient(tiny_run):
    _, _, report, _ = tiny_run
    g = report["steps"][1]["groups"]["g=c"]
    assert g["n"] < 40 and g["status"] == "insufficient_data"
    assert "accuracy" not in g


def test_numbers_match_independent_recomputation(tiny_run):
    root, out, report, _ = tiny_run
    with np.load(root / "eval.npz") as z:
        x, y, g, h = z["features"], z["label"], z["g"], z["h"]
    preds = {}
    for step in report["steps"]:
        sess = ort.InferenceSession(str(out / step["model"]), providers=["CPUExecutionProvider"])
        b = step["eval_batch_size"]  # dynamic int8 outputs depend on the batch
        preds[step["index"]] = np.concatenate([sess.run(None, {"features": x[i : i + b]})[0] for i in range(0, len(x), b)]).argmax(1)
    for step in report["steps"]:
        p = preds[step["index"]]
        assert step["overall"]["accuracy"] == pytest.approx(accuracy_score(y, p), abs=1e-9)
        for attr, col in (("g", g), ("h", h)):
            for value in ("a", "b") if attr == "g" else ("x", "y"):
                m = col == value
                entry = step["groups"][f"{attr}={value}"]
                assert entry["n"] == int(m.sum())
                assert entry["accuracy"] == pytest.approx(accuracy_score(y[m], p[m]), abs=1e-9)
                if step["index"] > 0:
                    base = preds[0]
                    assert entry["flip_rate"] == pytest.approx(float(np.mean(p[m] != base[m])), abs=1e-9)
                    acc_base = accuracy_score(y[m], base[m])
                    assert entry["accuracy_delta"] == pytest.approx(accuracy_score(y[m], p[m]) - acc_base, abs=1e-9)


def test_steps_really_compress(tiny_run):
    _, out, report, _ = tiny_run
    ops = {s["name"]: {n.op_type for n in onnx.load(str(out / s["model"])).graph.node} for s in report["steps"]}
    assert "MatMulInteger" in ops["quantize_dynamic"]
    assert "QuantizeLinear" in ops["static-entropy"] and "DequantizeLinear" in ops["static-entropy"]
    # pruning zeroes half of each weight matrix, permanently, in the exported graph
    pruned = onnx.load(str(out / "01-prune.onnx"))
    mats = [onnx.numpy_helper.to_array(t) for t in pruned.graph.initializer if len(t.dims) == 2]
    assert mats and all(abs((m == 0).mean() - 0.5) < 0.02 for m in mats)
    assert report["steps"][1]["details"]["achieved_sparsity"] == pytest.approx(0.5, abs=0.02)
    # the exported baseline has a dynamic batch axis
    base = onnx.load(str(out / "00-baseline.onnx"))
    assert base.graph.input[0].type.tensor_type.shape.dim[0].dim_param


def test_terminal_table_lists_groups(tiny_run):
    *_, output = tiny_run
    assert "[2] quantize_dynamic" in output and "g=a&h=x" in output and "insufficient data" in output


def test_same_inputs_same_metrics(tiny_run, tmp_path):
    root, _, report, _ = tiny_run
    out2 = tmp_path / "again"
    assert run_cli(["run", str(root / "r.toml"), "--out", str(out2), "--no-cache"]).exit_code in RAN
    again = json.loads((out2 / "report.json").read_text())
    for a, b in zip(report["steps"], again["steps"]):
        assert a["groups"] == b["groups"] and a["overall"] == b["overall"]


def test_factory_source_with_safetensors_matches_pt2(recipe_dir, tiny_run):
    _, _, report, _ = tiny_run
    text = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "tiny_model:build"\nweights = "tiny.safetensors"')
    out = recipe_dir / "out"
    result = run_cli(["run", str(write_recipe(recipe_dir / "f.toml", text)), "--out", str(out)])
    assert result.exit_code in RAN, result.output
    factory = json.loads((out / "report.json").read_text())
    assert factory["steps"][0]["overall"]["accuracy"] == report["steps"][0]["overall"]["accuracy"]
    assert factory["source"]["parity"]["argmax_agreement"] == 1.0


def test_onnx_source_skips_export(recipe_dir, tiny_run, monkeypatch):
    """An .onnx source is the baseline as it is: no torch export or parity check runs, the baseline
    written is byte-identical to the given file, and its metrics (recomputed, not cached) are those
    of the same model exported from the .pt2."""
    import edgefair.prepare

    _, out, report, _ = tiny_run
    given = out / "00-baseline.onnx"
    (recipe_dir / "m.onnx").symlink_to(given)

    def no_torch(*a, **k):
        raise AssertionError("an .onnx source must not go through torch")

    monkeypatch.setattr(edgefair.prepare, "export_model", no_torch)
    monkeypatch.setattr(edgefair.prepare, "check_parity", no_torch)
    text = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "m.onnx"') + "\n[[steps]]\nkind = 'quantize_dynamic'\n"
    out2 = recipe_dir / "out"
    result = run_cli(["run", str(write_recipe(recipe_dir / "o.toml", text)), "--out", str(out2), "--no-cache"])
    assert result.exit_code in RAN, result.output
    assert "export: torch -> ONNX" not in result.output
    rep = json.loads((out2 / "report.json").read_text())
    assert rep["source"]["kind"] == "onnx" and rep["source"]["parity"] is None
    assert (out2 / "00-baseline.onnx").read_bytes() == given.read_bytes()
    assert rep["steps"][0]["cache"] == {"model": "off", "stats": "off"}
    assert rep["steps"][0]["overall"] == report["steps"][0]["overall"]


def test_factory_from_file_path(recipe_dir, tmp_path):
    sub = recipe_dir / "recipes"
    sub.mkdir()
    text = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "../tiny_model.py:build"\nweights = "../tiny.safetensors"')
    text = text.replace('"eval.npz"', '"../eval.npz"').replace('"calib.npz"', '"../calib.npz"')
    result = run_cli(["run", str(write_recipe(sub / "r.toml", text)), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code in RAN, result.output
    assert json.loads((tmp_path / "o" / "report.json").read_text())["source"]["kind"] == "factory"


def test_onnx_source_with_external_data(recipe_dir, tiny_run, tmp_path):
    _, out, report, _ = tiny_run
    model = onnx.load(str(out / "00-baseline.onnx"))
    onnx.save(model, str(recipe_dir / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0)
    text = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "ext.onnx"')
    result = run_cli(["run", str(write_recipe(recipe_dir / "e.toml", text)), "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code in RAN, result.output
    rep = json.loads((tmp_path / "o" / "report.json").read_text())
    assert rep["steps"][0]["overall"] == report["steps"][0]["overall"]


def test_quantized_probability_outputs_are_read_like_the_baseline(recipe_dir, tmp_path):
    """A softmax-output model: int8 QDQ on the Softmax output leaves rows summing to 1 +- K/255.
    The step must still be read as probabilities (decided once, on the baseline), not softmaxed again."""
    from edgefair.metrics import ece

    save_softmax_model(recipe_dir / "soft.pt2", scale=3.0)
    text = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "soft.pt2"') + "\n[[steps]]\nkind = 'quantize_static'\n"
    out = tmp_path / "o"
    result = run_cli(["run", str(write_recipe(recipe_dir / "s.toml", text)), "--out", str(out), "--no-cache"])
    assert result.exit_code in RAN, result.output
    report = json.loads((out / "report.json").read_text())
    with np.load(recipe_dir / "eval.npz") as z:
        x, y = z["features"], z["label"]
    sess = ort.InferenceSession(str(out / "01-quantize_static.onnx"), providers=["CPUExecutionProvider"])
    p = sess.run(None, {"features": x})[0].astype(np.float64)
    assert np.abs(p.sum(1) - 1).max() > 1e-4  # the trap is real
    p = np.clip(p, 0, 1) / np.clip(p, 0, 1).sum(1, keepdims=True)
    assert report["steps"][1]["overall"]["ece"] == pytest.approx(ece(p, y), abs=1e-9)


# -- the output kind is decided once, in prepare ---------------------------------------------------


class FirstFeature(torch.nn.Module):
    """One binary logit: the first feature as it is."""

    def forward(self, features):
        return features[:, :1] * 1.0


def _first_feature_case(recipe_dir):
    """eval rows whose first feature is in [0, 1] for the rows prepare runs first (256), and beyond
    it later: a single-logit model whose first rows look like probabilities."""
    rng = np.random.default_rng(3)
    with np.load(recipe_dir / "eval.npz") as z:
        arrays = dict(z)
    x = arrays["features"].copy()
    x[:, 0] = rng.uniform(0.05, 0.95, len(x))
    x[300:, 0] = rng.normal(0.0, 3.0, len(x) - 300)
    arrays["features"] = x
    arrays["label"] = (x[:, 0] > 0.5).astype(np.int64)
    np.savez(recipe_dir / "ff.npz", **arrays)
    ep = torch.export.export(FirstFeature().eval(), (torch.zeros(4, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(recipe_dir / "ff.pt2"))
    text = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "ff.pt2"').replace('eval = "eval.npz"', 'eval = "ff.npz"')
    return write_recipe(recipe_dir / "ff.toml", text)


def _prepare(recipe_path, tmp_path):
    from edgefair.cache import Cache
    from edgefair.prepare import prepare
    from edgefair.recipe import load_recipe

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return prepare(load_recipe(recipe_path), work, Cache(None))


def test_output_kind_is_decided_on_every_eval_row_once(recipe_dir, tmp_path):
    """Fine-tuning (inputs.probabilities, in the step key) and evaluation read the outputs the same
    way: rows 300+ leave [0, 1], so this single-logit model is logits for both, although the first
    256 rows alone would make it probabilities."""
    inputs = _prepare(_first_feature_case(recipe_dir), tmp_path)
    assert inputs.output_kind == "logits" and inputs.probabilities is False
    out = tmp_path / "o"
    result = run_cli(["run", str(recipe_dir / "ff.toml"), "--out", str(out), "--no-cache"])
    assert result.exit_code in RAN, result.output
    report = json.loads((out / "report.json").read_text())
    with np.load(recipe_dir / "ff.npz") as z:
        x, y = z["features"], z["label"]
    # read as logits, class 1 is predicted where the logit is > 0 (as probabilities it would be > 0.5)
    assert report["steps"][0]["overall"]["accuracy"] == pytest.approx(float(np.mean((x[:, 0] > 0) == y)), abs=1e-9)


def test_output_kind_probabilities_and_configured_kinds(recipe_dir, tmp_path):
    save_softmax_model(recipe_dir / "soft.pt2", scale=1.0)
    soft = BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "soft.pt2"')
    assert _prepare(write_recipe(recipe_dir / "s.toml", soft), tmp_path).output_kind == "probabilities"
    assert _prepare(write_recipe(recipe_dir / "t.toml", BASE_RECIPE), tmp_path).output_kind == "logits"
    for kind in ("logits", "probabilities", "embedding"):
        text = soft.replace("[model]", f'[model]\noutput = "{kind}"')
        assert _prepare(write_recipe(recipe_dir / f"{kind}.toml", text), tmp_path).output_kind == kind


def test_embedding_output_is_not_checked_against_labels_as_classes(recipe_dir, tmp_path):
    """An embedding's width is not a number of classes: labels beyond it are no error there."""
    with np.load(recipe_dir / "eval.npz") as z:
        arrays = dict(z)
    arrays["label"] = arrays["label"] + 5  # class ids up to 7, the tiny model has 3 outputs
    np.savez(recipe_dir / "biglabel.npz", **arrays)
    text = BASE_RECIPE.replace('eval = "eval.npz"', 'eval = "biglabel.npz"').replace("[model]", '[model]\noutput = "embedding"')
    inputs = _prepare(write_recipe(recipe_dir / "e.toml", text), tmp_path)
    assert inputs.output_kind == "embedding"


def save_softmax_model(path, *, scale: float) -> None:
    """A 6 -> 3 linear model with a softmax output (probabilities, not logits), as a .pt2."""

    class Soft(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc = torch.nn.Linear(6, 3)

        def forward(self, features):
            return torch.softmax(scale * self.fc(features), dim=1)

    ep = torch.export.export(Soft().eval(), (torch.zeros(4, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(path))


def test_identical_model_files_are_timed_once_and_share_their_latency(recipe_dir, tmp_path):
    """Two steps that write the same file (same sha256) are one model: timed once, same figures,
    so timing noise cannot make a file look faster than itself (and decide what ships)."""
    recipe = write_recipe(recipe_dir / "twins.toml", BASE_RECIPE + """
        [[steps]]
        name = "a"
        kind = "quantize_dynamic"

        [[steps]]
        name = "b"
        kind = "quantize_dynamic"
        input = "baseline"
        """)
    out = tmp_path / "out"
    result = run_cli(["run", str(recipe), "--out", str(out), "-q"])
    assert result.exit_code in (0, 1), result.output
    a, b = json.loads((out / "report.json").read_text())["steps"][1:]
    assert a["sha256"] == b["sha256"]
    assert b["latency"]["same_file_as_step"] == 1 and "same_file_as_step" not in a["latency"]
    assert {k: v for k, v in b["latency"].items() if k != "same_file_as_step"} == a["latency"]
