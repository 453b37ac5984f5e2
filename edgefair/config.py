"""Typed, frozen configuration tables and the one function that builds them from raw TOML.

Each table is a frozen dataclass. A field's metadata may carry a `check`: a predicate and the
message shown when it fails. `build` rejects unknown keys, wrong types and failed checks with an
error naming the full key path (`steps[1].sparsity: must be in [0, 1)`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Literal, Mapping, TypeVar

from .errors import RecipeError

T = TypeVar("T")


def check(predicate: Callable[[Any], bool], message: str, default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose value must satisfy `predicate` (None always passes for optionals)."""
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata={"check": (predicate, message)})
    return dataclasses.field(default=default, metadata={"check": (predicate, message)})


def in_range(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    def ok(v: float) -> bool:
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return ok, f"must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def positive(v: float) -> bool:
    return v > 0


def build(cls: type[T], table: Any, path: str) -> T:
    """Build dataclass `cls` from the raw mapping `table`; `path` names the table in errors."""
    if not isinstance(table, Mapping):
        raise RecipeError(f"{path}: must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise RecipeError(f"{path}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    for name, f in known.items():
        key = f"{path}.{name}"
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecipeError(f"{key}: required key is missing")
            continue
        value = _convert(table[name], hints[name], key)
        if "check" in f.metadata and value is not None:
            predicate, message = f.metadata["check"]
            items = value if isinstance(value, (tuple, dict)) else (value,)
            if not all(predicate(v) for v in items):
                raise RecipeError(f"{key}: {message} (got {table[name]!r})")
        values[name] = value
    try:
        return cls(**values)
    except ValueError as e:  # cross-field checks in __post_init__ say "<field>: <problem>"
        raise RecipeError(f"{path}.{e}") from e


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{key}: must be one of {', '.join(repr(a) for a in args)} (got {value!r})")
        return value
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"{key}: must be a table (got {value!r})")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if origin is tuple:
        if not isinstance(value, list):
            raise RecipeError(f"{key}: must be a list (got {value!r})")
        return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{key}: must be true or false (got {value!r})")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{key}: must be an integer (got {value!r})")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{key}: must be a number (got {value!r})")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise RecipeError(f"{key}: must be a non-empty string (got {value!r})")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug in a config class


def as_dict(obj: Any) -> dict[str, Any]:
    """JSON-ready dict of a config dataclass (tuples become lists)."""
    out = dataclasses.asdict(obj)
    return _listify(out)


def _listify(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _listify(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_listify(x) for x in v]
    return v
