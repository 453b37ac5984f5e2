"""The one module that knows the order: recipe -> model source -> export -> steps -> evaluate ->
latency -> gates -> result. Everything it calls is a leaf. Nothing is written to the output folder
here: models are built in a scratch folder and handed to `reports.publish` with the result.
"""

from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import __version__
from . import data as data_mod
from .errors import DataError
from .evaluate import conform_inputs, predict
from .export import check_parity, export_onnx
from .groups import group_masks
from .io import sha256_file
from .latency import LatencySettings, measure_interleaved
from .metrics import to_probabilities
from .recipe import Recipe
from .runtime import make_session
from .source import ModelSource, load_source
from .stats import StatsConfig, evaluate_step
from .steps import REGISTRY, StepContext

PARITY_ROWS = 256  # eval rows compared between torch and onnxruntime after export
EXPORT_EXAMPLE_ROWS = 8  # rows traced by the exporter (batch > 1 keeps the batch axis dynamic)


@dataclass
class StepModel:
    index: int
    name: str
    kind: str
    input: str | None
    path: Path  # in the scratch folder
    torch_model: Any = None
    warnings: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def filename(self) -> str:
        return f"{self.index:02d}-{self.name}.onnx"


@dataclass
class Inputs:
    """Everything validated before any compression: the source, the data fitted to the model."""

    recipe: Recipe
    source: ModelSource
    eval: data_mod.Dataset
    calibration: data_mod.Dataset | None
    train: data_mod.Dataset | None
    baseline: StepModel
    parity: dict[str, Any] | None


Progress = Callable[[str], None]


def prepare(recipe: Recipe, workdir: Path, progress: Progress = lambda s: None) -> Inputs:
    """Load the source and data, export the baseline and check it against torch and the data."""
    d = recipe.data
    t0 = time.perf_counter()
    source = load_source(
        recipe.model.source,
        base=recipe.base,
        weights=recipe.resolve(recipe.model.weights) if recipe.model.weights else None,
        trust_pickle=recipe.model.trust_pickle,
    )
    eval_data = data_mod.load(recipe.resolve(d.eval), key="data.eval", label=d.label, groups=d.groups, features=d.features)
    calib = None
    if d.calibration:
        calib = data_mod.load(recipe.resolve(d.calibration), key="data.calibration", label=d.label, groups=(), features=d.features)
    train = None
    if d.train:
        train = data_mod.load(recipe.resolve(d.train), key="data.train", label=d.label, groups=(), features=d.features, require_labels=True)
    eval_data, calib = _name_csv_inputs(source, eval_data, calib)
    if train is not None:
        train = _name_csv_inputs(source, train, None)[0]

    baseline = StepModel(0, "baseline", "export", None, workdir / "00-baseline.onnx", torch_model=source.module)
    parity = None
    if source.module is None:
        shutil.copyfile(source.path, baseline.path)
    else:
        _check_torch_inputs(source, eval_data)
        progress("export: torch -> ONNX")
        examples = {k: v[:EXPORT_EXAMPLE_ROWS] for k, v in eval_data.inputs.items()}
        export_onnx(
            source.module, examples, source.input_names, baseline.path, opset=recipe.model.opset, dynamic_axes=recipe.model.dynamic_axes
        )
    session = make_session(baseline.path, threads=0)
    eval_data = conform_inputs(session, eval_data, "data.eval")
    if calib is not None:
        calib = conform_inputs(session, calib, "data.calibration")
    if train is not None:
        train = conform_inputs(session, train, "data.train")
    if source.module is not None:
        feed = {k: v[:PARITY_ROWS] for k, v in eval_data.inputs.items()}
        parity = check_parity(
            source.module, session, feed, source.input_names, atol=recipe.model.parity_atol, rtol=recipe.model.parity_rtol
        ).as_dict()
    baseline.seconds = time.perf_counter() - t0
    return Inputs(recipe, source, eval_data, calib, train, baseline, parity)


def _name_csv_inputs(source: ModelSource, eval_data, calib):
    """A csv file's features form the model's single input: give them the input's name."""
    if data_mod.CSV_INPUT not in eval_data.inputs:
        return eval_data, calib
    if len(source.input_names) != 1:
        raise DataError(f"data.eval: a .csv file feeds one model input, the model has {len(source.input_names)}")
    name = source.input_names[0]
    calib = calib.rename_input(data_mod.CSV_INPUT, name) if calib is not None and data_mod.CSV_INPUT in calib.inputs else calib
    return eval_data.rename_input(data_mod.CSV_INPUT, name), calib


def _check_torch_inputs(source: ModelSource, data: data_mod.Dataset) -> None:
    import torch

    missing = [n for n in source.input_names if n not in data.inputs]
    if missing:
        have = ", ".join(sorted(data.inputs)) or "none"
        raise DataError(f"data.eval: {data.path} has no array {missing[0]!r} for model input {missing[0]!r} (inputs there: {have})")
    args = [torch.from_numpy(np.ascontiguousarray(data.inputs[n][:2])) for n in source.input_names]
    try:
        with torch.no_grad():
            source.module(*args)
    except Exception as e:
        shapes = ", ".join(f"{n}: {tuple(data.inputs[n].shape)}" for n in source.input_names)
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise DataError(f"data.eval: arrays ({shapes}) in {data.path.name} do not fit the model: {first}") from e


def compress(inputs: Inputs, workdir: Path, progress: Progress = lambda s: None) -> list[StepModel]:
    """Apply every step to its input step's model; return the baseline and the steps, in order."""
    recipe = inputs.recipe
    models = [inputs.baseline]
    by_name = {"baseline": inputs.baseline}

    def export(module: Any, dst: Path) -> None:
        examples = {k: v[:EXPORT_EXAMPLE_ROWS] for k, v in inputs.eval.inputs.items()}
        export_onnx(
            module, examples, inputs.source.input_names, dst, opset=recipe.model.opset, dynamic_axes=recipe.model.dynamic_axes
        )

    for spec in recipe.steps:
        src = by_name[spec.input]
        progress(f"step {spec.index}: {spec.name} ({spec.kind})")
        t0 = time.perf_counter()
        step = StepModel(spec.index, spec.name, spec.kind, spec.input, workdir / f"{spec.index:02d}-{spec.name}.onnx")
        ctx = StepContext(
            torch_model=src.torch_model,
            calibration=inputs.calibration,
            train=inputs.train,
            export=export,
            workdir=workdir,
            seed=recipe.evaluate.seed,
        )
        outcome = REGISTRY[spec.kind].apply(spec.config, src.path, step.path, ctx)
        step.torch_model, step.warnings, step.details = outcome.torch_model, outcome.warnings, outcome.details
        step.seconds = time.perf_counter() - t0
        models.append(step)
        by_name[spec.name] = step
    return models


def evaluate(inputs: Inputs, models: list[StepModel], progress: Progress = lambda s: None) -> list[dict[str, Any]]:
    """Per-group statistics of every model against the baseline (step 0), plus latency and size."""
    recipe = inputs.recipe
    ev = recipe.evaluate
    masks = group_masks(inputs.eval.attributes, intersections=recipe.data.intersections)
    config = StatsConfig(
        n_boot=ev.bootstrap, confidence=ev.confidence, seed=ev.seed, min_group_size=recipe.data.min_group_size, n_bins=ev.ece_bins
    )
    progress("evaluate: inference on eval data")
    outputs = [predict(m.path, inputs.eval, batch_size=ev.batch_size) for m in models]
    probs = [to_probabilities(o, recipe.model.output) for o in outputs]
    latency: list[dict[str, Any] | None] = [None] * len(models)
    if recipe.latency.enabled:
        progress("latency: interleaved over all models")
        lat = recipe.latency
        latency = measure_interleaved(
            [m.path for m in models],
            inputs.eval.inputs,
            LatencySettings(threads=lat.threads, batch_size=lat.batch_size, warmup=lat.warmup, runs=lat.runs),
        )
    progress("statistics: groups, bootstrap, tests")
    results = []
    for i, m in enumerate(models):
        base = i > 0
        stats = evaluate_step(
            masks=masks,
            probs=probs[i],
            outputs=outputs[i],
            y_true=inputs.eval.labels,
            base_probs=probs[0] if base else None,
            base_outputs=outputs[0] if base else None,
            config=config,
        )
        results.append({"stats": stats, "latency": latency[i], "predictions": probs[i].argmax(axis=1)})
    return results


def environment() -> dict[str, Any]:
    import onnx
    import onnxruntime
    import torch

    from .machine import cpu_info

    cpu = cpu_info()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "execution_provider": "CPUExecutionProvider",
        "edgefair": __version__,
        **cpu,
    }


def run(recipe: Recipe, out_dir: Path, progress: Progress = lambda s: None) -> dict[str, Any]:
    """The whole job. Raises EdgefairError on bad input before anything is written to `out_dir`."""
    import tempfile

    from .gates import apply_gates
    from .publish import publish
    from .report import build_report

    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgefair-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        inputs = prepare(recipe, workdir, progress)
        timings["prepare"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        models = compress(inputs, workdir, progress)
        timings["compress"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = evaluate(inputs, models, progress)
        timings["evaluate"] = time.perf_counter() - t0
        report = build_report(
            recipe=recipe, inputs=inputs, models=models, results=results, environment=environment(), timings=timings
        )
        apply_gates(report, recipe.gates, confidence=recipe.evaluate.confidence)
        publish(out_dir, report, {m.index: m.path for m in models})
    return report
