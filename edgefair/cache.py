"""Content-addressed cache of step models and evaluations, so re-running an unchanged recipe reuses work.

A key is the sha256 of everything the result depends on (input model hash, step config, data
content, versions). Every entry is written atomically (a temporary file renamed into place) and
carries the sha256 of its content, checked on every read: a cached model can become
`selected.onnx`, so a corrupt entry (a flipped bit, a file truncated by a full disk or edited by
hand) is discarded with a CacheWarning and recomputed, never used. A missing or half-written entry
is a plain miss.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

from .io import atomic_path, sha256_bytes, write_text


def default_dir() -> Path:
    env = os.environ.get("EDGEFAIR_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgefair"


# modules that only present results: editing them must not invalidate cached models and statistics
PRESENTATION = ("render/", "cli.py", "publish.py", "report.py")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """Hash of the edgefair source that computes results: results of other code are never reused."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).as_posix().startswith(PRESENTATION):
            continue
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def make_key(*parts: Any) -> str:
    return sha256_bytes(json.dumps([code_fingerprint(), *parts], sort_keys=True, default=str).encode())


SHA256_RE = re.compile(r"[0-9a-f]{64}")
COPY_CHUNK = 1 << 20


class CacheWarning(UserWarning):
    """A cache entry failed its integrity check: it was removed and its result recomputed."""


class _Corrupt(Exception):
    pass


def _canonical(obj: Any) -> str:
    """The JSON text a value's digest is taken of: the same before writing and after reading back
    (keys sorted, after one round trip so that e.g. integer keys are already strings)."""
    return json.dumps(json.loads(json.dumps(obj, allow_nan=False)), sort_keys=True, separators=(",", ":"), allow_nan=False)


class Cache:
    """A folder of entries `<kind>/<key[:2]>/<key>.<ext>`; `Cache(None)` is a cache that never hits.

    A model entry is `<key>.onnx` plus `<key>.onnx.sha256`, written after the model: without it the
    entry is incomplete (a miss). A JSON entry holds `{"sha256": ..., "value": ...}`. Entries that
    fail their check are removed; `problems` lists them for the run's warnings.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.problems: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _path(self, kind: str, key: str, ext: str) -> Path:
        assert self.root is not None
        return self.root / kind / key[:2] / f"{key}.{ext}"

    def _discard(self, kind: str, key: str, ext: str, why: str) -> None:
        path = self._path(kind, key, ext)
        message = f"cache entry {path} is corrupt ({why}): removed and recomputed"
        self.problems.append(message)
        warnings.warn(message, CacheWarning, stacklevel=3)
        for p in (path, path.with_name(path.name + ".sha256")):
            try:
                p.unlink()
            except OSError:
                pass

    def get_file(self, kind: str, key: str, dst: Path) -> bool:
        """Copy the cached model to `dst` if the entry exists and its content matches its sha256."""
        if not self.enabled:
            return False
        src = self._path(kind, key, "onnx")
        try:
            expected = self._path(kind, key, "onnx.sha256").read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            expected = None
        if expected is None or not src.is_file():
            return False  # absent, or interrupted before the digest was written: a miss
        if not SHA256_RE.fullmatch(expected):
            self._discard(kind, key, "onnx", "unreadable sha256")
            return False
        digest = hashlib.sha256()
        try:
            with atomic_path(dst) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
                while block := fin.read(COPY_CHUNK):
                    digest.update(block)
                    fout.write(block)
                if digest.hexdigest() != expected:
                    raise _Corrupt  # atomic_path then leaves nothing at dst
        except _Corrupt:
            self._discard(kind, key, "onnx", f"content sha256 {digest.hexdigest()[:12]}, stored {expected[:12]}")
            return False
        except OSError:
            return False
        return True

    def put_file(self, kind: str, key: str, src: Path) -> None:
        if not self.enabled:
            return
        path = self._path(kind, key, "onnx")
        digest = hashlib.sha256()
        with atomic_path(path) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
            while block := fin.read(COPY_CHUNK):
                digest.update(block)
                fout.write(block)
        write_text(self._path(kind, key, "onnx.sha256"), digest.hexdigest() + "\n")  # last: completes the entry

    def get_json(self, kind: str, key: str) -> Any | None:
        if not self.enabled:
            return None
        path = self._path(kind, key, "json")
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            self._discard(kind, key, "json", f"unreadable: {e.__class__.__name__}")
            return None
        try:
            entry = json.loads(text)
            value, expected = entry["value"], entry["sha256"]
            ok = sha256_bytes(_canonical(value).encode()) == expected
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            self._discard(kind, key, "json", "content does not match its sha256")
            return None
        return value

    def put_json(self, kind: str, key: str, obj: Any) -> None:
        if self.enabled:
            text = _canonical(obj)
            write_text(self._path(kind, key, "json"), json.dumps({"sha256": sha256_bytes(text.encode()), "value": json.loads(text)}) + "\n")
