"""report.md: a pull-request comment. The first screen says everything a reviewer must know: the
verdict, the model to ship and why, the thresholds in force, every check whose observed harm is
beyond its limit, the steps that failed and why, and how many checks were undecided. Then the
steps, then every step's per-group numbers and gate checks (the selected step open, the others
folded). Every user-supplied string is a code span (`md_code`) or escaped text (`md_text`)."""

from __future__ import annotations

import html
from typing import Any

from . import (
    DASH,
    STATUS_ICON,
    UNITS_NOTE,
    baseline_step,
    confidence_label,
    exceeded,
    failed_steps,
    fmt_detectable,
    fmt_gate,
    fmt_gate_ci,
    fmt_limit,
    fmt_mb,
    fmt_observed,
    fmt_ms,
    fmt_ci,
    fmt_num,
    fmt_pct,
    fmt_pp,
    fmt_ratio,
    gate_short,
    gate_unit,
    gate_words,
    gated_names,
    gates_cell,
    group_gates,
    harm_ratio,
    harm_sentence,
    insufficient_summary,
    is_labelled,
    is_lower_limit,
    largest_harm,
    md_code,
    md_table,
    md_text,
    metric_cell,
    metric_columns,
    no_failure_note,
    previous_release,
    rule_text,
    scope_gates,
    selected_step,
    step_result,
    status_text,
    steps,
    thresholds,
    undecided_note,
    who,
    why_failed,
    without_local_dirs,
    worst_gate,
    worst_harm,
)


MAX_CHARS = 60_000  # GitHub refuses comments over 65,536 characters


def render_markdown(report: dict[str, Any]) -> str:
    """The pull-request summary (report.md) of one edgefair run."""
    ci_label = confidence_label(report)
    head = (first_screen(report, ci_label) + _context(report) + _warnings(report) + _step_table(report)
            + _previous(report) + _frontier(report) + _repairs(report))
    tail = ["_Charts: `report.html`; every number: `report.json`; CI results: `junit.xml`._"]
    text = "\n".join(head + _per_step(report, ci_label) + tail) + "\n"
    if len(text) > MAX_CHARS:  # a PR comment has a size limit: keep the selected step's tables only
        text = "\n".join(head + _per_step(report, ci_label, others=False) + tail) + "\n"
    return text


# ---- the first screen ------------------------------------------------------------------------------

def first_screen(report: dict[str, Any], ci_label: str, *, heading: str = "##") -> list[str]:
    """Verdict, model to ship and why, thresholds, every exceeded check, failed steps, undecided count.
    Shared with the model card (which passes its own heading level)."""
    out = [_verdict_line(report, heading), ""] + largest_harm_lines(report, ci_label)
    sel = report.get("selected")
    if sel and sel.get("reason"):
        out += [f"**Why this model:** {md_text(sel['reason'])}.", ""]
    elif not sel:
        out += ["**No model to ship:** no candidate passed every gate.", ""]
    out += _thresholds(report)
    out += _exceeded(report, ci_label, heading)
    out += _failed_steps(report, heading)
    note = undecided_note(report)
    if note:
        out += [f"⚠️ **{md_text(note)}**", ""]
    return out


def largest_harm_lines(report: dict[str, Any], ci_label: str) -> list[str]:
    """The largest harm of any compressed step relative to its limit (group, gate and size), and the
    largest at the model to ship when that is another step."""
    found = largest_harm(report)
    if found is None:
        return []
    step, gate = found
    out = [f"**Largest harm:** {harm_sentence(step, gate, ci_label, md_code)}.", ""]
    sel = selected_step(report)
    if sel is not None and sel is not step and sel.get("index", 0) > 0:
        g = worst_harm(sel)
        if g is not None:
            out += [f"**At the model to ship:** {harm_sentence(sel, g, ci_label, md_code)}.", ""]
    return out


def _verdict_line(report: dict[str, Any], heading: str) -> str:
    verdict = str(report.get("verdict") or "unknown").upper()
    sel = report.get("selected")
    if sel:
        what = f"ship step {md_text(sel.get('step'))} {md_code(sel.get('name'))} ({md_code(sel.get('model'))})"
    else:
        what = "no model selected"
    return f"{heading} edgefair: **{md_text(verdict)}** — {what}"


def _thresholds(report: dict[str, Any]) -> list[str]:
    limits = thresholds(report)
    if not limits:
        note = no_failure_note(report)
        return [f"⚠️ **{md_text(note)}**" if note != "No gate failed." else "No thresholds in force.", ""]
    items = " · ".join(f"{gate_words(n)} {fmt_limit(n, t)}" for n, t in limits)
    return [f"**Thresholds in force** ({UNITS_NOTE}): {md_text(items)}.", "",
            f"**Decision rule:** {md_text(rule_text(report))}.", ""]


def _exceeded(report: dict[str, Any], ci_label: str, heading: str) -> list[str]:
    rows = exceeded(report)
    sub = heading + "#"
    if not rows:
        if thresholds(report):
            return [f"{sub} Observed harm beyond a limit: none", "",
                    "No check of any compressed step observed a value beyond its limit.", ""]
        return []
    sel = (report.get("selected") or {}).get("step")
    at_sel = sum(1 for e in rows if e.get("step") == sel)
    out = [f"{sub} Observed harm beyond a limit ({len(rows)} check{'s' if len(rows) != 1 else ''}"
           f"{f', {at_sel} at the selected model' if sel is not None else ''})", "",
           "Every check whose observed value is beyond its limit, whatever the evidence decided. "
           "_det._ = min_detectable: the smallest harm that fails on evidence at that n.", ""]
    body = []
    for e in rows:
        mark = " ✅" if e.get("step") == sel else ""
        body.append([f"{md_text(e.get('step'))} {md_code(e.get('name'))}{mark}", who(e, md_code), md_text(gate_words(e.get("gate"))),
                     f"**{fmt_observed(e)}**", fmt_limit(e), fmt_gate_ci(e.get("gate"), e.get("ci")),
                     f"{STATUS_ICON.get(str(e.get('status')), '')} {md_text(e.get('status'))} / {md_text(e.get('decision') or DASH)}",
                     fmt_num(e.get("n"), "d"), fmt_detectable(e), fmt_num(e.get("p_holm"), ".2g")])
    out += md_table(["step", "group", "gate", "observed", "limit", ci_label, "status / decision", "n", "det.",
                     "p (Holm)"], body)
    return out + [""]


def _failed_steps(report: dict[str, Any], heading: str) -> list[str]:
    failed = failed_steps(report)
    if not failed:
        return []
    out = [f"{heading}# Failed steps ({len(failed)})", ""]
    for s, gates in failed:
        out.append(f"- ❌ step {md_text(s.get('index'))} {md_code(s.get('name'))}: {why_failed(gates, md_code)}.")
    return out + [""]


# ---- context, warnings, steps ----------------------------------------------------------------------

def _context(report: dict[str, Any]) -> list[str]:
    ev = (report.get("data") or {}).get("eval") or {}
    src = report.get("source") or {}
    bits = []
    if src.get("spec"):
        bits.append(f"model {md_code(src['spec'])}")
    if ev.get("n") is not None:
        bits.append(f"{md_text(ev['n'])} eval rows" + ("" if is_labelled(report) else " (no labels: fidelity only)"))
    bits.append(f"{len(steps(report))} steps")
    return ["---", "", ", ".join(bits) + ".", ""]


def _warnings(report: dict[str, Any]) -> list[str]:
    out: list[str] = []
    texts: dict[str, list[Any]] = {}
    for s in steps(report):
        for w in s.get("warnings") or []:
            texts.setdefault(without_local_dirs(report, str(w)), []).append(s.get("index"))
    for w, idx in texts.items():
        out.append(f"- ⚠️ step {_indices(idx)}: {md_text(w)}")
    n_steps = len(steps(report))
    by_reason: dict[str, list[str]] = {}  # one loud line per reason (too few rows, ...)
    for k, n, idx, reason in insufficient_summary(report):
        where = "" if len(idx) == n_steps else ", step " + _indices(idx)
        by_reason.setdefault(reason or "", []).append(f"{md_code(k)} (n={md_text(n)}{where})")
    for reason, groups in by_reason.items():
        why = f" ({md_text(reason)})" if reason else ""
        out.append(f"- ⚠️ **Not evaluated — too little data{why}:** {', '.join(groups)}. No gate protects these groups.")
    return (["### Warnings", ""] + out + [""]) if out else []


def _step_table(report: dict[str, Any]) -> list[str]:
    base = baseline_step(report)
    sel = (report.get("selected") or {}).get("step")
    names = gated_names(report)
    head = ["#", "step", "size MB", "p50 ms", "p50 vs base"]
    head += [f"worst {gate_short(n)}" for n in names]
    head += ["gate checks", "result"]
    rows = []
    for s in steps(report):
        lat = s.get("latency") or {}
        cells = [f"{md_text(s.get('index'))}{' ✅' if s.get('index') == sel else ''}", md_code(s.get("name")),
                 fmt_mb(s.get("size_bytes")), fmt_ms(lat.get("p50_ms")), fmt_ratio(s, base)]
        for n in names:
            g = worst_gate(s, n) if s.get("index", 0) > 0 else None
            if g is None:
                cells.append(DASH)
                continue
            value = fmt_observed(g, unit=False)
            cells.append((f"**{value}** ❗" if g.get("exceeds") else value) + f" ({who(g, md_code)})")
        result = step_result(s)
        cells += [gates_cell(s), f"{STATUS_ICON.get(result, '')} {result}".strip()]
        rows.append(cells)
    units = ", ".join(f"{gate_short(n)} in {gate_unit(n)}" for n in names if gate_unit(n))
    out = ["### Steps", ""]
    if names:
        out += [f"Worst group per gate ({md_text(units)}); ❗ = beyond the limit; ✅ = the model to ship.", ""]
    return out + md_table(head, rows) + [""]


def _previous(report: dict[str, Any]) -> list[str]:
    """`edgefair run --previous`: each group's change vs the last release's model, on the same rows."""
    found = previous_release(report)
    if found is None:
        return []
    what, step, rows = found
    out = ["### Compared with the last release", "", f"Last release: {md_text(what)}.", ""]
    if step is None or not rows:
        return out + ["No step of this run was compared.", ""]
    out += [f"Step {md_text(step.get('index'))} {md_code(step.get('name'))} against it, per group: the rate on the "
            f"same rows, its change in points ({md_text(confidence_label(report))}), rows lost and gained, and the "
            "`max_group_regression_vs_previous` check when the recipe sets it.", ""]
    body = []
    for key, v, gate in rows:
        name = "overall" if key == "overall" else md_code(key)
        if v.get("status") != "ok":
            body.append([name, fmt_num(v.get("n"), "d"), DASH, DASH, f"⚠️ {md_text(v.get('reason') or 'insufficient data')}",
                         f"{v.get('lost', DASH)} / {v.get('gained', DASH)}", DASH])
            continue
        check = DASH if gate is None else (f"{STATUS_ICON.get(str(gate.get('status')), '')} {md_text(status_text(gate))}, "
                                           f"det. {fmt_detectable(gate)}")
        body.append([name, fmt_num(v.get("n"), "d"), fmt_pct(v.get("previous_rate")), fmt_pct(v.get("rate")),
                     f"{fmt_pp(v.get('change'))} ({fmt_ci(v.get('change_ci'), signed=True)})",
                     f"{v.get('lost')} / {v.get('gained')}", check])
    return out + md_table(["group", "n", "last release", "this model", "change pp", "lost / gained", "check"], body) + [""]


def _frontier(report: dict[str, Any]) -> list[str]:
    """`edgefair tune`'s frontier (every candidate, fastest first: latency, size, its worst group's harm
    relative to the limit, and what rejected it), then the candidates skipped and not tried."""
    rows = sorted(report.get("frontier") or [], key=lambda r: (r.get("p50_ratio_vs_baseline") is None,
                                                               r.get("p50_ratio_vs_baseline") or 0, r.get("step", 0)))
    skipped, not_tried = report.get("skipped") or [], report.get("not_tried") or []
    if not rows and not skipped and not not_tried:
        return []
    out = ["### Frontier", ""]
    if rows:
        out += ["Every candidate, fastest first: p50 latency over the baseline's, size, the largest harm of any group "
                "on any gate as a multiple of its limit (1 = at the limit), and the outcome. ✅ = the model to ship.", ""]
        body = []
        for r in rows:
            worst = [(harm_ratio({"gate": n, **v}), n, v) for n, v in (r.get("worst") or {}).items()]
            worst = [w for w in worst if w[0] is not None]
            if worst:
                ratio, name, v = max(worst, key=lambda w: w[0])
                g = {"gate": name, **v}
                harm = f"{md_text(gate_words(name))} {fmt_observed(g)} at {who(g, md_code)} ({ratio:.2f}×)"
            else:
                harm = "baseline" if r.get("step") == 0 else DASH
            ratio_s = DASH if r.get("p50_ratio_vs_baseline") is None else f"{r['p50_ratio_vs_baseline']:.2f}×"
            fails = r.get("rejected_by") or []
            if r.get("step") == 0:
                outcome = "reference"
            elif r.get("passed"):
                outcome = "✅ pass" if r.get("selected") else "pass"
            else:
                first = {**fails[0]} if fails else {}
                rel = "<" if first and is_lower_limit(first) else ">"
                outcome = (f"❌ {md_text(gate_words(first.get('gate')))} at {who(first, md_code)} {fmt_observed(first)} "
                           f"{rel} {fmt_gate(first.get('gate'), first.get('threshold'))}"
                           + (f" (+{len(fails) - 1} more)" if len(fails) > 1 else "")) if fails else "❌ fail"
            body.append([f"{md_text(r.get('step'))}{' ✅' if r.get('selected') else ''}", md_code(r.get("name")),
                         md_text(r.get("kind")), ratio_s, fmt_mb(r.get("size_bytes")), harm, outcome])
        out += md_table(["#", "candidate", "kind", "p50 vs base", "size MB", "worst harm (÷ limit)", "outcome"], body) + [""]
    for s in skipped:
        out.append(f"- skipped {md_code(s.get('name'))} ({md_text(s.get('kind'))}): {md_text(s.get('reason'))}")
    if not_tried:
        by_reason: dict[str, list[str]] = {}
        for s in not_tried:
            by_reason.setdefault(str(s.get("reason") or ""), []).append(md_code(s.get("name")))
        for reason, names in by_reason.items():
            out.append(f"- not tried{' (' + md_text(reason) + ')' if reason else ''}: {', '.join(names)}")
    return out + ([""] if skipped or not_tried else [])


def _repairs(report: dict[str, Any]) -> list[str]:
    """What each group-aware repair changed (judged on calibration rows) and what it cost."""
    rows = []
    for e in report.get("repairs") or []:
        cost = e.get("cost") or {}
        ratio = cost.get("p50_ratio_vs_baseline")
        if e.get("repair") == "keep_float":
            before, after = e.get("worst_before") or {}, e.get("worst_after") or {}
            what = (f"kept in float: {', '.join(md_code(n) for n in e.get('nodes') or []) or 'none'}; worst group agreement "
                    f"{md_code(before.get('group'))} {fmt_frac(before.get('value'))} → {md_code(after.get('group'))} "
                    f"{fmt_frac(after.get('value'))} on {md_text(e.get('judged_on'))}")
        else:
            what = "calibration rows drawn equally from every group cell"
        rows.append([f"{md_text(e.get('step'))} {md_code(e.get('name'))}", md_text(e.get("repair")), what,
                     DASH if ratio is None else f"{ratio:.2f}x"])
    if not rows:
        return []
    return ["### Repairs", ""] + md_table(["step", "repair", "what it changed", "p50 vs base"], rows) + [""]


def fmt_frac(v: Any) -> str:
    return DASH if not isinstance(v, (int, float)) else f"{v:.3f}"


# ---- per step, per group -----------------------------------------------------------------------------

def _per_step(report: dict[str, Any], ci_label: str, *, others: bool = True) -> list[str]:
    if not steps(report):
        return []
    sel = selected_step(report)
    out = ["### Per-group results", "",
           f"Rates in percent, changes from the baseline in brackets ({UNITS_NOTE}). Gate cells: status "
           "(✅ pass, ❌ fail, ⚠️ undecided), the observed harm (**bold** when beyond the limit), its "
           f"{md_text(ci_label)}, and _det._ = min_detectable, the smallest harm that fails on evidence "
           "at the group's size (– : none can at this size). Groups with too little data are not tested.", ""]
    ordered = ([sel] if sel is not None else []) + [s for s in steps(report) if s is not sel]
    if not others:
        kept = ordered[:1]
        out += [f"_The other {len(ordered) - len(kept)} steps' per-group tables are in `report.html` "
                "(this file stays within a pull-request comment's size)._", ""]
        ordered = kept
    for s in ordered:
        body = step_groups(report, s, ci_label)
        title = f"step {s.get('index')} <code>{html.escape(str(s.get('name')))}</code> — {html.escape(step_result(s))}"
        if s is sel:
            out += [f"#### Step {md_text(s.get('index'))} {md_code(s.get('name'))} (selected) — {md_text(step_result(s))}", ""]
            out += body
        else:
            out += ["<details>", f"<summary>{title}, gate checks: {html.escape(gates_cell(s))}</summary>", ""]
            out += body + ["</details>", ""]
    return out


def step_groups(report: dict[str, Any], step: dict[str, Any], ci_label: str) -> list[str]:
    base_compressed = step.get("index", 0) > 0
    cols = metric_columns(report, step)
    out: list[str] = []
    groups = step.get("groups") or {}
    if cols and groups:
        rows = []
        for key, g in groups.items():
            if g.get("status") != "ok":
                reason = f": {md_text(g['reason'])}" if g.get("reason") else ""
                rows.append([md_code(key), fmt_num(g.get("n"), "d"), f"⚠️ insufficient data{reason}"] + [""] * (len(cols) - 1))
                continue
            rows.append([md_code(key), fmt_num(g.get("n"), "d")]
                        + [metric_cell(g, f, kind, with_delta=base_compressed) for f, _, kind in cols])
        out += md_table(["group", "n"] + [t for _, t, _ in cols], rows) + [""]
    names = [n for n in gated_names(report, group_level=True)]
    per_group = group_gates(step)
    if base_compressed and names and per_group:
        rows = []
        for key in list(groups) + [k for k in per_group if k not in groups]:
            entries = per_group.get(key, {})
            rows.append([md_code(key), fmt_num((groups.get(key) or {}).get("n"), "d")]
                        + [_gate_cell(entries.get(n)) for n in names])
        limits = dict(thresholds(report))
        head = ["group", "n"] + [f"{gate_words(n)} ({fmt_limit(n, limits.get(n))})" for n in names]
        out += md_table(head, rows) + [""]
    scoped = scope_gates(step)
    if base_compressed and scoped:
        rows = [[md_code(g.get("group")), md_text(gate_words(g.get("gate"))), _observed(g), fmt_gate_ci(g.get("gate"), g.get("ci")),
                 fmt_limit(g), fmt_detectable(g), f"{STATUS_ICON.get(str(g.get('status')), '')} {md_text(g.get('decision') or g.get('status'))}"]
                for g in scoped]
        out += md_table(["attribute", "between-group gate", "observed", ci_label, "limit", "det.", "decision"], rows) + [""]
    return out


def _observed(g: dict[str, Any]) -> str:
    v = fmt_observed(g)
    return f"**{v}**" if g.get("exceeds") else v


def _gate_cell(g: dict[str, Any] | None) -> str:
    """'✅ 0.1 (-0.1 to +0.3) · det. ≥ 1.5' for one group and gate."""
    if g is None:
        return DASH
    icon = STATUS_ICON.get(str(g.get("status")), "")
    where = f"{md_text(g['where'])}: " if g.get("where") else ""
    if g.get("value") is None:
        return f"{icon} {DASH}"
    value = fmt_observed(g, unit=False)
    value = f"**{value}**" if g.get("exceeds") else value
    ci = fmt_gate_ci(g.get("gate"), g.get("ci"))
    return f"{icon} {where}{value}" + (f" ({ci})" if ci != DASH else "") + f" · det. {fmt_detectable(g, unit=False)}"


def _indices(idx: list[Any]) -> str:
    return ", ".join(md_text(i) for i in idx)
