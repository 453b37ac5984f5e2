"""Compression steps: each is a frozen config dataclass plus one `apply` that reads the input step's
ONNX model (or its torch model, for steps that work before export) and writes a new ONNX file.
A step never edits its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..data import Dataset
from ..errors import StepError


@dataclass(frozen=True)
class StepContext:
    """What a step may read besides its config and input model."""

    torch_model: Any | None  # the input step's torch model, when the chain is still in torch
    calibration: Dataset | None  # inputs named like the model inputs
    train: Dataset | None  # labelled training data (data.train), for recovery fine-tuning
    export: Callable[[Any, Path], None]  # export a torch module with the baseline's inputs
    workdir: Path  # scratch space, removed after the run
    seed: int
    probabilities: bool = False  # the model's first output is class probabilities, not logits
    groups: tuple[str, ...] = ()  # data.groups: attributes that quantize_static's stratified sampling and keep_float split by
    label: str | None = None  # data.label (None: "label" when present)
    output_kind: str = "logits"  # logits | probabilities | embedding: how distillation compares outputs
    progress: Callable[[int, int], None] | None = None  # (done, total) of a long step's units, e.g. epochs; display only


@dataclass
class StepOutcome:
    torch_model: Any | None = None  # set by torch-level steps, so later torch-level steps can chain
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StepKind:
    kind: str
    config_cls: type
    apply: Callable[[Any, Path, Path, StepContext], StepOutcome]
    needs_torch: bool
    needs_calibration: bool


REGISTRY: dict[str, StepKind] = {}


def require_known(key: str, names: Iterable[str], known: Iterable[str], where: str) -> None:
    """A name in an exclude list that matches nothing is a typo that would exclude nothing: refuse it."""
    known = set(known)
    missing = sorted(set(names) - known)
    if missing:
        shown = ", ".join(sorted(known)[:6]) + (", ..." if len(known) > 6 else "")
        raise StepError(f"{key}: {missing[0]!r} is not in {where} (names there: {shown})")


def register(kind: str, config_cls: type, *, needs_torch: bool = False, needs_calibration: bool = False):
    """Register `apply(config, src, dst, ctx) -> StepOutcome` as the handler of `kind`."""

    def deco(fn: Callable[[Any, Path, Path, StepContext], StepOutcome]):
        if kind in REGISTRY:
            raise ValueError(f"step kind {kind!r} registered twice")
        REGISTRY[kind] = StepKind(kind, config_cls, fn, needs_torch, needs_calibration)
        return fn

    return deco


from . import prune, quantize  # noqa: E402,F401  (fill the registry)
from . import weights  # noqa: E402,F401
from . import transformer_prune  # noqa: E402,F401
