"""Worst-group repair for static int8: which nodes to keep in float, judged by the worst group.

Compression tools fall back operators to float against an *average* error. Here every candidate
node is judged by the group it hurts most, on the **calibration rows** (never the eval rows the
gates judge), label-free: a group's *agreement* is the share of its rows whose predicted class is
the fp32 model's. With labels, per-group accuracy is reported next to it (it does not rank).

- `stratified_rows`: equal calibration rows per cell (combination of the group attributes' values),
  so small groups' activations shape the quantization ranges;
- `GroupScorer`: per-group agreement (and accuracy) of a model's outputs against fp32's;
- `quantizable_nodes`: the nodes onnxruntime actually quantized in a candidate;
- `rank_nodes` / `repair`: one re-quantization per candidate node with that node kept in float,
  ranked by the worst group's agreement; then greedily keep the top-ranked nodes in float,
  re-quantizing and re-measuring after each, until the target, the maximum or no node helps.
- latency-aware (`max_slowdown`): every measured model also carries its `slowdown`, its p50 over
  the plain int8 model's (timed interleaved with it, 1 thread, batch 1; see quantize.py). The
  candidates that raise the worst group are then ranked by gain per unit of latency cost
  (points of worst-group agreement per unit of slowdown - 1, the cost floored at `COST_FLOOR`,
  below which timings are noise), and the greedy repair skips a node whose predicted slowdown
  (the current model's plus the node's own cost) or measured one exceeds `max_slowdown`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..errors import DataError, StepError
from ..groups import group_masks

# ops whose float fallback changes the arithmetic (weights and matrix products), ranked first when
# there are more candidates than keep_float_candidates
# a node's latency cost (slowdown - 1) counts as at least this much when ranking by gain per cost:
# below ~1% of the int8 model's p50, a short interleaved timing cannot tell a node from none
COST_FLOOR = 0.01

COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "LSTM", "GRU", "Gather", "EmbedLayerNormalization")


# ---- group attributes of the calibration rows --------------------------------------------------------


def calibration_attributes(
    calibration, names: Sequence[str], label: str | None, key: str
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Group attributes (and labels, when present) of the calibration rows.

    Taken from the Dataset when it holds them; otherwise read from its file (same rows, same order),
    since the pipeline reads data.calibration for its model inputs only. `key` names the config key
    in errors.
    """
    attrs = {g: np.asarray(calibration.attributes[g]).astype(str) for g in names if g in calibration.attributes}
    labels = calibration.labels
    missing = [g for g in names if g not in attrs]
    path = Path(calibration.path)
    tabular = path.is_file() and path.suffix.lower() in (".npz", ".csv", ".parquet")
    if missing or (labels is None and tabular):
        columns = _read_columns(path, key, names)
        for g in missing:
            if g not in columns:
                have = ", ".join(sorted(columns))
                raise DataError(f"{key}: group column {g!r} not in data.calibration ({Path(calibration.path).name}; has: {have})")
            col = np.asarray(columns[g])
            if col.ndim != 1 or len(col) != calibration.n:
                raise DataError(f"{key}: group column {g!r} in {Path(calibration.path).name} must be 1-D with {calibration.n} rows")
            attrs[g] = col.astype(str)
        name = label or "label"
        if labels is None and name in columns:
            col = np.asarray(columns[name])
            if col.ndim == 1 and len(col) == calibration.n and col.dtype.kind in "iub":
                labels = col.astype(np.int64)
    return {g: attrs[g] for g in names}, labels


def _read_columns(path: Path, key: str, names: Sequence[str]) -> dict[str, np.ndarray]:
    from ..data import read_columns

    if not path.is_file():
        raise DataError(f"{key}: cannot read group columns from {path.name} (an .npz, .csv or .parquet file)")
    return read_columns(path, key, text=tuple(names))


def cells_of(attributes: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Cell names ("sex=Female&race=Black") and the cell index of every row."""
    names = list(attributes)
    table = np.stack([np.asarray(attributes[g]).astype(str) for g in names], axis=1)
    patterns, cell = np.unique(table, axis=0, return_inverse=True)
    labels = ["&".join(f"{g}={v}" for g, v in zip(names, row)) for row in patterns]
    return labels, cell.reshape(-1)


def stratified_rows(attributes: Mapping[str, np.ndarray], rows: int, seed: int) -> tuple[np.ndarray, dict[str, int]]:
    """Row indices with equal rows per cell (combination of attribute values), `rows` in all.

    Cells with fewer rows than their share give all of them; what they leave is shared equally by
    the others (water-filling). Without replacement, seeded, in ascending row order.
    """
    labels, cell = cells_of(attributes)
    n = len(cell)
    rows = min(rows, n)
    rng = np.random.default_rng(seed)
    members = [rng.permutation(np.flatnonzero(cell == c)) for c in range(len(labels))]
    quota = {c: 0 for c in range(len(labels))}
    left, open_cells = rows, [c for c in range(len(labels))]
    while left > 0 and open_cells:
        share, extra = divmod(left, len(open_cells))
        given = 0
        for i, c in enumerate(open_cells):
            want = share + (1 if i < extra else 0)
            take = min(want, len(members[c]) - quota[c])
            quota[c] += take
            given += take
        left -= given
        open_cells = [c for c in open_cells if quota[c] < len(members[c])]
        if given == 0:
            break
    picked = np.sort(np.concatenate([members[c][: quota[c]] for c in quota]) if quota else np.zeros(0, np.int64))
    return picked.astype(np.int64), {labels[c]: int(quota[c]) for c in quota}


# ---- per-group agreement with fp32 -----------------------------------------------------------------


@dataclass
class GroupScorer:
    """Per-group agreement with the fp32 predictions (and accuracy, with labels) on fixed rows."""

    reference: np.ndarray  # (n,) fp32 predicted class
    masks: dict[str, np.ndarray]  # group -> (n,) bool
    labels: np.ndarray | None
    min_rows: int

    @classmethod
    def build(cls, fp32_outputs: np.ndarray, attributes: Mapping[str, np.ndarray], labels: np.ndarray | None, min_rows: int, key: str):
        if fp32_outputs.ndim != 2 or fp32_outputs.shape[1] < 2:
            raise StepError(f"{key}: needs class scores (rows x classes) from the model, got outputs of shape {fp32_outputs.shape}")
        masks = group_masks(attributes, intersections=False)
        return cls(fp32_outputs.argmax(axis=1), masks, labels, min_rows)

    @property
    def judged(self) -> list[str]:
        return [g for g, m in self.masks.items() if int(m.sum()) >= self.min_rows]

    def score(self, outputs: np.ndarray) -> dict[str, Any]:
        pred = outputs.reshape(len(outputs), -1).argmax(axis=1)
        agree = pred == self.reference
        right = None if self.labels is None else pred == self.labels
        groups = {}
        for g, m in self.masks.items():
            k = int(m.sum())
            entry: dict[str, Any] = {"n": k, "agreement": float(agree[m].mean()) if k else None}
            if right is not None:
                entry["accuracy"] = float(right[m].mean()) if k else None
            entry["judged"] = k >= self.min_rows
            groups[g] = entry
        judged = self.judged
        out: dict[str, Any] = {"agreement": float(agree.mean())}
        if right is not None:
            out["accuracy"] = float(right.mean())
        if judged:
            worst = min(judged, key=lambda g: (groups[g]["agreement"], g))
            best = max(groups[g]["agreement"] for g in judged)
            out.update(worst_group=worst, worst_agreement=groups[worst]["agreement"], agreement_gap=best - groups[worst]["agreement"])
            if right is not None:
                worst_acc = min(judged, key=lambda g: (groups[g]["accuracy"], g))
                out.update(
                    worst_accuracy_group=worst_acc,
                    worst_accuracy=groups[worst_acc]["accuracy"],
                    accuracy_gap=max(groups[g]["accuracy"] for g in judged) - groups[worst_acc]["accuracy"],
                )
            # continuous tie-break: the worst group's mean squared change of its scores is not known
            # here (only classes), so ties are broken by overall agreement, then the gap
        out["groups"] = groups
        return out


def sort_key(s: Mapping[str, Any]) -> tuple:
    """Higher is better: the worst group's agreement, then the overall agreement, then a smaller gap."""
    return (s["worst_agreement"], s["agreement"], -s["agreement_gap"])


# ---- candidates, ranking, greedy repair ------------------------------------------------------------


def quantizable_nodes(model_in: Path, quantized: Path, op_types: Sequence[str], fmt: str) -> list[tuple[str, str]]:
    """(name, op_type) of the nodes of `model_in` that onnxruntime quantized in `quantized`, in graph order.

    QDQ keeps a quantized node's name and feeds it from DequantizeLinear; QOperator replaces it.
    """
    import onnx

    src = onnx.load(str(model_in), load_external_data=False).graph.node
    q = onnx.load(str(quantized), load_external_data=False).graph.node
    wanted = set(op_types)
    if fmt == "qdq":
        dq_outputs = {o for n in q if n.op_type == "DequantizeLinear" for o in n.output}
        fed = {n.name for n in q if n.name and any(i in dq_outputs for i in n.input)}
        return [(n.name, n.op_type) for n in src if n.name and n.op_type in wanted and n.name in fed]
    kept = {(n.name, n.op_type) for n in q}
    return [(n.name, n.op_type) for n in src if n.name and n.op_type in wanted and (n.name, n.op_type) not in kept]


def limit_candidates(nodes: list[tuple[str, str]], limit: int) -> tuple[list[tuple[str, str]], int]:
    """At most `limit` nodes: compute ops (Conv, Gemm, MatMul, ...) first, each in graph order."""
    if len(nodes) <= limit:
        return nodes, 0
    compute = [n for n in nodes if n[1] in COMPUTE_OPS]
    other = [n for n in nodes if n[1] not in COMPUTE_OPS]
    chosen = set((compute + other)[:limit])
    return [n for n in nodes if n in chosen], len(nodes) - limit


def sqnr_prefilter(
    model_in: Path, quantized: Path, nodes: list[tuple[str, str]], feeds: list[dict[str, np.ndarray]], limit: int, scratch: Path
) -> tuple[list[tuple[str, str]], dict[str, float]]:
    """At most `limit` of `nodes`: those whose inputs are noisiest in the int8 model on `feeds` (the
    worst group's calibration rows). onnxruntime's QDQ debugging utilities (`qdq_loss_debug`) give,
    as a signal-to-quantization-noise ratio in dB, each quantized weight against its float value and
    each activation of the int8 model against the same tensor of the fp32 model (which includes
    the noise of every node before it); a node's score is the lowest SQNR among its inputs, lowest
    first, graph order among equal scores. Returns the chosen nodes (graph order) and every node's
    score. QDQ models only."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations, compute_activation_error, compute_weight_error, create_activation_matching,
        create_weight_matching, modify_model_output_intermediate_tensors,
    )
    import onnx

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    float_aug, qdq_aug = scratch / "sqnr-float.onnx", scratch / "sqnr-qdq.onnx"
    try:
        modify_model_output_intermediate_tensors(model_in, float_aug)
        modify_model_output_intermediate_tensors(quantized, qdq_aug)
        acts = create_activation_matching(collect_activations(str(qdq_aug), Reader()), collect_activations(str(float_aug), Reader()))
        # xmodel_err: the tensor in the int8 model against the same tensor in fp32 (not qdq_err, its
        # own Q/DQ pair: onnxruntime fuses a Relu into the Q before it, so that pair spans the Relu)
        act_err = {k: v["xmodel_err"] for k, v in compute_activation_error(acts).items() if "xmodel_err" in v}
        weight_err = compute_weight_error(create_weight_matching(str(model_in), str(quantized)))
    finally:
        for f in (float_aug, qdq_aug):
            f.unlink(missing_ok=True)
    graph = {n.name: n for n in onnx.load(str(model_in), load_external_data=False).graph.node}
    scores: dict[str, float] = {}
    for name, _ in nodes:
        inputs = graph[name].input if name in graph else []
        errs = [float(act_err[t]) if t in act_err else float(weight_err[t]) for t in inputs if t in act_err or t in weight_err]
        errs = [e for e in errs if np.isfinite(e)]
        scores[name] = min(errs) if errs else float("inf")
    order = sorted(range(len(nodes)), key=lambda i: (scores[nodes[i][0]], i))
    chosen = set(order[:limit])
    return [n for i, n in enumerate(nodes) if i in chosen], {k: round(v, 3) if np.isfinite(v) else None for k, v in scores.items()}


def summary(s: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("worst_group", "worst_agreement", "agreement_gap", "agreement", "worst_accuracy_group", "worst_accuracy", "accuracy_gap", "accuracy")
    return {k: _round(s[k]) for k in keys if k in s}


def _round(v: Any) -> Any:
    return round(v, 6) if isinstance(v, float) else v


def rank_nodes(
    candidates: list[tuple[str, str]],
    measure: Callable[[tuple[str, ...]], dict[str, Any]],
    before: Mapping[str, Any],
    kept: tuple[str, ...] = (),
    *,
    latency_aware: bool = False,
) -> list[dict[str, Any]]:
    """Quantize once per candidate with it (and `kept`) in float; rank by the worst group's agreement.

    `latency_aware`: `measure` also returns each model's `slowdown` (p50 over the plain int8
    model's); the nodes that raise the worst group come first, by gain per unit of cost
    (improvement / max(slowdown - 1, COST_FLOOR)), then the others by the worst group's agreement."""
    rows = []
    for name, op in candidates:
        s = measure((*kept, name))
        gain = s["worst_agreement"] - before["worst_agreement"]
        row = {"node": name, "op_type": op, **summary(s), "improvement": _round(gain)}
        key: tuple = sort_key(s)
        if latency_aware:
            cost = s["slowdown"] - 1.0
            per_cost = gain / max(cost, COST_FLOOR) if gain > 0 else None
            row.update(slowdown=_round(s["slowdown"]), p50_ms=_round(s.get("p50_ms")), cost=_round(cost),
                       gain_per_cost=_round(per_cost))
            key = (1, per_cost, *key) if per_cost is not None else (0, 0.0, *key)
        row["_key"] = key
        rows.append(row)
    rows.sort(key=lambda r: r.pop("_key"), reverse=True)
    for i, r in enumerate(rows, start=1):
        r["rank"] = i
    return rows


def repair(
    candidates: list[tuple[str, str]],
    measure: Callable[[tuple[str, ...]], dict[str, Any]],
    *,
    max_nodes: int,
    target: float,
    max_slowdown: float | None = None,
) -> dict[str, Any]:
    """Rank the candidates, then keep the top-ranked ones in float one at a time, re-quantizing and
    re-measuring after each; a node that does not raise the worst group's agreement (or, at equal
    worst agreement, the overall one) is not kept. Stops at `target`, `max_nodes` or when no node helps.

    With `max_slowdown`, `measure` returns each model's `slowdown` too (p50 over the plain int8
    model's; `measure(())` is the plain model re-quantized, so its slowdown is the timing noise):
    the ranking is by gain per unit of latency cost, a node whose predicted slowdown (the current
    model's + its own cost) exceeds the bound is skipped without quantizing, and one whose measured
    slowdown, kept with the others, exceeds it is not kept. Lower-ranked (cheaper) nodes are still
    tried; `stopped` is "max_slowdown" when the bound turned away a node that would have been tried
    and no other reason (target, max_nodes) stopped the repair."""
    t0 = time.perf_counter()
    aware = max_slowdown is not None
    before = measure(())
    ranking = rank_nodes(candidates, measure, before, latency_aware=aware)
    kept: list[str] = []
    current = before
    slowdown = 1.0  # of the current model: the plain int8 model is 1 by definition
    trials = []
    bound_hit = False
    stopped = "no_node_helps"
    if current["worst_agreement"] >= target:
        stopped = "target_met_before_repair"
    else:
        for row in ranking:
            if len(kept) >= max_nodes:
                stopped = "max_nodes"
                break
            if row["worst_agreement"] <= before["worst_agreement"] and row["agreement"] <= before["agreement"]:
                break  # no node ranked below this one helps on its own
            if aware:
                predicted = slowdown + max(row["slowdown"] - 1.0, 0.0)
                if predicted > max_slowdown:
                    bound_hit = True
                    trials.append({"node": row["node"], "kept": False, "predicted_slowdown": _round(predicted),
                                   "why": f"predicted slowdown {predicted:.3f} > keep_float_max_slowdown {max_slowdown:g} "
                                          f"(current {slowdown:.3f} + this node's cost {row['slowdown'] - 1.0:+.3f})"})
                    continue
            s = measure((*kept, row["node"]))
            helps = sort_key(s) > sort_key(current)
            trial = {"node": row["node"], "kept": helps, **summary(s)}
            if aware:
                trial["slowdown"] = _round(s["slowdown"])
                if helps and s["slowdown"] > max_slowdown:
                    helps, bound_hit = False, True
                    trial.update(kept=False, why=f"measured slowdown {s['slowdown']:.3f} > keep_float_max_slowdown {max_slowdown:g}")
                elif not helps:
                    trial["why"] = "does not raise the worst group (or the overall agreement) with the nodes already kept"
            trials.append(trial)
            if helps:
                kept.append(row["node"])
                current = s
                if aware:
                    slowdown = s["slowdown"]
                if current["worst_agreement"] >= target:
                    stopped = "target"
                    break
        else:
            stopped = "max_nodes" if len(kept) >= max_nodes else "no_node_helps"
        if bound_hit and stopped == "no_node_helps":
            stopped = "max_slowdown"
    return {
        "before": before,
        "after": current,
        "ranking": ranking,
        "kept_float": kept,
        "trials": trials,
        "stopped": stopped,
        "slowdown": _round(slowdown) if aware else None,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def group_table(s: Mapping[str, Any]) -> dict[str, Any]:
    return {g: {k: _round(v) for k, v in e.items()} for g, e in s["groups"].items()}
