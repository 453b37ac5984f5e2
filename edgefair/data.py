"""Labelled evaluation data: model inputs, labels and sensitive attributes, read from .npz or .csv.

A Dataset never holds pickled objects: .npz files are read with `allow_pickle=False`.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import DataError

DEFAULT_LABEL = "label"
CSV_INPUT = "__features__"  # placeholder name until the model's input name is known


@dataclass(frozen=True)
class Dataset:
    """Arrays of one data file, first axis = examples."""

    path: Path
    inputs: Mapping[str, np.ndarray]  # model input name -> array
    labels: np.ndarray | None  # (n,) int64 class ids
    attributes: Mapping[str, np.ndarray]  # sensitive attribute -> (n,) str values

    @property
    def n(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int, *, limit: int | None = None):
        """Yield input feeds of at most `batch_size` rows, in order."""
        n = self.n if limit is None else min(limit, self.n)
        for start in range(0, n, batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.inputs.items()}

    def rename_input(self, old: str, new: str) -> "Dataset":
        inputs = {(new if k == old else k): v for k, v in self.inputs.items()}
        return Dataset(self.path, inputs, self.labels, self.attributes)


def load(
    path: Path,
    *,
    key: str,
    label: str | None,
    groups: Sequence[str],
    features: Sequence[str] | None = None,
    require_labels: bool = False,
    ignore: Sequence[str] = (),
) -> Dataset:
    """Read a data file. `key` names the recipe key (e.g. `data.eval`) for error messages.

    `ignore` names columns that are never model inputs (label, groups) but need not be present.
    """
    if not path.is_file():
        raise DataError(f"{key}: file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        columns = _read_npz(path, key)
    elif suffix == ".csv":
        columns = _read_csv(path, key, text=set(groups))
    else:
        raise DataError(f"{key}: unsupported data format {suffix!r} in {path} (use .npz or .csv)")

    label_name = label if label is not None else (DEFAULT_LABEL if DEFAULT_LABEL in columns else None)
    if label is not None and label not in columns:
        raise DataError(f"{key}: label column {label!r} not in {path} (has: {', '.join(sorted(columns))})")
    if require_labels and label_name is None:
        raise DataError(f"{key}: no label column in {path} (set data.label)")
    for g in groups:
        if g not in columns:
            raise DataError(f"{key}: group column {g!r} not in {path} (has: {', '.join(sorted(columns))})")

    reserved = set(groups) | set(ignore) | ({label_name} if label_name else set())
    if suffix == ".csv":
        names = list(features) if features else [c for c in columns if c not in reserved]
        missing = [c for c in names if c not in columns]
        if missing:
            raise DataError(f"{key}: feature column {missing[0]!r} not in {path}")
        if not names:
            raise DataError(f"{key}: no feature columns in {path}")
        for c in names:
            if columns[c].dtype.kind not in "iufb":
                empty = np.flatnonzero(np.char.strip(columns[c].astype(str)) == "")
                if len(empty):
                    raise DataError(f"{key}: feature column {c!r} in {path} has a missing value at data row {int(empty[0]) + 1}")
                raise DataError(f"{key}: feature column {c!r} in {path} is not numeric")
        x = np.stack([columns[c].astype(np.float32) for c in names], axis=1)
        inputs = {CSV_INPUT: x}
    else:
        if features:
            raise DataError(f"{key}: data.features applies to .csv files only, not {path.name}")
        inputs = {k: v for k, v in columns.items() if k not in reserved}
        if not inputs:
            raise DataError(f"{key}: no model input arrays in {path}")

    n = len(next(iter(inputs.values())))
    for name, arr in [*inputs.items(), *((g, columns[g]) for g in groups)]:
        if arr.ndim == 0 or len(arr) != n:
            raise DataError(f"{key}: array {name!r} in {path} has {arr.shape[0] if arr.ndim else 0} rows, expected {n}")
    if n == 0:
        raise DataError(f"{key}: {path} has no rows")

    labels = None
    if label_name is not None:
        labels = _labels(columns[label_name], n, key=f"{key}: label {label_name!r} in {path}")
    attributes = {}
    for g in groups:
        col = columns[g]
        if col.ndim != 1:
            raise DataError(f"{key}: group column {g!r} in {path} must be 1-D, has shape {col.shape}")
        values = col.astype(str)
        empty = np.flatnonzero(np.char.strip(values) == "")
        if len(empty):
            raise DataError(f"{key}: group column {g!r} in {path} has an empty value at data row {int(empty[0]) + 1}")
        attributes[g] = values
    return Dataset(path, inputs, labels, attributes)


def _labels(arr: np.ndarray, n: int, *, key: str) -> np.ndarray:
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"{key} must be 1-D with {n} rows, has shape {arr.shape}")
    if arr.dtype.kind in "iub":
        out = arr.astype(np.int64)
    elif arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        out = arr.astype(np.int64)
    else:
        raise DataError(f"{key} must hold integer class ids, has dtype {arr.dtype}")
    if out.min() < 0:
        raise DataError(f"{key} has negative class ids")
    return out


def _read_npz(path: Path, key: str) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):  # np.load would take any other file for a pickle
        raise DataError(f"{key}: cannot read {path}: not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {name: z[name] for name in z.files}
    except ValueError as e:
        if "pickle" in str(e):  # numpy refuses object arrays without pickle: never unpickle a data file
            raise DataError(f"{key}: {path} holds pickled (object) arrays, which are not read; store strings as fixed-width unicode") from e
        raise DataError(f"{key}: cannot read {path} as .npz: {e}") from e
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{key}: cannot read {path} as .npz: {e}") from e


def _read_csv(path: Path, key: str, *, text: set[str]) -> dict[str, np.ndarray]:
    """Columns of a csv file; numeric ones as numbers, except `text` columns (group attributes),
    which keep their exact spelling ("01" stays "01")."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{key}: cannot read {path}: {e}") from e
    if len(rows) < 2:
        raise DataError(f"{key}: {path} needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    if len(set(header)) != len(header):
        raise DataError(f"{key}: duplicate column names in {path}")
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{key}: {path} line {i} has {len(row)} fields, header has {len(header)}")
    cols = {}
    for j, name in enumerate(header):
        raw = np.array([r[j] for r in body])
        if name in text:
            cols[name] = raw
            continue
        if np.any(np.char.strip(raw) == ""):
            cols[name] = raw  # missing values: not numeric; a clear error follows if it is used as a number
            continue
        try:
            num = raw.astype(np.float64)
            cols[name] = num.astype(np.int64) if np.all(num == np.round(num)) and "." not in "".join(raw[:50]) else num
        except ValueError:
            cols[name] = raw
    return cols
