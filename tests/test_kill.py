"""Interruption test (issue 14): real `edgefair run`s of a tiny recipe (export of a torch.export
program, a quantize_static step, evaluation, latency, publishing) killed with SIGKILL at 20 seeded
random points. After every kill the output folder is absent or complete (every file of a finished
run, report.json parseable, the manifest's hashes matching), and the next run resumes from the cache
and gives the same statistics as an uninterrupted run.

16 kill points are times drawn over the duration of an uninterrupted run, measured first: 12
uniformly over the whole run, and one uniformly within each of the short phases (the step,
evaluation, statistics, and latency with publishing), which uniform points would seldom hit. Each is
located as a delay after the progress line of the phase it falls in, so that it lands in that phase
however busy the machine is. 4 are aimed at publishing through the test hook
EDGEFAIR_TEST_PUBLISH_PAUSE, which pauses between its phases.

To keep the file short, runs are forked from one process that has imported edgefair, torch and
onnxruntime once and warmed up torch's export on another tiny module (each run is still a separate
process running the CLI on the real recipe, killed with SIGKILL), and a kill that falls after the
export starts from a cache holding only the export, so that it does not redo it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import BASE_RECIPE, REPO, write_recipe

SEED = 14
TIME_KILLS, PUBLISH_KILLS = 16, 4
RECIPE = BASE_RECIPE.replace("runs = 20", "runs = 10\nsessions = 1").replace("warmup = 2", "warmup = 1").replace(
    "bootstrap = 200", "bootstrap = 100") + '\n[[steps]]\nkind = "quantize_static"\n'
# the progress lines that open each phase, in order; "start" is the fork
PHASES = ("start", "export", "step 1", "evaluate", "statistics", "latency")
PUBLISH_PHASES = ("models", "staged", "old-moved", "swapped")  # edgefair.publish._pause's names
FILES = {"00-baseline.onnx", "01-quantize_static.onnx", "selected.onnx", "report.json", "report.md", "report.html",
         "report.txt", "junit.xml", "model-card.md", "manifest.json"}

ZYGOTE = r"""
import importlib, json, os, pkgutil, sys
import edgefair, edgefair.cache, edgefair.cli
for module in pkgutil.walk_packages(edgefair.__path__, "edgefair."):  # one version of the code for every run
    try:
        importlib.import_module(module.name)
    except Exception:  # an optional extra; a run that needs it fails and says so
        pass
edgefair.cache.code_fingerprint()  # and one cache key for it, whatever is edited meanwhile
import onnx, onnxruntime, onnxruntime.quantization, onnxscript, scipy.stats, torch, torch.export, torch.onnx  # noqa: F401
import tempfile
import numpy as np
from pathlib import Path
torch.set_num_threads(1)  # warm torch's lazy set-up (export, .pt2 loading) on one thread: no pool for a fork to inherit
with tempfile.TemporaryDirectory() as tmp:
    warm = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU()).eval()
    torch.export.save(torch.export.export(warm, (torch.zeros(2, 6),)), tmp + "/warm.pt2")
    torch.export.load(tmp + "/warm.pt2")
    edgefair.export.export_onnx(warm, {"x": np.zeros((2, 6), np.float32)}, ["x"], Path(tmp) / "warm.onnx")
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    if job["op"] == "run":
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                os.environ.pop("EDGEFAIR_TEST_PUBLISH_PAUSE", None)
                os.environ.update(job["env"])
                os.dup2(os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                edgefair.cli.main(args=job["argv"], prog_name="edgefair")
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
    else:
        pid, flags = job["pid"], (os.WNOHANG if job["op"] == "poll" else 0)
        done, status = os.waitpid(pid, flags)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status) if done else None}), flush=True)
"""


class Runner:
    """Forks `edgefair` runs from a process that imported everything once."""

    def __init__(self, tmp: Path) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=tmp, env=env)
        assert self.proc.stdout.readline().strip() == "ready"
        self.tmp, self.count = tmp, 0

    def _ask(self, job: dict) -> dict:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, argv: list[str], env: dict[str, str]) -> tuple[int, Path]:
        self.count += 1
        err = self.tmp / f"stderr-{self.count}.txt"
        return self._ask({"op": "run", "argv": argv, "env": env, "stderr": str(err)})["pid"], err

    def poll(self, pid: int) -> int | None:
        return self._ask({"op": "poll", "pid": pid})["code"]

    def wait(self, pid: int) -> int:
        return self._ask({"op": "wait", "pid": pid})["code"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def lines(err: Path) -> list[str]:
    try:
        return err.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def has(err: Path, phase: str) -> bool:
    """Has the run printed the progress line opening `phase` (or the publish hook's line)?"""
    if phase == "start":
        return True
    return any(line.startswith(("·", "edgefair-test:")) and phase in line for line in lines(err))


def wait_for(runner: Runner, pid: int, err: Path, phase: str, timeout: float = 60.0) -> bool:
    """True once `phase`'s progress line is out; False when the run ended first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if has(err, phase):
            return True
        if runner.poll(pid) is not None:
            return has(err, phase)
        time.sleep(0.003)
    raise AssertionError(f"no {phase!r} line within {timeout} s:\n" + "\n".join(lines(err)))


def timeline(runner: Runner, pid: int, err: Path) -> tuple[dict[str, float], float, int]:
    """Seconds from the fork to each phase's progress line, the run's duration and its exit code."""
    t0, seen = time.monotonic(), {"start": 0.0}
    while True:
        code = runner.poll(pid)
        now = time.monotonic() - t0
        for phase in PHASES:
            if phase not in seen and has(err, phase):
                seen[phase] = now
        if code is not None:
            return seen, now, code
        time.sleep(0.003)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def statistics(report: dict) -> dict:
    """report.json without what changes from run to run (timings, latency, cache use, creation time)."""
    keep = ("index", "name", "kind", "input", "model", "sha256", "size_bytes", "details", "overall", "groups",
            "disparity", "gates", "passed", "eval_batch_size")
    return {"steps": [{k: s.get(k) for k in keep} for s in report["steps"]],
            **{k: report.get(k) for k in ("verdict", "selected", "gate_summary", "data", "source", "recipe", "gates_applied")}}


def check_folder(out: Path, expected: dict) -> str:
    """'absent' or 'complete' (with the uninterrupted run's statistics); anything else fails."""
    if not out.exists():
        return "absent"
    assert {p.name for p in out.iterdir()} == FILES, sorted(p.name for p in out.iterdir())
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == FILES - {"manifest.json"}
    for name, entry in manifest["files"].items():
        assert sha(out / name) == entry["sha256"], name
    report = json.loads((out / "report.json").read_text())
    assert statistics(report) == expected
    return "complete"


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.fixture
def runner(tmp_path):
    r = Runner(tmp_path)
    yield r
    r.close()


def test_twenty_sigkills_leave_a_complete_or_absent_folder_and_resume_to_the_same_statistics(tiny, tmp_path, runner):
    for name in ("tiny.pt2", "eval.npz", "calib.npz"):
        (tmp_path / name).symlink_to(tiny / name)
    recipe = write_recipe(tmp_path / "r.toml", RECIPE)
    out = tmp_path / "out"

    def launch(cache: Path, target: Path = out, pause: float | None = None) -> tuple[int, Path]:
        env = {"EDGEFAIR_CACHE_DIR": str(cache)}
        if pause is not None:
            env["EDGEFAIR_TEST_PUBLISH_PAUSE"] = str(pause)
        return runner.start(["run", str(recipe), "--out", str(target)], env)

    def kill(pid: int) -> int:
        os.kill(pid, signal.SIGKILL)  # a zombie (run already over) takes it without error
        return runner.wait(pid)

    # an uninterrupted run from an empty cache: the statistics to match, and the phases' times
    full_cache = tmp_path / "cache-full"
    pid, err = launch(full_cache, tmp_path / "reference")
    seen, duration, code = timeline(runner, pid, err)
    assert code in (0, 1), "\n".join(lines(err))
    assert list(seen) == list(PHASES), seen
    expected = statistics(json.loads((tmp_path / "reference" / "report.json").read_text()))
    print(f"uninterrupted run: {duration:.2f} s; phases at " + ", ".join(f"{p} {t:.2f}" for p, t in seen.items()))
    # a cache holding only the export: a run killed at the start of the step leaves exactly that
    export_cache = tmp_path / "cache-export"
    pid, err = launch(export_cache, tmp_path / "primer")
    assert wait_for(runner, pid, err, "step 1")
    assert kill(pid) == -signal.SIGKILL and not (tmp_path / "primer").exists()

    rng = np.random.default_rng(SEED)
    # most points uniform over the run; one in each short phase (the step, evaluation, statistics, latency
    # and publishing), which uniform points would seldom hit
    ends = [seen[p] for p in PHASES[1:]] + [duration]
    short = [(seen[p], end) for p, end in zip(PHASES, ends) if p in PHASES[2:]]
    times = list(rng.uniform(0, duration, TIME_KILLS - len(short))) + [rng.uniform(a, b) for a, b in short]
    points = [("time", float(t)) for t in times]
    points += [("publish", phase) for phase in rng.permutation(PUBLISH_PHASES)]
    outcomes = []
    started = time.monotonic()
    for k, (how, where) in enumerate(points):
        cache = tmp_path / f"cache-{k}"
        if how == "time":
            phase = max((p for p in PHASES if seen[p] <= where), key=lambda p: seen[p])
            delay = where - seen[phase]
            if PHASES.index(phase) > PHASES.index("export"):
                shutil.copytree(export_cache, cache)
            pid, err = launch(cache)
            if wait_for(runner, pid, err, phase):
                time.sleep(delay)
            label = f"{where:.2f} s ({phase} + {delay:.2f} s)"
        else:
            shutil.copytree(full_cache, cache)  # straight to latency and publishing
            pid, err = launch(cache, pause=0.3)
            assert wait_for(runner, pid, err, f"edgefair-test: publish {where}"), "\n".join(lines(err))
            time.sleep(float(rng.uniform(0, 0.25)))
            label = f"publish {where}"
        exported = has(err, "step 1")
        code = kill(pid)
        state = check_folder(out, expected)
        outcomes.append((label, code, state))
        print(f"kill {k:2d} at {label}: exit {code}, folder {state} ({time.monotonic() - started:.1f} s)")
        if how == "publish" and where == "old-moved":
            assert state == "absent"  # between the two renames: the old folder is away, the new one not in
        if how == "publish" and where == "swapped":
            assert state == "complete"
        # the next run resumes from the cache and gives the same statistics
        pid, err = launch(cache)
        assert runner.wait(pid) in (0, 1), "\n".join(lines(err))
        assert check_folder(out, expected) == "complete" and leftovers(out) == []
        report = json.loads((out / "report.json").read_text())
        if exported:
            assert report["steps"][0]["cache"]["model"] == "hit", label  # the export was not redone
    killed = [o for o in outcomes if o[1] == -signal.SIGKILL]
    assert len(killed) >= len(points) - 2, outcomes  # nearly every kill hit a live run
    assert {o[2] for o in outcomes} == {"absent", "complete"}, outcomes
