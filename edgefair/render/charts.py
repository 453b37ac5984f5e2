"""Inline SVG charts for report.html, drawn from report.json alone (no plotting library, no scripts,
no external resources): per-gate forest plots, reliability diagrams, latency and the latency /
worst-group-harm frontier.

Colours are the Okabe-Ito palette (distinguishable with the common colour-vision deficiencies), and
a gate's outcome is also told by the marker's shape (pass: circle, undecided: diamond, fail: square),
never by colour alone. Every string from the report goes through `esc`. Charts decide nothing:
statuses come from the gate entries.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

from . import (
    DASH,
    PCT_GATES,
    PP_GATES,
    SCOPE_GATES,
    fmt_detectable,
    fmt_gate_ci,
    fmt_limit,
    fmt_ms,
    fmt_num,
    fmt_observed,
    gate_unit,
    gate_words,
    group_gates,
    latency_ratio,
    frontier_points,
    steps,
    who,
)

# Okabe & Ito (2008), "Color Universal Design".
BLACK, ORANGE, SKY, GREEN, YELLOW, BLUE, VERMILLION, PURPLE = (
    "#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
GREY, LIGHT = "#6e7781", "#eaeef2"
STATUS_COLOUR = {"pass": GREEN, "warn": ORANGE, "fail": VERMILLION}
STATUS_SHAPE = {"pass": "circle", "warn": "diamond", "fail": "square"}
STATUS_WORD = {"pass": "passed", "warn": "undecided", "fail": "failed"}
LIMIT_COLOUR = VERMILLION


def esc(s: Any) -> str:
    """Escape any report value for HTML text and attribute context (SVG inline in HTML too)."""
    return html.escape(str(s), quote=True)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and not math.isinf(v)


def marker(shape: str, x: float, y: float, r: float, fill: str, *, stroke: str = "#fff", title: str = "") -> str:
    """A point drawn as a circle, diamond or square (the shape tells a gate's outcome without colour)."""
    if shape == "square":
        s = r * 0.9
        tag, attrs = "rect", f'x="{x - s:.1f}" y="{y - s:.1f}" width="{2 * s:.1f}" height="{2 * s:.1f}"'
    elif shape == "diamond":
        d = r * 1.25
        tag, attrs = "path", f'd="M{x:.1f} {y - d:.1f}L{x + d:.1f} {y:.1f}L{x:.1f} {y + d:.1f}L{x - d:.1f} {y:.1f}Z"'
    else:
        tag, attrs = "circle", f'cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}"'
    head = f'<{tag} {attrs} fill="{fill}" stroke="{stroke}"'
    return f"{head}><title>{esc(title)}</title></{tag}>" if title else head + "/>"


def ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values (steps of 1, 2, 2.5 or 5 x 10^k) inside [lo, hi]."""
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    t, out = math.ceil(lo / step - 1e-9) * step, []
    while t <= hi + step * 1e-9:
        out.append(0.0 if abs(t) < step * 1e-9 else round(t, 10))
        t += step
    return out


def _tick_text(t: float) -> str:
    return format(t, "g")


def _svg(width: float, height: float, label: str, body: Iterable[str], cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg"{c} width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{esc(label)}">'
            + "".join(body) + "</svg>")


def _text_width(s: str, px: float = 6.9) -> float:
    return len(s) * px


# ---- forest plots: one gate, one step, every group ---------------------------------------------------

def gate_scale(name: str) -> float:
    """Fractions shown in points or percent are drawn in those units (x100); cosine as it is."""
    return 100.0 if name in PP_GATES or name in PCT_GATES else 1.0


def axis_title(name: str) -> str:
    unit = {"pp": "percentage points", "%": "percent of rows"}.get(gate_unit(name), "")
    words = gate_words(name)
    if name == "max_group_accuracy_drop":
        words = "accuracy drop (baseline minus step)"
    lower = name in ("min_group_agreement", "min_group_cosine")
    return f"{words}{', ' + unit if unit else ''} — {'left' if lower else 'right'} of the dashed line is beyond the limit"


def forest_rows(step: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any] | None, str]]:
    """(label, gate entry or None, note) per row: every group of the step in the report's order (a
    group without a check says why), or every attribute for a between-group gate."""
    if name in SCOPE_GATES:
        return [(str(g.get("group")), g, "") for g in step.get("gates") or [] if g.get("gate") == name]
    per_group = group_gates(step)
    rows = []
    for key, g in (step.get("groups") or {}).items():
        entry = per_group.get(key, {}).get(name)
        if entry is None:
            why = (f"not tested: too little data (n={fmt_num(g.get('n'), 'd')})" if g.get("status") != "ok"
                   else "not tested")
            rows.append((key, None, why))
        else:
            rows.append((key, entry, ""))
    rows += [(k, e[name], "") for k, e in per_group.items() if k not in (step.get("groups") or {}) and name in e]
    return rows


def forest_axis(report: dict[str, Any], name: str) -> tuple[float, float]:
    """One x range per gate for every step, so switching steps compares like with like: every point,
    the limit and 0 (1 for a floor), and the intervals up to as far again beyond them (longer ones
    are cut at the edge with an arrow; their numbers are in the text column)."""
    s = gate_scale(name)
    points, ends, limits = [], [], []
    entries = [g for st in steps(report) for g in st.get("gates") or [] if g.get("gate") == name]
    # every point is on the axis; the intervals of checks too small to ever fail on evidence (no
    # min_detectable) swing widely and do not widen it when others can (cut with an arrow instead)
    decisive = [g for g in entries if _num(g.get("min_detectable"))] or entries
    for g in entries:
        if _num(g.get("value")):
            points.append(g["value"] * s)
        if _num(g.get("threshold")):
            limits.append(g["threshold"] * s)
    for g in decisive:
        ci = g.get("ci")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(c) for c in ci):
            ends += [ci[0] * s, ci[1] * s]
    anchor = [1.0 * s] if name in ("min_group_agreement", "min_group_cosine") else [0.0]
    core = points + limits + anchor
    lo, hi = min(core), max(core)
    width = max(hi - lo, 1e-6 if s == 1 else 0.5)
    if ends:
        lo, hi = min(lo, max(min(ends), lo - width)), max(hi, min(max(ends), hi + width))
    if name in ("min_group_agreement", "min_group_cosine"):
        hi = min(hi, 1.0 * s)
    pad = (hi - lo) * 0.04
    return lo - pad, hi + pad


def forest_chart(step: dict[str, Any], name: str, axis: tuple[float, float], ci_label: str) -> str:
    """Dot-and-whisker rows of one gate at one step: the observed harm (a score, for a floor) with its
    interval, the limit as a dashed line, and beside it the numbers and min_detectable."""
    rows = forest_rows(step, name)
    if not rows:
        return '<p class="muted">No check of this gate at this step.</p>'
    s = gate_scale(name)
    lo, hi = axis
    tks = ticks(lo, hi)
    longest = max(_text_width(label) for label, *_ in rows)
    label_w = min(max(longest + 24, 110), 300)
    plot_w, row_h, top, text_w = 380, 22, 48, 250
    seps = sum(1 for i in range(1, len(rows)) if _scope(rows[i][0]) != _scope(rows[i - 1][0]))
    rows_end = top + row_h * len(rows) + 6 * seps
    width, height = label_w + plot_w + text_w, rows_end + 46

    def x(v: float) -> float:
        return label_w + (min(max(v, lo), hi) - lo) / (hi - lo) * plot_w

    parts = [f'<text x="{label_w - 10}" y="{top - 12}" text-anchor="end" class="b">group</text>',
             f'<text x="{label_w + plot_w + 12}" y="{top - 12}" class="b">observed ({esc(ci_label)}) · det.</text>']
    stripes, body = [], []
    y0 = top
    for i, (label, entry, note) in enumerate(rows):
        if i and _scope(label) != _scope(rows[i - 1][0]):
            body.append(f'<line x1="4" y1="{y0 + 3:.1f}" x2="{width - 4:.0f}" y2="{y0 + 3:.1f}" stroke="#d0d7de"/>')
            y0 += 6
        y = y0 + row_h / 2
        if i % 2:
            stripes.append(f'<rect x="0" y="{y0:.1f}" width="{width:.0f}" height="{row_h}" fill="#f6f8fa"/>')
        shown = label + (f" ({entry['where']})" if entry and entry.get("where") else "")
        body.append(f'<text x="{label_w - 10}" y="{y + 4:.1f}" text-anchor="end">{esc(shown)}</text>')
        y0 += row_h
        if entry is None or not _num(entry.get("value")):
            why = note or (str(entry.get("reason") or "not measured") if entry else "not tested")
            body.append(f'<rect x="{label_w + 4}" y="{y - 8:.1f}" width="{_text_width(why, 6.4) + 8:.0f}" height="16" '
                        f'fill="#fff" fill-opacity="0.9"/><text x="{label_w + 8}" y="{y + 4:.1f}" class="m">{esc(why)}</text>')
            continue
        status = str(entry.get("status") or "")
        colour = STATUS_COLOUR.get(status, BLUE)
        ci = entry.get("ci")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(c) for c in ci):
            a, b = ci[0] * s, ci[1] * s
            body.append(f'<line x1="{x(a):.1f}" y1="{y:.1f}" x2="{x(b):.1f}" y2="{y:.1f}" stroke="{colour}" stroke-width="2"/>')
            for end, cut, sign in ((a, a < lo, -1), (b, b > hi, 1)):
                if cut:  # the interval goes on beyond the axis
                    xe = x(end)
                    body.append(f'<path d="M{xe:.1f} {y - 4:.1f}L{xe + 6 * sign:.1f} {y:.1f}L{xe:.1f} {y + 4:.1f}Z" fill="{colour}"/>')
                else:
                    body.append(f'<line x1="{x(end):.1f}" y1="{y - 5:.1f}" x2="{x(end):.1f}" y2="{y + 5:.1f}" '
                                f'stroke="{colour}" stroke-width="1.5"/>')
        tip = (f"{shown}: {gate_words(name)} {fmt_observed(entry)} ({ci_label} {fmt_gate_ci(name, ci)}), limit "
               f"{fmt_limit(entry)}, {STATUS_WORD.get(status, status)}; fails on evidence from {fmt_detectable(entry)}")
        body.append(marker(STATUS_SHAPE.get(status, "circle"), x(entry["value"] * s), y, 4.5, colour, title=tip))
        ci_text = fmt_gate_ci(name, ci)
        over = ' class="b"' if entry.get("exceeds") else ""
        body.append(f'<text x="{label_w + plot_w + 12}" y="{y + 4:.1f}"><tspan{over}>{esc(fmt_observed(entry))}</tspan>'
                    + (f' <tspan class="m">({esc(ci_text)})</tspan>' if ci_text != DASH else "")
                    + f' <tspan class="m">· det. {esc(fmt_detectable(entry, unit=False))}</tspan></text>')
    grid = []
    for t in tks:
        zero = (t == 0 and name not in ("min_group_agreement", "min_group_cosine"))
        style = 'stroke="#8c959f" stroke-dasharray="3,3"' if zero else f'stroke="{LIGHT}"'
        grid.append(f'<line x1="{x(t):.1f}" y1="{top - 4}" x2="{x(t):.1f}" y2="{rows_end}" {style}/>'
                    f'<text x="{x(t):.1f}" y="{rows_end + 15}" text-anchor="middle" class="m">{esc(_tick_text(t))}</text>')
    limit = next((g.get("threshold") for _, g, _ in rows if g and _num(g.get("threshold"))), None)
    if limit is not None:
        xl = x(limit * s)
        anchor = "start" if xl - label_w < 50 else "end" if label_w + plot_w - xl < 50 else "middle"
        grid.append(f'<line x1="{xl:.1f}" y1="{top - 20}" x2="{xl:.1f}" y2="{rows_end}" '
                    f'stroke="{LIMIT_COLOUR}" stroke-width="1.5" stroke-dasharray="6,3"/>'
                    f'<text x="{xl + (3 if anchor == "start" else -3 if anchor == "end" else 0):.1f}" y="{top - 24}" '
                    f'text-anchor="{anchor}" class="lim">limit {esc(fmt_limit(name, limit))}</text>')
    parts.append(f'<text x="{label_w + plot_w / 2:.1f}" y="{rows_end + 33}" text-anchor="middle" class="m">'
                 f'{esc(axis_title(name))}</text>')
    label = f"{gate_words(name)} per group at step {step.get('index')} {step.get('name')}"
    return _svg(width, height, label, stripes + grid + parts + body)


def _scope(key: str) -> str:
    """'sex=Male&race=Black' -> 'sex&race': the attribute(s) a group key is over."""
    return "&".join(part.split("=", 1)[0] for part in str(key).split("&"))


def status_legend() -> str:
    """The marker legend shared by the forest plots (HTML, so it wraps on a narrow screen)."""
    items = []
    for status in ("pass", "warn", "fail"):
        icon = _svg(14, 14, STATUS_WORD[status], [marker(STATUS_SHAPE[status], 7, 7, 4.5, STATUS_COLOUR[status])])
        items.append(f"<span>{icon} gate {STATUS_WORD[status]}</span>")
    line = _svg(26, 14, "limit", [f'<line x1="1" y1="7" x2="25" y2="7" stroke="{LIMIT_COLOUR}" stroke-width="1.5" '
                                   'stroke-dasharray="6,3"/>'])
    items.append(f"<span>{line} the gate's limit</span>")
    return '<p class="legend">' + " ".join(items) + "</p>"


# ---- reliability diagrams ----------------------------------------------------------------------------

def _bins(block: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [b for b in (block or {}).get("reliability") or []
            if b.get("count") and _num(b.get("confidence")) and _num(b.get("accuracy"))]


def reliability_chart(curves: list[tuple[str, dict[str, Any] | None, str, bool]], title: str, *,
                      size: int = 180) -> str:
    """One reliability diagram: accuracy per confidence bin against the bin's mean confidence, for each
    (label, metrics block with `reliability`, colour, dashed) curve. A point's area grows with its
    bin's rows. The axes start at the lowest populated bin (a binary model's confidence is >= 0.5)."""
    all_bins = [_bins(block) for _, block, _, _ in curves]
    if not any(all_bins):
        return ""
    lo_edge = min((b.get("lo", b["confidence"]) for bins in all_bins for b in bins), default=0.0)
    lo = max(0.0, math.floor(min(lo_edge, min(b["accuracy"] for bins in all_bins for b in bins)) * 10) / 10)
    ml, mt, mb, mr = 40, 8, 34, 8
    width, height = ml + size + mr, mt + size + mb
    biggest = max((b["count"] for bins in all_bins for b in bins), default=1) or 1

    def px(v: float) -> float:
        return ml + (v - lo) / (1 - lo) * size

    def py(v: float) -> float:
        return mt + (1 - (max(v, lo) - lo) / (1 - lo)) * size

    parts = []
    for t in ticks(lo, 1.0, 4):
        parts.append(f'<line x1="{px(t):.1f}" y1="{py(lo):.1f}" x2="{px(t):.1f}" y2="{py(1):.1f}" stroke="{LIGHT}"/>'
                     f'<line x1="{px(lo):.1f}" y1="{py(t):.1f}" x2="{px(1):.1f}" y2="{py(t):.1f}" stroke="{LIGHT}"/>'
                     f'<text x="{px(t):.1f}" y="{py(lo) + 13:.1f}" text-anchor="middle" class="m">{t:g}</text>'
                     f'<text x="{px(lo) - 4:.1f}" y="{py(t) + 4:.1f}" text-anchor="end" class="m">{t:g}</text>')
    parts += [f'<rect x="{ml}" y="{mt}" width="{size}" height="{size}" fill="none" stroke="#d0d7de"/>',
              f'<line x1="{px(lo):.1f}" y1="{py(lo):.1f}" x2="{px(1):.1f}" y2="{py(1):.1f}" stroke="#8c959f" stroke-dasharray="3,3"/>',
              f'<text x="{ml + size / 2:.1f}" y="{height - 4}" text-anchor="middle" class="m">confidence</text>',
              f'<text x="11" y="{mt + size / 2:.1f}" transform="rotate(-90 11 {mt + size / 2:.1f})" '
              'text-anchor="middle" class="m">accuracy</text>']
    for (label, _, colour, dashed), bins in zip(curves, all_bins):
        pts = " ".join(f"{px(b['confidence']):.1f},{py(b['accuracy']):.1f}" for b in bins)
        dash = ' stroke-dasharray="4,3"' if dashed else ""
        if pts:
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.8"{dash}/>')
        for b in bins:
            r = 1.8 + 4.2 * math.sqrt(b["count"] / biggest)
            fill = "#fff" if dashed else colour
            parts.append(f'<circle cx="{px(b["confidence"]):.1f}" cy="{py(b["accuracy"]):.1f}" r="{r:.1f}" fill="{fill}" '
                         f'stroke="{colour}" stroke-width="1.2"><title>{esc(label)}: n={esc(b["count"])}, confidence '
                         f'{b["confidence"]:.3f}, accuracy {b["accuracy"]:.3f}</title></circle>')
    return _svg(width, height, f"reliability diagram: {title}", parts)


# ---- latency -----------------------------------------------------------------------------------------

def latency_chart(report: dict[str, Any], limit_ms: float | None) -> str:
    """p50 per step with its interval (filled) and p95 (hollow), in ms on one axis, with the p95
    limit when it falls on the chart."""
    rows = [s for s in steps(report) if _num((s.get("latency") or {}).get("p50_ms"))]
    if not rows:
        return ""
    base = steps(report)[0] if steps(report) else None
    vals = []
    for s in rows:
        lat = s["latency"]
        vals += [lat["p50_ms"]] + [c for c in lat.get("p50_ci") or [] if _num(c)]
        if _num(lat.get("p95_ms")):
            vals.append(lat["p95_ms"])
    hi = max(vals) * 1.08
    limit_on = limit_ms is not None and _num(limit_ms) and limit_ms <= hi * 1.5
    if limit_on:
        hi = max(hi, limit_ms * 1.05)
    lo = 0.0
    sel = (report.get("selected") or {}).get("step")
    names, texts = [], []
    for s in rows:
        lat = s["latency"]
        names.append(f"{s.get('index')} {s.get('name')}" + (" ✓" if s.get("index") == sel else ""))
        ci = lat.get("p50_ci") if isinstance(lat.get("p50_ci"), (list, tuple)) and len(lat["p50_ci"]) == 2 else [None, None]
        ratio = latency_ratio(s, base)
        texts.append(f"{fmt_ms(lat['p50_ms'])} ms ({fmt_ms(ci[0])}–{fmt_ms(ci[1])}) · {fmt_ms(lat.get('p95_ms'))}"
                     + ("" if ratio is None else f" · {ratio:.2f}×"))
    label_w = min(max(max(_text_width(n, 7.6) for n in names) + 20, 110), 300)
    text_w = max(max(_text_width(t, 6.8) for t in texts), _text_width("p50 (CI) · p95 · vs baseline", 7.4)) + 20
    plot_w, row_h, top = 380, 24, 30
    rows_end = top + row_h * len(rows)
    width, height = label_w + plot_w + text_w, rows_end + 44

    def x(v: float) -> float:
        return label_w + (min(max(v, lo), hi) - lo) / (hi - lo) * plot_w

    parts = [f'<text x="{label_w - 10}" y="{top - 10}" text-anchor="end" class="b">step</text>',
             f'<text x="{label_w + plot_w + 12}" y="{top - 10}" class="b">p50 (CI) · p95 · vs baseline</text>']
    for t in ticks(lo, hi):
        parts.append(f'<line x1="{x(t):.1f}" y1="{top - 4}" x2="{x(t):.1f}" y2="{rows_end}" stroke="{LIGHT}"/>'
                     f'<text x="{x(t):.1f}" y="{rows_end + 15}" text-anchor="middle" class="m">{esc(_tick_text(t))}</text>')
    if limit_on:
        parts.append(f'<line x1="{x(limit_ms):.1f}" y1="{top - 4}" x2="{x(limit_ms):.1f}" y2="{rows_end}" '
                     f'stroke="{LIMIT_COLOUR}" stroke-width="1.5" stroke-dasharray="6,3"/>')
    for i, s in enumerate(rows):
        lat = s["latency"]
        y = top + row_h * i + row_h / 2
        colour = BLACK if s.get("index") == 0 else BLUE
        bold = ' class="b"' if s.get("index") == sel else ""
        parts.append(f'<text x="{label_w - 10}" y="{y + 4:.1f}" text-anchor="end"{bold}>{esc(names[i])}</text>')
        ci = lat.get("p50_ci")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(c) for c in ci):
            parts.append(f'<line x1="{x(ci[0]):.1f}" y1="{y:.1f}" x2="{x(ci[1]):.1f}" y2="{y:.1f}" stroke="{colour}" stroke-width="2"/>'
                         f'<line x1="{x(ci[0]):.1f}" y1="{y - 5:.1f}" x2="{x(ci[0]):.1f}" y2="{y + 5:.1f}" stroke="{colour}"/>'
                         f'<line x1="{x(ci[1]):.1f}" y1="{y - 5:.1f}" x2="{x(ci[1]):.1f}" y2="{y + 5:.1f}" stroke="{colour}"/>')
        parts.append(marker("circle", x(lat["p50_ms"]), y, 4.5, colour))
        if _num(lat.get("p95_ms")):
            parts.append(marker("diamond", x(lat["p95_ms"]), y, 4, "#fff", stroke=colour))
        parts.append(f'<text x="{label_w + plot_w + 12}" y="{y + 4:.1f}">{esc(texts[i])}</text>')
    axis = "latency per call, ms (filled: p50 with its interval; hollow: p95)"
    if limit_ms is not None and _num(limit_ms):
        axis += f"; p95 limit {fmt_ms(limit_ms)} ms" + ("" if limit_on else " (off this scale)")
    parts.append(f'<text x="{label_w + plot_w / 2:.1f}" y="{rows_end + 33}" text-anchor="middle" class="m">{esc(axis)}</text>')
    return _svg(width, height, "latency per step", parts)


# ---- the frontier: latency against worst-group harm --------------------------------------------------

def frontier_chart(report: dict[str, Any]) -> str:
    """Scatter of p50 latency (x, with its interval) against the worst group's harm as a multiple of
    its limit (y; 1 = at the limit). Points are numbered by step; the frontier is joined by a line."""
    pts = [p for p in frontier_points(report) if p["ratio"] is not None]
    if len(pts) < 2:
        return ""
    ml, mr, mt, mb, pw, ph = 58, 16, 16, 46, 560, 300
    width, height = ml + pw + mr, mt + ph + mb
    xs = [p["p50"] for p in pts] + [c for p in pts for c in (p["ci"] or []) if _num(c)]
    x_lo, x_hi = 0.0, max(xs) * 1.06
    y_lo = min(0.0, min(p["ratio"] for p in pts))
    y_hi = max(1.2, max(p["ratio"] for p in pts) * 1.1)

    def x(v: float) -> float:
        return ml + (v - x_lo) / (x_hi - x_lo) * pw

    def y(v: float) -> float:
        return mt + (1 - (v - y_lo) / (y_hi - y_lo)) * ph

    parts = []
    for t in ticks(x_lo, x_hi):
        parts.append(f'<line x1="{x(t):.1f}" y1="{mt}" x2="{x(t):.1f}" y2="{mt + ph}" stroke="{LIGHT}"/>'
                     f'<text x="{x(t):.1f}" y="{mt + ph + 15}" text-anchor="middle" class="m">{esc(_tick_text(t))}</text>')
    for t in ticks(y_lo, y_hi, 5):
        parts.append(f'<line x1="{ml}" y1="{y(t):.1f}" x2="{ml + pw}" y2="{y(t):.1f}" stroke="{LIGHT}"/>'
                     f'<text x="{ml - 6}" y="{y(t) + 4:.1f}" text-anchor="end" class="m">{esc(_tick_text(t))}</text>')
    parts += [f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#d0d7de"/>',
              f'<line x1="{ml}" y1="{y(1):.1f}" x2="{ml + pw}" y2="{y(1):.1f}" stroke="{LIMIT_COLOUR}" stroke-width="1.5" '
              f'stroke-dasharray="6,3"/><text x="{ml + pw - 4}" y="{y(1) - 5:.1f}" text-anchor="end" class="lim">'
              'at the limit</text>',
              f'<text x="{ml + pw / 2:.1f}" y="{height - 6}" text-anchor="middle" class="m">p50 latency per call, ms '
              '(bars: its interval)</text>',
              f'<text x="13" y="{mt + ph / 2:.1f}" transform="rotate(-90 13 {mt + ph / 2:.1f})" text-anchor="middle" '
              'class="m">worst group harm ÷ its limit</text>']
    front = sorted((p for p in pts if p["front"]), key=lambda p: p["p50"])
    if len(front) > 1:
        path = " ".join(f"{x(p['p50']):.1f},{y(p['ratio']):.1f}" for p in front)
        parts.append(f'<polyline points="{path}" fill="none" stroke="{SKY}" stroke-width="3" stroke-opacity="0.7"/>')
    for p in sorted(pts, key=lambda p: p["selected"]):
        s, py_ = p["step"], y(p["ratio"])
        ci = p["ci"]
        colour = BLACK if s.get("index") == 0 else (GREEN if p["passed"] else VERMILLION)
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(c) for c in ci):
            parts.append(f'<line x1="{x(ci[0]):.1f}" y1="{py_:.1f}" x2="{x(ci[1]):.1f}" y2="{py_:.1f}" stroke="{colour}" '
                         'stroke-width="1.5" stroke-opacity="0.7"/>')
        w = p["worst"]
        tip = (f"step {s.get('index')} {s.get('name')}: p50 {fmt_ms(p['p50'])} ms; "
               + (f"worst {gate_words(w.get('gate'))} {fmt_observed(w)} at {who(w)} ({p['ratio']:.2f}× the limit)"
                  if w else "the baseline") + ("; passed" if p["passed"] else "; failed"))
        shape = "circle" if p["passed"] else "square"
        parts.append(marker(shape, x(p["p50"]), py_, 5.5, colour, title=tip))
        if p["selected"]:
            parts.append(f'<circle cx="{x(p["p50"]):.1f}" cy="{py_:.1f}" r="9" fill="none" stroke="{BLUE}" stroke-width="2"/>')
        parts.append(f'<text x="{x(p["p50"]) + 9:.1f}" y="{py_ - 7:.1f}" class="b">{esc(s.get("index"))}</text>')
    return _svg(width, height, "latency against worst-group harm", parts)
