"""Attention-head and FFN-neuron pruning of BERT-style encoders, on the torch model before export.

Every encoder layer of the form `attention.self.{query,key,value}`, `attention.output.dense`,
`intermediate.dense`, `output.dense` (BERT, RoBERTa, ELECTRA, MiniLM, XLM-R in transformers) loses
the same share of its heads and of its FFN neurons, so the exported graph has smaller MatMuls:

- a head is removed by dropping its rows of query/key/value and its columns of the attention
  output projection, with transformers' own `prune_linear_layer` (what `prune_heads` did before
  transformers 5 removed it), and the layer's head count is lowered to match;
- an FFN neuron is removed by dropping its row of `intermediate.dense` and its column of
  `output.dense` (the same helper).

Importance (deterministic; ties keep the lower index): "weight" ranks a head or neuron by the L1
norm of the weights that read into it and write out of it; "calibration" by its mean activation
magnitude on the calibration inputs (padding excluded when there is an `attention_mask` input)
times the L2 norm of its outgoing weights, as Wanda (Sun et al. 2023) ranks weights.

Recovery (`finetune_epochs` > 0) reuses finetune.py: fine-tuning on labelled data.train, mixed
with distillation from the step's input model when `distill`, or label-free distillation on the
calibration inputs (`recovery_data = "calibration"`). `recovery_rows` caps the rows (a seeded
draw), since a transformer trains slowly on a CPU; the token embeddings stay frozen by default.
"""

from __future__ import annotations

import copy
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..config import check, in_range, positive
from ..errors import StepError
from . import StepContext, StepOutcome, register
from .finetune import FinetuneSettings, finetune
from .prune import recovery_data

KEY = "prune_transformer"
NO_LAYERS = (
    f"{KEY}: the model has no BERT-style encoder layers (attention.self.query/key/value, attention.output.dense, "
    "intermediate.dense, output.dense as torch.nn.Linear); use a factory or hf: source of such a model"
)


@dataclass(frozen=True)
class TransformerPruneConfig:
    heads: float = check(*in_range(0.0, 1.0, hi_open=True), default=0.0)  # share of each layer's heads removed (one always stays)
    ffn: float = check(*in_range(0.0, 1.0, hi_open=True), default=0.0)  # share of each layer's FFN neurons removed
    importance: Literal["weight", "calibration"] = "weight"
    calibration_rows: int = check(positive, "must be > 0", default=128)  # importance = "calibration": rows read
    finetune_epochs: int = check(lambda v: v >= 0, "must be >= 0", default=0)
    lr: float = check(positive, "must be > 0", default=5e-5)  # Adam; BERT fine-tuning's usual rate
    batch_size: int = check(positive, "must be > 0", default=32)
    distill: bool = False  # also match the step's input model (the teacher)
    temperature: float = check(positive, "must be > 0", default=4.0)
    distill_alpha: float = check(*in_range(0.0, 1.0), default=0.5)
    recovery_data: Literal["auto", "train", "calibration"] = "auto"  # auto: data.train, else calibration with distill
    recovery_rows: int = check(lambda v: v >= 0, "must be >= 0 (0: all rows)", default=0)
    freeze_embeddings: bool = True  # token/position embeddings are not pruned; training them is slow and not needed

    def __post_init__(self) -> None:
        for name in ("importance", "recovery_data"):
            allowed = typing.get_args(typing.get_type_hints(TransformerPruneConfig)[name])
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: must be one of {', '.join(map(repr, allowed))} (got {getattr(self, name)!r})")
        if self.heads == 0 and self.ffn == 0:
            raise ValueError("heads: set heads and/or ffn above 0 (both are 0: nothing would be pruned)")
        if self.distill and not self.finetune_epochs:
            raise ValueError("distill: needs finetune_epochs > 0")
        if not self.finetune_epochs and (self.recovery_data != "auto" or self.recovery_rows):
            raise ValueError("recovery_data: recovery settings need finetune_epochs > 0")
        if self.recovery_data == "calibration" and not self.distill:
            raise ValueError("recovery_data: the calibration rows carry no labels: recovery on them needs distill = true")


@dataclass
class EncoderLayer:
    """The Linear layers of one BERT-style encoder layer (owners, so they can be replaced)."""

    name: str
    attn: Any  # has query, key, value, num_attention_heads, attention_head_size, all_head_size
    attn_out: Any  # has dense
    intermediate: Any  # has dense
    output: Any  # has dense


def encoder_layers(model: Any) -> list[EncoderLayer]:
    import torch

    def linear(owner: Any, attr: str) -> bool:
        return isinstance(getattr(owner, attr, None), torch.nn.Linear)

    out = []
    for name, m in model.named_modules():
        attention = getattr(m, "attention", None)
        attn, attn_out = getattr(attention, "self", None), getattr(attention, "output", None)
        inter, output = getattr(m, "intermediate", None), getattr(m, "output", None)
        if (
            attn is not None and all(linear(attn, a) for a in ("query", "key", "value"))
            and hasattr(attn, "num_attention_heads") and hasattr(attn, "attention_head_size")
            and linear(attn_out, "dense") and linear(inter, "dense") and linear(output, "dense")
        ):
            out.append(EncoderLayer(name, attn, attn_out, inter, output))
    return out


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _keep(scores: np.ndarray, remove: int) -> np.ndarray:
    """Indices to keep, ascending: all but the `remove` lowest scores (stable: ties drop the higher index)."""
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[: len(scores) - remove])


def weight_scores(layer: EncoderLayer) -> tuple[np.ndarray, np.ndarray]:
    """(per-head, per-neuron) L1 norm of the weights reading into and writing out of each."""
    import torch

    a, d = layer.attn, layer.attn.attention_head_size
    with torch.no_grad():
        rows = sum(getattr(a, p).weight.abs().sum(1) for p in ("query", "key", "value"))  # (all_head,)
        cols = layer.attn_out.dense.weight.abs().sum(0)  # (all_head,)
        heads = (rows + cols).reshape(a.num_attention_heads, d).sum(1)
        ffn = layer.intermediate.dense.weight.abs().sum(1) + layer.output.dense.weight.abs().sum(0)
    return heads.double().numpy(), ffn.double().numpy()


def calibration_scores(model: Any, layers: list[EncoderLayer], feed: list[Any], mask: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """(per-head, per-neuron) mean |activation| over the real tokens of the calibration rows, times
    the L2 norm of the outgoing weights: each head's context vector (the attention output
    projection's input) and each FFN neuron's activation (the FFN output projection's input)."""
    import torch

    sums: dict[int, list[Any]] = {i: [0.0, 0.0] for i in range(len(layers))}
    hooks = []

    def hook(i: int, slot: int) -> Any:
        def fn(module: Any, args: tuple) -> None:
            x = args[0].abs()  # (N, L, width)
            if mask is not None and x.ndim == 3:
                x = x * mask[: x.shape[0], : x.shape[1], None]
            sums[i][slot] = sums[i][slot] + x.reshape(-1, x.shape[-1]).sum(0)
        return fn

    for i, layer in enumerate(layers):
        hooks.append(layer.attn_out.dense.register_forward_pre_hook(hook(i, 0)))
        hooks.append(layer.output.dense.register_forward_pre_hook(hook(i, 1)))
    try:
        with torch.no_grad():
            model(*feed)
    finally:
        for h in hooks:
            h.remove()
    out = []
    with torch.no_grad():
        for i, layer in enumerate(layers):
            ctx, act = sums[i]
            ctx = ctx * layer.attn_out.dense.weight.norm(dim=0)
            heads = ctx.reshape(layer.attn.num_attention_heads, -1).sum(1)
            ffn = act * layer.output.dense.weight.norm(dim=0)
            out.append((heads.double().numpy(), ffn.double().numpy()))
    return out


def prune_layer(layer: EncoderLayer, keep_heads: np.ndarray, keep_ffn: np.ndarray) -> None:
    """Remove the heads and FFN neurons not kept, in place (new, smaller Linear layers)."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    a, d = layer.attn, layer.attn.attention_head_size
    if len(keep_heads) < a.num_attention_heads:
        index = torch.as_tensor(np.concatenate([np.arange(h * d, (h + 1) * d) for h in keep_heads]), dtype=torch.long)
        a.query = prune_linear_layer(a.query, index)
        a.key = prune_linear_layer(a.key, index)
        a.value = prune_linear_layer(a.value, index)
        layer.attn_out.dense = prune_linear_layer(layer.attn_out.dense, index, dim=1)
        a.num_attention_heads = len(keep_heads)
        a.all_head_size = len(keep_heads) * d
    if len(keep_ffn) < layer.intermediate.dense.out_features:
        index = torch.as_tensor(keep_ffn, dtype=torch.long)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index)
        layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)


def _input_names(src: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(src), load_external_data=False).graph
    init = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in init]


@register(KEY, TransformerPruneConfig, needs_torch=True)
def prune_transformer_step(cfg: TransformerPruneConfig, src: Path, dst: Path, ctx: StepContext) -> StepOutcome:
    if ctx.torch_model is None:
        raise StepError(f"{KEY} works on the torch model: use a factory or hf: source and put it before quantization steps")
    if not encoder_layers(ctx.torch_model):
        raise StepError(NO_LAYERS)
    names = _input_names(src)
    recovery = recovery_data(cfg, ctx, KEY) if cfg.finetune_epochs else None  # refuse before the pruning work
    model = copy.deepcopy(ctx.torch_model)  # a step never edits its input
    model.eval()
    layers = encoder_layers(model)
    before = parameter_count(model)
    if cfg.importance == "calibration":
        scores = calibration_scores(model, layers, *_calibration_feed(cfg, ctx, names))
    else:
        scores = [weight_scores(layer) for layer in layers]
    per_layer = []
    for layer, (head_scores, ffn_scores) in zip(layers, scores):
        n_heads, n_ffn = len(head_scores), len(ffn_scores)
        keep_heads = _keep(head_scores, min(int(cfg.heads * n_heads), n_heads - 1))
        keep_ffn = _keep(ffn_scores, min(int(cfg.ffn * n_ffn), n_ffn - 1))
        prune_layer(layer, keep_heads, keep_ffn)
        per_layer.append({"layer": layer.name, "heads": [n_heads, len(keep_heads)], "ffn": [n_ffn, len(keep_ffn)],
                          "kept_heads": [int(h) for h in keep_heads]})
    after = parameter_count(model)
    details: dict[str, Any] = {
        "layers": per_layer,
        "heads_removed": sum(p["heads"][0] - p["heads"][1] for p in per_layer),
        "ffn_neurons_removed": sum(p["ffn"][0] - p["ffn"][1] for p in per_layer),
        "parameters": {"before": before, "after": after, "ratio": round(after / before, 4)},
        "importance": cfg.importance,
    }
    warnings = []
    if recovery is not None:
        details["finetune"] = _recover(cfg, ctx, model, names, *recovery)
    elif ctx.train is not None:
        warnings.append("data.train is given but finetune_epochs = 0: the pruned model was not fine-tuned")
    model.eval()
    ctx.export(model, dst)
    return StepOutcome(torch_model=model, warnings=warnings, details=details)


def _calibration_feed(cfg: TransformerPruneConfig, ctx: StepContext, names: list[str]) -> tuple[list[Any], Any]:
    import torch

    if ctx.calibration is None:
        raise StepError(f"{KEY}.importance = \"calibration\": needs data.calibration")
    missing = [n for n in names if n not in ctx.calibration.inputs]
    if missing:
        raise StepError(f"{KEY}: data.calibration has no input {missing[0]!r}")
    rows = min(cfg.calibration_rows, ctx.calibration.n)
    feed = [torch.from_numpy(np.ascontiguousarray(ctx.calibration.inputs[n][:rows])) for n in names]
    mask = ctx.calibration.inputs.get("attention_mask")
    mask = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask[:rows])).float()
    return feed, mask


def _recover(cfg: TransformerPruneConfig, ctx: StepContext, model: Any, names: list[str], source: str, data: Any,
             labels: np.ndarray | None) -> dict[str, Any]:
    missing = [n for n in names if n not in data.inputs]
    if missing:
        raise StepError(f"{KEY}: {source} has no input {missing[0]!r} for recovery fine-tuning")
    rows = np.arange(data.n)
    if cfg.recovery_rows and cfg.recovery_rows < data.n:
        rows = np.sort(np.random.default_rng(ctx.seed).choice(data.n, size=cfg.recovery_rows, replace=False))
    inputs = {n: data.inputs[n][rows] for n in names}
    embedding = ctx.output_kind == "embedding"
    if embedding and not cfg.distill:
        raise StepError(f"{KEY}.distill: an embedding has no classes to fine-tune on: recovery needs distill = true")
    if embedding:
        labels = None  # an embedding has no classes: the teacher's outputs are the only target
    labels = None if labels is None else labels[rows]
    settings = FinetuneSettings(
        epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=ctx.seed, temperature=cfg.temperature,
        alpha=cfg.distill_alpha if labels is not None else 1.0, distill_loss="mse" if embedding else "kl",
    )
    frozen = [p for n, p in model.named_parameters() if cfg.freeze_embeddings and "embeddings." in n and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    t0 = time.perf_counter()
    try:
        result = finetune(model, inputs, labels, names, settings, teacher=ctx.torch_model if cfg.distill else None,
                          probabilities=ctx.probabilities, distill=cfg.distill)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    result.update(seconds=round(time.perf_counter() - t0, 3), data=source, file=data.path.name,
                  frozen_parameters=sum(p.numel() for p in frozen))
    return result
