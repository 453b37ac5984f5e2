"""report.html: one self-contained page that works from file:// (inline CSS and SVG, one small inline
script that opens the folded sections for printing; no external resources, no network).

Its first screen: the verdict, the model to ship, the largest harm (group, gate and size), and every
check whose observed harm is beyond its limit. Then the steps; the latency / worst-group-harm
frontier; for every gate in force a forest plot of every group's change at every step, one step at a
time through a selector made of radio buttons and CSS (no script, no server); latency per step;
reliability diagrams per group (baseline vs the model to ship); and every step's tables. Colours are
Okabe-Ito's and outcomes also have a shape; the page fits a 420 px screen (wide tables and charts
scroll in their own box) and prints every step. Every string from the report goes through `esc`.
"""

from __future__ import annotations

import html
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
    harm_sentence,
    insufficient_summary,
    is_absolute,
    is_labelled,
    largest_harm,
    metric_cell,
    metric_columns,
    no_failure_note,
    ok_groups,
    portable_path,
    previous_release,
    rule_text,
    status_text,
    step_result,
    steps,
    thresholds,
    undecided_note,
    who,
    why_failed,
    without_local_dirs,
    worst_gate,
    worst_harm,
)
from .charts import (
    BLACK,
    BLUE,
    esc,
    forest_axis,
    forest_chart,
    frontier_chart,
    frontier_points,
    latency_chart,
    reliability_chart,
    status_legend,
)

CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
 padding:0 1em;color:#1b1f24;overflow-wrap:anywhere}
h1{font-size:1.6em;margin:.2em 0} h2{margin-top:1.8em;border-bottom:1px solid #d0d7de;padding-bottom:.2em}
h3{font-size:1em;margin:1.2em 0 .2em}
.scroll,.chart{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right;vertical-align:top;overflow-wrap:normal}
th{background:#f6f8fa} td.l,th.l{text-align:left} td.n,th.n{white-space:nowrap}
td.note{text-align:left;color:#8a4600} td.w,th.w{min-width:10em}
table.meta{width:100%} table.meta th{width:9em} table.meta td code{word-break:break-all;white-space:normal}
.banner{padding:.8em 1em;border-radius:6px;font-size:1.2em;font-weight:600}
.pass{background:#d5efe6;color:#00573f} .fail{background:#fbe1d3;color:#8f3500} .warn{background:#fcefc9;color:#6b4500}
tr.fail td{background:#fbe1d3} tr.warn td,tr.insufficient td{background:#fcefc9} tr.selected td{font-weight:600}
tr.selected td:first-child{box-shadow:inset 4px 0 0 #0072B2}
.badge{display:inline-block;font-size:.8em;font-weight:600;padding:0 .45em;border-radius:1em;background:#dcecf7;color:#00507d}
.grp{display:block;font-size:.85em;color:#57606a;font-weight:normal}
code{font-size:.92em;background:#f6f8fa;padding:0 .25em;border-radius:3px}
.muted{color:#57606a} ul.loud li{font-weight:600;color:#6b4500}
p.warnnote{color:#6b4500;font-weight:600;margin-bottom:.3em}
p.largest{font-size:1.08em;border-left:4px solid #D55E00;padding:.3em .8em;background:#fdf3ee}
p.largest.ok{border-left-color:#009E73;background:#eef8f4}
details{margin:.5em 0} summary{cursor:pointer;font-weight:600}
details>:not(summary){margin-left:.6em}
svg{max-width:100%;height:auto}
.chart svg{display:block}
.smalls{display:flex;flex-wrap:wrap;gap:.8em 1.2em} .smalls figure{margin:0;width:228px;max-width:100%}
.smalls svg{display:block;width:228px;max-width:100%}
b.over{color:#8f3500} ul.limits{columns:2 22em;margin:.2em 0} ul.fail li{color:#8f3500}
td code{white-space:nowrap} td code.g{white-space:normal}
p.legend span{display:inline-block;margin-right:1.2em;white-space:nowrap} p.legend svg{vertical-align:middle}
.picker{margin:.4em 0 .8em} .picker-title{font-weight:600;margin-right:.4em}
input.vh{position:absolute;opacity:0;width:1px;height:1px;margin:0}
label.tab{display:inline-block;margin:.15em .2em .15em 0;padding:.15em .6em;border:1px solid #0072B2;border-radius:1em;
 cursor:pointer;color:#00507d;background:#fff}
input.vh:focus-visible+label.tab{outline:3px solid #E69F00;outline-offset:1px}
.panel{display:none}
@media (max-width:600px){body{margin:1em auto;padding:0 .5em} .chart svg{max-width:none;width:600px}
 .banner{font-size:1em} ul.limits{columns:1}
 table.cards thead{display:none} table.cards,table.cards tbody,table.cards tr{display:block;width:100%}
 table.cards tr{border:1px solid #d0d7de;border-radius:6px;margin:0 0 .6em;overflow:hidden}
 table.cards td{display:flex;justify-content:space-between;gap:1em;border:none;border-bottom:1px solid #eaeef2;
  text-align:right;white-space:normal}
 table.cards td::before{content:attr(data-label);font-weight:600;text-align:left;color:#57606a}
 table.cards td code{white-space:normal;word-break:break-all}}
svg text{font:12px system-ui,sans-serif;fill:#1b1f24} svg text.m{fill:#57606a} svg text.b{font-weight:600}
svg text.lim{fill:#8f3500;font-size:11px}
@media print{body{max-width:none;margin:0;padding:0;font-size:11px} label.tab,.picker-title{display:none}
 .panel{display:block!important;break-inside:avoid-page} .panel h3.step{display:block}
 .scroll,.chart{overflow:visible} .chart svg{min-width:0;width:100%} h2,h3{break-after:avoid}
 tr,svg,p.largest{break-inside:avoid}
 .banner,tr.fail td,tr.warn td,.pass,.fail,.warn{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""

# Opens every folded section before printing and folds it back afterwards: the only script.
SCRIPT = ("(function(){var o=[];addEventListener('beforeprint',function(){document.querySelectorAll('details:not([open])')"
          ".forEach(function(d){d.open=true;o.push(d)})});addEventListener('afterprint',function(){o.forEach(function(d)"
          "{d.open=false});o=[]})})();")


def render_html(report: dict[str, Any]) -> str:
    """The self-contained report page (report.html)."""
    ci_label = confidence_label(report)
    verdict = str(report.get("verdict") or "unknown")
    forest_css, forest = _forest_section(report, ci_label)
    body = [
        "<h1>edgefair report</h1>",
        _first_screen(report, ci_label),
        _context(report),
        _warnings(report),
        "<h2>Steps</h2>", _step_table(report),
        _previous_section(report),
        _frontier_section(report),
        forest,
        _latency_section(report),
        _reliability_section(report),
        _repairs(report),
        "<h2>Per-step details</h2>",
        f"<p class=\"muted\">Rates in percent; changes from the baseline in brackets ({esc(UNITS_NOTE)}). "
        "<i>det.</i> = min_detectable: the smallest harm that fails on evidence at the group's size.</p>",
        *(_step_details(report, s, ci_label) for s in steps(report)),
        _environment(report),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>edgefair report: {esc(verdict.upper())}</title><style>{CSS}{forest_css}</style></head><body>\n"
            + "\n".join(b for b in body if b) + f"\n<script>{SCRIPT}</script>\n</body></html>\n")


def largest_harm_html(report: dict[str, Any], ci_label: str) -> str:
    """The largest harm of any compressed step relative to its limit (group, gate, size), and the
    largest at the model to ship when that is another step."""
    found = largest_harm(report)
    if found is None:
        return ""
    step, gate = found
    beyond = bool(gate.get("exceeds"))
    out = [f'<p class="largest{"" if beyond else " ok"}"><b>Largest harm:</b> {_sentence(step, gate, ci_label)}.</p>']
    sel = report.get("selected")
    sel_step = next((s for s in steps(report) if sel and s.get("index") == sel.get("step")), None)
    if sel_step is not None and sel_step is not step and sel_step.get("index", 0) > 0:
        g = worst_harm(sel_step)
        if g is not None:
            ok = " ok" if not g.get("exceeds") else ""
            out.append(f'<p class="largest{ok}"><b>At the model to ship:</b> {_sentence(sel_step, g, ci_label)}.</p>')
    return "".join(out)


def _sentence(step: dict[str, Any], gate: dict[str, Any], ci_label: str) -> str:
    """`harm_sentence` as HTML: its words escaped, the group and step names as <code> (escaped too)."""
    names: list[str] = []

    def token(key: str) -> str:
        names.append(key)
        return f"\x00{len(names) - 1}\x00"

    text = esc(harm_sentence(step, gate, ci_label, token))
    return re.sub("\x00(\\d+)\x00", lambda m: _code(names[int(m.group(1))]), text)


def _first_screen(report: dict[str, Any], ci_label: str) -> str:
    """Verdict, model to ship and why, thresholds, every exceeded check, failed steps, undecided count."""
    verdict = str(report.get("verdict") or "unknown")
    sel = report.get("selected")
    what = (f"ship step {esc(sel.get('step'))} <code>{esc(sel.get('name'))}</code> "
            f"(<code>{esc(sel.get('model'))}</code>)") if sel else "no model selected"
    out = [f'<div class="banner {"pass" if verdict == "pass" else "fail"}">{esc(verdict.upper())} — {what}</div>',
           largest_harm_html(report, ci_label)]
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
            f"<code>{esc(e.get('name'))}</code>", who(e, _gcode), esc(gate_words(e.get("gate"))),
            f"<b>{esc(fmt_observed(e))}</b>", esc(fmt_limit(e)), esc(fmt_gate_ci(e.get("gate"), e.get("ci"))),
            esc(status_text(e)), esc(fmt_num(e.get("n"), "d")), esc(fmt_detectable(e)), esc(fmt_num(e.get("p_holm"), ".2g"))])
            for e in rows]
        out.append(f"<h2>Observed harm beyond a limit ({len(rows)} check{'s' if len(rows) != 1 else ''}"
                   f"{f', {at_sel} at the selected model' if sel_i is not None else ''})</h2>"
                   "<p class=\"muted\">Every check whose observed value is beyond its limit, whatever the evidence "
                   "decided.</p>"
                   + _table(["#", "step", "group", "gate", "observed", "limit", ci_label, "status", "n", "det.", "p (Holm)"],
                            trs, left=4, nowrap=(0, 4, 5, 6, 7, 8, 9, 10), cards=True, also_left=(7,), words=(3,)))
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
           nowrap: Iterable[int] = (), cards: bool = False, also_left: Iterable[int] = (),
           words: Iterable[int] = ()) -> str:
    """A table from already-escaped cells; `rows` are (tr class, cells); the first `left` columns align left.
    Columns in `words` (prose: gate names, reasons) keep a readable width instead of one word a line.

    A cell may be `(html, colspan)`. Columns in `nowrap` (numbers, intervals) do not break across lines;
    the table scrolls sideways inside its own box instead of overflowing the page. `cards`: on a
    narrow screen each row becomes a card of "column: value" lines instead of scrolling.
    """
    keep, lefts, wide = set(nowrap), set(also_left), set(words)
    head = list(head)
    labels = [esc(html.unescape(re.sub(r"<[^>]+>", " ", h)).split("  ")[0].strip()) for h in head]

    def cls(i: int, header: bool = False) -> str:
        c = (("l " if i < left or i in lefts else "") + ("n " if i in keep and not header else "")
             + ("w" if i in wide else ""))
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
                tds.append(f"<td{cls(col)}{label(col)}><span>{c}</span></td>" if cards else f"<td{cls(col)}>{c}</td>")
                col += 1
        trs.append(f'<tr class="{esc(rcls)}">{"".join(tds)}</tr>')
    table_cls = ' class="cards"' if cards else ""
    return (f'<div class="scroll"><table{table_cls}><thead><tr>{th}</tr></thead>'
            f'<tbody>{"".join(trs)}</tbody></table></div>')


def _context(report: dict[str, Any]) -> str:
    """What was run, on what: paths as the recipe names them (relative to its folder), never this
    machine's absolute ones."""
    src = report.get("source") or {}
    ev = (report.get("data") or {}).get("eval") or {}
    recipe = report.get("recipe") or {}
    rel = recipe.get("path") is not None and not is_absolute(str(recipe["path"]))
    items = [
        ("recipe" + (" (from the output folder)" if rel else ""),
         None if recipe.get("path") is None else portable_path(report, recipe.get("path"))),
        ("recipe sha256", recipe.get("sha256")),
        ("model source", None if src.get("spec") is None else portable_path(report, src.get("spec"))),
        ("source sha256", src.get("sha256")),
        ("eval data (from the recipe's folder)", None if ev.get("path") is None else portable_path(report, ev.get("path"))),
        ("eval rows", ev.get("n")),
        ("labels", None if not ev else ("yes" if is_labelled(report) else "no (label-free fidelity only)")),
        ("written", report.get("created_at")),
    ]
    rows = "".join(f"<tr><th class=\"l\">{esc(k)}</th><td class=\"l\"><code>{esc(v)}</code></td></tr>"
                   for k, v in items if v is not None)
    return f'<div class="scroll context"><table class="meta">{rows}</table></div>' if rows else ""


def _warnings(report: dict[str, Any]) -> str:
    """Step warnings and groups nobody checked, in full (undecided checks: the first screen's count
    and each step's gate table)."""
    items = []
    for s in steps(report):
        for w in s.get("warnings") or []:
            items.append(f"step {esc(s.get('index'))} <code>{esc(s.get('name'))}</code>: "
                         f"{esc(without_local_dirs(report, str(w)))}")
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


def _gcode(key: Any) -> str:
    """A group key as <code> that may wrap after each '&' in a table cell (intersections are long)."""
    return f'<code class="g">{_breakable(key)}</code>'


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
            esc(status_text(g)), esc(gate_words(g.get("gate"))), who(g, _gcode),
            (f'<b class="over">{esc(fmt_observed(g))}</b>' if g.get("exceeds") else esc(fmt_observed(g))),
            esc(fmt_gate_ci(g.get("gate"), g.get("ci"))), esc(fmt_limit(g)), esc(fmt_detectable(g)),
            esc(fmt_num(g.get("n"), "d")), esc(fmt_num(g.get("p_holm"), ".2g")), esc(g.get("reason") or "")])
            for g in ordered]
        c = gate_counts(step)
        order = "; failures, then checks beyond the limit, first" if c.get("fail") or any(g.get("exceeds") for g in gates) else ""
        parts.append(f"<h3>Gate checks <span class=\"muted\">({esc(gates_cell(step))}{order})</span></h3>")
        parts.append(_table(["status", "gate", "group", "observed", ci_label, "limit", "det.", "n", "p (Holm)", "reason"],
                            grows, left=3, nowrap=(0, 3, 4, 5, 6, 7, 8), also_left=(9,), words=(1, 9)))
    parts.append("</details>")
    return "".join(parts)


def _forest_section(report: dict[str, Any], ci_label: str) -> tuple[str, str]:
    """(CSS, HTML): a forest plot per gate in force for every compressed step, one step shown at a time.

    The selector is a radio button per step followed by the panels, and one CSS rule per step shows
    that step's panel when its button is checked: no script, no server, so it works from file://.
    Print shows every step. The x axis of a gate is the same at every step."""
    names = [n for n in gated_names(report) if any(g.get("gate") == n for s in steps(report) for g in s.get("gates") or [])]
    compressed = [s for s in steps(report) if s.get("index", 0) > 0 and s.get("gates")]
    if not names or not compressed:
        return "", ""
    focus, _ = focus_step(report)
    default = focus if focus in compressed else compressed[-1]
    axes = {n: forest_axis(report, n) for n in names}
    css, radios, panels = [], [], []
    for s in compressed:
        i = int(s.get("index", 0))
        css.append(f"#fs-{i}:checked~.panels .p-{i}{{display:block}}"
                   f"#fs-{i}:checked+label.tab{{background:{BLUE};color:#fff}}")
        mark = " ✓" if s is focus else ""
        bad = " ✗" if step_result(s) == "fail" else ""
        radios.append(f'<input type="radio" class="vh" name="forest-step" id="fs-{i}" value="{i}"'
                      f'{" checked" if s is default else ""}><label class="tab" for="fs-{i}">{i} '
                      f'{esc(s.get("name"))}{mark}{bad}</label>')
        charts = []
        for n in names:
            limit = next((g.get("threshold") for g in s.get("gates") or [] if g.get("gate") == n), None)
            charts.append(f"<h4>{esc(gate_words(n))} <span class=\"muted\">(limit {esc(fmt_limit(n, limit))}; "
                          f"<code>{esc(n)}</code>)</span></h4>"
                          f"<div class=\"chart\">{forest_chart(s, n, axes[n], ci_label)}</div>")
        panels.append(f'<div class="panel p-{i}" data-step="{i}"><h3 class="step">Step {i} <code>{esc(s.get("name"))}</code> '
                      f'— {esc(step_result(s))}; gate checks: {esc(gates_cell(s))}</h3>{"".join(charts)}</div>')
    html_ = ("<section class=\"forest\"><h2>Every group's change, per gate and step</h2>"
             f"<p class=\"muted\">For each gate in force, each group's observed harm at the chosen step (for a floor "
             f"on agreement or cosine: the score) with its {esc(ci_label)}, the gate's limit, and on the right the "
             "numbers and <i>det.</i> = min_detectable, the smallest harm that fails on evidence at the group's size. "
             "Same axis at every step; an arrow: the interval goes on beyond the axis.</p>"
             + status_legend()
             + '<span class="picker-title">Step:</span>' + "".join(radios)
             + '<div class="panels">' + "".join(panels) + "</div></section>")
    return "".join(css), html_


def _previous_section(report: dict[str, Any]) -> str:
    """`edgefair run --previous`: each group's change vs the last release's model, on the same rows."""
    found = previous_release(report)
    if found is None:
        return ""
    what, step, rows = found
    out = f"<h2>Compared with the last release</h2><p>Last release: {esc(what)}.</p>"
    if step is None or not rows:
        return out + "<p>No step of this run was compared.</p>"
    body = []
    for key, v, gate in rows:
        name = "<b>overall</b>" if key == "overall" else _gcode(key)
        if v.get("status") != "ok":
            body.append(("insufficient", [name, esc(fmt_num(v.get("n"), "d")),
                                          (esc(v.get("reason") or "insufficient data"), 5)]))
            continue
        check = DASH if gate is None else f"{esc(status_text(gate))}, det. {esc(fmt_detectable(gate))}"
        body.append((str((gate or {}).get("status") or ""), [
            name, esc(fmt_num(v.get("n"), "d")), esc(fmt_pct(v.get("previous_rate"))), esc(fmt_pct(v.get("rate"))),
            esc(f"{fmt_pp(v.get('change'))} ({fmt_ci(v.get('change_ci'), signed=True)})"),
            esc(f"{v.get('lost')} / {v.get('gained')}"), check]))
    return (out + f"<p class=\"muted\">Step {esc(step.get('index'))} <code>{esc(step.get('name'))}</code> against it, "
            f"per group: the rate on the same rows, its change in points ({esc(confidence_label(report))}), rows lost and "
            "gained, and the <code>max_group_regression_vs_previous</code> check when the recipe sets it.</p>"
            + _table(["group", "n", "last release", "this model", "change pp", "lost / gained", "check"], body, left=1,
                     nowrap=(1, 2, 3, 4, 5), also_left=(6,), cards=True))


def _frontier_section(report: dict[str, Any]) -> str:
    """Latency against the worst group's harm for every step or tune candidate, the frontier (no other
    step is both faster and less harmful), and for `edgefair tune` what was skipped or not tried."""
    pts = frontier_points(report)
    chart = frontier_chart(report)
    if not chart and not report.get("skipped") and not report.get("not_tried"):
        return ""
    out = ["<h2>Latency against worst-group harm</h2>"]
    if chart:
        out.append("<p class=\"muted\">Each step (tune: each candidate) at its p50 latency and the largest harm of "
                   "any group on any gate, as a multiple of that gate's limit (above the dashed line: beyond the "
                   "limit). Circles passed every gate, squares failed; the ring is the model to ship; the blue line "
                   "joins the frontier, the steps no other step beats on both.</p>")
        out.append(f'<div class="chart">{chart}</div>')
        base = baseline_step(report)
        rows = []
        for p in sorted(pts, key=lambda p: (p["p50"], p["step"].get("index", 0))):
            s, w = p["step"], p["worst"]
            worst = (f"{esc(gate_words(w.get('gate')))} {esc(fmt_observed(w))} at {who(w, _code)}"
                     if w else ("baseline" if s.get("index", 0) == 0 else DASH))
            ratio = DASH if p["ratio"] is None else f"{p['ratio']:.2f}×"
            fails = [g for g in s.get("gates") or [] if g.get("status") == "fail"]
            outcome = ("pass" if p["passed"] else "fail: " + _fail_counts(fails)) if s.get("gates") else DASH
            rows.append(("selected" if p["selected"] else "fail" if not p["passed"] else "", [
                esc(s.get("index")) + (' <span class="badge">selected</span>' if p["selected"] else ""),
                f"<code>{esc(s.get('name'))}</code>", esc(fmt_ms(p["p50"])), _ratio_cell(s, base),
                esc(fmt_mb(s.get("size_bytes"))), worst, esc(ratio), "yes" if p["front"] else "", outcome]))
        out.append(_table(["#", "step", "p50 ms", "p50 vs base", "size MB", "worst harm", "÷ limit", "frontier",
                           "outcome"], rows, left=2, nowrap=(0, 2, 3, 4, 6), also_left=(5, 8), cards=True))
    skipped, not_tried = report.get("skipped") or [], report.get("not_tried") or []
    if skipped:
        out.append("<h3>Skipped candidates</h3><ul>" + "".join(
            f"<li><code>{esc(s.get('name'))}</code> ({esc(s.get('kind'))}): {esc(s.get('reason'))}</li>" for s in skipped)
            + "</ul>")
    if not_tried:
        reasons: dict[str, list[str]] = {}
        for s in not_tried:
            reasons.setdefault(str(s.get("reason") or ""), []).append(f"<code>{esc(s.get('name'))}</code>")
        out.append("<h3>Not tried</h3><ul>" + "".join(
            f"<li>{', '.join(names)}{': ' + esc(r) if r else ''}</li>" for r, names in reasons.items()) + "</ul>")
    return "".join(out)


def _fail_counts(fails: list[dict[str, Any]]) -> str:
    """'accuracy drop at 8 groups; model size': which gates rejected a candidate, and how widely."""
    by_gate: dict[str, int] = {}
    for g in fails:
        by_gate[str(g.get("gate"))] = by_gate.get(str(g.get("gate")), 0) + (1 if g.get("group") not in (None, "") else 0)
    return "; ".join(esc(gate_words(n)) + (f" at {k} group{'s' if k != 1 else ''}" if k else "")
                     for n, k in by_gate.items())


def _latency_section(report: dict[str, Any]) -> str:
    limit = dict(thresholds(report)).get("max_latency_p95_ms")
    chart = latency_chart(report, limit)
    if not chart:
        return ""
    lat = next(((s.get("latency") or {}) for s in steps(report) if s.get("latency")), {})
    how = (f"{lat.get('threads', DASH)} thread(s), batch {lat.get('batch_size', DASH)}, "
           f"{lat.get('sessions', DASH)} session(s) per model, interleaved")
    return ("<h2>Latency per step</h2>"
            f"<p class=\"muted\">onnxruntime on the machine that ran edgefair ({esc(how)}), or the device "
            "measurements given with <code>--latency-from</code>. The ratio to the baseline is paired (measured "
            "interleaved).</p>"
            f'<div class="chart">{chart}</div>')


def _reliability_section(report: dict[str, Any]) -> str:
    """The overall reliability diagram and one per group that has enough data, baseline vs the model to
    ship (else the last step)."""
    base = baseline_step(report)
    step, title = focus_step(report)
    if base is None or step is None or not (base.get("overall") or {}).get("reliability"):
        return ""
    pair = step is not base

    def curves(key: str | None) -> list[tuple[str, dict[str, Any] | None, str, bool]]:
        block = (lambda s: s.get("overall")) if key is None else (lambda s: (s.get("groups") or {}).get(key))
        out = [(f"step 0 {base.get('name')}", block(base), BLACK, True)]
        if pair:
            out.append((f"step {step.get('index')} {step.get('name')}", block(step), BLUE, False))
        return out

    def ece(key: str | None) -> str:
        get = (lambda s: (s.get("overall") or {}).get("ece")) if key is None else \
            (lambda s: ((s.get("groups") or {}).get(key) or {}).get("ece"))
        return fmt_pct(get(base)) + (f" → {fmt_pct(get(step))}" if pair else "")

    smalls = []
    for key in [None, *ok_groups(step)]:
        label = "overall" if key is None else key
        n = ((step.get("overall") if key is None else (step.get("groups") or {}).get(key)) or {}).get("n")
        svg = reliability_chart(curves(key), label)
        if svg:
            name = "<b>overall</b>" if key is None else _code(key)
            smalls.append(f"<figure><figcaption>{name} <span class=\"muted\">n={esc(fmt_num(n, 'd'))}, "
                          f"ECE {esc(ece(key))}</span></figcaption>{svg}</figure>")
    if not smalls:
        return ""
    legend = (f"dashed, hollow: step 0 <code>{esc(base.get('name'))}</code>"
              + (f"; solid, filled: {esc(title)} (<code>{esc(step.get('name'))}</code>)" if pair else ""))
    return ("<h2>Reliability per group</h2>"
            "<p class=\"muted\">Accuracy per confidence bin against the bin's mean confidence (15 equal-width bins, "
            "empty ones left out); below the diagonal: over-confident. A point's area grows with its bin's rows. "
            f"{legend}.</p><div class=\"smalls\">" + "".join(smalls) + "</div>")

def _environment(report: dict[str, Any]) -> str:
    env = dict(report.get("environment") or {})
    tool = report.get("tool") or {}
    if tool:
        env.setdefault("edgefair", tool.get("version"))
    if not env:
        return ""
    rows = [("", [esc(k), esc(", ".join(map(str, v)) if isinstance(v, list) else v)]) for k, v in env.items()]
    return "<h2>Environment</h2>" + _table(["", "value"], rows, left=2)
