"""Content-addressed cache of step models and evaluations, so re-running an unchanged recipe reuses work.

A key is the sha256 of everything the result depends on (input model hash, step config, data
content, versions). Every entry is written atomically (a temporary file renamed into place) and
carries the sha256 of its content, checked on every read: a cached model can become
`selected.onnx`, so a corrupt entry (a flipped bit, a file truncated by a full disk or edited by
hand) is discarded with a CacheWarning and recomputed, never used. A missing or half-written entry
is a plain miss.

The cache is shared by every run on the machine: a lock file (`flock`) lets many runs read at once
but writes, removals and eviction one at a time, so a run never reads an entry half replaced by
another. After each run the least recently used entries are evicted until the cache fits its
bound (EDGEFAIR_CACHE_MAX_BYTES, default 2 GB).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

try:  # POSIX; elsewhere runs sharing a cache are not guarded
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from .errors import EdgefairError
from .io import atomic_path, sha256_bytes, write_text

DEFAULT_MAX_BYTES = 2 * 1000**3  # 2 GB: a few hundred small models, or a dozen transformer steps
LOCK_NAME = ".lock"
UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
         "T": 1000**4, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}
SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


def parse_size(text: str, *, what: str) -> int:
    """'2GB', '500M', '1.5GiB' or a plain number of bytes -> bytes; `what` names the setting in errors."""
    m = SIZE_RE.fullmatch(text)
    if not m or m.group(2).upper() not in UNITS:
        raise EdgefairError(f"{what}: expected a size such as 2GB, 500MB or 1000000 (bytes), got {text!r}")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


AGE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
AGE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw]?)\s*")


def parse_age(text: str) -> float:
    """'30d', '12h', '90m', '2w' or a bare number of seconds -> seconds (>= 0)."""
    m = AGE_RE.fullmatch(text)
    if not m:
        raise EdgefairError(f"--older-than: expected an age such as 30d, 12h or 90m, got {text!r}")
    return float(m.group(1)) * AGE_UNITS[m.group(2) or "s"]


def max_bytes_from_env() -> int:
    """The cache bound: $EDGEFAIR_CACHE_MAX_BYTES (a size: 2GB, 500MB, bytes), default 2 GB."""
    text = os.environ.get("EDGEFAIR_CACHE_MAX_BYTES", "").strip()
    return parse_size(text, what="EDGEFAIR_CACHE_MAX_BYTES") if text else DEFAULT_MAX_BYTES


def default_dir() -> Path:
    env = os.environ.get("EDGEFAIR_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgefair"


# modules that only present results: editing them must not invalidate cached models and statistics
PRESENTATION = ("render/", "cli.py", "publish.py", "report.py", "init.py", "progress.py")


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

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        """Hold the cache's lock file: shared for reads, exclusive for writes, removals and eviction.

        Never nested: flock locks of one process on two open files of the same path can deadlock.
        """
        assert self.root is not None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            f = open(self.root / LOCK_NAME, "a+b")
        except OSError as e:
            raise EdgefairError(f"cache: cannot use {self.root}: {e.strerror or e} "
                                "(set EDGEFAIR_CACHE_DIR or --cache-dir to a writable folder, or pass --no-cache)") from e
        with f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    @staticmethod
    def _touch(path: Path) -> None:
        """Mark an entry as used now: eviction removes the least recently used first."""
        try:
            os.utime(path)
        except OSError:
            pass

    def _path(self, kind: str, key: str, ext: str) -> Path:
        assert self.root is not None
        return self.root / kind / key[:2] / f"{key}.{ext}"

    def _discard(self, kind: str, key: str, ext: str, why: str) -> None:
        path = self._path(kind, key, ext)
        message = f"cache entry {path} is corrupt ({why}): removed and recomputed"
        self.problems.append(message)
        warnings.warn(message, CacheWarning, stacklevel=3)
        with self._locked(exclusive=True):
            for p in (path, path.with_name(path.name + ".sha256")):
                try:
                    p.unlink()
                except OSError:
                    pass

    def get_file(self, kind: str, key: str, dst: Path) -> bool:
        """Copy the cached model to `dst` if the entry exists and its content matches its sha256."""
        if not self.enabled:
            return False
        with self._locked(exclusive=False):
            hit, corrupt = self._read_file(kind, key, dst)
        if corrupt:  # removed outside the shared lock: the exclusive one is never taken inside it
            self._discard(kind, key, "onnx", corrupt)
        return hit

    def _read_file(self, kind: str, key: str, dst: Path) -> tuple[bool, str | None]:
        """Copy a verified entry to `dst`; returns (hit, why the entry is corrupt or None)."""
        src = self._path(kind, key, "onnx")
        try:
            expected = self._path(kind, key, "onnx.sha256").read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            expected = None
        if expected is None or not src.is_file():
            return False, None  # absent, or interrupted before the digest was written: a miss
        if not SHA256_RE.fullmatch(expected):
            return False, "unreadable sha256"
        digest = hashlib.sha256()
        try:
            with atomic_path(dst) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
                while block := fin.read(COPY_CHUNK):
                    digest.update(block)
                    fout.write(block)
                if digest.hexdigest() != expected:
                    raise _Corrupt  # atomic_path then leaves nothing at dst
        except _Corrupt:
            return False, f"content sha256 {digest.hexdigest()[:12]}, stored {expected[:12]}"
        except OSError:
            return False, None
        self._touch(src)
        return True, None

    def put_file(self, kind: str, key: str, src: Path) -> None:
        if not self.enabled:
            return
        path = self._path(kind, key, "onnx")
        digest = hashlib.sha256()
        with self._locked(exclusive=True):
            with atomic_path(path) as tmp, open(src, "rb") as fin, open(tmp, "wb") as fout:
                while block := fin.read(COPY_CHUNK):
                    digest.update(block)
                    fout.write(block)
            write_text(self._path(kind, key, "onnx.sha256"), digest.hexdigest() + "\n")  # last: completes the entry

    def get_json(self, kind: str, key: str) -> Any | None:
        if not self.enabled:
            return None
        path = self._path(kind, key, "json")
        with self._locked(exclusive=False):
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None
            except (OSError, UnicodeDecodeError) as e:
                text, corrupt = None, f"unreadable: {e.__class__.__name__}"
            if text is not None:
                try:
                    entry = json.loads(text)
                    value, expected = entry["value"], entry["sha256"]
                    ok = sha256_bytes(_canonical(value).encode()) == expected
                except (ValueError, KeyError, TypeError):
                    ok = False
                if ok:
                    self._touch(path)
                    return value
                corrupt = "content does not match its sha256"
        self._discard(kind, key, "json", corrupt)
        return None

    def put_json(self, kind: str, key: str, obj: Any) -> None:
        if self.enabled:
            digest = sha256_bytes(_canonical(obj).encode())
            # the value keeps its key order (a report built from a hit reads like one built fresh);
            # the digest is of the sorted text, so order cannot make it disagree
            text = json.dumps({"sha256": digest, "value": obj}, allow_nan=False) + "\n"
            with self._locked(exclusive=True):
                write_text(self._path(kind, key, "json"), text)

    # -- what `edgefair cache info / clear` and the LRU bound work on ------------------------------

    def entries(self) -> list["Entry"]:
        """Every entry (`kind/key`, all its files), oldest use first; `.part` files of killed writers
        count as entries of their own (`partial`)."""
        if self.root is None or not self.root.is_dir():
            return []
        groups: dict[tuple[str, str], list[Path]] = {}
        for kind_dir in sorted(d for d in self.root.iterdir() if d.is_dir()):
            for f in kind_dir.glob("*/*"):
                if not f.is_file():
                    continue
                key = f.name.split(".")[0] if not f.name.startswith(".") else f.name
                groups.setdefault((kind_dir.name, key), []).append(f)
        out = []
        for (kind, key), files in groups.items():
            stats = [f.stat() for f in files if f.exists()]
            if stats:
                out.append(Entry(kind, key, tuple(files), sum(s.st_size for s in stats), max(s.st_mtime for s in stats),
                                 partial=key.startswith(".")))
        return sorted(out, key=lambda e: (e.last_used, e.kind, e.key))

    def remove(self, *, older_than_s: float | None = None, max_bytes: int | None = None) -> tuple[int, int]:
        """Remove entries unused for `older_than_s` seconds (every entry when both are None), then the
        least recently used ones until the rest fit in `max_bytes`. Returns (entries, bytes) removed.

        Runs under the exclusive lock, when no write is in progress: any `.part` file is left over
        from a killed writer and goes too.
        """
        if self.root is None or not self.root.is_dir():
            return 0, 0
        removed = freed = 0
        with self._locked(exclusive=True):
            entries = self.entries()
            total = sum(e.size for e in entries)
            now = time.time()
            for e in entries:  # oldest first
                if older_than_s is None and max_bytes is None:
                    drop = True
                else:
                    drop = e.partial or (older_than_s is not None and now - e.last_used > older_than_s) or (
                        max_bytes is not None and total > max_bytes)
                if not drop:
                    continue
                for f in e.files:
                    try:
                        f.unlink()
                    except FileNotFoundError:
                        pass
                removed, freed, total = removed + 1, freed + e.size, total - e.size
            for d in sorted(self.root.glob("*/*"), reverse=True):  # emptied key-prefix folders
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
        return removed, freed


@dataclass(frozen=True)
class Entry:
    kind: str  # export | step | stats
    key: str
    files: tuple[Path, ...]
    size: int  # bytes, all files
    last_used: float  # newest mtime of its files: reads touch them
    partial: bool = False  # a temporary file a killed writer left behind
