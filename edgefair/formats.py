"""Data formats beyond .npz and .csv: Parquet tables, image folders, CSV/Parquet indexes of image
files, and a user's `module:function` loader. Each reader returns named columns (first axis =
examples); `data.load` gives them the same meaning whatever the format.

Image files are read with Pillow, converted to the recipe's channels, resized to
`data.image_size` ([height, width], bilinear) when set, scaled to [0, 1], normalised with
`data.mean` and `data.std` per channel, and laid out as `data.layout` ("nchw": (n, C, H, W), or
"nhwc"). Channel order is `data.channels`: "rgb", "bgr" (reversed), or "gray" (one channel).

A loader function is the user's code: it runs in this process with edgefair's rights.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TABLE_SUFFIXES = (".csv", ".parquet")
# "pkg.module:function" (imported with the recipe's folder first on sys.path) or "path/file.py:function"
LOADER_RE = re.compile(r"^([A-Za-z_][\w.]*|[^:]+\.py):[A-Za-z_]\w*$")


@dataclass(frozen=True)
class ReadOptions:
    """How `data.load` reads what the recipe names beyond .npz/.csv (the `[data]` keys of the same names)."""

    base: Path = Path(".")  # the recipe's folder: a `pkg.module:function` loader is imported from it
    loader: str | None = None
    image_column: str | None = None  # a .csv/.parquet file is an index: this column holds image paths
    subfolders: tuple[str, ...] = ("label",)  # an image folder: what each directory level names
    image_size: tuple[int, int] | None = None  # [height, width]; None: every image must have the same size
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    channels: str = "rgb"  # rgb | bgr | gray
    layout: str = "nchw"  # nchw | nhwc

    @property
    def n_channels(self) -> int:
        return 1 if self.channels == "gray" else 3


def near(name: str, names: Sequence[str], *, limit: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest few of `names`, or ' (has: ...)' for a short list,
    or '' when nothing is close: an error never dumps a wide table's every column."""
    names = sorted(str(n) for n in names)
    if not names:
        return " (it has none)"
    close = difflib.get_close_matches(name, names, n=limit, cutoff=0.6)
    if close:
        return f" (did you mean: {', '.join(close)}?)"
    if len(names) <= 8:
        return f" (has: {', '.join(names)})"
    return f" ({len(names)} columns, none close)"


# ---- Parquet ---------------------------------------------------------------------------------------


def read_parquet(path: Path, key: str, *, text: set[str]) -> dict[str, np.ndarray]:
    """Columns of a Parquet file. Numeric and boolean columns as numbers, string columns as
    fixed-width unicode, `text` columns (group attributes) as their exact text. A column of
    fixed-length lists becomes one 2-D array. Nulls are refused, naming the column and row."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # the `data` extra
        raise DataError(f"{key}: reading {path.name} needs pyarrow (pip install 'edgefair[data]')") from e
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise DataError(f"{key}: cannot read {path} as Parquet: {first}") from e
    if len(set(table.column_names)) != len(table.column_names):
        raise DataError(f"{key}: duplicate column names in {path}")
    if table.num_columns == 0 or table.num_rows == 0:
        raise DataError(f"{key}: {path} has no rows" if table.num_columns else f"{key}: {path} has no columns")
    cols: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name)
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{key}: column {name!r} in {path} has a missing value at data row {row + 1}")
        t = col.type
        if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            values = col.to_pylist()
            lengths = {len(v) for v in values}
            if len(lengths) != 1:
                raise DataError(f"{key}: list column {name!r} in {path} has rows of different lengths {sorted(lengths)[:3]}")
            arr = np.asarray(values)
            if arr.dtype.kind not in "iufb":
                raise DataError(f"{key}: list column {name!r} in {path} must hold numbers")
            cols[name] = arr
        elif pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            cols[name] = np.asarray(col.to_pylist(), dtype=str)
        elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
            arr = col.to_numpy()
            cols[name] = arr.astype(str) if name in text and arr.dtype.kind in "iub" else arr
        else:
            raise DataError(f"{key}: column {name!r} in {path} has type {t}, which edgefair does not read (numbers, strings, lists of numbers)")
    return cols


# ---- images -----------------------------------------------------------------------------------------


def read_image(path: Path, key: str, options: ReadOptions) -> np.ndarray:
    """One image as float32 (H, W, C), converted, resized and normalised as `options` say."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            img = img.convert("L" if options.channels == "gray" else "RGB")
            if options.image_size is not None:
                h, w = options.image_size
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
    except FileNotFoundError as e:
        raise DataError(f"{key}: image not found: {path}") from e
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:  # truncated, corrupt, unknown, huge
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise DataError(f"{key}: cannot read image {path}: {first}") from e
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if options.channels == "bgr":
        arr = arr[:, :, ::-1]
    mean = np.asarray(options.mean, dtype=np.float32)
    std = np.asarray(options.std, dtype=np.float32)
    return (arr - mean) / std


def stack_images(paths: Sequence[Path], key: str, options: ReadOptions) -> np.ndarray:
    """(n, C, H, W) or (n, H, W, C) float32 of `paths`, in order; all of one size after resizing."""
    images = []
    for p in paths:
        arr = read_image(p, key, options)
        if images and arr.shape != images[0].shape:
            h0, w0 = images[0].shape[:2]
            h, w = arr.shape[:2]
            raise DataError(
                f"{key}: image {p} is {h}x{w} (height x width), but {paths[0]} is {h0}x{w0}; "
                "set data.image_size to resize every image"
            )
        images.append(arr)
    out = np.stack(images).astype(np.float32, copy=False)
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2) if options.layout == "nchw" else out)


def image_paths(index: Path, values: np.ndarray, column: str, key: str) -> list[Path]:
    """The image files an index names, relative to the index's folder. Absolute paths and paths
    that climb out of that folder are refused: edgefair reads only what the recipe names."""
    root = index.parent.resolve()
    out = []
    for row, raw in enumerate(values.astype(str), start=1):
        rel = raw.strip()
        if not rel:
            raise DataError(f"{key}: image column {column!r} in {index} is empty at data row {row}")
        if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == os.pardir:
            raise DataError(
                f"{key}: image path {rel!r} at data row {row} of {index} is outside {root}; "
                "an index names files in its own folder or below"
            )
        out.append(root / os.path.normpath(rel))
    return out


def read_image_folder(folder: Path, key: str, options: ReadOptions) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Images under `folder/<level 1>/.../<level k>/`, one directory level per name in
    `options.subfolders`; each level's directory names are that column's values. Files in sorted
    path order; other files (not .png/.jpg/.jpeg) are ignored."""
    depth = len(options.subfolders)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DataError(f"{key}: no .png/.jpg/.jpeg images in {folder}")
    values: list[list[str]] = [[] for _ in range(depth)]
    for f in files:
        parts = f.relative_to(folder).parts[:-1]
        if len(parts) != depth:
            raise DataError(
                f"{key}: image {f} is {len(parts)} folder level(s) below {folder}, data.subfolders names "
                f"{depth} ({', '.join(options.subfolders)})"
            )
        for i, part in enumerate(parts):
            values[i].append(part)
    columns = {name: np.asarray(v, dtype=str) for name, v in zip(options.subfolders, values)}
    return stack_images(files, key, options), columns


# ---- a user's loader function ------------------------------------------------------------------------


def call_loader(spec: str, path: Path, key: str, base: Path) -> dict[str, np.ndarray]:
    """Run the user's `module:function` on `path` (a file or folder the recipe names): it returns a
    mapping of names to arrays, read like the arrays of an .npz file. This executes the user's code."""
    fn = _import_loader(spec, base)
    try:
        out = fn(path)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        raise DataError(f"data.loader: {spec} failed on {key} ({path.name}): {first}") from e
    if not isinstance(out, Mapping):
        raise DataError(f"data.loader: {spec} returned {type(out).__name__} for {key}, not a mapping of names to arrays")
    cols = {}
    for name, value in out.items():
        if not isinstance(name, str) or not name:
            raise DataError(f"data.loader: {spec} returned a non-string or empty name {name!r} for {key}")
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as e:
            raise DataError(f"data.loader: {spec} returned array {name!r} for {key} that numpy cannot read: {e}") from e
        if arr.dtype == object:
            raise DataError(f"data.loader: {spec} returned array {name!r} for {key} with Python objects; return numbers or strings")
        cols[name] = arr
    return cols


def _import_loader(spec: str, base: Path):
    module_name, func_name = spec.rsplit(":", 1)
    try:
        if module_name.endswith(".py"):
            file = (base / module_name).resolve()
            if not file.is_file():
                raise ImportError(f"file not found: {file}")
            mod_spec = importlib.util.spec_from_file_location(f"edgefair_loader_{file.stem}", file)
            mod = importlib.util.module_from_spec(mod_spec)
            sys.path.insert(0, str(file.parent))
            try:  # not registered in sys.modules: nothing of the loader file outlives the call
                mod_spec.loader.exec_module(mod)
            finally:
                sys.path.remove(str(file.parent))
        else:
            sys.path.insert(0, str(base))
            try:
                mod = importlib.import_module(module_name)
            finally:
                sys.path.remove(str(base))
        fn = getattr(mod, func_name)
    except (ImportError, AttributeError, OSError, SyntaxError) as e:
        raise DataError(f"data.loader: cannot import {spec}: {e}") from e
    except Exception as e:  # the module's own code failed while it was imported
        raise DataError(f"data.loader: importing {spec} failed: {e.__class__.__name__}: {e}") from e
    if not callable(fn):
        raise DataError(f"data.loader: {spec} is not a function")
    return fn
