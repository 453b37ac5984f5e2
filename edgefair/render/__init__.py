"""Human and CI outputs rendered from report.json: report.md, report.html, junit.xml, model-card.md.

Every renderer is a pure function `report: dict -> str` that only reads the report (schema_version
1, see DESIGN.md). The helpers below are shared by all four so a number reads the same everywhere:
fractions as percent or percentage points, None as an en dash, CIs as "lo–hi".

Gate entries are read as `{gate, group, value, ci, threshold, status, reason}` where `value` and
`ci` are in the threshold's direction and unit: a `max_*` gate fails when the value exceeds the
threshold (an accuracy *drop* of 0.023 against a limit of 0.01), sizes in MB, latencies in ms.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..io import write_text

DASH = "–"  # shown for a value the report does not have (None, missing, not measured)

# Output file names in the output folder (DESIGN.md, "Output folder").
FILES = {
    "markdown": "report.md",
    "html": "report.html",
    "junit": "junit.xml",
    "model_card": "model-card.md",
}

# Gates whose value and threshold are fractions (shown as points / percent), with the words used.
_FRACTION_GATES = {
    "max_group_accuracy_drop": ("accuracy dropped", "accuracy rose"),
    "max_accuracy_gap_growth": ("best-to-worst accuracy gap widened", "best-to-worst accuracy gap narrowed"),
    "max_group_ece_increase": ("calibration error (ECE) rose", "calibration error (ECE) fell"),
}


# ---- numbers -------------------------------------------------------------------------------------

def fmt_num(v: Any, spec: str = ".3f") -> str:
    """A number with `spec`, or DASH for None / non-numbers."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return DASH
    return format(v, spec)


def fmt_pct(v: Any, digits: int = 1) -> str:
    """A fraction in [0, 1] as a percentage: 0.8547 -> '85.5%'."""
    s = fmt_num(None if v is None else v * 100, f".{digits}f")
    return s if s == DASH else s + "%"


def fmt_pp(v: Any, digits: int = 1, *, signed: bool = True) -> str:
    """A difference of fractions in percentage points, no unit: -0.0226 -> '-2.3'."""
    if v is None or not isinstance(v, (int, float)):
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
    if not ci or len(ci) != 2 or any(not isinstance(c, (int, float)) for c in ci):
        return DASH
    lo, hi = (0.0 if round(c * scale, digits) == 0 else c * scale for c in ci)  # no '-0.0'
    if lo < 0 or hi < 0 or signed:
        return f"{_signed(lo, digits)} to {_signed(hi, digits)}"
    return f"{lo:.{digits}f}–{hi:.{digits}f}"


def _signed(x: float, digits: int) -> str:
    return format(0.0 if round(x, digits) == 0 else x, f"+.{digits}f")


def fmt_ms(v: Any) -> str:
    """Milliseconds with three significant digits (latencies span 0.01 ms to seconds)."""
    if v is None or not isinstance(v, (int, float)):
        return DASH
    return f"{v:.0f}" if v >= 1000 else f"{v:.3g}"


def fmt_mb(size_bytes: Any) -> str:
    """Bytes as MB (10^6, as the `max_size_mb` gate counts them)."""
    return fmt_num(None if size_bytes is None else size_bytes / 1e6, ".3f")


def confidence_label(report: dict[str, Any]) -> str:
    """'95%' from the recipe's [evaluate] confidence, or 'CI' when the report does not say."""
    conf = dig(report, "recipe", "resolved", "evaluate", "confidence")
    return f"{conf * 100:g}% CI" if isinstance(conf, (int, float)) else "CI"


def dig(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


# ---- reading the report ----------------------------------------------------------------------------

def steps(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list(report.get("steps") or [])


def baseline_step(report: dict[str, Any]) -> dict[str, Any] | None:
    return next((s for s in steps(report) if s.get("index") == 0), None)


def selected_step(report: dict[str, Any]) -> dict[str, Any] | None:
    """The step named by `selected`, or None when no step was selected."""
    sel = report.get("selected")
    if not sel:
        return None
    return next((s for s in steps(report) if s.get("index") == sel.get("step")), None)


def focus_step(report: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The step whose groups a short report shows, and a title: the selected one, else the last."""
    sel = selected_step(report)
    if sel is not None:
        return sel, f"selected step {sel['index']} {sel['name']}"
    all_steps = steps(report)
    if not all_steps:
        return None, "no steps"
    last = all_steps[-1]
    return last, f"last step {last['index']} {last['name']} (no step was selected)"


def is_labelled(report: dict[str, Any]) -> bool:
    """True when accuracy was measured (labels present); label-free reports only have fidelity."""
    labelled = dig(report, "data", "eval", "labelled")
    if isinstance(labelled, bool):
        return labelled
    return any("accuracy" in s.get("overall", {}) for s in steps(report))


def ok_groups(step: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: g for k, g in (step.get("groups") or {}).items() if g.get("status") == "ok"}


def insufficient_groups(step: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: g for k, g in (step.get("groups") or {}).items() if g.get("status") != "ok"}


def gate_counts(step: dict[str, Any]) -> dict[str, int]:
    counts = {"pass": 0, "fail": 0, "warn": 0}
    for g in step.get("gates") or []:
        counts[g.get("status", "warn")] = counts.get(g.get("status", "warn"), 0) + 1
    return counts


def gates_cell(step: dict[str, Any]) -> str:
    """'12 pass, 1 fail, 2 warn' (zero counts left out), or DASH without gates."""
    c = gate_counts(step)
    parts = [f"{n} {k}" for k, n in c.items() if n]
    return ", ".join(parts) if parts else DASH


def failing_gates(report: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(s, g) for s in steps(report) for g in s.get("gates") or [] if g.get("status") == "fail"]


def warning_gates(report: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(s, g) for s in steps(report) for g in s.get("gates") or [] if g.get("status") == "warn"]


def no_failure_note(report: dict[str, Any]) -> str:
    """What to say when no gate failed: that gates passed, were not configured, or left no results."""
    if any(s.get("gates") for s in steps(report)):
        return "No gate failed."
    configured = [k for k, v in (dig(report, "recipe", "resolved", "gates") or {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if configured:
        return ("Gates are configured (" + ", ".join(configured) + ") but the report has no gate results: "
                "nothing was checked.")
    return "No gates were configured: nothing was checked."


def extreme(step: dict[str, Any], field: str, *, lowest: bool) -> tuple[str | None, float | None]:
    """The ok group with the lowest (or highest) `field`, e.g. the worst accuracy delta."""
    vals = [(k, g[field]) for k, g in ok_groups(step).items() if isinstance(g.get(field), (int, float))]
    if not vals:
        return None, None
    return (min if lowest else max)(vals, key=lambda kv: kv[1])


def latency_ratio(step: dict[str, Any], base: dict[str, Any] | None) -> float | None:
    """p50 of this step over p50 of the baseline, measured interleaved in the same run.

    The latency module's paired ratio (`ratio_p50_vs_first`, the baseline being timed first) is
    used when the report has it; otherwise the ratio of the two p50s.
    """
    reported = dig(step, "latency", "ratio_p50_vs_first")
    if isinstance(reported, (int, float)):
        return float(reported)
    p = dig(step, "latency", "p50_ms")
    b = dig(base, "latency", "p50_ms") if base else None
    if not isinstance(p, (int, float)) or not isinstance(b, (int, float)) or b <= 0:
        return None
    return p / b


def fmt_ratio(step: dict[str, Any], base: dict[str, Any] | None) -> str:
    """'1.12×', with the paired bootstrap interval when the report has one: '1.12× (1.05–1.18)'."""
    ratio = latency_ratio(step, base)
    if ratio is None:
        return DASH
    ci = dig(step, "latency", "ratio_p50_ci")
    return f"{ratio:.2f}×" + (f" ({fmt_ci(ci, scale=1, digits=2)})" if ci and step is not base else "")


def insufficient_summary(report: dict[str, Any]) -> list[tuple[str, Any, list[int], str | None]]:
    """(group, n, step indices where it had too little data, reason) across all steps."""
    seen: dict[str, list[Any]] = {}
    for s in steps(report):
        for key, g in insufficient_groups(s).items():
            entry = seen.setdefault(key, [g.get("n"), [], g.get("reason")])
            entry[1].append(s.get("index"))
    return [(k, n, idx, reason) for k, (n, idx, reason) in seen.items()]


def describe_gate(gate: dict[str, Any], ci_label: str = "CI") -> str:
    """One gate result in words: 'race=Black accuracy dropped 2.3 points (95% CI 1.1–3.4), limit 1.0'."""
    name = gate.get("gate", "?")
    group = gate.get("group")
    who = f"{group} " if group else ""
    value, ci, limit = gate.get("value"), gate.get("ci"), gate.get("threshold")
    ci_s = f" ({ci_label} {fmt_ci(ci)})" if ci else ""
    if value is None:  # not measured, e.g. a group with too little data under on_insufficient = "warn"
        text = f"{who}not checked by {name}"
    elif name in _FRACTION_GATES:
        up, down = _FRACTION_GATES[name]
        if isinstance(value, (int, float)) and value < 0:
            # say it the way round it went, and turn the interval round with it
            flipped = [-ci[1], -ci[0]] if ci else None
            text = f"{who}{down} {fmt_pp(-value, signed=False)} points" + (f" ({ci_label} {fmt_ci(flipped)})" if ci else "")
        else:
            text = f"{who}{up} {fmt_pp(value, signed=False)} points{ci_s}"
        text += f", limit {fmt_pp(limit, signed=False)}"
    elif name == "max_group_flip_rate":
        text = f"{who}flip rate {fmt_pct(value)} of rows changed prediction"
        text += f" ({ci_label} {fmt_ci(ci)}%)" if ci else ""
        text += f", limit {fmt_pct(limit)}"
    elif name == "max_latency_p95_ms":
        text = f"{who}p95 latency {fmt_ms(value)} ms, limit {fmt_ms(limit)} ms"
    elif name == "max_size_mb":
        text = f"{who}size {fmt_num(value, '.3f')} MB, limit {fmt_num(limit, '.3f')} MB"
    else:
        text = f"{name}{' [' + group + ']' if group else ''}: value {fmt_num(value, '.4g')}"
        text += f" ({ci_label} {fmt_ci(ci, scale=1, digits=4)})" if ci else ""
        text += f", limit {fmt_num(limit, '.4g')}"
    if gate.get("reason"):
        text += f" — {gate['reason']}"
    return text


def steps_applied(report: dict[str, Any], step: dict[str, Any]) -> list[dict[str, Any]]:
    """The chain of steps that produced `step`, baseline excluded, oldest first (follows `input`)."""
    by_name = {s.get("name"): s for s in steps(report)}
    chain, cur, guard = [], step, 0
    while cur is not None and cur.get("index", 0) != 0 and guard <= len(by_name):
        chain.append(cur)
        cur = by_name.get(cur.get("input"))
        guard += 1
    return chain[::-1]


# ---- writing -------------------------------------------------------------------------------------

def render_all(out_dir: str | os.PathLike, report: dict[str, Any]) -> dict[str, Path]:
    """Render the four human/CI outputs into `out_dir`, each written atomically. Returns their paths.

    Everything is rendered before anything is written, so a renderer bug leaves no partial set.
    """
    texts = {
        FILES["markdown"]: render_markdown(report),
        FILES["html"]: render_html(report),
        FILES["junit"]: render_junit(report),
        FILES["model_card"]: render_model_card(report),
    }
    out = Path(out_dir)
    paths = {}
    for name, text in texts.items():
        write_text(out / name, text)
        paths[name] = out / name
    return paths


from .html import render_html  # noqa: E402  (the renderers import the helpers above)
from .junit import render_junit  # noqa: E402
from .markdown import render_markdown  # noqa: E402
from .model_card import render_model_card  # noqa: E402

__all__ = ["render_all", "render_html", "render_junit", "render_markdown", "render_model_card"]
