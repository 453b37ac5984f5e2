"""Sensitive groups as boolean masks, their scopes, and the finest cells they are built from.

A *group* is a named boolean mask over the evaluation rows: ``"sex=Female"`` for one value of one
attribute, ``"sex=Female&race=Black"`` for an intersection (attributes joined with ``&`` in the
order of the mapping, i.e. the order of ``[data] groups``). A *scope* is the set of groups that
partition the data along the same attributes: ``"sex"``, ``"race"`` or ``"sex&race"``; disparity
summaries compare groups within one scope. A *cell* is a distinct membership pattern over all
groups (for attribute groups: one combination of values); every group is a union of cells, so a
bootstrap that resamples within cells keeps every group's size fixed.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import numpy as np

from edgefair.errors import DataError

NO_ATTRIBUTES_ERROR = "at least one group attribute is needed"
NOT_1D_ERROR = "group attribute {name!r}: must be a 1-D array, got shape {shape}"
LENGTH_ERROR = "group attribute {name!r}: has {n} rows, expected {expected}"
BAD_NAME_ERROR = "group attribute {name!r}: names must be non-empty and contain neither '=' nor '&'"
BAD_VALUE_ERROR = "group attribute {name!r}: value {value!r} contains '&', which group keys reserve"
DUPLICATE_VALUE_ERROR = "group attribute {name!r}: values {a!r} and {b!r} both read as {text!r}"
MISSING_VALUE_ERROR = "group attribute {name!r}: has missing values (NaN or None)"
MASK_SHAPE_ERROR = "group {key!r}: mask must be a boolean array of shape ({n},), got {shape} {dtype}"

UNIQUE_CHUNK = 65_536  # rows per np.unique call when finding an attribute's distinct values
SCOPE_SEPARATOR = "&"
VALUE_SEPARATOR = "="


def _attribute_values(name: str, values: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """Sorted distinct values of one attribute (stringified) and the mask of each."""
    if values.dtype == object:
        if any(v is None or (isinstance(v, float) and v != v) for v in values):
            raise DataError(MISSING_VALUE_ERROR.format(name=name))
    elif values.dtype.kind == "f" and np.isnan(values).any():
        raise DataError(MISSING_VALUE_ERROR.format(name=name))
    # np.unique sorts in the array's own order: numbers numerically (2 before 10), strings lexically.
    # Distinct values chunk by chunk: a sorted copy of a million strings is not needed to find a few.
    parts = [np.unique(values[a:a + UNIQUE_CHUNK]) for a in range(0, len(values), UNIQUE_CHUNK)]
    uniques = np.unique(np.concatenate(parts)) if parts else np.unique(values)
    texts = [str(v) for v in uniques.tolist()]
    seen: dict[str, object] = {}
    for raw, text in zip(uniques.tolist(), texts):
        if SCOPE_SEPARATOR in text:
            raise DataError(BAD_VALUE_ERROR.format(name=name, value=text))
        if text in seen:
            raise DataError(DUPLICATE_VALUE_ERROR.format(name=name, a=seen[text], b=raw, text=text))
        seen[text] = raw
    return texts, [values == u for u in uniques]


def group_masks(attributes: Mapping[str, np.ndarray], *, intersections: bool) -> dict[str, np.ndarray]:
    """Boolean masks, one per group, keyed ``"attr=value"`` and ``"a=x&b=y"``.

    First every value of every attribute (attributes in mapping order, values sorted, stringified),
    then, if ``intersections`` and there are at least two attributes, every combination of the
    observed values of *all* attributes, in mapping order, *including combinations with no rows*:
    an empty intersection is reported with ``n = 0`` and status ``insufficient_data`` rather than
    silently missing. Only the full intersection is built (not pairs of three attributes).

    Raises:
        DataError: no attributes, arrays that are not 1-D or differ in length, missing values, or
            names/values that would make group keys ambiguous.
    """
    if not attributes:
        raise DataError(NO_ATTRIBUTES_ERROR)
    per_attribute: list[tuple[str, list[str], list[np.ndarray]]] = []
    expected: int | None = None
    for name, raw in attributes.items():
        if not name or VALUE_SEPARATOR in name or SCOPE_SEPARATOR in name:
            raise DataError(BAD_NAME_ERROR.format(name=name))
        values = np.asarray(raw)
        if values.ndim != 1:
            raise DataError(NOT_1D_ERROR.format(name=name, shape=values.shape))
        expected = len(values) if expected is None else expected
        if len(values) != expected:
            raise DataError(LENGTH_ERROR.format(name=name, n=len(values), expected=expected))
        texts, masks = _attribute_values(name, values)
        per_attribute.append((name, texts, masks))

    out: dict[str, np.ndarray] = {}
    for name, texts, masks in per_attribute:
        for text, mask in zip(texts, masks):
            out[f"{name}{VALUE_SEPARATOR}{text}"] = mask
    if intersections and len(per_attribute) >= 2:
        choices = [list(zip(texts, masks)) for _, texts, masks in per_attribute]
        for combo in itertools.product(*choices):
            key = SCOPE_SEPARATOR.join(
                f"{name}{VALUE_SEPARATOR}{text}" for (name, _, _), (text, _) in zip(per_attribute, combo)
            )
            mask = np.logical_and.reduce([m for _, m in combo])
            out[key] = mask
    return out


def scope_of(key: str) -> str:
    """The scope of a group key: ``"sex=Female&race=Black"`` -> ``"sex&race"``; ``"sex=Male"`` -> ``"sex"``."""
    return SCOPE_SEPARATOR.join(part.split(VALUE_SEPARATOR, 1)[0] for part in key.split(SCOPE_SEPARATOR))


def scopes(keys: list[str]) -> dict[str, list[str]]:
    """Group keys by scope, both in first-seen order."""
    out: dict[str, list[str]] = {}
    for key in keys:
        out.setdefault(scope_of(key), []).append(key)
    return out


def validate_masks(masks: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """Check every mask is boolean with ``n`` rows; return them as a plain dict of bool arrays."""
    out: dict[str, np.ndarray] = {}
    for key, mask in masks.items():
        arr = np.asarray(mask)
        if arr.shape != (n,) or arr.dtype != np.bool_:
            raise DataError(MASK_SHAPE_ERROR.format(key=key, n=n, shape=arr.shape, dtype=arr.dtype))
        out[key] = arr
    return out


def finest_cells(masks: Mapping[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the rows into cells of identical group membership.

    Returns:
        cell_of_row: (n,) int, the cell index of each row (cells ordered by membership pattern, so
            the split is deterministic).
        membership: (n_groups, n_cells) bool, whether each group (in ``masks`` order) contains the cell.
    """
    if not masks:
        return np.zeros(n, dtype=np.int64), np.zeros((0, 1 if n else 0), dtype=bool)
    table = np.stack([np.asarray(m, dtype=bool) for m in masks.values()], axis=1)  # (n, G)
    packed = np.packbits(table, axis=1)  # (n, ceil(G/8)): one byte string per membership pattern
    patterns, cell_of_row = np.unique(packed, axis=0, return_inverse=True)
    cell_of_row = cell_of_row.reshape(-1)
    membership = np.unpackbits(patterns, axis=1, count=table.shape[1]).T.astype(bool)  # (G, C)
    return cell_of_row, membership
