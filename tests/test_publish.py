"""Publishing the output folder as a whole (README, "Output folder"): a reader never sees a mix of
two runs, an unwritable or full target is exit 2 naming it with nothing half-written, files edgefair
did not write survive, and report.json and the manifest carry no absolute path of the build machine.
Everything runs the real CLI or real `publish` on the output of a real run of the tiny model."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import BASE_RECIPE, run_cli, write_recipe
from edgefair.publish import DISK_FULL_ENV, publish

RECIPE = BASE_RECIPE + '\n[[steps]]\nkind = "quantize_dynamic"\n'
FILES = {"00-baseline.onnx", "01-quantize_dynamic.onnx", "selected.onnx", "report.json", "report.md", "report.html",
         "report.txt", "junit.xml", "model-card.md", "manifest.json"}


@pytest.fixture(scope="module")
def published(tiny, tmp_path_factory):
    """(recipe folder, output folder, report) of one real run."""
    root = tmp_path_factory.mktemp("pub")
    for f in tiny.iterdir():
        if f.is_file():
            (root / f.name).symlink_to(f)
    recipe = write_recipe(root / "r.toml", RECIPE)
    out = root / "out"
    cache = tmp_path_factory.getbasetemp() / "edgefair-cache"
    result = run_cli(["run", str(recipe), "--out", str(out), "-q", "--cache-dir", str(cache)])
    assert result.exit_code in (0, 1), result.output
    return root, out, json.loads((out / "report.json").read_text())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def complete(out: Path) -> dict:
    """Assert `out` holds exactly a finished run's files, with the manifest's hashes; return the report."""
    assert {p.name for p in out.iterdir()} == FILES
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == FILES - {"manifest.json"}
    for name, entry in manifest["files"].items():
        assert sha((out / name).read_bytes()) == entry["sha256"], name
    return json.loads((out / "report.json").read_text())


def siblings(out: Path) -> list[str]:
    """Staging or old folders left beside `out`."""
    if not out.parent.exists():
        return []
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_the_folder_is_complete_and_manifest_covers_every_file(published):
    _, out, report = published
    assert complete(out)["verdict"] == report["verdict"]
    assert siblings(out) == []  # no staging or old folder left beside it


def test_a_reader_never_sees_a_mix_of_two_runs(published, tmp_path):
    """A reader that opens the folder and reads every file through that handle, while two different
    runs' outputs are published over each other again and again, always finds one run's files:
    the manifest's hashes match, and report.json is the one the manifest was written with."""
    _, src, report = published
    models = {s["index"]: src / s["model"] for s in report["steps"]}
    runs = [dict(report, created_at=f"run-{i}") for i in range(2)]
    out = tmp_path / "out"
    publish(out, runs[0], models)
    stop, snapshots, mixes = threading.Event(), [], []

    def read(fd: int, name: str) -> bytes:
        f = os.open(name, os.O_RDONLY, dir_fd=fd)
        try:
            return b"".join(iter(lambda: os.read(f, 1 << 20), b""))
        finally:
            os.close(f)

    def reader() -> None:
        while not stop.is_set():
            try:
                fd = os.open(out, os.O_RDONLY)
            except FileNotFoundError:  # between the two renames
                continue
            try:
                manifest = json.loads(read(fd, "manifest.json"))
                got = {name: sha(read(fd, name)) for name in manifest["files"]}
                created = json.loads(read(fd, "report.json"))["created_at"]
            except FileNotFoundError:  # this folder was swapped out and is being removed
                continue
            finally:
                os.close(fd)
            snapshots.append(created)
            bad = [n for n, h in got.items() if h != manifest["files"][n]["sha256"]]
            if bad or created != manifest["created_at"]:
                mixes.append((created, manifest["created_at"], bad))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(1, 9):
            publish(out, runs[i % 2], models)
    finally:
        stop.set()
        thread.join()
    assert mixes == []
    assert len(set(snapshots)) == 2, snapshots  # the reader saw both runs
    assert complete(out)["created_at"] == "run-0" and siblings(out) == []


def test_unwritable_out_is_exit_2_before_the_run(recipe_dir):
    recipe = write_recipe(recipe_dir / "r.toml", RECIPE)
    result = run_cli(["run", str(recipe), "--out", "/proc/x"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and "/proc/x" in result.output
    assert "· " not in result.output  # no progress line: nothing ran


def test_a_folder_edgefair_did_not_write_is_refused_untouched(recipe_dir, tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("months of work")
    result = run_cli(["run", str(write_recipe(recipe_dir / "r.toml", RECIPE)), "--out", str(target), "-q"])
    assert result.exit_code == 2 and str(target) in result.output and "not an edgefair output folder" in result.output
    assert [p.name for p in target.iterdir()] == ["thesis.tex"]


def test_files_edgefair_did_not_write_survive_a_publish_and_a_rerender(published, tmp_path):
    _, src, report = published
    out = tmp_path / "out"
    shutil.copytree(src, out)
    (out / "notes.txt").write_text("kept")
    (out / "device").mkdir()
    (out / "device" / "latency.json").write_text("{}")
    (out / "07-old-step.onnx").write_bytes(b"not listed in the manifest: not ours")
    publish(out, report, {s["index"]: src / s["model"] for s in report["steps"]})
    assert (out / "notes.txt").read_text() == "kept" and (out / "device" / "latency.json").read_text() == "{}"
    assert (out / "07-old-step.onnx").exists()
    result = run_cli(["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "notes.txt").read_text() == "kept" and (out / "07-old-step.onnx").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "notes.txt" not in manifest["files"]
    for name, entry in manifest["files"].items():
        assert sha((out / name).read_bytes()) == entry["sha256"], name
    assert siblings(out) == []


def test_leftovers_of_a_crashed_publish_are_removed_but_not_a_live_one(published, tmp_path):
    import fcntl

    _, src, report = published
    out = tmp_path / "out"
    crashed_new, crashed_old, live = (tmp_path / f".out.{n}" for n in ("edgefair-new-dead", "edgefair-old-dead", "edgefair-new-live"))
    for d in (crashed_new, crashed_old, live):
        d.mkdir()
        (d / "report.json").write_text("{}")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a publishing process holds on its staging folder
    try:
        publish(out, report, {s["index"]: src / s["model"] for s in report["steps"]})
    finally:
        os.close(fd)
    assert siblings(out) == [live.name]
    complete(out)


def test_full_disk_with_the_write_hook_is_exit_2_and_changes_nothing(published, recipe_dir, tmp_path, monkeypatch):
    """A disk that fills up while the folder is written (the test hook fails the flush with ENOSPC):
    exit 2 naming the output folder; a new target stays absent, an old one keeps its complete run."""
    _, src, _ = published
    recipe = write_recipe(recipe_dir / "r.toml", RECIPE)
    old = tmp_path / "old"
    shutil.copytree(src, old)
    monkeypatch.setenv(DISK_FULL_ENV, "20000")
    for target in (tmp_path / "new" / "deeper", old):
        result = run_cli(["run", str(recipe), "--out", str(target), "-q"])
        assert result.exit_code == 2, result.output
        line = result.output.strip().splitlines()[-1]
        assert line.startswith(f"Error: output folder {target}: ") and os.strerror(errno.ENOSPC) in line, line
        assert siblings(target) == []
    assert not (tmp_path / "new").exists()  # nor the folders made to hold it
    complete(old)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (needs root and mount); skipped where it cannot be mounted."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_full_tmpfs_is_exit_2_and_keeps_the_previous_run(published, recipe_dir, small_disk):
    """A real full disk: the first run fits on the 1 MB tmpfs; filled up, the second run fails to
    publish with exit 2 naming the folder, and the first run's folder is still there, complete."""
    recipe = write_recipe(recipe_dir / "r.toml", RECIPE)
    out = small_disk / "out"
    assert run_cli(["run", str(recipe), "--out", str(out), "-q"]).exit_code in (0, 1)
    first = complete(out)
    used = sum(p.stat().st_size for p in out.iterdir())
    free = shutil.disk_usage(small_disk).free
    with open(small_disk / "filler", "wb") as f:  # leave less room than one more run needs
        f.write(b"\0" * max(free - used // 2, 0))
    result = run_cli(["run", str(recipe), "--out", str(out), "-q"])
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"Error: output folder {out}: ") and os.strerror(errno.ENOSPC) in line, line
    assert complete(out) == first and siblings(out) == []


def strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)


def test_report_and_manifest_carry_no_absolute_local_path(published, tmp_path_factory):
    root, out, report = published
    base = str(tmp_path_factory.getbasetemp().resolve())
    manifest = json.loads((out / "manifest.json").read_text())
    for doc in (report, manifest):
        leaks = [s for s in strings(doc) if s.startswith(base) or s.startswith(str(Path.home()) + os.sep)]
        assert leaks == []
    # the recipe relative to the output folder, the data relative to the recipe (as the recipe names them)
    assert report["recipe"]["path"] == "../r.toml" and (out / report["recipe"]["path"]).resolve() == (root / "r.toml").resolve()
    assert report["data"]["eval"]["path"] == "eval.npz" and report["data"]["calibration"]["path"] == "calib.npz"
    assert manifest["inputs"]["recipe"]["path"] == "../r.toml" and manifest["inputs"]["data.eval"]["path"] == "eval.npz"


def test_report_rerenders_from_inside_the_folder(published, tmp_path, monkeypatch):
    """`edgefair report .` from inside the output folder re-renders in place (the folder cannot be
    swapped under the shell that sits in it): same files, manifest hashes matching."""
    _, src, _ = published
    out = tmp_path / "out"
    shutil.copytree(src, out)
    (out / "report.md").write_text("stale")
    monkeypatch.chdir(out)
    result = run_cli(["report", "."])
    assert result.exit_code == 0, result.output
    assert (out / "report.md").read_text() == (src / "report.md").read_text()
    assert complete(out)["created_at"] == json.loads((src / "report.json").read_text())["created_at"]


def test_a_mount_point_is_refused_as_output_folder(recipe_dir, small_disk):
    """A mount point (a CI volume) cannot be renamed away: exit 2 before the run, naming it."""
    result = run_cli(["run", str(write_recipe(recipe_dir / "r.toml", RECIPE)), "--out", str(small_disk)])
    assert result.exit_code == 2 and f"output folder {small_disk}: is a mount point" in result.output
    assert "· " not in result.output and list(small_disk.iterdir()) == []
