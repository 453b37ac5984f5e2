"""Run a model over the evaluation data and turn its outputs into per-group statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from .data import Dataset
from .errors import DataError, GeneratedModelError, ModelLoadError
from .mapped import cast, row_chunks
from .runtime import fixed_batch, make_session


BATCH_DEPENDENT_OPS = {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"}
DEFAULT_EVAL_BATCH = 1024
BASELINE_FILE = "00-baseline.onnx"  # the user's model as given or exported, in the scratch folder


def batch_dependent(path: Path) -> bool:
    """True when a row's output depends on the other rows of its batch (dynamic quantization)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in BATCH_DEPENDENT_OPS for n in model.graph.node)


def eval_batch_size(path: Path, *, configured: int | None, deployed: int) -> int:
    if configured is not None:
        return configured
    return deployed if batch_dependent(path) else DEFAULT_EVAL_BATCH


def predict(path: Path, data: Dataset, *, batch_size: int, generated: bool | None = None) -> np.ndarray:
    """Raw first output of the model on every eval row, in order (``predict_batches`` joined)."""
    return np.concatenate(list(predict_batches(path, data, batch_size=batch_size, generated=generated)), axis=0)


def predict_batches(path: Path, data: Dataset, *, batch_size: int, generated: bool | None = None) -> Iterator[np.ndarray]:
    """Raw first output of the model, batch by batch of eval rows, in order: one onnxruntime call
    per batch, nothing else kept. Uses all cores.

    `generated`: the model was made by edgefair (a compressed step), not the user's baseline
    (default: every file but BASELINE_FILE). The baseline is checked against the data first and
    runs on every row before any step does, so a step that cannot load or run on the same rows is
    a bug in edgefair or its libraries (GeneratedModelError, exit 3), not data that does not fit.
    """
    if generated is None:
        generated = path.name != BASELINE_FILE
    try:
        session = make_session(path, threads=0)
    except ModelLoadError as e:
        if generated:
            raise GeneratedModelError(f"{path.name}, a model edgefair generated, cannot be loaded: {e}") from e
        raise
    name = session.get_outputs()[0].name
    for feed in data.batches(fixed_batch(session) or batch_size):
        try:
            yield session.run([name], feed)[0]
        except Exception as e:  # onnxruntime raises InvalidArgument/Fail for shape or dtype mismatches
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            if generated:
                raise GeneratedModelError(
                    f"{path.name}, a model edgefair generated, fails on data.eval ({data.path.name}), which the baseline runs on: {first}"
                ) from e
            raise DataError(f"data.eval: {data.path.name} does not fit model {path.name}: {first}") from e


def conform_inputs(session, data: Dataset, key: str) -> Dataset:
    """Check that `data` has every model input with a compatible shape; cast to the model's dtypes."""
    from .runtime import ORT_DTYPES

    inputs = {}
    for spec in session.get_inputs():
        if spec.name not in data.inputs:
            have = ", ".join(sorted(data.inputs)) or "none"
            raise DataError(f"{key}: {data.path} has no array {spec.name!r} for model input {spec.name!r} (inputs there: {have})")
        arr = data.inputs[spec.name]
        want = spec.shape
        if arr.ndim != len(want) or any(isinstance(w, int) and w != a for w, a in zip(want[1:], arr.shape[1:])):
            shown = tuple(w if isinstance(w, int) else "batch" if i == 0 else w for i, w in enumerate(want))
            raise DataError(f"{key}: array {spec.name!r} in {data.path.name} has shape {arr.shape}, model input expects {shown}")
        dtype = ORT_DTYPES.get(spec.type)
        if dtype is None:
            raise DataError(f"{key}: model input {spec.name!r} has unsupported type {spec.type}")
        if arr.dtype.kind in "USO":
            raise DataError(f"{key}: array {spec.name!r} in {data.path.name} holds strings, model input expects {spec.type}")
        if arr.dtype.kind == "f":
            bad = np.concatenate([~np.isfinite(c["a"].reshape(len(c["a"]), -1)).all(axis=1) for c in row_chunks({"a": arr})])
            if bad.any():
                raise DataError(
                    f"{key}: array {spec.name!r} in {data.path.name} has NaN or infinite values in {int(bad.sum())} rows "
                    f"(first: row {int(np.argmax(bad))})"
                )
        inputs[spec.name] = cast(arr, dtype, f"{key}: array {spec.name!r} in {data.path.name}")  # a mapped array stays mapped
    return Dataset(data.path, inputs, data.labels, data.attributes)
