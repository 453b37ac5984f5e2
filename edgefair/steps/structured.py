"""Structured pruning: remove whole Linear neurons and Conv output channels, so the graph shrinks.

Works on the torch model before export, with one of two engines:
- an nn.Module (factory source): Torch-Pruning's dependency graph, driven group by group with the
  importance and selection below and an output check per group (depgraph.py). It covers concat,
  chunk, grouped convs, pads, squeeze-excitation, LayerNorm, embeddings and attention head dims;
- the GraphModule of a torch.export program (.pt2 source): it calls aten ops, not nn.Linear
  modules, so Torch-Pruning cannot trace it; the hand-written dependency graph in this module reads
  its FX graph directly; its parameters keep their names (`net.0.weight`), are sliced in place,
  and `ctx.export` re-traces the smaller graph.

The rest of this docstring describes the graph engine.

A *group* is one producer (linear/conv whose weight is a parameter) with everything that must
shrink with it: its bias, the BatchNorm that follows, and the input columns/channels of every
consumer (linear/conv) its output reaches through channel-preserving ops (relu, dropout,
pooling, flatten, ...). Producers whose outputs meet in an add (residual connections) share
their channels and form one group that keeps the same channel indices in all of them. A producer
whose channels pass through a depthwise convolution (groups = channels, as in MobileNet) shrinks
it too. A producer whose channels reach anything else (the model output, an add with the model
input, a cat, a reshape, another grouped convolution) is left whole and listed in
`details["skipped"]` with the reason: so the final layer's outputs are never removed, and
concatenated channels are (for now) kept.

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
    """Producers whose output channels must be removed together, and the tensors that shrink with them.

    Usually one producer. Producers whose outputs are added (a residual connection) share their
    channels: channel c of every one of them is the same channel after the add, so they form one
    group and keep the same channel indices.
    """

    weights: list[str]  # FQNs of the producer weights: rows (dim 0) are the channels
    biases: list[str] = field(default_factory=list)
    norm: list[str] = field(default_factory=list)  # BatchNorm weight/bias/running stats: dim 0
    consumers: list[tuple[str, int]] = field(default_factory=list)  # (weight FQN, columns per channel): dim 1
    depthwise: list[str] = field(default_factory=list)  # depthwise conv weights/biases on the way: dim 0

    @property
    def weight(self) -> str:
        return self.weights[0]


@dataclass(eq=False)  # identity: two spaces with the same contents are still different channels
class _Space:
    """The channels of some tensors in the graph: made by a producer, merged by adds. The root of
    merged spaces holds the group they make."""

    group: Group
    channels: int | None = None  # how many (from the producer's weight)
    blocked: str | None = None  # why these channels cannot be removed
    parent: "_Space | None" = None

    def root(self) -> "_Space":
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    def block(self, reason: str) -> None:
        root = self.root()
        root.blocked = root.blocked or reason


def _union(a: _Space, b: _Space) -> _Space:
    a, b = a.root(), b.root()
    if a is not b:
        b.parent = a
        for name in ("weights", "biases", "norm", "consumers", "depthwise"):
            getattr(a.group, name).extend(getattr(b.group, name))
        a.blocked = a.blocked or b.blocked
    return a


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


ADDS = {"add", "add_", "sub", "sub_"}
SHAPE_ONLY = {"sym_size", "size", "sym_numel", "dim", "sym_stride"}


def find_groups(graph: Any) -> tuple[list[Group], dict[str, str]]:
    """Prunable groups of an FX graph of aten ops, and the producers left whole with the reason.

    One pass in graph (topological) order gives every tensor that carries prunable channels its
    channel space and layout ("last": the channel is the last axis, "channel1": axis 1, "flat":
    axis 1 after flattening channel-major). Producers make spaces, channel-preserving ops pass them
    on, an add of two tensors merges theirs, and any other use blocks the space with a reason.
    """
    value: dict[Any, tuple[_Space, str]] = {}  # node -> (space, layout) of its output
    spaces: list[_Space] = []
    calls = Counter(_attr(_arg(n, 1, "weight")) for n in graph.nodes if n.op == "call_function" and _op(n) in PRODUCERS)
    calls.update(_attr(a) for n in graph.nodes if n.op == "call_function" and _op(n) in BATCH_NORMS
                 for a in n.args[1:5] if _attr(a) is not None)  # a BatchNorm applied twice is shared too

    def block(nodes: Any, reason: str) -> None:
        for arg in nodes:
            if arg in value:
                value[arg][0].block(reason)

    for node in graph.nodes:
        if node.op == "output":
            block(node.all_input_nodes, "feeds the model output")
            continue
        if node.op != "call_function":
            continue
        op = _op(node)
        src = _arg(node, 0, "input")
        cur = value.get(src) if isinstance(src, type(node)) else None
        others = [a for a in node.all_input_nodes if a is not src and a in value]
        if op in SHAPE_ONLY:  # x.size(0) and the like read no channel values
            continue
        if op in PRODUCERS and cur is not None and cur[1] == "channel1" and _is_depthwise(node):
            # channel c in, channel c out (MobileNet's depthwise conv): its filters shrink with the channels
            names = [_attr(_arg(node, 1, "weight")), _attr(_arg(node, 2, "bias"))]
            cur[0].root().group.depthwise.extend(n for n in names if n is not None)
            value[node] = cur
            continue
        if op in PRODUCERS:
            weight = _attr(_arg(node, 1, "weight"))
            grouped = op != "linear" and _conv_groups(node) != 1
            if cur is not None:  # this layer reads channels of an earlier producer
                space, layout = cur
                ok = (op == "linear" and layout in ("last", "flat")) or (op != "linear" and layout == "channel1" and not grouped)
                if weight is None:
                    space.block(f"feeds a {'linear' if op == 'linear' else 'conv'} whose weight is not a parameter")
                elif not ok:
                    space.block("feeds a grouped or transposed convolution" if grouped else f"feeds {op}")
                else:
                    space.root().group.consumers.append((weight, 0 if layout == "flat" else 1))
            block(others, f"feeds {op} as a weight")
            if weight is None:
                continue
            wval = _arg(node, 1, "weight").meta.get("val")
            bias = _attr(_arg(node, 2, "bias"))
            space = _Space(Group([weight], [bias] if bias is not None else []),
                           channels=None if wval is None else int(wval.shape[0]))
            if grouped:
                space.blocked = "grouped or transposed convolution"
            spaces.append(space)
            value[node] = (space, "last" if op == "linear" else "channel1")
            continue
        out = None if cur is None else _follow(node, op, cur, src, value)
        if out is None:  # channels used by an op we do not follow
            block(node.all_input_nodes, f"feeds {op}")
        else:
            value[node] = out

    groups, skipped = [], {}
    roots = list(dict.fromkeys(s.root() for s in spaces))
    for root in roots:
        g = root.group
        tensors = (*g.weights, *(w for w, _ in g.consumers), *g.depthwise, *g.norm)
        shared = [w for w in tensors if calls[w] > 1] + [w for w, c in Counter(w for w, _ in g.consumers).items() if c > 1]
        reason = root.blocked
        if reason is None and shared:
            reason = f"{shared[0]} is used by more than one call or producer"
        if reason is None and not g.consumers:
            reason = "has no linear/conv consumer"
        if reason is None:
            groups.append(g)
        else:
            skipped.update(dict.fromkeys(g.weights, reason))
    return groups, skipped


def _follow(node: Any, op: str, cur: tuple[_Space, str], src: Any, value: dict) -> tuple[_Space, str] | None:
    """The (space, layout) of `node`'s output given its first input's, or None if channels cannot follow."""
    space, layout = cur
    if op in ELEMENTWISE:
        return cur
    if op == "getitem":  # first output of batch_norm / pooling with indices
        return cur if node.args[1] == 0 else None
    if op in ADDS:  # x + y: both must carry the same channels (a residual add), or y is a scalar
        other = _arg(node, 1, "other")
        if not hasattr(other, "op"):
            return cur
        if other not in value or value[other][1] != layout or not _same_shape(src, other):
            return None  # a broadcast (8 channels + 1) does not make channel c of one side channel c of the other
        if space.root().channels != value[other][0].root().channels:
            return None
        return (_union(space, value[other][0]), layout)
    if op in BATCH_NORMS and (layout == "channel1" or (layout == "last" and _rank(src) == 2)):
        names = [_attr(_arg(node, i, n)) for i, n in enumerate(("input", "weight", "bias", "running_mean", "running_var"))][1:]
        space.root().group.norm.extend(n for n in names if n is not None)
        return cur
    if op in POOLS | {"max_pool2d_with_indices"} and layout == "channel1":
        return cur
    if op == "flatten" and layout == "channel1" and _arg(node, 1, "start_dim", 0) == 1 and _arg(node, 2, "end_dim", -1) == -1:
        return (space, "flat")  # channel-major: channel c -> columns [c*k, (c+1)*k)
    if op in ("view", "reshape", "_unsafe_view") and layout == "channel1" and _is_flatten_shape(node, src):
        return (space, "flat")  # x.view(x.size(0), -1): the same as flatten(1)
    if op == "mean" and layout == "channel1" and _reduces_spatial_only(src, node):
        all_spatial = _reduces_all_spatial(src, node)
        return (space, "flat" if all_spatial and not _arg(node, 2, "keepdim", False) else "channel1")
    return None


def _is_depthwise(node: Any) -> bool:
    """A convolution with one filter per input channel: groups = in = out channels (multiplier 1)."""
    groups = _conv_groups(node)
    weight = _arg(node, 1, "weight")
    val = weight.meta.get("val") if _attr(weight) is not None else None
    return groups > 1 and val is not None and val.ndim >= 3 and val.shape[0] == groups and val.shape[1] == 1


def _same_shape(a: Any, b: Any) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return va is not None and vb is not None and tuple(map(str, va.shape)) == tuple(map(str, vb.shape))


def _conv_groups(node: Any) -> int:
    if _op(node) == "convolution":
        if _arg(node, 6, "transposed", False):
            return -1
        return _arg(node, 8, "groups", 1)
    return _arg(node, 6, "groups", 1)


def _is_flatten_shape(node: Any, src: Any) -> bool:
    """`x.view(x.size(0), -1)`: two dims, the first the batch axis (not `n * C`), the second -1."""
    shape = _arg(node, 1, "size", None) or _arg(node, 1, "shape", None)
    if not (isinstance(shape, (list, tuple)) and len(shape) == 2 and shape[1] == -1):
        return False
    first = shape[0]
    if hasattr(first, "op"):  # x.size(0) in the graph
        return first.op == "call_function" and _op(first) in SHAPE_ONLY and first.args[0] is src \
            and len(first.args) > 1 and first.args[1] == 0
    val = src.meta.get("val")
    return val is not None and isinstance(first, int) and str(first) == str(val.shape[0])


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


def group_importance(weights: Sequence[np.ndarray], kind: str) -> np.ndarray:
    """Importance of the channels a group shares: each producer's norms divided by their mean,
    summed (one producer: its norms up to a constant, so its ranking is unchanged)."""
    if len(weights) == 1:
        return channel_importance(weights[0], kind)
    total = np.zeros(weights[0].shape[0])
    for w in weights:
        s = channel_importance(w, kind)
        total += s / (s.mean() if s.mean() > 0 else 1.0)
    return total


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
        for w in g.weights:
            changed[w] = [n, len(keep)]
        for fqn in [*g.weights, *g.biases, *g.norm, *g.depthwise]:
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
    _sync_depthwise_groups(model, {w for g in groups for w in g.depthwise})
    return changed


def _sync_module_sizes(model: Any) -> None:
    """Make nn.Linear/Conv/BatchNorm size attributes match their (sliced) tensors."""
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.conv._ConvNd) and m.transposed:  # weight: (in, out / groups, ...)
            m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
        elif isinstance(m, nn.modules.conv._ConvNd):
            m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.num_features = m.weight.shape[0] if m.weight is not None else m.running_mean.shape[0]


def _sync_depthwise_groups(model: Any, depthwise: set[str]) -> None:
    """A depthwise conv keeps one group per remaining channel: in its module, or in the graph of a
    GraphModule (an exported program's conv calls carry `groups` as a literal argument)."""
    import torch
    from torch import nn

    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd) and f"{name}.weight".lstrip(".") in depthwise:
            m.groups = m.in_channels = m.out_channels = m.weight.shape[0]
    if isinstance(model, torch.fx.GraphModule):
        for node in model.graph.nodes:
            target = _attr(_arg(node, 1, "weight")) if node.op == "call_function" and _op(node) in PRODUCERS else None
            if target in depthwise:
                index = 8 if _op(node) == "convolution" else 6
                width = _get(model, target).shape[0]
                if len(node.args) > index:
                    node.update_arg(index, width)
                else:
                    node.update_kwarg("groups", width)
        model.recompile()


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


def onnx_inputs(path: Path) -> tuple[list[str], int]:
    """The model's input names, and the batch size to trace with: its own if the batch axis is
    fixed (a program exported for one batch size runs at no other), else 2."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    init = {i.name for i in g.initializer}
    inputs = [i for i in g.input if i.name not in init]
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    return [i.name for i in inputs], fixed or 2


def example_inputs(names: list[str], ctx: StepContext, batch: int = 2) -> tuple:
    import torch

    data = ctx.train or ctx.calibration
    if data is None or any(n not in data.inputs for n in names):
        raise StepError("prune: structured pruning needs data.train or data.calibration to trace the model")
    if data.n < batch:
        raise StepError(f"prune: the model's batch axis is fixed at {batch}, but {data.path.name} has {data.n} rows")
    return tuple(torch.from_numpy(np.array(data.inputs[n][:batch], order="C")) for n in names)


def structured_step(cfg: Any, src: Path, dst: Path, ctx: StepContext) -> StepOutcome:
    """`kind = "prune"` with `structured = true`: see the module docstring."""
    import torch

    names, batch = onnx_inputs(src)
    example = example_inputs(names, ctx, batch)
    model = copy.deepcopy(ctx.torch_model)
    before = sum(p.numel() for p in model.parameters())
    if isinstance(model, torch.fx.GraphModule):  # a .pt2 program: aten calls, no layer modules to trace
        engine, channels, skipped, counts = "graph", *_prune_graph(model, example, cfg)
    else:
        engine, channels, skipped, counts = "torch-pruning", *_prune_modules(model, example, cfg)
        if any(p.ndim == 4 for p in model.parameters()):
            # 2-D conv weights in channels-last order: recovery fine-tuning of the pruned EfficientNet-Lite0
            # took 0.64x the time per step on one CPU thread (benchmarks/README.md); the values are the same
            model = model.to(memory_format=torch.channels_last)
    try:
        with torch.no_grad():
            model(*example)
    except Exception as e:
        raise StepError(f"prune: the structurally pruned model no longer runs: {e}") from e
    details: dict[str, Any] = {
        "structured": True,
        "engine": engine,
        "importance": cfg.importance,
        "channels": channels,
        "skipped": skipped,
        "params_before": before,
        "params_after": sum(p.numel() for p in model.parameters()),
        **counts,
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


def _prune_graph(model: Any, example: tuple, cfg: Any) -> tuple[dict, dict, dict]:
    """The hand-written engine, for exported programs (see the module docstring)."""
    groups, skipped = find_groups(trace_graph(model, example))
    for g in groups:  # a layer that keeps its output channels keeps them for everything sharing them
        excluded = [w for w in (*g.weights, *g.biases, *g.depthwise, *g.norm) if w in cfg.exclude]
        if excluded:
            skipped.update({w: f"shares its channels with {excluded[0]}, which is excluded"
                            for w in g.weights if w not in excluded})
    groups = [g for g in groups if not any(w in cfg.exclude for w in (*g.weights, *g.biases, *g.depthwise, *g.norm))]
    if not groups:
        raise StepError(f"prune: no neuron or channel can be removed structurally ({_reasons(skipped)})")
    scores = [group_importance([_get(model, w).detach().numpy() for w in g.weights], cfg.importance) for g in groups]
    keeps = select_channels(scores, cfg.sparsity, cfg.scope)
    return prune_groups(model, groups, keeps), skipped, {"groups_pruned": len(groups)}


def _prune_modules(model: Any, example: tuple, cfg: Any) -> tuple[dict, dict, dict]:
    """Torch-Pruning's dependency graph, for nn.Modules (see depgraph.py)."""
    from .depgraph import Engine, one_thread

    with one_thread():
        result = Engine(model, example, exclude=cfg.exclude).prune(cfg.sparsity, cfg.importance, cfg.scope)
    if not result.channels:
        raise StepError(f"prune: no neuron or channel can be removed structurally ({_reasons(result.skipped)})")
    return result.channels, result.skipped, {"groups_pruned": result.groups_pruned, "groups_unchecked": result.groups_unchecked}


def _reasons(skipped: dict[str, str]) -> str:
    return "; ".join(f"{k} {v}" for k, v in skipped.items()) or "no linear or conv layer with a parameter weight"
