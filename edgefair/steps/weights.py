"""Weight-only steps on the ONNX model: float16 weights, and 4-bit MatMul weights (MatMulNBits).

Both shrink the file; neither needs calibration data. What to expect on CPU:
- `fp16` halves the weights, but onnxruntime's CPU provider has fp16 kernels for few ops and wraps
  the others in Cast nodes, so it is no faster than fp32 there (all-MiniLM-L6-v2: same p50 within
  noise). It is a size step, or a step towards a GPU/NPU target; the step says so in its warnings.
- `quantize_weights_4bit` replaces MatMul nodes whose second input is a constant weight with
  onnxruntime's `MatMulNBits` (com.microsoft domain: runs on onnxruntime, not on other runtimes).
  Gemm is left alone: the torch exporter turns Linear on 2-D inputs (an MLP) into Gemm, on 3-D
  inputs (a transformer) into MatMul + Add. A model with no eligible MatMul is an error, not a
  silent no-op. `quantize_embeddings = true` also turns constant Gather tables (word embeddings, often
  most of a small transformer's bytes) into `GatherBlockQuantized`.

The float16 conversion is onnxruntime's copy of onnxconverter-common's `convert_float_to_float16`
(`onnxruntime.transformers.float16`): the same algorithm and `keep_io_types`, with no extra dependency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import check
from ..errors import StepError
from ..io import atomic_path
from . import StepContext, StepOutcome, register, require_known

FP16_CPU_WARNING = (
    "fp16 is a size step: onnxruntime's CPU provider has fp16 kernels for few ops and runs the rest "
    "through Cast nodes, so do not expect it to be faster than fp32 on CPU"
)
NO_MATMUL_MESSAGE = (
    "quantize_weights_4bit: {name} has no MatMul with a constant weight to quantize ({found}); "
    "MatMulNBits replaces MatMul only (an MLP exports its Linear layers as Gemm): use quantize_dynamic or quantize_static"
)


@dataclass(frozen=True)
class Fp16Config:
    keep_io_types: bool = True  # float32 inputs and outputs, so the same data and metrics apply
    keep_fp32_ops: tuple[str, ...] = ()  # op types to leave in float32, besides onnxruntime's default list
    exclude_nodes: tuple[str, ...] = ()  # node names to leave in float32

    def __post_init__(self) -> None:
        if not self.keep_io_types:
            raise ValueError(
                "keep_io_types: false would make the model take float16 inputs, which the float32 eval data "
                "and the other steps' measurements cannot share; keep it true"
            )


def _power_of_two_from_16(v: int) -> bool:
    return v >= 16 and v & (v - 1) == 0


@dataclass(frozen=True)
class QuantizeWeights4bitConfig:
    # 32 weights share one scale: smaller blocks follow the weights more closely (better fidelity)
    # at a few more bytes of scales; onnxruntime's default of 128 loses more on small models
    block_size: int = check(_power_of_two_from_16, "must be a power of two >= 16", default=32)
    symmetric: bool = True  # int4 in [-8, 7] with no zero points: smaller and the common choice
    # MatMulNBits compute type: 0 unset (= fp32), 1 fp32, 2 fp16, 3 bf16, 4 int8 (activations
    # quantized on the fly: fastest on x86/ARM CPUs, a little less exact)
    accuracy_level: int | None = check(lambda v: v in (0, 1, 2, 3, 4), "must be one of 0, 1, 2, 3, 4", default=None)
    exclude_nodes: tuple[str, ...] = ()  # MatMul (or Gather) node names to keep in float
    # also 4-bit the constant Gather tables (embeddings): all-MiniLM-L6-v2 goes from 54.9 to 14.7 MB,
    # cosine to the baseline from 0.960 to 0.953
    quantize_embeddings: bool = False


@register("fp16", Fp16Config)
def fp16(cfg: Fp16Config, src: Path, dst: Path, ctx: StepContext) -> StepOutcome:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    require_known("fp16.exclude_nodes", cfg.exclude_nodes, (n.name for n in model.graph.node), f"the nodes of {src.name}")
    converted = sum(i.data_type == onnx.TensorProto.FLOAT for i in model.graph.initializer)
    if not converted:
        raise StepError(f"fp16: {src.name} has no float32 weights to convert")
    try:
        # the converter logs a warning per weight it clamps to the float16 range; it still converts
        half = convert_float_to_float16(
            model,
            keep_io_types=cfg.keep_io_types,
            op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(cfg.keep_fp32_ops)),
            node_block_list=list(cfg.exclude_nodes),
        )
    except Exception as e:
        raise StepError(f"fp16 conversion failed on {src.name}: {e}") from e
    with atomic_path(dst) as tmp:
        onnx.save(half, str(tmp))
    outcome = StepOutcome(warnings=[FP16_CPU_WARNING])
    outcome.details["fp16_initializers"] = sum(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer)
    outcome.details["fp32_initializers_before"] = converted
    return outcome


def eligible_matmuls(model: Any, exclude: tuple[str, ...] = ()) -> tuple[list[str], dict[str, int]]:
    """Names of MatMul nodes MatMulNBits can take (constant float weight, 2-D or unit leading dims),
    and a count of the weight-carrying ops it cannot (for the error message)."""
    import onnx

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    weights = {i.name: i for i in model.graph.initializer if i.data_type in floats}
    names, others = [], {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.name not in exclude and len(node.input) > 1 and node.input[1] in weights:
            dims = list(weights[node.input[1]].dims)
            if len(dims) >= 2 and all(d == 1 for d in dims[:-2]):
                names.append(node.name)
                continue
        if node.op_type in ("MatMul", "Gemm", "Conv"):
            others[node.op_type] = others.get(node.op_type, 0) + 1
    return names, others


@register("quantize_weights_4bit", QuantizeWeights4bitConfig)
def quantize_weights_4bit(cfg: QuantizeWeights4bitConfig, src: Path, dst: Path, ctx: StepContext) -> StepOutcome:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    require_known("quantize_weights_4bit.exclude_nodes", cfg.exclude_nodes, (n.name for n in model.graph.node), f"the nodes of {src.name}")
    targets, others = eligible_matmuls(model, cfg.exclude_nodes)
    if not targets:
        found = ", ".join(f"{n} {op}" for op, n in sorted(others.items())) or "no MatMul, Gemm or Conv"
        raise StepError(NO_MATMUL_MESSAGE.format(name=src.name, found=found))
    try:
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=cfg.block_size,
            is_symmetric=cfg.symmetric,
            accuracy_level=cfg.accuracy_level,
            nodes_to_exclude=list(cfg.exclude_nodes),
            op_types_to_quantize=("MatMul", "Gather") if cfg.quantize_embeddings else ("MatMul",),
        )
        quantizer.process()
    except Exception as e:
        raise StepError(f"quantize_weights_4bit failed on {src.name}: {e}") from e
    with atomic_path(dst) as tmp:
        onnx.save(quantizer.model.model, str(tmp))
    done = sum(n.op_type == "MatMulNBits" for n in quantizer.model.model.graph.node)
    outcome = StepOutcome()
    if done < len(targets):
        outcome.warnings.append(f"{len(targets) - done} of {len(targets)} eligible MatMul node(s) were left in float")
    if others:
        left = ", ".join(f"{n} {op}" for op, n in sorted(others.items()))
        outcome.warnings.append(f"left in float: {left} (MatMul without a constant 2-D weight, e.g. attention; Gemm; Conv)")
    outcome.details["matmulnbits_nodes"] = done
    if cfg.quantize_embeddings:
        outcome.details["gather_quantized_nodes"] = sum(
            n.op_type == "GatherBlockQuantized" for n in quantizer.model.model.graph.node
        )
    return outcome
