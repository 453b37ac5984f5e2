"""Latency of ONNX models with onnxruntime, measured interleaved so machine drift hits every model alike.

One round runs every model once on the same feed (A B C, A B C, ...). Each model is measured in
`sessions` fresh onnxruntime sessions (default 3), themselves interleaved: session 1 of A, B and C
is created and timed, released, then session 2 of each, and so on. The order of the models (for
creation and within each round) is rotated from one session to the next, so no model always
runs first or is always allocated first. Within a session the order stays fixed: rotating it from
round to round would, with two models, run one model twice back to back (A B, B A), and a model
whose weights were still in cache took 23 us instead of 39 us. The time budget is split between
the sessions: `runs`, `min_time_s` and `budget_s` are totals per batch size (each session gets
runs // sessions rounds, the first runs % sessions one more), while `warmup` rounds are run in
every session, since each fresh session has to settle on its own.

Why sessions: in an A/A control (the Adult baseline and a byte-identical copy, recipe defaults,
one session each) the p50 ratio ranged from 0.950 to 1.019 over 20 runs, while each run's
interval over rounds was about 0.3% wide and 19 of the 20 excluded 1: where a session lands
in memory moves its p50 by a few percent, and rounds of one session cannot show it. The session,
not the round, is the unit that replicates. Position counts too: the model second in a session
measured ~2.5% faster (median A/A ratio 0.98 with one session), which favoured every step over
the baseline, always first; rotating the order across sessions turns that into spread between
sessions, which the intervals carry (with 3 sessions and 2 models the order is A B, B A, A B).
Reported numbers:

- `p50_ms` ... `p99_ms`: percentiles of all timed rounds of all sessions (pooled);
  `ratio_p50_vs_first` and `ratio_p50_vs_earlier[j].ratio`: ratios of those pooled p50s.
  `p50_ms_by_session`, `ratio_p50_by_session` (vs the first model) and `runs_by_session` show
  each session on its own.
- Intervals (`p{50,90,95,99}_ci`, `ratio_p50_ci`, `ratio_p50_vs_earlier[j].ci`) are the hull
  (the wider envelope) of two intervals:
  1. a t-interval over sessions on the log scale: the statistic is computed in each session (a
     percentile of one model, or the ratio of two models' p50s over that session's rounds, paired
     by round), and exp(mean +- t(confidence, sessions - 1) * sd / sqrt(sessions)) of the logs.
     Per-session values already carry their within-session noise, so this covers both levels. A
     t-interval, not a bootstrap over sessions: with 3 sessions a bootstrap cannot reach beyond
     the smallest and largest session (it covers a session-level median only 75% of the time),
     while Student's t widens for the few degrees of freedom (x4.3 at 95% and 3 sessions);
  2. a percentile bootstrap over rounds, resampled within each session (stratified) and paired
     across models, as before: it alone remains with `sessions = 1`, and keeps an interval from
     being narrower than round noise when a few sessions agree by chance.
  The t-interval assumes the per-session log values are independent and roughly normal; drift
  slower than a session is shared by all models of that session and cancels in the ratios.

Imports only numpy and onnxruntime (and the standard library; onnx optionally, for parameter
counts), so it also runs on the device.
"""

from __future__ import annotations

import gc
import math
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
MIN_SESSION_RUNS = 3  # timed rounds each session needs at least (runs >= this * sessions)


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
    # fresh onnxruntime sessions per model; runs, min_time_s and budget_s are split between them.
    # Where a session lands in memory moves p50 by a few percent: one session cannot show that
    sessions: int = 3

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
            ("sessions", self.sessions >= 1, "must be >= 1"),
            ("sessions", self.budget_s is not None or self.runs >= MIN_SESSION_RUNS * self.sessions,
             f"must be at most runs / {MIN_SESSION_RUNS} ({self.runs // MIN_SESSION_RUNS}): "
             f"each session needs {MIN_SESSION_RUNS} timed rounds"),
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
    times_ms: np.ndarray,
    *,
    n_boot: int,
    confidence: float,
    seed: int,
    percentiles: Sequence[float] = PERCENTILES,
    strata: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap over rounds.

    Args:
        times_ms: (M models, R rounds); column r holds the models' times in the same round.
        strata: lengths of consecutive blocks of rounds (one per session, summing to R); rounds are
            resampled within their block, so every resample keeps each session's share. None: one block.
    Returns:
        pct_ci: (M, P, 2) interval of each percentile of each model.
        ratio_ci: (M, M, 2); ratio_ci[i, j] is the interval of p50[i] / p50[j], the same resampled
            rounds used for both models (paired), so drift shared by a round cancels.
    Rounds are resampled independently; slow drift is mostly taken out by the pairing, but
    intervals of single-model percentiles assume the rounds are exchangeable. Differences
    between sessions are not covered: see `session_t_interval`.
    """
    m, r = times_ms.shape
    strata = [r] if strata is None else [int(n) for n in strata]
    if sum(strata) != r or min(strata) < 1:
        raise ValueError(f"bootstrap_latency: strata {strata} do not split {r} rounds")
    offsets = np.cumsum([0, *strata[:-1]])
    p = len(percentiles)
    alpha = (1.0 - confidence) / 2.0
    rng = np.random.default_rng(seed)
    reps = np.empty((m, p, n_boot))
    chunk = max(1, BOOT_CHUNK_ELEMENTS // max(r, 1))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        # (b, R): resampled round numbers, shared by all models, each block drawn from its own rounds
        idx = np.concatenate([off + rng.integers(0, n, size=(b, n)) for off, n in zip(offsets, strata)], axis=1)
        for i in range(m):
            reps[i, :, start : start + b] = np.percentile(times_ms[i][idx], percentiles, axis=1)
    pct_ci = np.quantile(reps, [alpha, 1.0 - alpha], axis=2).transpose(1, 2, 0)  # (M, P, 2)
    p50 = reps[:, list(percentiles).index(50)] if 50 in percentiles else reps[:, 0]  # (M, B)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = p50[:, None, :] / p50[None, :, :]  # (M, M, B)
    ratio_ci = np.quantile(ratios, [alpha, 1.0 - alpha], axis=2).transpose(1, 2, 0)
    return pct_ci, ratio_ci


def _t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer `df` degrees of freedom (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2:
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 3) // 2 + 1):  # 1 + 2/3 c2 + 2*4/(3*5) c2^2 + ...
            term *= 2 * k / (2 * k + 1) * c2
            total += term
        return 2.0 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0))
    term, total = 1.0, 1.0
    for k in range(1, (df - 2) // 2 + 1):  # 1 + 1/2 c2 + 1*3/(2*4) c2^2 + ...
        term *= (2 * k - 1) / (2 * k) * c2
        total += term
    return math.sin(theta) * total


def t_quantile(confidence: float, df: int) -> float:
    """t such that P(|T| < t) = confidence, T ~ Student's t with `df` >= 1 (no scipy on devices)."""
    if df < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"t_quantile: need df >= 1 and 0 < confidence < 1, got {df}, {confidence}")
    lo, hi = 0.0, math.pi / 2  # bisection on theta = atan(t / sqrt(df)), where the CDF is smooth
    for _ in range(100):
        mid = (lo + hi) / 2
        if _t_two_sided(math.sqrt(df) * math.tan(mid), df) < confidence:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def session_t_interval(values: np.ndarray, confidence: float) -> np.ndarray | None:
    """Interval of a positive statistic from its per-session values (axis 0 = sessions): Student's t
    on the logs, exp(mean +- t * sd / sqrt(S)). None with one session or a value <= 0.

    Returns an array shaped like values[0] with a trailing axis of 2 (low, high).
    """
    s = values.shape[0]
    if s < 2 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        return None
    logs = np.log(values)
    mean, sd = logs.mean(axis=0), logs.std(axis=0, ddof=1)
    half = t_quantile(confidence, s - 1) * sd / math.sqrt(s)
    return np.stack([np.exp(mean - half), np.exp(mean + half)], axis=-1)


def _hull(a: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """Elementwise envelope of two (..., 2) interval arrays; `a` alone when `b` is None."""
    if b is None:
        return a
    return np.stack([np.fmin(a[..., 0], b[..., 0]), np.fmax(a[..., 1], b[..., 1])], axis=-1)


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
    intermediate tensors of this model, not the interpreter or other sessions. Freed heap memory is
    handed back to the OS first (`_trim_heap`): otherwise pages an earlier session freed stay
    resident, the allocator reuses them and a 4 MB model measured 0 kB. Where the reset is
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
        _trim_heap()
        if self.method == "hwm_reset":
            self._reset()
        before = self._read()["VmRSS"]
        yield box
        after = self._read()
        box["memory_peak_kb"] = max(0, (after["VmHWM"] if self.method == "hwm_reset" else after["VmRSS"]) - before)


def _trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim), so memory an earlier session freed
    but the allocator kept resident is not silently reused by the next model, hiding its peak."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: musl, macOS
        pass


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


@dataclass(frozen=True)
class _Budget:
    """One session's share of the timing at one batch size."""

    warmup: int  # rounds discarded first: every fresh session settles on its own
    runs: int  # timed rounds (ignored with budget_s)
    min_time_s: float  # and keep timing until this long has passed (ignored with budget_s)
    budget_s: float | None  # time for this long instead
    min_runs: int  # with budget_s: rounds timed even when the deadline has passed


def session_budgets(settings: LatencySettings) -> list[_Budget]:
    """Split `runs`, `min_time_s` and `budget_s` between `settings.sessions` sessions; the totals stay
    what the settings say, so more sessions cost only their creation and warm-up."""
    n = settings.sessions
    return [
        _Budget(
            warmup=settings.warmup,
            runs=settings.runs // n + (i < settings.runs % n),
            min_time_s=settings.min_time_s / n,
            budget_s=None if settings.budget_s is None else settings.budget_s / n,
            min_runs=-(-MIN_RUNS // n),
        )
        for i in range(n)
    ]


def _time_rounds(sessions, outs, feeds, budget: _Budget) -> np.ndarray:
    """(M, R) milliseconds: warm-up rounds, then timed rounds until `budget_s` is used up, or else
    until there are `runs` of them and `min_time_s` has passed."""
    k = len(feeds)
    per_model = [[{n: f[n] for n in names} for f in feeds] for names in _names(sessions)]
    for r in range(budget.warmup):
        for m, (sess, out) in enumerate(zip(sessions, outs)):
            sess.run(out, per_model[m][r % k])
    clock = time.perf_counter_ns
    deadline = None if budget.budget_s is None else clock() + int(budget.budget_s * 1e9)
    cap = budget.runs if deadline is None else 1 << 62
    not_before = clock() + int(budget.min_time_s * 1e9) if deadline is None and budget.min_time_s else None
    rows: list[np.ndarray] = []
    block = np.empty((len(sessions), 256), dtype=np.int64)
    r = 0
    gc_was = gc.isenabled()
    gc.disable()  # a collection inside a timed run is the interpreter's noise, not the model's
    try:
        while r < cap or (not_before is not None and clock() < not_before):
            j = r % 256
            for m, (sess, out) in enumerate(zip(sessions, outs)):
                feed = per_model[m][(budget.warmup + r) % k]
                t0 = clock()
                sess.run(out, feed)
                block[m, j] = clock() - t0
            r += 1
            if j == 255:
                rows.append(block.copy())
            if deadline is not None and r >= budget.min_runs and clock() >= deadline:
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
    """Time every model on the same feeds, one run of each in turn (A B C A B C ...), in
    `settings.sessions` fresh sessions per model (all models' session 1, then all models' session 2 ...).

    `inputs` are data arrays (first axis = rows) named like the model inputs; each model gets the
    arrays it declares. Returns one dict per model: the top level describes `settings.batch_size`,
    `by_batch_size` every measured batch size (keys are strings, for JSON). Session creation time,
    first inference and memory are those of each model's first session.
    """
    spinning = settings.spinning if settings.spinning is not None else len(models) == 1
    batch_sizes = settings.all_batch_sizes
    budgets = session_budgets(settings)
    # feeds exist before any memory is measured, so the data copies are not charged to a model
    n_feeds = settings.warmup + budgets[0].runs if settings.budget_s is None else max(settings.warmup, 1024)
    feeds = {b: feeds_from(inputs, b, n_feeds) for b in batch_sizes}
    make = lambda p: make_session(
        p, threads=settings.threads, inter_op_threads=settings.inter_op_threads,
        optimization=settings.optimization, spinning=spinning,
    )
    memory = _MemoryProbe() if settings.memory else None
    n = len(models)
    cold: list[float] = [0.0] * n
    first: list[float] = [0.0] * n
    mem: list[Any] = [None] * n
    per_batch: dict[int, list[np.ndarray]] = {b: [] for b in batch_sizes}  # per session: (M, R_s)
    with _pinned(settings.pin_cpus):
        if models:
            make(models[0])  # process-wide onnxruntime set-up, so model 0 is not charged for it
        for s, budget in enumerate(budgets):
            # rotated each session: no model is always created first or always runs first in a round
            order = [(s + k) % n for k in range(n)]
            sessions, outs = [], []
            for m in order:
                if s == 0:
                    with memory.measure() if memory else _nothing() as box:
                        t0 = time.perf_counter()
                        sess = make(models[m])
                        cold[m] = (time.perf_counter() - t0) * 1e3
                        out = [sess.get_outputs()[0].name]
                        names = [i.name for i in sess.get_inputs()]
                        t0 = time.perf_counter()
                        sess.run(out, {k: feeds[batch_sizes[0]][0][k] for k in names})
                        first[m] = (time.perf_counter() - t0) * 1e3
                        for b in batch_sizes[1:]:  # the peak covers every batch size measured below
                            sess.run(out, {k: feeds[b][0][k] for k in names})
                    mem[m] = box
                else:
                    sess = make(models[m])
                    out = [sess.get_outputs()[0].name]
                sessions.append(sess)
                outs.append(out)
            for b in batch_sizes:
                times = _time_rounds(sessions, outs, feeds[b], budget)
                per_batch[b].append(times[np.argsort(order)])  # back to the models' order
            del sessions, outs  # released before the next session's are created: a fresh placement

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


def _stats(per_session: list[np.ndarray], batch_size: int, settings: LatencySettings) -> list[dict[str, Any]]:
    """Summary, percentile intervals and paired p50 ratios of every model at one batch size.

    `per_session`: one (M, R_s) array of milliseconds per session. See the module docstring for
    how the intervals combine sessions and rounds.
    """
    times = np.concatenate(per_session, axis=1)  # (M, R): every round of every session
    strata = [t.shape[1] for t in per_session]
    sess_pct = np.stack([np.percentile(t, PERCENTILES, axis=1).T for t in per_session])  # (S, M, P)
    sess_p50 = sess_pct[:, :, PERCENTILES.index(50)]  # (S, M)
    with np.errstate(divide="ignore", invalid="ignore"):
        sess_ratio = sess_p50[:, :, None] / sess_p50[:, None, :]  # (S, M, M): paired within each session
    if settings.n_boot:
        pct_ci, ratio_ci = bootstrap_latency(
            times, n_boot=settings.n_boot, confidence=settings.confidence, seed=settings.seed, strata=strata
        )
        pct_ci = _hull(pct_ci, session_t_interval(sess_pct, settings.confidence))
        ratio_ci = _hull(ratio_ci, session_t_interval(sess_ratio, settings.confidence))
    method = "session_t+round_bootstrap" if len(per_session) > 1 else "round_bootstrap"
    p50 = np.median(times, axis=1)
    out = []
    for m in range(times.shape[0]):
        res: dict[str, Any] = {"batch_size": batch_size, "runs": int(times.shape[1]), **summarize(times[m], batch_size)}
        for k, p in enumerate(PERCENTILES):
            res[f"p{p}_ci"] = [float(v) for v in pct_ci[m, k]] if settings.n_boot else None
        res["ratio_p50_vs_first"] = float(p50[m] / p50[0])
        res["ratio_p50_ci"] = [float(v) for v in ratio_ci[m, 0]] if settings.n_boot else None
        # against every earlier model, so a step can be compared with whichever model it read
        res["ratio_p50_vs_earlier"] = {
            str(j): {"ratio": float(p50[m] / p50[j]), "ci": [float(v) for v in ratio_ci[m, j]] if settings.n_boot else None}
            for j in range(m)
        }
        res["sessions"] = len(per_session)
        res["runs_by_session"] = strata
        res["p50_ms_by_session"] = [float(v) for v in sess_p50[:, m]]
        res["ratio_p50_by_session"] = [float(v) for v in sess_ratio[:, m, 0]]  # vs the first model
        res["ci_method"] = method if settings.n_boot else None
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
        # the interval covers the spread between fresh sessions (with sessions >= 2); a slowdown must
        # also clear SLOWER_MARGIN to be worth a warning: a few percent is within what memory
        # placement alone does to one model, and intervals of a single session do not show it
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
