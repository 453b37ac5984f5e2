"""Structured pruning: remove whole Linear neurons and Conv output channels, so the graph shrinks.

Works on the torch model before export, for both kinds of torch source:
- an nn.Module (factory source): it is traced once with torch.export to find the dependencies,
  then the module's own parameters are sliced and its layers' size attributes updated;
- the GraphModule of a torch.export program (.pt2 source): it calls aten ops, not nn.Linear
  modules, so the dependencies come from its FX graph directly; its parameters keep their
  names (`net.0.weight`), are sliced in place, and `ctx.export` re-traces the smaller graph.

A *group* is one producer (linear/conv whose weight is a parameter) with everything that must
shrink with it: its bias, the BatchNorm that follows, and the input columns/channels of every
consumer (linear/conv) its output reaches through channel-preserving ops (relu, dropout,
pooling, flatten, ...). A producer whose output reaches anything else (the model output, an add,
a cat, a reshape) is left whole and listed in `details["skipped"]` with the reason: so the final
layer's outputs are never removed, and residual or concatenated channels are (for now) kept.

Importance is the L1 or L2 norm of each output channel's weights (Li et al. 2017, "Pruning
filters for efficient ConvNets"); `scope = "global"` ranks channels across layers after dividing
each layer's norms by their mean, so layers with larger fan-in do not lose everything.
"""

from __future__ import annotations

from collections import Counter

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import StepError
from . import StepContext, StepOutcome
from .finetune import FinetuneSettings, finetune

PRODUCERS = {"linear", "conv1d", "conv2d", "conv3d", "convolution"}
# ops whose output channel c depends only on input channel c (and that keep the channel axis)
ELEMENTWISE = {
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "tanh", "hardtanh", "hardtanh_", "leaky_relu",
    "hardswish", "hardsigmoid", "elu", "mish", "dropout", "clone", "contiguous", "detach", "alias", "feature_dropout",
}
POOLS = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
         "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d"}
BATCH_NORMS = {"batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit"}


@dataclass
class Group:
    """One prunable producer and the tensors that shrink with it."""

    weight: str  # FQN of the producer weight: rows (dim 0) are the channels
    bias: str | None
    norm: list[str] = field(default_factory=list)  # BatchNorm weight/bias/running stats: dim 0
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (weight FQN, columns per channel): dim 1


def _op(node: Any) -> str:
    target = node.target
    if hasattr(target, "overloadpacket"):
        return target.overloadpacket.__name__
    return getattr(target, "__name__", str(target))


def _attr(node: Any) -> str | None:
    return node.target if node is not None and getattr(node, "op", None) == "get_attr" else None


def _arg(node: Any, i: int, name: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def find_groups(graph: Any) -> tuple[list[Group], dict[str, str]]:
    """Prunable groups of an FX graph of aten ops, and the producers left whole with the reason."""
    groups, skipped = [], {}
    for node in graph.nodes:
        if node.op != "call_function" or _op(node) not in PRODUCERS:
            continue
        weight = _attr(_arg(node, 1, "weight"))
        if weight is None:
            continue
        if _op(node) != "linear" and _conv_groups(node) != 1:
            skipped[weight] = "grouped or transposed convolution"
            continue
        group = Group(weight, _attr(_arg(node, 2, "bias")))
        reason = _trace(node, group, "last" if _op(node) == "linear" else "channel1")
        if reason is None:
            groups.append(group)
        else:
            skipped[weight] = reason
    # a layer called more than once (shared or reused) would get one slicing per call: leave it whole
    calls = Counter(_attr(_arg(n, 1, "weight")) for n in graph.nodes if n.op == "call_function" and _op(n) in PRODUCERS)
    consumed = Counter(w for g in groups for w, _ in g.consumers)
    kept = []
    for g in groups:
        shared = [w for w in (g.weight, *(w for w, _ in g.consumers)) if calls[w] > 1 or (w != g.weight and consumed[w] > 1)]
        if shared:
            skipped[g.weight] = f"{shared[0]} is used by more than one call or producer"
        else:
            kept.append(g)
    return kept, skipped


def _conv_groups(node: Any) -> int:
    if _op(node) == "convolution":
        if _arg(node, 6, "transposed", False):
            return -1
        return _arg(node, 8, "groups", 1)
    return _arg(node, 6, "groups", 1)


def _trace(start: Any, group: Group, layout: str) -> str | None:
    """Follow `start`'s output to its consumers; return why it cannot be pruned, or None."""
    todo = [(start, layout)]
    seen = set()
    while todo:
        node, layout = todo.pop()
        for user in node.users:
            if (user, layout) in seen:
                continue
            seen.add((user, layout))
            if user.op == "output":
                return "feeds the model output"
            if user.op != "call_function":
                return f"feeds {user.op} {user.target}"
            op = _op(user)
            first = _arg(user, 0, "input") is node
            if op in ELEMENTWISE and first:
                todo.append((user, layout))
            elif op == "getitem" and user.args[1] == 0:  # first output of batch_norm / pooling with indices
                todo.append((user, layout))
            elif op in BATCH_NORMS and first and (layout == "channel1" or (layout == "last" and _rank(node) == 2)):
                names = [_attr(_arg(user, i, n)) for i, n in enumerate(("input", "weight", "bias", "running_mean", "running_var"))][1:]
                group.norm += [n for n in names if n is not None]
                todo.append((user, layout))
            elif op in POOLS | {"max_pool2d_with_indices"} and first and layout == "channel1":
                todo.append((user, layout))
            elif op == "flatten" and first and layout == "channel1" and _arg(user, 1, "start_dim", 0) == 1 and _arg(user, 2, "end_dim", -1) == -1:
                todo.append((user, "flat"))  # channel-major: channel c -> columns [c*k, (c+1)*k)
            elif op in ("view", "reshape", "_unsafe_view") and first and layout == "channel1" and _is_flatten_shape(user):
                todo.append((user, "flat"))  # x.view(x.size(0), -1): the same as flatten(1)
            elif op == "mean" and first and layout == "channel1" and _reduces_spatial_only(node, user):
                all_spatial = _reduces_all_spatial(node, user)
                todo.append((user, "flat" if all_spatial and not _arg(user, 2, "keepdim", False) else "channel1"))
            elif op == "linear" and first and layout in ("last", "flat"):
                w = _attr(_arg(user, 1, "weight"))
                if w is None:
                    return "feeds a linear whose weight is not a parameter"
                group.consumers.append((w, 0 if layout == "flat" else 1))  # 0: columns per channel from shapes
            elif op in PRODUCERS - {"linear"} and first and layout == "channel1" and _conv_groups(user) == 1:
                w = _attr(_arg(user, 1, "weight"))
                if w is None:
                    return "feeds a conv whose weight is not a parameter"
                group.consumers.append((w, 1))
            else:
                return f"feeds {op}"
    if not group.consumers:
        return "has no linear/conv consumer"
    return None


def _is_flatten_shape(node: Any) -> bool:
    shape = _arg(node, 1, "size", None) or _arg(node, 1, "shape", None)
    return isinstance(shape, (list, tuple)) and len(shape) == 2 and shape[1] == -1


def _mean_dims(node: Any, user: Any) -> set[int] | None:
    rank = _rank(node)
    dims = _arg(user, 1, "dim", None)
    if rank is None or not dims:
        return None
    return {d % rank for d in dims}


def _reduces_spatial_only(node: Any, user: Any) -> bool:
    dims = _mean_dims(node, user)
    return dims is not None and 0 not in dims and 1 not in dims


def _reduces_all_spatial(node: Any, user: Any) -> bool:
    dims, rank = _mean_dims(node, user), _rank(node)
    return dims is not None and dims == set(range(2, rank))


def _rank(node: Any) -> int | None:
    """Rank of a node's output when the trace recorded it (BatchNorm1d after Linear needs 2-D)."""
    val = node.meta.get("val")
    return getattr(val, "ndim", None)


def channel_importance(weight: np.ndarray, kind: str) -> np.ndarray:
    """Norm of each output channel's weights (rows of the weight, all other axes flattened)."""
    rows = weight.reshape(weight.shape[0], -1)
    return np.abs(rows).sum(axis=1) if kind == "l1" else np.sqrt((rows.astype(np.float64) ** 2).sum(axis=1))


def select_channels(scores: Sequence[np.ndarray], sparsity: float, scope: str) -> list[np.ndarray]:
    """Sorted indices of the channels each layer keeps (at least one per layer)."""
    if scope == "layer":
        keeps = []
        for s in scores:
            k = max(1, len(s) - int(round(sparsity * len(s))))
            keeps.append(np.sort(np.argsort(-s, kind="stable")[:k]))
        return keeps
    normed = [s / (s.mean() if s.mean() > 0 else 1.0) for s in scores]
    flat = np.concatenate(normed)
    n_remove = int(round(sparsity * len(flat)))
    threshold_order = np.argsort(flat, kind="stable")
    removed = np.zeros(len(flat), dtype=bool)
    removed[threshold_order[:n_remove]] = True
    keeps, offset = [], 0
    for s in normed:
        gone = removed[offset : offset + len(s)]
        keep = np.flatnonzero(~gone)
        if len(keep) == 0:
            keep = np.array([int(np.argmax(s))])
        keeps.append(keep)
        offset += len(s)
    return keeps


def _get(model: Any, fqn: str) -> Any:
    owner, _, name = fqn.rpartition(".")
    return getattr(model.get_submodule(owner) if owner else model, name)


def _set(model: Any, fqn: str, value: Any) -> None:
    import torch

    owner_name, _, name = fqn.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if name in owner._parameters:
        owner._parameters[name] = torch.nn.Parameter(value, requires_grad=owner._parameters[name].requires_grad)
    elif name in owner._buffers:
        owner._buffers[name] = value
    else:
        setattr(owner, name, value)


def prune_groups(model: Any, groups: list[Group], keeps: list[np.ndarray]) -> dict[str, list[int]]:
    """Slice every tensor of every group in place; returns {producer weight: [before, after]}."""
    import torch

    rows: dict[str, np.ndarray] = {}
    cols: dict[str, np.ndarray] = {}
    changed = {}
    for g, keep in zip(groups, keeps):
        n = _get(model, g.weight).shape[0]
        changed[g.weight] = [n, len(keep)]
        for fqn in [g.weight, g.bias, *g.norm]:
            if fqn is not None:
                rows[fqn] = keep
        for fqn, per in g.consumers:
            width = _get(model, fqn).shape[1]
            per = per or width // n
            if per * n != width:
                raise StepError(f"prune: cannot map {n} channels of {g.weight} onto the {width} inputs of {fqn}")
            cols[fqn] = (keep[:, None] * per + np.arange(per)[None, :]).reshape(-1)
    with torch.no_grad():
        for fqn in sorted(set(rows) | set(cols)):
            t = _get(model, fqn).detach()
            if fqn in rows:
                t = t.index_select(0, torch.as_tensor(rows[fqn]))
            if fqn in cols:
                t = t.index_select(1, torch.as_tensor(cols[fqn]))
            _set(model, fqn, t.contiguous().clone())
    _sync_module_sizes(model)
    return changed


def _sync_module_sizes(model: Any) -> None:
    """Make nn.Linear/Conv/BatchNorm size attributes match their (sliced) tensors."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.conv._ConvNd):
            m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = m.weight.shape[0] if m.weight is not None else m.running_mean.shape[0]


def trace_graph(model: Any, example: tuple) -> Any:
    """The FX graph to read dependencies from: the model's own, or a torch.export trace of it."""
    import torch

    if isinstance(model, torch.fx.GraphModule):
        return model.graph
    try:
        return torch.export.export(model, example, strict=False).module().graph
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise StepError(f"prune: structured pruning could not trace the model with torch.export: {first}") from e


def onnx_input_names(path: Path) -> list[str]:
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    init = {i.name for i in g.initializer}
    return [i.name for i in g.input if i.name not in init]


def example_inputs(names: list[str], ctx: StepContext) -> tuple:
    import torch

    data = ctx.train or ctx.calibration
    if data is None or any(n not in data.inputs for n in names):
        raise StepError("prune: structured pruning needs data.train or data.calibration to trace the model")
    return tuple(torch.from_numpy(np.ascontiguousarray(data.inputs[n][:2])) for n in names)


def structured_step(cfg: Any, src: Path, dst: Path, ctx: StepContext) -> StepOutcome:
    """`kind = "prune"` with `structured = true`: see the module docstring."""
    import torch

    names = onnx_input_names(src)
    example = example_inputs(names, ctx)
    model = copy.deepcopy(ctx.torch_model)
    groups, skipped = find_groups(trace_graph(model, example))
    groups = [g for g in groups if g.weight not in cfg.exclude]
    if not groups:
        raise StepError(f"prune: no neuron or channel can be removed structurally ({_reasons(skipped)})")
    scores = [channel_importance(_get(model, g.weight).detach().numpy(), cfg.importance) for g in groups]
    keeps = select_channels(scores, cfg.sparsity, cfg.scope)
    before = sum(p.numel() for p in model.parameters())
    channels = prune_groups(model, groups, keeps)
    try:
        with torch.no_grad():
            model(*example)
    except Exception as e:
        raise StepError(f"prune: the structurally pruned model no longer runs: {e}") from e
    details: dict[str, Any] = {
        "structured": True,
        "importance": cfg.importance,
        "channels": channels,
        "skipped": skipped,
        "params_before": before,
        "params_after": sum(p.numel() for p in model.parameters()),
    }
    warnings = []
    if cfg.finetune_epochs > 0:
        if ctx.train is None or ctx.train.labels is None:
            raise StepError("prune: finetune_epochs > 0 needs labelled data.train")
        settings = FinetuneSettings(
            epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size, seed=ctx.seed,
            temperature=cfg.temperature, alpha=cfg.distill_alpha,
        )
        teacher = ctx.torch_model if cfg.distill else None  # the step's input model, before pruning
        details["finetune"] = finetune(
            model, ctx.train.inputs, ctx.train.labels, names, settings, teacher=teacher, probabilities=ctx.probabilities
        )
    elif ctx.train is not None:
        warnings.append("data.train is given but finetune_epochs = 0: the pruned model was not fine-tuned")
    ctx.export(model, dst)
    return StepOutcome(torch_model=model, warnings=warnings, details=details)


def _reasons(skipped: dict[str, str]) -> str:
    return "; ".join(f"{k} {v}" for k, v in skipped.items()) or "no linear or conv layer with a parameter weight"
