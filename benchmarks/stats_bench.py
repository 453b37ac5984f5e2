"""Time the full statistics of one compression step: edgefair vs fairlearn's MetricFrame bootstrap.

    python benchmarks/stats_bench.py [--n-boot 1000] [--fairlearn-boot 10] [--repeat 5]

Workload (Adult eval set, ~9k rows, groups sex, race and sex&race): the baseline is the reference
MLP ``models/adult_mlp.pt2``; the step is the same MLP with every weight matrix fake-quantized to
int8 (symmetric, per tensor), a realistic stand-in for a dynamic-quantization step. edgefair:
``group_masks`` + ``to_probabilities`` + ``evaluate_step`` (all metrics, all groups and
intersections, paired stratified bootstrap with ``--n-boot`` replicates, McNemar + Holm, disparity).

fairlearn: one ``MetricFrame`` per scope (sex, race, sex&race) whose metrics cover both models on
the same resampled rows (accuracy, balanced accuracy, TPR, FPR, precision, F1, selection rate,
Brier, log loss, ECE for the step and the baseline, plus flip rate: 21 metric functions), with
``n_boot`` and ``ci_quantiles``. fairlearn recomputes every metric for every replicate, so it is
timed at ``--fairlearn-boot`` replicates and extrapolated linearly to ``--n-boot``:
``T(n_boot) = T(0) + n_boot * (T(k) - T(0)) / k`` (printed as such).

Falls back to synthetic probabilities with the same groups if the model or data are missing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgefair.groups import group_masks  # noqa: E402
from edgefair.metrics import to_probabilities  # noqa: E402
from edgefair.stats import StatsConfig, evaluate_step  # noqa: E402

DATA = ROOT / "calibration_data" / "adult_eval.npz"
MODEL = ROOT / "models" / "adult_mlp.pt2"
ATTRIBUTES = ("sex", "race")


def load_workload() -> tuple[dict, np.ndarray, np.ndarray, np.ndarray, str]:
    """Attributes, labels, baseline logits, step logits, and a line describing where they came from."""
    if DATA.exists() and MODEL.exists():
        import torch

        data = np.load(DATA)
        x = torch.from_numpy(data["features"])
        model = torch.export.load(str(MODEL)).module()
        with torch.no_grad():
            base = model(x).numpy().astype(np.float64)
            for name, p in model.named_parameters():
                if p.ndim == 2:  # weights only, as dynamic quantization does
                    scale = p.abs().max() / 127.0
                    p.copy_(torch.round(p / scale).clamp(-127, 127) * scale)
            step = model(x).numpy().astype(np.float64)
        attrs = {a: data[a] for a in ATTRIBUTES}
        return attrs, data["label"], base, step, f"{DATA.name} + {MODEL.name} (step: int8 fake-quantized weights)"
    rng = np.random.default_rng(0)
    n = 9045
    attrs = {"sex": rng.choice(["Female", "Male"], n, p=[0.33, 0.67]),
             "race": rng.choice(["Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "Other", "White"], n,
                                p=[0.01, 0.03, 0.09, 0.01, 0.86])}
    y = rng.integers(0, 2, n)
    z = rng.normal(0, 2, n) + (2 * y - 1) * 1.5
    base = np.stack([-z / 2, z / 2], axis=1)
    return attrs, y, base, base + rng.normal(0, 0.2, base.shape), "synthetic (model or data missing)"


def time_edgefair(attrs, y, base_out, step_out, n_boot: int, repeat: int) -> tuple[list[float], dict]:
    config = StatsConfig(n_boot=n_boot)
    times, result = [], {}
    for _ in range(repeat):
        t0 = time.perf_counter()
        masks = group_masks(attrs, intersections=True)
        base, step = to_probabilities(base_out), to_probabilities(step_out)
        result = evaluate_step(masks=masks, probs=step, outputs=step_out, y_true=y,
                               base_probs=base, base_outputs=base_out, config=config)
        times.append(time.perf_counter() - t0)
    return times, result


def _ece(y_true, y_pred, p1):
    p1 = np.asarray(p1)
    conf = np.maximum(p1, 1.0 - p1)
    correct = ((p1 > 0.5).astype(int) == np.asarray(y_true)).astype(float)
    idx = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
    gaps = [abs((conf[idx == b] - correct[idx == b]).sum()) for b in range(15)]
    return float(np.sum(gaps) / len(conf))


def fairlearn_frames(attrs, y, base_out, step_out, n_boot: int | None) -> float:
    """Seconds to build the three MetricFrames (one per scope), with n_boot replicates each."""
    import pandas as pd
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate
    from sklearn import metrics as skm

    probs = {"step": to_probabilities(step_out), "base": to_probabilities(base_out)}
    label_metrics = {"accuracy": skm.accuracy_score, "balanced_accuracy": skm.balanced_accuracy_score,
                     "tpr": skm.recall_score, "fpr": false_positive_rate, "precision": skm.precision_score,
                     "f1": skm.f1_score, "selection_rate": selection_rate}
    metrics, params = {}, {}
    for model in ("step", "base"):
        for name, fn in label_metrics.items():
            if model == "step":
                metrics[f"{model}_{name}"] = fn
            else:  # the baseline's predictions travel as a sample param, so rows stay paired
                metrics[f"{model}_{name}"] = lambda yt, yp, pred, fn=fn: fn(yt, pred)
                params[f"{model}_{name}"] = {"pred": probs["base"].argmax(1)}
        # sample params must be 1-D: the probability of class 1 carries everything for K = 2
        metrics[f"{model}_brier"] = lambda yt, yp, p1: skm.brier_score_loss(yt, p1)
        metrics[f"{model}_log_loss"] = lambda yt, yp, p1: skm.log_loss(yt, p1, labels=[0, 1])
        metrics[f"{model}_ece"] = _ece
        for name in ("brier", "log_loss", "ece"):
            params[f"{model}_{name}"] = {"p1": probs[model][:, 1]}
    metrics["flip_rate"] = lambda yt, yp, pred: float(np.mean(np.asarray(yp) != np.asarray(pred)))
    params["flip_rate"] = {"pred": probs["base"].argmax(1)}
    warnings.filterwarnings("ignore")  # sklearn warns about undefined precision in small resamples
    boot = {} if n_boot is None else {"n_boot": n_boot, "ci_quantiles": [0.025, 0.975], "random_state": 0}
    t0 = time.perf_counter()
    for scope in (["sex"], ["race"], ["sex", "race"]):
        MetricFrame(metrics=metrics, y_true=y, y_pred=probs["step"].argmax(1), sample_params=params,
                    sensitive_features=pd.DataFrame({a: attrs[a] for a in scope}), **boot)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--fairlearn-boot", type=int, default=5, help="replicates actually run by fairlearn")
    parser.add_argument("--repeat", type=int, default=5, help="edgefair runs (the median is reported)")
    args = parser.parse_args(argv)

    attrs, y, base_out, step_out, source = load_workload()
    n_groups = len(group_masks(attrs, intersections=True))
    flips = int((base_out.argmax(1) != step_out.argmax(1)).sum())
    print(f"data: {source}; n={len(y)}, groups={n_groups} (incl. intersections), flips={flips}")

    times, result = time_edgefair(attrs, y, base_out, step_out, args.n_boot, args.repeat)
    ours = statistics.median(times)
    ok = sum(g["status"] == "ok" for g in result["groups"].values())
    print(f"edgefair evaluate_step, {args.n_boot} paired bootstrap replicates, {ok} groups ok: "
          f"median {ours:.3f} s over {args.repeat} runs (first {times[0]:.3f} s, min {min(times):.3f} s)")

    t_zero = fairlearn_frames(attrs, y, base_out, step_out, None)
    t_k = fairlearn_frames(attrs, y, base_out, step_out, args.fairlearn_boot)
    per_replicate = (t_k - t_zero) / args.fairlearn_boot
    theirs = t_zero + args.n_boot * per_replicate
    print(f"fairlearn MetricFrame x3 scopes: no bootstrap {t_zero:.3f} s; n_boot={args.fairlearn_boot} "
          f"{t_k:.3f} s -> {per_replicate:.3f} s/replicate; extrapolated to n_boot={args.n_boot}: {theirs:.1f} s")
    print(f"speed-up: {theirs / ours:.0f}x (target >= 30x); edgefair under 1 s: {'yes' if ours < 1 else 'NO'}")


if __name__ == "__main__":
    main()
