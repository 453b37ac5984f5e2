"""Re-running an unchanged recipe reuses cached step models and statistics; changes invalidate."""

from __future__ import annotations

import json

from conftest import BASE_RECIPE, run_cli, write_recipe

RAN = (0, 1)  # passed or a gate failed: these tests look at what was measured, not at the verdict

STEPS = """
[[steps]]
kind = "prune"
sparsity = 0.4

[[steps]]
kind = "quantize_static"
"""


def _run(recipe, out, cache, *extra):
    result = run_cli(["run", str(recipe), "--out", str(out), "--cache-dir", str(cache), *extra])
    assert result.exit_code in RAN, result.output
    return json.loads((out / "report.json").read_text())


def test_rerun_hits_cache_and_gives_same_report(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + STEPS)
    first = _run(recipe, tmp_path / "a", tmp_path / "cache")
    assert [s["cache"]["model"] for s in first["steps"]] == ["miss", "miss", "miss"]
    second = _run(recipe, tmp_path / "b", tmp_path / "cache")
    assert [s["cache"] for s in second["steps"]] == [{"model": "hit", "stats": "hit"}] * 3
    for a, b in zip(first["steps"], second["steps"]):
        assert a["sha256"] == b["sha256"] and a["groups"] == b["groups"]


def test_changed_step_config_misses_only_from_that_step(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + STEPS)
    _run(recipe, tmp_path / "a", tmp_path / "cache")
    write_recipe(recipe, BASE_RECIPE + STEPS.replace("kind = \"quantize_static\"", "kind = \"quantize_static\"\nmethod = \"percentile\""))
    again = _run(recipe, tmp_path / "b", tmp_path / "cache")
    assert [s["cache"]["model"] for s in again["steps"]] == ["hit", "hit", "miss"]


def test_torch_step_after_cached_baseline_rebuilds_torch_model(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE)
    _run(recipe, tmp_path / "a", tmp_path / "cache")  # caches only the export
    write_recipe(recipe, BASE_RECIPE + STEPS)
    report = _run(recipe, tmp_path / "b", tmp_path / "cache")
    assert [s["cache"]["model"] for s in report["steps"]] == ["hit", "miss", "miss"]
    assert report["steps"][1]["details"]["achieved_sparsity"] > 0.39


def test_no_cache_flag(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + STEPS)
    _run(recipe, tmp_path / "a", tmp_path / "cache")
    report = _run(recipe, tmp_path / "b", tmp_path / "cache", "--no-cache")
    assert {s["cache"]["model"] for s in report["steps"]} == {"off"}
