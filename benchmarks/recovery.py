"""Recovery after structured pruning on the Adult MLP: none vs labelled distillation (data.train)
(also with group weights) vs label-free distillation on the calibration inputs vs the same with
group weights (and with disagreement weights).

    python benchmarks/recovery.py [--sparsity 0.5 0.75] [--json out.json]

All steps of one sparsity run through the real pipeline (`edgefair.pipeline.run`, a recipe written
to a temp folder, no cache, latency off), reading the bundled data of `calibration_data/adult_mlp.toml`:
eval 9,045 rows (the gates' rows, never trained on), calibration 512 rows (label-free recovery
reads only their inputs, and for group weights their sex and race columns), train 36,177
labelled rows. Figures are those report.json carries, on the EVAL rows: overall agreement with
fp32, the worst group's accuracy change and agreement (single-attribute groups with >= 50 rows),
and the fine-tuning time (details.finetune.seconds, one thread). Needs no network.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from edgefair.pipeline import run  # noqa: E402
from edgefair.recipe import load_recipe  # noqa: E402

CAL = ROOT / "calibration_data"
# name -> extra keys of the structured prune step ("" : no recovery)
VARIANTS = {
    "no recovery": "",
    "labelled distillation (train, 2 ep)": 'finetune_epochs = 2\ndistill = true\nrecovery_data = "train"',
    "labelled + groups (train, 2 ep)": (
        'finetune_epochs = 2\ndistill = true\nrecovery_data = "train"\nrecovery_weighting = "groups"'
    ),
    "labelled + groups, no cap (train, 2 ep)": (
        'finetune_epochs = 2\ndistill = true\nrecovery_data = "train"\nrecovery_weighting = "groups"\n'
        'recovery_max_weight = 1000.0'
    ),
    "label-free distillation (calib, 20 ep)": 'finetune_epochs = 20\ndistill = true\nrecovery_data = "calibration"',
    "label-free + groups (calib, 20 ep)": (
        'finetune_epochs = 20\ndistill = true\nrecovery_data = "calibration"\nrecovery_weighting = "groups"'
    ),
    "label-free + groups, cap 10 (calib, 20 ep)": (
        'finetune_epochs = 20\ndistill = true\nrecovery_data = "calibration"\nrecovery_weighting = "groups"\n'
        'recovery_max_weight = 10.0'
    ),
    "label-free + groups, no cap (calib, 20 ep)": (
        'finetune_epochs = 20\ndistill = true\nrecovery_data = "calibration"\nrecovery_weighting = "groups"\n'
        'recovery_max_weight = 1000.0'
    ),
    "label-free + disagreement (calib, 20 ep)": (
        'finetune_epochs = 20\ndistill = true\nrecovery_data = "calibration"\nrecovery_weighting = "disagreement"'
    ),
}


def recipe_text(sparsity: float) -> str:
    steps = []
    for i, extra in enumerate(VARIANTS.values()):
        steps.append(
            f'[[steps]]\nname = "v{i}"\nkind = "prune"\ninput = "baseline"\nstructured = true\nsparsity = {sparsity}\n{extra}'.strip()
        )
    return textwrap.dedent(
        f"""
        [model]
        source = "{ROOT / 'models' / 'adult_mlp.pt2'}"

        [data]
        eval = "{CAL / 'adult_eval.npz'}"
        calibration = "{CAL / 'adult_calib.npz'}"
        train = "{CAL / 'adult_train.npz'}"
        label = "label"
        groups = ["sex", "race"]
        intersections = false
        min_group_size = 50

        [evaluate]
        bootstrap = 200

        [latency]
        enabled = false

        {{steps}}
        """
    ).format(steps="\n\n".join(steps))


def bench(sparsity: float) -> list[dict]:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "r.toml").write_text(recipe_text(sparsity))
        report = run(load_recipe(tmp / "r.toml"), tmp / "out")
    rows = []
    for variant, step in zip(VARIANTS, report["steps"][1:]):
        ok = {g: e for g, e in step["groups"].items() if e.get("status") == "ok"}
        worst_acc = min(ok, key=lambda g: ok[g]["accuracy_delta"])
        worst_agree = min(ok, key=lambda g: ok[g]["agreement"])
        ft = step["details"].get("finetune") or {}
        rows.append({
            "sparsity": sparsity,
            "variant": variant,
            "params": f"{step['details']['params_after']:,}",
            "overall_agreement": step["overall"]["agreement"],
            "overall_accuracy_delta": step["overall"]["accuracy_delta"],
            "worst_accuracy_delta": ok[worst_acc]["accuracy_delta"],
            "worst_accuracy_group": worst_acc,
            "worst_agreement": ok[worst_agree]["agreement"],
            "worst_agreement_group": worst_agree,
            "finetune_seconds": ft.get("seconds"),
            "recovery_rows": ft.get("rows"),
            "labels_used": ft.get("labels_used"),
            "recovery_agreement": ft.get("teacher_agreement"),
        })
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| sparsity | recovery | rows (labels) | overall agreement | overall Δacc | eval worst-group Δacc | eval worst-group agreement | fine-tune s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        data = "-" if r["recovery_rows"] is None else f"{r['recovery_rows']:,} ({'yes' if r['labels_used'] else 'no'})"
        secs = "-" if r["finetune_seconds"] is None else f"{r['finetune_seconds']:.1f}"
        out.append(
            f"| {r['sparsity']:.0%} | {r['variant']} | {data} | {r['overall_agreement']:.4f} | {100 * r['overall_accuracy_delta']:+.2f} pt "
            f"| {100 * r['worst_accuracy_delta']:+.2f} pt ({r['worst_accuracy_group']}) "
            f"| {r['worst_agreement']:.4f} ({r['worst_agreement_group']}) | {secs} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.75])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = []
    for s in args.sparsity:
        print(f"running sparsity {s} ...", file=sys.stderr, flush=True)
        rows += bench(s)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
