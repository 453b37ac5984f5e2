"""report.html: one self-contained page (inline CSS and SVG, no scripts, no external resources) with
the Markdown summary's content plus every step's per-group table, a per-group change chart with CI
error bars and a reliability diagram. Every string from the report goes through `esc`."""

from __future__ import annotations

import html
from typing import Any, Iterable

from . import (
    DASH,
    baseline_step,
    confidence_label,
    describe_gate,
    extreme,
    failing_gates,
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
table{border-collapse:collapse;margin:.6em 0;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:right;vertical-align:top}
th{background:#f6f8fa} td.l,th.l{text-align:left}
.banner{padding:.8em 1em;border-radius:6px;font-size:1.2em;font-weight:600}
.pass{background:#dafbe1;color:#116329} .fail{background:#ffebe9;color:#a40e26} .warn{background:#fff8c5;color:#7d4e00}
tr.fail td{background:#ffebe9} tr.warn td,tr.insufficient td{background:#fff8c5} tr.selected td{font-weight:600}
code{font-size:.92em;background:#f6f8fa;padding:0 .25em;border-radius:3px}
.muted{color:#57606a} ul.loud li{font-weight:600;color:#7d4e00}
details{margin:.5em 0} summary{cursor:pointer;font-weight:600}
svg text{font:11px system-ui,sans-serif;fill:#1b1f24}
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


def _table(head: Iterable[str], rows: Iterable[tuple[str, list[str]]], left: int = 1) -> str:
    """A table from already-escaped cells; `rows` are (tr class, cells); the first `left` columns align left."""
    th = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(head))
    trs = []
    for cls, cells in rows:
        tds = "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(cells))
        trs.append(f'<tr class="{esc(cls)}">{tds}</tr>')
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(trs)}</tbody></table>"


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
            + _table(["#", "step", "gate", "group", "value", ci_label, "threshold", "in words"], rows, left=8))


def _warnings(report: dict[str, Any], ci_label: str) -> str:
    items = []
    for s in steps(report):
        for w in s.get("warnings") or []:
            items.append(f"step {esc(s.get('index'))} <code>{esc(s.get('name'))}</code>: {esc(w)}")
    for s, g in warning_gates(report):
        items.append(f"step {esc(s.get('index'))} <code>{esc(g.get('gate'))}</code>: {esc(describe_gate(g, ci_label))}")
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
    rows = []
    for s in steps(report):
        lat = s.get("latency") or {}
        key, worst = extreme(s, "accuracy_delta", lowest=True) if labelled else (None, None)
        fkey, flip = extreme(s, "flip_rate", lowest=False)
        counts = gates_cell(s)
        cls = "fail" if s.get("gates") and not s.get("passed", True) else ("selected" if s.get("index") == sel else "")
        rows.append((cls, [
            esc(s.get("index")) + (" ✓ selected" if s.get("index") == sel else ""),
            f"<code>{esc(s.get('name'))}</code>", esc(s.get("kind")), esc(fmt_mb(s.get("size_bytes"))),
            esc(fmt_ms(lat.get("p50_ms"))), esc(fmt_ms(lat.get("p95_ms"))),
            fmt_ratio(s, base),
            esc(fmt_pct((s.get("overall") or {}).get("accuracy"))),
            esc(fmt_num((s.get("overall") or {}).get("ece"), ".4f")),
            DASH if worst is None else f"{esc(fmt_pp(worst))} pp <span class=\"muted\">{esc(key)}</span>",
            DASH if flip is None else f"{esc(fmt_pct(flip))} <span class=\"muted\">{esc(fkey)}</span>",
            esc(counts),
        ]))
    return _table(["#", "step", "kind", "size MB", "p50 ms", "p95 ms", "p50 vs base", "accuracy", "ECE",
                   "worst group Δacc", "max flip", "gates"], rows, left=3)


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
            rows.append(("insufficient", [f"<code>{esc(key)}</code>", esc(fmt_num(g.get("n"), "d")), note]
                         + [""] * (len(head) - 3)))
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
             _table(head, rows, left=1)]
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
        parts.append(_table(["scope", "accuracy gap pp", "worst group", "gap growth pp", f"growth {ci_label}",
                             "demographic parity diff. pp", "equalized odds diff. pp"], drows, left=1))
    gates = step.get("gates") or []
    if gates:
        grows = [(g.get("status", ""), [esc(g.get("status")), esc(g.get("gate")), esc(g.get("group") or DASH),
                                        esc(describe_gate(g, ci_label))]) for g in gates]
        parts.append(_table(["status", "gate", "group", "in words"], grows, left=4))
    parts.append("</details>")
    return "".join(parts)


def _charts(report: dict[str, Any], ci_label: str) -> str:
    step, title = focus_step(report)
    if step is None:
        return ""
    out = []
    if is_labelled(report) and step.get("index") != 0:
        out.append(f"<h2>Accuracy change per group, {esc(title)}</h2>"
                   f"<p class=\"muted\">Points: step minus baseline, in percentage points; bars: {esc(ci_label)}.</p>")
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
                   "the bin's mean confidence; the diagonal is perfect calibration.</p>")
        out.append(reliability_chart(curves if step is not base else curves[:1]))
    return "".join(out)


def interval_chart(step: dict[str, Any], field: str, ci_field: str, *, signed: bool) -> str:
    """Horizontal dot-and-whisker SVG of one fraction per ok group (scaled to points/percent)."""
    items = [(k, g.get(field), g.get(ci_field)) for k, g in (step.get("groups") or {}).items()
             if g.get("status") == "ok" and isinstance(g.get(field), (int, float))]
    if not items:
        return "<p class=\"muted\">No group has this measurement.</p>"
    vals = [v * 100 for _, v, _ in items] + [c * 100 for _, _, ci in items if ci for c in ci] + [0.0]
    lo, hi = min(vals), max(vals)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    label_w, plot_w, row_h, top = 290, 520, 20, 24
    width, height = label_w + plot_w + 70, top + row_h * len(items) + 10

    def x(v: float) -> float:
        return label_w + (v - lo) / (hi - lo) * plot_w

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{esc(field)} per group">',
             f'<line x1="{x(0):.1f}" y1="{top - 6}" x2="{x(0):.1f}" y2="{height - 6}" stroke="#8c959f" stroke-dasharray="3,3"/>',
             f'<text x="{x(lo):.1f}" y="12">{esc(format(lo, ".1f"))}</text>',
             f'<text x="{x(hi):.1f}" y="12" text-anchor="end">{esc(format(hi, ".1f"))}</text>',
             f'<text x="{x(0):.1f}" y="12" text-anchor="middle">0</text>']
    for i, (key, v, ci) in enumerate(items):
        y = top + i * row_h + row_h / 2
        color = "#cf222e" if signed and ci and ci[1] < 0 else "#0969da"
        parts.append(f'<text x="{label_w - 8}" y="{y + 4:.1f}" text-anchor="end">{esc(key)}</text>')
        if ci:
            parts.append(f'<line x1="{x(ci[0] * 100):.1f}" y1="{y:.1f}" x2="{x(ci[1] * 100):.1f}" y2="{y:.1f}" '
                         f'stroke="{color}" stroke-width="2"/>')
            for c in ci:
                parts.append(f'<line x1="{x(c * 100):.1f}" y1="{y - 5:.1f}" x2="{x(c * 100):.1f}" y2="{y + 5:.1f}" '
                             f'stroke="{color}" stroke-width="1.5"/>')
        parts.append(f'<circle cx="{x(v * 100):.1f}" cy="{y:.1f}" r="4" fill="{color}"/>')
        text = fmt_pp(v) if signed else fmt_pct(v, 2)
        parts.append(f'<text x="{label_w + plot_w + 8}" y="{y + 4:.1f}">{esc(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def reliability_chart(curves: list[tuple[dict[str, Any], str]]) -> str:
    """Reliability diagram (accuracy vs confidence per bin) of each step's overall predictions."""
    size, m = 320, 36

    def px(v: float) -> float:
        return m + v * size

    def py(v: float) -> float:
        return m + (1 - v) * size

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size + 2 * m + 180}" height="{size + 2 * m}" '
             'role="img" aria-label="reliability diagram">',
             f'<rect x="{m}" y="{m}" width="{size}" height="{size}" fill="none" stroke="#d0d7de"/>',
             f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(1)}" y2="{py(1)}" stroke="#8c959f" stroke-dasharray="3,3"/>',
             f'<text x="{px(0.5)}" y="{size + 2 * m - 6}" text-anchor="middle">confidence</text>',
             f'<text x="10" y="{py(0.5)}" transform="rotate(-90 10 {py(0.5)})" text-anchor="middle">accuracy</text>']
    for j, (step, color) in enumerate(curves):
        bins = [b for b in step["overall"]["reliability"]
                if b.get("count") and isinstance(b.get("confidence"), (int, float))
                and isinstance(b.get("accuracy"), (int, float))]
        pts = " ".join(f"{px(b['confidence']):.1f},{py(b['accuracy']):.1f}" for b in bins)
        if pts:
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
        for b in bins:
            parts.append(f'<circle cx="{px(b["confidence"]):.1f}" cy="{py(b["accuracy"]):.1f}" r="3" fill="{color}">'
                         f'<title>{esc(step.get("name"))}: n={esc(b["count"])}</title></circle>')
        ece = fmt_num((step.get("overall") or {}).get("ece"), ".4f")
        parts.append(f'<text x="{size + 2 * m}" y="{m + 14 + 18 * j}" fill="{color}">'
                     f'{esc(step.get("name"))} (ECE {esc(ece)})</text>')
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
