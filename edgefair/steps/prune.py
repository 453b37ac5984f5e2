"""Magnitude pruning with torch.nn.utils.prune, on the torch model before export.

Masks are made permanent (`prune.remove`) before export: otherwise the exported graph would carry
`weight_orig * mask` or, worse, the unpruned weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import check, in_range
from ..errors import StepError
from . import StepContext, StepOutcome, register

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

    def __post_init__(self) -> None:
        if self.structured:
            raise ValueError("structured: structured pruning is not available yet; use structured = false")


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
