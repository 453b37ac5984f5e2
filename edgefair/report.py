"""The result object: report.json (contract, schema_version 1) built from the pipeline's pieces.

Every human and machine output is rendered from this one dict.
"""

from __future__ import annotations

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
    data = {"eval": _data_entry(inputs.eval)}
    if inputs.calibration is not None:
        data["calibration"] = _data_entry(inputs.calibration)
    if inputs.train is not None:
        data["train"] = _data_entry(inputs.train)
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "edgefair", "version": __version__},
        "environment": environment,
        "recipe": {"path": str(recipe.path), "sha256": recipe.sha256, "resolved": recipe.resolved()},
        "source": {"kind": inputs.source_kind, "spec": recipe.model.source, "sha256": inputs.source_sha256, "parity": inputs.parity},
        "data": data,
        "steps": [step_entry(m, r, out_name=f"{m.index:02d}-{m.name}.onnx") for m, r in zip(models, results)],
        "verdict": "pass",
        "selected": None,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _data_entry(ds: Any) -> dict[str, Any]:
    return {
        "path": str(ds.path),
        "sha256": sha256_file(ds.path),
        "n": ds.n,
        "labelled": ds.labels is not None,
        "groups": {k: sorted(set(v.tolist())) for k, v in ds.attributes.items()},
    }


def fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def gate_line(gate: dict[str, Any]) -> str:
    where = f" [{gate['group']}]" if gate.get("group") else ""
    ci = gate.get("ci")
    ci_s = f" (CI {ci[0]:.4g} to {ci[1]:.4g})" if ci else ""
    return f"{gate['gate']}{where}: {fmt(gate['value'], '.4g')}{ci_s} vs limit {gate['threshold']:.4g}: {gate['reason']}"


def _latency_head(lat: dict[str, Any], index: int) -> str:
    out = f"p50 {fmt(lat.get('p50_ms'), '.4f')} ms  p95 {fmt(lat.get('p95_ms'), '.4f')} ms"
    ratio, ci = lat.get("ratio_p50_vs_first"), lat.get("ratio_p50_ci")
    if index > 0 and ratio is not None:
        out += f"  x{ratio:.2f} vs baseline" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    return out


def _group_row(key: str, g: dict[str, Any], labelled: bool) -> str:
    if g.get("status") != "ok":
        return f"    {key:<40} {g['n']:>6}  insufficient data: {g.get('reason', 'n < min_group_size')}"
    if not labelled:  # label-free: fidelity to the baseline's outputs
        return (
            f"    {key:<40} {g['n']:>6} {fmt(g.get('cosine_mean'), '.4f'):>9} {fmt(g.get('cosine_min'), '.4f'):>9} "
            f"{fmt(g.get('rel_error_mean'), '.4f'):>9} {fmt(g.get('agreement'), '.4f'):>9}"
        )
    ci = g.get("accuracy_delta_ci")
    ci_s = f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "-"
    delta = g.get("accuracy_delta")
    return (
        f"    {key:<40} {g['n']:>6} {fmt(g.get('accuracy'), '.4f'):>9} "
        f"{(format(delta, '+.4f') if delta is not None else '-'):>8} {ci_s:>19} "
        f"{fmt(g.get('ece'), '.4f'):>7} {fmt(g.get('flip_rate'), '.4f'):>7}"
    )


def terminal_table(report: dict[str, Any]) -> str:
    """A readable per-step, per-group table for the terminal."""
    labelled = bool(report.get("data", {}).get("eval", {}).get("labelled", True))
    lines = []
    for step in report["steps"]:
        ov = step["overall"]
        head = f"[{step['index']}] {step['name']} ({step['kind']})  size {step['size_bytes'] / 1e6:.3f} MB  "
        head += _latency_head(step.get("latency") or {}, step["index"])
        if labelled:
            head += f"  acc {fmt(ov.get('accuracy'), '.4f')}  ece {fmt(ov.get('ece'), '.4f')}"
            head += f"  flip {fmt(ov.get('flip_rate'), '.4f')}" if step["index"] > 0 else ""
        elif step["index"] > 0:
            head += f"  cosine {fmt(ov.get('cosine_mean'), '.4f')} (min {fmt(ov.get('cosine_min'), '.4f')})"
        lines.append(head)
        if labelled:
            lines.append(f"    {'group':<40} {'n':>6} {'accuracy':>9} {'Δacc':>8} {'Δacc CI':>19} {'ece':>7} {'flip':>7}")
        elif step["index"] > 0:
            lines.append(f"    {'group':<40} {'n':>6} {'cos mean':>9} {'cos min':>9} {'rel err':>9} {'agree':>9}")
        if labelled or step["index"] > 0:
            lines += [_group_row(key, g, labelled) for key, g in step["groups"].items()]
        for w in step.get("warnings", []):
            lines.append(f"    ! {w}")
        for gate in step.get("gates", []):
            if gate["status"] == "fail":
                lines.append(f"    FAIL {gate_line(gate)}")
        warned = sorted({g["group"] or g["gate"] for g in step.get("gates", []) if g["status"] == "warn"})
        if warned:
            lines.append(f"    WARN undecided (insufficient data or too wide an interval): {', '.join(warned)}")
    return "\n".join(lines + summary_lines(report))


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The verdict, the model to ship and the gate counts: what `run -q` prints."""
    sel = report.get("selected")
    lines = [f"verdict: {report['verdict'].upper()}" + (f"  selected: step {sel['step']} ({sel['model']})" if sel else "")]
    if any(step.get("gates") for step in report["steps"]):
        counts = {k: sum(g["status"] == k for step in report["steps"] for g in step.get("gates", [])) for k in ("pass", "warn", "fail")}
        lines.append(f"gate checks over all steps: {counts['pass']} passed, {counts['fail']} failed, {counts['warn']} undecided")
    return lines
