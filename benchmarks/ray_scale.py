"""Does the Ray executor scale out? Wall time of a large evaluation and of an 8-candidate tune,
embedded vs a local Ray cluster of 1 and of 2 worker CPUs, on this machine.

    python benchmarks/ray_scale.py [--rows 1000000] [--bootstrap 1000] [--candidates 8]
                                   [--configs embedded ray1 ray2] [--repeats 1] [--skip-eval] [--skip-tune]

Workloads (written to a temporary folder, never the repository):
- eval: the 9,045 Adult eval rows (calibration_data/adult_eval.npz) resampled with replacement to
  `--rows` rows (seed 0); the reference model and one step, static int8; full statistics (sex,
  race, intersections, `--bootstrap` replicates; on Ray the bootstrap's sums run as tasks too). Latency off: it is measured on the driver with
  any executor, so it would add the same time to each.
- tune: the reference Adult recipe's first `--candidates` tune candidates (int8 variants, keep-float
  repairs, structured pruning with distilled recovery on data.train and int8 on top), evaluated on
  the 9,045 eval rows; selection by size (latency off, as above).

Each (workload, config) is a fresh Python process with an empty cache; the figure is the wall time
of `pipeline.run` / `tune.search` inside it, after the Ray cluster is up (the cluster's start is
printed separately). Every Ray report is checked against the embedded one: the same statistics and
verdict, timings aside. The machine is shared: rerun before quoting, and compare ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "calibration_data"


def make_eval_set(rows: int, folder: Path) -> Path:
    with np.load(DATA / "adult_eval.npz", allow_pickle=False) as src:
        data = {k: src[k] for k in src.files}
    idx = np.random.default_rng(0).integers(0, len(data["label"]), rows)
    path = folder / f"adult_{rows}.npz"
    np.savez(path, **{k: v[idx] for k, v in data.items()})
    return path


def write_recipe(folder: Path, name: str, eval_path: Path, bootstrap: int, steps: str) -> Path:
    recipe = folder / f"{name}.toml"
    recipe.write_text(textwrap.dedent(f"""
        [model]
        source = "{REPO / 'models' / 'adult_mlp.pt2'}"

        [data]
        eval = "{eval_path}"
        calibration = "{DATA / 'adult_calib.npz'}"
        train = "{DATA / 'adult_train.npz'}"
        label = "label"
        groups = ["sex", "race"]
        intersections = true
        min_group_size = 50

        [evaluate]
        bootstrap = {bootstrap}
        seed = 0

        [latency]
        enabled = false

        [select]
        by = "smallest"
        """) + steps)
    return recipe


STATIC = '\n[[steps]]\nkind = "quantize_static"\nmethod = "minmax"\nper_channel = false\nformat = "qdq"\n'


def one(workload: str, recipe_path: Path, config: str, candidates: int, out: Path) -> dict:
    """Run one workload with one executor, in this process; returns the figures."""
    from edgefair.executor import Executor, RayExecutor
    from edgefair.pipeline import run
    from edgefair.recipe import load_recipe
    from edgefair.tune import search, tune_recipe

    t0 = time.perf_counter()
    executor = Executor() if config == "embedded" else RayExecutor(num_cpus=int(config.removeprefix("ray")),
                                                                   temp_dir=tempfile.mkdtemp(prefix="ef-ray-", dir="/tmp"))
    startup = time.perf_counter() - t0
    recipe = load_recipe(recipe_path)
    t0 = time.perf_counter()
    if workload == "eval":
        report = run(recipe, out, executor=executor)
    else:
        tuned = tune_recipe(recipe)
        report = search(dataclasses.replace(tuned, steps=tuned.steps[:candidates]), out, executor=executor)
    wall = time.perf_counter() - t0
    executor.close()
    return {"startup_s": round(startup, 2), "wall_s": round(wall, 2), "timings_s": report["timings_s"]}


TIMED = {"seconds", "p50_ms", "int8_p50_ms", "fp32_p50_ms", "slowdown", "cost", "gain_per_cost", "latency"}


def statistics(report: dict) -> dict:
    """report.json without timings, cache use, the executor's description and details' seconds."""
    def untimed(v):  # keep_float's own timings of its candidates (p50, slowdown and what follows from them)
        if isinstance(v, list):
            return [untimed(x) for x in v]
        return {k: untimed(x) for k, x in v.items() if k not in TIMED} if isinstance(v, dict) else v

    out = {k: untimed(v) for k, v in report.items() if k not in ("timings_s", "created_at", "executor", "steps", "search")}
    out["steps"] = [{k: untimed(v) for k, v in s.items() if k not in ("latency", "seconds", "cache")} for s in report["steps"]]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--configs", nargs="+", default=["embedded", "ray1", "ray2"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--skip-eval", action="store_true")
    ap.add_argument("--skip-tune", action="store_true")
    ap.add_argument("--one", nargs=4, metavar=("WORKLOAD", "RECIPE", "CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        workload, recipe, config, out = args.one
        print(json.dumps(one(workload, Path(recipe), config, args.candidates, Path(out))))
        return
    with tempfile.TemporaryDirectory(prefix="ef-ray-bench-") as tmp:
        folder = Path(tmp)
        workloads = []
        if not args.skip_eval:
            t0 = time.perf_counter()
            big = make_eval_set(args.rows, folder)
            print(f"eval set: {args.rows:,} rows, {big.stat().st_size / 1e6:.0f} MB ({time.perf_counter() - t0:.1f} s to write)")
            workloads.append(("eval", write_recipe(folder, "eval", big, args.bootstrap, STATIC)))
        if not args.skip_tune:
            workloads.append(("tune", write_recipe(folder, "tune", DATA / "adult_eval.npz", args.bootstrap, "")))
        for workload, recipe in workloads:
            reports: dict[str, dict] = {}
            for r in range(args.repeats):
                for config in args.configs:  # interleaved: each repeat runs every config once
                    out = folder / f"{workload}-{config}-{r}"
                    env = {**os.environ, "EDGEFAIR_CACHE_DIR": str(folder / f"cache-{workload}-{config}-{r}")}
                    done = subprocess.run([sys.executable, __file__, "--candidates", str(args.candidates), "--one", workload, str(recipe), config, str(out)],
                                          capture_output=True, text=True, env=env)
                    if done.returncode != 0:
                        print(f"{workload} {config}: failed\n{done.stderr[-3000:]}")
                        continue
                    fig = json.loads(done.stdout.strip().splitlines()[-1])
                    report = json.loads((out / "report.json").read_text())
                    reports.setdefault(config, report)
                    same = "" if config == "embedded" or "embedded" not in reports else \
                        ("; statistics identical to embedded" if statistics(report) == statistics(reports["embedded"]) else "; STATISTICS DIFFER from embedded")
                    t = fig["timings_s"]
                    print(f"{workload} {config} (repeat {r + 1}): wall {fig['wall_s']:.1f} s (prepare {t.get('prepare', 0):.1f}, "
                          f"compress {t.get('compress', 0):.1f}, evaluate {t.get('evaluate', 0):.1f}); cluster start {fig['startup_s']:.1f} s{same}",
                          flush=True)


if __name__ == "__main__":
    main()
