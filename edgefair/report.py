"""The result object: report.json (contract, schema_version 1) built from the pipeline's pieces.

Every human and machine output is rendered from this one dict.
"""

from __future__ import annotations

import os
import posixpath
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .io import sha256_file

SCHEMA_VERSION = 1


def step_entry(model: Any, result: dict[str, Any], *, out_name: str) -> dict[str, Any]:
    stats = result["stats"]
    return {
        "index": model.index,
        "name": model.name,
        "kind": model.kind,
        "input": model.input,
        "model": out_name,
        "sha256": sha256_file(model.path),
        "size_bytes": model.path.stat().st_size,
        "seconds": round(model.seconds, 3),
        "details": model.details,
        "warnings": list(model.warnings),
        "overall": stats["overall"],
        "groups": stats["groups"],
        "disparity": stats.get("disparity", {}),
        "latency": result["latency"],
        "cache": result.get("cache"),
        "eval_batch_size": result.get("eval_batch_size"),  # rows per inference call when evaluating
        "gates": [],
        "passed": True,
    }


def build_report(
    *,
    recipe: Any,
    inputs: Any,
    models: list[Any],
    results: list[dict[str, Any]],
    environment: dict[str, Any],
    timings: dict[str, float],
) -> dict[str, Any]:
    data = {"eval": _data_entry(inputs.eval, recipe_relative(recipe, recipe.data.eval))}
    if inputs.calibration is not None:
        data["calibration"] = _data_entry(inputs.calibration, recipe_relative(recipe, recipe.data.calibration))
    if inputs.train is not None:
        data["train"] = _data_entry(inputs.train, recipe_relative(recipe, recipe.data.train))
    steps = [step_entry(m, r, out_name=f"{m.index:02d}-{m.name}.onnx") for m, r in zip(models, results)]
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "edgefair", "version": __version__},
        "environment": environment,
        "recipe": {"path": str(recipe.path), "sha256": recipe.sha256, "resolved": recipe.resolved()},
        "source": {"kind": inputs.source_kind, "spec": recipe.model.source, "sha256": inputs.source_sha256, "parity": inputs.parity},
        "data": data,
        "steps": steps,
        "repairs": repairs(steps),
        "verdict": "pass",
        "selected": None,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def repairs(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What each group-aware repair changed, judged on the calibration rows (never the eval rows
    the gates judge), and what the repaired step costs: its p50 over the baseline's."""
    out = []
    for s in steps:
        details = s.get("details") or {}
        lat = s.get("latency") or {}
        cost = {"p50_ratio_vs_baseline": lat.get("ratio_p50_vs_first"), "size_bytes": s["size_bytes"]}
        kf = details.get("keep_float")
        if kf:
            before, after = kf.get("before") or {}, kf.get("after") or {}
            out.append({"step": s["index"], "name": s["name"], "repair": "keep_float", "nodes": kf.get("kept_float", []),
                        "judged_on": f"{kf.get('rows')} calibration rows", "metric": kf.get("metric"),
                        "worst_before": {"group": before.get("worst_group"), "value": before.get("worst_agreement")},
                        "worst_after": {"group": after.get("worst_group"), "value": after.get("worst_agreement")},
                        "seconds": kf.get("seconds"), "cost": cost})
        if details.get("calibration_sampling") == "stratified":
            out.append({"step": s["index"], "name": s["name"], "repair": "stratified_calibration",
                        "rows_per_group": details.get("calibration_rows_per_group"), "cost": cost})
    return out


def recipe_relative(recipe: Any, path: str) -> str:
    """A file the recipe names, as a path relative to the recipe's folder ('/'-separated), so that
    report.json and the manifest carry no absolute path of the build machine."""
    p = Path(path)
    if p.is_absolute():
        try:
            p = Path(os.path.relpath(p, recipe.base))
        except ValueError:  # another drive
            p = Path(p.name)
    return posixpath.normpath(p.as_posix())


def _data_entry(ds: Any, path: str) -> dict[str, Any]:
    return {
        "path": path,  # relative to the recipe's folder
        "sha256": sha256_file(ds.path),
        "n": ds.n,
        "labelled": ds.labels is not None,
        "groups": {k: sorted(set(v.tolist())) for k, v in ds.attributes.items()},
    }


# ---- terminal and report.txt -----------------------------------------------------------------------
#
# `terminal_table(report)` is what `edgefair run` prints: a summary within WIDTH columns (verdict, the
# model to ship and why, thresholds, every check observed beyond its limit, one line per step, failed
# steps, undecided count). `terminal_table(report, full=True)` adds every step's per-group table and
# gate checks (for report.txt). Numbers and words come from `edgefair.render`'s shared helpers.

WIDTH = 100


def fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def gate_line(gate: dict[str, Any]) -> str:
    """One gate check on one line, in words (shared wording with the other reports)."""
    from .render import describe_gate

    return describe_gate(gate)


def terminal_table(report: dict[str, Any], *, full: bool = False) -> str:
    """The terminal summary (default), or the summary plus every step's per-group table (`full`)."""
    lines = summary(report)
    if full:
        lines += ["", "=" * 40, "per step, per group", "=" * 40]
        for step in report.get("steps") or []:
            lines += [""] + _step_block(report, step)
    return "\n".join(lines)


def summary(report: dict[str, Any]) -> list[str]:
    """The compact first screen (<= WIDTH columns for ordinary names)."""
    from . import render as r

    out: list[str] = []
    sel = report.get("selected")
    verdict = str(report.get("verdict") or "unknown").upper()
    if sel:
        out.append(f"verdict: {verdict} · ship step {sel.get('step')} {sel.get('name')} ({sel.get('model')})")
        if sel.get("reason"):
            out.append(f"  why: {sel['reason']}")
    else:
        out.append(f"verdict: {verdict} · no model to ship: no candidate passed every gate")
    out += _largest_harm(report)
    limits = r.thresholds(report)
    if limits:
        ga = report.get("gates_applied") or {}
        conf = r.confidence(report)
        how = [f"{conf * 100:g}% CI" if conf is not None else None,
               f"undecided -> {ga['on_undecided']}" if ga.get("on_undecided") else None,
               f"groups under {ga['min_group_size']} rows untested" if ga.get("min_group_size") is not None else None]
        out += _wrap(f"thresholds ({r.UNITS_NOTE}; " + ", ".join(h for h in how if h) + "):", "", "  ")
        out += _wrap(" · ".join(f"{r.gate_words(n)} {r.fmt_limit(n, t)}" for n, t in limits), "  ", "  ")
    else:
        out.append(r.no_failure_note(report))
    out += _exceeded(report)
    out += _steps(report)
    failed = r.failed_steps(report)
    if failed:
        out.append("failed steps:")
        for s, gates in failed:
            out += _wrap(f"[{s.get('index')}] {s.get('name')}: {r.why_failed(gates)}", "  ", "      ")
    note = r.undecided_note(report)
    if note:
        out += _wrap(note, "", "  ")
    out += _groups(report)
    for s in report.get("steps") or []:
        for w in s.get("warnings") or []:
            out += _wrap(f"! [{s.get('index')}] {s.get('name')}: {w}", "", "    ")
    counts = _counts(report)
    if counts:
        out.append(counts)
    out.append("per-group tables: report.md, report.html; every number: report.json")
    return out


def _largest_harm(report: dict[str, Any]) -> list[str]:
    """The largest harm relative to its limit (group, gate, size), and at the model to ship when
    that is another step: the same sentences as the first screen of report.md and report.html."""
    from . import render as r

    found = r.largest_harm(report)
    if found is None:
        return []
    label = r.confidence_label(report)
    step, gate = found
    out = _wrap(f"largest harm: {r.harm_sentence(step, gate, label)}", "", "  ")
    sel = r.selected_step(report)
    if sel is not None and sel is not step and sel.get("index", 0) > 0:
        g = r.worst_harm(sel)
        if g is not None:
            out += _wrap(f"at the model to ship: {r.harm_sentence(sel, g, label)}", "", "  ")
    return out


def _exceeded(report: dict[str, Any]) -> list[str]:
    from . import render as r

    rows = r.exceeded(report)
    if not rows:
        return ["observed harm beyond a limit: none"] if r.thresholds(report) else []
    sel = (report.get("selected") or {}).get("step")
    at_sel = sum(1 for e in rows if e.get("step") == sel)
    out = [f"observed harm beyond a limit: {len(rows)} check{'s' if len(rows) != 1 else ''}"
           + (f" ({at_sel} at the selected model)" if sel is not None else "")]
    gw = min(max(len(r.who(e)) for e in rows), 34)
    out.append(f"      {'group':<{gw}} {'observed':>9} {'95% CI' if r.confidence(report) == 0.95 else 'CI':<14} "
               f"{'decision':<14} {'n':>5}  det.")
    last = None
    for e in rows:
        head = (e.get("step"), e.get("gate"))
        if head != last:
            mark = "  <- the model to ship" if e.get("step") == sel else ""
            out.append(f"  [{e.get('step')}] {e.get('name')}: {r.gate_words(e.get('gate'))}, limit {r.fmt_limit(e)}{mark}")
            last = head
        decision = "FAIL" if e.get("status") == "fail" else str(e.get("decision") or e.get("status"))
        if e.get("status") == "fail" and e.get("decision") == "undecided":
            decision = "FAIL (undecided)"
        out.append(f"      {r.who(e):<{gw}} {r.fmt_observed(e):>9} {r.fmt_gate_ci(e.get('gate'), e.get('ci')):<14} "
                   f"{decision:<14} {r.fmt_num(e.get('n'), 'd'):>5}  {r.fmt_detectable(e)}")
    return out


def _steps(report: dict[str, Any]) -> list[str]:
    from . import render as r

    all_steps = report.get("steps") or []
    if not all_steps:
        return []
    base = r.baseline_step(report)
    sel = (report.get("selected") or {}).get("step")
    names = r.gated_names(report)
    sw = min(max(len(f"[{s.get('index')}] {s.get('name')}") for s in all_steps), 28)
    units = sorted({r.gate_unit(n) for n in names if r.gate_unit(n)})
    out = ["steps: worst group per gate" + (f" ({', '.join(units)})" if units else "") + ", * beyond the limit;"
           " checks failed/undecided; > ship"]
    out.append(f"  {'step':<{sw}} {'MB':>6} {'p50 x':>6}" + "".join(f"{r.gate_short(n):>9}" for n in names)
               + "  result checks")
    for s in all_steps:
        cells = []
        for n in names:
            g = r.worst_gate(s, n) if s.get("index", 0) > 0 else None
            cells.append(f"{'- ' if g is None else r.fmt_observed(g, unit=False) + ('*' if g.get('exceeds') else ' '):>9}")
        ratio = r.latency_ratio(s, base)
        result = r.step_result(s)
        c = r.gate_counts(s)
        label = f"[{s.get('index')}] {s.get('name')}"
        out.append(f"{'> ' if s.get('index') == sel else '  '}{label:<{sw}} {r.fmt_mb(s.get('size_bytes')):>6} {'-' if ratio is None else f'{ratio:.2f}':>6}"
                   + "".join(cells) + f"  {'FAIL' if result == 'fail' else result:<6} {c.get('fail', 0)}/{c.get('warn', 0)}"
                   )
    return out


def _groups(report: dict[str, Any]) -> list[str]:
    from . import render as r

    all_steps = report.get("steps") or []
    if not all_steps:
        return []
    groups = all_steps[0].get("groups") or {}
    out = []
    ok = [f"{k}\u00a0{g.get('n')}" for k, g in groups.items() if g.get("status") == "ok"]  # no break inside
    if ok:
        out += _wrap("groups checked (n): " + ", ".join(ok), "", "  ")
    short = r.insufficient_summary(report)
    if short:
        out += _wrap("insufficient data, no gate checks them: "
                     + ", ".join(f"{k}\u00a0(n={n})" for k, n, _, _ in short), "", "  ")
    return out


def _counts(report: dict[str, Any]) -> str | None:
    every = [g for step in report.get("steps") or [] for g in step.get("gates") or []]
    if not every:
        return None
    counts = {k: sum(g.get("status") == k for g in every) for k in ("pass", "warn", "fail")}
    return f"gate checks over all steps: {counts['pass']} passed, {counts['fail']} failed, {counts['warn']} undecided"


def _wrap(text: str, first: str, rest: str) -> list[str]:
    import textwrap

    return textwrap.wrap(text, WIDTH, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False,
                         break_long_words=False) or [first.rstrip()]


def _step_block(report: dict[str, Any], step: dict[str, Any]) -> list[str]:
    """One step in full: its head line, every group's metrics, and the gate checks per group."""
    from . import render as r

    ov = step.get("overall") or {}
    lat = step.get("latency") or {}
    head = (f"[{step.get('index')}] {step.get('name')} ({step.get('kind')})  size {r.fmt_mb(step.get('size_bytes'))} MB  "
            f"p50 {r.fmt_ms(lat.get('p50_ms'))} ms  p95 {r.fmt_ms(lat.get('p95_ms'))} ms")
    if step.get("index", 0) > 0:
        head += f"  {r.fmt_ratio(step, r.baseline_step(report))} vs baseline"
    if r.is_labelled(report) and ov.get("accuracy") is not None:
        head += f"  accuracy {r.fmt_pct(ov.get('accuracy'))}"
    head += f"  -> {r.step_result(step)}"
    out = [head]
    groups = step.get("groups") or {}
    if not groups:
        return out
    gw = max(len(str(k)) for k in groups) + 1
    cols = r.metric_columns(report, step)
    compressed = step.get("index", 0) > 0
    if cols:
        out.append(f"    {'group':<{gw}} {'n':>6}" + "".join(f" {t:>16}" for _, t, _ in cols))
        for key, g in groups.items():
            if g.get("status") != "ok":
                out.append(f"    {key:<{gw}} {r.fmt_num(g.get('n'), 'd'):>6}  insufficient data: {g.get('reason', 'too few rows')}")
                continue
            out.append(f"    {key:<{gw}} {r.fmt_num(g.get('n'), 'd'):>6}"
                       + "".join(f" {r.metric_cell(g, f, kind, with_delta=compressed):>16}" for f, _, kind in cols))
    names = r.gated_names(report, group_level=True)
    per_group = r.group_gates(step)
    if compressed and names and per_group:
        out.append("    gate checks (observed harm, det. = min_detectable; ok = pass, ?? = undecided):")
        out.append(f"    {'group':<{gw}}" + "".join(f" {r.gate_short(n):>18}" for n in names))
        for key in list(groups) + [k for k in per_group if k not in groups]:
            entries = per_group.get(key, {})
            out.append(f"    {key:<{gw}}" + "".join(f" {_cell(entries.get(n)):>18}" for n in names))
    for g in r.scope_gates(step):
        out.append(f"    {_mark(g)} {g.get('group')}: {r.describe_gate({**g, 'group': None})}")
    for g in step.get("gates") or []:
        if g.get("group") in (None, "") and g.get("status") != "pass":
            out.append(f"    {_mark(g)} {r.describe_gate(g)}")
    return out


def _mark(g: dict[str, Any]) -> str:
    return {"pass": "ok", "fail": "FAIL", "warn": "??"}.get(str(g.get("status")), "?")


def _cell(g: dict[str, Any] | None) -> str:
    from . import render as r

    if g is None:
        return "-"
    if g.get("value") is None:
        return f"{_mark(g)} -"
    det = r.fmt_detectable(g, unit=False).replace(" ", "")
    return f"{_mark(g)} {r.fmt_observed(g, unit=False)}{'*' if g.get('exceeds') else ''} {det}"


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The verdict, the model to ship and the gate counts: what `run -q` prints."""
    sel = report.get("selected")
    lines = [f"verdict: {str(report.get('verdict') or 'unknown').upper()}"
             + (f"  selected: step {sel['step']} ({sel['model']})" if sel else "  no model selected")]
    counts = _counts(report)
    if counts:
        n = len((report.get("gate_summary") or {}).get("exceeded") or [])
        lines.append(counts + (f"; {n} observed beyond a limit" if n else ""))
    return lines
