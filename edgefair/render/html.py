"""report.html: one self-contained page (inline CSS and SVG, no scripts, no external resources) with
the Markdown summary's content plus every step's per-group table, a per-group change chart with CI
error bars and a reliability diagram. Every string from the report goes through `esc`."""

from __future__ import annotations

import html
import math
import re
from typing import Any, Iterable

from . import (
    DASH,
    UNITS_NOTE,
    baseline_step,
    confidence_label,
    exceeded,
    failed_steps,
    fmt_ci,
    fmt_detectable,
    fmt_gate_ci,
    fmt_limit,
    fmt_mb,
    fmt_ms,
    fmt_num,
    fmt_observed,
    fmt_pct,
    fmt_pp,
    fmt_ratio,
    focus_step,
    gate_counts,
    gate_short,
    gate_sort_key,
    gate_unit,
    gate_words,
    gated_names,
    gates_cell,
    insufficient_summary,
    is_labelled,
    metric_cell,
    metric_columns,
    no_failure_note,
    rule_text,
    status_text,
    step_result,
    steps,
    thresholds,
    undecided_note,
    who,
    why_failed,
    worst_gate,
)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
 padding:0 1em;color:#1b1f24}
h1{font-size:1.6em;margin:.2em 0} h2{margin-top:1.8em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
h3{font-size:1em;margin:1.2em 0 .2em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f6f8fa} td.l,th.l{text-align:left} td.n,th.n{white-space:nowrap}
td.note{text-align:left;color:#7d4e00}
.banner{padding:.8em 1em;border-radius:6px;font-size:1.2em;font-weight:600}
.pass{background:#dafbe1;color:#116329} .fail{background:#ffebe9;color:#a40e26} .warn{background:#fff8c5;color:#7d4e00}
tr.fail td{background:#ffebe9} tr.warn td,tr.insufficient td{background:#fff8c5} tr.selected td{font-weight:600}
tr.selected td:first-child{box-shadow:inset 4px 0 0 #0969da}
.badge{display:inline-block;font-size:.8em;font-weight:600;padding:0 .45em;border-radius:1em;background:#ddf4ff;color:#0550ae}
.grp{display:block;font-size:.85em;color:#57606a;font-weight:normal}
code{font-size:.92em;background:#f6f8fa;padding:0 .25em;border-radius:3px}
.muted{color:#57606a} ul.loud li{font-weight:600;color:#7d4e00}
p.warnnote{color:#7d4e00;font-weight:600;margin-bottom:.3em}
details{margin:.5em 0} summary{cursor:pointer;font-weight:600}
details>:not(summary){margin-left:.6em}
svg{max-width:100%;height:auto}
b.over{color:#a40e26} ul.limits{columns:2 22em;margin:.2em 0} ul.fail li{color:#a40e26}
td code{white-space:nowrap}
@media (max-width:600px){body{margin:1em auto;padding:0 .5em} .banner{font-size:1em} ul.limits{columns:1}
 table.cards thead{display:none} table.cards,table.cards tbody,table.cards tr{display:block;width:100%}
 table.cards tr{border:1px solid #d0d7de;border-radius:6px;margin:0 0 .6em;overflow:hidden}
 table.cards td{display:flex;justify-content:space-between;gap:1em;border:none;border-bottom:1px solid #eaeef2;
  text-align:right;white-space:normal}
 table.cards td::before{content:attr(data-label);font-weight:600;text-align:left;color:#57606a}
 table.cards td code{white-space:normal;word-break:break-all}}
svg text{font:12px system-ui,sans-serif;fill:#1b1f24} svg text.m{fill:#57606a} svg text.b{font-weight:600}
"""


def esc(s: Any) -> str:
    """Escape any report value for HTML text and attribute context."""
    return html.escape(str(s), quote=True)


def render_html(report: dict[str, Any]) -> str:
    """The self-contained report page (report.html)."""
    ci_label = confidence_label(report)
    verdict = str(report.get("verdict") or "unknown")
    body = [
        "<h1>edgefair report</h1>",
        _first_screen(report, ci_label),
        _context(report),
        _warnings(report),
        "<h2>Steps</h2>", _step_table(report),
        _repairs(report),
        _charts(report, ci_label),
        "<h2>Per-step details</h2>",
        f"<p class=\"muted\">Rates in percent; changes from the baseline in brackets ({esc(UNITS_NOTE)}). "
        "<i>det.</i> = min_detectable: the smallest harm that fails on evidence at the group's size.</p>",
        *(_step_details(report, s, ci_label) for s in steps(report)),
        _environment(report),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>edgefair report: {esc(verdict.upper())}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")


def _first_screen(report: dict[str, Any], ci_label: str) -> str:
    """Verdict, model to ship and why, thresholds, every exceeded check, failed steps, undecided count."""
    verdict = str(report.get("verdict") or "unknown")
    sel = report.get("selected")
    what = (f"ship step {esc(sel.get('step'))} <code>{esc(sel.get('name'))}</code> "
            f"(<code>{esc(sel.get('model'))}</code>)") if sel else "no model selected"
    out = [f'<div class="banner {"pass" if verdict == "pass" else "fail"}">{esc(verdict.upper())} — {what}</div>']
    if sel and sel.get("reason"):
        out.append(f"<p><b>Why this model:</b> {esc(sel['reason'])}.</p>")
    elif not sel:
        out.append("<p><b>No model to ship:</b> no candidate passed every gate.</p>")
    limits = thresholds(report)
    if limits:
        items = "".join(f"<li>{esc(gate_words(n))} <span class=\"n\">{esc(fmt_limit(n, t))}</span> "
                        f"<span class=\"muted\"><code>{esc(n)}</code></span></li>" for n, t in limits)
        out.append(f"<p><b>Thresholds in force</b> <span class=\"muted\">({esc(UNITS_NOTE)})</span>:</p>"
                   f"<ul class=\"limits\">{items}</ul><p class=\"muted\"><b>Decision rule:</b> {esc(rule_text(report))}.</p>")
    else:
        note = no_failure_note(report)
        out.append(f'<p class="{"" if note == "No gate failed." else "banner warn"}">{esc(note)}</p>')
    rows = exceeded(report)
    sel_i = (sel or {}).get("step")
    if rows:
        at_sel = sum(1 for e in rows if e.get("step") == sel_i)
        trs = [(str(e.get("status") or ""), [
            esc(e.get("step")) + (' <span class="badge">selected</span>' if e.get("step") == sel_i else ""),
            f"<code>{esc(e.get('name'))}</code>", who(e, _code), esc(gate_words(e.get("gate"))),
            f"<b>{esc(fmt_observed(e))}</b>", esc(fmt_limit(e)), esc(fmt_gate_ci(e.get("gate"), e.get("ci"))),
            esc(status_text(e)), esc(fmt_num(e.get("n"), "d")), esc(fmt_detectable(e)), esc(fmt_num(e.get("p_holm"), ".2g"))])
            for e in rows]
        out.append(f"<h2>Observed harm beyond a limit ({len(rows)} check{'s' if len(rows) != 1 else ''}"
                   f"{f', {at_sel} at the selected model' if sel_i is not None else ''})</h2>"
                   "<p class=\"muted\">Every check whose observed value is beyond its limit, whatever the evidence "
                   "decided.</p>"
                   + _table(["#", "step", "group", "gate", "observed", "limit", ci_label, "status", "n", "det.", "p (Holm)"],
                            trs, left=4, nowrap=(0, 4, 5, 6, 7, 8, 9, 10), cards=True, also_left=(7,)))
    elif limits:
        out.append("<h2>Observed harm beyond a limit: none</h2><p>No check of any compressed step observed a value "
                   "beyond its limit.</p>")
    failed = failed_steps(report)
    if failed:
        items = "".join(f"<li>step {esc(s.get('index'))} <code>{esc(s.get('name'))}</code>: "
                        f"{_why_failed(gates)}</li>"
                        for s, gates in failed)
        out.append(f"<h2>Failed steps ({len(failed)})</h2><ul class=\"loud fail\">{items}</ul>")
    note = undecided_note(report)
    if note:
        out.append(f"<p class=\"warnnote\">⚠ {esc(note)}</p>")
    return "".join(out)


def _repairs(report: dict[str, Any]) -> str:
    """Each group-aware repair, and for keep-float the per-node worst-group sensitivity ranking
    (measured on calibration rows, not on the eval rows the gates judge)."""
    out = []
    by_step = {s.get("index"): s for s in steps(report)}
    for e in report.get("repairs") or []:
        cost = (e.get("cost") or {}).get("p50_ratio_vs_baseline")
        head = (f"<h3>Step {esc(e.get('step'))} <code>{esc(e.get('name'))}</code>: {esc(e.get('repair'))}"
                f"{'' if cost is None else f' (p50 {cost:.2f}x the baseline)'}</h3>")
        if e.get("repair") != "keep_float":
            out.append(head + "<p>Calibration rows drawn equally from every group cell.</p>")
            continue
        before, after = e.get("worst_before") or {}, e.get("worst_after") or {}
        kept = ", ".join(f"<code>{esc(n)}</code>" for n in e.get("nodes") or []) or "none"
        text = (f"<p>Kept in float: {kept}. Worst group's agreement with fp32 on {esc(e.get('judged_on'))}: "
                f"<code>{esc(before.get('group'))}</code> {esc(before.get('value'))} → "
                f"<code>{esc(after.get('group'))}</code> {esc(after.get('value'))}.</p>")
        ranking = ((by_step.get(e.get("step")) or {}).get("details") or {}).get("keep_float", {}).get("ranking") or []
        rows = [("", [esc(r.get("rank", i + 1)), f"<code>{esc(r.get('node'))}</code>", esc(r.get("op_type")),
                      f"<code>{esc(r.get('worst_group'))}</code>", esc(r.get("worst_agreement")), esc(r.get("agreement_gap")),
                      esc(r.get("improvement"))]) for i, r in enumerate(ranking[:10])]
        table = _table(["rank", "node kept in float", "op", "worst group", "its agreement", "gap", "gain"], rows, left=4) if rows else ""
        out.append(head + text + ("<p class=\"muted\">Sensitivity: each node kept in float alone, ranked by the worst "
                                  "group's agreement (top 10).</p>" + table if table else ""))
    return ("<h2>Repairs</h2>" + "".join(out)) if out else ""


def _table(head: Iterable[str], rows: Iterable[tuple[str, list[Any]]], left: int = 1, *,
           nowrap: Iterable[int] = (), cards: bool = False, also_left: Iterable[int] = ()) -> str:
    """A table from already-escaped cells; `rows` are (tr class, cells); the first `left` columns align left.

    A cell may be `(html, colspan)`. Columns in `nowrap` (numbers, intervals) do not break across lines;
    the table scrolls sideways inside its own box instead of overflowing the page. `cards`: on a
    narrow screen each row becomes a card of "column: value" lines instead of scrolling.
    """
    keep, lefts = set(nowrap), set(also_left)
    head = list(head)
    labels = [esc(html.unescape(re.sub(r"<[^>]+>", " ", h)).split("  ")[0].strip()) for h in head]

    def cls(i: int, header: bool = False) -> str:
        c = ("l " if i < left or i in lefts else "") + ("n" if i in keep and not header else "")
        return f' class="{c.strip()}"' if c.strip() else ""

    def label(i: int) -> str:
        return f' data-label="{labels[i]}"' if cards and i < len(labels) else ""

    th = "".join(f"<th{cls(i, True)}>{h}</th>" for i, h in enumerate(head))
    trs = []
    for rcls, cells in rows:
        tds, col = [], 0
        for c in cells:
            if isinstance(c, tuple):
                tds.append(f'<td class="note" colspan="{int(c[1])}">{c[0]}</td>')
                col += int(c[1])
            else:
                tds.append(f"<td{cls(col)}{label(col)}>{c}</td>")
                col += 1
        trs.append(f'<tr class="{esc(rcls)}">{"".join(tds)}</tr>')
    table_cls = ' class="cards"' if cards else ""
    return (f'<div class="scroll"><table{table_cls}><thead><tr>{th}</tr></thead>'
            f'<tbody>{"".join(trs)}</tbody></table></div>')


def _context(report: dict[str, Any]) -> str:
    src = report.get("source") or {}
    ev = (report.get("data") or {}).get("eval") or {}
    recipe = report.get("recipe") or {}
    items = [
        ("recipe", recipe.get("path")), ("recipe sha256", recipe.get("sha256")),
        ("model source", src.get("spec")), ("source sha256", src.get("sha256")),
        ("eval data", ev.get("path")), ("eval rows", ev.get("n")),
        ("labels", None if not ev else ("yes" if is_labelled(report) else "no (label-free fidelity only)")),
    ]
    rows = "".join(f"<tr><th class=\"l\">{esc(k)}</th><td class=\"l\"><code>{esc(v)}</code></td></tr>"
                   for k, v in items if v is not None)
    return f"<table>{rows}</table>" if rows else ""


def _warnings(report: dict[str, Any]) -> str:
    """Step warnings and groups nobody checked, in full (undecided checks: the first screen's count
    and each step's gate table)."""
    items = []
    for s in steps(report):
        for w in s.get("warnings") or []:
            items.append(f"step {esc(s.get('index'))} <code>{esc(s.get('name'))}</code>: {esc(w)}")
    n_steps = len(steps(report))
    for key, n, idx, reason in insufficient_summary(report):
        where = "" if len(idx) == n_steps else f", step {esc(', '.join(map(str, idx)))}"
        items.append(f"Not evaluated — too little data: <code>{esc(key)}</code> (n={esc(n)}{where})"
                     f"{': ' + esc(reason) if reason else ''}. No gate protects this group.")
    if not items:
        return ""
    return "<h2>Warnings</h2><ul class=\"loud\">" + "".join(f"<li>⚠ {i}</li>" for i in items) + "</ul>"


def _step_table(report: dict[str, Any]) -> str:
    base = baseline_step(report)
    labelled = is_labelled(report)
    sel = (report.get("selected") or {}).get("step")
    names = gated_names(report)
    rows = []
    for s in steps(report):
        lat = s.get("latency") or {}
        result = step_result(s)
        cls = "fail" if result == "fail" else ("selected" if s.get("index") == sel else "")
        cells = [
            esc(s.get("index")) + (' <span class="badge">✓ selected</span>' if s.get("index") == sel else ""),
            f"<code>{esc(s.get('name'))}</code> <span class=\"grp\">{esc(s.get('kind'))}</span>",
            esc(fmt_mb(s.get("size_bytes"))),
            esc(fmt_ms(lat.get("p50_ms"))), esc(fmt_ms(lat.get("p95_ms"))),
            _ratio_cell(s, base),
        ]
        if labelled:
            cells.append(esc(fmt_pct((s.get("overall") or {}).get("accuracy"))))
        for n in names:
            g = worst_gate(s, n) if s.get("index", 0) > 0 else None
            if g is None:
                cells.append(DASH)
                continue
            value = esc(fmt_observed(g, unit=False))
            if g.get("exceeds"):  # the group is named where it matters; elsewhere on hover
                cells.append(f'<b class="over">{value}</b> <span class="grp">{_breakable(who(g))}</span>')
            else:
                cells.append(f'<span title="{esc(who(g))}">{value}</span>')
        cells += [esc(gates_cell(s)), f"<b>{esc(result)}</b>"]
        rows.append((cls, cells))
    head = ["#", "step <span class=\"grp\">kind</span>", "size MB", "p50 ms", "p95 ms", "p50 vs base"]
    head += ["accuracy"] if labelled else []
    head += [f"worst {esc(gate_short(n))}" + (f" <span class=\"grp\">{esc(gate_unit(n))}</span>" if gate_unit(n) else "")
             for n in names]
    head += ["gate checks", "result"]
    note = ("<p class=\"muted\">worst …: the largest harm (lowest score) of any group per gate; "
            "<b class=\"over\">bold red</b> = beyond the limit, with its group (hover a value for the others' "
            "group).</p>") if names else ""
    first_gate = len(head) - len(names) - 2
    return note + _table(head, rows, left=2, nowrap=(0, 2, 3, 4, 5, 6, *range(first_gate, len(head) - 2), len(head) - 1),
                         cards=True)


def _why_failed(gates: list[dict[str, Any]]) -> str:
    """`why_failed` as HTML: its own words escaped, and each group a <code> element (escaped too)."""
    names: list[str] = []

    def token(key: str) -> str:
        names.append(key)
        return f"\x00{len(names) - 1}\x00"

    text = esc(why_failed(gates, token))
    return re.sub("\x00(\\d+)\x00", lambda m: _code(names[int(m.group(1))]), text)


def _code(key: Any) -> str:
    return f"<code>{esc(key)}</code>"


def _breakable(key: Any) -> str:
    """An escaped group key that may wrap after '&' (intersections are long)."""
    return esc(key).replace("&amp;", "&amp;<wbr>")


def _two_line(text: str) -> str:
    """'93.4% (-0.1)' as the value with its bracketed change on a second, smaller line."""
    value, sep, rest = text.partition(" (")
    return esc(value) + (f' <span class="grp">({esc(rest)}</span>' if sep else "")


def _ratio_cell(step: dict[str, Any], base: dict[str, Any] | None) -> str:
    """'0.68×' with its interval on a second, smaller line."""
    text = fmt_ratio(step, base)
    ratio, sep, ci = text.partition(" (")
    return esc(ratio) + (f' <span class="grp">({esc(ci)}</span>' if sep else "")


def _group_rows(report: dict[str, Any], step: dict[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    cols = metric_columns(report, step)
    compressed = step.get("index", 0) > 0
    head = ["group", "n"] + [t for _, t, _ in cols]
    rows = []
    for key, g in (step.get("groups") or {}).items():
        if g.get("status") != "ok":
            note = f"⚠ insufficient data{': ' + esc(g['reason']) if g.get('reason') else ''}"
            rows.append(("insufficient", [f"<code>{esc(key)}</code>", esc(fmt_num(g.get("n"), "d")),
                                          (note, max(len(head) - 2, 1))]))
            continue
        cells = [_two_line(metric_cell(g, f, kind, with_delta=compressed)) for f, _, kind in cols]
        rows.append(("", [f"<code>{esc(key)}</code>", esc(fmt_num(g.get("n"), "d"))] + cells))
    return head, rows


def _step_details(report: dict[str, Any], step: dict[str, Any], ci_label: str) -> str:
    labelled = is_labelled(report)
    sel = (report.get("selected") or {}).get("step")
    head, rows = _group_rows(report, step)
    parts = [f"<details{' open' if step.get('index') == sel else ''}><summary>step {esc(step.get('index'))} "
             f"<code>{esc(step.get('name'))}</code> ({esc(step.get('kind'))}"
             f"{', input ' + esc(step['input']) if step.get('input') else ''}) — {esc(step_result(step))}; "
             f"gate checks: {esc(gates_cell(step))}</summary>",
             f"<p class=\"muted\">model <code>{esc(step.get('model'))}</code>, sha256 "
             f"<code>{esc(step.get('sha256'))}</code></p>"]
    if len(head) > 2:
        parts += ["<h3>Groups</h3>", _table(head, rows, left=1, nowrap=range(1, len(head)))]
    disp = step.get("disparity") or {}
    if disp and labelled:
        drows = []
        for scope, d in disp.items():
            acc = d.get("accuracy") or {}
            drows.append(("", [f"<code>{esc(scope)}</code>", esc(fmt_pp(acc.get("gap"), signed=False)),
                               f"<code>{esc(acc.get('worst_group') or DASH)}</code>", esc(fmt_pp(d.get("accuracy_gap_growth"))),
                               esc(fmt_ci(d.get("accuracy_gap_growth_ci"), signed=True)),
                               esc(fmt_pp(d.get("demographic_parity_difference"), signed=False)),
                               esc(fmt_pp(d.get("equalized_odds_difference"), signed=False))]))
        parts.append("<h3>Disparity between groups</h3>")
        parts.append(_table(["scope", "accuracy gap pp", "worst group", "gap growth pp", f"growth {ci_label}",
                             "demographic parity diff. pp", "equalized odds diff. pp"], drows, left=1,
                            nowrap=(1, 3, 4, 5, 6)))
    gates = step.get("gates") or []
    if gates:
        ordered = sorted(gates, key=gate_sort_key)
        grows = [(str(g.get("status") or ""), [
            esc(status_text(g)), esc(gate_words(g.get("gate"))), who(g, _code),
            (f'<b class="over">{esc(fmt_observed(g))}</b>' if g.get("exceeds") else esc(fmt_observed(g))),
            esc(fmt_gate_ci(g.get("gate"), g.get("ci"))), esc(fmt_limit(g)), esc(fmt_detectable(g)),
            esc(fmt_num(g.get("n"), "d")), esc(fmt_num(g.get("p_holm"), ".2g")), esc(g.get("reason") or "")])
            for g in ordered]
        c = gate_counts(step)
        order = "; failures, then checks beyond the limit, first" if c.get("fail") or any(g.get("exceeds") for g in gates) else ""
        parts.append(f"<h3>Gate checks <span class=\"muted\">({esc(gates_cell(step))}{order})</span></h3>")
        parts.append(_table(["status", "gate", "group", "observed", ci_label, "limit", "det.", "n", "p (Holm)", "reason"],
                            grows, left=3, nowrap=(0, 3, 4, 5, 6, 7, 8), also_left=(9,)))
    parts.append("</details>")
    return "".join(parts)


def _charts(report: dict[str, Any], ci_label: str) -> str:
    step, title = focus_step(report)
    if step is None:
        return ""
    out = []
    if is_labelled(report) and step.get("index") != 0:
        out.append(f"<h2>Accuracy change per group, {esc(title)}</h2>"
                   f"<p class=\"muted\">Points: step minus baseline, in percentage points (left of 0: accuracy fell); "
                   f"bars: {esc(ci_label)}; colour: the step's gate on that group, as decided by the gate.</p>")
        out.append(interval_chart(step, "accuracy_delta", "accuracy_delta_ci", signed=True))
    elif step.get("index") != 0:
        out.append(f"<h2>Flip rate per group, {esc(title)}</h2>"
                   f"<p class=\"muted\">Share of rows whose predicted class differs from the baseline's, in percent; "
                   f"bars: {esc(ci_label)}.</p>")
        out.append(interval_chart(step, "flip_rate", "flip_rate_ci", signed=False))
    base = baseline_step(report)
    curves = [(s, c) for s, c in ((base, "#57606a"), (step, "#cf222e")) if s is not None
              and (s.get("overall") or {}).get("reliability")]
    if curves:
        out.append("<h2>Reliability diagram (overall)</h2><p class=\"muted\">Accuracy per confidence bin against "
                   "the bin's mean confidence; points below the diagonal are over-confident.</p>")
        out.append(reliability_chart(curves if step is not base else curves[:1]))
    return "".join(out)


# Colours of a group's point: the status of the step's gate on that group, as in the tables.
_STATUS_COLOUR = {"pass": "#1a7f37", "warn": "#bf8700", "fail": "#cf222e"}
_NEUTRAL, _DROP = "#0969da", "#cf222e"
_CHART_GATE = {"accuracy_delta": "max_group_accuracy_drop", "flip_rate": "max_group_flip_rate"}


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 x 10^k) covering [lo, hi]."""
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    t, out = math.ceil(lo / step) * step, []
    while t <= hi + step * 1e-9:
        out.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return out


def _scope(key: str) -> str:
    """'sex=Male&race=Black' -> 'sex&race': the attribute(s) a group key is over."""
    return "&".join(part.split("=", 1)[0] for part in str(key).split("&"))


def interval_chart(step: dict[str, Any], field: str, ci_field: str, *, signed: bool) -> str:
    """Horizontal dot-and-whisker SVG of one fraction per group (scaled to points/percent).

    Every group of the step gets a row, in the report's order, with a rule between attributes (sex,
    race, sex&race); groups with too little data say so instead of silently missing. A point is
    coloured by the step's gate on that group (pass / undecided / fail) as the gate decided it, blue
    without a gate: the chart never judges significance itself. The gate's limit is a dashed red line.
    """
    groups = list((step.get("groups") or {}).items())
    items = [(k, g.get(field), g.get(ci_field), g) for k, g in groups]
    measured = [(k, v, ci) for k, v, ci, g in items if g.get("status") == "ok" and isinstance(v, (int, float))]
    if not measured:
        return "<p class=\"muted\">No group has this measurement.</p>"
    gate_name = _CHART_GATE.get(field)
    status = {g.get("group"): str(g.get("status")) for g in step.get("gates") or []
              if g.get("gate") == gate_name and g.get("group")}
    limit = next((g.get("threshold") for g in step.get("gates") or [] if g.get("gate") == gate_name
                  and isinstance(g.get("threshold"), (int, float)) and not isinstance(g.get("threshold"), bool)), None)
    limit_x = None if limit is None else (-limit * 100 if signed else limit * 100)

    def ok_ci(ci: Any) -> bool:
        return bool(ci) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci)

    vals = [v * 100 for _, v, _ in measured] + [c * 100 for _, _, ci in measured if ok_ci(ci) for c in ci] + [0.0]
    if limit_x is not None:
        vals.append(limit_x)
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.04
    lo, hi = lo - pad, hi + pad
    ticks = _ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])

    longest = max(len(str(k)) for k, *_ in items)
    label_w = min(max(int(longest * 7.3) + 24, 120), 380)
    plot_w, row_h, top, value_w = 540, 22, 40, 170
    seps = sum(1 for i in range(1, len(items)) if _scope(items[i][0]) != _scope(items[i - 1][0]))
    rows_end = top + row_h * len(items) + 6 * seps
    legend_y = rows_end + 56
    width, height = label_w + plot_w + value_w, legend_y + 12
    unit = "percentage points" if signed else "percent of rows"
    axis_title = ("accuracy change, step minus baseline (percentage points)" if field == "accuracy_delta"
                  else f"{field.replace('_', ' ')} ({unit})")

    def x(v: float) -> float:
        return label_w + (v - lo) / (hi - lo) * plot_w

    def tick_text(t: float) -> str:
        return format(t, "+g" if signed and t != 0 else "g")

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(field)} per group">',
             f'<text x="{label_w - 10}" y="{top - 10}" text-anchor="end" class="b">group</text>',
             f'<text x="{label_w + plot_w + 14}" y="{top - 10}" class="b">'
             f'{"change, pp" if signed else "percent"}</text>']
    for t in ticks:  # grid and tick labels, top and bottom
        grid = 'stroke="#8c959f" stroke-dasharray="3,3"' if t == 0 else 'stroke="#eaeef2"'
        parts.append(f'<line x1="{x(t):.1f}" y1="{top - 4}" x2="{x(t):.1f}" y2="{rows_end}" {grid}/>')
        for ty in (top - 10, rows_end + 16):
            parts.append(f'<text x="{x(t):.1f}" y="{ty}" text-anchor="middle" class="m">{esc(tick_text(t))}</text>')
    parts.append(f'<text x="{label_w + plot_w / 2:.1f}" y="{rows_end + 34}" text-anchor="middle">{esc(axis_title)}</text>')
    if limit_x is not None:
        parts.append(f'<line x1="{x(limit_x):.1f}" y1="{top - 4}" x2="{x(limit_x):.1f}" y2="{rows_end}" '
                     f'stroke="{_DROP}" stroke-width="1.5" stroke-dasharray="6,3"/>')
    y0, stripes = top, []
    for i, (key, v, ci, g) in enumerate(items):
        if i and _scope(key) != _scope(items[i - 1][0]):
            parts.append(f'<line x1="8" y1="{y0 + 3:.1f}" x2="{width - 8}" y2="{y0 + 3:.1f}" stroke="#d0d7de"/>')
            y0 += 6
        y = y0 + row_h / 2
        if i % 2:
            stripes.append(f'<rect x="0" y="{y0:.1f}" width="{width}" height="{row_h}" fill="#f6f8fa"/>')
        parts.append(f'<text x="{label_w - 10}" y="{y + 4:.1f}" text-anchor="end">{esc(key)}</text>')
        y0 += row_h
        if g.get("status") != "ok" or not isinstance(v, (int, float)):
            parts.append(f'<text x="{x(0) + 8:.1f}" y="{y + 4:.1f}" class="m">not measured: too little data '
                         f'(n={esc(fmt_num(g.get("n"), "d"))})</text>')
            continue
        color = _STATUS_COLOUR.get(status.get(key, ""), _NEUTRAL)  # the gate's decision, never recomputed
        if ok_ci(ci):
            parts.append(f'<line x1="{x(ci[0] * 100):.1f}" y1="{y:.1f}" x2="{x(ci[1] * 100):.1f}" y2="{y:.1f}" '
                         f'stroke="{color}" stroke-width="2"/>')
            for c in ci:
                parts.append(f'<line x1="{x(c * 100):.1f}" y1="{y - 5:.1f}" x2="{x(c * 100):.1f}" y2="{y + 5:.1f}" '
                             f'stroke="{color}" stroke-width="1.5"/>')
        parts.append(f'<circle cx="{x(v * 100):.1f}" cy="{y:.1f}" r="4.5" fill="{color}" stroke="#fff"/>')
        text = fmt_pp(v) if signed else fmt_pct(v, 2)
        ci_text = fmt_ci(ci, signed=signed, digits=1 if signed else 2) if ok_ci(ci) else ""
        ci_span = f' <tspan class="m">({esc(ci_text)})</tspan>' if ci_text else ""
        parts.append(f'<text x="{label_w + plot_w + 14}" y="{y + 4:.1f}">{esc(text)}{ci_span}</text>')
    parts[3:3] = stripes  # under the grid (parts[:3] are the svg tag and the column headers)
    # legend
    legend: list[tuple[str, str]] = []
    if status:
        used = set(status.values())
        legend += [(_STATUS_COLOUR[s], {"pass": "gate passed", "warn": "gate undecided", "fail": "gate failed"}[s])
                   for s in ("pass", "warn", "fail") if s in used]
    else:
        legend += [(_NEUTRAL, "no gate on this measurement")]
    lx = 10.0
    for color, label in legend:
        parts.append(f'<circle cx="{lx + 5:.1f}" cy="{legend_y - 4}" r="4.5" fill="{color}"/>'
                     f'<text x="{lx + 14:.1f}" y="{legend_y}">{esc(label)}</text>')
        lx += 30 + len(label) * 6.8
    if limit_x is not None:
        parts.append(f'<line x1="{lx:.1f}" y1="{legend_y - 4}" x2="{lx + 22:.1f}" y2="{legend_y - 4}" stroke="{_DROP}" '
                     f'stroke-width="1.5" stroke-dasharray="6,3"/><text x="{lx + 28:.1f}" y="{legend_y}">'
                     f'{esc(gate_name)} limit ({esc(tick_text(round(limit_x, 6)))}{" pp" if signed else "%"})</text>')
    parts.append("</svg>")
    return "".join(parts)


def reliability_chart(curves: list[tuple[dict[str, Any], str]]) -> str:
    """Reliability diagram (accuracy vs confidence per bin) of each step's overall predictions.

    A point's area grows with the rows in its bin, so a wild point from a bin of a few rows reads as such.
    """
    size, ml, mt, mb = 340, 56, 16, 48
    legend_x = ml + size + 28

    def px(v: float) -> float:
        return ml + v * size

    def py(v: float) -> float:
        return mt + (1 - v) * size

    all_bins = [[b for b in (st.get("overall") or {}).get("reliability") or []
                 if b.get("count") and isinstance(b.get("confidence"), (int, float))
                 and isinstance(b.get("accuracy"), (int, float))] for st, _ in curves]
    biggest = max((b["count"] for bins in all_bins for b in bins), default=1) or 1
    width, height = legend_x + 300, mt + size + mb
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="reliability diagram">']
    for i in range(6):
        t = i / 5
        parts.append(f'<line x1="{px(t):.1f}" y1="{py(0):.1f}" x2="{px(t):.1f}" y2="{py(1):.1f}" stroke="#eaeef2"/>'
                     f'<line x1="{px(0):.1f}" y1="{py(t):.1f}" x2="{px(1):.1f}" y2="{py(t):.1f}" stroke="#eaeef2"/>'
                     f'<text x="{px(t):.1f}" y="{py(0) + 16:.1f}" text-anchor="middle" class="m">{t:.1f}</text>'
                     f'<text x="{px(0) - 6:.1f}" y="{py(t) + 4:.1f}" text-anchor="end" class="m">{t:.1f}</text>')
    parts += [f'<rect x="{ml}" y="{mt}" width="{size}" height="{size}" fill="none" stroke="#d0d7de"/>',
              f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(1)}" y2="{py(1)}" stroke="#8c959f" stroke-dasharray="3,3"/>',
              f'<text x="{px(0.5)}" y="{py(0) + 36:.1f}" text-anchor="middle">mean confidence in bin</text>',
              f'<text x="14" y="{py(0.5)}" transform="rotate(-90 14 {py(0.5)})" text-anchor="middle">'
              'accuracy in bin</text>']
    for j, ((step, color), bins) in enumerate(zip(curves, all_bins)):
        pts = " ".join(f"{px(b['confidence']):.1f},{py(b['accuracy']):.1f}" for b in bins)
        if pts:
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2" stroke-opacity="0.8"/>')
        for b in bins:
            r = 2.5 + 5.5 * math.sqrt(b["count"] / biggest)
            parts.append(f'<circle cx="{px(b["confidence"]):.1f}" cy="{py(b["accuracy"]):.1f}" r="{r:.1f}" '
                         f'fill="{color}" fill-opacity="0.75" stroke="#fff" stroke-width="0.8">'
                         f'<title>{esc(step.get("name"))}: n={esc(b["count"])}, confidence '
                         f'{esc(format(b["confidence"], ".3f"))}, accuracy {esc(format(b["accuracy"], ".3f"))}'
                         f'</title></circle>')
        ece = fmt_num((step.get("overall") or {}).get("ece"), ".4f")
        ly = mt + 14 + 24 * j
        parts.append(f'<line x1="{legend_x}" y1="{ly - 4}" x2="{legend_x + 24}" y2="{ly - 4}" stroke="{color}" '
                     f'stroke-width="2"/><circle cx="{legend_x + 12}" cy="{ly - 4}" r="4" fill="{color}"/>'
                     f'<text x="{legend_x + 32}" y="{ly}">step {esc(step.get("index"))} {esc(step.get("name"))} '
                     f'(ECE {esc(ece)})</text>')
    ly = mt + 14 + 24 * len(curves)
    parts.append(f'<line x1="{legend_x}" y1="{ly - 4}" x2="{legend_x + 24}" y2="{ly - 4}" stroke="#8c959f" '
                 f'stroke-dasharray="3,3"/><text x="{legend_x + 32}" y="{ly}" class="m">perfect calibration</text>'
                 f'<text x="{legend_x}" y="{ly + 24}" class="m">point area: rows in the bin</text>')
    parts.append("</svg>")
    return "".join(parts)


def _environment(report: dict[str, Any]) -> str:
    env = dict(report.get("environment") or {})
    tool = report.get("tool") or {}
    if tool:
        env.setdefault("edgefair", tool.get("version"))
    if not env:
        return ""
    rows = [("", [esc(k), esc(", ".join(map(str, v)) if isinstance(v, list) else v)]) for k, v in env.items()]
    return "<h2>Environment</h2>" + _table(["", "value"], rows, left=2)
