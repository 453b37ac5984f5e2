"""Publish the output folder as a whole, so that a reader never sees a mix of two runs.

Every output of a run (step models, selected.onnx, report.json, the rendered reports, junit.xml,
the model card, manifest.json, tuned.toml) is written into a staging folder beside the target, on
the same file system, and flushed to disk; then the target is renamed away, the staging folder
renamed in its place, and the old folder removed. At any moment the target is the previous run's
complete folder, absent (between the two renames), or this run's complete folder. A crash leaves at
most a hidden `.NAME.edgefair-new-*` or `.NAME.edgefair-old-*` folder beside the target, which the
next publish to it removes.

Files in the target that no edgefair run wrote are carried over into the new folder (hard links);
a non-empty folder that is not an edgefair output folder is refused rather than replaced.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

try:  # POSIX; elsewhere concurrent publishes to one folder are not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from .errors import EdgefairError
from .io import sha256_file, write_json, write_text

STEP_FILE = re.compile(r"^\d{2}-.+\.onnx$")
MANIFEST = "manifest.json"
REPORT = "report.json"
RENDERED = ("report.md", "report.html", "junit.xml", "model-card.md", "report.txt")
# every name an edgefair run writes besides its step models: replaced by each publish, never carried over
OUTPUTS = frozenset({MANIFEST, REPORT, "selected.onnx", "tuned.toml", *RENDERED})
NEW, OLD = "edgefair-new", "edgefair-old"
# errors of the place written to (full disk, read-only or forbidden folder), not of edgefair: exit 2
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO})

# Test-only hooks, read from the environment so that a test can drive a real `edgefair` process:
# EDGEFAIR_TEST_PUBLISH_PAUSE=S prints `edgefair-test: publish <phase>` to stderr and sleeps S
# seconds at each phase boundary (so a kill can land there); EDGEFAIR_TEST_DISK_FULL_AFTER=N makes
# the flush fail with ENOSPC once more than N bytes were written, like a full disk.
PAUSE_ENV, DISK_FULL_ENV = "EDGEFAIR_TEST_PUBLISH_PAUSE", "EDGEFAIR_TEST_DISK_FULL_AFTER"


def check_target(out_dir: str | os.PathLike) -> Path:
    """The absolute folder `publish` will replace; raises EdgefairError naming it when it cannot be
    written. Called before a run starts, so that a bad `--out` fails at once, not after the run."""
    target = Path(os.path.abspath(out_dir))
    if target.is_symlink():  # replace the folder it points to, keep the link
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise EdgefairError(f"output folder {target}: exists and is not a folder")
    if target.is_dir():
        if os.path.ismount(target):
            raise EdgefairError(f"output folder {target}: is a mount point, which cannot be replaced as a whole; write into a folder inside it")
        if not _is_output_folder(target):
            raise EdgefairError(f"output folder {target}: not empty and not an edgefair output folder (no {REPORT}); "
                                "refusing to replace it: choose a new or empty folder")
    cwd = Path(os.path.abspath(os.getcwd()))
    if cwd == target or target in cwd.parents:
        raise EdgefairError(f"output folder {target}: is (or holds) the current folder, which publishing would remove; run from elsewhere")
    existing = target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise EdgefairError(f"output folder {target}: {existing} is not a folder")
    try:  # the real test: can a staging folder be made beside the target?
        os.rmdir(_mkdtemp(existing, ".edgefair-probe-"))
    except OSError as e:
        raise EdgefairError(f"output folder {target}: cannot write to {existing} ({e.strerror or e})") from e
    return target


def publish(out_dir: str | os.PathLike, report: dict[str, Any], model_files: dict[int, Path], *,
            extra_files: dict[str, str] | None = None) -> None:
    """Write a run's output folder as a whole: its step models (`model_files`, by step index, copied
    under each step's `model` name), selected.onnx, `extra_files` (name -> text, e.g. tuned.toml),
    report.json, the rendered reports and manifest.json. An absolute `report["recipe"]["path"]`
    becomes relative to the output folder (in `report` too): nothing written names the build
    machine's folders."""
    target = check_target(out_dir)
    recipe = report.get("recipe") or {}
    if isinstance(recipe.get("path"), str) and os.path.isabs(recipe["path"]):
        recipe["path"] = _relative_to(recipe["path"], target)
    with _staging(target) as stage:
        _carry_over(target, stage, ours=_previous_outputs(target))
        for step in report["steps"]:
            shutil.copyfile(model_files[step["index"]], stage / step["model"])
        if report.get("selected"):
            shutil.copyfile(stage / report["selected"]["model"], stage / "selected.onnx")
        _pause("models")
        for name, text in (extra_files or {}).items():
            write_text(stage / name, text)
        write_json(stage / REPORT, report)
        _render_into(stage, report)
        write_json(stage / MANIFEST, manifest(stage, report))
        _swap(stage, target)


def render_all(out_dir: str | os.PathLike, report: dict[str, Any]) -> None:
    """(Re-)render the human reports of an output folder from a report dict (`edgefair report`):
    published as a whole like a run's folder, everything else in it kept. From inside the folder
    (`edgefair report .`), which cannot be swapped under the shell sitting in it, each report and
    then the manifest is replaced on its own, atomically: report.json and the models stay as the
    run wrote them."""
    here = Path(os.path.abspath(os.getcwd()))
    inside = Path(os.path.abspath(out_dir))
    if here == inside or inside in here.parents:
        _render_into(inside, report)
        write_json(inside / MANIFEST, manifest(inside, report))
        return
    target = check_target(out_dir)
    with _staging(target) as stage:
        _carry_over(target, stage, ours={*RENDERED, MANIFEST})
        _render_into(stage, report)
        write_json(stage / MANIFEST, manifest(stage, report))
        _swap(stage, target)


def _relative_to(path: str, folder: Path) -> str:
    """`path` relative to `folder`, '/'-separated; its file name when there is no relative path (another drive)."""
    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:
        return Path(path).name


def _render_into(folder: Path, report: dict[str, Any]) -> None:
    from . import render
    from .report import terminal_table

    render.render_all(folder, report)
    write_text(folder / "report.txt", terminal_table(report, full=True) + "\n")


def manifest(out_dir: Path, report: dict[str, Any]) -> dict[str, Any]:
    """sha256 of every file the run wrote (models, report.json, the rendered reports) and of every
    input it used, and the versions that produced them."""
    models = {s["model"] for s in report["steps"]} | ({"selected.onnx"} if report.get("selected") else set())
    files = [n for n in sorted(models) + sorted((REPORT, "tuned.toml", *RENDERED)) if (out_dir / n).is_file()]
    env = report.get("environment") or {}
    recipe = report.get("recipe") or {}
    return {
        "tool": report.get("tool"),
        "created_at": report.get("created_at"),
        "files": {name: {"sha256": sha256_file(out_dir / name), "size_bytes": (out_dir / name).stat().st_size} for name in files},
        "inputs": {
            "recipe": {"path": recipe.get("path"), "sha256": recipe.get("sha256")},
            "model_source": report.get("source"),
            **{f"data.{k}": {"path": v.get("path"), "sha256": v.get("sha256")} for k, v in (report.get("data") or {}).items()},
        },
        "versions": {k: env.get(k) for k in ("python", "numpy", "torch", "onnx", "onnxruntime", "edgefair")},
        "verdict": report.get("verdict"),
        "selected": report.get("selected"),
        "previous": report.get("previous"),  # the last release compared with (edgefair run --previous), or None
    }


# ---- the folder swap -------------------------------------------------------------------------------

def _is_output_folder(folder: Path) -> bool:
    """Empty, or written by edgefair (a report.json or manifest.json at its top)."""
    try:
        return not any(folder.iterdir()) or (folder / REPORT).is_file() or (folder / MANIFEST).is_file()
    except OSError as e:
        raise EdgefairError(f"output folder {folder}: cannot read it ({e.strerror or e})") from e


def _previous_outputs(target: Path) -> set[str]:
    """What an earlier run wrote in `target`: the fixed names and the step models its manifest lists."""
    try:
        files = json.loads((target / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = {}
    steps = {n for n in files if isinstance(n, str) and STEP_FILE.match(n) and "/" not in n} if isinstance(files, dict) else set()
    return set(OUTPUTS) | steps


def _carry_over(target: Path, stage: Path, *, ours: set[str]) -> None:
    """Hard-link (or copy) every entry of `target` not in `ours` into `stage`."""
    if not target.is_dir():
        return
    for entry in target.iterdir():
        if entry.name in ours:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, stage / entry.name, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, stage / entry.name)


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    if os.path.islink(src):
        os.symlink(os.readlink(src), dst)
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _mkdtemp(parent: Path, prefix: str) -> Path:
    """A new folder with a fresh name, mode 0777 less the umask like any folder (mkdtemp's 0700
    would be published as the output folder's mode)."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, f"no free name for a folder in {parent}")


@contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A locked staging folder beside `target`, removed unless it was swapped in. OSErrors of the
    place (full disk, read-only) become one EdgefairError naming the file; the target is untouched."""
    made = [p for p in (target.parent, *target.parent.parents) if not p.exists()]  # removed again on failure
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = _mkdtemp(target.parent, f".{target.name[:100]}.{NEW}-")
    except OSError as e:
        _remove_empty(made)
        err = _place_error(target, e, None)
        if err is e:
            raise
        raise err from e
    fd = _lock_dir(stage, blocking=True)
    try:
        try:
            yield stage
        except OSError as e:
            err = _place_error(target, e, stage)
            if err is e:
                raise
            raise err from e
    finally:
        if fd is not None:
            os.close(fd)
        if stage.exists():  # not swapped in: leave the place as it was
            shutil.rmtree(stage, ignore_errors=True)
            _remove_empty(made)


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this publish created (deepest first), as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _place_error(target: Path, e: OSError, stage: Path | None) -> Exception:
    if e.errno not in ENVIRONMENT_ERRNOS:
        return e  # not the place's fault: a bug, shown with its traceback
    where = str(e.filename or "")
    if stage is not None and where.startswith(str(stage)):
        where = str(target) + where[len(str(stage)):]
    detail = f" writing {where}" if where else ""
    return EdgefairError(f"output folder {target}: {e.strerror or e}{detail}; nothing was published, the folder is as it was")


def _swap(stage: Path, target: Path) -> None:
    """Flush `stage`, then put it in `target`'s place: old folder renamed away, new renamed in, old removed."""
    _flush(stage)
    _pause("staged")
    parent = target.parent
    lock = _lock_dir(parent, blocking=True)  # one swap at a time per parent folder (other edgefair runs)
    try:
        _remove_leftovers(target)
        old = None
        if os.path.lexists(target):
            old = _mkdtemp(parent, f".{target.name[:100]}.{OLD}-")
            os.replace(target, old)  # onto the empty folder just made: a name no one else holds
            _pause("old-moved")
        os.rename(stage, target)
        _fsync_dir(parent)
    finally:
        if lock is not None:
            os.close(lock)
    _pause("swapped")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_leftovers(target: Path) -> None:
    """Staging folders of crashed publishes to `target` (unlocked: their process is gone) and old
    folders a crash left behind."""
    head = f".{target.name[:100]}."
    for entry in target.parent.iterdir():
        if not entry.name.startswith(head) or not entry.is_dir() or entry.is_symlink():
            continue
        kind = entry.name[len(head):].split("-", 2)
        if kind[:2] == OLD.split("-"):
            shutil.rmtree(entry, ignore_errors=True)
        elif kind[:2] == NEW.split("-") and fcntl is not None:
            fd = _lock_dir(entry, blocking=False)
            if fd is not None:  # no live process holds it
                try:
                    shutil.rmtree(entry, ignore_errors=True)
                finally:
                    os.close(fd)


def _lock_dir(path: Path, *, blocking: bool) -> int | None:
    """An exclusive flock on a folder (released when the fd closes or the process dies); None when
    it is held elsewhere (non-blocking) or locks are not available."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        return None
    return fd


def _flush(stage: Path) -> None:
    """fsync every file and folder of `stage`: after the rename, a power loss cannot leave a file of
    the new folder empty."""
    limit = os.environ.get(DISK_FULL_ENV)
    written = 0
    for folder, _, names in os.walk(stage):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            written += os.path.getsize(path)
            if limit is not None and written > int(limit):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _pause(phase: str) -> None:
    seconds = os.environ.get(PAUSE_ENV)
    if seconds:
        print(f"edgefair-test: publish {phase}", file=sys.stderr, flush=True)
        time.sleep(float(seconds))
