"""Reading report.json for the renderers: steps, gate entries and their summaries, the largest harm,
the latency / harm frontier, the comparison with the last release. Nothing here decides: statuses,
p-values and the "beyond the limit" flag are read from the gate entries, never recomputed."""

from __future__ import annotations

from typing import Any, Callable

from ..gates import GATE_TEXT, SCOPE_GATES
from .units import (
    DASH,
    UNDECIDED_WHY,
    _ORDER,
    _is_num,
    confidence,
    dig,
    fmt_ci,
    fmt_detectable,
    fmt_gate,
    fmt_gate_ci,
    fmt_limit,
    fmt_num,
    fmt_observed,
    fmt_pct,
    fmt_pp,
    gate_words,
    is_lower_limit,
    status_text,
    who,
)


def steps(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list(report.get("steps") or [])


def step_by_index(report: dict[str, Any], index: Any) -> dict[str, Any] | None:
    return next((s for s in steps(report) if s.get("index") == index), None)


def baseline_step(report: dict[str, Any]) -> dict[str, Any] | None:
    return step_by_index(report, 0)


def selected_step(report: dict[str, Any]) -> dict[str, Any] | None:
    """The step named by `selected`, or None when no step was selected."""
    sel = report.get("selected")
    if not sel:
        return None
    return step_by_index(report, sel.get("step"))


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
    return any("accuracy" in (s.get("overall") or {}) for s in steps(report))


def is_embedding(report: dict[str, Any]) -> bool:
    return dig(report, "recipe", "resolved", "model", "output") == "embedding"


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
    """'12 pass, 1 fail, 2 undecided' (zero counts left out), or DASH without gates."""
    c = gate_counts(step)
    words = {"warn": "undecided"}
    parts = [f"{n} {words.get(k, k)}" for k, n in c.items() if n]
    return ", ".join(parts) if parts else DASH


def step_result(step: dict[str, Any]) -> str:
    """'pass' or 'fail', as the gates left the step (`passed`), DASH without gates."""
    if not step.get("gates"):
        return DASH
    return "pass" if step.get("passed", True) else "fail"


def failing_gates(report: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(s, g) for s in steps(report) for g in s.get("gates") or [] if g.get("status") == "fail"]


def warning_gates(report: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(s, g) for s in steps(report) for g in s.get("gates") or [] if g.get("status") == "warn"]


def undecided_count(report: dict[str, Any]) -> int:
    """Gate checks of compressed steps that neither passed nor failed on evidence (`decision`)."""
    return sum(1 for s in steps(report) if s.get("index", 0) > 0 for g in s.get("gates") or []
               if g.get("decision", "undecided" if g.get("status") == "warn" else None) == "undecided")


def undecided_note(report: dict[str, Any]) -> str | None:
    n = undecided_count(report)
    if not n:
        return None
    return f"{n} group check{'s' if n != 1 else ''} undecided: {UNDECIDED_WHY}."


def no_failure_note(report: dict[str, Any]) -> str:
    """What to say when no gate failed: that gates passed, were not configured, or left no results."""
    if any(s.get("gates") for s in steps(report)):
        return "No gate failed."
    configured = [k for k, v in (dig(report, "recipe", "resolved", "gates") or {}).items() if _is_num(v)]
    if configured:
        return ("Gates are configured (" + ", ".join(configured) + ") but the report has no gate results: "
                "nothing was checked.")
    return "No gates were configured: nothing was checked."


def thresholds(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """(gate, threshold) of every gate in force: `gates_applied.thresholds` (defaults included), then
    the latency and size limits, which only the gate entries (or the recipe) carry."""
    out: dict[str, Any] = {}
    applied = dig(report, "gates_applied", "thresholds")
    if isinstance(applied, dict):
        out.update({str(k): v for k, v in applied.items() if _is_num(v)})
    for s in steps(report):
        for g in s.get("gates") or []:
            name = str(g.get("gate"))
            if name not in out and name not in ("finite_outputs", "no_gate") and _is_num(g.get("threshold")):
                out[name] = g["threshold"]
    for name in ("max_latency_p95_ms", "max_size_mb"):
        v = dig(report, "recipe", "resolved", "gates", name)
        if name not in out and _is_num(v):
            out[name] = v
    return sorted(out.items(), key=lambda kv: _ORDER.index(kv[0]) if kv[0] in _ORDER else len(_ORDER))


def rule_text(report: dict[str, Any]) -> str:
    """How the gates decided, from `gates_applied`: one sentence."""
    ga = report.get("gates_applied") or {}
    conf = confidence(report)
    conf_s = f"{conf * 100:g}%" if conf is not None else "the run's"
    if ga.get("decision") == "point":
        text = "point estimates compared with the limits (decision = point)"
    else:
        text = (f"a check fails when the data show the harm beyond its limit (one-sided test, Holm-corrected "
                f"over the step's groups, at {conf_s}) and passes when the upper end of its {conf_s} interval "
                "is within the limit; otherwise it is undecided")
    if ga.get("on_undecided"):
        text += f" (on_undecided = {ga['on_undecided']})"
    if _is_num(ga.get("min_group_size")):
        text += f"; groups under {ga['min_group_size']} rows are reported, not tested"
    return text


def exceeded(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every gate check whose observed value is beyond its limit, whatever its status:
    `gate_summary.exceeded`, each with the gate entry's `reason` and `p_holm` merged in. Reports
    written before the summary existed: the gate entries flagged `exceeds`."""
    listed = dig(report, "gate_summary", "exceeded")
    if not isinstance(listed, list):
        listed = [{"step": s.get("index"), "name": s.get("name"), **g} for s in steps(report) if s.get("index", 0) > 0
                  for g in s.get("gates") or [] if g.get("exceeds")]
    out = []
    for e in listed:
        step = step_by_index(report, e.get("step")) or {}
        full = next((g for g in step.get("gates") or [] if g.get("gate") == e.get("gate")
                     and g.get("group") == e.get("group") and g.get("where") == e.get("where")), {})
        out.append({**full, **e, "name": e.get("name", step.get("name"))})
    return out


def failed_steps(report: dict[str, Any]) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(step, its failing gate entries) for every step that did not pass (`gate_summary.failed_steps`,
    else every step with `passed` false)."""
    listed = dig(report, "gate_summary", "failed_steps")
    if isinstance(listed, list):
        chosen = [s for s in (step_by_index(report, i) for i in listed) if s is not None]
    else:
        chosen = [s for s in steps(report) if s.get("gates") and not s.get("passed", True)]
    return [(s, [g for g in s.get("gates") or [] if g.get("status") == "fail"]) for s in chosen]


def why_failed(gates: list[dict[str, Any]], name_fmt: Callable[[str], str] = str, max_names: int = 4) -> str:
    """'true positive rate drop at sex=Female, race=White; model size 3.1 MB, limit ≤ 2 MB': a step's
    failures, naming at most `max_names` groups per gate (the tables name every one)."""
    by_gate: dict[str, list[dict[str, Any]]] = {}
    for g in gates:
        by_gate.setdefault(str(g.get("gate")), []).append(g)
    parts = []
    for name, gs in by_gate.items():
        scoped = [g for g in gs if g.get("group") not in (None, "")]
        if scoped:
            shown = ", ".join(who(g, name_fmt) for g in scoped[:max_names])
            more = f" and {len(scoped) - max_names} more" if len(scoped) > max_names else ""
            parts.append(f"{gate_words(name)} at {len(scoped)} group{'s' if len(scoped) != 1 else ''}: {shown}{more}"
                         if more else f"{gate_words(name)} at {shown}")
        for g in gs:
            if g.get("group") not in (None, ""):
                continue
            if name in ("finite_outputs", "no_gate"):
                parts.append(str(g.get("reason") or gate_words(name)))
            else:
                value = fmt_gate(name, g.get("value")) if _is_num(g.get("value")) else "not measured"
                parts.append(f"{gate_words(name)} {value}, limit {fmt_limit(g)}")
    return "; ".join(parts) if parts else "no gate failed (the step was not selected)"


def gated_names(report: dict[str, Any], *, group_level: bool | None = None) -> list[str]:
    """The harm gates in force (group gates and scope gates; latency and size left out)."""
    names = [n for n, _ in thresholds(report) if n in GATE_TEXT]
    if group_level is True:
        names = [n for n in names if n not in SCOPE_GATES]
    elif group_level is False:
        names = [n for n in names if n in SCOPE_GATES]
    return names


def worst_gate(step: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The step's gate entry of `name` with the worst observed value (largest harm, lowest score)."""
    entries = [g for g in step.get("gates") or [] if g.get("gate") == name and _is_num(g.get("value"))]
    if not entries:
        return None
    if any(is_lower_limit(g) for g in entries):
        return min(entries, key=lambda g: g["value"])
    return max(entries, key=lambda g: g["value"])


def harm_ratio(gate: dict[str, Any]) -> float | None:
    """The observed harm as a multiple of its limit (1 = at the limit, above 1 = beyond it), so harms
    in different units compare: value / threshold for a ceiling, (1 - score) / (1 - floor) for a
    floor on agreement or cosine. None for latency, size and checks without a number."""
    name, v, t = str(gate.get("gate")), gate.get("value"), gate.get("threshold")
    if name not in GATE_TEXT or not _is_num(v) or not _is_num(t):
        return None
    if is_lower_limit(gate):
        return (1.0 - v) / (1.0 - t) if t < 1 else None
    return v / t if t > 0 else None


def worst_harm(step: dict[str, Any]) -> dict[str, Any] | None:
    """The step's group or between-group check with the largest harm relative to its limit; on a
    tie, a failure first, then the first in the step's order."""
    rank = {"fail": 0, "warn": 1, "pass": 2}
    best, key = None, None
    for g in step.get("gates") or []:
        r = harm_ratio(g)
        if r is None:
            continue
        k = (r, -rank.get(str(g.get("status")), 3))
        if key is None or k > key:
            best, key = g, k
    return best


def largest_harm(report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(step, gate entry) of the largest observed harm of any compressed step, relative to its limit
    (`harm_ratio`), whatever the gate decided; None when no compressed step has a harm check."""
    best = None
    for s in steps(report):
        if s.get("index", 0) == 0:
            continue
        g = worst_harm(s)
        if g is not None and (best is None or harm_ratio(g) > harm_ratio(best[1])):
            best = (s, g)
    return best


def frontier_points(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Every step (or tune candidate) with a latency: p50, its interval, and its worst harm relative to
    its limit (`harm_ratio`; the baseline: 0), pass/fail, and whether no other step is both at least
    as fast and at most as harmful (the frontier)."""
    sel = (report.get("selected") or {}).get("step")
    pts = []
    for s in steps(report):
        lat = s.get("latency") or {}
        if not _is_num(lat.get("p50_ms")):
            continue
        worst = worst_harm(s) if s.get("index", 0) > 0 else None
        ratio = harm_ratio(worst) if worst else (0.0 if s.get("index", 0) == 0 else None)
        pts.append({"step": s, "p50": lat["p50_ms"], "ci": lat.get("p50_ci"), "ratio": ratio, "worst": worst,
                    "passed": bool(s.get("passed", True)), "selected": s.get("index") == sel})
    for p in pts:
        p["front"] = p["ratio"] is not None and not any(
            q is not p and q["ratio"] is not None and q["p50"] <= p["p50"] and q["ratio"] <= p["ratio"]
            and (q["p50"] < p["p50"] or q["ratio"] < p["ratio"]) for q in pts)
    return pts


PreviousRow = tuple[str, dict[str, Any], "dict[str, Any] | None"]  # (group, change vs the release, its gate entry)


def previous_release(report: dict[str, Any]) -> tuple[str, dict[str, Any] | None, list[PreviousRow]] | None:
    """(what was compared, the step shown, [(group, its change vs the last release, its gate entry)])
    for `edgefair run --previous`: the model to ship (else the last step), overall first. None when
    the report compares with no release."""
    prev = report.get("previous")
    if not isinstance(prev, dict):
        return None
    bits = [f"folder {prev.get('folder')}"]
    if prev.get("selected_step"):
        bits.append(f"its step {prev['selected_step']}")
    if prev.get("created_at"):
        bits.append(f"written {prev['created_at']}")
    if prev.get("edgefair"):
        bits.append(f"edgefair {prev['edgefair']}")
    if prev.get("model_sha256"):
        bits.append(f"model sha256 {str(prev['model_sha256'])[:12]}…")
    what = (", ".join(bits) + f"; measure: {prev.get('measure', 'accuracy')}"
            + (f" on the same {prev['rows']} rows" if _is_num(prev.get("rows")) else ""))
    step, _ = focus_step(report)
    vs = (step or {}).get("vs_previous") or {}
    if not vs:
        return what, step, []
    entries = {g.get("group"): g for g in (step or {}).get("gates") or [] if g.get("gate") == "max_group_regression_vs_previous"}
    rows = [("overall", vs["overall"], None)] if isinstance(vs.get("overall"), dict) else []
    rows += [(k, v, entries.get(k)) for k, v in (vs.get("groups") or {}).items()]
    return what, step, rows


def harm_sentence(step: dict[str, Any], gate: dict[str, Any], ci_label: str,
                  name_fmt: Callable[[str], str] = str) -> str:
    """'true positive rate drop 7.9 pp at sex=Female (step 6 int8): 4.0× its limit ≤ 2.0 pp, 95% CI
    5.4–11.6, fail' — the group through `name_fmt`, the step name too; the rest is edgefair's text."""
    ratio = harm_ratio(gate)
    ci = fmt_gate_ci(gate.get("gate"), gate.get("ci"))
    return (f"{gate_words(gate.get('gate'))} {fmt_observed(gate)} at {who(gate, name_fmt)} "
            f"(step {step.get('index')} {name_fmt(str(step.get('name')))}): "
            f"{DASH if ratio is None else format(ratio, '.1f')}× its limit {fmt_limit(gate)}"
            + (f", {ci_label} {ci}" if ci != DASH else "") + f", {status_text(gate)}")


def group_gates(step: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """{group key: {gate: entry}} of the step's group-level gate entries."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for g in step.get("gates") or []:
        if g.get("group") not in (None, "") and g.get("gate") not in SCOPE_GATES:
            out.setdefault(str(g["group"]), {})[str(g.get("gate"))] = g
    return out


def scope_gates(step: dict[str, Any]) -> list[dict[str, Any]]:
    return [g for g in step.get("gates") or [] if g.get("gate") in SCOPE_GATES]


def gate_sort_key(g: dict[str, Any]) -> tuple[int, int]:
    """Failures first, then undecided checks whose observed value is beyond the limit, then the rest."""
    rank = 0 if g.get("status") == "fail" else 1 if g.get("exceeds") else 2 if g.get("status") == "warn" else 3
    name = str(g.get("gate"))
    return rank, _ORDER.index(name) if name in _ORDER else len(_ORDER)


def extreme(step: dict[str, Any], field: str, *, lowest: bool) -> tuple[str | None, float | None]:
    """The ok group with the lowest (or highest) `field`, e.g. the largest flip rate."""
    vals = [(k, g[field]) for k, g in ok_groups(step).items() if _is_num(g.get(field))]
    if not vals:
        return None, None
    return (min if lowest else max)(vals, key=lambda kv: kv[1])


def latency_ratio(step: dict[str, Any], base: dict[str, Any] | None) -> float | None:
    """p50 of this step over p50 of the baseline, measured interleaved in the same run.

    The latency module's paired ratio (`ratio_p50_vs_first`, the baseline being timed first) is
    used when the report has it; otherwise the ratio of the two p50s.
    """
    reported = dig(step, "latency", "ratio_p50_vs_first")
    if _is_num(reported):
        return float(reported)
    p = dig(step, "latency", "p50_ms")
    b = dig(base, "latency", "p50_ms") if base else None
    if not _is_num(p) or not _is_num(b) or b <= 0:
        return None
    return p / b


def fmt_ratio(step: dict[str, Any], base: dict[str, Any] | None, *, ci: bool = True) -> str:
    """'1.12×', with the paired bootstrap interval when the report has one: '1.12× (1.05–1.18)'."""
    ratio = latency_ratio(step, base)
    if ratio is None:
        return DASH
    interval = dig(step, "latency", "ratio_p50_ci")
    show = ci and interval and step is not base
    return f"{ratio:.2f}×" + (f" ({fmt_ci(interval, scale=1, digits=2)})" if show else "")


def insufficient_summary(report: dict[str, Any]) -> list[tuple[str, Any, list[int], str | None]]:
    """(group, n, step indices where it had too little data, reason) across all steps."""
    seen: dict[str, list[Any]] = {}
    for s in steps(report):
        for key, g in insufficient_groups(s).items():
            entry = seen.setdefault(key, [g.get("n"), [], g.get("reason")])
            entry[1].append(s.get("index"))
    return [(k, n, idx, reason) for k, (n, idx, reason) in seen.items()]


def describe_gate(gate: dict[str, Any], ci_label: str = "CI", name_fmt: Callable[[str], str] = str) -> str:
    """One gate result in words, e.g. 'sex=Female: true positive rate drop 6.3 pp (95% CI 4.2–9.4),
    limit ≤ 3.0 pp; n = 333, fails on evidence from ≥ 5.4 pp — <reason>'.

    `name_fmt` formats the group (Markdown code span, HTML escaping); the rest is edgefair's own text.
    """
    name = str(gate.get("gate", "?"))
    scope = who(gate, name_fmt) if gate.get("group") not in (None, "") else ""
    lead = f"{scope}: " if scope else ""
    value, ci = gate.get("value"), gate.get("ci")
    words = gate_words(name)
    if name in ("finite_outputs", "no_gate"):
        text = f"{lead}{words}"
    elif not _is_num(value):
        text = f"{lead}{words} not measured, limit {fmt_limit(gate)}"
    else:
        text = f"{lead}{words} {fmt_gate(name, value)}"
        if ci:
            text += f" ({ci_label} {fmt_gate_ci(name, ci)})"
        text += f", limit {fmt_limit(gate)}"
        extra = []
        if _is_num(gate.get("n")):
            extra.append(f"n = {gate['n']}")
        if _is_num(gate.get("min_detectable")):
            extra.append(f"fails on evidence from {fmt_detectable(gate)}")
        if extra:
            text += "; " + ", ".join(extra)
    if gate.get("reason"):
        text += f" — {gate['reason']}"
    return text


def metric_columns(report: dict[str, Any], step: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(field, title, kind) of the per-group metric table; kind: 'pct' (a rate: percent, its change
    in pp), 'num' (Brier, NLL: plain, change plain) or 'cos' (4 decimals)."""
    compressed = step.get("index", 0) > 0
    if is_embedding(report):
        return [("cosine_mean", "cosine mean", "cos"), ("cosine_min", "cosine min", "cos"),
                ("rel_error_mean", "rel. error", "cos")] if compressed else []
    if not is_labelled(report):
        return [("agreement", "agreement", "pct"), ("flip_rate", "flip rate", "pct"),
                ("cosine_mean", "cosine mean", "cos")] if compressed else []
    cols = [("accuracy", "accuracy", "pct"), ("tpr", "TPR", "pct"), ("fpr", "FPR", "pct"),
            ("selection_rate", "selection rate", "pct"), ("ece", "ECE", "pct"), ("brier", "Brier", "num"),
            ("nll", "NLL", "num")]
    return cols + ([("flip_rate", "flip rate", "pct")] if compressed else [])


def metric_cell(g: dict[str, Any], field: str, kind: str, *, with_delta: bool) -> str:
    """'93.4% (-0.1)': a group's value and, at a compressed step, its change from the baseline
    (pp for rates). Label-free fidelity numbers have no change."""
    v = g.get(field)
    if kind == "pct":
        digits = 2 if field in ("flip_rate", "agreement") else 1
        text = fmt_pct(v, digits)
    elif kind == "num":
        text = fmt_num(v, ".4f")
    else:
        text = fmt_num(v, ".4f")
    d = g.get(f"{field}_delta")
    if with_delta and _is_num(d) and field not in ("flip_rate", "agreement", "cosine_mean", "cosine_min", "rel_error_mean"):
        text += f" ({fmt_pp(d)})" if kind == "pct" else f" ({fmt_num(d, '+.4f')})"
    return text


STATUS_ICON = {"pass": "✅", "fail": "❌", "warn": "⚠️"}


def steps_applied(report: dict[str, Any], step: dict[str, Any]) -> list[dict[str, Any]]:
    """The chain of steps that produced `step`, baseline excluded, oldest first (follows `input`)."""
    by_name = {s.get("name"): s for s in steps(report)}
    chain, cur, guard = [], step, 0
    while cur is not None and cur.get("index", 0) != 0 and guard <= len(by_name):
        chain.append(cur)
        cur = by_name.get(cur.get("input"))
        guard += 1
    return chain[::-1]
