"""Content-addressed cache of step models and evaluations, so re-running an unchanged recipe reuses work.

A key is the sha256 of everything the result depends on (input model hash, step config, data
hashes, versions). Entries are written atomically; a corrupt or missing entry is a miss.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .io import atomic_path, sha256_bytes, write_json


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


class Cache:
    """A folder of entries `<kind>/<key[:2]>/<key>.<ext>`; `Cache(None)` is a cache that never hits."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _path(self, kind: str, key: str, ext: str) -> Path:
        assert self.root is not None
        return self.root / kind / key[:2] / f"{key}.{ext}"

    def get_file(self, kind: str, key: str, dst: Path) -> bool:
        if not self.enabled:
            return False
        src = self._path(kind, key, "onnx")
        if not src.is_file():
            return False
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        return True

    def put_file(self, kind: str, key: str, src: Path) -> None:
        if self.enabled:
            with atomic_path(self._path(kind, key, "onnx")) as tmp:
                shutil.copyfile(src, tmp)

    def get_json(self, kind: str, key: str) -> Any | None:
        if not self.enabled:
            return None
        path = self._path(kind, key, "json")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put_json(self, kind: str, key: str, obj: Any) -> None:
        if self.enabled:
            write_json(self._path(kind, key, "json"), obj)
