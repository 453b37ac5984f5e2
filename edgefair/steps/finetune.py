"""Recovery fine-tuning of a torch model, on labelled data and/or distilled from a teacher.

Used by structured pruning. Three kinds of target:
- labels only (cross-entropy);
- labels and the teacher's outputs (`(1 - alpha) * CE + alpha * KD`, Hinton et al. 2015);
- the teacher's outputs only (`labels=None`: label-free distillation, e.g. on calibration
  inputs): KL between temperature-softened distributions, or MSE for embedding outputs.

Rows can be weighted: by fixed per-row weights (group weighting: every group cell contributes
equally), or by disagreement with the teacher, recomputed at the start of every epoch. Weights are
normalised to mean 1, so the learning rate means the same with or without them.

Deterministic for a given seed: torch.manual_seed, a seeded shuffling
generator, deterministic algorithms and one thread while training (the global torch settings are
restored afterwards).

nn.Modules are trained in train mode (BatchNorm statistics update, dropout is active). Modules
loaded from a torch.export program (.pt2) are graphs traced in eval mode: they cannot switch mode,
so BatchNorm statistics stay frozen and dropout stays off; only the parameters are trained.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int
    lr: float
    batch_size: int
    seed: int
    temperature: float = 4.0  # softens both distributions so the teacher's "dark knowledge" shows
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha weighs the label loss
    weighting: str = "none"  # none | groups (fixed row_weights) | disagreement (recomputed every epoch)
    disagreement_weight: float = 4.0  # weight of a row the student gets wrong vs the teacher (others: 1)
    distill_loss: str = "kl"  # kl (softened class distributions) | mse (raw outputs: embeddings)


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[None]:
    """Seed torch, force deterministic kernels and one thread; restore the global state on exit."""
    import torch

    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    rng_state = torch.get_rng_state()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det)
        torch.set_rng_state(rng_state)


def _set_mode(model: Any, training: bool) -> None:
    try:
        model.train(training)
    except NotImplementedError:  # unlifted torch.export modules are traced in eval mode and stay there
        pass


def finetune(
    model: Any,
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray | None,
    input_names: Sequence[str],
    settings: FinetuneSettings,
    *,
    teacher: Any | None = None,
    probabilities: bool = False,
    distill: bool | None = None,
    row_weights: np.ndarray | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train `model` in place with Adam (cosine-decayed lr) on cross-entropy and/or distillation.

    The model returns logits (N, C), C == 1 read as one binary logit; with `probabilities` it
    returns class probabilities, trained through their logarithm (log p are logits of p).
    `teacher` is the reference model: distilled from when `distill` (default: whenever a teacher
    is given), and what "disagreement" weighting compares with. `labels=None` trains on the
    teacher's outputs alone (label-free). `row_weights` (n,) weigh the rows' losses
    (`weighting = "groups"`). Returns the mean loss of every epoch and what was used.
    """
    import torch
    import torch.nn.functional as F

    distill = teacher is not None if distill is None else distill
    if distill and teacher is None:
        raise ValueError("finetune: distillation needs a teacher")
    if labels is None and not distill:
        raise ValueError("finetune: without labels the only target is the teacher's outputs: distill from a teacher")
    if settings.weighting not in ("none", "groups", "disagreement"):
        raise ValueError(f"finetune: unknown weighting {settings.weighting!r}")
    if settings.weighting == "disagreement" and (teacher is None or settings.distill_loss == "mse"):
        raise ValueError("finetune: disagreement weighting needs a teacher with class outputs")
    if settings.weighting == "groups" and row_weights is None:
        raise ValueError("finetune: group weighting needs row_weights")
    x_all = [torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in input_names]
    n = len(x_all[0])
    y_all = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    mse = settings.distill_loss == "mse"
    weights = None
    if settings.weighting == "groups":
        w = np.asarray(row_weights, dtype=np.float64)
        if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("finetune: row_weights must be (n,) finite, non-negative, not all zero")
        weights = torch.from_numpy((w * n / w.sum()).astype(np.float32))
    losses, disagreement = [], []
    with deterministic(settings.seed):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=settings.lr)
        # cosine decay to 0: the last epochs settle instead of bouncing around the recovered optimum
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
        gen = torch.Generator().manual_seed(settings.seed)
        targets = teacher_pred = None
        if teacher is not None:
            _set_mode(teacher, False)  # the teacher is fixed: its outputs once, in eval mode
            targets = _outputs(teacher, x_all, n, probabilities, raw=mse)
            teacher_pred = None if mse else _predict(targets)
        before = None if teacher_pred is None else _agreement(model, x_all, n, probabilities, teacher_pred)
        for _ in range(settings.epochs):
            if settings.weighting == "disagreement":  # the student as it is now, in eval mode
                wrong = _predict(_outputs(model, x_all, n, probabilities)) != teacher_pred
                disagreement.append(round(float(wrong.float().mean()), 6))
                w = torch.where(wrong, torch.tensor(settings.disagreement_weight), torch.tensor(1.0))
                weights = w * (n / w.sum())
            _set_mode(model, True)
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, settings.batch_size):
                idx = order[start : start + settings.batch_size]
                if len(idx) < 2 and n > 1:  # BatchNorm cannot train on a batch of one
                    continue
                out = _first(model(*(x[idx] for x in x_all)))
                loss = _loss(F, out, idx, y_all, targets if distill else None, settings, probabilities,
                             None if weights is None else weights[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            sched.step()
            losses.append(total / n)
            if on_epoch is not None:  # progress: epochs done of the total (display only)
                on_epoch(len(losses), settings.epochs)
        _set_mode(model, False)
        after = None if teacher_pred is None else _agreement(model, x_all, n, probabilities, teacher_pred)
    for p in model.parameters():
        p.grad = None
    out: dict[str, Any] = {
        "epochs": settings.epochs,
        "loss": [round(v, 6) for v in losses],
        "distilled": distill,
        "labels_used": labels is not None and not (distill and settings.alpha == 1.0),
        "rows": n,
        "weighting": settings.weighting,
    }
    if distill:
        out["distill_loss"] = settings.distill_loss
    if before is not None:  # on the rows trained on, not held out
        out["teacher_agreement"] = {"before": round(before, 6), "after": round(after, 6)}
    if disagreement:
        out["disagreement_per_epoch"] = disagreement
    if settings.weighting == "groups":
        out["max_row_weight"] = round(float(weights.max()), 4)
    return out


def _first(out: Any) -> Any:
    return out[0] if isinstance(out, (tuple, list)) else out


def _outputs(model: Any, x_all: list, n: int, probabilities: bool, *, raw: bool = False) -> Any:
    """The model's first output on every row (as logits unless `raw`), in eval mode, no gradient."""
    import torch

    training = getattr(model, "training", False)
    _set_mode(model, False)
    with torch.no_grad():
        outs = [_first(model(*(x[i : i + 256] for x in x_all))) for i in range(0, n, 256)]
        outs = [o if raw else _logits(o, probabilities) for o in outs]
    _set_mode(model, training)
    return torch.cat(outs)


def _predict(logits: Any) -> Any:
    return (logits[:, 0] > 0).long() if logits.shape[-1] == 1 else logits.argmax(-1)


def _agreement(model: Any, x_all: list, n: int, probabilities: bool, teacher_pred: Any) -> float:
    return float((_predict(_outputs(model, x_all, n, probabilities)) == teacher_pred).float().mean())


def _loss(F: Any, out: Any, idx: Any, y_all: Any, targets: Any, s: FinetuneSettings, probabilities: bool, w: Any) -> Any:
    """The batch loss: label term, distillation term or their mix; per-row weighted when `w`."""
    reduce = (lambda v: v.mean()) if w is None else (lambda v: (v * w).mean())
    if s.distill_loss == "mse" and targets is not None:  # embeddings: no classes, no labels
        return reduce(((out - targets[idx]) ** 2).reshape(len(idx), -1).mean(dim=1))
    logits = _logits(out, probabilities)
    if w is None:  # the unweighted reductions, exactly as before row weights existed
        label = None if y_all is None else _label_loss(F, logits, y_all[idx])
        kd = None if targets is None else _kd_loss(F, logits, targets[idx], s.temperature)
    else:
        label = None if y_all is None else reduce(_label_loss(F, logits, y_all[idx], reduction="none"))
        kd = None if targets is None else reduce(_kd_loss(F, logits, targets[idx], s.temperature, per_row=True))
    if kd is None:
        return label
    if label is None:
        return kd
    return (1 - s.alpha) * label + s.alpha * kd


def _logits(out: Any, probabilities: bool) -> Any:
    """The first output (as evaluation reads it) as logits."""
    import torch

    out = out[0] if isinstance(out, (tuple, list)) else out
    if not probabilities:
        return out
    p = out.clamp(1e-7, 1 - 1e-7) if out.shape[-1] == 1 else out.clamp_min(1e-12)
    return torch.log(p / (1 - p)) if out.shape[-1] == 1 else torch.log(p)


def _label_loss(F: Any, logits: Any, y: Any, reduction: str = "mean") -> Any:
    if logits.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), reduction=reduction)
    return F.cross_entropy(logits, y, reduction=reduction)


def _kd_loss(F: Any, logits: Any, teacher_logits: Any, t: float, *, per_row: bool = False) -> Any:
    """Hinton et al. 2015: KL between temperature-softened distributions, scaled by T^2
    (the batch mean, or with `per_row` one value per row)."""
    import torch

    if logits.shape[-1] == 1:  # one binary logit: make it a two-class distribution
        logits = torch.cat([torch.zeros_like(logits), logits], dim=-1)
        teacher_logits = torch.cat([torch.zeros_like(teacher_logits), teacher_logits], dim=-1)
    student, teacher = F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1)
    if per_row:
        return F.kl_div(student, teacher, reduction="none", log_target=True).sum(dim=-1) * (t * t)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * (t * t)
