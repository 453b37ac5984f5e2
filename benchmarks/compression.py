"""Compression benchmark on the two reference models: size, p50 latency (1 thread, batch 1 and 64)
and the worst per-group accuracy change of every edgefair step, next to onnxruntime's default
`quantize_dynamic` and `quantize_static` applied to the same fp32 export.

    python benchmarks/compression.py [--runs 500] [--json out.json]

Prints one Markdown table per model. Latency is measured interleaved over all models of a table
(A B C A B C ...), so machine drift hits every row alike. Needs no network.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
from edgefair.data import Dataset, load  # noqa: E402
from edgefair.evaluate import eval_batch_size, predict  # noqa: E402
from edgefair.groups import group_masks  # noqa: E402
from edgefair.latency import LatencySettings, measure_interleaved  # noqa: E402
from edgefair.pipeline import run  # noqa: E402
from edgefair.recipe import load_recipe  # noqa: E402
from edgefair.steps.structured import onnx_inputs  # noqa: E402

def adult_recipe(tmp: Path):
    """The bundled recipe as it is: quantization, unstructured and structured pruning."""
    return load_recipe(ROOT / "calibration_data" / "adult_mlp.toml")


def ort_defaults(baseline: Path, calib: dict[str, np.ndarray], tmp: Path) -> dict[str, Path]:
    """onnxruntime's quantizers with their default arguments (QDQ, per-tensor, MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{k: v[i : i + 1] for k, v in calib.items()} for i in range(len(next(iter(calib.values()))))])

        def get_next(self):
            return next(self.it, None)

    logging.getLogger().setLevel(logging.ERROR)
    out = {"ort quantize_dynamic": tmp / "ort-dynamic.onnx", "ort quantize_static": tmp / "ort-static.onnx"}
    quantize_dynamic(str(baseline), str(out["ort quantize_dynamic"]))
    quantize_static(str(baseline), str(out["ort quantize_static"]), Reader())
    return out


def bench(recipe, runs: int) -> tuple[list[dict], str]:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        report = run(recipe, tmp / "out")
        models = {s["name"]: tmp / "out" / s["model"] for s in report["steps"]}
        d = recipe.data
        ev = load(recipe.resolve(d.eval), key="data.eval", label=d.label, groups=d.groups)
        calib = load(recipe.resolve(d.calibration), key="data.calibration", label=None, groups=())
        names, _ = onnx_inputs(models["baseline"])
        feeds = {k: calib.inputs[k] for k in names}
        ev = Dataset(ev.path, {k: ev.inputs[k] for k in names}, ev.labels, ev.attributes)
        models.update(ort_defaults(models["baseline"], feeds, tmp))
        names, paths = list(models), list(models.values())
        lat = {}
        for bs in (1, 64):
            res = measure_interleaved(paths, ev.inputs, LatencySettings(threads=1, batch_size=bs, warmup=50, runs=runs, memory=False, n_boot=0))
            lat[bs] = [r["p50_ms"] for r in res]
        masks = group_masks(ev.attributes, intersections=False)
        # batch-dependent models (dynamic int8) are evaluated at the deployed batch, as edgefair does
        correct = {
            n: predict(p, ev, batch_size=eval_batch_size(p, configured=None, deployed=1)).argmax(1) == ev.labels
            for n, p in models.items()
        }
        rows = []
        for i, n in enumerate(names):
            deltas = {g: float(correct[n][m].mean() - correct["baseline"][m].mean()) for g, m in masks.items() if m.sum() >= d.min_group_size}
            worst = min(deltas, key=deltas.get)
            rows.append({
                "model": n, "size_kb": paths[i].stat().st_size / 1024,
                "p50_b1_ms": lat[1][i], "ratio_b1": lat[1][i] / lat[1][0],
                "p50_b64_ms": lat[64][i], "ratio_b64": lat[64][i] / lat[64][0],
                "accuracy": float(correct[n].mean()), "worst_group": worst, "worst_delta": deltas[worst],
            })
    return rows, markdown(rows)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| model | size KB | p50 ms b1 | vs fp32 | p50 ms b64 | vs fp32 | accuracy | worst group Δacc |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['size_kb']:.0f} | {r['p50_b1_ms']:.4f} | {r['ratio_b1']:.2f} | {r['p50_b64_ms']:.3f} | "
            f"{r['ratio_b64']:.2f} | {r['accuracy']:.4f} | {r['worst_delta'] * 100:+.2f} pt ({r['worst_group']}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=500, help="timed rounds per batch size")
    p.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = p.parse_args(argv)
    out = {}
    with tempfile.TemporaryDirectory() as t:
        recipes = {"Adult MLP": adult_recipe(Path(t)), "digits CNN": load_recipe(ROOT / "calibration_data" / "digits_cnn.toml")}
        for title, recipe in recipes.items():
            rows, table = bench(recipe, args.runs)
            out[title] = rows
            print(f"\n### {title}\n\n{table}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
