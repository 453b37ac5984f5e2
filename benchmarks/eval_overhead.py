"""What does edgefair's evaluation of a step cost over the bare inference it needs?

    python benchmarks/eval_overhead.py [RECIPE ...] [--step NAME] [--repeats 5]

Default: the three reference recipes (Adult MLP, digits CNN, MiniLM; MiniLM only when the `text`
extra is installed). Each recipe is run once (cached) to get its models; then, for every
compressed step (or only `--step`):

- bare: one onnxruntime session and a loop over the eval data in the batches edgefair uses;
- edgefair predict: `evaluate.predict` (session, batching, dtype handling, concatenation);
- edgefair full: predict + probabilities + the step's statistics (`Evaluator.model` and
  `Evaluator.compare`: every group and intersection, the recipe's bootstrap replicates, paired
  against the baseline, intervals widened where the bootstrap collapses).

What a run does once for all its steps (the baseline's outputs, metrics and resampled sums, and
drawing the bootstrap resamples) is timed and printed apart as "per run".

Target (issue 5): full <= 1.10x bare. Prints the split so a miss points at what costs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgefair.cache import Cache, default_dir
from edgefair.evaluate import eval_batch_size, predict
from edgefair.groups import group_masks
from edgefair.metrics import output_kind, to_probabilities
from edgefair.pipeline import run, stats_config
from edgefair.prepare import _load_data, conform_inputs
from edgefair.recipe import load_recipe
from edgefair.runtime import make_session
from edgefair.stats import Evaluator

REPO = Path(__file__).resolve().parent.parent
RECIPES = ["adult_mlp.toml", "digits_cnn.toml", "minilm.toml"]


def best(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out  # the minimum: the cost without the machine's interruptions


def measure(recipe_path: Path, step_name: str | None, repeats: int) -> list[tuple[str, float, float]]:
    recipe = load_recipe(recipe_path)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        report = run(recipe, out, cache=Cache(default_dir()))
        steps = report["steps"]
        chosen = [s for s in steps[1:] if step_name in (None, s["name"])]
        base_path = out / steps[0]["model"]
        data, _, _ = _load_data(recipe)
        data = conform_inputs(make_session(base_path, threads=0), data, "data.eval")
        masks = group_masks(data.attributes, intersections=recipe.data.intersections)
        config = stats_config(recipe)
        base_batch = eval_batch_size(base_path, configured=recipe.evaluate.batch_size, deployed=recipe.latency.batch_size)
        base_out = predict(base_path, data, batch_size=base_batch)
        kind = recipe.model.output if recipe.model.output != "auto" else output_kind(base_out)

        def per_run():
            evaluator = Evaluator(masks, data.labels, data.n, config)
            base = evaluator.model(to_probabilities(base_out, kind), base_out)
            evaluator.compare(base)  # the baseline's own statistics, and the resamples drawn
            return evaluator, base

        t_run, (evaluator, base) = best(per_run, repeats)
        labelled = "labelled" if data.labels is not None else "label-free"
        print(f"{recipe_path.name}: {data.n} rows ({labelled}), {len(masks)} groups, bootstrap {config.n_boot}, "
              f"best of {repeats}; per run (baseline statistics + resamples): {t_run * 1e3:.1f} ms")
        print(f"  {'step':24s} {'batch':>5s} {'bare ms':>9s} {'predict':>16s} {'statistics':>10s} {'full':>16s}")
        for step in chosen:
            step_path = out / step["model"]
            batch = eval_batch_size(step_path, configured=recipe.evaluate.batch_size, deployed=recipe.latency.batch_size)

            def bare():
                sess = ort.InferenceSession(str(step_path), providers=["CPUExecutionProvider"])
                name = sess.get_outputs()[0].name
                return np.concatenate([sess.run([name], feed)[0] for feed in data.batches(batch)])

            def infer():
                return predict(step_path, data, batch_size=batch)

            def statistics(outputs):
                probs = to_probabilities(outputs, kind, tolerance=0.05)
                return evaluator.compare(evaluator.model(probs, outputs), base)

            bare_t, pred_t = [], []
            for _ in range(repeats):  # alternate, so both see the same machine
                t, ref = best(bare, 1)
                bare_t.append(t)
                t, outputs = best(infer, 1)
                pred_t.append(t)
            t_bare, t_pred = min(bare_t), min(pred_t)
            np.testing.assert_allclose(outputs, ref, rtol=1e-5, atol=1e-6)
            t_stats, _ = best(lambda: statistics(outputs), repeats)
            t_full = t_pred + t_stats
            rows.append((f"{recipe_path.stem}/{step['name']}", t_bare, t_full))
            print(f"  {step['name']:24s} {batch:5d} {t_bare * 1e3:9.2f} {t_pred * 1e3:9.2f} ({t_pred / t_bare:4.2f}x)"
                  f" {t_stats * 1e3:10.2f} {t_full * 1e3:9.2f} ({t_full / t_bare:4.2f}x)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipes", nargs="*", type=Path)
    ap.add_argument("--step", default=None, help="step name (default: the first compressed step)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    recipes = args.recipes or [REPO / "calibration_data" / r for r in RECIPES]
    rows: list[tuple[str, float, float]] = []
    for path in recipes:
        if path.name == "minilm.toml" and importlib.util.find_spec("sentence_transformers") is None:
            print(f"{path.name}: skipped (needs the text extra)")
            continue
        rows += measure(path, args.step, args.repeats)
    if rows:
        worst = max(rows, key=lambda r: r[2] / r[1])
        print(f"worst step: {worst[0]} {worst[2] / worst[1]:.2f}x bare (target <= 1.10x)")


if __name__ == "__main__":
    main()
