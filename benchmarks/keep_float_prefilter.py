"""Which nodes the worst-group keep-float repair ranks when it may rank only some of them
(`keep_float_candidates`): the first compute nodes in graph order, or the noisiest by onnxruntime's
`qdq_loss_debug` on the worst group's calibration rows (`keep_float_prefilter = "sqnr"`), against
ranking every node. EfficientNet-Lite0 (59 quantized nodes), per-channel static int8, the shipped
recipe's repair settings (keep_float_max 6) but with no latency bound (`keep_float_max_slowdown =
inf`) and no latency stage, so that the comparison does not depend on timings (the build machine
was shared by other jobs when this was measured).

    python benchmarks/keep_float_prefilter.py [--candidates 16] [--out DIR]

Runs the real pipeline (no cache) on `calibration_data/efficientnet_lite0.toml`'s data; prints, per
variant, the worst group's top-1 agreement with fp32 on the EVAL rows (never seen by the repair),
the nodes kept in float, and the time of the repair and of the prefilter.
Needs the `vision` extra.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CAL = ROOT / "calibration_data"


def recipe(candidates: int) -> str:
    steps = [("int8-per-channel", "")]
    for name, extra in ((f"graph-order-{candidates}", f'keep_float_candidates = {candidates}\nkeep_float_prefilter = "graph_order"'),
                        (f"sqnr-{candidates}", f'keep_float_candidates = {candidates}\nkeep_float_prefilter = "sqnr"'),
                        ("all-64", "keep_float_candidates = 64")):
        steps.append((name, 'keep_float = "worst_group"\nkeep_float_max = 6\nkeep_float_target = 0.99\n'
                            f'keep_float_max_slowdown = inf\n{extra}'))
    body = "\n".join(
        f'[[steps]]\nname = "{n}"\nkind = "quantize_static"\ninput = "baseline"\nmethod = "minmax"\nper_channel = true\nformat = "qdq"\n{x}\n'
        for n, x in steps
    )
    return f"""
[model]
source = "{ROOT / 'models' / 'efficientnet_lite0.py'}:build"

[data]
eval = "{CAL / 'efficientnet_lite0_eval.npz'}"
calibration = "{CAL / 'efficientnet_lite0_calib.npz'}"
groups = ["lighting", "sensor"]
intersections = true
min_group_size = 50

[evaluate]
bootstrap = 200

[latency]
enabled = false

{body}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from edgefair.pipeline import run
    from edgefair.recipe import load_recipe

    tmp = Path(tempfile.mkdtemp())
    (tmp / "r.toml").write_text(recipe(args.candidates))
    report = run(load_recipe(tmp / "r.toml"), args.out or tmp / "out")
    print("| variant | eval worst-group agreement | kept in float | repair s | prefilter s |")
    print("|---|---|---|---|---|")
    for s in report["steps"][1:]:
        ok = {g: e for g, e in s["groups"].items() if e.get("status") == "ok" and e.get("flip_rate") is not None}
        worst = max(ok, key=lambda g: (ok[g]["flip_rate"], g))
        kf = (s.get("details") or {}).get("keep_float") or {}
        pre = kf.get("prefilter") or {}
        print(f"| {s['name']} | {1 - ok[worst]['flip_rate']:.3f} ({worst}) "
              f"| {', '.join(kf.get('kept_float', [])) or '-'} | {kf.get('seconds', '-')} | {pre.get('seconds', '-')} |")


if __name__ == "__main__":
    main()
