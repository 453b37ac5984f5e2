"""Magnitude pruning with torch.nn.utils.prune, on the torch model before export.

Masks are made permanent (`prune.remove`) before export: otherwise the exported graph would carry
`weight_orig * mask` or, worse, the unpruned weights.

`structured = true` removes whole neurons/channels instead, and can fine-tune afterwards (with
`distill = true`, the teacher is the step's *input* torch model: the uncompressed model when the
step reads the baseline): see structured.py and finetune.py.

Recovery data (`recovery_data`): "train" fine-tunes on data.train (its labels, mixed with the
teacher's outputs when `distill`); "calibration" distils on the *inputs* of data.calibration
alone, with the teacher's outputs as the only targets (label-free: no labels are read); "auto"
(default) is "train" when data.train is given, else "calibration" when `distill` and
data.calibration is given. The calibration rows are a file of their own, apart from the eval rows
the gates judge, so recovery never sees the rows it is judged on.

Row weighting (`recovery_weighting`): "groups" gives every cell of `recovery_groups` (default
data.groups; their values on the recovery rows, read from the data file by name) the same total
weight, so small groups count as much as large ones; "disagreement" gives the rows on which the
student's prediction differs from the teacher's `disagreement_weight` times the weight of the
others, recomputed at the start of every epoch.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import typing
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import check, in_range, positive
from ..errors import DataError, StepError
from . import StepContext, StepOutcome, register, require_known
from .finetune import FinetuneSettings, finetune
from .structured import onnx_inputs, structured_step

DENSE_WARNING = (
    "unstructured sparsity keeps dense tensors: onnxruntime's CPU kernels run no faster and the file is "
    "no smaller; use structured pruning or quantization for speed"
)


@dataclass(frozen=True)
class PruneConfig:
    sparsity: float = check(*in_range(0.0, 1.0, hi_open=True))  # fraction of weights removed
    structured: bool = False  # true: remove whole neurons/channels so the graph shrinks
    scope: Literal["layer", "global"] = "layer"  # rank weights within each layer, or across all
    exclude: tuple[str, ...] = ()  # parameter names (as in the state dict) to leave alone
    # structured only: channel ranking, and recovery fine-tuning on data.train (0 epochs: none)
    importance: Literal["l1", "l2"] = "l1"  # norm of each output channel's weights (Li et al. 2017)
    finetune_epochs: int = check(lambda v: v >= 0, "must be >= 0", default=0)
    lr: float = check(positive, "must be > 0", default=1e-3)  # Adam
    batch_size: int = check(positive, "must be > 0", default=64)
    distill: bool = False  # also match the step's input model (the teacher) with a KL term
    temperature: float = check(positive, "must be > 0", default=4.0)
    distill_alpha: float = check(*in_range(0.0, 1.0), default=0.5)  # weight of the KL term
    # what recovery trains on: auto = data.train if given, else data.calibration's inputs when distill
    recovery_data: Literal["auto", "train", "calibration"] = "auto"
    distill_loss: Literal["auto", "kl", "mse"] = "auto"  # auto: mse for embedding outputs, else kl
    recovery_weighting: Literal["none", "groups", "disagreement"] = "none"
    recovery_groups: tuple[str, ...] = ()  # "groups" weighting: attributes whose cells weigh equally (default data.groups)
    disagreement_weight: float = check(lambda v: v >= 1, "must be >= 1", default=4.0)  # "disagreement": weight of a disagreeing row
    recovery_max_weight: float = check(lambda v: v >= 1, "must be >= 1", default=5.0)  # "groups": cap on a row's weight (mean 1)

    def __post_init__(self) -> None:
        for name in ("recovery_data", "distill_loss", "recovery_weighting"):  # build() checks these too; direct use as well
            allowed = typing.get_args(typing.get_type_hints(PruneConfig)[name])
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: must be one of {', '.join(map(repr, allowed))} (got {getattr(self, name)!r})")
        if not self.structured and self.finetune_epochs:
            raise ValueError("finetune_epochs: recovery fine-tuning needs structured = true (it would refill pruned weights)")
        if self.distill and not self.finetune_epochs:
            raise ValueError("distill: needs finetune_epochs > 0")
        for name, default in (("recovery_data", "auto"), ("recovery_weighting", "none"), ("distill_loss", "auto")):
            if getattr(self, name) != default and not self.finetune_epochs:
                raise ValueError(f"{name}: applies to recovery fine-tuning, which needs structured = true and finetune_epochs > 0")
        if self.recovery_data == "calibration" and not self.distill:
            raise ValueError(
                "recovery_data: the calibration rows carry no labels: recovery on them is label-free distillation "
                "and needs distill = true (the step's input model's outputs are the targets)"
            )
        if self.distill_loss != "auto" and not self.distill:
            raise ValueError("distill_loss: needs distill = true")
        if self.distill_loss == "mse" and self.recovery_weighting == "disagreement":
            raise ValueError("recovery_weighting: 'disagreement' compares predicted classes, which mse distillation (embeddings) has not")
        if self.recovery_groups and self.recovery_weighting != "groups":
            raise ValueError("recovery_groups: applies to recovery_weighting = 'groups' only")
        if len(set(self.recovery_groups)) != len(self.recovery_groups):
            raise ValueError("recovery_groups: names a group twice")
        if self.disagreement_weight != 4.0 and self.recovery_weighting != "disagreement":
            raise ValueError("disagreement_weight: applies to recovery_weighting = 'disagreement' only")
        if self.recovery_max_weight != 5.0 and self.recovery_weighting != "groups":
            raise ValueError("recovery_max_weight: applies to recovery_weighting = 'groups' only")


def prunable(model: Any, exclude: tuple[str, ...] = ()) -> list[tuple[Any, str, str]]:
    """(owning module, attribute, full name) of every weight matrix or kernel (ndim >= 2)."""
    out = []
    for full, param in model.named_parameters():
        owner_name, _, attr = full.rpartition(".")
        if param.ndim >= 2 and attr == "weight" and full not in exclude:
            out.append((model.get_submodule(owner_name) if owner_name else model, attr, full))
    return out


@register("prune", PruneConfig, needs_torch=True)
def prune_step(cfg: PruneConfig, src: Path, dst: Path, ctx: StepContext) -> StepOutcome:
    import torch
    from torch.nn.utils import prune

    if ctx.torch_model is None:
        raise StepError("prune works on the torch model: use a .pt2 or factory source and put prune before quantization steps")
    require_known("prune.exclude", cfg.exclude, (n for n, _ in ctx.torch_model.named_parameters()), "the model's parameters")
    if cfg.structured and cfg.finetune_epochs > 0:
        return _structured_with_recovery(cfg, src, dst, ctx)
    if cfg.structured:
        return structured_step(cfg, src, dst, ctx)
    model = copy.deepcopy(ctx.torch_model)
    targets = prunable(model, cfg.exclude)
    if not targets:
        raise StepError("prune: the model has no weight matrices or kernels to prune")
    pairs = [(m, a) for m, a, _ in targets]
    with torch.no_grad():
        if cfg.scope == "global":
            prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=cfg.sparsity)
        else:
            for m, a in pairs:
                prune.l1_unstructured(m, a, amount=cfg.sparsity)
        for m, a in pairs:
            prune.remove(m, a)  # make the mask permanent before export
    total = sum(getattr(m, a).numel() for m, a in pairs)
    zeros = sum(int((getattr(m, a) == 0).sum()) for m, a in pairs)
    ctx.export(model, dst)
    return StepOutcome(
        torch_model=model,
        warnings=[DENSE_WARNING],
        details={"pruned_tensors": len(pairs), "achieved_sparsity": zeros / total},
    )


# below this agreement with the teacher on its own training rows, the step says plainly that recovery failed
RECOVERY_FLOOR = 0.90
NOT_FINETUNED = "data.train is given but finetune_epochs = 0: the pruned model was not fine-tuned"


def _structured_with_recovery(cfg: PruneConfig, src: Path, dst: Path, ctx: StepContext) -> StepOutcome:
    """Prune structurally (without structured.py's own fine-tuning), then recover here, then export."""
    source, data, labels = recovery_data(cfg, ctx)  # refuse before the pruning work
    plain = dataclasses.replace(cfg, finetune_epochs=0, distill=False, recovery_data="auto", distill_loss="auto",
                                recovery_weighting="none", recovery_groups=(), disagreement_weight=4.0,
                                recovery_max_weight=5.0)
    exported: list[Path] = []
    pruned = structured_step(plain, src, dst, dataclasses.replace(ctx, export=lambda model, path: exported.append(path)))
    model = pruned.torch_model
    names, _ = onnx_inputs(src)
    missing = [n for n in names if n not in data.inputs]
    if missing:
        raise StepError(f"prune: {source} has no input {missing[0]!r} for recovery fine-tuning")
    embedding = ctx.output_kind == "embedding"
    loss = ("mse" if embedding else "kl") if cfg.distill_loss == "auto" else cfg.distill_loss
    if loss == "mse" and labels is not None:
        labels = None  # embeddings have no classes: the teacher's outputs are the only target
    if cfg.recovery_weighting == "disagreement" and loss == "mse":
        raise StepError("prune.recovery_weighting: 'disagreement' compares predicted classes; this model's output is an embedding")
    weights, weighting = None, {}
    if cfg.recovery_weighting == "groups":
        weights, weighting = group_weights(data, cfg.recovery_groups or ctx.groups, source, cfg.recovery_max_weight)
    settings = FinetuneSettings(
        epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=ctx.seed,
        temperature=cfg.temperature, alpha=cfg.distill_alpha if labels is not None else 1.0,
        weighting=cfg.recovery_weighting, disagreement_weight=cfg.disagreement_weight, distill_loss=loss,
    )
    teacher = ctx.torch_model if cfg.distill or cfg.recovery_weighting == "disagreement" else None
    t0 = time.perf_counter()
    result = finetune(model, data.inputs, labels, names, settings, teacher=teacher, probabilities=ctx.probabilities,
                      distill=cfg.distill, row_weights=weights, on_epoch=ctx.progress)
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result["data"] = source
    result["file"] = data.path.name
    result.update(weighting)
    ctx.export(model, dst)
    details = {**pruned.details, "finetune": result}
    warnings = [w for w in pruned.warnings if w != NOT_FINETUNED]
    agree = result.get("teacher_agreement")
    if agree and agree["after"] < RECOVERY_FLOOR:
        warnings.append(
            f"recovery did not bring the pruned model back: after {cfg.finetune_epochs} epoch(s) it agrees with the unpruned model on "
            f"{100 * agree['after']:.1f}% of the {result['rows']} rows it was trained on ({100 * agree['before']:.1f}% before); "
            "more recovery data or epochs, or less pruning, may help; the gates judge it on the eval rows"
        )
    return StepOutcome(torch_model=model, warnings=warnings, details=details)


def recovery_data(cfg: Any, ctx: StepContext, key: str = "prune") -> tuple[str, Any, np.ndarray | None]:
    """("data.train" | "data.calibration", the Dataset, its labels or None when label-free), for a
    step config with `recovery_data` and `distill` (prune, prune_transformer: `key` names it)."""
    choice = cfg.recovery_data
    if choice == "auto":
        if ctx.train is not None:
            choice = "train"
        elif cfg.distill and ctx.calibration is not None:
            choice = "calibration"
        else:
            raise StepError(
                f"{key}.finetune_epochs: recovery fine-tuning needs data: data.train (labelled rows), or data.calibration "
                "with distill = true (label-free distillation on its inputs; recovery_data = \"calibration\")"
            )
    if choice == "train":
        if ctx.train is None or ctx.train.labels is None:
            raise StepError(
                f"{key}.recovery_data = \"train\": needs labelled data.train; without labels use "
                "recovery_data = \"calibration\" with distill = true (label-free distillation)"
            )
        return "data.train", ctx.train, ctx.train.labels
    if ctx.calibration is None:
        raise StepError(f"{key}.recovery_data = \"calibration\": needs data.calibration (its inputs are distilled on)")
    return "data.calibration", ctx.calibration, None  # label-free: a label column in the file is never read


def group_weights(
    data: Any, groups: tuple[str, ...] | list[str], source: str, max_weight: float = float("inf")
) -> tuple[np.ndarray, dict[str, Any]]:
    """Row weights giving every cell (combination of the `groups` values) the same total weight,
    normalised to mean 1 and capped at `max_weight` (a cell of 2 rows among 500 would otherwise weigh
    its rows ~50x and recovery would overfit them); and what the step's details report about them."""
    if not groups:
        raise StepError("prune.recovery_weighting = \"groups\": no groups to weight by (set data.groups or recovery_groups)")
    columns = group_columns(data, tuple(groups), source)
    cells = list(zip(*(columns[g] for g in groups)))
    counts = Counter(cells)
    w = np.array([1.0 / counts[c] for c in cells])
    w = capped_mean_one(w, max_weight)
    smallest = min(counts.items(), key=lambda kv: (kv[1], kv[0]))
    return w, {
        "weighting_groups": list(groups),
        "cells": len(counts),
        "smallest_cell": {"cell": "&".join(f"{g}={v}" for g, v in zip(groups, smallest[0])), "rows": smallest[1]},
        "max_row_weight": round(float(w.max()), 4),
        "weight_cap": None if not np.isfinite(max_weight) else max_weight,
        "capped_rows": int(np.count_nonzero(w >= max_weight * (1 - 1e-9))) if np.isfinite(max_weight) else 0,
    }


def capped_mean_one(w: np.ndarray, cap: float) -> np.ndarray:
    """`w` scaled to mean 1, then every weight above `cap` clipped to it and the rest scaled up so
    the mean stays 1 (repeated until nothing exceeds the cap: weight trimming). Order is kept."""
    w = np.asarray(w, dtype=np.float64) * (len(w) / np.sum(w))
    for _ in range(len(w)):
        over = w > cap * (1 + 1e-12)
        if not over.any():
            break
        w[over] = cap
        free = ~over & (w < cap)
        if not free.any():
            break
        w[free] *= (len(w) - cap * np.count_nonzero(w >= cap)) / w[free].sum()
    return w


def group_columns(data: Any, groups: tuple[str, ...], source: str) -> dict[str, np.ndarray]:
    """The group attributes of the recovery rows: the Dataset's own when loaded, else read by name
    from its file (the pipeline loads train and calibration data without their group columns)."""
    if all(g in data.attributes for g in groups):
        return {g: np.asarray(data.attributes[g]).astype(str) for g in groups}
    from ..data import read_columns

    path = Path(data.path)
    try:
        if not path.is_file():
            raise DataError(f"cannot read group columns from {path.name} (an .npz, .csv or .parquet file)")
        columns = read_columns(path, source, text=groups)
    except DataError as e:
        raise StepError(f"prune.recovery_weighting = \"groups\": {e}") from e
    out = {}
    for g in groups:
        if g not in columns:
            raise StepError(
                f"prune.recovery_weighting = \"groups\": group column {g!r} not in {source} ({path.name} has: "
                f"{', '.join(sorted(columns))}); set recovery_groups"
            )
        col = np.asarray(columns[g])
        if col.ndim != 1 or len(col) != data.n:
            raise StepError(f"prune.recovery_weighting = \"groups\": group column {g!r} in {path.name} has shape "
                            f"{col.shape}, expected ({data.n},)")
        out[g] = col.astype(str)
    return out
