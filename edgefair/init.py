"""`edgefair init MODEL DATA`: a starter recipe for one's own model and data.

Input names come from the model (an ONNX file's graph inputs; a `.pt2` program's or a factory's
signature, loaded as `edgefair run` loads them), group columns are proposed from the data
(1-D columns with few distinct values that are neither a model input nor the label), and the
default gates are written out with a comment on every key. The text is parsed as a recipe before
it is written: what `init` writes, `edgefair run` accepts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .data import DEFAULT_LABEL, _read_csv, _read_npz
from .errors import DataError, RecipeError
from .gates import DEFAULTS_LABELLED, DEFAULTS_UNLABELLED
from .io import write_text
from .recipe import parse_recipe
from .source import load_source

MAX_GROUP_VALUES = 12  # more distinct values than this is rarely a sensitive attribute (age, id, a feature)
MIN_GROUP_SIZE = 50  # the recipe default: smaller groups are reported as insufficient_data
GATE_COMMENTS = {
    "max_group_accuracy_drop": "per group: accuracy may fall at most this much vs the baseline (0.02 = 2 points)",
    "max_group_tpr_drop": "per group: true positive rate of data.positive_label",
    "max_group_fpr_increase": "per group: false positive rate",
    "max_group_ece_increase": "per group: expected calibration error",
    "min_group_agreement": "per group: share of predictions equal to the uncompressed model's (no labels)",
}


def _q(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(text, ensure_ascii=False)


def _rel(target: Path, recipe: Path) -> str:
    return Path(os.path.relpath(target.resolve(), recipe.resolve().parent)).as_posix()


def _columns(data: Path) -> dict[str, np.ndarray]:
    if not data.is_file():
        raise DataError(f"DATA: file not found: {data}")
    suffix = data.suffix.lower()
    if suffix == ".npz":
        return _read_npz(data, "DATA")
    if suffix == ".csv":
        return _read_csv(data, "DATA", text=set())
    raise DataError(f"DATA: unsupported data format {suffix!r} in {data} (use .npz or .csv)")


def _values(col: np.ndarray) -> dict[str, int] | None:
    """Distinct values and their counts of a group candidate, or None when it is not one."""
    if col.ndim != 1 or col.dtype.kind not in "iubU":
        return None
    values, counts = np.unique(col.astype(str), return_counts=True)
    if not 2 <= len(values) <= MAX_GROUP_VALUES or np.any(np.char.strip(values) == ""):
        return None
    order = np.argsort(-counts, kind="stable")
    return {str(values[i]): int(counts[i]) for i in order}


def _sizes(values: dict[str, int]) -> str:
    return ", ".join(f"{v} {n}" + (" (below min_group_size)" if n < MIN_GROUP_SIZE else "") for v, n in values.items())


def starter_recipe(model: Path, data: Path, out: Path) -> str:
    """The text of a starter recipe for MODEL and DATA, to be written at `out`; raises EdgefairError
    naming the file when the model cannot be loaded or the data does not fit it."""
    spec = str(model)
    is_file = spec.endswith((".pt2", ".onnx")) or Path(spec).is_file()
    source = _rel(model, out) if is_file else spec  # a `pkg.module:factory` entry point stays as given
    loaded = load_source(source, base=out.resolve().parent)
    names = list(loaded.input_names)
    columns = _columns(data)
    csv = data.suffix.lower() == ".csv"
    label = DEFAULT_LABEL if DEFAULT_LABEL in columns else None
    if csv:
        if len(names) != 1:
            raise DataError(f"DATA: a .csv feeds one model input, but {model} has {len(names)} ({', '.join(names)}); use an .npz")
    else:
        missing = [n for n in names if n not in columns]
        if missing:
            raise DataError(f"DATA: no array {missing[0]!r} for model input {missing[0]!r} in {data} (arrays: {', '.join(sorted(columns))})")
    taken = set(names if not csv else ()) | ({label} if label else set())
    candidates = {c: v for c in columns if c not in taken and (v := _values(columns[c])) is not None}
    if csv:  # numeric low-cardinality columns are usually features (one-hot, counts): text columns are the groups
        groups = {c: v for c, v in candidates.items() if columns[c].dtype.kind == "U"}
    else:
        groups = candidates
    others = {c: v for c, v in candidates.items() if c not in groups}
    if not groups:
        raise DataError(f"DATA: no column in {data} looks like a sensitive attribute (1-D, 2 to {MAX_GROUP_VALUES} values); "
                        "add one (e.g. sex, region, device) and run init again")
    n = len(next(iter(columns.values())))
    lines = [
        f"# Starter recipe written by `edgefair init` for {model.name if is_file else spec} and {data.name}.",
        "# Check every key, then: edgefair validate THIS_FILE && edgefair run THIS_FILE",
        "# Paths are relative to this file. Unknown keys and bad values are errors naming the key.",
        "",
        "[model]",
        f"source = {_q(source)}" + "  # .pt2 (torch.export), .onnx, or pkg.module:factory",
        f"# model inputs: {', '.join(names)} (each needs an array of that name in the data)",
        '# output = "auto"                 # auto | logits | probabilities | embedding: how to read the first output',
        "",
        "[data]",
        f"eval = {_q(_rel(data, out))}" + f"  # labelled evaluation data: {n} rows; every group metric is measured on it",
    ]
    if label:
        lines.append(f"label = {_q(label)}" + "  # integer class ids; without a label only fidelity to the baseline is measured")
    else:
        lines.append('# label = "..."                  # no "label" column found: only fidelity (agreement) is gated')
    lines.append(f"groups = [{', '.join(_q(g) for g in groups)}]  # sensitive attributes: each value is a group")
    for g, v in groups.items():
        lines.append(f"#   {g}: {_sizes(v)}")
    for g, v in others.items():
        lines.append(f"#   also few-valued, not proposed (numeric, probably a feature): {g}: {_sizes(v)}")
    if csv:
        feats = [c for c in columns if c not in groups and c != label]
        numeric = [c for c in feats if columns[c].dtype.kind in "iuf"]
        if numeric != feats:  # text columns that are neither group nor label cannot be fed to the model
            lines.append(f"features = [{', '.join(_q(c) for c in numeric)}]  # the numeric columns that form the model input")
        else:
            lines.append("# features = [...]               # default: every column that is neither label nor group")
    lines += [
        f"intersections = {'true' if len(groups) > 1 else 'false'}" + "  # also every combination of the groups' values",
        f"min_group_size = {MIN_GROUP_SIZE}  # smaller groups are reported as insufficient_data, never gated",
        '# calibration = "calib.npz"        # representative inputs (not the eval rows): needed by quantize_static',
        "",
        "[evaluate]",
        "bootstrap = 1000  # paired bootstrap replicates, stratified by group",
        "confidence = 0.95  # of every interval; gates test at alpha = 1 - confidence",
        "seed = 0  # fixed: the same data gives the same statistics",
        "",
        "[latency]",
        "threads = 1  # intra-op threads, as on the device",
        "batch_size = 1  # rows per call, as deployed",
        "warmup = 20  # untimed rounds first, in each session",
        "runs = 200  # timed rounds in all, interleaved across steps",
        "",
        "[[steps]]  # each step reads the previous one's model, or `input = \"<step name>\"`",
        'kind = "quantize_dynamic"  # int8 weights, activations quantized at run time: needs no calibration data',
        "",
        "# [[steps]]                        # with data.calibration set above:",
        '# kind = "quantize_static"         # int8 weights and activations, calibrated',
        '# input = "baseline"',
        "",
        "[gates]  # the defaults, written out: fail a group on evidence of harm beyond the limit",
    ]
    defaults = DEFAULTS_LABELLED if label else DEFAULTS_UNLABELLED
    for key, limit in defaults.items():
        lines.append(f"{key} = {limit}  # {GATE_COMMENTS.get(key, '')}".rstrip(" #"))
    lines += [
        "# max_latency_p95_ms = 5.0         # p95 latency of the model to ship",
        "# max_size_mb = 2.0",
        '# on_undecided = "fail_if_significant"  # groups the data cannot decide: see the README',
        "",
        "[select]",
        'by = "fastest"  # which passing step ships: fastest | smallest | last',
        "",
    ]
    text = "\n".join(lines)
    _check(text, out)
    return text


def _check(text: str, out: Path) -> None:
    """Parse the text as `edgefair run` will: a starter recipe it refuses is a bug here, not bad input."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    parse_recipe(tomllib.loads(text), path=out.resolve())


def write_starter(model: Path, data: Path, out: Path, *, force: bool = False) -> str:
    """Write the starter recipe to `out` (refused if it exists, unless `force`); returns its text."""
    if out.exists() and not force:
        raise RecipeError(f"--out: {out} exists (pass --force to overwrite it)")
    if out.exists() and not out.is_file():
        raise RecipeError(f"--out: {out} is not a file")
    text = starter_recipe(model, data, out)
    write_text(out, text)
    return text


def summary(text: str) -> dict[str, Any]:
    """What the recipe proposes, for the command's one-line report."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    raw = tomllib.loads(text)
    return {"groups": raw["data"]["groups"], "label": raw["data"].get("label"), "gates": sorted(raw.get("gates", {}))}
