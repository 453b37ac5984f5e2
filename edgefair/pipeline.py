"""The one module that knows the order: recipe -> model source -> export -> steps -> evaluate ->
latency -> gates -> reports. Everything it calls is a leaf. Models are built in a scratch folder;
the output folder is written only at the end, by `publish`.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .cache import Cache, make_key
from .config import as_dict
from .errors import DataError
from .evaluate import eval_batch_size, predict, predict_batches
from .groups import group_masks
from .io import sha256_file
from .latency import LatencySettings, speed_warnings
from .metrics import COMPRESSED_ROW_SUM_TOLERANCE, ROW_SUM_TOLERANCE, to_probabilities
from .prepare import Inputs, Progress, StepModel, prepare, version
from .probe import load_device_latency
from .recipe import Recipe, StepSpec
from .stats import Evaluator, StatsConfig
from .steps import REGISTRY, StepContext


def step_key(spec: StepSpec, inputs: Inputs, src: StepModel) -> str:
    kind = REGISTRY[spec.kind]
    data = []
    if kind.needs_calibration and inputs.calibration is not None:
        data.append(inputs.data_digest("calibration"))  # content as read: data.features changes it too
        # group-aware calibration and worst-group repair read the file's group columns too
        data += [sha256_file(inputs.calibration.path), inputs.recipe.data.groups]
    if kind.needs_torch:  # recovery reads train and/or calibration inputs, and group columns from their files
        for name in ("train", "calibration"):
            d = getattr(inputs, name)
            if d is not None:
                data += [name, inputs.data_digest(name), sha256_file(d.path)]
        data += [inputs.recipe.data.groups, inputs.output_kind]  # how fine-tuning reads the model's outputs
    return make_key(
        "step", __version__, spec.kind, as_dict(spec.config), sha256_file(src.path), data, inputs.recipe.evaluate.seed,
        version("onnxruntime"), version("onnx"), version("torch") if kind.needs_torch else None,
    )


class Compressor:
    """Applies the steps in order, reusing cached step models; rebuilds torch models on demand.

    `search=True` (`edgefair tune`: the steps are alternative candidates, not one chain): a
    candidate whose step raises, or whose model onnxruntime cannot run on the first eval rows, is
    skipped with the reason (and so is every candidate that reads from it) instead of stopping the
    run; no candidate starts once `budget_s` seconds have passed since `started`; Ctrl-C stops the
    search and keeps the candidates already built. `skipped`, `not_tried` and `interrupted` say
    what happened; the models returned are renumbered 1, 2, ... so indices stay positions.
    """

    def __init__(self, inputs: Inputs, workdir: Path, cache: Cache, progress: Progress, *, search: bool = False,
                 budget_s: float | None = None, started: float | None = None, executor: Any = None) -> None:
        from .executor import Executor

        self.inputs, self.workdir, self.cache, self.progress = inputs, workdir, cache, progress
        self.executor = executor or Executor()  # builds candidates ahead (e.g. on Ray); in process: nothing ahead
        self.prebuilt: dict[str, Any] = {}  # candidate name -> executor.Built, taken by _apply
        self.by_name: dict[str, StepModel] = {"baseline": inputs.baseline}
        self.specs = {s.name: s for s in inputs.recipe.steps}
        self.search, self.budget_s = search, budget_s
        self.started = time.perf_counter() if started is None else started
        self.skipped: list[dict[str, str]] = []  # {"name", "kind", "reason"}: could not run on this source or data
        self.not_tried: list[dict[str, str]] = []  # {"name", "kind", "reason"}: budget spent or interrupted
        self.interrupted = False
        self._armed = False  # Ctrl-C interrupts the candidate being built (see _trap_sigint)

    def run(self) -> list[StepModel]:
        if self.search:
            return self._search()
        models = [self.inputs.baseline]
        for spec in self.inputs.recipe.steps:
            self.progress(f"step {spec.index}: {spec.name} ({spec.kind})")
            models.append(self._step(spec))
        return models

    def _search(self) -> list[StepModel]:
        specs = list(self.inputs.recipe.steps)
        built: list[StepModel] = []
        lost: dict[str, str] = {}  # candidate name -> why it has no model, for the candidates reading it
        restore = self._trap_sigint()
        try:
            self.prebuilt = self.executor.build_candidates(self, specs)
            for k, spec in enumerate(specs, 1):
                stop = None if spec.name in self.prebuilt else "interrupted (Ctrl-C)" if self.interrupted else self._budget_spent()
                if stop:
                    self.not_tried += [{"name": s.name, "kind": s.kind, "reason": stop} for s in specs[k - 1:]]
                    break
                head = f"candidate {k}/{len(specs)}: {spec.name} ({spec.kind})"
                if spec.input in lost:
                    lost[spec.name] = f"its input {spec.input!r} was not built ({lost[spec.input]})"
                    self.skipped.append({"name": spec.name, "kind": spec.kind, "reason": lost[spec.name]})
                    self.progress(f"{head} skipped: {lost[spec.name]}")
                    continue
                t0 = time.perf_counter()
                try:
                    step = self._build(spec)
                except KeyboardInterrupt:  # keep what was found: the caller evaluates and reports it
                    self.interrupted = True
                    self.not_tried.append({"name": spec.name, "kind": spec.kind, "reason": "interrupted (Ctrl-C)"})
                    lost[spec.name] = "interrupted"
                    self.by_name.pop(spec.name, None)
                    self.progress(f"{head} interrupted after {time.perf_counter() - t0:.1f} s")
                    continue
                except Exception as e:  # noqa: BLE001 - any failure of one candidate is that candidate's
                    reason = self._one_line(e)
                    lost[spec.name] = reason
                    self.by_name.pop(spec.name, None)
                    self.skipped.append({"name": spec.name, "kind": spec.kind, "reason": reason})
                    self.progress(f"{head} skipped after {time.perf_counter() - t0:.1f} s: {reason}")
                    continue
                built.append(step)
                secs = time.perf_counter() - t0
                shown = f"{secs:.1f}" if secs >= 0.95 else f"{secs:.2f}"
                self.progress(f"{head} ... {shown} s" + (" (cached)" if step.cache == "hit" else ""))
        finally:
            restore()
        for i, step in enumerate(built, 1):
            step.index = i
        return [self.inputs.baseline, *built]

    def _build(self, spec: StepSpec) -> StepModel:
        """One candidate; Ctrl-C while it is built raises KeyboardInterrupt here (and only here)."""
        self._armed = True
        try:
            step = self._step(spec)
            self._check_runs(step)
            return step
        finally:
            self._armed = False

    def _trap_sigint(self) -> Any:
        """During the search, Ctrl-C sets `interrupted` and interrupts only the candidate being built
        (`_build`), so that it never lands in the search's own bookkeeping. Returns what puts the
        previous handler back (nothing to do outside the main thread, where signals are not handled)."""
        import signal
        import threading

        self._armed = False
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_sigint(signum: int, frame: Any) -> None:
            self.interrupted = True
            if self._armed:
                self._armed = False
                raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
        return lambda: signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)

    def _budget_spent(self) -> str | None:
        if self.budget_s is None:
            return None
        elapsed = time.perf_counter() - self.started
        return f"time budget of {self.budget_s:g} s spent ({elapsed:.1f} s elapsed)" if elapsed >= self.budget_s else None

    def _check_runs(self, step: StepModel) -> None:
        """A candidate onnxruntime cannot load or run on the first eval rows cannot be evaluated."""
        from .runtime import fixed_batch, make_session, run_batched

        session = make_session(step.path, threads=1)
        rows = fixed_batch(session) or min(self.inputs.eval.n, 8)
        try:
            run_batched(session, [{k: v[:rows] for k, v in self.inputs.eval.inputs.items()}])
        except Exception as e:
            raise RuntimeError(f"onnxruntime cannot run the model: {self._one_line(e)}") from e

    @staticmethod
    def _one_line(e: BaseException) -> str:
        text = str(e).strip()
        return text.splitlines()[0] if text else e.__class__.__name__

    def _step(self, spec: StepSpec) -> StepModel:
        t0 = time.perf_counter()
        built = self.prebuilt.get(spec.name)  # built by the executor's task, which timed the build
        src = self.by_name[spec.input]
        step = StepModel(spec.index, spec.name, spec.kind, spec.input, self.workdir / f"{spec.index:02d}-{spec.name}.onnx")
        key = step_key(spec, self.inputs, src)
        seen = len(self.cache.problems)
        cached = self.cache.get_json("step", key)
        if cached is not None and self.cache.get_file("step", key, step.path):
            step.warnings, step.details, step.cache = cached["warnings"], cached["details"], "hit"
        else:
            self._apply(spec, src, step)
            step.cache = "miss" if self.cache.enabled else "off"
            self.cache.put_file("step", key, step.path)
            self.cache.put_json("step", key, {"warnings": step.warnings, "details": step.details})
        step.warnings = [*step.warnings, *self.cache.problems[seen:]]  # corrupt cache entries, recomputed
        step.seconds = time.perf_counter() - t0
        if step.cache != "hit" and built is not None and built.seconds is not None:
            step.seconds = built.seconds
        self.by_name[spec.name] = step
        return step

    def _apply(self, spec: StepSpec, src: StepModel, step: StepModel) -> None:
        if spec.name in self.prebuilt:  # built by the executor's task: its model, warnings and details
            self.prebuilt.pop(spec.name).apply_to(step)
            return
        if REGISTRY[spec.kind].needs_torch and src.torch_model is None:
            self._rebuild_torch(src)
        ctx = StepContext(
            torch_model=src.torch_model,
            calibration=self.inputs.calibration,
            train=self.inputs.train,
            export=self.inputs.export,
            workdir=self.workdir,
            seed=self.inputs.recipe.evaluate.seed,
            probabilities=self.inputs.probabilities,
            groups=self.inputs.recipe.data.groups, label=self.inputs.recipe.data.label, output_kind=self.inputs.output_kind,
            progress=getattr(self.progress, "advance", None),
        )
        outcome = REGISTRY[spec.kind].apply(spec.config, src.path, step.path, ctx)
        step.torch_model, step.warnings, step.details = outcome.torch_model, outcome.warnings, outcome.details

    def _rebuild_torch(self, model: StepModel) -> None:
        """A cache hit has no torch model; a later torch-level step needs it: recompute the chain."""
        if model.index == 0:
            model.torch_model = self.inputs.module()
            return
        spec = self.specs[model.name]
        scratch = StepModel(model.index, model.name, model.kind, model.input, self.workdir / f"rebuild-{model.path.name}")
        self._apply(spec, self.by_name[spec.input], scratch)
        model.torch_model = scratch.torch_model


def stats_config(recipe: Recipe) -> StatsConfig:
    ev = recipe.evaluate
    return StatsConfig(n_boot=ev.bootstrap, confidence=ev.confidence, seed=ev.seed, min_group_size=recipe.data.min_group_size,
                       n_bins=ev.ece_bins, positive_label=recipe.data.positive_label, embedding=recipe.model.output == "embedding")


def _probs(outputs: np.ndarray, kind: str, model: StepModel) -> np.ndarray:
    """Class probabilities, or for an embedding a placeholder that no statistic reads as classes."""
    if kind == "embedding":
        return np.full((len(outputs), 2), 0.5)
    return _probabilities(outputs, kind, model)


def _probabilities(outputs: np.ndarray, kind: str, model: StepModel) -> np.ndarray:
    """Read every step's outputs the way the baseline's are read; compressed probability outputs
    may be off by quantization error."""
    tolerance = COMPRESSED_ROW_SUM_TOLERANCE if model.index > 0 else ROW_SUM_TOLERANCE
    try:
        return to_probabilities(outputs, kind, tolerance=tolerance)
    except DataError as e:
        raise DataError(f"model.output: step {model.index} ({model.name}): {e}") from e


def _nonfinite_mask(outputs: np.ndarray) -> np.ndarray:
    return ~np.isfinite(outputs.reshape(len(outputs), -1)).all(axis=1)


def _zero_nonfinite(outputs: np.ndarray) -> np.ndarray:
    """Rows with NaN/inf become zeros: as raw outputs their cosine to the baseline is 0."""
    out = outputs.astype(np.float64, copy=True)
    out[_nonfinite_mask(outputs)] = 0.0
    return out


def _wrong_where(probs: np.ndarray, bad: np.ndarray, labels: np.ndarray | None, base_pred: np.ndarray) -> np.ndarray:
    """Rows whose outputs were NaN/inf predict no usable class: give all their mass to the lowest
    class that is neither the label nor the baseline's prediction (with two classes: not the
    label, or without labels not the baseline's), so they count as wrong and as changed instead of
    as whatever argmax makes of a uniform row (class 0)."""
    if not bad.any():
        return probs
    k = probs.shape[1]
    avoid = [base_pred[bad]] if labels is None else [labels[bad]] + ([base_pred[bad]] if k > 2 else [])
    cls = np.zeros(int(bad.sum()), dtype=np.int64)
    for _ in range(len(avoid)):  # step past each avoided class (at most two moves)
        for a in avoid:
            cls = np.where(cls == a, (cls + 1) % k, cls)
    out = probs.copy()
    out[bad] = 0.0
    out[np.flatnonzero(bad), cls] = 1.0
    return out


def _read_outputs(inputs: Inputs, model: StepModel, batch_size: int, base, nonfinite: list[int], outputs=None):
    """(probabilities, raw outputs) of `model`, batch by batch of eval rows: only what the
    statistics keep outlives a batch. A compressed model that overflows (fp16, bad ranges) is a
    failed step, not bad input: its non-finite rows count as wrong (and flipped) predictions and
    a gate fails it; their number is added to ``nonfinite[0]``. `outputs`: the raw outputs batch
    by batch from an executor (default: inference here)."""
    start, labels = 0, inputs.eval.labels
    for out in (predict_batches(model.path, inputs.eval, batch_size=batch_size) if outputs is None else outputs):
        rows = slice(start, start + len(out))
        bad = _nonfinite_mask(out)
        if bad.any():
            nonfinite[0] += int(bad.sum())
            out = _zero_nonfinite(out)
        probs = _probs(out, inputs.output_kind, model)  # kind decided once, in prepare
        base_pred = probs.argmax(axis=1) if base is None else base.pred[rows]
        yield _wrong_where(probs, bad, None if labels is None else labels[rows], base_pred), out
        start += len(out)


def measure_latency(
    inputs: Inputs, models: list[StepModel], shas: list[str], latency_from: tuple[Path, ...], progress: Progress,
    executor: Any = None,
) -> list[dict[str, Any] | None]:
    """Latency interleaved across all models, on the driver or on the executor's named node
    (`source` says which); device measurements replace it by model sha256, and must have been taken
    with the run's batch size, threads, inter-op threads and optimization level."""
    from .executor import Executor

    executor = executor or Executor()
    from .errors import RecipeError

    recipe = inputs.recipe
    lat = recipe.latency
    try:  # keys the recipe checks one at a time can still clash (runs vs sessions): "latency.<key>: ..."
        settings = LatencySettings(
            threads=lat.threads, batch_size=lat.batch_size, warmup=lat.warmup, runs=lat.runs, inter_op_threads=lat.inter_op_threads,
            optimization=lat.optimization, budget_s=lat.budget_s, min_time_s=lat.min_time_s, batch_sizes=lat.batch_sizes,
            sessions=lat.sessions, confidence=recipe.evaluate.confidence, seed=recipe.evaluate.seed,
        )
    except ValueError as e:
        raise RecipeError(str(e)) from e
    files = tuple(recipe.resolve(f) for f in lat.from_files) + tuple(latency_from)
    try:
        device = load_device_latency(files, expected=settings) if files else {}
    except ValueError as e:
        raise DataError(f"latency.from_files: {e}") from e
    latency: list[dict[str, Any] | None] = [None] * len(models)
    if lat.enabled:
        where = getattr(executor, "latency_node", None)
        progress("latency: interleaved over all models" + (f" on node {where['name']}" if where else ""))
        # identical files (a repair that kept nothing in float, a step that changed nothing) are one
        # model: timed once and given the same figures, so timing noise cannot rank a file against itself
        first: dict[str, int] = {}
        for i, sha in enumerate(shas):
            first.setdefault(sha, i)
        timed = sorted(set(first.values()))
        figures, source = executor.measure_latency(inputs, [models[i].path for i in timed], settings, progress)
        measured = dict(zip(timed, figures))
        latency = [dict(measured[first[sha]], **source,
                        **({"same_file_as_step": models[first[sha]].index} if first[sha] != i else {}))
                   for i, sha in enumerate(shas)]
    for i, sha in enumerate(shas):
        if sha in device:
            latency[i] = {**device[sha], "source": "device", "local": latency[i]}
    index = {m.name: m.index for m in models}
    warn = speed_warnings(latency, [m.kind for m in models], [index[m.input] if m.input else None for m in models])
    for m, extra in zip(models, warn):
        m.warnings = [*m.warnings, *extra]
    return latency


def evaluate(
    inputs: Inputs, models: list[StepModel], cache: Cache, progress: Progress, latency_from: tuple[Path, ...] = (),
    executor: Any = None,
) -> list[dict[str, Any]]:
    """Per-group statistics of every model against the baseline (step 0) on the same rows."""
    recipe = inputs.recipe
    d = recipe.data
    config = stats_config(recipe)
    shas = [sha256_file(m.path) for m in models]
    eval_sha = sha256_file(inputs.eval.path)
    batch = [eval_batch_size(m.path, configured=recipe.evaluate.batch_size, deployed=recipe.latency.batch_size) for m in models]
    keys = [
        make_key("stats", __version__, shas[i], shas[0] if i else None, batch[i], batch[0], eval_sha, inputs.data_digest("eval"), as_dict(config), d.label, d.groups, d.intersections, inputs.output_kind)
        for i in range(len(models))
    ]
    stats: list[Any] = [cache.get_json("stats", k) for k in keys]
    missing = [i for i, s in enumerate(stats) if s is None]
    if missing:
        progress("evaluate: inference on eval data")
        masks = group_masks(inputs.eval.attributes, intersections=d.intersections)
        need = sorted(set(missing) | ({0} if any(i > 0 for i in missing) else set()))
        labels = None if config.embedding else inputs.eval.labels  # an embedding is judged by fidelity alone
        runner = executor.bootstrap_runner(progress) if executor else None  # where the bootstrap sums are computed
        evaluator = Evaluator(masks, labels, inputs.eval.n, config, runner=runner, advance=getattr(progress, "advance", None))
        base = None
        remote = executor.predictions(inputs, {i: (models[i].path, batch[i]) for i in need}, progress) if executor else {}
        for i in need:  # the baseline first: its metrics and resamples serve every step
            nonfinite = [0]
            model = evaluator.model_from_batches(_read_outputs(inputs, models[i], batch[i], base, nonfinite, remote.get(i)))
            if i == 0:
                if nonfinite[0]:
                    raise DataError(f"model.source: the baseline gives non-finite outputs for {nonfinite[0]} of {inputs.eval.n} eval rows")
                base = model
                progress("statistics: groups, bootstrap, tests")
                if len(need) > 1:  # its statistics after the first step's: one bootstrap pass over the rows serves both
                    continue
            done = [(i, model, nonfinite[0])] if i in missing else []
            if 0 in missing and stats[0] is None:
                done.append((0, base, 0))  # the baseline's, deferred: its resampled sums came with this step's
            for j, m, bad_rows in done:
                stats[j] = evaluator.compare(m, base if j else None)
                stats[j]["overall"]["nonfinite_rows"] = bad_rows
                cache.put_json("stats", keys[j], stats[j])
    latency = measure_latency(inputs, models, shas, latency_from, progress, executor)
    return [
        {"stats": s, "latency": latency[i], "eval_batch_size": batch[i], "cache": {"model": models[i].cache, "stats": "off" if not cache.enabled else ("miss" if i in missing else "hit")}}
        for i, s in enumerate(stats)
    ]


def compare_previous(report: dict[str, Any], inputs: Inputs, models: list[StepModel], release: Any, progress: Progress) -> None:
    """Every model of this run against the last release's selected model, per group, on the same
    eval rows: `report["previous"]` says what was compared, each step gets `vs_previous`."""
    from .previous import paired_changes

    recipe = inputs.recipe
    if recipe.model.output == "embedding":
        raise DataError("--previous: embedding models have no predictions to compare with the last release's")
    progress("previous release: inference on eval data")
    d = recipe.data
    batch = eval_batch_size(release.model, configured=recipe.evaluate.batch_size, deployed=recipe.latency.batch_size)
    try:
        prev_out = predict(release.model, inputs.eval, batch_size=batch)
    except Exception as e:  # noqa: BLE001 - any failure to run it on this data is the folder's, not a bug
        text = str(e).strip().splitlines()
        raise DataError(f"--previous {release.model}: cannot run on this run's eval inputs ({text[0] if text else type(e).__name__})") from None
    preds, widths = [], []
    for m in models:
        out = predict(m.path, inputs.eval, batch_size=eval_batch_size(m.path, configured=recipe.evaluate.batch_size,
                                                                        deployed=recipe.latency.batch_size))
        widths.append(out.shape[1:])
        bad = _nonfinite_mask(out)
        probs = _probs(_zero_nonfinite(out) if bad.any() else out, inputs.output_kind, m)
        base_pred = preds[0] if preds else probs.argmax(axis=1)
        preds.append(_wrong_where(probs, bad, inputs.eval.labels, base_pred).argmax(axis=1))
    if prev_out.shape[1:] != widths[0]:
        raise DataError(f"--previous {release.model}: gives outputs of shape {list(prev_out.shape[1:])}, this run's baseline "
                        f"{list(widths[0])}: not the same task")
    prev_bad = _nonfinite_mask(prev_out)
    prev_probs = _probs(_zero_nonfinite(prev_out) if prev_bad.any() else prev_out, inputs.output_kind, models[0])
    prev_pred = _wrong_where(prev_probs, prev_bad, inputs.eval.labels, preds[0]).argmax(axis=1)
    labelled = inputs.eval.labels is not None
    reference = inputs.eval.labels if labelled else preds[0]
    masks = group_masks(inputs.eval.attributes, intersections=d.intersections)
    for step, pred in zip(report["steps"], preds):
        table = paired_changes(masks, reference, prev_pred, pred, min_group_size=d.min_group_size, confidence=recipe.evaluate.confidence)
        step["vs_previous"] = {"overall": table.pop("overall"), "groups": table}
    report["previous"] = {**release.describe(), "measure": "accuracy" if labelled else "agreement with this run's baseline",
                          "rows": int(inputs.eval.n)}


def environment() -> dict[str, Any]:
    from .machine import cpu_info

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "torch": version("torch"),
        "onnx": version("onnx"),
        "onnxruntime": version("onnxruntime"),
        "execution_provider": "CPUExecutionProvider",
        "edgefair": __version__,
        **cpu_info(),
    }


def run(
    recipe: Recipe,
    out_dir: Path,
    *,
    cache: Cache | None = None,
    latency_from: tuple[Path, ...] = (),
    progress: Progress = lambda s: None,
    previous: Path | None = None,
    executor: Any = None,
) -> dict[str, Any]:
    """The whole job. Raises EdgefairError on bad input before anything is written to `out_dir`.
    `previous`: the output folder of the last release, whose selected model every model of this
    run is compared with per group (`previous.py`). `executor` (executor.py): where eval inference
    runs (default: the recipe's [run] executor, else in this process).
    (`edgefair tune`, whose steps are alternatives, is `tune.search`.)"""
    from .gates import apply_gates
    from .publish import check_target, publish
    from .report import build_report

    check_target(out_dir)  # an unwritable output folder fails now, not after the whole run
    last_release = None
    if previous is not None:
        from .previous import load_previous

        last_release = load_previous(previous)  # bad folder: exit 2 before any work
    if executor is None:
        from .executor import executor_for

        executor = executor_for(recipe)  # an unreachable cluster: exit 2 before any work
    cache = cache or Cache(None)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgefair-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        inputs = prepare(recipe, workdir, cache, progress)
        timings["prepare"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        models = Compressor(inputs, workdir, cache, progress, executor=executor).run()
        timings["compress"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = evaluate(inputs, models, cache, progress, latency_from, executor=executor)
        timings["evaluate"] = time.perf_counter() - t0
        report = build_report(recipe=recipe, inputs=inputs, models=models, results=results, environment=environment(), timings=timings)
        report["mode"] = "run"
        report["executor"] = executor.describe()
        if last_release is not None:
            compare_previous(report, inputs, models, last_release, progress)
        apply_gates(report, recipe.gates, confidence=recipe.evaluate.confidence, min_group_size=recipe.data.min_group_size,
                    positive_label=recipe.data.positive_label, output=recipe.model.output, select=recipe.select)
        publish(out_dir, report, {m.index: m.path for m in models})
    return report
