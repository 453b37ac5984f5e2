"""The executor seam (edgefair/executor.py) without a cluster: the task path, run in this process
(`InProcessTasks`), gives the embedded run's report; tasks refuse data or models that differ from
the driver's; the `[run]` table and the command line options. Ray itself: tests/test_ray.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import BASE_RECIPE, run_cli, write_recipe
from edgefair.errors import EdgefairError, RecipeError
from edgefair.executor import ExecutorError, InProcessTasks, _common_job, predict_task
from edgefair.recipe import load_recipe

STEPS = """
[[steps]]
kind = "quantize_dynamic"

[[steps]]
name = "static"
kind = "quantize_static"
input = "baseline"
"""

# selection by size, not by latency: the same choice whatever the timings
SMALLEST = "\n[select]\nby = \"smallest\"\n\n[gates]\nmax_group_accuracy_drop = 0.9\n"
NO_LATENCY = BASE_RECIPE.replace("[latency]\n", "[latency]\nenabled = false\n")  # measured on the driver either way
TUNE_PICK = ("dynamic-int8", "static-int8-keep-float", "structured-50", "structured-50-int8")

VARYING_STEP = ("latency", "seconds", "cache")  # timings, and whether a cache served it
VARYING_TOP = ("timings_s", "created_at", "executor")


def statistics(report: dict) -> dict:
    """report.json without timings, latency, cache use and the executor's description. Warnings
    that compare timings (speed) are dropped too; every other warning stays."""
    out = {k: v for k, v in report.items() if k not in VARYING_TOP and k not in ("steps", "frontier", "search")}
    out["steps"] = [{k: v for k, v in s.items() if k not in VARYING_STEP} | {"details": _untimed(s.get("details")),
                     "warnings": [w for w in s.get("warnings", []) if "slower" not in w and "faster" not in w]}
                    for s in report["steps"]]
    if "search" in report:
        out["search"] = {k: v for k, v in report["search"].items() if k != "elapsed_s"}
    if "frontier" in report:
        out["frontier"] = [{k: v for k, v in f.items() if k not in ("p50_ms", "p50_ratio_vs_baseline")} for f in report["frontier"]]
    return out


def _untimed(value):
    """Step details without their timings (`seconds`, e.g. fine-tuning's)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k != "seconds"}
    return value


def assert_same(got: dict, expected: dict) -> None:
    """`statistics` equal, failing on the first step and key that differ (readable diffs)."""
    a, b = statistics(got), statistics(expected)
    assert [s["name"] for s in a["steps"]] == [s["name"] for s in b["steps"]]
    for sa, sb in zip(a["steps"], b["steps"]):
        for key in sorted(set(sa) | set(sb)):
            assert sa.get(key) == sb.get(key), f"step {sa['name']}: {key}"
    assert a == b


def tune_recipe_subset(path: Path):
    from edgefair.tune import tune_recipe

    recipe = tune_recipe(load_recipe(path))
    return dataclasses.replace(recipe, steps=tuple(s for s in recipe.steps if s.name in TUNE_PICK))


def test_task_path_gives_the_embedded_report(recipe_dir, tmp_path):
    from edgefair.pipeline import run

    recipe = load_recipe(write_recipe(recipe_dir / "r.toml", BASE_RECIPE + STEPS + SMALLEST))
    embedded = run(recipe, tmp_path / "embedded")
    tasks = run(recipe, tmp_path / "tasks", executor=InProcessTasks(shard_rows=300))  # 3 shards of 800 rows per model
    assert embedded["steps"][1]["eval_batch_size"] == 1  # dynamic int8 runs at the deployed batch: shards cut whole batches
    assert_same(tasks, embedded)
    assert [s["sha256"] for s in tasks["steps"]] == [s["sha256"] for s in embedded["steps"]]
    # latency is measured on the driver in both, and the report says so
    assert embedded["executor"] == {"kind": "embedded", "latency": tasks["executor"]["latency"]}
    assert "driver" in tasks["executor"]["latency"] and all(s["latency"]["source"] == "local" for s in tasks["steps"])


def test_task_path_gives_the_embedded_tune(recipe_dir, tmp_path):
    """Candidates built as tasks (a chained one after the one it reads, a failing one skipped with
    the same reason) and evaluated as tasks: the same report as the search in process."""
    from edgefair.tune import search

    class Recording(InProcessTasks):
        """Keeps what each build task said about its candidate."""

        built: dict[str, float] = {}

        def _get(self, handle):
            result = super()._get(handle)
            if isinstance(result, tuple) and isinstance(result[0], str):  # a build task: (meta JSON, model bytes)
                meta = json.loads(result[0])
                self.built[meta["sha256"]] = meta["seconds"]
            return result

    recipe = tune_recipe_subset(write_recipe(recipe_dir / "t.toml", NO_LATENCY + SMALLEST))
    lines: list[str] = []
    embedded = search(recipe, tmp_path / "embedded")
    tasks = search(recipe, tmp_path / "tasks", executor=Recording(), progress=lines.append)
    assert [s["name"] for s in tasks["steps"]] == ["baseline", "dynamic-int8", "structured-50", "structured-50-int8"]
    assert [c["name"] for c in tasks["skipped"]] == ["static-int8-keep-float"]
    assert_same(tasks, embedded)
    # three tasks; the keep-float repair times models while it is built: the driver builds it (and skips it here)
    assert "candidates on in-process tasks: 3 of 3 tasks done, 0 running" in lines
    # a candidate's seconds are its build on the worker, not the driver's copy of the file
    assert [s["seconds"] for s in tasks["steps"][1:]] == pytest.approx([Recording.built[s["sha256"]] for s in tasks["steps"][1:]],
                                                                       abs=5e-4)  # report.json keeps ms
    assert all(sec > 0 for sec in Recording.built.values())


def test_a_cached_candidate_is_not_rebuilt_by_a_task(recipe_dir, tmp_path):
    from edgefair.cache import Cache
    from edgefair.tune import search

    recipe = tune_recipe_subset(write_recipe(recipe_dir / "t.toml", NO_LATENCY + SMALLEST))
    cache = Cache(tmp_path / "cache")
    first = search(recipe, tmp_path / "a", cache=cache, executor=InProcessTasks())
    lines: list[str] = []
    second = search(recipe, tmp_path / "b", cache=cache, executor=InProcessTasks(), progress=lines.append)
    assert not [line for line in lines if line.startswith("candidates on")]  # no task: every candidate built is in the cache
    assert [s["cache"]["model"] for s in second["steps"][1:]] == ["hit"] * 3
    assert_same(second, first)


def test_a_task_refuses_data_that_reads_differently_than_on_the_driver(recipe_dir, tmp_path):
    from edgefair.cache import Cache
    from edgefair.prepare import prepare

    recipe = load_recipe(write_recipe(recipe_dir / "r.toml", BASE_RECIPE))
    inputs = prepare(recipe, tmp_path, Cache(None))
    job = _common_job(inputs)
    baseline = inputs.baseline.path.read_bytes()
    good = {**job, "file": inputs.baseline.path.name, "sha256": job["baseline_sha256"], "batch_size": 64, "shard": 1, "shards": 2}
    out = np.load(__import__("io").BytesIO(predict_task(json.dumps(good), baseline, baseline)))
    assert out.shape == (416, 3)  # the second of two shards of 800 rows in whole batches of 64: batches 6 to 12, rows 384 to 799
    with pytest.raises(ExecutorError, match=r"data.eval: .*eval.npz reads differently on worker"):
        predict_task(json.dumps({**good, "digests": {**job["digests"], "eval": "0" * 64}}), baseline, baseline)
    with pytest.raises(ExecutorError, match="does not match its sha256"):
        predict_task(json.dumps(good), baseline, baseline[:-1])
    # a recipe file changed after it was read: tasks would read another recipe
    (recipe_dir / "r.toml").write_text((recipe_dir / "r.toml").read_text() + "\n")
    with pytest.raises(ExecutorError, match="changed since it was read"):
        _common_job(inputs)


def test_run_table_parses_and_names_bad_keys(recipe_dir):
    ok = load_recipe(write_recipe(recipe_dir / "a.toml", BASE_RECIPE + '\n[run]\nexecutor = "ray"\nray_address = "ray://head:10001"\n'))
    assert (ok.run.executor, ok.run.ray_address) == ("ray", "ray://head:10001")
    assert load_recipe(write_recipe(recipe_dir / "b.toml", BASE_RECIPE)).run.executor == "embedded"
    for text, message in [
        ('executor = "spark"', "run.executor: must be one of 'embedded', 'ray'"),
        ('executor = "ray"\nray_address = "head"', "run.ray_address: expected \"auto\", \"local\", \"HOST:PORT\" or \"ray://HOST:PORT\""),
        ('ray_address = "auto"', "run.ray_address: only used with executor = \"ray\""),
        ('latency_node = "n1"', "run.latency_node: only used with executor = \"ray\""),
        ('executor = "ray"\nlatency_node = " "', "run.latency_node: must name a node"),
        ("workers = 3", "run.workers: unknown key"),
    ]:
        with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_recipe(write_recipe(recipe_dir / "c.toml", BASE_RECIPE + f"\n[run]\n{text}\n"))


def test_cli_executor_options_are_checked_before_any_work(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE)
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "o"), "--ray-address", "auto"])
    assert result.exit_code == 2 and result.output.strip() == "Error: --ray-address: only used with --executor ray"
    result = run_cli(["tune", str(recipe), "--out", str(tmp_path / "o"), "--executor", "ray", "--ray-address", "nowhere"])
    assert result.exit_code == 2 and "--ray-address: expected" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "o"), "--executor", "spark"])
    assert result.exit_code == 2 and "'spark' is not one of 'embedded', 'ray'" in result.output
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "o"), "--latency-node", "n1"])
    assert result.exit_code == 2 and result.output.strip() == "Error: --latency-node: only used with --executor ray"
    assert not (tmp_path / "o").exists()


def test_the_command_line_can_run_a_ray_recipe_embedded(recipe_dir, tmp_path):
    """A recipe written for a cluster ([run] executor, ray_address, latency_node) runs in process
    with --executor embedded: its Ray settings are ignored, not refused."""
    recipe = write_recipe(recipe_dir / "r.toml", NO_LATENCY + STEPS
                          + '\n[run]\nexecutor = "ray"\nray_address = "ray://head:10001"\nlatency_node = "edge-1"\n')
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "o"), "--executor", "embedded", "-q", "--no-cache"])
    assert result.exit_code in (0, 1), result.output
    assert json.loads((tmp_path / "o" / "report.json").read_text())["executor"]["kind"] == "embedded"


def test_steps_that_time_models_are_built_on_the_driver():
    from edgefair.executor import times_latency
    from edgefair.recipe import StepSpec
    from edgefair.steps.quantize import QuantizeStaticConfig

    spec = lambda **kw: StepSpec(1, "q", "quantize_static", "baseline", QuantizeStaticConfig(**kw))  # noqa: E731
    assert times_latency(spec(keep_float="worst_group"))
    assert not times_latency(spec(keep_float="worst_group", keep_float_max_slowdown=float("inf")))  # no timing
    assert not times_latency(spec())


def test_executor_error_is_bad_input():
    assert issubclass(ExecutorError, EdgefairError)  # the CLI's one-line message and exit 2


def test_bootstrap_sums_from_tasks_equal_the_sums_in_process():
    """Shards return the bootstrap's per-cell replicate sums of runs of rows (one chunk each here:
    7 tasks over 13,000 rows and 6 unequal cells, features with fixed-point reals); added up, in
    whatever order they come back, they give every interval of the in-process statistics exactly."""
    from scipy.special import softmax

    from edgefair.groups import group_masks
    from edgefair.stats import Evaluator, StatsConfig

    rng = np.random.default_rng(7)
    n = 13_000
    attrs = {"g": rng.choice(["a", "b", "c"], n, p=[0.7, 0.25, 0.05]), "h": rng.choice(["x", "y"], n)}
    masks = group_masks(attrs, intersections=True)
    y = rng.integers(0, 3, n)
    base_logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[y]
    step_logits = base_logits + rng.normal(scale=0.6, size=(n, 3))
    config = StatsConfig(n_boot=300, seed=11, min_group_size=30)

    class Shuffled(InProcessTasks):
        """Tasks come back in a shuffled order, and their number is counted."""

        calls = 0

        def _wait(self, handles):
            Shuffled.calls += 1
            return [handles[int(rng.integers(len(handles)))]]

    results = []
    for runner in (None, Shuffled(boot_rows=2048).bootstrap_runner()):
        ev = Evaluator(masks, y, n, config, runner=runner)
        base = ev.model(softmax(base_logits, axis=1), base_logits.astype(np.float32))
        step = ev.model(softmax(step_logits, axis=1), step_logits.astype(np.float32))
        results.append((ev.compare(step, base), ev.compare(base)))
    assert Shuffled.calls == 7  # ceil(13,000 / 2,048) tasks, each returned once
    in_process, from_tasks = (json.dumps(r, sort_keys=True) for r in results)
    assert from_tasks == in_process
    assert results[0][0]["groups"]["g=c"]["accuracy_delta_ci_bootstrap"] is not None  # the intervals are there to compare
