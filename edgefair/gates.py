"""Release gates: pure functions from the report's numbers and the recipe's thresholds to a verdict.

Decision rule (`decision = "ci"`, the default): a step passes a group gate only when the upper
confidence bound of the harm is within the threshold (non-inferiority). The bound is the more
conservative of the paired bootstrap interval and an analytic one (Newcombe's paired score
interval for accuracy, Clopper-Pearson for flip rates), because the bootstrap collapses to [0, 0]
in a group with no flips. An interval wider than `max_ci_width_ratio` thresholds cannot show
non-inferiority; such a group still fails when the harm is significant (Holm-corrected exact
McNemar for accuracy, a simultaneous bootstrap band for ECE) and its point estimate exceeds the
threshold; otherwise it is undecided (`insufficient`), as are groups below `min_group_size`, and
warns or fails by `on_insufficient`. `decision = "point"` compares point estimates only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator


GROUP_GATES = ("max_group_accuracy_drop", "max_group_ece_increase", "max_group_flip_rate")
PASS, FAIL, WARN = "pass", "fail", "warn"


@dataclass(frozen=True)
class Harm:
    """A harm measure of one group (or scope) of one step: larger is worse."""

    value: float | None
    ci: tuple[float, float] | None
    # is there evidence of any harm at all, corrected for testing many groups? (None: unknown)
    significant: bool | None = None


def accuracy_drop(g: dict[str, Any], confidence: float) -> Harm:
    if g.get("accuracy_delta") is None:
        return Harm(None, None)
    value = -g["accuracy_delta"]
    lo, hi = g.get("accuracy_delta_ci") or (g["accuracy_delta"], g["accuracy_delta"])
    ci = (-hi, -lo)  # already widened to Newcombe's interval where the bootstrap collapses
    p = g.get("mcnemar_p_drop_holm")  # exact one-sided McNemar, Holm-corrected across groups
    return Harm(value, ci, None if p is None else p < 1 - confidence)


def ece_increase(g: dict[str, Any], confidence: float) -> Harm:
    if g.get("ece_delta") is None:
        return Harm(None, None)
    ci = g.get("ece_delta_ci")
    band = g.get("ece_delta_ci_simultaneous")  # holds for all groups at once
    return Harm(g["ece_delta"], tuple(ci) if ci else None, None if not band else band[0] > 0)


def flip_rate(g: dict[str, Any], confidence: float) -> Harm:
    if g.get("flip_rate") is None:
        return Harm(None, None)
    lo, hi = g.get("flip_rate_ci") or (g["flip_rate"], g["flip_rate"])
    # any flip is evidence of *some* flips, not of a rate beyond the limit: no significance shortcut
    return Harm(g["flip_rate"], (lo, hi), False)


HARMS = {
    "max_group_accuracy_drop": accuracy_drop,
    "max_group_ece_increase": ece_increase,
    "max_group_flip_rate": flip_rate,
}


def decide(harm: Harm, threshold: float, *, decision: str, on_insufficient: str, max_width: float) -> tuple[str, str]:
    """(status, reason) of one harm against one threshold."""
    if harm.value is None:
        return (FAIL if on_insufficient == "fail" else WARN), "no estimate (insufficient data)"
    if decision == "point" or harm.ci is None:
        ok = harm.value <= threshold
        return (PASS, "point estimate within threshold") if ok else (FAIL, "point estimate exceeds threshold")
    lo, hi = harm.ci
    if hi <= threshold:
        return PASS, "upper confidence bound within threshold"
    if lo > threshold:
        return FAIL, "even the lower confidence bound exceeds the threshold"
    if hi - lo <= max_width * threshold:
        return FAIL, "upper confidence bound exceeds threshold"
    significant = harm.significant if harm.significant is not None else lo > 0
    if significant and harm.value > threshold:
        return FAIL, "significant harm (corrected for multiple groups) with point estimate beyond threshold"
    status = FAIL if on_insufficient == "fail" else WARN
    return status, f"interval too wide to decide (width {hi - lo:.4g} > {max_width:g} x the limit {threshold:g})"


def _gate(name: str, group: str | None, harm: Harm, threshold: float, status: str, reason: str) -> dict[str, Any]:
    return {
        "gate": name,
        "group": group,
        "value": harm.value,
        "ci": list(harm.ci) if harm.ci else None,
        "threshold": threshold,
        "status": status,
        "reason": reason,
    }


def step_gates(step: dict[str, Any], gates: Any, *, confidence: float) -> Iterator[dict[str, Any]]:
    rule = {"decision": gates.decision, "on_insufficient": gates.on_insufficient, "max_width": gates.max_ci_width_ratio}
    insufficient = FAIL if gates.on_insufficient == "fail" else WARN
    if step["overall"].get("nonfinite_rows"):  # always checked: a model that emits NaN/inf cannot ship
        bad = step["overall"]["nonfinite_rows"]
        yield _gate("finite_outputs", None, Harm(float(bad), None), 0.0, FAIL, f"{bad} eval rows gave NaN or infinite outputs")
    if step["index"] > 0:
        for name in GROUP_GATES:
            threshold = getattr(gates, name)
            if threshold is None:
                continue
            for key, g in step["groups"].items():
                if g.get("status") != "ok":
                    yield _gate(name, key, Harm(None, None), threshold, insufficient, g.get("reason", "insufficient data"))
                    continue
                harm = HARMS[name](g, confidence)
                entry = _gate(name, key, harm, threshold, *decide(harm, threshold, **rule))
                if name == "max_group_accuracy_drop" and g.get("mcnemar_p_drop_holm") is not None:
                    # is the drop real at all? exact one-sided McNemar, Holm-corrected across groups
                    entry["p_holm"] = g["mcnemar_p_drop_holm"]
                yield entry
        if gates.max_accuracy_gap_growth is not None:
            for scope, d in step.get("disparity", {}).items():
                growth = d.get("accuracy_gap_growth")
                ci = d.get("accuracy_gap_growth_ci")
                harm = Harm(growth, tuple(ci) if ci else None)
                yield _gate("max_accuracy_gap_growth", scope, harm, gates.max_accuracy_gap_growth, *decide(harm, gates.max_accuracy_gap_growth, **rule))
    lat = step.get("latency") or {}
    if gates.max_latency_p95_ms is not None and lat.get("p95_ms") is not None:
        harm = Harm(lat["p95_ms"], None)
        ok = harm.value <= gates.max_latency_p95_ms
        yield _gate("max_latency_p95_ms", None, harm, gates.max_latency_p95_ms, PASS if ok else FAIL, f"measured p95 ({lat.get('source', 'local')})")
    if gates.max_size_mb is not None:
        harm = Harm(step["size_bytes"] / 1e6, None)
        ok = harm.value <= gates.max_size_mb
        yield _gate("max_size_mb", None, harm, gates.max_size_mb, PASS if ok else FAIL, "model file size")


def apply_gates(report: dict[str, Any], gates: Any, *, confidence: float, select: str = "last") -> None:
    """Fill each step's `gates` and `passed`, and the report's `verdict` and `selected` (in place).

    The verdict is "pass" when every compressed step passes every gate (warnings allowed); the
    selected model is the last compressed step that passes. With no steps, the baseline is the
    candidate. The baseline's own gates are informational when there are steps.
    """
    steps = report["steps"]
    for step in steps:
        step["gates"] = list(step_gates(step, gates, confidence=confidence))
        step["passed"] = all(g["status"] != FAIL for g in step["gates"])
    compressed = steps[1:]
    candidates = compressed or steps[:1]  # with no steps, the baseline itself is what would ship
    passing = [s for s in candidates if s["passed"]]
    if select == "fastest":  # `edgefair tune`: candidates are alternatives; one passing is enough
        report["verdict"] = "pass" if passing else "fail"
        chosen = min(passing, key=_speed) if passing else None
        if chosen is not None and steps[0]["passed"] and _speed(steps[0]) <= _speed(chosen):
            chosen = steps[0]  # no compression made it faster: recommend none rather than a slower model
    else:
        report["verdict"] = "pass" if all(s["passed"] for s in candidates) else "fail"
        chosen = passing[-1] if passing else None
    report["selected"] = None if chosen is None else {"step": chosen["index"], "name": chosen["name"], "model": chosen["model"]}
    report["gate_summary"] = {
        "failed": [_where(s, g) for s in steps for g in s["gates"] if g["status"] == FAIL],
        "warned": [_where(s, g) for s in steps for g in s["gates"] if g["status"] == WARN],
    }


def _speed(step: dict[str, Any]) -> tuple[float, int]:
    lat = step.get("latency") or {}
    return (lat.get("p50_ms") or float("inf"), step["size_bytes"])


def _where(step: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    return {"step": step["index"], "name": step["name"], "gate": gate["gate"], "group": gate["group"], "value": gate["value"], "threshold": gate["threshold"]}
