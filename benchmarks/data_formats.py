"""Time `edgefair.data.load` on the same table stored as .npz, .csv and .parquet, and on an image
folder, and print the figures.

    python benchmarks/data_formats.py [--rows 100000] [--features 20] [--images 500] [--repeat 3]

The table: float32 features, an integer label and two string group columns, seeded. The images:
32x32 RGB PNGs under <light>/<label>/, resized to 24x24 and normalised. Best of `repeat` runs.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--features", type=int, default=20)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from edgefair import data as data_mod
    from edgefair.formats import ReadOptions

    rng = np.random.default_rng(0)
    n, k = args.rows, args.features
    x = rng.normal(size=(n, k)).astype(np.float32)
    y = rng.integers(0, 2, n)
    g = rng.choice(["a", "b", "c"], n)
    h = rng.choice(["x", "y"], n)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        np.savez(root / "t.npz", features=x, label=y, g=g, h=h)
        with open(root / "t.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([*(f"f{i}" for i in range(k)), "label", "g", "h"])
            w.writerows([[*x[i].tolist(), int(y[i]), g[i], h[i]] for i in range(n)])
        cols = {f"f{i}": x[:, i] for i in range(k)}
        cols.update(label=y, g=pa.array(g.tolist()), h=pa.array(h.tolist()))
        pq.write_table(pa.table(cols), root / "t.parquet")
        for light in ("dim", "bright"):
            for label in ("0", "1"):
                (root / "imgs" / light / label).mkdir(parents=True)
        for i in range(args.images):
            px = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(px).save(root / "imgs" / ("dim", "bright")[i % 2] / str(i // 2 % 2) / f"{i}.png")

        def best(fn) -> float:
            times = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            return min(times)

        print(f"table: {n} rows x {k} float32 features, label, 2 group columns")
        for fmt in ("npz", "csv", "parquet"):
            path = root / f"t.{fmt}"
            s = best(lambda: data_mod.load(path, key="data.eval", label=None, groups=("g", "h")))
            print(f"  .{fmt:8s} {path.stat().st_size / 1e6:7.1f} MB on disk  load {s:6.2f} s")
        opts = ReadOptions(subfolders=("light", "label"), image_size=(24, 24), mean=(0.5,), std=(0.25,))
        s = best(lambda: data_mod.load(root / "imgs", key="data.eval", label=None, groups=("light",), options=opts))
        print(f"image folder: {args.images} PNGs 32x32 -> 24x24  load {s:6.2f} s ({1e3 * s / args.images:.2f} ms per image)")


if __name__ == "__main__":
    main()
