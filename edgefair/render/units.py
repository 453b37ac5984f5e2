"""Numbers, units and gate names as every report prints them: rates in percent, changes of rates
(and every fraction-valued gate) in percentage points ("pp"), None as an en dash, intervals as
"lo–hi"; a gate's value, limit and min_detectable in the gate's unit."""

from __future__ import annotations

from typing import Any, Callable

from ..gates import GATE_TEXT, LOWER_LIMIT_GATES

DASH = "–"  # shown for a value the report does not have (None, missing, not measured)

UNITS_NOTE = "pp = percentage points"

# Gates whose value and threshold are fractions of a difference: shown in percentage points.
PP_GATES = ("max_group_accuracy_drop", "max_group_tpr_drop", "max_group_fpr_increase",
            "max_group_selection_rate_change", "max_group_ece_increase", "max_accuracy_gap_growth",
            "max_equalized_odds_growth", "max_demographic_parity_growth", "max_group_regression_vs_previous")
# Gates on a rate of rows (flip rate, agreement): shown in percent.
PCT_GATES = ("max_group_flip_rate", "min_group_agreement")

# Words for the gates edgefair has beyond the group harms of `gates.GATE_TEXT`.
_MORE_TEXT = {
    "max_latency_p95_ms": "p95 latency",
    "max_size_mb": "model size",
    "finite_outputs": "NaN or infinite outputs",
    "no_gate": "no gate configured",
}
# Short column titles for narrow tables (terminal step lines, table headers).
SHORT = {
    "max_group_accuracy_drop": "acc drop",
    "max_group_tpr_drop": "TPR drop",
    "max_group_fpr_increase": "FPR rise",
    "max_group_selection_rate_change": "sel. chg",
    "max_group_ece_increase": "ECE rise",
    "max_group_flip_rate": "flips",
    "min_group_agreement": "agree",
    "min_group_cosine": "cosine",
    "max_accuracy_gap_growth": "acc gap+",
    "max_equalized_odds_growth": "EO gap+",
    "max_demographic_parity_growth": "DP gap+",
    "max_group_regression_vs_previous": "vs last",
    "max_latency_p95_ms": "p95 ms",
    "max_size_mb": "MB",
}
_ORDER = [*GATE_TEXT, *_MORE_TEXT]

UNDECIDED_WHY = ("too few rows to tell; see min_detectable (the smallest harm a check can fail on "
                 "evidence at its group's size)")


# ---- numbers -------------------------------------------------------------------------------------

def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def fmt_num(v: Any, spec: str = ".3f") -> str:
    """A number with `spec`, or DASH for None / non-numbers."""
    if not _is_num(v) or v != v:  # NaN
        return DASH
    return format(v, spec)


def fmt_pct(v: Any, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage: 0.8547 -> '85.5%'."""
    s = fmt_num(None if not _is_num(v) else v * 100, f".{digits}f")
    return s if s == DASH else s + "%"


def fmt_pp(v: Any, digits: int = 1, *, signed: bool = True) -> str:
    """A difference of fractions in percentage points, no unit: -0.0226 -> '-2.3'."""
    if not _is_num(v) or v != v:
        return DASH
    x = v * 100
    if round(x, digits) == 0:
        x = 0.0  # no '-0.0'
    return format(x, f"{'+' if signed else ''}.{digits}f")


def fmt_ci(ci: Any, *, scale: float = 100.0, digits: int = 1, signed: bool = False) -> str:
    """A [lo, hi] interval scaled (default: fractions to points/percent): '1.1–3.4'.

    When either end is negative the ends are signed and joined by ' to ', because '-3.4–-1.1'
    is hard to read.
    """
    if not ci or not isinstance(ci, (list, tuple)) or len(ci) != 2 or not all(_is_num(c) for c in ci):
        return DASH
    lo, hi = (0.0 if round(c * scale, digits) == 0 else c * scale for c in ci)  # no '-0.0'
    if lo < 0 or hi < 0 or signed:
        return f"{_signed(lo, digits)} to {_signed(hi, digits)}"
    return f"{lo:.{digits}f}–{hi:.{digits}f}"


def _signed(x: float, digits: int) -> str:
    return format(0.0 if round(x, digits) == 0 else x, f"+.{digits}f")


def fmt_ms(v: Any) -> str:
    """Milliseconds with three significant digits (latencies span 0.01 ms to seconds)."""
    if not _is_num(v):
        return DASH
    return f"{v:.0f}" if v >= 1000 else f"{v:.3g}"


def fmt_mb(size_bytes: Any) -> str:
    """Bytes as MB (10^6, as the `max_size_mb` gate counts them)."""
    return fmt_num(None if not _is_num(size_bytes) else size_bytes / 1e6, ".3f")


def confidence(report: dict[str, Any]) -> float | None:
    conf = dig(report, "gates_applied", "confidence")
    if not _is_num(conf):
        conf = dig(report, "recipe", "resolved", "evaluate", "confidence")
    return float(conf) if _is_num(conf) else None


def confidence_label(report: dict[str, Any]) -> str:
    """'95% CI' from the confidence the gates used, or 'CI' when the report does not say."""
    conf = confidence(report)
    return f"{conf * 100:g}% CI" if conf is not None else "CI"


def dig(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


# ---- gates in words and units ----------------------------------------------------------------------

def gate_words(name: Any) -> str:
    """'true positive rate drop' for 'max_group_tpr_drop'; an unknown gate keeps its name."""
    return GATE_TEXT.get(str(name)) or _MORE_TEXT.get(str(name)) or str(name)


def gate_short(name: Any) -> str:
    return SHORT.get(str(name), str(name))


def gate_unit(name: Any) -> str:
    name = str(name)
    if name in PP_GATES:
        return "pp"
    if name in PCT_GATES:
        return "%"
    return {"max_latency_p95_ms": "ms", "max_size_mb": "MB", "finite_outputs": "rows"}.get(name, "")


def is_lower_limit(gate: dict[str, Any]) -> bool:
    """A floor on a score (agreement, cosine) rather than a ceiling on a harm."""
    return gate.get("direction") == "min" or gate.get("gate") in LOWER_LIMIT_GATES


def fmt_gate(name: Any, v: Any, *, unit: bool = True, signed: bool = False, digits: int = 1) -> str:
    """A gate value or threshold in the gate's unit: '6.3 pp', '95.0%', '0.9512', '0.024 ms'."""
    if not _is_num(v):
        return DASH
    name = str(name)
    u = gate_unit(name)
    if name in PP_GATES:
        s = fmt_pp(v, digits, signed=signed)
    elif name in PCT_GATES:
        s = fmt_num(v * 100, f".{digits}f")
        return s + "%" if unit else s
    elif name == "max_latency_p95_ms":
        s = fmt_ms(v)
    elif name == "max_size_mb":
        s = fmt_num(v, ".3f")
    elif name == "finite_outputs":
        s = fmt_num(v, ".0f")
    else:
        s = fmt_num(v, ".4g")
    return f"{s} {u}" if unit and u else s


def fmt_observed(gate: dict[str, Any], *, unit: bool = True) -> str:
    """The observed value of a gate entry; with more digits when rounding would hide that it is beyond
    the limit (a TPR drop of 3.04 pp against 3 pp reads '3.04 pp', not '3.0 pp')."""
    name, v, t = gate.get("gate"), gate.get("value"), gate.get("threshold")
    digits = 1
    while (gate.get("exceeds") and digits < 4 and _is_num(t)
           and fmt_gate(name, v, unit=False, digits=digits) == fmt_gate(name, t, unit=False, digits=digits)):
        digits += 1
    return fmt_gate(name, v, unit=unit, digits=digits)


def fmt_gate_ci(name: Any, ci: Any) -> str:
    """A gate's interval in the gate's unit (no unit text): '4.2–9.4' or '-1.7 to 16.0'."""
    name = str(name)
    if name in PP_GATES or name in PCT_GATES:
        return fmt_ci(ci)
    return fmt_ci(ci, scale=1.0, digits=4)


def fmt_limit(gate_or_name: Any, threshold: Any = None) -> str:
    """'≤ 3.0 pp' for a ceiling, '≥ 95.0%' for a floor."""
    if isinstance(gate_or_name, dict):
        name, threshold, lower = gate_or_name.get("gate"), gate_or_name.get("threshold"), is_lower_limit(gate_or_name)
    else:
        name, lower = gate_or_name, gate_or_name in LOWER_LIMIT_GATES
    if not _is_num(threshold):
        return DASH
    return ("≥ " if lower else "≤ ") + fmt_gate(name, threshold)


def fmt_detectable(gate: dict[str, Any], *, unit: bool = True) -> str:
    """min_detectable with the side it fails on: '≥ 5.4 pp' (a harm this large fails on evidence
    at this n), '≤ 93.1%' for a floor; DASH when the report has none (the group can never fail
    on evidence, or the gate has no such number)."""
    md = gate.get("min_detectable")
    if not _is_num(md):
        return DASH
    return ("≤ " if is_lower_limit(gate) else "≥ ") + fmt_gate(gate.get("gate"), md, unit=unit)


def status_text(gate: dict[str, Any]) -> str:
    """'fail', 'pass', 'undecided (warn)', 'undecided (fail)': the gate's status and decision, read."""
    status, decision = str(gate.get("status") or "?"), gate.get("decision")
    if decision == "undecided":
        return f"undecided ({status})"
    return status


def who(gate: dict[str, Any], name_fmt: Callable[[str], str] = str) -> str:
    """The group (or attribute) of a gate entry, formatted by `name_fmt` (a code span, HTML escaping),
    with its class when there is one ('g=a (class 2)'); 'model' for model-wide gates."""
    group = gate.get("group")
    base = name_fmt(str(group)) if group not in (None, "") else "model"
    return f"{base} ({gate['where']})" if gate.get("where") else base
