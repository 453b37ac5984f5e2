"""onnxruntime sessions and batched inference. Imports only numpy and onnxruntime (usable on devices)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from .errors import ModelLoadError

ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def make_session(
    path: str | Path,
    *,
    threads: int = 0,
    inter_op_threads: int = 1,
    optimization: str = "all",
    spinning: bool = True,
):
    """An onnxruntime CPU session. threads=0 lets onnxruntime choose.

    `spinning=False` stops idle worker threads from busy-waiting for work: needed whenever several
    sessions share the cores, or the idle ones steal cycles from the one being timed.
    """
    import onnxruntime as ort

    if optimization not in OPTIMIZATION_LEVELS:
        raise ValueError(f"optimization: must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = inter_op_threads
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise ModelLoadError(f"{path}: onnxruntime cannot load the model: {first}") from e


def fixed_batch(session) -> int | None:
    """The model's batch size if its first input has a fixed one, else None (dynamic)."""
    dim = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else None
    return dim if isinstance(dim, int) else None


def run_batched(session, feeds: Iterable[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Run the first output over all feeds and concatenate along the batch axis."""
    name = session.get_outputs()[0].name
    parts = [session.run([name], dict(feed))[0] for feed in feeds]
    return np.concatenate(parts, axis=0)
