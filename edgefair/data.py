"""Labelled evaluation data: model inputs, labels and sensitive attributes, read from .npz, .csv,
.parquet, image folders and indexes, or a user's loader function (see formats.py).

A Dataset never holds pickled objects: .npz files are read with `allow_pickle=False`.
"""

from __future__ import annotations

import csv
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import DataError
from .formats import ReadOptions, call_loader, image_paths, near, read_image_folder, read_parquet, stack_images
from .mapped import map_npz, release, row_chunks

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
        """Yield input feeds of at most `batch_size` rows, in order; rows mapped from the file
        (mapped.py) are handed back to the kernel as the pass goes."""
        n = self.n if limit is None else min(limit, self.n)
        for chunk in row_chunks(self.inputs, n, multiple=batch_size):
            rows = len(next(iter(chunk.values())))
            for start in range(0, rows, batch_size):
                yield {k: v[start : start + batch_size] for k, v in chunk.items()}

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
    optional_groups: Sequence[str] = (),
    options: ReadOptions | None = None,
    stream: bool = False,
) -> Dataset:
    """Read a data file (or image folder). `key` names the recipe key (e.g. `data.eval`) for error messages.

    `ignore` names columns that are never model inputs (label, groups) but need not be present;
    `optional_groups` are group attributes read when the file has them (calibration and train data).
    `options` carries the recipe's loader and image settings (formats.ReadOptions).
    `stream`: the input arrays of an uncompressed .npz are mapped from the file and read as they
    are used (mapped.py) instead of held in memory; labels and groups are always read whole.
    """
    options = options or ReadOptions()
    suffix = path.suffix.lower()
    images = None  # (n, ...) float32 images: the single model input
    if options.loader is not None:
        if not path.exists():
            raise DataError(f"{key}: file not found: {path}")
        columns = call_loader(options.loader, path, key, options.base)
        kind = "arrays"
    elif path.is_dir():
        images, columns = read_image_folder(path, key, options)
        kind = "images"
    elif not path.is_file():
        raise DataError(f"{key}: file not found: {path}")
    elif suffix == ".npz":
        columns = _read_npz(path, key, stream=stream)
        kind = "arrays"
    elif suffix in (".csv", ".parquet"):
        text = set(groups) | set(optional_groups)
        columns = _read_csv(path, key, text=text) if suffix == ".csv" else read_parquet(path, key, text=text)
        # a Parquet table with list columns (token ids, vectors) is read like an .npz: one input per column
        kind = "arrays" if any(v.ndim > 1 for v in columns.values()) and not features else "table"
        if options.image_column is not None:
            if options.image_column not in columns:
                raise DataError(f"{key}: image column {options.image_column!r} not in {path}{near(options.image_column, list(columns))}")
            images = stack_images(image_paths(path, columns[options.image_column], options.image_column, key), key, options)
            kind = "images"
    else:
        raise DataError(f"{key}: unsupported data format {suffix!r} in {path} (use .npz, .csv, .parquet, an image folder or data.loader)")
    if not columns and images is None:
        raise DataError(f"{key}: {path} holds no arrays")

    label_name = label if label is not None else (DEFAULT_LABEL if DEFAULT_LABEL in columns else None)
    if label is not None and label not in columns:
        raise DataError(f"{key}: label column {label!r} not in {path}{near(label, list(columns))}")
    if require_labels and label_name is None:
        raise DataError(f"{key}: no label column in {path} (set data.label)")
    for g in groups:
        if g not in columns:
            raise DataError(f"{key}: group column {g!r} not in {path}{near(g, list(columns))}")
    extra_groups = [g for g in optional_groups if g in columns and g not in groups]

    reserved = set(groups) | set(optional_groups) | set(ignore) | ({label_name} if label_name else set())
    if kind == "images":
        if features:
            raise DataError(f"{key}: data.features applies to .csv and .parquet tables, not to images ({path.name})")
        inputs = {CSV_INPUT: images}
    elif kind == "table":
        names = list(features) if features else [c for c in columns if c not in reserved]
        missing = [c for c in names if c not in columns]
        if missing:
            raise DataError(f"{key}: feature column {missing[0]!r} not in {path}{near(missing[0], list(columns))}")
        if not names:
            raise DataError(f"{key}: no feature columns in {path}")
        for c in names:
            if columns[c].ndim != 1:
                raise DataError(f"{key}: feature column {c!r} in {path} holds lists; a table's features are scalar columns")
            if columns[c].dtype.kind not in "iufb":
                empty = np.flatnonzero(np.char.strip(columns[c].astype(str)) == "")
                if len(empty):
                    raise DataError(f"{key}: feature column {c!r} in {path} has a missing value at data row {int(empty[0]) + 1}")
                raise DataError(f"{key}: feature column {c!r} in {path} is not numeric")
        x = np.stack([columns[c].astype(np.float32) for c in names], axis=1)
        inputs = {CSV_INPUT: x}
    else:
        if features:
            raise DataError(f"{key}: data.features applies to .csv and .parquet tables, not {path.name}")
        inputs = {k: v for k, v in columns.items() if k not in reserved}
        if not inputs:
            raise DataError(f"{key}: no model input arrays in {path} (has only: {', '.join(sorted(columns))})")

    others = [*([label_name] if label_name else []), *groups, *extra_groups]
    _check_rows(path, key, inputs, {name: columns[name] for name in others})
    n = len(next(iter(inputs.values())))
    if n == 0:
        raise DataError(f"{key}: {path} has no rows")

    labels = None
    if label_name is not None:
        labels = _labels(columns[label_name], n, key=f"{key}: label {label_name!r} in {path}")
    attributes = {}
    for g in [*groups, *extra_groups]:
        col = columns[g]
        if col.ndim != 1:
            raise DataError(f"{key}: group column {g!r} in {path} must be 1-D, has shape {col.shape}")
        values = col.astype(str)
        empty = np.flatnonzero(np.char.strip(values) == "")
        if len(empty):
            raise DataError(f"{key}: group column {g!r} in {path} has an empty value at data row {int(empty[0]) + 1}")
        attributes[g] = values
    release(columns)  # labels and groups were copied; mapped inputs are read again as they are used
    return Dataset(path, inputs, labels, attributes)


def read_columns(path: Path, key: str, *, text: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Every column (array) of an .npz, .csv or .parquet file by name, as `load` reads them; `text`
    columns keep their exact text. For steps that need columns `load` did not keep."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _read_npz(path, key)
    if suffix == ".csv":
        return _read_csv(path, key, text=set(text))
    if suffix == ".parquet":
        return read_parquet(path, key, text=set(text))
    raise DataError(f"{key}: cannot read columns from {path.name} (an .npz, .csv or .parquet file)")


def _check_rows(path: Path, key: str, inputs: Mapping[str, np.ndarray], others: Mapping[str, np.ndarray]) -> None:
    """Every array has the same number of rows. When they disagree, the odd ones out are named
    against the count most arrays agree on (ties: the label and group arrays' count), so a short
    input array is blamed, not the label or group arrays beside it."""
    for name, arr in [*inputs.items(), *others.items()]:
        if arr.ndim == 0:
            raise DataError(f"{key}: array {name!r} in {path} is a single value, not one value per row")
    rows = {name: arr.shape[0] for name, arr in [*inputs.items(), *others.items()]}
    if len(set(rows.values())) <= 1:
        return
    votes = Counter(rows.values())
    reference = Counter(rows[k] for k in others) if others else votes
    top = max(votes.values())
    expected = max((c for c in votes if votes[c] == top), key=lambda c: reference.get(c, 0))
    odd = [k for k in rows if rows[k] != expected]
    agree = [k for k in rows if rows[k] == expected]
    shown = ", ".join(repr(k) for k in agree[:4]) + (", ..." if len(agree) > 4 else "")
    raise DataError(f"{key}: array {odd[0]!r} in {path} has {rows[odd[0]]} rows, but {shown} {'has' if len(agree) == 1 else 'have'} {expected}")


def _labels(arr: np.ndarray, n: int, *, key: str) -> np.ndarray:
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"{key} must be 1-D with {n} rows, has shape {arr.shape}")
    if arr.dtype.kind in "iub":
        out = arr.astype(np.int64)
    elif arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        out = arr.astype(np.int64)
    elif arr.dtype.kind == "U" and len(arr) and np.all(np.char.isdigit(arr)):  # folder names "0", "1", ...
        out = arr.astype(np.int64)
    elif arr.dtype.kind == "U":
        bad = next(str(v) for v in arr if not v.isdigit()) if len(arr) else ""
        raise DataError(f"{key} must hold integer class ids (0, 1, ...), has {bad!r}")
    else:
        raise DataError(f"{key} must hold integer class ids, has dtype {arr.dtype}")
    if out.min() < 0:
        raise DataError(f"{key} has negative class ids")
    return out


def _read_npz(path: Path, key: str, *, stream: bool = False) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):  # np.load would take any other file for a pickle
        raise DataError(f"{key}: cannot read {path}: not an .npz archive")
    try:
        mapped = map_npz(path) if stream else None
        if mapped is not None:
            return mapped
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
            integral = np.all(np.isfinite(num)) and np.all(num == np.round(num)) and "." not in "".join(raw[:50])
            cols[name] = num.astype(np.int64) if integral else num  # "inf" stays a float (then refused by row)
        except ValueError:
            cols[name] = raw
    return cols
