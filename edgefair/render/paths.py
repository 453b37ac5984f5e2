"""Paths without the machine they ran on: report.json names files relative to the output folder (the
recipe) and to the recipe's folder (data); reports written before that named absolute paths, which
become relative to the recipe, or a file name. `without_local_dirs` is the last guard on free text."""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from .units import (
    DASH,
    dig,
)


def is_absolute(p: str) -> bool:
    """An absolute path on POSIX or Windows (report.json written before 0.2 named files that way)."""
    return PurePosixPath(p).is_absolute() or PureWindowsPath(p).is_absolute()


_is_abs = is_absolute


def recipe_dir(report: dict[str, Any]) -> str | None:
    path = dig(report, "recipe", "path")
    if isinstance(path, str) and _is_abs(path):
        return os.path.dirname(path)
    return None


def _relative(report: dict[str, Any], path: str) -> str | None:
    """`path` relative to the recipe's folder when the two share more than the file system's root
    and it climbs at most two folders up; else None."""
    base = recipe_dir(report)
    if not base:
        return None
    try:
        common = os.path.commonpath([path, base])
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive, or relative and absolute mixed
        return None
    if common in ("", os.sep, "/") or os.path.dirname(common) == common or _is_abs(rel) or rel.split(os.sep).count("..") > 2:
        return None
    return rel


def portable_path(report: dict[str, Any], path: Any) -> str:
    """A path without the machine it ran on: relative to the recipe's folder when it is absolute
    (the way the recipe names it), else its file name; relative paths and specs unchanged."""
    if path is None:
        return DASH
    p = str(path)
    if not _is_abs(p):
        return p
    rel = _relative(report, p)
    if rel is not None:
        return rel
    return PurePosixPath(p).name if "/" in p else PureWindowsPath(p).name


def local_prefixes(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(absolute folder, what to write instead) for the folders the report mentions (recipe, data,
    source) and the home folder, longest first: scrubbed from text meant to leave the machine (the
    model card). A folder becomes its path relative to the recipe's ('data/'), the recipe's own
    folder nothing, the home folder '~/'."""
    found = set()
    rdir = recipe_dir(report)
    if rdir:
        found.add(rdir)
    for d in (report.get("data") or {}).values():
        p = d.get("path") if isinstance(d, dict) else None
        if isinstance(p, str) and _is_abs(p):
            found.add(os.path.dirname(p))
    src = dig(report, "source", "spec")
    if isinstance(src, str) and _is_abs(src):
        found.add(os.path.dirname(src))
    out = []
    for folder in found:
        if len(folder) <= 1:
            continue
        rel = _relative(report, folder)
        out.append((folder.rstrip("/\\"), "" if rel in (None, ".") else rel.rstrip("/\\") + "/"))
    home = os.path.expanduser("~")
    if home and home != "~" and len(home) > 1:
        out.append((home.rstrip("/\\"), "~/"))
    return sorted(out, key=lambda fr: len(fr[0]), reverse=True)


_ABS_DIRS = re.compile(r"(?<![\w.:/~-])(?:/|[A-Za-z]:\\)(?:[^\s/\\`'\"|<>()\[\]]+[/\\])+(?=[^\s/\\`'\"|<>()\[\]])")


def without_local_dirs(report: dict[str, Any], text: str) -> str:
    """Text meant to leave the machine (a warning, the model card) without this machine's folders: the
    folders the report names become relative to the recipe's, the home folder '~/', and any other
    absolute path keeps only its file name."""
    for folder, instead in local_prefixes(report):
        text = text.replace(folder + "/", instead).replace(folder + "\\", instead)
    return _ABS_DIRS.sub("", text)
