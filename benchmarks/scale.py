"""Does a run scale to a million eval rows? Wall time and peak memory of `edgefair run` on Adult
eval sets of 100,000 and 1,000,000 rows.

    python benchmarks/scale.py [--rows 100000 1000000] [--bootstrap 1000] [--repeats 1]

Each eval set is the 9,045 Adult eval rows (calibration_data/adult_eval.npz) resampled with
replacement to the given size (seed 0), written with the recipe to a temporary folder (never the
repository). The recipe is the reference one reduced to one step, static int8 quantization, with
full statistics: sex, race and their intersections, `bootstrap` replicates, local latency. Each
run is a fresh `edgefair run` process with a fresh, empty EDGEFAIR_CACHE_DIR (nothing is reused
from an earlier run); its peak RSS is the process's own maximum resident set (os.wait4's
rusage), its time the wall time of the whole process (imports, export, quantization, inference,
statistics, latency, reports).

"The data" is the eval set's arrays as stored (float32 features, int64 labels, the attribute
strings). Since 0.3.1 edgefair maps an uncompressed .npz's input arrays from the file and reads
them as each pass goes (edgefair/mapped.py), so the features are no longer part of the peak;
labels and group attributes are still held. "Growth per added row" is the difference of the peaks
divided by the difference of the rows. Targets (issue 14): peak RSS < 1.0 GB at 1M rows, time
within 12x of the 100k run, memory beyond the data that does not grow with the rows (nothing of
size replicates x rows).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ADULT = REPO / "calibration_data" / "adult_eval.npz"


def make_eval_set(rows: int, folder: Path) -> tuple[Path, int]:
    """Adult eval rows resampled to `rows` (seed 0); returns the file and its arrays' bytes."""
    with np.load(ADULT, allow_pickle=False) as src:  # the arrays the recipe reads, no others
        data = {k: src[k] for k in ("features", "label", "sex", "race")}
    idx = np.random.default_rng(0).integers(0, len(data["label"]), rows)
    big = {k: v[idx] for k, v in data.items()}
    path = folder / f"adult_{rows}.npz"
    np.savez(path, **big)
    return path, sum(v.nbytes for v in big.values())


def write_recipe(folder: Path, eval_path: Path, bootstrap: int) -> Path:
    recipe = folder / "recipe.toml"
    recipe.write_text(textwrap.dedent(f"""
        [model]
        source = "{REPO / 'models' / 'adult_mlp.pt2'}"

        [data]
        eval = "{eval_path}"
        calibration = "{REPO / 'calibration_data' / 'adult_calib.npz'}"
        label = "label"
        groups = ["sex", "race"]
        intersections = true
        min_group_size = 50

        [evaluate]
        bootstrap = {bootstrap}
        seed = 0

        [latency]
        threads = 1
        batch_size = 1
        warmup = 20
        runs = 200

        [[steps]]
        kind = "quantize_static"
        method = "minmax"
        per_channel = false
        format = "qdq"
        """))
    return recipe


def run_once(recipe: Path, folder: Path, code: Path | None = None) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, exit code) of one `edgefair run` with an empty cache, from
    the installed edgefair or, with `code`, from the edgefair package in that folder."""
    cache = Path(tempfile.mkdtemp(prefix="cache-", dir=folder))
    env = dict(os.environ, EDGEFAIR_CACHE_DIR=str(cache))
    if code is not None:
        env["PYTHONPATH"] = str(code)
    cmd = [sys.executable, "-c", "from edgefair.cli import main; main()", "run", str(recipe), "--out", str(folder / "out"), "-q"]
    t0 = time.perf_counter()
    # cwd: the run's folder, so that only the installed package or `code` can be imported
    with open(folder / "stderr.txt", "wb") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):  # 1: a gate failed, still a full run
        raise SystemExit(f"edgefair run exited {code}:\n{(folder / 'stderr.txt').read_text(errors='replace')}")
    return wall, usage.ru_maxrss * 1024, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=1, help="runs per size, interleaved; the minimum time is kept")
    parser.add_argument("--code", type=Path, default=None,
                        help="run the edgefair package found in this folder (e.g. an older release unpacked) instead of the installed one")
    args = parser.parse_args()
    mb = 1e6
    with tempfile.TemporaryDirectory(prefix="edgefair-scale-") as tmp:
        folder = Path(tmp)
        sets = {}
        for rows in args.rows:
            path, data_bytes = make_eval_set(rows, folder)
            sub = folder / str(rows)
            sub.mkdir()
            sets[rows] = (write_recipe(sub, path, args.bootstrap), data_bytes)
        results: dict[int, list[tuple[float, int, int]]] = {rows: [] for rows in args.rows}
        for _ in range(args.repeats):
            for rows in args.rows:
                results[rows].append(run_once(sets[rows][0], folder / str(rows), args.code))
                wall, peak, code = results[rows][-1]
                print(f"  {rows:>9,} rows: {wall:6.1f} s, peak RSS {peak / mb:7.0f} MB (exit {code})", flush=True)
    print(f"\nedgefair run ({args.code or 'installed'}), one static int8 step, {args.bootstrap} bootstrap replicates, "
          "fresh EDGEFAIR_CACHE_DIR per run")
    print(f"{'rows':>10} {'wall s':>8} {'peak RSS MB':>12} {'data MB':>8}")
    first = args.rows[0]
    for rows in args.rows:
        wall = min(r[0] for r in results[rows])
        peak = max(r[1] for r in results[rows])
        print(f"{rows:>10,} {wall:8.1f} {peak / mb:12.0f} {sets[rows][1] / mb:8.0f}")
    if len(args.rows) > 1:
        last = args.rows[-1]
        t = [min(r[0] for r in results[k]) for k in (first, last)]
        peaks = [max(r[1] for r in results[k]) for k in (first, last)]
        print(f"\ntime {last:,} / {first:,} rows: {t[1] / t[0]:.1f}x (target <= 12x); "
              f"peak RSS grows by {(peaks[1] - peaks[0]) / mb:.0f} MB "
              f"({(peaks[1] - peaks[0]) / (last - first):.0f} B per added row; the data is "
              f"{sets[last][1] / last:.0f} B per row)")


if __name__ == "__main__":
    main()
