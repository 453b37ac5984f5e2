"""The Ray executor on a real local Ray cluster (started once for this file, this machine only, 2 CPUs):
the same report.json statistics and verdict as the embedded run, for a run, a tune and the bundled
and digits recipes; latency on a named node; a worker killed mid-task is retried and the run's
statistics do not change; Ctrl-C cancels the tasks; an unreachable cluster or an unknown node is
exit 2 with one line. Skipped without Ray, except in CI (CI installs it)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import copy

import pytest

from conftest import BASE_RECIPE, REPO, run_cli, write_recipe
from test_executor import NO_LATENCY, SMALLEST, STEPS, TUNE_PICK, assert_same, tune_recipe_subset

if os.environ.get("CI"):
    import ray  # noqa: F401 - CI installs the ray extra: a missing Ray is a failure there
else:
    pytest.importorskip("ray")

from edgefair.executor import TEST_HOOK_ENV, ExecutorError, RayExecutor  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for this file; its workers see the test hook's folder."""
    hook = Path(tempfile.mkdtemp(prefix="ef-hook-"))
    temp = tempfile.mkdtemp(prefix="ef-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TEST_HOOK_ENV, str(hook))  # before the cluster starts: its workers inherit it
        env, sigterm = dict(os.environ), signal.getsignal(signal.SIGTERM)
        executor = RayExecutor(num_cpus=2, temp_dir=temp)
        try:
            yield executor, hook
        finally:
            executor.close()
            shutil.rmtree(temp, ignore_errors=True)
            shutil.rmtree(hook, ignore_errors=True)
        # Ray's import and ray.init set environment variables (PYTHONBREAKPOINT, RAY_*) and a SIGTERM
        # handler in this process: closing the executor puts them back
        assert dict(os.environ) == env and signal.getsignal(signal.SIGTERM) == sigterm


@pytest.fixture(scope="module")
def assets(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-assets")
    for f in tiny.iterdir():
        if f.is_file():
            (root / f.name).symlink_to(f)
    write_recipe(root / "r.toml", BASE_RECIPE + STEPS + SMALLEST)
    write_recipe(root / "t.toml", NO_LATENCY + SMALLEST)
    return root


@pytest.fixture(scope="module")
def embedded(assets, tmp_path_factory):
    from edgefair.pipeline import run
    from edgefair.recipe import load_recipe

    return run(load_recipe(assets / "r.toml"), tmp_path_factory.mktemp("embedded") / "out")


def test_ray_run_gives_the_embedded_statistics_and_verdict(cluster, assets, embedded, tmp_path):
    executor, _ = cluster
    out = tmp_path / "ray"
    # no cache: other tests of the session may have cached these statistics, and then no task would run
    result = run_cli(["run", str(assets / "r.toml"), "--out", str(out), "--executor", "ray", "--no-cache"])
    assert result.exit_code in (0, 1), result.output
    assert "· evaluate: 3 of 3 inference tasks on ray done" in result.output  # progress across tasks
    report = json.loads((out / "report.json").read_text())
    assert_same(report, json.loads(json.dumps(embedded)))
    assert report["executor"]["kind"] == "ray" and report["executor"]["cpus"] == 2
    assert [n["NodeManagerHostname"] for n in executor.ray.nodes()] == [socket.gethostname()]  # one node: this machine
    # latency never comes from a cluster worker: the driver measured it, and the report says so
    assert "driver" in report["executor"]["latency"] and all(s["latency"]["source"] == "local" for s in report["steps"])


def test_ray_tune_gives_the_embedded_report(cluster, assets, tmp_path):
    from edgefair.tune import search

    executor, _ = cluster
    recipe = tune_recipe_subset(assets / "t.toml")
    expected = search(recipe, tmp_path / "embedded")
    lines: list[str] = []
    executor.shard_rows = 300  # 3 shards per model: the driver merges them in row order
    try:
        got = search(recipe, tmp_path / "ray", executor=executor, progress=lines.append)
    finally:
        executor.shard_rows = 200_000
    assert "candidates on ray: 3 of 3 tasks done, 0 running" in lines
    assert [c["name"] for c in got["skipped"]] == ["static-int8-keep-float"]  # skipped with the same reason
    assert_same(got, expected)


def _assert_exits(pid: int, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail(f"{what} {pid} still runs after Ctrl-C")


def _pause_one_task(hook: Path, seconds: float, then) -> threading.Thread:
    """The next task attempt on the cluster sleeps `seconds`; `then(pid)` runs once it does."""
    for f in hook.iterdir():
        f.unlink()
    (hook / "pause").write_text(str(seconds))

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            pid_file = hook / "paused.pid"
            if pid_file.is_file() and pid_file.read_text():
                then(int(pid_file.read_text()))
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_worker_killed_mid_task_is_retried_and_the_statistics_do_not_change(cluster, assets, embedded, tmp_path):
    from edgefair.pipeline import run
    from edgefair.recipe import load_recipe

    executor, hook = cluster
    killed: list[int] = []

    def kill(pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    watcher = _pause_one_task(hook, 60, kill)
    t0 = time.monotonic()
    report = run(load_recipe(assets / "r.toml"), tmp_path / "out", executor=executor)
    watcher.join(5)
    assert killed, "no task paused: the hook did not run on a worker"
    assert time.monotonic() - t0 < 60  # the killed task was run again, not waited for
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    assert_same(report, json.loads(json.dumps(embedded)))


def test_ctrl_c_cancels_the_running_tasks(cluster, assets, tmp_path):
    from edgefair.pipeline import run
    from edgefair.recipe import load_recipe

    executor, hook = cluster
    paused: list[int] = []

    def interrupt(pid: int) -> None:
        paused.append(pid)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in this (the driver's) process

    watcher = _pause_one_task(hook, 120, interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(load_recipe(assets / "r.toml"), tmp_path / "out", executor=executor)
    watcher.join(5)
    assert paused and not (tmp_path / "out").exists()
    _assert_exits(paused[0], "the paused task's worker")  # a cancelled task's worker is stopped (force), not left sleeping


def test_ctrl_c_during_a_tune_cancels_its_candidate_tasks_and_reports_what_was_built(cluster, assets, tmp_path):
    from edgefair.tune import search

    executor, hook = cluster
    paused: list[int] = []

    def interrupt(pid: int) -> None:
        paused.append(pid)
        os.kill(os.getpid(), signal.SIGINT)

    watcher = _pause_one_task(hook, 120, interrupt)
    report = search(tune_recipe_subset(assets / "t.toml"), tmp_path / "out", executor=executor)
    watcher.join(5)
    assert paused and report["search"]["interrupted"] is True
    built = {s["name"] for s in report["steps"][1:]}
    assert len(built) < 4  # the paused candidate never finished
    assert {c["name"] for c in report["not_tried"]} | built | {c["name"] for c in report["skipped"]} == set(TUNE_PICK)
    assert all(c["reason"] == "interrupted (Ctrl-C)" for c in report["not_tried"])
    _assert_exits(paused[0], "the paused candidate's worker")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_cluster_is_exit_2_with_one_line_before_any_work(assets, tmp_path):
    port = _closed_port()
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        with pytest.raises(ExecutorError, match=f"executor ray: cannot reach the Ray cluster at {address}"):
            RayExecutor(address)
    # a fresh process, as a release pipeline runs it: the recipe's [run] table names the cluster
    recipe = write_recipe(tmp_path / "r.toml", (assets / "r.toml").read_text()
                          + f'\n[run]\nexecutor = "ray"\nray_address = "127.0.0.1:{port}"\n')
    for f in ("tiny.pt2", "eval.npz", "calib.npz"):
        (tmp_path / f).symlink_to(assets / f)
    done = subprocess.run([sys.executable, "-c", "from edgefair.cli import main; main()", "run", str(recipe), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == f"Error: executor ray: cannot reach the Ray cluster at 127.0.0.1:{port} (Connection refused)"
    assert not (tmp_path / "o").exists()


def _same_verdict_on_the_same_latency(got: dict, expected: dict, recipe_path: Path) -> None:
    """Everything but timings equal: statistics as they are, and the gates, verdict and selection
    decided again on `got` with `expected`'s latency (a latency gate and `select.by = "fastest"`
    read timings, which differ from run to run)."""
    from edgefair.gates import apply_gates
    from edgefair.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    regated = copy.deepcopy(got)
    for step, ref in zip(regated["steps"], expected["steps"]):
        step["latency"] = ref["latency"]
    apply_gates(regated, recipe.gates, confidence=recipe.evaluate.confidence, min_group_size=recipe.data.min_group_size,
                positive_label=recipe.data.positive_label, output=recipe.model.output, select=recipe.select)
    assert_same(regated, expected)
    assert regated["verdict"] == expected["verdict"] and regated["selected"] == expected["selected"]
    # and without the substitution, every statistic that does not read a timing is already equal
    for step, ref in zip(got["steps"], expected["steps"]):
        for key in ("overall", "groups", "disparity", "sha256", "size_bytes", "eval_batch_size"):
            assert step[key] == ref[key], f"{step['name']}: {key}"


def test_the_bundled_recipe_on_ray_with_latency_on_a_named_node(cluster, bundled_out, tmp_path):
    """The bundled recipe, as `edgefair run` runs it, on Ray with latency timed on the node named by
    its host name (this cluster's one node): the embedded run's statistics and verdict, and every
    step's latency says where it came from."""
    executor, _ = cluster
    (node,) = executor.ray.nodes()
    host = socket.gethostname()
    out = tmp_path / "ray"
    result = run_cli(["run", "--out", str(out), "--executor", "ray", "--latency-node", host, "--no-cache"])
    assert result.exit_code == 0, result.output
    assert f"· latency: interleaved over all models on node {host}" in result.output
    report = json.loads((out / "report.json").read_text())
    expected = json.loads((bundled_out / "report.json").read_text())
    _same_verdict_on_the_same_latency(report, expected, REPO / "calibration_data" / "adult_mlp.toml")
    for step in report["steps"]:
        assert step["latency"]["source"] == "node", step["name"]
        assert step["latency"]["node"] == {"name": host, "address": node["NodeManagerAddress"], "hostname": host, "cpus": 2}
        settings = ("batch_size", "threads", "inter_op_threads", "optimization", "sessions", "warmup")
        assert step["latency"]["p50_ms"] > 0
        assert {k: step["latency"][k] for k in settings} == {k: expected["steps"][0]["latency"][k] for k in settings}
    assert f"cluster node {node['NodeManagerAddress']} ({host}" in report["executor"]["latency"]
    assert "all its 2 CPUs" in report["executor"]["latency"]
    from test_report_schema import _errors  # the documented schema knows latency from a node

    assert _errors(report) == []


def test_the_digits_recipe_on_ray_gives_the_embedded_statistics(cluster, digits_out, tmp_path):
    recipe = REPO / "calibration_data" / "digits_cnn.toml"
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "ray"), "--no-cache", "-q", "--executor", "ray"])
    assert result.exit_code == 0, result.output
    ray_report = json.loads((tmp_path / "ray" / "report.json").read_text())
    embedded = json.loads((digits_out / "report.json").read_text())
    assert ray_report["executor"]["kind"] == "ray" and embedded["executor"]["kind"] == "embedded"
    _same_verdict_on_the_same_latency(ray_report, embedded, recipe)


def test_an_unknown_latency_node_is_exit_2_naming_the_nodes(cluster, assets, tmp_path):
    result = run_cli(["run", str(assets / "r.toml"), "--out", str(tmp_path / "o"), "--executor", "ray", "--latency-node", "10.9.9.9"])
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and line.startswith("Error: latency_node: no alive node is named '10.9.9.9'")
    assert socket.gethostname() in line  # the nodes there are
    assert not (tmp_path / "o").exists()
    result = run_cli(["run", str(assets / "r.toml"), "--out", str(tmp_path / "o"), "--latency-node", "127.0.0.1"])
    assert result.exit_code == 2 and result.output.strip() == "Error: --latency-node: only used with --executor ray"


def test_latency_on_a_node_waits_for_its_cpus_and_says_so(cluster, assets, tmp_path, monkeypatch):
    """Another task holds one of the node's 2 CPUs: the latency task waits until both are free
    (nothing else runs beside the timing), and the terminal says it is waiting. The other task
    lets go 2 s after the latency stage starts, however long the stages before it took."""
    import edgefair.executor as ex

    executor, _ = cluster
    flag = tmp_path / "release"

    def hold_until(flag: str) -> None:  # a task holding one CPU until `flag` exists (a local: pickled by value)
        deadline = time.monotonic() + 120
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.05)

    monkeypatch.setattr(ex, "WAIT_NOTICE_S", 0.5)
    original = ex.RayExecutor.measure_latency

    def measure_latency(self, *args, **kwargs):
        threading.Timer(2.0, flag.touch).start()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ex.RayExecutor, "measure_latency", measure_latency)
    blocker = executor.ray.remote(num_cpus=1)(hold_until).remote(str(flag))
    try:
        result = run_cli(["run", str(assets / "r.toml"), "--out", str(tmp_path / "o"), "--executor", "ray",
                          "--latency-node", socket.gethostname(), "--no-cache"])
    finally:
        flag.touch()
        executor.ray.get(blocker)
    assert result.exit_code in (0, 1), result.output
    assert f"for node {socket.gethostname()}: timing starts once all its 2 CPUs are free of other tasks" in result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert all(s["latency"]["source"] == "node" for s in report["steps"])
