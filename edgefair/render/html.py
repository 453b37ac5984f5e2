"""report.html: one self-contained page (inline CSS and SVG, no scripts, no external resources) with
the Markdown summary's content plus every step's per-group table, a per-group change chart with CI
error bars and a reliability diagram. Every string from the report goes through `esc`."""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

from . import (
    DASH,
    baseline_step,
    confidence_label,
    describe_gate,
    extreme,
    failing_gates,
    gate_counts,
    fmt_ci,
    fmt_mb,
    fmt_ms,
    fmt_num,
    fmt_pct,
    fmt_pp,
    focus_step,
    gates_cell,
    insufficient_summary,
    is_labelled,
    fmt_ratio,
    no_failure_note,
    steps,
    warning_gates,
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
svg text{font:12px system-ui,sans-serif;fill:#1b1f24} svg text.m{fill:#57606a} svg text.b{font-weight:600}
"""


def esc(s: Any) -> str:
    """Escape any report value for HTML text and attribute context."""
    return html.escape(str(s), quote=True)


def render_html(report: dict[str, Any]) -> str:
    """The self-contained report page (report.html)."""
    ci_label = confidence_label(report)
    verdict = str(report.get("verdict") or "unknown")
    sel = report.get("selected")
    what = (f"selected step {esc(sel.get('step'))} <code>{esc(sel.get('name'))}</code> "
            f"(<code>{esc(sel.get('model'))}</code>)") if sel else "no model selected"
    cls = "pass" if verdict == "pass" else "fail"
    body = [
        f'<h1>edgefair report</h1><div class="banner {cls}">{esc(verdict.upper())} — {what}</div>',
        _context(report),
        _failing(report, ci_label),
        _warnings(report, ci_label),
        "<h2>Steps</h2>", _step_table(report),
        _charts(report, ci_label),
        "<h2>Per-step details</h2>",
        *(_step_details(report, s, ci_label) for s in steps(report)),
        _environment(report),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>edgefair report: {esc(verdict.upper())}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(b for b in body if b) + "\n</body></html>\n")


def _table(head: Iterable[str], rows: Iterable[tuple[str, list[Any]]], left: int = 1, *,
           nowrap: Iterable[int] = ()) -> str:
    """A table from already-escaped cells; `rows` are (tr class, cells); the first `left` columns align left.

    A cell may be `(html, colspan)`. Columns in `nowrap` (numbers, intervals) do not break across lines;
    the table scrolls sideways inside its own box instead of overflowing the page.
    """
    keep = set(nowrap)

    def cls(i: int, header: bool = False) -> str:
        c = ("l " if i < left else "") + ("n" if i in keep and not header else "")
        return f' class="{c.strip()}"' if c.strip() else ""

    th = "".join(f"<th{cls(i, True)}>{h}</th>" for i, h in enumerate(head))
    trs = []
    for rcls, cells in rows:
        tds, col = [], 0
        for c in cells:
            if isinstance(c, tuple):
                tds.append(f'<td class="note" colspan="{int(c[1])}">{c[0]}</td>')
                col += int(c[1])
            else:
                tds.append(f"<td{cls(col)}>{c}</td>")
                col += 1
        trs.append(f'<tr class="{esc(rcls)}">{"".join(tds)}</tr>')
    return f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{"".join(trs)}</tbody></table></div>'


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


def _failing(report: dict[str, Any], ci_label: str) -> str:
    failed = failing_gates(report)
    if not failed:
        note = no_failure_note(report)
        cls = "" if note == "No gate failed." else "banner warn"
        return f'<p class="{cls}">{esc(note)}</p>'
    rows = [("fail", [esc(s.get("index")), esc(s.get("name")), esc(g.get("gate")), esc(g.get("group") or DASH),
                      esc(fmt_num(g.get("value"), ".4g")), esc(fmt_ci(g.get("ci"), scale=1, digits=4)),
                      esc(fmt_num(g.get("threshold"), ".4g")), esc(describe_gate(g, ci_label))])
            for s, g in failed]
    return (f"<h2>Failing gates ({len(failed)})</h2>"
            + _table(["#", "step", "gate", "group", "value", ci_label, "threshold", "in words"], rows, left=8,
                   nowrap=(0, 1, 4, 5, 6)))


def _warnings(report: dict[str, Any], ci_label: str) -> str:
    """Step warnings and groups nobody checked, in full; gate results with status `warn` (undecided or
    not measured) counted per step, each step's list folded away: on a real run there are dozens."""
    items = []
    for s in steps(report):
        for w in s.get("warnings") or []:
            items.append(f"step {esc(s.get('index'))} <code>{esc(s.get('name'))}</code>: {esc(w)}")
    n_steps = len(steps(report))
    for key, n, idx, reason in insufficient_summary(report):
        where = "" if len(idx) == n_steps else f", step {esc(', '.join(map(str, idx)))}"
        items.append(f"Not evaluated — too little data: <code>{esc(key)}</code> (n={esc(n)}{where})"
                     f"{': ' + esc(reason) if reason else ''}. No gate protects this group.")
    warned = warning_gates(report)
    if not items and not warned:
        return ""
    out = ["<h2>Warnings</h2>"]
    if items:
        out.append("<ul class=\"loud\">" + "".join(f"<li>⚠ {i}</li>" for i in items) + "</ul>")
    if warned:
        sel = (report.get("selected") or {}).get("step")
        by_step: dict[Any, list[dict[str, Any]]] = {}
        step_of: dict[Any, dict[str, Any]] = {}
        for s, g in warned:
            by_step.setdefault(s.get("index"), []).append(g)
            step_of[s.get("index")] = s
        order = sorted(by_step, key=lambda i: (i != sel, str(i) if not isinstance(i, int) else f"{i:09d}"))
        out.append(f"<p class=\"warnnote\">⚠ {len(warned)} gate result{'s' if len(warned) != 1 else ''} "
                   f"in {len(by_step)} step{'s' if len(by_step) != 1 else ''} neither passed nor failed "
                   "(status <code>warn</code>: the interval was too wide to decide, or the group was not "
                   "measured). Open a step to see them:</p>")
        for i in order:
            s, gates = step_of[i], by_step[i]
            per_gate: dict[str, int] = {}
            for g in gates:
                per_gate[str(g.get("gate"))] = per_gate.get(str(g.get("gate")), 0) + 1
            counts = ", ".join(f"{esc(k)} ×{v}" for k, v in per_gate.items())
            rows = [("warn", [esc(g.get("gate")), esc(g.get("group") or DASH), esc(describe_gate(g, ci_label))])
                    for g in gates]
            badge = ' <span class="badge">selected</span>' if i == sel else ""
            out.append(f"<details><summary>step {esc(i)} <code>{esc(s.get('name'))}</code>{badge}: "
                       f"{len(gates)} warn <span class=\"muted\">({counts})</span></summary>"
                       + _table(["gate", "group", "in words"], rows, left=3) + "</details>")
    return "".join(out)


def _step_table(report: dict[str, Any]) -> str:
    base = baseline_step(report)
    labelled = is_labelled(report)
    sel = (report.get("selected") or {}).get("step")
    rows = []
    for s in steps(report):
        lat = s.get("latency") or {}
        key, worst = extreme(s, "accuracy_delta", lowest=True) if labelled else (None, None)
        fkey, flip = extreme(s, "flip_rate", lowest=False)
        counts = gates_cell(s)
        cls = "fail" if s.get("gates") and not s.get("passed", True) else ("selected" if s.get("index") == sel else "")
        rows.append((cls, [
            esc(s.get("index")) + (' <span class="badge">✓ selected</span>' if s.get("index") == sel else ""),
            f"<code>{esc(s.get('name'))}</code> <span class=\"grp\">{esc(s.get('kind'))}</span>",
            esc(fmt_mb(s.get("size_bytes"))),
            esc(fmt_ms(lat.get("p50_ms"))), esc(fmt_ms(lat.get("p95_ms"))),
            _ratio_cell(s, base),
            esc(fmt_pct((s.get("overall") or {}).get("accuracy"))),
            esc(fmt_num((s.get("overall") or {}).get("ece"), ".4f")),
            DASH if worst is None else f"{esc(fmt_pp(worst))}&nbsp;pp <span class=\"grp\">{esc(key)}</span>",
            DASH if flip is None else f"{esc(fmt_pct(flip))} <span class=\"grp\">{esc(fkey)}</span>",
            esc(counts),
        ]))
    return _table(["#", "step <span class=\"grp\">kind</span>", "size MB", "p50 ms", "p95 ms", "p50 vs base",
                   "accuracy", "ECE", "worst group Δacc", "max flip", "gates"], rows, left=2,
                  nowrap=(0, 2, 3, 4, 5, 6, 7, 10))


def _ratio_cell(step: dict[str, Any], base: dict[str, Any] | None) -> str:
    """'0.68×' with its interval on a second, smaller line."""
    text = fmt_ratio(step, base)
    ratio, sep, ci = text.partition(" (")
    return esc(ratio) + (f' <span class="grp">({esc(ci)}</span>' if sep else "")


def _group_rows(step: dict[str, Any], labelled: bool) -> tuple[list[str], list[tuple[str, list[str]]]]:
    if labelled:
        head = ["group", "n", "accuracy", "accuracy CI", "Δacc pp", "Δacc CI", "ECE", "ΔECE pp", "ΔECE CI",
                "flip", "flip CI", "McNemar p (Holm)"]
    else:
        head = ["group", "n", "agreement", "flip", "flip CI", "cosine mean", "cosine min", "rel. error"]
    rows = []
    for key, g in (step.get("groups") or {}).items():
        if g.get("status") != "ok":
            note = f"⚠ insufficient data{': ' + esc(g['reason']) if g.get('reason') else ''}"
            rows.append(("insufficient", [f"<code>{esc(key)}</code>", esc(fmt_num(g.get("n"), "d")),
                                          (note, len(head) - 2)]))
            continue
        if labelled:
            cells = [fmt_pct(g.get("accuracy")), fmt_ci(g.get("accuracy_ci")), fmt_pp(g.get("accuracy_delta")),
                     fmt_ci(g.get("accuracy_delta_ci"), signed=True), fmt_num(g.get("ece"), ".4f"),
                     fmt_pp(g.get("ece_delta"), 2), fmt_ci(g.get("ece_delta_ci"), digits=2, signed=True),
                     fmt_pct(g.get("flip_rate"), 2), fmt_ci(g.get("flip_rate_ci"), digits=2),
                     fmt_num(g.get("mcnemar_p_holm"), ".3g")]
        else:
            cells = [fmt_pct(g.get("agreement"), 2), fmt_pct(g.get("flip_rate"), 2), fmt_ci(g.get("flip_rate_ci"), digits=2),
                     fmt_num(g.get("cosine_mean"), ".4f"), fmt_num(g.get("cosine_min"), ".4f"),
                     fmt_num(g.get("rel_error_mean"), ".4f")]
        rows.append(("", [f"<code>{esc(key)}</code>", esc(fmt_num(g.get("n"), "d"))] + [esc(c) for c in cells]))
    return head, rows


def _step_details(report: dict[str, Any], step: dict[str, Any], ci_label: str) -> str:
    labelled = is_labelled(report)
    sel = (report.get("selected") or {}).get("step")
    head, rows = _group_rows(step, labelled)
    parts = [f"<details{' open' if step.get('index') == sel else ''}><summary>step {esc(step.get('index'))} "
             f"<code>{esc(step.get('name'))}</code> ({esc(step.get('kind'))}"
             f"{', input ' + esc(step['input']) if step.get('input') else ''}) — gates: {esc(gates_cell(step))}"
             f"</summary>",
             f"<p class=\"muted\">model <code>{esc(step.get('model'))}</code>, sha256 "
             f"<code>{esc(step.get('sha256'))}</code></p>",
             "<h3>Groups</h3>", _table(head, rows, left=1, nowrap=range(1, len(head)))]
    disp = step.get("disparity") or {}
    if disp and labelled:
        drows = []
        for scope, d in disp.items():
            acc = d.get("accuracy") or {}
            drows.append(("", [f"<code>{esc(scope)}</code>", esc(fmt_pp(acc.get("gap"), signed=False)),
                               f"{esc(acc.get('worst_group') or DASH)}", esc(fmt_pp(d.get("accuracy_gap_growth"))),
                               esc(fmt_ci(d.get("accuracy_gap_growth_ci"), signed=True)),
                               esc(fmt_pp(d.get("demographic_parity_difference"), signed=False)),
                               esc(fmt_pp(d.get("equalized_odds_difference"), signed=False))]))
        parts.append("<h3>Disparity between groups</h3>")
        parts.append(_table(["scope", "accuracy gap pp", "worst group", "gap growth pp", f"growth {ci_label}",
                             "demographic parity diff. pp", "equalized odds diff. pp"], drows, left=1,
                            nowrap=(1, 3, 4, 5, 6)))
    gates = step.get("gates") or []
    if gates:
        rank = {"fail": 0, "warn": 1, "pass": 2}  # failures first; stable within a status
        ordered = sorted(gates, key=lambda g: rank.get(str(g.get("status")), 1))
        grows = [(g.get("status", ""), [esc(g.get("status")), esc(g.get("gate")), esc(g.get("group") or DASH),
                                        esc(describe_gate(g, ci_label))]) for g in ordered]
        c = gate_counts(step)
        parts.append(f"<h3>Gates <span class=\"muted\">({esc(gates_cell(step))}; failures first)</span></h3>"
                     if c.get("fail") else f"<h3>Gates <span class=\"muted\">({esc(gates_cell(step))})</span></h3>")
        parts.append(_table(["status", "gate", "group", "in words"], grows, left=4, nowrap=(0, 1)))
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
                   f"bars: {esc(ci_label)}; colour: the step's gate on that group.</p>")
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
    coloured by the step's gate on that group (pass / warn / fail) when there is one; without gates,
    a signed change whose whole interval is below zero is red. The gate's limit is a dashed red line.
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
        if key in status:
            color = _STATUS_COLOUR.get(status[key], _NEUTRAL)
        else:
            color = _DROP if signed and ok_ci(ci) and ci[1] < 0 else _NEUTRAL
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
        legend += [(_STATUS_COLOUR[s], f"gate {s}" + {"pass": "ed", "warn": " (undecided)", "fail": "ed"}[s])
                   for s in ("pass", "warn", "fail") if s in used]
    elif signed:
        legend += [(_DROP, "whole interval below 0 (accuracy dropped)"), (_NEUTRAL, "interval includes 0 or above")]
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
