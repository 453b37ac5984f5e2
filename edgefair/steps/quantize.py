"""Quantization steps, done by onnxruntime.quantization.

Traps handled here rather than rediscovered by users:
- dynamic int8 Conv becomes ConvInteger, 7-11x slower than fp32 on CPU: Conv is not in the default
  op types of `quantize_dynamic`, and asking for it is an error unless `allow_slow_conv = true`;
- entropy calibration through `quantize_static` uses as many histogram bins as quantized bins and
  so returns the MinMax ranges: edgefair runs the calibrator itself with `histogram_bins` (2048)
  and hands the ranges to `quantize_static` through its calibration cache;
- `quant_pre_process` can fail shape inference (transformer graphs): the step then quantizes the
  un-preprocessed model and says so in its warnings.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..config import check, in_range, positive
from ..errors import StepError
from ..io import atomic_path
from . import StepContext, StepOutcome, register, require_known

DYNAMIC_DEFAULT_OPS = ("MatMul", "Gemm", "Attention", "LSTM", "Gather")
SLOW_CONV_MESSAGE = (
    "dynamic int8 Conv (ConvInteger) runs 7-11x slower than fp32 on CPU; "
    "use quantize_static for convolutions, or set allow_slow_conv = true"
)


@dataclass(frozen=True)
class QuantizeDynamicConfig:
    per_channel: bool = False
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool = False  # 7-bit weights: safer on x86 CPUs without VNNI
    op_types: tuple[str, ...] = DYNAMIC_DEFAULT_OPS  # Conv left out on purpose, see module docstring
    exclude_nodes: tuple[str, ...] = ()
    allow_slow_conv: bool = False
    preprocess: bool = True

    def __post_init__(self) -> None:
        if "Conv" in self.op_types and not self.allow_slow_conv:
            raise ValueError(f"op_types: {SLOW_CONV_MESSAGE}")


@dataclass(frozen=True)
class QuantizeStaticConfig:
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = False
    # per-tensor is onnxruntime's fastest CPU path (measured: per-channel QDQ was 1.4x slower on the
    # Adult MLP at batch 1); per-channel can help accuracy when channel ranges differ a lot (convolutions)
    format: Literal["qdq", "qoperator"] = "qdq"  # QDQ: the format onnxruntime's CPU kernels fuse best
    activation_type: Literal["uint8", "int8"] = "uint8"  # U8S8 is onnxruntime's recommendation for x86
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool = False
    percentile: float = check(*in_range(0.0, 100.0, lo_open=True), default=99.999)
    histogram_bins: int = check(lambda v: v > 128, "must exceed the 128 quantized bins", default=2048)
    calibration_rows: int | None = check(positive, "must be > 0", default=None)  # None: every row
    calibration_batch: int = check(positive, "must be > 0", default=32)
    op_types: tuple[str, ...] | None = None  # None: every op onnxruntime can quantize
    exclude_nodes: tuple[str, ...] = ()
    preprocess: bool = True


def _preprocess(src: Path, workdir: Path, warnings: list[str]) -> Path:
    from onnxruntime.quantization import quant_pre_process

    src, out = src.resolve(), (workdir / f"{src.stem}.pre.onnx").resolve()  # absolute: the call runs elsewhere
    try:
        with _inside(out.parent):
            quant_pre_process(str(src), str(out), skip_symbolic_shape=False)
        return out
    except Exception as e:  # symbolic shape inference fails on some transformer graphs
        try:
            quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
            warnings.append(f"quantization pre-processing skipped symbolic shape inference: {e}")
            return out
        except Exception as e2:
            warnings.append(f"quantization pre-processing failed, quantized the model as is: {e2}")
            return src


@contextlib.contextmanager
def _inside(folder: Path):
    """Run in `folder`: onnxruntime's symbolic shape inference, when it fails, saves the model
    (~90 MB for MiniLM) as `sym_shape_infer_temp.onnx` plus external data in the current folder."""
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _quiet():
    # onnxruntime.quantization logs a pre-processing suggestion at WARNING on every call
    logging.getLogger().setLevel(logging.ERROR)


@register("quantize_dynamic", QuantizeDynamicConfig)
def quantize_dynamic(cfg: QuantizeDynamicConfig, src: Path, dst: Path, ctx: StepContext) -> StepOutcome:
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    _quiet()
    outcome = StepOutcome()
    model_in = _preprocess(src, ctx.workdir, outcome.warnings) if cfg.preprocess else src
    _check_nodes("quantize_dynamic.exclude_nodes", cfg.exclude_nodes, model_in)
    convs = [n.name for n in onnx.load(str(src), load_external_data=False).graph.node if n.op_type == "Conv"]
    if convs and "Conv" not in cfg.op_types:
        outcome.warnings.append(f"{len(convs)} Conv node(s) left in fp32: {SLOW_CONV_MESSAGE.split(';')[0]}")
    with atomic_path(dst) as tmp:
        try:
            ort_quantize_dynamic(
                str(model_in),
                str(tmp),
                per_channel=cfg.per_channel,
                reduce_range=cfg.reduce_range,
                weight_type=QuantType.QInt8 if cfg.weight_type == "int8" else QuantType.QUInt8,
                op_types_to_quantize=list(cfg.op_types),
                nodes_to_exclude=list(cfg.exclude_nodes),
            )
        except Exception as e:
            raise StepError(f"quantize_dynamic failed on {src.name}: {e}") from e
    outcome.details["quantized_nodes"] = _count_quantized(dst)
    return outcome


class _Reader:
    """onnxruntime CalibrationDataReader over the calibration set, in fixed-size batches."""

    def __init__(self, inputs: dict[str, np.ndarray], batch: int, rows: int | None) -> None:
        n = len(next(iter(inputs.values())))
        n = n if rows is None else min(n, rows)
        self._feeds = [{k: v[i : i + batch] for k, v in inputs.items()} for i in range(0, n, batch)]
        self._it = iter(self._feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


@register("quantize_static", QuantizeStaticConfig, needs_calibration=True)
def quantize_static(cfg: QuantizeStaticConfig, src: Path, dst: Path, ctx: StepContext) -> StepOutcome:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    _quiet()
    if ctx.calibration is None:
        raise StepError("quantize_static needs data.calibration")
    outcome = StepOutcome()
    model_in = _preprocess(src, ctx.workdir, outcome.warnings) if cfg.preprocess else src
    _check_nodes("quantize_static.exclude_nodes", cfg.exclude_nodes, model_in)
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[cfg.method]
    op_types = list(cfg.op_types) if cfg.op_types else sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    calib_options = {"symmetric": cfg.activation_type == "int8"}
    if cfg.method != "minmax":
        # more histogram bins than quantized bins, or entropy collapses to the MinMax range
        calib_options.update(num_bins=cfg.histogram_bins, num_quantized_bins=128, percentile=cfg.percentile)
    reader = _Reader(dict(ctx.calibration.inputs), cfg.calibration_batch, cfg.calibration_rows)
    cache = ctx.workdir / f"{dst.stem}.ranges.json"
    try:
        calibrator = create_calibrator(
            str(model_in),
            op_types,
            augmented_model_path=str(ctx.workdir / f"{dst.stem}.augmented.onnx"),
            calibrate_method=method,
            extra_options=calib_options,
        )
        calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), cache)
        del calibrator
    except Exception as e:
        raise StepError(f"quantize_static calibration ({cfg.method}) failed on {src.name}: {e}") from e
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    with atomic_path(dst) as tmp:
        try:
            ort_quantize_static(
                str(model_in),
                str(tmp),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ if cfg.format == "qdq" else QuantFormat.QOperator,
                op_types_to_quantize=op_types,
                per_channel=cfg.per_channel,
                reduce_range=cfg.reduce_range,
                activation_type=qtype[cfg.activation_type],
                weight_type=qtype[cfg.weight_type],
                nodes_to_exclude=list(cfg.exclude_nodes),
                calibrate_method=method,
                extra_options={"ActivationSymmetric": cfg.activation_type == "int8"},
                calibration_cache_path=str(cache),
            )
        except Exception as e:
            raise StepError(f"quantize_static failed on {src.name}: {e}") from e
    outcome.details["calibration_rows"] = min(ctx.calibration.n, cfg.calibration_rows or ctx.calibration.n)
    outcome.details["quantized_nodes"] = _count_quantized(dst)
    return outcome


def _check_nodes(key: str, names: tuple[str, ...], path: Path) -> None:
    if names:
        import onnx

        nodes = (n.name for n in onnx.load(str(path), load_external_data=False).graph.node)
        require_known(key, names, nodes, f"the nodes of {path.name}")


def _count_quantized(path: Path) -> int:
    import onnx

    ops = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "MatMulNBits"}
    return sum(n.op_type in ops for n in onnx.load(str(path), load_external_data=False).graph.node)
