"""Latency of ONNX models with onnxruntime, measured interleaved so machine drift hits every model alike.

Imports only numpy and onnxruntime (and the standard library), so it also runs on the device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .runtime import make_session

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LatencySettings:
    threads: int = 1
    batch_size: int = 1
    warmup: int = 20
    runs: int = 200


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
    out["throughput_per_s"] = float(batch_size * 1000.0 / out["p50_ms"]) if out["p50_ms"] > 0 else 0.0
    return out


def measure_interleaved(
    models: Sequence[Path],
    inputs: Mapping[str, np.ndarray],
    settings: LatencySettings,
) -> list[dict[str, object]]:
    """Time every model on the same feeds, one run of each in turn (A B C A B C ...)."""
    spinning = len(models) == 1  # spinning threads of idle sessions would steal the measured one's cores
    sessions, cold = [], []
    for path in models:
        t0 = time.perf_counter()
        sess = make_session(path, threads=settings.threads, spinning=spinning)
        cold.append((time.perf_counter() - t0) * 1e3)
        sessions.append(sess)
    feeds = feeds_from(inputs, settings.batch_size, settings.warmup + settings.runs)
    names = [[o.name for o in s.get_outputs()][:1] for s in sessions]
    first = []
    for sess, out in zip(sessions, names):
        t0 = time.perf_counter()
        sess.run(out, feeds[0])
        first.append((time.perf_counter() - t0) * 1e3)
    for feed in feeds[: settings.warmup]:
        for sess, out in zip(sessions, names):
            sess.run(out, feed)
    times = np.empty((len(models), settings.runs))
    clock = time.perf_counter_ns
    for r, feed in enumerate(feeds[settings.warmup :]):
        for m, (sess, out) in enumerate(zip(sessions, names)):
            t0 = clock()
            sess.run(out, feed)
            times[m, r] = (clock() - t0) / 1e6
    results = []
    for m in range(len(models)):
        res: dict[str, object] = {
            "threads": settings.threads,
            "batch_size": settings.batch_size,
            "warmup": settings.warmup,
            "runs": settings.runs,
            **summarize(times[m], settings.batch_size),
            "session_create_ms": cold[m],
            "first_inference_ms": first[m],
        }
        results.append(res)
    return results
