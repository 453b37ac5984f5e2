"""torch -> ONNX export (one self-contained file, dynamic batch axis) and the parity check."""

from __future__ import annotations

import contextlib
import io
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import ExportError
from .io import atomic_path

# torch.onnx.export is not safe to run in two threads at once (it fails with "Failed to export the
# model with torch.export"), and silencing its chatter swaps sys.stdout/stderr, which are the
# process's: one export at a time per process
_EXPORT_LOCK = threading.Lock()


@dataclass(frozen=True)
class Parity:
    rows: int
    max_abs_diff: float
    argmax_agreement: float

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "max_abs_diff": self.max_abs_diff, "argmax_agreement": self.argmax_agreement}


def export_onnx(
    module: Any,
    examples: Mapping[str, np.ndarray],
    input_names: Sequence[str],
    dst: Path,
    *,
    opset: int | None = None,
    dynamic_axes: Mapping[str, Sequence[int]] | None = None,
) -> None:
    """Export `module` called as module(*inputs in `input_names` order) to `dst` atomically.

    Axis 0 of every input is dynamic (batch); `dynamic_axes` may name more (e.g. sequence length).
    """
    import onnx
    import torch

    args = tuple(torch.from_numpy(np.array(examples[n], order="C")) for n in input_names)
    dims: list[dict[int, Any]] = []
    for n in input_names:
        axes = sorted({0, *((dynamic_axes or {}).get(n, ()))})
        dims.append({a: (torch.export.Dim("batch") if a == 0 else torch.export.Dim(f"{n}_dim{a}")) for a in axes})
    kwargs: dict[str, Any] = {"opset_version": opset} if opset else {}
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with _EXPORT_LOCK, atomic_path(dst) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sink = io.StringIO()
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                torch.onnx.export(
                    module,
                    args,
                    str(tmp),
                    input_names=list(input_names),
                    dynamic_shapes=tuple(dims),
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                    **kwargs,
                )
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise ExportError(f"model.source: export to ONNX failed: {first}") from e
        try:
            onnx.checker.check_model(str(tmp))
        except Exception as e:
            raise ExportError(f"model.source: exported ONNX model is invalid: {e}") from e


def check_parity(
    module: Any,
    out: np.ndarray,
    feed: Mapping[str, np.ndarray],
    input_names: Sequence[str],
    *,
    atol: float,
    rtol: float,
) -> Parity:
    """Compare torch on `feed` with onnxruntime's first output `out` for the same rows; raise
    ExportError when they disagree."""
    import torch

    with torch.no_grad():
        ref = module(*(torch.from_numpy(np.array(feed[n], order="C")) for n in input_names))
    if isinstance(ref, (tuple, list)):
        ref = ref[0]
    ref = ref.detach().numpy()
    if out.shape != ref.shape:
        raise ExportError(f"model.source: ONNX output shape {out.shape} differs from torch {ref.shape}")
    diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))) if out.size else 0.0
    agree = 1.0
    if ref.ndim == 2 and ref.shape[1] > 1:
        agree = float(np.mean(out.argmax(1) == ref.argmax(1)))
    parity = Parity(len(out), diff, agree)
    limit = atol + rtol * float(np.max(np.abs(ref))) if ref.size else atol
    if not np.isfinite(diff) or diff > limit or agree < 1.0:
        raise ExportError(
            f"model.source: exported ONNX disagrees with torch on {parity.rows} eval rows: "
            f"max |onnx - torch| = {diff:.3g} (limit {limit:.3g}), argmax agreement {agree:.4f}"
        )
    return parity
