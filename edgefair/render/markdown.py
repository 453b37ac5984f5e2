"""report.md: short enough for a pull-request comment. Verdict first, then what failed, then what
could not be checked, then the numbers. The full tables live in report.html."""

from __future__ import annotations

from typing import Any

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

MAX_GATE_LINES = 15  # a PR comment stays readable; the rest is in report.html and junit.xml


def render_markdown(report: dict[str, Any]) -> str:
    """The pull-request summary (report.md) of one edgefair run."""
    ci_label = confidence_label(report)
    lines = [_verdict_line(report), ""]
    lines += _context(report)
    lines += _failing(report, ci_label)
    lines += _warnings(report, ci_label)
    lines += _step_table(report)
    lines += _group_table(report, ci_label)
    lines.append("_Full per-step, per-group tables and charts: `report.html`; "
                 "every number: `report.json`; CI results: `junit.xml`._")
    return "\n".join(lines) + "\n"


def _verdict_line(report: dict[str, Any]) -> str:
    verdict = str(report.get("verdict") or "unknown").upper()
    sel = report.get("selected")
    if sel:
        what = f"selected step {sel.get('step')} `{_code(sel.get('name'))}` (`{_code(sel.get('model'))}`)"
    else:
        what = "no model selected"
    return f"## edgefair: **{verdict}** — {what}"


def _context(report: dict[str, Any]) -> list[str]:
    ev = (report.get("data") or {}).get("eval") or {}
    src = report.get("source") or {}
    bits = []
    if src.get("spec"):
        bits.append(f"model `{_code(src['spec'])}`")
    if ev.get("n") is not None:
        bits.append(f"{ev['n']} eval rows" + ("" if is_labelled(report) else " (no labels: fidelity only)"))
    bits.append(f"{len(steps(report))} steps")
    return [", ".join(bits) + ".", ""]


def _failing(report: dict[str, Any], ci_label: str) -> list[str]:
    failed = failing_gates(report)
    if not failed:
        note = no_failure_note(report)
        return [note if note == "No gate failed." else f"⚠️ **{note}**", ""]
    out = [f"### Failing gates ({len(failed)})", ""]
    # the same failure, word for word, at several steps (a step and the int8 model built on it) is said once
    said: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for step, gate in failed:
        said.setdefault((str(gate.get("gate")), str(gate.get("group") or ""), describe_gate(gate, ci_label)), []).append(step)
    for (name, group, words), where in list(said.items())[:MAX_GATE_LINES]:
        steps_s = ", ".join(f"{s.get('index')} `{_code(s.get('name'))}`" for s in where)
        group_s = f" [{_code(group)}]" if group else ""
        out.append(f"- ❌ step {steps_s} · `{name}`{group_s}: {_text(words)}")
    if len(said) > MAX_GATE_LINES:
        out.append(f"- … and {len(said) - MAX_GATE_LINES} more failing gates (see `report.html`).")
    return out + [""]


def n_compressed(report: dict[str, Any]) -> int:
    return max(0, len(steps(report)) - 1)


def _warnings(report: dict[str, Any], ci_label: str) -> list[str]:
    out: list[str] = []
    texts: dict[str, list[int]] = {}
    for s in steps(report):
        for w in s.get("warnings") or []:
            texts.setdefault(str(w), []).append(s.get("index"))
    for w, idx in texts.items():
        out.append(f"- ⚠️ step {_indices(idx)}: {_text(w)}")
    # undecided gates, one line per gate: which groups no gate could decide, at which steps
    undecided: dict[str, dict[str, list[int]]] = {}
    for step, gate in warning_gates(report):
        where = str(gate.get("group") or "model")
        undecided.setdefault(str(gate.get("gate")), {}).setdefault(where, []).append(step.get("index"))
    for name, groups in undecided.items():
        listed = ", ".join(f"`{_code(g)}` ({'all steps' if len(idx) == n_compressed(report) else 'step ' + _indices(idx)})" for g, idx in groups.items())
        out.append(f"- ⚠️ `{name}` undecided (interval wider than the limit, or too few rows) for: {listed}. See `report.html` for each interval.")
    n_steps = len(steps(report))
    by_reason: dict[str, list[str]] = {}  # one loud line per reason (too few rows, CI too wide, ...)
    for k, n, idx, reason in insufficient_summary(report):
        where = "" if len(idx) == n_steps else ", step " + _indices(idx)
        by_reason.setdefault(reason or "", []).append(f"`{_code(k)}` (n={n}{where})")
    for reason, groups in by_reason.items():
        why = f" ({_text(reason)})" if reason else ""
        out.append(f"- ⚠️ **Not evaluated — too little data{why}:** {', '.join(groups)}. No gate protects these groups.")
    return (["### Warnings", ""] + out + [""]) if out else []


def _step_table(report: dict[str, Any]) -> list[str]:
    base = baseline_step(report)
    labelled = is_labelled(report)
    sel = (report.get("selected") or {}).get("step")
    head = ["#", "step", "size MB", "p50 ms", "p95 ms", "p50 vs base"]
    head += ["accuracy", "worst group Δacc (pp)"] if labelled else []
    head += ["max flip", "gates"]
    out = ["### Steps", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in steps(report):
        lat = s.get("latency") or {}
        key, worst = extreme(s, "accuracy_delta", lowest=True) if labelled else (None, None)
        fkey, flip = extreme(s, "flip_rate", lowest=False)
        mark = " ✅" if s.get("index") == sel else ""
        cells = [
            f"{s.get('index')}{mark}",
            f"`{_code(s.get('name'))}`",
            fmt_mb(s.get("size_bytes")),
            fmt_ms(lat.get("p50_ms")),
            fmt_ms(lat.get("p95_ms")),
            fmt_ratio(s, base),
        ]
        if labelled:
            cells += [fmt_pct((s.get("overall") or {}).get("accuracy")),
                      DASH if worst is None else f"{fmt_pp(worst)} ({_text(key)})"]
        cells += [
            DASH if flip is None else f"{fmt_pct(flip)} ({_text(fkey)})",
            gates_cell(s),
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out + [""]


def _group_table(report: dict[str, Any], ci_label: str) -> list[str]:
    step, title = focus_step(report)
    if step is None or not step.get("groups"):
        return []
    labelled = is_labelled(report)
    out = [f"### Groups at {_text(title)}", ""]
    if labelled:
        out += [f"| group | n | accuracy | Δacc pp ({ci_label}) | ECE | flip |", "|---|---|---|---|---|---|"]
    else:
        out += [f"| group | n | agreement | flip ({ci_label}) | cosine mean |", "|---|---|---|---|---|"]
    for key, g in step["groups"].items():
        n = fmt_num(g.get("n"), "d")
        if g.get("status") != "ok":
            gap = " | ".join(["⚠️ insufficient data"] + [""] * (3 if labelled else 2))
            out.append(f"| `{_code(key)}` | {n} | {gap} |")
            continue
        if labelled:
            delta = fmt_pp(g.get("accuracy_delta"))
            ci = g.get("accuracy_delta_ci")
            cells = [fmt_pct(g.get("accuracy")), delta + (f" ({fmt_ci(ci, signed=True)})" if ci else ""),
                     fmt_num(g.get("ece"), ".3f"), fmt_pct(g.get("flip_rate"), 2)]
        else:
            ci = g.get("flip_rate_ci")
            cells = [fmt_pct(g.get("agreement"), 2), fmt_pct(g.get("flip_rate"), 2) + (f" ({fmt_ci(ci, digits=2)})" if ci else ""),
                     fmt_num(g.get("cosine_mean"), ".4f")]
        out.append(f"| `{_code(key)}` | {n} | " + " | ".join(cells) + " |")
    return out + [""]


def _indices(idx: list[int]) -> str:
    return ", ".join(str(i) for i in idx)


def _code(s: Any) -> str:
    """Text for inside backticks: a backtick or newline would end the span and let markup through."""
    return str(s).replace("`", "'").replace("\n", " ").replace("|", "\\|")


def _text(s: Any) -> str:
    """Plain table/list text: pipes would split a table cell, newlines would end the row."""
    return str(s).replace("|", "\\|").replace("\n", " ")
