"""Latency on the device itself: numpy + onnxruntime only (no torch, no click).

    python -m edgefair.probe model.onnx [more.onnx ...] [--threads 1] [--batch-size 1] [--runs 200]
                             [--sessions 3] [--data eval.npz] [--dim seq=128] [--out latency.json]

`edgefair probe` is the same command: `build_parser` is the one parser of both.

Writes an `edgefair-latency/1` document; `load_device_latency` reads such files back (keyed by
model sha256) so a report built on a workstation can carry latency measured on the device.
Identical files (same sha256, e.g. `selected.onnx` and the step it copies) are measured once and
listed once, with all their paths.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .io import sha256_file, write_json
from .latency import DEFAULT_MIN_TIME_S, LatencySettings, measure_interleaved
from .machine import cpu_info
from .runtime import OPTIMIZATION_LEVELS, ORT_DTYPES, fixed_batch, make_session

SCHEMA = "edgefair-latency/1"
SYNTH_BATCHES = 16  # distinct synthetic batches the timed runs cycle through
REQUIRED_LATENCY = ("p50_ms", "p90_ms", "p95_ms", "p99_ms")
# settings a device measurement must share with the run that uses it: a p95 at another batch size,
# thread count or graph optimization level is a different number
MATCHED_SETTINGS = ("batch_size", "threads", "inter_op_threads", "optimization")


def synthesize_inputs(
    model: str | Path, *, batch_size: int, dims: Mapping[str, int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs shaped like the model's: floats ~ N(0, 1), integers in [0, 10), seeded.

    A dynamic first axis is the batch axis (`batch_size` rows per feed, SYNTH_BATCHES feeds' worth
    of rows); other dynamic axes take their value from `dims` by name.
    """
    dims = dict(dims or {})
    rng = np.random.default_rng(seed)
    session = make_session(model, threads=1)
    out = {}
    for spec in session.get_inputs():
        dtype = ORT_DTYPES.get(spec.type)
        if dtype is None:
            raise ValueError(f"{Path(model).name}: input {spec.name!r} has unsupported type {spec.type}")
        shape = []
        for axis, d in enumerate(spec.shape):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(dims[d])
            elif axis == 0:
                shape.append(batch_size)
            else:
                raise ValueError(f"{Path(model).name}: input {spec.name!r} axis {axis} is dynamic ({d!r}); give it with --dim {d or 'NAME'}=VALUE")
        rows = shape[0] * SYNTH_BATCHES if shape else 1  # rows to walk through; feeds take batch_size at a time
        full = (rows, *shape[1:]) if shape else ()
        if np.issubdtype(dtype, np.floating):
            arr = rng.standard_normal(full).astype(dtype)
        elif dtype == np.bool_:
            arr = rng.random(full) < 0.5
        else:
            arr = rng.integers(0, 10, size=full).astype(dtype)
        out[spec.name] = arr
    return out


def _load_npz(path: str | Path, model: str | Path) -> dict[str, np.ndarray]:
    session = make_session(model, threads=1)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # BadZipFile, OSError, ValueError for object arrays
        raise ValueError(f"{path}: cannot read as .npz without unpickling: {e}") from e
    out = {}
    for spec in session.get_inputs():
        if spec.name not in arrays:
            raise ValueError(f"{path}: no array {spec.name!r} for model input {spec.name!r} (arrays: {', '.join(sorted(arrays))})")
        out[spec.name] = np.ascontiguousarray(arrays[spec.name].astype(ORT_DTYPES.get(spec.type, np.float32), copy=False))
    return out


def probe(
    models: Sequence[str | Path],
    *,
    threads: int = 1,
    batch_size: int = 1,
    runs: int = 200,
    warmup: int = 20,
    data: str | Path | None = None,
    dims: Mapping[str, int] | None = None,
    budget_s: float | None = None,
    min_time_s: float = DEFAULT_MIN_TIME_S,
    sessions: int = LatencySettings.sessions,
    inter_op_threads: int = 1,
    optimization: str = "all",
    seed: int = 0,
) -> dict[str, Any]:
    """Measure `models` interleaved on this machine; returns the `edgefair-latency/1` document.

    Inputs come from `data` (.npz, one array per model input) or are synthesized from the first
    model's input shapes; every model must accept them. Files with the same sha256 are measured
    once: their entry lists every path under `paths` (`path` is the first).
    """
    import onnxruntime

    if not models:
        raise ValueError("probe: give at least one model")
    paths = [Path(m) for m in models]
    for p in paths:
        if not p.is_file():
            raise ValueError(f"{p}: no such model file")
    same: dict[str, list[Path]] = {}  # sha256 -> paths, in the order given
    for p in paths:
        same.setdefault(sha256_file(p), []).append(p)
    unique = [ps[0] for ps in same.values()]
    for p in unique:
        fixed = fixed_batch(make_session(p, threads=1))
        if fixed is not None and fixed != batch_size:
            raise ValueError(f"{p}: the model's batch axis is fixed at {fixed}; use batch size {fixed}")
    if data is not None:
        inputs = _load_npz(data, unique[0])
    else:
        inputs = synthesize_inputs(unique[0], batch_size=batch_size, dims=dims, seed=seed)
    settings = LatencySettings(threads=threads, batch_size=batch_size, warmup=warmup, runs=runs, budget_s=budget_s,
                               min_time_s=min_time_s, sessions=sessions, inter_op_threads=inter_op_threads,
                               optimization=optimization, seed=seed)
    results = measure_interleaved(unique, inputs, settings)
    return {
        "schema": SCHEMA,
        "machine": cpu_info(),
        "onnxruntime": onnxruntime.__version__,
        "inputs": "data" if data is not None else "synthetic",
        "models": [
            {"path": str(ps[0]), "paths": [str(p) for p in ps], "sha256": sha, "size_bytes": ps[0].stat().st_size, "latency": lat}
            for (sha, ps), lat in zip(same.items(), results)
        ],
    }


def load_device_latency(
    paths: Sequence[str | Path], expected: LatencySettings | None = None
) -> dict[str, dict[str, Any]]:
    """sha256 of a model -> its latency from `edgefair-latency/1` files, plus where it was measured
    (`device`: cpu_info of that machine, `onnxruntime`, `source`: the file, `paths`: the model paths
    it was measured under).

    With `expected` (the run's latency settings), every measurement must have been taken with the
    same MATCHED_SETTINGS (batch size, threads, inter-op threads, optimization level).
    Raises ValueError naming the file and key when a file is not a valid probe result, does not
    match `expected`, or when two files measure the same model. One file may list a model twice
    (probe files written before identical models were merged): the first measurement counts.
    """
    found: dict[str, dict[str, Any]] = {}
    for path in paths:
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a readable JSON file ({e})") from e
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
            raise ValueError(f"{path}: schema: expected {SCHEMA!r}, got {got!r}")
        models = doc.get("models")
        if not isinstance(models, list) or not models:
            raise ValueError(f"{path}: models: must be a non-empty list")
        in_file: set[str] = set()
        for i, entry in enumerate(models):
            key = f"{path}: models[{i}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{key}: must be an object")
            sha = entry.get("sha256")
            if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
                raise ValueError(f"{key}.sha256: must be 64 lowercase hex characters, got {sha!r}")
            lat = entry.get("latency")
            if not isinstance(lat, dict):
                raise ValueError(f"{key}.latency: must be an object")
            for field in REQUIRED_LATENCY:
                v = lat.get(field)
                if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
                    raise ValueError(f"{key}.latency.{field}: must be a number >= 0, got {v!r}")
            if expected is not None:
                for field in MATCHED_SETTINGS:
                    want = getattr(expected, field)
                    if field not in lat:
                        raise ValueError(f"{key}.latency.{field}: missing, so it cannot be checked against [latency] {field} {want}")
                    if lat[field] != want or isinstance(lat[field], bool):
                        raise ValueError(f"{path}: {field} {lat[field]} does not match [latency] {field} {want}")
            listed = entry.get("paths") if isinstance(entry.get("paths"), list) else [entry.get("path")]
            entry_paths = [str(p) for p in listed if isinstance(p, str)]
            if sha in in_file:  # the same model twice in one probe: one measurement, every path
                found[sha]["paths"] += [p for p in entry_paths if p not in found[sha]["paths"]]
                continue
            if sha in found:
                raise ValueError(f"{key}: model {sha[:12]} is already measured in {found[sha]['source']}")
            in_file.add(sha)
            found[sha] = {**lat, "device": doc.get("machine"), "onnxruntime": doc.get("onnxruntime"),
                          "source": str(path), "paths": entry_paths}
    return found


def _dim(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME=POSITIVE_INT, got {text!r}")
    return name, int(value)


def build_parser(prog: str = "python -m edgefair.probe") -> argparse.ArgumentParser:
    """The options of `python -m edgefair.probe` and of `edgefair probe` (which hands its arguments here)."""
    ap = argparse.ArgumentParser(
        prog=prog, description="Latency of ONNX models on this machine (numpy and onnxruntime only).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Example:\n  {prog} edgefair-out/*.onnx --out device.json\n"
               f"  {prog} encoder.onnx --dim seq=128 --batch-size 1 --out device.json   # a dynamic sequence axis",
    )
    ap.add_argument("models", nargs="+", metavar="MODEL.onnx", help="models to time interleaved; identical files are timed once")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (0: onnxruntime's choice); default 1")
    ap.add_argument("--inter-op-threads", type=int, default=1, help="inter-op threads; default 1")
    ap.add_argument("--optimization", choices=OPTIMIZATION_LEVELS, default="all", help="graph optimization level; default all")
    ap.add_argument("--batch-size", type=int, default=1, help="rows per run; default 1")
    ap.add_argument("--runs", type=int, default=200, help="timed rounds in all, each runs every model once; default 200")
    ap.add_argument("--warmup", type=int, default=20, help="rounds discarded in each session; default 20")
    ap.add_argument("--sessions", type=int, default=LatencySettings.sessions,
                    help=f"fresh sessions per model, sharing --runs/--min-time-s/--budget-s; default {LatencySettings.sessions}")
    ap.add_argument("--budget-s", type=float, default=None, help="time for this many seconds in all instead of --runs")
    ap.add_argument("--min-time-s", type=float, default=DEFAULT_MIN_TIME_S,
                    help=f"keep timing past --runs until this many seconds; default {DEFAULT_MIN_TIME_S}")
    ap.add_argument("--data", default=None, help=".npz with one array per model input (default: synthetic)")
    ap.add_argument("--dim", type=_dim, action="append", default=[], help="value of a named dynamic axis, NAME=INT (repeatable)")
    ap.add_argument("--seed", type=int, default=0, help="seed of synthetic inputs and bootstrap; default 0")
    ap.add_argument("--out", default=None, help="write the JSON here (for `edgefair run --latency-from`) instead of stdout")
    return ap


def main(argv: Sequence[str] | None = None, prog: str = "python -m edgefair.probe") -> int:
    """Command line: prints the JSON (or writes it to --out and prints one line per model); returns
    0, or 2 with `Error: ...` on stderr (argparse's own usage errors exit 2 too)."""
    args = build_parser(prog).parse_args(argv)
    try:
        doc = probe(
            args.models, threads=args.threads, batch_size=args.batch_size, runs=args.runs, warmup=args.warmup,
            data=args.data, dims=dict(args.dim), budget_s=args.budget_s, min_time_s=args.min_time_s,
            sessions=args.sessions, inter_op_threads=args.inter_op_threads, optimization=args.optimization, seed=args.seed,
        )
    except ValueError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # onnxruntime's own exceptions for a model it cannot load or run
        if type(e).__module__.startswith("onnxruntime"):
            print(f"Error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
            return 2
        raise
    # with --out the summary is the output; without, stdout carries the JSON alone
    summary = sys.stdout if args.out else sys.stderr
    for m in doc["models"]:
        lat = m["latency"]
        same = f", also {', '.join(m['paths'][1:])}" if len(m["paths"]) > 1 else ""
        print(f"{m['path']}: p50 {lat['p50_ms']:.4f} ms  p95 {lat['p95_ms']:.4f} ms  (sha256 {m['sha256'][:12]}{same})", file=summary)
    if args.out:
        write_json(args.out, doc)
    else:
        print(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
