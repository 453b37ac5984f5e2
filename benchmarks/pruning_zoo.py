"""Structured pruning coverage on the architecture zoo (tests/pruning_zoo.py): the hand-written graph
engine (structured.py, still used for .pt2 programs) vs Torch-Pruning's dependency graph as
edgefair drives it (depgraph.py, the engine for nn.Modules), at the same sparsity, importance and
per-layer selection.

    python benchmarks/pruning_zoo.py [--sparsity 0.5] [--runs 300] [--json out.json]

Per architecture and engine: the share of prunable parameters removed (every weight matrix and
kernel, as the unstructured step counts them), the parameter ratio (all parameters, pruned /
original), how many producer layers lost channels and how many were left whole, and the p50
latency ratio pruned / original of the exported ONNX models (onnxruntime, 1 thread, batch 1,
edgefair's interleaved timing: one run of each model in turn, 3 fresh sessions each). Random
weights: no accuracy figure means anything here. Needs no network.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from edgefair.errors import StepError  # noqa: E402
from edgefair.export import export_onnx  # noqa: E402
from edgefair.latency import LatencySettings, measure_interleaved  # noqa: E402
from edgefair.steps.depgraph import Engine, one_thread  # noqa: E402
from edgefair.steps.prune import PruneConfig, prunable  # noqa: E402
from edgefair.steps.structured import _prune_graph  # noqa: E402
from pruning_zoo import ZOO, build  # noqa: E402


def share_removed(before: torch.nn.Module, after: torch.nn.Module) -> float:
    sizes = dict(after.named_parameters())
    full = dict(before.named_parameters())
    names = [n for _, _, n in prunable(before)]
    return 1.0 - sum(sizes[n].numel() for n in names) / sum(full[n].numel() for n in names)


def run_engine(engine: str, model: torch.nn.Module, example: tuple, sparsity: float) -> dict:
    pruned = copy.deepcopy(model)
    t0 = time.perf_counter()
    try:
        with one_thread():
            if engine == "graph":
                channels, skipped, _ = _prune_graph(pruned, example, PruneConfig(sparsity=sparsity, structured=True))
            else:
                r = Engine(pruned, example).prune(sparsity, "l1", "layer")
                channels, skipped = r.channels, r.skipped
    except StepError as e:
        return {"model": None, "error": str(e), "seconds": time.perf_counter() - t0, "layers_pruned": 0}
    return {
        "model": pruned, "seconds": time.perf_counter() - t0, "layers_pruned": len(channels), "left_whole": skipped,
        "share": share_removed(model, pruned),
        "param_ratio": sum(p.numel() for p in pruned.parameters()) / sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    settings = LatencySettings(threads=1, batch_size=1, warmup=30, runs=args.runs, sessions=3, n_boot=0, memory=False)
    rows, out = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for member in ZOO:
            model = build(member)
            x = member.make_inputs(np.random.default_rng(0), 64)
            example = (torch.from_numpy(x[:2]),)
            paths = [Path(tmp) / f"{member.name}-original.onnx"]
            export_onnx(model, {member.input_name: x[:2]}, [member.input_name], paths[0])
            results = {e: run_engine(e, model, example, args.sparsity) for e in ("graph", "torch-pruning")}
            for e, r in results.items():
                if r["model"] is not None:
                    r["path"] = Path(tmp) / f"{member.name}-{e}.onnx"
                    export_onnx(r["model"], {member.input_name: x[:2]}, [member.input_name], r["path"])
                    paths.append(r["path"])
            timed = measure_interleaved(paths, {member.input_name: x}, settings)
            by_path = {str(p): t for p, t in zip(paths, timed)}
            for e, r in results.items():
                lat = by_path[str(r["path"])]["ratio_p50_vs_first"] if r["model"] is not None else 1.0
                rows.append((member.name, e, r.get("share", 0.0), r.get("param_ratio", 1.0), lat, r["layers_pruned"],
                             len(r.get("left_whole", {})), r["seconds"]))
                out.setdefault(member.name, {})[e] = {
                    "share_of_prunable_removed": r.get("share", 0.0), "param_ratio": r.get("param_ratio", 1.0),
                    "latency_ratio_p50": lat, "layers_pruned": r["layers_pruned"], "left_whole": r.get("left_whole"),
                    "error": r.get("error"), "seconds": r["seconds"],
                    "original_p50_ms": by_path[str(paths[0])]["p50_ms"],
                }
            print(f"{member.name}: done", file=sys.stderr, flush=True)
    print(f"structured pruning at {args.sparsity:.0%} per layer (L1), onnxruntime 1 thread batch 1, p50 ratio pruned/original\n")
    print("| architecture | engine | prunable params removed | param ratio | latency ratio | layers pruned | left whole | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for name, e, share, pr, lat, n, whole, sec in rows:
        print(f"| {name} | {e} | {share:.1%} | {pr:.3f} | {lat:.3f} | {n} | {whole} | {sec:.1f} |")
    for e in ("graph", "torch-pruning"):
        n40 = sum(1 for r in rows if r[1] == e and r[2] >= 0.40)
        print(f"\n{e}: >= 40% of prunable parameters removed on {n40} of {len(ZOO)}", end="")
    print()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
