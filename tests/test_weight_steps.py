"""The weight-only ONNX steps: fp16 and quantize_weights_4bit (MatMulNBits), on tiny real models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import BASE_RECIPE, run_cli, write_recipe
from edgefair.config import build
from edgefair.errors import RecipeError, StepError
from edgefair.io import sha256_file
from edgefair.steps import REGISTRY, StepContext
from edgefair.steps.weights import NO_MATMUL_MESSAGE, Fp16Config, QuantizeWeights4bitConfig

K, H, N_OUT = 64, 32, 8


def _ctx(tmp_path: Path) -> StepContext:
    return StepContext(torch_model=None, calibration=None, train=None, export=None, workdir=tmp_path, seed=0)


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(0, 0.2, (K, H)).astype(np.float32),
        "b1": rng.normal(0, 0.1, H).astype(np.float32),
        "w2": rng.normal(0, 0.2, (H, N_OUT)).astype(np.float32),
    }


def _mlp(path: Path, *, op: str = "MatMul") -> Path:
    """x (N, 64) -> MatMul w1 + b1 -> Relu -> MatMul w2 -> y (N, 8); op="Gemm" builds the same with Gemm."""
    w = _weights()
    if op == "MatMul":
        nodes = [
            helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
            helper.make_node("Add", ["h0", "b1"], ["h1"], name="add1"),
            helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
            helper.make_node("MatMul", ["h2", "w2"], ["y"], name="mm2"),
        ]
    else:
        nodes = [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="gemm1"),
            helper.make_node("Relu", ["h1"], ["h2"], name="relu"),
            helper.make_node("Gemm", ["h2", "w2"], ["y"], name="gemm2"),
        ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N_OUT])],
        [numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _x(n: int = 16) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, K)).astype(np.float32)


def _apply(kind: str, cfg, src: Path, tmp_path: Path, name: str = "out.onnx"):
    dst = tmp_path / name
    outcome = REGISTRY[kind].apply(cfg, src, dst, _ctx(tmp_path))
    return dst, outcome


# --- quantize_weights_4bit ------------------------------------------------------------------------


def test_4bit_replaces_matmuls_and_stays_close(tmp_path):
    src = _mlp(tmp_path / "mlp.onnx")
    before = sha256_file(src)
    dst, outcome = _apply("quantize_weights_4bit", QuantizeWeights4bitConfig(), src, tmp_path)

    assert sha256_file(src) == before  # the input is never edited
    model = onnx.load(str(dst))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert [n.op_type for n in model.graph.node].count("MatMul") == 0
    assert len(nbits) == 2 and outcome.details["matmulnbits_nodes"] == 2
    attrs = {a.name: helper.get_attribute_value(a) for a in nbits[0].attribute}
    assert (attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]) == (K, H, 4, 32)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]  # written atomically

    # independent bound: round-to-nearest int4 moves each weight by at most half a step, and a
    # step is at most absmax(block)/7 (whether the scale maps absmax to -8 or to 7)
    x = _x()
    w = _weights()
    h_ref = np.maximum(x @ w["w1"] + w["b1"], 0)
    y_ref = h_ref @ w["w2"]
    y = _run(dst, x)
    step1 = np.abs(w["w1"]).reshape(K // 32, 32, H).max(axis=1).repeat(32, axis=0) / 7  # (K, H)
    h_bound = np.abs(x) @ (step1 / 2)
    assert np.all(np.abs(_run_hidden(dst, x) - h_ref) <= h_bound + 1e-5)
    rel = np.linalg.norm(y - y_ref) / np.linalg.norm(y_ref)
    assert 0 < rel < 0.2  # quantized (not a copy), and still the same function: int4 on N(0, 0.2) weights


def _run_hidden(path: Path, x: np.ndarray) -> np.ndarray:
    """The ReLU output of the quantized model (exposed as an extra graph output)."""
    model = onnx.load(str(path))
    model.graph.output.append(helper.make_tensor_value_info("h2", TensorProto.FLOAT, ["batch", H]))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["h2"], {"x": x})[0]


def test_4bit_exclude_nodes_keeps_them_in_float(tmp_path):
    src = _mlp(tmp_path / "mlp.onnx")
    dst, outcome = _apply("quantize_weights_4bit", QuantizeWeights4bitConfig(exclude_nodes=("mm2",)), src, tmp_path)
    ops = {n.name: n.op_type for n in onnx.load(str(dst)).graph.node}
    assert ops["mm2"] == "MatMul"
    assert list(ops.values()).count("MatMulNBits") == 1 and outcome.details["matmulnbits_nodes"] == 1


def test_4bit_gemm_only_model_is_a_clear_error(tmp_path):
    src = _mlp(tmp_path / "gemm.onnx", op="Gemm")
    with pytest.raises(StepError) as e:
        _apply("quantize_weights_4bit", QuantizeWeights4bitConfig(), src, tmp_path)
    assert str(e.value) == NO_MATMUL_MESSAGE.format(name="gemm.onnx", found="2 Gemm")
    assert not (tmp_path / "out.onnx").exists()


def test_4bit_torch_linear_on_sequences_exports_as_matmul(tmp_path):
    """The torch exporter writes Linear on 3-D inputs (transformers) as MatMul: the step takes it."""
    import torch

    from edgefair.export import export_onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(K, H), torch.nn.GELU(), torch.nn.Linear(H, N_OUT)).eval()
    x = np.random.default_rng(2).normal(size=(3, 5, K)).astype(np.float32)  # (batch, sequence, features)
    src = tmp_path / "seq.onnx"
    export_onnx(model, {"x": x}, ["x"], src, dynamic_axes={"x": (1,)})
    dst, outcome = _apply("quantize_weights_4bit", QuantizeWeights4bitConfig(block_size=16), src, tmp_path)
    assert outcome.details["matmulnbits_nodes"] == 2
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    longer = np.random.default_rng(3).normal(size=(2, 9, K)).astype(np.float32)  # another sequence length
    assert _run(dst, longer).shape == (2, 9, N_OUT)
    out = _run(dst, x)
    assert 0 < np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.2


@pytest.mark.parametrize(
    "table, message",
    [
        ({"block_size": 24}, "steps[1].block_size: must be a power of two >= 16 (got 24)"),
        ({"block_size": 8}, "steps[1].block_size: must be a power of two >= 16 (got 8)"),
        ({"accuracy_level": 5}, "steps[1].accuracy_level: must be one of 0, 1, 2, 3, 4 (got 5)"),
    ],
)
def test_4bit_config_rejects_bad_values(table, message):
    with pytest.raises(RecipeError) as e:
        build(QuantizeWeights4bitConfig, table, "steps[1]")
    assert str(e.value) == message


# --- fp16 ---------------------------------------------------------------------------------------


def test_fp16_halves_weights_keeps_float32_io(tmp_path):
    src = _mlp(tmp_path / "mlp.onnx")
    before = sha256_file(src)
    dst, outcome = _apply("fp16", Fp16Config(), src, tmp_path)

    assert sha256_file(src) == before
    model = onnx.load(str(dst))
    assert {i.data_type for i in model.graph.initializer} == {TensorProto.FLOAT16}
    assert outcome.details["fp16_initializers"] == 3
    for vi in (*model.graph.input, *model.graph.output):
        assert vi.type.tensor_type.elem_type == TensorProto.FLOAT
    size_ratio = dst.stat().st_size / src.stat().st_size
    assert size_ratio < 0.6
    x = _x()
    y, y_ref = _run(dst, x), _run(src, x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, y_ref, atol=1e-2 * np.abs(y_ref).max())
    assert outcome.warnings and "size step" in outcome.warnings[0]


def test_fp16_without_keep_io_types_is_refused_in_the_recipe(recipe_dir):
    # float16 inputs could not be fed the float32 eval data that every step shares
    recipe = write_recipe(recipe_dir / "io.toml", BASE_RECIPE + '\n[[steps]]\nkind = "fp16"\nkeep_io_types = false\n')
    result = run_cli(["run", str(recipe), "--out", str(recipe_dir / "out")])
    assert result.exit_code == 2 and "steps[0].keep_io_types: false would make the model take float16 inputs" in result.output


def test_fp16_of_a_model_without_float_weights_is_an_error(tmp_path):
    src = _mlp(tmp_path / "mlp.onnx")
    half, _ = _apply("fp16", Fp16Config(), src, tmp_path, name="half.onnx")
    with pytest.raises(StepError, match="has no float32 weights to convert"):
        _apply("fp16", Fp16Config(), half, tmp_path, name="again.onnx")


# --- through the CLI ----------------------------------------------------------------------------


def test_cli_runs_fp16_and_explains_4bit_on_gemm(recipe_dir):
    recipe = write_recipe(recipe_dir / "fp16.toml", BASE_RECIPE + '\n[[steps]]\nkind = "fp16"\n')
    result = run_cli(["run", str(recipe), "--out", str(recipe_dir / "out")])
    assert result.exit_code == 0, result.output
    report = json.loads((recipe_dir / "out" / "report.json").read_text())
    step = report["steps"][1]
    assert step["kind"] == "fp16"  # (the tiny model's Cast nodes outweigh its 400 halved weights)
    half = onnx.load(str(recipe_dir / "out" / step["model"]))
    assert {i.data_type for i in half.graph.initializer} == {TensorProto.FLOAT16}
    assert step["overall"]["cosine_min"] > 0.999

    # the tiny model is an MLP: its Linear layers export as Gemm, which MatMulNBits does not take
    recipe = write_recipe(recipe_dir / "q4.toml", BASE_RECIPE + '\n[[steps]]\nkind = "quantize_weights_4bit"\n')
    result = run_cli(["run", str(recipe), "--out", str(recipe_dir / "out4")])
    assert result.exit_code == 2
    assert "quantize_weights_4bit: 00-baseline.onnx has no MatMul with a constant weight" in result.output
