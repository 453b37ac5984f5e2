"""Structured pruning of nn.Modules with Torch-Pruning's dependency graph (DepGraph, Fang et al. 2023).

Torch-Pruning traces the model once through autograd and groups every tensor slice that must go
with a channel: through residual adds, concatenation, split/chunk, grouped and depthwise
convolutions, explicit pads, squeeze-excitation, LayerNorm, embeddings and attention heads. This
module drives it one group at a time, with edgefair's own choices:

- importance: the L1 or L2 norm of each output channel's weights in the group's producers
  (conv/linear rows, embedding columns), each producer's norms divided by their mean and summed,
  exactly as for the .pt2 graph engine (structured.py), so both engines rank channels the same way;
- selection: `select_channels` (per layer, or global after normalisation); grouped convolutions
  and attention heads lose the same number of channels in every group/head;
- `exclude`: a group whose output channels include an excluded tensor is left whole;
- a check per group: before a group is removed, the columns its consumers read from the channels
  to be removed are zeroed and the model run on the example input; after removal the outputs must
  be the same. A group whose index mapping would change what the kept channels compute (for
  example a channel shuffle, which reorders channels through a reshape) fails the check, is put
  back as it was, and is listed in `skipped`. Groups whose channels pass through an op that mixes
  channels (LayerNorm, GroupNorm, attention's dot products) cannot be checked this way: they keep
  Torch-Pruning's mapping unchecked, and the step's details count them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import StepError

HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads")
QKV_NAMES = {"q", "k", "v", "query", "key", "value", "q_proj", "k_proj", "v_proj", "q_lin", "k_lin", "v_lin"}


@dataclass
class Result:
    channels: dict[str, list[int]] = field(default_factory=dict)  # producer weight -> [before, after]
    skipped: dict[str, str] = field(default_factory=dict)  # producer weight -> why its channels stay
    groups_pruned: int = 0
    groups_unchecked: int = 0  # pruned through channel-mixing ops the output check cannot cover


def attention_heads(model: Any) -> dict[Any, int]:
    """{query/key/value nn.Linear: number of heads} for attention modules written the usual way
    (an int attribute `num_heads` or the like and Linear children named q/k/v, query/key/value ...)."""
    from torch import nn

    heads = {}
    for m in model.modules():
        n = next((getattr(m, a) for a in HEAD_ATTRS if isinstance(getattr(m, a, None), int)), None)
        if n is None or isinstance(m, nn.MultiheadAttention):
            continue
        for name, child in m.named_children():
            if name in QKV_NAMES and isinstance(child, nn.Linear) and child.out_features % n == 0:
                heads[child] = n
    return heads


def _is_depthwise(m: Any) -> bool:
    from torch import nn

    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.out_channels == m.in_channels


def _producer_norms(m: Any, idxs: Sequence[int], kind: str) -> np.ndarray | None:
    """Norm of the weights that make each of `idxs` output channels, for a producer module."""
    from torch import nn

    w = m.weight.detach()
    if isinstance(m, nn.Embedding):
        rows = w[:, list(idxs)].T
    elif isinstance(m, nn.Linear) or (isinstance(m, nn.modules.conv._ConvNd) and not m.transposed and not _is_depthwise(m)):
        rows = w[list(idxs)]
    else:
        return None
    rows = rows.reshape(len(idxs), -1).double().numpy()
    return np.abs(rows).sum(axis=1) if kind == "l1" else np.sqrt((rows**2).sum(axis=1))


class Engine:
    """Torch-Pruning's dependency graph of one model, and edgefair's per-group pruning on it."""

    def __init__(self, model: Any, example: tuple, *, exclude: Sequence[str] = ()) -> None:
        import torch_pruning as tp
        from torch import nn

        self.tp, self.model, self.example = tp, model, example
        self.probe = tuple(t[:1] for t in example)  # the per-group check runs on one row: half the time
        self.names = {m: n for n, m in model.named_modules()}
        self.exclude = set(exclude)
        self.heads = attention_heads(model)
        mha = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]  # fused weights: left whole
        model.eval()  # traced in eval mode: BatchNorm statistics must not move
        frozen = [p for p in model.parameters() if not p.requires_grad]
        self.frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
        for p in frozen:  # the trace follows autograd: frozen layers would be invisible to it
            p.requires_grad_(True)
        try:
            self.dg = tp.DependencyGraph().build_dependency(model, example_inputs=list(example), verbose=False,
                                                            ignored_layers=mha)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise StepError(f"prune: Torch-Pruning could not trace the model: {first}") from e
        finally:
            for p in frozen:
                p.requires_grad_(False)
        self.ignored = [s for m in mha for s in m.modules()]

    def _weight(self, m: Any) -> str:
        name = self.names.get(m, "?")
        return f"{name}.weight" if name else "weight"

    def _channel_groups(self, group: Any) -> int:
        """Heads or conv groups that must each keep the same number of channels."""
        from torch import nn

        out = 1
        for dep, _ in group:
            m = dep.target.module
            if m in self.heads:
                out = max(out, self.heads[m])
            elif isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and not _is_depthwise(m):
                out = max(out, m.groups)
            elif isinstance(m, self.tp.ops._SplitOp) and m.split_sizes and len(set(m.split_sizes)) == 1:
                # x.chunk(k) splits whatever width it gets into k equal parts: remove as many from each
                out = max(out, len(m.split_sizes))
        return out

    def _out_modules(self, group: Any) -> list[Any]:
        return list(dict.fromkeys(dep.target.module for dep, _ in group if self.dg.is_out_channel_pruning_fn(dep.handler)))

    def plan(self, kind: str) -> tuple[list[tuple[Any, int, np.ndarray]], dict[str, str]]:
        """[(group root, channel groups, importance of each root channel)] and the groups left whole."""
        from torch import nn

        plans, skipped = [], {}
        roots = (self.tp.ops.TORCH_CONV, self.tp.ops.TORCH_LINEAR)
        for group in self.dg.get_all_groups(ignored_layers=self.ignored, root_module_types=roots):
            root = group[0].dep.target.module
            outs = self._out_modules(group)
            producers = [m for m in outs if isinstance(m, (nn.Linear, nn.Embedding, nn.modules.conv._ConvNd)) and not _is_depthwise(m)]
            names = [self._weight(m) for m in producers]
            tensors = [f"{self.names[m]}.{p}" for m in outs if m in self.names for p, _ in m.named_parameters(recurse=False)]
            excluded = sorted(self.exclude.intersection(tensors))
            if excluded:
                skipped.update({w: f"shares its channels with {excluded[0]}, which is excluded" for w in names if w not in excluded})
                continue
            n = self.dg.get_out_channels(root)
            score, ranked = np.zeros(n), False
            for item in group.items:
                m = item.dep.target.module
                if m not in producers or not self.dg.is_out_channel_pruning_fn(item.dep.handler):
                    continue
                try:
                    norms = _producer_norms(m, item.idxs, kind)
                except IndexError:  # seen with a split of a concatenation: the group is not usable
                    score = None
                    break
                if norms is None or any(r is None for r in item.root_idxs):
                    continue
                score[np.asarray(item.root_idxs)] += norms / (norms.mean() if norms.mean() > 0 else 1.0)
                ranked = True
            if score is not None and not ranked:
                skipped.update(dict.fromkeys(names or [self._weight(root)], "no conv, linear or embedding weight ranks these channels"))
                continue
            if score is None:
                skipped.update(dict.fromkeys(names, "Torch-Pruning maps these channels out of range (a split of a concatenation)"))
                continue
            g = self._channel_groups(group)
            if n % g:
                skipped.update(dict.fromkeys(names, f"{n} channels do not split into {g} equal groups"))
                continue
            plans.append((root, g, score.reshape(g, -1).mean(axis=0)))
        return plans, skipped

    def prune(self, sparsity: float, kind: str, scope: str, *, check: bool = True) -> Result:
        """Prune every group the plan allows; `check` runs the per-group output check (see module doc)."""
        from torch import nn

        from .structured import select_channels

        result = Result()
        plans, result.skipped = self.plan(kind)
        keeps = select_channels([s for _, _, s in plans], sparsity, scope)
        before = {m: self.dg.get_out_channels(m) for m in self.model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))}
        for (root, g, score), keep in zip(plans, keeps):
            per = len(score)
            gone = np.setdiff1d(np.arange(per), keep)
            if len(gone) == 0:
                continue
            idxs = sorted(int(k * per + i) for k in range(g) for i in gone)
            group = self.dg.get_pruning_group(root, self.dg.get_pruner_of_module(root).prune_out_channels, idxs)
            names = [self._weight(m) for m in self._out_modules(group)
                     if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and not _is_depthwise(m)]
            if not self.dg.check_pruning_group(group):
                result.skipped.update(dict.fromkeys(names, "would lose every channel"))
                continue
            mixing = self._mixes_channels(group)
            reason = self._apply(group, check and not mixing)
            if reason:
                result.skipped.update(dict.fromkeys(names, reason))
                continue
            result.groups_pruned += 1
            result.groups_unchecked += int(mixing or not check)
        for m, n in before.items():
            after = self.dg.get_out_channels(m)
            if after != n and not _is_depthwise(m):
                result.channels[self._weight(m)] = [n, after]
        for w in result.channels:
            result.skipped.pop(w, None)
        for n, p in self.model.named_parameters():  # Torch-Pruning makes new parameters that require grad
            if n in self.frozen:
                p.requires_grad_(False)
        return result

    def _mixes_channels(self, group: Any) -> bool:
        from torch import nn

        mixing = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.Embedding)
        return any(isinstance(dep.target.module, mixing) or dep.target.module in self.heads for dep, _ in group)

    def _run(self) -> Any:
        import torch

        with torch.no_grad():
            out = self.model(*self.probe)
        return out[0] if isinstance(out, (tuple, list)) else out

    def _apply(self, group: Any, check: bool) -> str | None:
        """Remove the group's channels in place; None, or why it was put back."""
        import torch

        modules = list(dict.fromkeys(m for dep, _ in group for m in (dep.source.module, dep.target.module)))
        saved = [(m, _state(m)) for m in modules]
        reference = self._reference(group, zero=check)
        try:
            group.prune()
            out = self._run()
        except Exception as e:  # an index mapping the model cannot run with
            _restore(saved)
            return f"Torch-Pruning's pruning of these channels breaks the forward pass ({type(e).__name__})"
        if out.shape != reference.shape:
            _restore(saved)
            return "feeds the model output"
        if check:
            same = torch.allclose(
                out, reference, rtol=1e-3, atol=1e-4 * max(1.0, float(reference.abs().max())))
            if not same:
                _restore(saved)
                return "Torch-Pruning's index mapping changes what the kept channels compute (e.g. a channel shuffle)"
        return None

    def _reference(self, group: Any, zero: bool = True) -> Any:
        """The model's output with every column its consumers read from the removed channels zeroed
        (not zeroed: the output as it is, whose shape the pruned model's must keep)."""
        import torch
        from torch import nn

        touched = []
        with torch.no_grad():
            for dep, idxs in group:
                m = dep.target.module
                if not zero or not self.dg.is_in_channel_pruning_fn(dep.handler) or not idxs:
                    continue
                if isinstance(m, nn.Linear):
                    touched.append((m, m.weight.detach().clone()))
                    m.weight[:, list(idxs)] = 0.0
                elif isinstance(m, nn.modules.conv._ConvNd) and not m.transposed and not _is_depthwise(m):
                    touched.append((m, m.weight.detach().clone()))
                    per_in, per_out = m.in_channels // m.groups, m.out_channels // m.groups
                    for i in idxs:
                        k = i // per_in
                        m.weight[k * per_out : (k + 1) * per_out, i % per_in] = 0.0
            out = self._run()
            for m, w in touched:
                m.weight.copy_(w)
        return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread: the per-group checks are many small forward passes, and on a busy
    machine two threads waiting on each other made one EfficientNet-Lite0 pass 30x slower (3.7 s vs 0.12 s)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _state(m: Any) -> dict:
    import copy

    state = dict(m.__dict__)
    for k in ("_parameters", "_buffers", "_modules"):
        if k in state:
            state[k] = dict(state[k])
    for k, v in state.items():
        if isinstance(v, (list, dict)) and not k.startswith("_"):
            state[k] = copy.deepcopy(v)  # op nodes' offsets / split sizes
    return state


def _restore(saved: list) -> None:
    for m, state in saved:
        m.__dict__.clear()
        m.__dict__.update(state)
