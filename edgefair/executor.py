"""Where the heavy, independent work of a run executes: tune candidates and eval inference.

Three executors share one seam, which the pipeline calls at two points:

- ``build_candidates(compressor, specs)``: build `edgefair tune`'s candidates before its search
  loop walks them, so that they can be built in parallel; the loop then takes each one's model as
  it would take a cache hit, and every decision (skip, budget, gates, selection) stays with it.
  A candidate that times models while it is built (keep_float's slowdown bound) is left to the
  loop, on the driver.
- ``predictions(inputs, jobs)``: each model's raw outputs on the eval rows, batch by batch in row
  order, which the driver turns into per-row quantities (``stats.Evaluator.model_from_batches``).
- ``bootstrap_runner(progress)``: where the bootstrap's replicate sums, the part of the statistics
  that costs replicates x rows, are computed. Tasks get the exact integer features of runs of
  rows (``PoissonBootstrap.features``) and return their per-cell replicate sums
  (``bootstrap.partial_sums``: the sufficient statistics of every interval); the driver adds them
  up. Integer sums do not depend on who adds them in which order: the same statistics as in process.

``Executor`` (``embedded``, the default) does what edgefair always did, in this process: it builds
nothing ahead, and streams ``evaluate.predict_batches``. ``RayExecutor`` (``ray``) runs the same
work as Ray tasks; ``InProcessTasks`` runs those tasks one after another in this process (what the
tests use to check the task path without a cluster).

Tasks receive plain data only: the recipe's text, path and sha256, step specs as JSON, content
hashes of the data as the model reads it, and models as bytes keyed by their sha256 (through Ray's
object store). A task reads the rows itself, by path, and refuses data whose content hash differs
from the driver's. Nothing is unpickled from a model file, and no object of the user's is pickled.

Latency is never measured on shared workers: it stays on the driver (``pipeline.measure_latency``)
unless a cluster node is named for it (``[run] latency_node``, ``--latency-node``), where one task
holding all of that node's CPUs times the models (``latency_task``). ``describe()`` and each step's
``latency.source`` say which in report.json.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .errors import EdgefairError, RecipeError

EXECUTORS = ("embedded", "ray")
LOCAL = "local"  # ray_address: start a one-node Ray cluster on this machine
# rows per eval-inference task; smaller eval sets are one task per model (the models run in parallel)
SHARD_ROWS = 200_000
# rows of the bootstrap's cell order per task: 64 chunks (at 1,000 replicates about 8 GFLOP and 131M
# weight draws, seconds of work; its features are ~30 MB, its sums a few MB)
BOOT_ROWS = 64 * 2048
MAX_RETRIES = 3  # a task whose worker dies (killed, out of memory, node lost) is run again this many times
CONNECT_TIMEOUT_S = 5.0
LATENCY_NOTE = "measured on the driver (the machine running edgefair), never on executor workers"
WAIT_NOTICE_S = 30.0  # a latency task that has not finished says it is still waiting this often

# Test-only hook, read by tasks from the environment so that a test can kill a worker mid-task:
# with EDGEFAIR_TEST_TASK_HOOK=DIR, the first task attempt that claims DIR/pause (a file holding a
# number of seconds) writes its process id to DIR/paused.pid and sleeps that long.
TEST_HOOK_ENV = "EDGEFAIR_TEST_TASK_HOOK"


class ExecutorError(EdgefairError):
    """The executor cannot run the work: cluster unreachable, task lost, data differs on a worker."""


class StepFailed(RuntimeError):
    """A candidate's step failed in a task; its message is the reason the search reports."""


@dataclasses.dataclass
class Built:
    """A candidate built by a task: its model file on the driver, or why it failed."""

    path: Path | None
    sha256: str | None
    warnings: list[str]
    details: dict[str, Any]
    error: str | None = None
    seconds: float | None = None  # the step's own build time on the worker

    def apply_to(self, step: Any) -> None:
        """Give `step` (a StepModel) this model, as `Compressor._apply` would have built it."""
        from .io import sha256_file

        if self.error is not None:
            raise StepFailed(self.error)
        shutil.copyfile(self.path, step.path)
        if sha256_file(step.path) != self.sha256:
            raise ExecutorError(f"executor: the model built for {step.name!r} changed on its way to {step.path.name}")
        step.torch_model, step.warnings, step.details = None, list(self.warnings), dict(self.details)


# ---------------------------------------------------------------------------------------------
# Choosing an executor


def check_address(address: str | None, key: str = "run.ray_address") -> str | None:
    """`auto`, `local`, `HOST:PORT` or `ray://HOST:PORT`, else RecipeError naming `key`."""
    if address is None or address in ("auto", LOCAL):
        return address
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RecipeError(f"{key}: expected \"auto\", \"local\", \"HOST:PORT\" or \"ray://HOST:PORT\" (got {address!r})")
    return address


def executor_for(recipe: Any, kind: str | None = None, address: str | None = None, latency_node: str | None = None) -> "Executor":
    """The executor a run uses: `kind`/`address`/`latency_node` (command line) over the recipe's `[run]` table."""
    run = getattr(recipe, "run", None)
    kind = kind or (run.executor if run is not None else "embedded")
    address = address or (run.ray_address if run is not None else None)
    node = latency_node or (run.latency_node if run is not None else None)
    if kind == "embedded":  # a recipe's Ray settings are ignored when the command line says embedded
        if latency_node is not None:
            raise RecipeError("--latency-node: only used with --executor ray")
        return Executor()
    if kind == "ray":
        return RayExecutor(address, latency_node=node)
    raise RecipeError(f"executor: must be one of {', '.join(EXECUTORS)} (got {kind!r})")


# ---------------------------------------------------------------------------------------------
# The embedded executor: today's path


class Executor:
    """In-process: nothing is built ahead, eval inference streams from ``predict_batches``."""

    kind = "embedded"

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "latency": LATENCY_NOTE}

    def build_candidates(self, compressor: Any, specs: Iterable[Any]) -> dict[str, Built]:
        return {}

    def predictions(self, inputs: Any, jobs: dict[int, tuple[Path, int]], progress: Callable[[str], None] = lambda s: None
                    ) -> dict[int, Iterable[np.ndarray]]:
        """{model: raw outputs batch by batch, in row order} for {model: (model file, batch size)}."""
        from .evaluate import predict_batches

        return {i: predict_batches(path, inputs.eval, batch_size=batch) for i, (path, batch) in jobs.items()}

    def bootstrap_runner(self, progress: Callable[[str], None] = lambda s: None) -> Any:
        """None: the bootstrap's sums are computed in this process."""
        return None

    def measure_latency(self, inputs: Any, paths: list[Path], settings: Any, progress: Callable[[str], None] = lambda s: None
                        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(one latency dict per model, where they were timed) for `paths`: here, on the driver."""
        from .latency import measure_interleaved

        return measure_interleaved(paths, inputs.eval.inputs, settings), {"source": "local"}

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# The task path, shared by Ray and the in-process task runner


class TaskExecutor(Executor):
    """Runs candidates and eval shards as tasks. Subclasses provide the primitives: `_put` (bytes
    -> handle), `_submit` (function, args -> handle), `_wait` (handles -> those done), `_get`
    (handle -> value), `_cancel` (handles) and `_slots` (tasks that may run at once)."""

    shard_rows = SHARD_ROWS
    boot_rows = BOOT_ROWS

    def _put(self, data: bytes) -> Any:
        raise NotImplementedError

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def _wait(self, handles: list[Any]) -> list[Any]:
        raise NotImplementedError

    def _get(self, handle: Any) -> Any:
        raise NotImplementedError

    def _cancel(self, handles: list[Any]) -> None:
        raise NotImplementedError

    def _slots(self) -> int:
        return 1

    # -- models move as bytes keyed by sha256 --------------------------------------------------
    def _model(self, path: Path) -> tuple[str, Any]:
        from .io import sha256_file

        sha = sha256_file(path)
        refs = self.__dict__.setdefault("_refs", {})
        if sha not in refs:
            refs[sha] = self._put(path.read_bytes())
        return sha, refs[sha]

    # -- tune candidates -----------------------------------------------------------------------
    def build_candidates(self, compressor: Any, specs: Iterable[Any]) -> dict[str, Built]:
        """Build every candidate that the cache does not hold, up to `_slots()` at a time, a
        candidate after the one it reads. Stops submitting once the search's budget is spent;
        Ctrl-C cancels the running tasks and sets `compressor.interrupted`. Failures come back as
        `Built.error`: the search loop skips them with that reason, as it would in process."""
        from .pipeline import step_key
        from .prepare import StepModel

        c, inputs = compressor, compressor.inputs
        base = inputs.baseline
        stage = c.workdir / "executor"
        stage.mkdir(exist_ok=True)
        files: dict[str, Path] = {"baseline": base.path}  # built (or cached) models, by candidate name
        failed: set[str] = set()
        built: dict[str, Built] = {}
        pending = list(specs)
        running: dict[Any, Any] = {}
        common = _common_job(inputs)
        submitted = 0
        c._armed = True  # Ctrl-C interrupts the wait, not the search's own bookkeeping
        try:
            while pending or running:
                for spec in list(pending):
                    if len(running) >= self._slots():
                        break
                    if spec.input in failed or spec.input not in c.specs and spec.input != "baseline":
                        pending.remove(spec)  # the search loop says why
                        failed.add(spec.name)
                        continue
                    if spec.input not in files:
                        if not any(s.name == spec.input for s in running.values()) and not any(s.name == spec.input for s in pending):
                            pending.remove(spec)  # its input was not built here (e.g. budget): the loop decides
                            failed.add(spec.name)
                        continue
                    if times_latency(spec):
                        pending.remove(spec)  # timed while built: the search loop builds it here, on the driver
                        continue
                    if c._budget_spent():
                        pending.clear()
                        break
                    src = StepModel(0, spec.input, "", None, files[spec.input])
                    key = step_key(spec, inputs, src)
                    target = stage / f"{spec.index:02d}-{spec.name}.onnx"
                    if c.cache.get_json("step", key) is not None and c.cache.get_file("step", key, target):
                        files[spec.name] = target  # the search loop takes it from the cache
                        pending.remove(spec)
                        continue
                    pending.remove(spec)
                    job = {**common, "chain": [_spec_json(s) for s in _chain(c.specs, spec)], "models": {}}
                    refs = []
                    for s in _chain(c.specs, spec)[:-1]:  # every earlier model of the chain, by content
                        sha, ref = self._model(files[s.name])
                        job["models"][s.name] = sha
                        refs.append(ref)
                    _, base_ref = self._model(base.path)
                    running[self._submit(build_task, json.dumps(job), base_ref, *refs)] = spec
                    submitted += 1
                if not running:
                    break
                for handle in self._wait(list(running)):
                    spec = running.pop(handle)
                    result = self._get(handle)
                    meta = json.loads(result[0])
                    if meta.get("error") is not None:
                        built[spec.name] = Built(None, None, [], {}, error=meta["error"])
                        failed.add(spec.name)
                    else:
                        target = stage / f"{spec.index:02d}-{spec.name}.onnx"
                        _write_checked(target, result[1], meta["sha256"], spec.name)
                        files[spec.name] = target
                        built[spec.name] = Built(target, meta["sha256"], meta["warnings"], meta["details"], seconds=meta.get("seconds"))
                    c.progress(f"candidates on {self.kind}: {len(built)} of {submitted} tasks done, {len(running)} running")
        except KeyboardInterrupt:
            self._cancel(list(running))
            c.interrupted = True
            c.progress(f"interrupted: cancelled {len(running)} running candidate task(s)")
        finally:
            c._armed = False
        return built

    # -- eval inference ------------------------------------------------------------------------
    def predictions(self, inputs: Any, jobs: dict[int, tuple[Path, int]], progress: Callable[[str], None] = lambda s: None
                    ) -> dict[int, Iterable[np.ndarray]]:
        """Every model's shards are submitted at once; each model's outputs are then read shard by
        shard, in row order. A shard is a run of whole batches (`shards` of the model's batches),
        so a batch-dependent model sees exactly the batches it sees in process."""
        if not jobs:
            return {}
        common = _common_job(inputs)
        _, base_ref = self._model(inputs.baseline.path)
        shards = max(1, math.ceil(inputs.eval.n / self.shard_rows))
        handles: dict[int, list[Any]] = {}
        for i, (path, batch) in jobs.items():
            sha, ref = self._model(path)
            handles[i] = [self._submit(predict_task, json.dumps({**common, "file": path.name, "sha256": sha, "batch_size": batch,
                                                                  "shard": s, "shards": shards}), base_ref, ref)
                          for s in range(shards)]
        state = {"done": 0, "total": sum(len(h) for h in handles.values()), "all": [h for hs in handles.values() for h in hs]}
        return {i: self._stream(h, state, progress) for i, h in handles.items()}

    def _stream(self, handles: list[Any], state: dict[str, Any], progress: Callable[[str], None]) -> Iterator[np.ndarray]:
        for handle in handles:
            try:
                data = self._get(handle)
            except KeyboardInterrupt:
                self._cancel(state["all"])
                raise
            state["done"] += 1
            progress(f"evaluate: {state['done']} of {state['total']} inference tasks on {self.kind} done")
            out = np.load(io.BytesIO(data), allow_pickle=False)
            if len(out):  # a shard past the model's last batch (fewer batches than shards) has no rows
                yield out


    def bootstrap_runner(self, progress: Callable[[str], None] = lambda s: None) -> Any:
        """Runs of ``boot_rows`` rows (whole chunks) of the bootstrap's cell order as tasks, at
        most two per slot in flight (so the driver holds a few runs' features at a time); their
        int64 sums are added as they come back."""
        from .bootstrap import CHUNK_ROWS

        def run(engine: Any, features: Callable[[int, int], np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
            n, step = len(engine.order), max(CHUNK_ROWS, self.boot_rows // CHUNK_ROWS * CHUNK_ROWS)
            acc = np.zeros((engine.n_boot, engine.n_cells, width), dtype=np.int64)
            point = np.zeros((engine.n_cells, width), dtype=np.int64)
            meta = json.dumps({"n_boot": engine.n_boot, "seed": engine.seed, "bounds": [int(b) for b in engine.bounds]})
            starts = list(range(0, n, step))
            running: list[Any] = []
            done = 0
            try:
                while starts or running:
                    while starts and len(running) < 2 * self._slots():
                        a = starts.pop(0)
                        running.append(self._submit(bootstrap_task, meta, a, _npy(features(a, min(n, a + step)))))
                    for handle in self._wait(running):
                        running.remove(handle)
                        first_cell, *parts = self._get(handle)
                        part_acc, part_point = (np.load(io.BytesIO(b), allow_pickle=False) for b in parts)
                        cells = slice(first_cell, first_cell + part_point.shape[0])  # the cells the run of rows covers
                        acc[:, cells] += part_acc
                        point[cells] += part_point
                        done += 1
                        progress(f"statistics: {done} of {math.ceil(n / step)} bootstrap tasks on {self.kind} done")
            except BaseException:  # Ctrl-C, or one task's error: the others are not waited for
                self._cancel(running)
                raise
            return acc, point

        return run


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


class InProcessTasks(TaskExecutor):
    """The task path run one task at a time in this process (no cluster): a task runs when its
    result is first asked for."""

    kind = "in-process tasks"

    def __init__(self, shard_rows: int = SHARD_ROWS, boot_rows: int = BOOT_ROWS) -> None:
        self.shard_rows, self.boot_rows = shard_rows, boot_rows

    def _put(self, data: bytes) -> Any:
        return data

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return _Thunk(fn, args)

    def _wait(self, handles: list[Any]) -> list[Any]:
        return handles[:1]

    def _get(self, handle: Any) -> Any:
        return handle.value()

    def _cancel(self, handles: list[Any]) -> None:
        pass


class _Thunk:
    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn, self.args, self.done, self.result = fn, args, False, None

    def value(self) -> Any:
        if not self.done:
            self.result, self.done = self.fn(*self.args), True
        return self.result


# ---------------------------------------------------------------------------------------------
# Ray


class RayExecutor(TaskExecutor):
    """Tasks on a Ray cluster. `address`: None or "local" starts a one-node cluster on this machine
    (no dashboard; Ray binds it to the machine's own address, not to loopback); "auto" joins the
    one running here ($RAY_ADDRESS or `ray start`); "HOST:PORT" a cluster's head; "ray://HOST:PORT" through the Ray client. Connects at once: an unreachable
    cluster is an ExecutorError (exit 2) before any work. `num_cpus` sizes a local cluster."""

    kind = "ray"

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, shard_rows: int = SHARD_ROWS,
                 temp_dir: str | None = None, latency_node: str | None = None) -> None:
        import signal

        self._saved = (dict(os.environ), signal.getsignal(signal.SIGTERM))  # importing ray and ray.init change both: close() puts them back
        try:
            import ray
        except ImportError:
            raise ExecutorError("executor ray: Ray is not installed (pip install 'edgefair[ray]')") from None
        self.ray, self.shard_rows = ray, shard_rows
        self.address = check_address(address, "ray_address") or LOCAL
        self.started = False
        if self.address not in ("auto", LOCAL):
            _reachable(self.address)
        if ray.is_initialized():  # this process is already connected (a caller's ray.init): use that
            self.address = "connected"
        else:
            self._connect(num_cpus, temp_dir)
        self._remote: dict[Callable[..., Any], Any] = {}
        self.latency_node = None if latency_node is None else self._find_node(latency_node)

    def _find_node(self, name: str) -> dict[str, Any]:
        """The alive node whose id, IP address or host name is `name`; else ExecutorError (exit 2)
        naming the nodes there are."""
        alive = [n for n in self.ray.nodes() if n.get("Alive")]
        found = [n for n in alive if name in (n.get("NodeID"), n.get("NodeManagerAddress"), n.get("NodeManagerHostname"))]
        if len(found) != 1:
            shown = ", ".join(f"{n.get('NodeManagerAddress')} ({n.get('NodeManagerHostname')}, id {str(n.get('NodeID'))[:12]})"
                              for n in alive[:8])
            what = "no alive node is" if not found else f"{len(found)} nodes are"
            self.close()
            raise ExecutorError(f"latency_node: {what} named {name!r} in the Ray cluster at {self.address} "
                                f"(name a node by id, IP address or host name; nodes: {shown})")
        node = found[0]
        cpus = int(node.get("Resources", {}).get("CPU", 0))
        if cpus < 1:
            self.close()
            raise ExecutorError(f"latency_node: node {name!r} ({node.get('NodeManagerAddress')}) has no CPUs for Ray tasks "
                                "(started with --num-cpus=0?): name a node with CPUs")
        return {"name": name, "id": node["NodeID"], "address": node.get("NodeManagerAddress"),
                "hostname": node.get("NodeManagerHostname"), "cpus": cpus}

    def _connect(self, num_cpus: int | None, temp_dir: str | None) -> None:
        import logging

        ray = self.ray
        kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}  # no banner, no token notice
        if self.address == LOCAL:
            # Ray gives a node the machine's address even when asked for loopback
            # (ray._private.services.resolve_ip_for_localhost): a local cluster is one node, this machine
            kwargs.update(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False)
            if temp_dir:
                kwargs["_temp_dir"] = temp_dir
        else:
            kwargs["address"] = self.address
        try:
            ray.init(**kwargs)
        except ModuleNotFoundError as e:
            raise ExecutorError(f"executor ray: {self.address} needs the Ray client ({e}; pip install 'edgefair[ray]')") from None
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExecutorError(f"executor ray: cannot connect to the Ray cluster at {self.address}: {first}") from None
        self.started = True

    def describe(self) -> dict[str, Any]:
        resources = self.ray.cluster_resources()
        node = self.latency_node
        latency = LATENCY_NOTE if node is None else (
            f"measured on cluster node {node['address']} ({node['hostname']}, named {node['name']!r}) by one task "
            f"holding all its {node['cpus']} CPUs")
        return {"kind": self.kind, "address": self.address, "nodes": len([n for n in self.ray.nodes() if n.get("Alive")]),
                "cpus": int(resources.get("CPU", 0)), "max_retries": MAX_RETRIES, "latency": latency}

    def measure_latency(self, inputs: Any, paths: list[Path], settings: Any, progress: Callable[[str], None] = lambda s: None
                        ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """On the named node, by one task that holds all its CPUs (so no other task of the
        cluster runs beside it; it waits for them, and says so every WAIT_NOTICE_S); without a
        named node, on the driver."""
        if self.latency_node is None:
            return super().measure_latency(inputs, paths, settings, progress)
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = self.latency_node
        common = _common_job(inputs)
        _, base_ref = self._model(inputs.baseline.path)
        refs, files = [], []
        for path in paths:
            sha, ref = self._model(path)
            refs.append(ref)
            files.append({"file": path.name, "sha256": sha})
        job = {**common, "models": files, "settings": dataclasses.asdict(settings)}
        task = self.ray.remote(latency_task).options(
            num_cpus=node["cpus"], max_retries=MAX_RETRIES, retry_exceptions=False,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node["id"], soft=False))
        handle = task.remote(json.dumps(job), base_ref, *refs)
        try:
            started = time.perf_counter()
            while not self.ray.wait([handle], num_returns=1, timeout=WAIT_NOTICE_S)[0]:
                progress(f"latency: still waiting after {time.perf_counter() - started:.0f} s for node {node['name']}: "
                         f"timing starts once all its {node['cpus']} CPUs are free of other tasks")
            result = json.loads(self._get(handle))
        except KeyboardInterrupt:
            self._cancel([handle])
            raise
        where = {"source": "node", "node": {k: node[k] for k in ("name", "address", "hostname", "cpus")}}
        if result["node_id"] != node["id"]:
            raise ExecutorError(f"latency_node: the latency task ran on node {result['node_id'][:12]}, not on {node['name']!r}")
        return result["latency"], where

    def _slots(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def _put(self, data: bytes) -> Any:
        return self.ray.put(data)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(fn)
        return self._remote[fn].remote(*args)

    def _wait(self, handles: list[Any]) -> list[Any]:
        done, _ = self.ray.wait(handles, num_returns=1)
        return done

    def _get(self, handle: Any) -> Any:
        from ray.exceptions import RayError, RayTaskError, TaskCancelledError, WorkerCrashedError

        try:
            return self.ray.get(handle)
        except RayTaskError as e:  # the task's own error: raise it as it would be raised in process
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise
        except (WorkerCrashedError, TaskCancelledError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExecutorError(f"executor ray: a task was lost after {MAX_RETRIES} retries: {first}") from None
        except RayError as e:  # the cluster's, not the task's: a node died, a task cannot be scheduled, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExecutorError(f"executor ray: {type(e).__name__}: {first}") from None

    def _cancel(self, handles: list[Any]) -> None:
        for h in handles:
            try:
                self.ray.cancel(h, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone: nothing to cancel
                pass

    def close(self) -> None:
        """Disconnect (a cluster started here stops), and undo what ray.init changed in this
        process: environment variables (PYTHONBREAKPOINT, RAY_*) and the SIGTERM handler."""
        import signal
        import threading

        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        if self.started:
            env, handler = self._saved
            for key in [k for k in os.environ if k not in env]:
                del os.environ[key]
            os.environ.update(env)
            if threading.current_thread() is threading.main_thread() and handler is not None:
                signal.signal(signal.SIGTERM, handler)
        self.started = False


def _reachable(address: str) -> None:
    """A quick TCP connect, so that a wrong address fails in seconds with one clear line instead
    of Ray's own retries."""
    import socket

    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, _, port = rest.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ExecutorError(f"executor ray: cannot reach the Ray cluster at {address} ({e.strerror or e})") from None


# ---------------------------------------------------------------------------------------------
# What a task gets: plain data only


def times_latency(spec: Any) -> bool:
    """A step that times models while it is built (keep_float's slowdown bound): built on the
    driver, never on a cluster worker, whose timings would lie."""
    import math

    config = spec.config
    return (spec.kind == "quantize_static" and getattr(config, "keep_float", "none") != "none"
            and math.isfinite(getattr(config, "keep_float_max_slowdown", math.inf)))


def _common_job(inputs: Any) -> dict[str, Any]:
    """The recipe as text with its path and sha256, how the data reads (content hashes), and the
    facts `prepare` decided on the driver."""
    from .config import as_dict
    from .recipe import parse_recipe
    from .io import sha256_bytes

    recipe = inputs.recipe
    if not recipe.sha256:
        raise ExecutorError("executor: tasks need a recipe read from a file (this one has no sha256)")
    raw = recipe.path.read_bytes()
    if sha256_bytes(raw) != recipe.sha256:
        raise ExecutorError(f"executor: {recipe.path} changed since it was read; run again")
    text = raw.decode("utf-8")
    parsed = parse_recipe(_toml(text), path=recipe.path, sha256=recipe.sha256)
    for table in ("model", "data", "evaluate"):
        if as_dict(getattr(parsed, table)) != as_dict(getattr(recipe, table)):
            raise ExecutorError(f"executor: the recipe's [{table}] differs from {recipe.path.name}; tasks read the file")
    return {
        "recipe_text": text, "recipe_path": str(recipe.path), "recipe_sha256": recipe.sha256,
        "digests": {name: inputs.data_digest(name) for name in ("eval", "calibration", "train")},
        "input_names": list(inputs.input_names), "output_kind": inputs.output_kind,
        "source_kind": inputs.source_kind, "source_sha256": inputs.source_sha256,
        "baseline_sha256": _sha(inputs.baseline.path),
    }


def _sha(path: Path) -> str:
    from .io import sha256_file

    return sha256_file(path)


def _toml(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def _spec_json(spec: Any) -> dict[str, Any]:
    from .config import as_dict

    return {"index": spec.index, "name": spec.name, "kind": spec.kind, "input": spec.input, "config": as_dict(spec.config)}


def _spec_from(d: dict[str, Any]) -> Any:
    from .config import build
    from .recipe import StepSpec
    from .steps import REGISTRY

    config = build(REGISTRY[d["kind"]].config_cls, d["config"], f"steps[{d['index'] - 1}]")
    return StepSpec(index=d["index"], name=d["name"], kind=d["kind"], input=d["input"], config=config)


def _chain(specs: dict[str, Any], spec: Any) -> list[Any]:
    """The specs that produce `spec`, from the baseline's first reader to `spec` itself."""
    out = [spec]
    while out[-1].input != "baseline":
        out.append(specs[out[-1].input])
    return out[::-1]


def _write_checked(path: Path, data: bytes, sha: str, what: str) -> None:
    from .io import sha256_bytes

    if sha256_bytes(data) != sha:
        raise ExecutorError(f"executor: the model of {what!r} does not match its sha256 {sha[:12]}")
    path.write_bytes(data)


# ---------------------------------------------------------------------------------------------
# Tasks: run on a worker (or in process); they rebuild what they need from plain data


_PREPARED: dict[tuple, Any] = {}  # one worker's last prepared data, reused by its next task of the same run


def _test_hook() -> None:
    folder = os.environ.get(TEST_HOOK_ENV)
    if not folder:
        return
    claim = Path(folder) / "pause"
    mine = Path(folder) / f"claimed-{os.getpid()}"
    try:
        os.rename(claim, mine)  # only one task attempt of the run wins the file
    except OSError:
        return
    seconds = float(mine.read_text() or 0)
    (Path(folder) / "paused.pid").write_text(str(os.getpid()))
    time.sleep(seconds)


def _worker_inputs(job: dict[str, Any], baseline: bytes, workdir: Path, *, sets: tuple[str, ...]) -> Any:
    """The driver's `prepare` result, rebuilt from the recipe file and the data read by path, and
    checked against the driver's content hashes. `sets`: which data sets are needed."""
    from .evaluate import BASELINE_FILE, conform_inputs
    from .io import sha256_bytes
    from .prepare import Inputs, StepModel, _name_csv, dataset_digest, load_set
    from .recipe import parse_recipe
    from .runtime import make_session

    if sha256_bytes(job["recipe_text"].encode("utf-8")) != job["recipe_sha256"]:
        raise ExecutorError("executor: the recipe text a task received does not match its sha256")
    if sha256_bytes(baseline) != job["baseline_sha256"]:
        raise ExecutorError("executor: the baseline model a task received does not match its sha256")
    path = workdir / BASELINE_FILE
    path.write_bytes(baseline)
    key = (job["recipe_sha256"], job["baseline_sha256"], json.dumps(job["digests"], sort_keys=True), sets)
    if key in _PREPARED:
        recipe, datasets = _PREPARED[key]
    else:
        _PREPARED.clear()
        recipe = parse_recipe(_toml(job["recipe_text"]), path=Path(job["recipe_path"]), sha256=job["recipe_sha256"])
        session = make_session(path, threads=0)
        datasets = {}
        for name in sets:
            data = load_set(recipe, name)
            if data is not None:
                data = conform_inputs(session, _name_csv(job["input_names"], data), f"data.{name}")
                if dataset_digest(data) != job["digests"][name]:
                    raise ExecutorError(f"data.{name}: {data.path} reads differently on worker {os.uname().nodename} "
                                        "than on the driver (another file at that path?)")
            datasets[name] = data
        _PREPARED[key] = (recipe, datasets)
    baseline_step = StepModel(0, "baseline", "export", None, path)
    inputs = Inputs(recipe, job["source_kind"], job["source_sha256"], datasets.get("eval"), datasets.get("calibration"),
                    datasets.get("train"), baseline_step, None, list(job["input_names"]), job["output_kind"])
    inputs._digests = dict(job["digests"])
    return inputs


def build_task(job_text: str, baseline: bytes, *models: bytes) -> tuple[str, bytes]:
    """Build one candidate (the last spec of `job["chain"]`) from its chain's earlier models.
    Returns (JSON: sha256, warnings, details or error, model bytes)."""
    from .cache import Cache
    from .io import sha256_bytes, sha256_file
    from .pipeline import Compressor
    from .prepare import StepModel

    _test_hook()
    job = json.loads(job_text)
    chain = [_spec_from(d) for d in job["chain"]]
    with tempfile.TemporaryDirectory(prefix="edgefair-task-") as tmp:
        workdir = Path(tmp)
        inputs = _worker_inputs(job, baseline, workdir, sets=("eval", "calibration", "train"))
        inputs = dataclasses.replace(inputs, recipe=dataclasses.replace(inputs.recipe, steps=tuple(chain)))
        compressor = Compressor(inputs, workdir, Cache(None), lambda s: None)
        for spec, data in zip(chain[:-1], models):  # earlier models of the chain, as the driver built them
            if sha256_bytes(data) != job["models"][spec.name]:
                raise ExecutorError(f"executor: the model of {spec.name!r} a task received does not match its sha256")
            step = StepModel(spec.index, spec.name, spec.kind, spec.input, workdir / f"{spec.index:02d}-{spec.name}.onnx")
            step.path.write_bytes(data)
            compressor.by_name[spec.name] = step
        try:
            step = compressor._step(chain[-1])
        except ExecutorError:
            raise
        except Exception as e:  # noqa: BLE001 - the search loop skips the candidate with this reason
            return json.dumps({"error": Compressor._one_line(e)}), b""
        meta = {"sha256": sha256_file(step.path), "warnings": step.warnings, "details": step.details, "seconds": step.seconds}
        return json.dumps(meta), step.path.read_bytes()


def predict_task(job_text: str, baseline: bytes, model: bytes) -> bytes:
    """Raw outputs of one model on one shard of the eval rows (whole batches), as .npy bytes."""
    from .evaluate import BASELINE_FILE, predict_batches
    from .io import sha256_bytes
    from .runtime import fixed_batch, make_session

    _test_hook()
    job = json.loads(job_text)
    if sha256_bytes(model) != job["sha256"]:
        raise ExecutorError(f"executor: the model {job['file']} a task received does not match its sha256")
    with tempfile.TemporaryDirectory(prefix="edgefair-task-") as tmp:
        workdir = Path(tmp)
        inputs = _worker_inputs(job, baseline, workdir, sets=("eval",))
        path = workdir / job["file"]
        if job["file"] != BASELINE_FILE:
            path.write_bytes(model)
        data = inputs.eval
        batch = fixed_batch(make_session(path, threads=1)) or job["batch_size"]
        batches = math.ceil(data.n / batch)
        first, last = job["shard"] * batches // job["shards"], (job["shard"] + 1) * batches // job["shards"]
        rows = slice(first * batch, min(data.n, last * batch))
        part = dataclasses.replace(data, inputs={k: v[rows] for k, v in data.inputs.items()},
                                   labels=None if data.labels is None else data.labels[rows],
                                   attributes={k: v[rows] for k, v in data.attributes.items()})
        outs = list(predict_batches(path, part, batch_size=job["batch_size"]))
        out = np.concatenate(outs, axis=0) if outs else np.empty((0,), dtype=np.float32)
    return _npy(out)


def latency_task(job_text: str, baseline: bytes, *models: bytes) -> str:
    """Latency of the job's models on this node (``measure_interleaved`` on the eval rows read by
    path), as JSON with the id of the node it ran on."""
    import ray

    from .evaluate import BASELINE_FILE
    from .io import sha256_bytes
    from .latency import LatencySettings, measure_interleaved

    job = json.loads(job_text)
    settings = job["settings"]
    settings = LatencySettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    with tempfile.TemporaryDirectory(prefix="edgefair-task-") as tmp:
        workdir = Path(tmp)
        inputs = _worker_inputs(job, baseline, workdir, sets=("eval",))
        paths = []
        for meta, data in zip(job["models"], models):
            if sha256_bytes(data) != meta["sha256"]:
                raise ExecutorError(f"executor: the model {meta['file']} a task received does not match its sha256")
            path = workdir / meta["file"]
            if meta["file"] != BASELINE_FILE:
                path.write_bytes(data)
            paths.append(path)
        latency = measure_interleaved(paths, inputs.eval.inputs, settings)
    return json.dumps({"latency": latency, "node_id": ray.get_runtime_context().get_node_id()})


def bootstrap_task(meta_text: str, start: int, features: bytes) -> tuple[int, bytes, bytes]:
    """The bootstrap's per-cell replicate sums of one run of rows of the cell order
    (``bootstrap.partial_sums``) for the cells that run covers: (first cell, acc, point as .npy
    bytes)."""
    from .bootstrap import partial_sums

    _test_hook()
    meta = json.loads(meta_text)
    x = np.load(io.BytesIO(features), allow_pickle=False)
    bounds = np.asarray(meta["bounds"], dtype=np.int64)
    acc, point = partial_sums(x, start, bounds, n_boot=meta["n_boot"], seed=meta["seed"])
    c0, c1 = np.searchsorted(bounds, [start, start + len(x) - 1], side="right") - 1  # cells of the first and last row
    return int(c0), _npy(acc[:, c0:c1 + 1]), _npy(point[c0:c1 + 1])
