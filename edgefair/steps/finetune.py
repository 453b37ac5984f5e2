"""Recovery fine-tuning of a torch model on labelled data, optionally distilled from a teacher.

Used by structured pruning. Deterministic for a given seed: torch.manual_seed, a seeded shuffling
generator, deterministic algorithms and one thread while training (the global torch settings are
restored afterwards).

nn.Modules are trained in train mode (BatchNorm statistics update, dropout is active). Modules
loaded from a torch.export program (.pt2) are graphs traced in eval mode: they cannot switch mode,
so BatchNorm statistics stay frozen and dropout stays off; only the parameters are trained.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class FinetuneSettings:
    epochs: int
    lr: float
    batch_size: int
    seed: int
    temperature: float = 4.0  # softens both distributions so the teacher's "dark knowledge" shows
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha weighs the label loss


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
    labels: np.ndarray,
    input_names: Sequence[str],
    settings: FinetuneSettings,
    *,
    teacher: Any | None = None,
    probabilities: bool = False,
) -> dict[str, Any]:
    """Train `model` in place with Adam (cosine-decayed lr) on cross-entropy (plus KL to `teacher`).

    The model returns logits (N, C), C == 1 read as one binary logit; with `probabilities` it
    returns class probabilities, trained through their logarithm (log p are logits of p).
    Returns the mean loss of every epoch.
    """
    import torch
    import torch.nn.functional as F

    n = len(labels)
    x_all = [torch.from_numpy(np.ascontiguousarray(inputs[k])) for k in input_names]
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    losses = []
    with deterministic(settings.seed):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=settings.lr)
        # cosine decay to 0: the last epochs settle instead of bouncing around the recovered optimum
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
        gen = torch.Generator().manual_seed(settings.seed)
        soft_targets = None
        if teacher is not None:
            _set_mode(teacher, False)
            with torch.no_grad():  # the teacher is fixed: compute its logits once, in eval mode
                soft_targets = torch.cat(
                    [_logits(teacher(*(x[i : i + 256] for x in x_all)), probabilities) for i in range(0, n, 256)]
                )
        _set_mode(model, True)
        for _ in range(settings.epochs):
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, settings.batch_size):
                idx = order[start : start + settings.batch_size]
                if len(idx) < 2 and n > 1:  # BatchNorm cannot train on a batch of one
                    continue
                logits = _logits(model(*(x[idx] for x in x_all)), probabilities)
                loss = _label_loss(F, logits, y_all[idx])
                if soft_targets is not None:
                    loss = (1 - settings.alpha) * loss + settings.alpha * _kd_loss(
                        F, logits, soft_targets[idx], settings.temperature
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            sched.step()
            losses.append(total / n)
        _set_mode(model, False)
    for p in model.parameters():
        p.grad = None
    return {"epochs": settings.epochs, "loss": [round(v, 6) for v in losses], "distilled": teacher is not None}


def _logits(out: Any, probabilities: bool) -> Any:
    """The first output (as evaluation reads it) as logits."""
    import torch

    out = out[0] if isinstance(out, (tuple, list)) else out
    if not probabilities:
        return out
    p = out.clamp(1e-7, 1 - 1e-7) if out.shape[-1] == 1 else out.clamp_min(1e-12)
    return torch.log(p / (1 - p)) if out.shape[-1] == 1 else torch.log(p)


def _label_loss(F: Any, logits: Any, y: Any) -> Any:
    if logits.shape[-1] == 1:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    return F.cross_entropy(logits, y)


def _kd_loss(F: Any, logits: Any, teacher_logits: Any, t: float) -> Any:
    """Hinton et al. 2015: KL between temperature-softened distributions, scaled by T^2."""
    import torch

    if logits.shape[-1] == 1:  # one binary logit: make it a two-class distribution
        logits = torch.cat([torch.zeros_like(logits), logits], dim=-1)
        teacher_logits = torch.cat([torch.zeros_like(teacher_logits), teacher_logits], dim=-1)
    return F.kl_div(
        F.log_softmax(logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1), reduction="batchmean", log_target=True
    ) * (t * t)
