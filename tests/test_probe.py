"""The device probe: runs with numpy + onnxruntime only (torch, click, scipy and even onnx blocked),
writes an edgefair-latency/1 document, and load_device_latency reads it back or names what is wrong;
identical files are measured once, device settings must match the run's, and `edgefair probe` is the
same parser as `python -m edgefair.probe`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgefair.errors import DataError
from edgefair.io import sha256_file
from edgefair.latency import LatencySettings
from edgefair.probe import SCHEMA, load_device_latency, probe, synthesize_inputs

REPO = Path(__file__).resolve().parent.parent

# Runs before edgefair is imported: any attempt to import these fails like on a bare device.
BLOCKER = textwrap.dedent(
    """
    import sys
    class Block:
        BLOCKED = {"torch", "click", "scipy", "pandas", "onnx"}
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in self.BLOCKED:
                raise ImportError(f"blocked on the device: {name}")
            return None
    sys.meta_path.insert(0, Block())
    """
)


def seq_model(path: Path, seed: int = 0) -> Path:
    """x: float [batch, seq, 4] and ids: int64 [batch] -> y = ReduceSum(x @ w) + Cast(ids)."""
    w = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"]),
            helper.make_node("ReduceSum", ["m"], ["s"], keepdims=0),
            helper.make_node("Cast", ["ids"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["s", "f"], ["y"]),
        ],
        "seq",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 4]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_probe_runs_without_torch_click_scipy_or_onnx(tmp_path):
    model = seq_model(tmp_path / "seq.onnx")
    out = tmp_path / "lat.json"
    code = BLOCKER + textwrap.dedent(
        f"""
        import edgefair.probe as p
        rc = p.main([{str(model)!r}, "--runs", "15", "--min-time-s", "0", "--warmup", "2", "--batch-size", "2",
                     "--dim", "seq=5", "--out", {str(out)!r}])
        assert "torch" not in sys.modules and "onnx" not in sys.modules
        sys.exit(rc)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == SCHEMA == "edgefair-latency/1"
    assert doc["inputs"] == "synthetic"
    assert doc["machine"]["cores"] >= 1 and "isa" in doc["machine"]
    import onnxruntime

    assert doc["onnxruntime"] == onnxruntime.__version__
    (entry,) = doc["models"]
    assert entry["path"] == str(model) and entry["paths"] == [str(model)]
    assert entry["sha256"] == sha256_file(model)
    assert entry["size_bytes"] == model.stat().st_size
    lat = entry["latency"]
    assert lat["runs"] == 15 and lat["batch_size"] == 2 and lat["threads"] == 1
    assert lat["sessions"] == 3 and lat["runs_by_session"] == [5, 5, 5]
    assert 0 < lat["p50_ms"] <= lat["p95_ms"] <= lat["p99_ms"]
    assert lat["parameters"] is None and lat["conv_integer_nodes"] is None  # no onnx on the device
    assert load_device_latency([out])[entry["sha256"]]["p50_ms"] == lat["p50_ms"]


def test_missing_dynamic_dim_is_a_usage_error(tmp_path):
    model = seq_model(tmp_path / "seq.onnx")
    proc = subprocess.run(
        [sys.executable, "-m", "edgefair.probe", str(model), "--runs", "10"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "Error: seq.onnx: input 'x' axis 1 is dynamic ('seq'); give it with --dim seq=VALUE"


def test_synthetic_inputs_follow_shapes_and_dtypes(tmp_path):
    model = seq_model(tmp_path / "seq.onnx")
    a = synthesize_inputs(model, batch_size=3, dims={"seq": 7}, seed=1)
    b = synthesize_inputs(model, batch_size=3, dims={"seq": 7}, seed=1)
    assert a["x"].shape == (48, 7, 4) and a["x"].dtype == np.float32  # 16 batches of 3 rows
    assert a["ids"].shape == (48,) and a["ids"].dtype == np.int64
    np.testing.assert_array_equal(a["x"], b["x"])  # seeded


def test_probe_with_data_and_two_models(tmp_path):
    m1, m2 = seq_model(tmp_path / "a.onnx"), seq_model(tmp_path / "b.onnx", seed=1)
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.standard_normal((20, 5, 4)), ids=np.arange(20), label=np.zeros(20))
    doc = probe([m1, m2], runs=10, warmup=1, data=data, min_time_s=0)
    assert doc["inputs"] == "data"
    assert [m["latency"]["spinning"] for m in doc["models"]] == [False, False]
    assert doc["models"][1]["latency"]["ratio_p50_ci"] is not None


def write(path: Path, doc) -> Path:
    path.write_text(json.dumps(doc))
    return path


def good_doc(sha: str = "a" * 64) -> dict:
    return {"schema": SCHEMA, "machine": {"cpu": "Cortex-A72"}, "onnxruntime": "1.x",
            "models": [{"path": "m.onnx", "sha256": sha, "latency": {"p50_ms": 1, "p90_ms": 2, "p95_ms": 2.5, "p99_ms": 3}}]}


def test_load_device_latency(tmp_path):
    f1 = write(tmp_path / "one.json", good_doc("a" * 64))
    f2 = write(tmp_path / "two.json", good_doc("b" * 64))
    got = load_device_latency([f1, f2])
    assert set(got) == {"a" * 64, "b" * 64}
    assert got["a" * 64]["device"] == {"cpu": "Cortex-A72"} and got["a" * 64]["source"] == str(f1)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(schema="edgefair-latency/2"), "schema: expected 'edgefair-latency/1', got 'edgefair-latency/2'"),
        (lambda d: d.update(models=[]), "models: must be a non-empty list"),
        (lambda d: d["models"][0].update(sha256="xyz"), "models[0].sha256: must be 64 lowercase hex characters, got 'xyz'"),
        (lambda d: d["models"][0].pop("latency"), "models[0].latency: must be an object"),
        (lambda d: d["models"][0]["latency"].update(p95_ms="fast"), "models[0].latency.p95_ms: must be a number >= 0, got 'fast'"),
    ],
)
def test_load_device_latency_names_file_and_key(tmp_path, mutate, message):
    doc = good_doc()
    mutate(doc)
    path = write(tmp_path / "bad.json", doc)
    with pytest.raises(ValueError) as e:
        load_device_latency([path])
    assert str(e.value) == f"{path}: {message}"


def test_load_device_latency_rejects_duplicates_and_non_json(tmp_path):
    f1, f2 = write(tmp_path / "a.json", good_doc()), write(tmp_path / "b.json", good_doc())
    with pytest.raises(ValueError, match=rf"models\[0\]: model aaaaaaaaaaaa is already measured in {f1}"):
        load_device_latency([f1, f2])
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="c.json: not a readable JSON file"):
        load_device_latency([bad])


def test_identical_models_are_measured_once_and_read_back(tmp_path):
    # `edgefair probe edgefair-out/*.onnx` meets selected.onnx, a copy of one step's model
    m1 = seq_model(tmp_path / "01-step.onnx")
    other = seq_model(tmp_path / "00-baseline.onnx", seed=1)
    selected = Path(shutil.copy(m1, tmp_path / "selected.onnx"))
    doc = probe([other, m1, selected], runs=10, warmup=1, min_time_s=0, dims={"seq": 3})
    assert [m["paths"] for m in doc["models"]] == [[str(other)], [str(m1), str(selected)]]
    assert doc["models"][1]["path"] == str(m1) and doc["models"][1]["sha256"] == sha256_file(selected)
    out = write(tmp_path / "device.json", doc)
    got = load_device_latency([out], expected=LatencySettings())
    assert set(got) == {sha256_file(other), sha256_file(m1)}
    assert got[sha256_file(selected)]["paths"] == [str(m1), str(selected)]


def test_a_file_listing_one_model_twice_is_read(tmp_path):
    # probe files written before identical models were merged list them twice: the first counts
    doc = good_doc()
    second = json.loads(json.dumps(doc["models"][0]))
    second.update(path="selected.onnx")
    second["latency"]["p50_ms"] = 9
    doc["models"].append(second)
    got = load_device_latency([write(tmp_path / "old.json", doc)])
    assert got["a" * 64]["p50_ms"] == 1 and got["a" * 64]["paths"] == ["m.onnx", "selected.onnx"]


def settings_doc(**latency) -> dict:
    doc = good_doc()
    doc["models"][0]["latency"].update({"batch_size": 1, "threads": 1, "inter_op_threads": 1, "optimization": "all", **latency})
    return doc


@pytest.mark.parametrize(
    "latency, expected, message",
    [
        ({"batch_size": 8}, {}, "batch_size 8 does not match [latency] batch_size 1"),
        ({}, {"threads": 4}, "threads 1 does not match [latency] threads 4"),
        ({"optimization": "basic"}, {}, "optimization basic does not match [latency] optimization all"),
        ({"inter_op_threads": 2}, {}, "inter_op_threads 2 does not match [latency] inter_op_threads 1"),
    ],
)
def test_device_settings_must_match_the_run(tmp_path, latency, expected, message):
    path = write(tmp_path / "device.json", settings_doc(**latency))
    with pytest.raises(ValueError) as e:
        load_device_latency([path], expected=LatencySettings(**expected))
    assert str(e.value) == f"{path}: {message}"
    assert load_device_latency([path])  # without expected settings nothing is compared


def test_device_settings_that_are_missing_cannot_match(tmp_path):
    path = write(tmp_path / "device.json", good_doc())
    with pytest.raises(ValueError) as e:
        load_device_latency([path], expected=LatencySettings())
    assert str(e.value) == f"{path}: models[0].latency.batch_size: missing, so it cannot be checked against [latency] batch_size 1"
    path = write(tmp_path / "device.json", settings_doc())
    assert load_device_latency([path], expected=LatencySettings())["a" * 64]["p50_ms"] == 1


def test_run_refuses_device_latency_of_another_batch_size(tmp_path):
    """measure_latency (the pipeline) passes the recipe's [latency] settings: a DataError names file and key."""
    from types import SimpleNamespace

    from edgefair.pipeline import measure_latency
    from edgefair.recipe import LatencyConfig

    device = write(tmp_path / "device.json", settings_doc(batch_size=8))
    recipe = SimpleNamespace(
        latency=LatencyConfig(enabled=False, from_files=("device.json",)),
        evaluate=SimpleNamespace(confidence=0.95, seed=0),
        resolve=lambda f: tmp_path / f,
    )
    with pytest.raises(DataError) as e:
        measure_latency(SimpleNamespace(recipe=recipe), [], [], (), lambda s: None)
    assert str(e.value) == f"latency.from_files: {device}: batch_size 8 does not match [latency] batch_size 1"


def options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(-h|--[a-z][a-z0-9-]*)\b", help_text))


def test_click_and_module_probe_have_the_same_options(tmp_path):
    from click.testing import CliRunner

    from edgefair.cli import main

    module = subprocess.run([sys.executable, "-m", "edgefair.probe", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    click_help = CliRunner().invoke(main, ["probe", "--help"])
    assert module.returncode == 0 and click_help.exit_code == 0
    assert options(click_help.output) == options(module.stdout)
    assert {"--dim", "--data", "--sessions", "--out", "--min-time-s", "--optimization"} <= options(module.stdout)
    # and the click command takes them: a dynamic sequence axis needs --dim
    model = seq_model(tmp_path / "seq.onnx")
    out = tmp_path / "lat.json"
    result = CliRunner().invoke(main, ["probe", str(model), "--dim", "seq=5", "--runs", "10", "--warmup", "1",
                                       "--min-time-s", "0", "--sessions", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{model}: p50 ")
    assert json.loads(out.read_text())["models"][0]["latency"]["sessions"] == 2
