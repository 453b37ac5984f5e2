"""Magnitude pruning with torch.nn.utils.prune, on the torch model before export.

Masks are made permanent (`prune.remove`) before export: otherwise the exported graph would carry
`weight_orig * mask` or, worse, the unpruned weights.

`structured = true` removes whole neurons/channels instead, and can fine-tune afterwards (with
`distill = true`, the teacher is the step's *input* torch model: the uncompressed model when the
step reads the baseline): see structured.py and finetune.py.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import check, in_range, positive
from ..errors import StepError
from . import StepContext, StepOutcome, register, require_known
from .structured import structured_step

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

    def __post_init__(self) -> None:
        if not self.structured and self.finetune_epochs:
            raise ValueError("finetune_epochs: recovery fine-tuning needs structured = true (it would refill pruned weights)")
        if self.distill and not self.finetune_epochs:
            raise ValueError("distill: needs finetune_epochs > 0")


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
