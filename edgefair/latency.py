"""Latency of ONNX models with onnxruntime, measured interleaved so machine drift hits every model alike.

One round runs every model once on the same feed (A B C, A B C, ...). Percentiles get bootstrap
confidence intervals over rounds, and each model's p50 is compared with every earlier model's p50
*paired by round*, so a slow minute on the machine slows both sides of a ratio instead of one.

Imports only numpy and onnxruntime (and the standard library; onnx optionally, for parameter
counts), so it also runs on the device.
"""

from __future__ import annotations

import gc
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .runtime import OPTIMIZATION_LEVELS, make_session

PERCENTILES = (50, 90, 95, 99)
MIN_RUNS = 10  # fewer timed rounds make p95/p99 and their intervals meaningless
# recipes and probe keep timing past `runs` until this long has passed: a few hundred runs of a small
# model last milliseconds, and one noisy moment of a shared machine would move them all
DEFAULT_MIN_TIME_S = 0.5
BOOT_CHUNK_ELEMENTS = 2_000_000  # resampled timings held at once (16 MB): bounds memory for long budgets


@dataclass(frozen=True)
class LatencySettings:
    threads: int = 1  # intra-op threads; 1 is what a small edge CPU gives one model, and the least noisy
    batch_size: int = 1  # the batch size reported at the top level of each result
    warmup: int = 20  # rounds discarded: lazy allocations, caches and branch predictors settle
    runs: int = 200  # timed rounds (ignored when budget_s is set)
    inter_op_threads: int = 1  # only graphs with parallel branches use more; 1 avoids idle pools
    optimization: str = "all"  # onnxruntime graph optimization level, as deployed by default
    spinning: bool | None = None  # None: on for one model, off when several share the cores
    budget_s: float | None = None  # time each batch size for this long instead of `runs` rounds
    min_time_s: float = 0.0  # keep timing past `runs` until this long has passed (ignored with budget_s)
    batch_sizes: tuple[int, ...] = ()  # more batch sizes to measure, reported under by_batch_size
    pin_cpus: tuple[int, ...] | None = None  # restrict the process to these CPUs while measuring (Linux)
    n_boot: int = 1000  # bootstrap resamples of the rounds for percentile and ratio intervals
    confidence: float = 0.95
    seed: int = 0
    memory: bool = True  # measure peak resident memory per model (see `_MemoryProbe`)

    def __post_init__(self) -> None:
        checks = [
            ("threads", self.threads >= 0, "must be >= 0 (0: onnxruntime's choice)"),
            ("inter_op_threads", self.inter_op_threads >= 0, "must be >= 0"),
            ("batch_size", self.batch_size > 0, "must be > 0"),
            ("batch_sizes", all(b > 0 for b in self.batch_sizes), "must all be > 0"),
            ("warmup", self.warmup >= 0, "must be >= 0"),
            ("runs", self.runs >= MIN_RUNS, f"must be >= {MIN_RUNS}"),
            ("budget_s", self.budget_s is None or self.budget_s > 0, "must be > 0"),
            ("min_time_s", self.min_time_s >= 0, "must be >= 0"),
            ("optimization", self.optimization in OPTIMIZATION_LEVELS, f"must be one of {', '.join(OPTIMIZATION_LEVELS)}"),
            ("n_boot", self.n_boot >= 0, "must be >= 0 (0: no intervals)"),
            ("confidence", 0.5 <= self.confidence < 1.0, "must be in [0.5, 1)"),
        ]
        for key, ok, msg in checks:
            if not ok:
                raise ValueError(f"latency.{key}: {msg}, got {getattr(self, key)!r}")

    @property
    def all_batch_sizes(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys((self.batch_size, *self.batch_sizes)))


def feeds_from(inputs: Mapping[str, np.ndarray], batch_size: int, count: int) -> list[dict[str, np.ndarray]]:
    """`count` feeds of `batch_size` consecutive rows, walking through the data (wrapping around),
    so timings cover real, varied inputs instead of one repeated batch."""
    n = len(next(iter(inputs.values())))
    feeds = []
    for i in range(count):
        start = (i * batch_size) % n
        idx = np.arange(start, start + batch_size) % n
        feeds.append({k: np.ascontiguousarray(v[idx]) for k, v in inputs.items()})
    return feeds


def summarize(times_ms: np.ndarray, batch_size: int) -> dict[str, float]:
    pct = np.percentile(times_ms, PERCENTILES)
    out = {f"p{p}_ms": float(v) for p, v in zip(PERCENTILES, pct)}
    out["mean_ms"] = float(times_ms.mean())
    out["std_ms"] = float(times_ms.std(ddof=1)) if len(times_ms) > 1 else 0.0
    # sustained rate: rows over the total time spent inside run(), not 1/p50 (which hides the tail)
    out["throughput_per_s"] = float(batch_size * len(times_ms) * 1000.0 / times_ms.sum()) if times_ms.sum() > 0 else 0.0
    return out


def bootstrap_latency(
    times_ms: np.ndarray, *, n_boot: int, confidence: float, seed: int, percentiles: Sequence[float] = PERCENTILES
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap over rounds.

    Args:
        times_ms: (M models, R rounds); column r holds the models' times in the same round.
    Returns:
        pct_ci: (M, P, 2) interval of each percentile of each model.
        ratio_ci: (M, M, 2); ratio_ci[i, j] is the interval of p50[i] / p50[j], the same resampled
            rounds used for both models (paired), so drift shared by a round cancels.
    Rounds are resampled independently; slow drift is mostly taken out by the pairing, but
    intervals of single-model percentiles assume the rounds are exchangeable.
    """
    m, r = times_ms.shape
    p = len(percentiles)
    alpha = (1.0 - confidence) / 2.0
    rng = np.random.default_rng(seed)
    reps = np.empty((m, p, n_boot))
    chunk = max(1, BOOT_CHUNK_ELEMENTS // max(r, 1))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, r, size=(b, r))  # (b, R): resampled round numbers, shared by all models
        for i in range(m):
            reps[i, :, start : start + b] = np.percentile(times_ms[i][idx], percentiles, axis=1)
    pct_ci = np.quantile(reps, [alpha, 1.0 - alpha], axis=2).transpose(1, 2, 0)  # (M, P, 2)
    p50 = reps[:, list(percentiles).index(50)] if 50 in percentiles else reps[:, 0]  # (M, B)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = p50[:, None, :] / p50[None, :, :]  # (M, M, B)
    ratio_ci = np.quantile(ratios, [alpha, 1.0 - alpha], axis=2).transpose(1, 2, 0)
    return pct_ci, ratio_ci


def model_facts(path: str | Path) -> dict[str, Any]:
    """File size, parameter count and ConvInteger nodes. The last two need onnx; None without it."""
    facts: dict[str, Any] = {"size_bytes": Path(path).stat().st_size, "parameters": None, "conv_integer_nodes": None}
    try:
        import onnx
    except ImportError:
        return facts
    model = onnx.load(str(path), load_external_data=False)
    graphs, params, conv_int = [model.graph], 0, 0
    while graphs:  # subgraphs (If/Loop bodies) hold nodes and initializers too
        g = graphs.pop()
        params += sum(int(np.prod(t.dims, dtype=np.int64)) for t in g.initializer)
        for node in g.node:
            conv_int += node.op_type == "ConvInteger"
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    graphs.append(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    graphs.extend(a.graphs)
    facts.update(parameters=params, conv_integer_nodes=conv_int)
    return facts


class _MemoryProbe:
    """Peak resident memory that one model adds to this process.

    What it measures: on Linux, VmHWM (the process's peak RSS) is reset to the current RSS through
    /proc/self/clear_refs, the session is created and run once at every batch size, and the result
    is the new VmHWM minus the VmRSS before: weights, onnxruntime's arena and the largest
    intermediate tensors of this model, not the interpreter or other sessions. Where the reset is
    not allowed it falls back to the VmRSS growth (memory still held afterwards, so it misses
    freed temporaries: reported as method "rss_delta"); elsewhere None.
    """

    def __init__(self) -> None:
        status = Path("/proc/self/status")
        self.available = status.is_file()
        self.method = None
        if self.available:
            self.method = "hwm_reset" if self._reset() else "rss_delta"

    @staticmethod
    def _read() -> dict[str, int]:
        out = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])  # kB
        return out

    @staticmethod
    def _reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    @contextmanager
    def measure(self) -> Iterator[dict[str, Any]]:
        box: dict[str, Any] = {"memory_peak_kb": None, "memory_method": self.method}
        if not self.available:
            yield box
            return
        if self.method == "hwm_reset":
            self._reset()
        before = self._read()["VmRSS"]
        yield box
        after = self._read()
        box["memory_peak_kb"] = max(0, (after["VmHWM"] if self.method == "hwm_reset" else after["VmRSS"]) - before)


@contextmanager
def _pinned(cpus: tuple[int, ...] | None) -> Iterator[None]:
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield
        return
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cpus))
    try:
        yield
    finally:
        os.sched_setaffinity(0, old)


def _time_rounds(sessions, outs, feeds, settings: LatencySettings) -> np.ndarray:
    """(M, R) milliseconds: warm-up rounds, then timed rounds until `budget_s` is used up, or else
    until there are `runs` of them and `min_time_s` has passed."""
    k = len(feeds)
    per_model = [[{n: f[n] for n in names} for f in feeds] for names in _names(sessions)]
    for r in range(settings.warmup):
        for m, (sess, out) in enumerate(zip(sessions, outs)):
            sess.run(out, per_model[m][r % k])
    clock = time.perf_counter_ns
    deadline = None if settings.budget_s is None else clock() + int(settings.budget_s * 1e9)
    cap = settings.runs if deadline is None else 1 << 62
    not_before = clock() + int(settings.min_time_s * 1e9) if deadline is None and settings.min_time_s else None
    rows: list[np.ndarray] = []
    block = np.empty((len(sessions), 256), dtype=np.int64)
    r = 0
    gc_was = gc.isenabled()
    gc.disable()  # a collection inside a timed run is the interpreter's noise, not the model's
    try:
        while r < cap or (not_before is not None and clock() < not_before):
            j = r % 256
            for m, (sess, out) in enumerate(zip(sessions, outs)):
                feed = per_model[m][(settings.warmup + r) % k]
                t0 = clock()
                sess.run(out, feed)
                block[m, j] = clock() - t0
            r += 1
            if j == 255:
                rows.append(block.copy())
            if deadline is not None and r >= MIN_RUNS and clock() >= deadline:
                break
    finally:
        if gc_was:
            gc.enable()
    if r % 256:
        rows.append(block[:, : r % 256].copy())
    return np.concatenate(rows, axis=1) / 1e6


def _names(sessions) -> list[list[str]]:
    return [[i.name for i in s.get_inputs()] for s in sessions]


def measure_interleaved(
    models: Sequence[Path],
    inputs: Mapping[str, np.ndarray],
    settings: LatencySettings,
) -> list[dict[str, object]]:
    """Time every model on the same feeds, one run of each in turn (A B C A B C ...).

    `inputs` are data arrays (first axis = rows) named like the model inputs; each model gets the
    arrays it declares. Returns one dict per model: the top level describes `settings.batch_size`,
    `by_batch_size` every measured batch size (keys are strings, for JSON).
    """
    spinning = settings.spinning if settings.spinning is not None else len(models) == 1
    batch_sizes = settings.all_batch_sizes
    # feeds exist before any memory is measured, so the data copies are not charged to a model
    n_feeds = settings.warmup + settings.runs if settings.budget_s is None else max(settings.warmup, 1024)
    feeds = {b: feeds_from(inputs, b, n_feeds) for b in batch_sizes}
    make = lambda p: make_session(
        p, threads=settings.threads, inter_op_threads=settings.inter_op_threads,
        optimization=settings.optimization, spinning=spinning,
    )
    memory = _MemoryProbe() if settings.memory else None
    with _pinned(settings.pin_cpus):
        if models:
            del_me = make(models[0])  # process-wide onnxruntime set-up, so model 0 is not charged for it
            del del_me
        sessions, outs, cold, first, mem = [], [], [], [], []
        for path in models:
            with memory.measure() if memory else _nothing() as box:
                t0 = time.perf_counter()
                sess = make(path)
                cold.append((time.perf_counter() - t0) * 1e3)
                out = [sess.get_outputs()[0].name]
                names = [i.name for i in sess.get_inputs()]
                t0 = time.perf_counter()
                sess.run(out, {n: feeds[batch_sizes[0]][0][n] for n in names})
                first.append((time.perf_counter() - t0) * 1e3)
                for b in batch_sizes[1:]:  # the peak covers every batch size measured below
                    sess.run(out, {n: feeds[b][0][n] for n in names})
            mem.append(box)
            sessions.append(sess)
            outs.append(out)
        per_batch = {b: _time_rounds(sessions, outs, feeds[b], settings) for b in batch_sizes}

    results = []
    stats = {b: _stats(times, b, settings) for b, times in per_batch.items()}
    for m, path in enumerate(models):
        by_batch = {str(b): stats[b][m] for b in batch_sizes}
        res: dict[str, object] = {
            "model": Path(path).name,
            "threads": settings.threads,
            "inter_op_threads": settings.inter_op_threads,
            "optimization": settings.optimization,
            "spinning": spinning,
            "pinned_cpus": list(settings.pin_cpus) if settings.pin_cpus else None,
            "warmup": settings.warmup,
            "budget_s": settings.budget_s,
            "min_time_s": settings.min_time_s if settings.budget_s is None else None,
            "confidence": settings.confidence,
            **by_batch[str(settings.batch_size)],
            "session_create_ms": cold[m],
            "first_inference_ms": first[m],
            **(mem[m] or {"memory_peak_kb": None, "memory_method": None}),
            **model_facts(path),
        }
        if len(batch_sizes) > 1:
            res["by_batch_size"] = by_batch
        results.append(res)
    return results


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _stats(times: np.ndarray, batch_size: int, settings: LatencySettings) -> list[dict[str, Any]]:
    """Summary, percentile intervals and paired p50 ratios of every model at one batch size."""
    out = []
    if settings.n_boot:
        pct_ci, ratio_ci = bootstrap_latency(times, n_boot=settings.n_boot, confidence=settings.confidence, seed=settings.seed)
    for m in range(times.shape[0]):
        res: dict[str, Any] = {"batch_size": batch_size, "runs": int(times.shape[1]), **summarize(times[m], batch_size)}
        p50 = np.median(times, axis=1)
        for k, p in enumerate(PERCENTILES):
            res[f"p{p}_ci"] = [float(v) for v in pct_ci[m, k]] if settings.n_boot else None
        res["ratio_p50_vs_first"] = float(p50[m] / p50[0])
        res["ratio_p50_ci"] = [float(v) for v in ratio_ci[m, 0]] if settings.n_boot else None
        # against every earlier model, so a step can be compared with whichever model it read
        res["ratio_p50_vs_earlier"] = {
            str(j): {"ratio": float(p50[m] / p50[j]), "ci": [float(v) for v in ratio_ci[m, j]] if settings.n_boot else None}
            for j in range(m)
        }
        out.append(res)
    return out


SLOWER_MARGIN = 0.05


def speed_warnings(
    results: Sequence[Mapping[str, Any] | None], kinds: Sequence[str], inputs: Sequence[int | None] | None = None
) -> list[list[str]]:
    """Warnings per step about speed, from `measure_interleaved` results (pure: no I/O).

    Args:
        results: one latency result per step (None where latency was not measured).
        kinds: step kinds, same order ("export" for the baseline).
        inputs: index of the model each step read; default: the step before it (step 0 reads nothing).
    Warns when the interval of a step's p50 over its input's p50 lies entirely above 1 (the step
    made the model slower), and when a model holds ConvInteger nodes (dynamic int8 on Conv).
    """
    if len(results) != len(kinds):
        raise ValueError(f"speed_warnings: {len(results)} results but {len(kinds)} kinds")
    inputs = list(inputs) if inputs is not None else [None, *range(len(results) - 1)]
    out: list[list[str]] = []
    for i, (res, kind) in enumerate(zip(results, kinds)):
        warnings: list[str] = []
        out.append(warnings)
        if not res:
            continue
        src = inputs[i]
        vs = (res.get("ratio_p50_vs_earlier") or {}).get(str(src)) if src is not None else None
        # the interval covers noise within this session only; fresh sessions of one model differ by a
        # few percent, so a slowdown must clear SLOWER_MARGIN as well to be worth a warning
        if vs and vs.get("ci") and vs["ci"][0] > 1.0 + SLOWER_MARGIN:
            lo, hi = vs["ci"]
            warnings.append(
                f"{kind} made the model slower than its input (step {src}, {kinds[src]}): p50 x{vs['ratio']:.2f} "
                f"[{lo:.2f}, {hi:.2f}] at batch size {res.get('batch_size')}, {res.get('threads')} thread(s)"
            )
        if res.get("conv_integer_nodes"):
            warnings.append(
                f"{res['conv_integer_nodes']} ConvInteger node(s): dynamic int8 on Conv runs on onnxruntime's slow "
                "reference kernel on CPU; quantize Conv statically (quantize_static) or keep it float"
            )
    return out
