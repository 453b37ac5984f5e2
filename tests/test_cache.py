"""Re-running an unchanged recipe reuses cached step models and statistics; changes invalidate."""

from __future__ import annotations

import json

import pytest

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
        # in the same order too: a report built from hits reads like one built fresh
        assert json.dumps(a["groups"]) == json.dumps(b["groups"]) and json.dumps(a["gates"]) == json.dumps(b["gates"])


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


# -- what the keys cover: csv feature selection, the modules a factory file imports ----------------


def _csv(path, header, rows):
    import csv

    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def _tiny_csvs(recipe_dir):
    """eval.csv (features f0..f5, label, g) and calib.csv (f0..f5) from the tiny npz files."""
    import numpy as np

    with np.load(recipe_dir / "eval.npz") as z:
        x, y, g = z["features"], z["label"], z["g"]
    with np.load(recipe_dir / "calib.npz") as z:
        c = z["features"]
    names = [f"f{i}" for i in range(6)]
    _csv(recipe_dir / "eval.csv", names + ["label", "g"], [[*map(repr, map(float, x[i])), int(y[i]), g[i]] for i in range(len(y))])
    _csv(recipe_dir / "calib.csv", names, [list(map(repr, map(float, row))) for row in c])


def test_csv_feature_selection_is_part_of_every_key(recipe_dir, tmp_path):
    """Same csv files, other columns fed to the model: export parity, static quantization (which
    calibrates on them) and statistics must all be recomputed, and equal a run without cache."""
    _tiny_csvs(recipe_dir)
    base = (BASE_RECIPE.replace('"eval.npz"', '"eval.csv"').replace('"calib.npz"', '"calib.csv"')
            .replace('groups = ["g", "h"]', 'groups = ["g"]') + '\n[[steps]]\nkind = "quantize_static"\n')
    order = ["f0", "f1", "f2", "f3", "f4", "f5"]
    swapped = ["f3", "f1", "f2", "f0", "f4", "f5"]
    recipe = write_recipe(recipe_dir / "r.toml", base.replace("[data]", f"[data]\nfeatures = {json.dumps(order)}"))
    _run(recipe, tmp_path / "a", tmp_path / "cache")
    write_recipe(recipe, base.replace("[data]", f"[data]\nfeatures = {json.dumps(swapped)}"))
    again = _run(recipe, tmp_path / "b", tmp_path / "cache")
    assert [s["cache"] for s in again["steps"]] == [{"model": "miss", "stats": "miss"}] * 2
    fresh = _run(recipe, tmp_path / "c", tmp_path / "cache", "--no-cache")
    assert again["source"]["parity"] == fresh["source"]["parity"]
    for a, b in zip(again["steps"], fresh["steps"]):
        assert a["sha256"] == b["sha256"] and a["overall"] == b["overall"] and a["groups"] == b["groups"]


FACTORY = """
import torch
from {imports}


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(6, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, 3))

    def forward(self, features):
        return self.body(features)


def build():
    torch.manual_seed(0)
    return Net()
"""


@pytest.mark.parametrize("layout", ["module", "package"])
def test_editing_a_module_the_factory_imports_misses_the_cache(recipe_dir, tmp_path, layout):
    """`model.py:build` takes its hidden width from a helper next to it: editing the helper changes
    the model, so the exported baseline must not come from the cache."""
    import sys

    name = f"helper_{layout}_{tmp_path.name[-8:].replace('-', '_')}"  # unique: not in sys.modules yet
    if layout == "module":
        helper = recipe_dir / f"{name}.py"
        imports = f"{name} import WIDTH"
    else:
        (recipe_dir / name).mkdir()
        (recipe_dir / name / "__init__.py").write_text("")
        helper = recipe_dir / name / "sizes.py"
        imports = f"{name}.sizes import WIDTH"
    helper.write_text("WIDTH = 16\n")
    (recipe_dir / "model.py").write_text(FACTORY.format(imports=imports))
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE.replace('source = "tiny.pt2"', 'source = "model.py:build"'))
    first = _run(recipe, tmp_path / "a", tmp_path / "cache")
    assert _run(recipe, tmp_path / "b", tmp_path / "cache")["steps"][0]["cache"]["model"] == "hit"
    helper.write_text("WIDTH = 4\n")
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]  # this process imported the old helper; a new `edgefair run` would not have
    again = _run(recipe, tmp_path / "c", tmp_path / "cache")
    assert again["steps"][0]["cache"]["model"] == "miss"
    assert again["steps"][0]["sha256"] != first["steps"][0]["sha256"]  # the new width, not the cached model


def test_source_dependencies_follow_local_imports_only(tmp_path):
    from edgefair.source import source_dependencies

    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("from . import layers\n")
    (tmp_path / "pkg" / "layers.py").write_text("from .sub.blocks import Block\nimport numpy\n")
    (tmp_path / "pkg" / "sub" / "blocks.py").write_text("Block = 1\n")  # namespace package 'sub'
    (tmp_path / "helper.py").write_text("import os, json\n")
    (tmp_path / "dyn.py").write_text("X = 1\n")
    (tmp_path / "unused.py").write_text("Y = 1\n")
    (tmp_path / "model.py").write_text(
        "import torch\nimport helper\nfrom pkg import layers\nimport importlib\nimportlib.import_module('dyn')\n"
        "def build():\n    return None\n"
    )
    deps = dict(source_dependencies("model.py:build", base=tmp_path))
    assert sorted(deps) == ["dyn.py", "helper.py", "pkg/__init__.py", "pkg/layers.py", "pkg/sub/blocks.py"]
    assert source_dependencies("tiny.pt2", base=tmp_path) == []
    assert source_dependencies("pkg.layers:build", base=tmp_path) == []  # never cached anyway (identity None)


# -- integrity: a cached entry is checked before it is used ----------------------------------------


@pytest.mark.parametrize("kind", ["export", "step"])
def test_corrupt_cached_model_is_recomputed_with_a_warning(recipe_dir, tmp_path, kind):
    from edgefair.cache import CacheWarning

    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + STEPS)
    cache = tmp_path / "cache"
    _run(recipe, tmp_path / "a", cache)
    entries = sorted((cache / kind).rglob("*.onnx"))
    assert entries
    for entry in entries:  # flip one byte in the middle: weights, still a parseable model or not
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0x01
        entry.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match="corrupt"):
        again = _run(recipe, tmp_path / "b", cache)
    fresh = _run(recipe, tmp_path / "c", cache, "--no-cache")
    index = 0 if kind == "export" else 1
    assert again["steps"][index]["cache"]["model"] == "miss"
    assert any("corrupt" in w for w in again["steps"][index]["warnings"])
    for a, b in zip(again["steps"], fresh["steps"]):
        assert a["sha256"] == b["sha256"] and a["overall"] == b["overall"] and a["groups"] == b["groups"]
    # the entry was rewritten: the next run hits it again, silently
    third = _run(recipe, tmp_path / "d", cache)
    assert [s["cache"]["model"] for s in third["steps"]] == ["hit"] * 3
    assert not any("corrupt" in w for s in third["steps"] for w in s["warnings"])


def test_edited_cached_statistics_are_recomputed(recipe_dir, tmp_path):
    from edgefair.cache import CacheWarning

    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE)
    cache = tmp_path / "cache"
    first = _run(recipe, tmp_path / "a", cache)
    (entry,) = (cache / "stats").rglob("*.json")
    text = entry.read_text()
    accuracy = json.dumps(first["steps"][0]["overall"]["accuracy"])
    assert accuracy in text
    entry.write_text(text.replace(accuracy, "0.5", 1))  # still valid JSON, wrong number
    with pytest.warns(CacheWarning, match="corrupt"):
        again = _run(recipe, tmp_path / "b", cache)
    assert again["steps"][0]["cache"]["stats"] == "miss"
    assert again["steps"][0]["overall"]["accuracy"] == first["steps"][0]["overall"]["accuracy"]


def test_cache_entry_without_its_digest_is_a_plain_miss(tmp_path):
    """A model written without its sha256 (a run killed in between) is incomplete: a miss, no warning."""
    import warnings

    from edgefair.cache import Cache

    cache = Cache(tmp_path / "c")
    src = tmp_path / "m.onnx"
    src.write_bytes(b"model bytes")
    cache.put_file("step", "ab" * 32, src)
    assert cache.get_file("step", "ab" * 32, tmp_path / "out.onnx")
    assert (tmp_path / "out.onnx").read_bytes() == b"model bytes"
    (tmp_path / "c" / "step" / "ab" / f"{'ab' * 32}.onnx.sha256").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not cache.get_file("step", "ab" * 32, tmp_path / "out2.onnx")
    assert not (tmp_path / "out2.onnx").exists() and cache.problems == []


# -- shared by concurrent runs: the lock, the LRU bound, `edgefair cache info/clear` -------------------


def _statistics(report):
    """What two runs of one recipe must agree on: everything but timings, latency and what depends on it."""
    return [{k: s[k] for k in ("name", "sha256", "size_bytes", "overall", "groups", "disparity", "details", "gates")}
            for s in report["steps"]]


def test_two_concurrent_runs_sharing_a_cache_both_succeed_with_identical_statistics(recipe_dir, tmp_path):
    import os
    import subprocess
    import sys

    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + "\n[[steps]]\nkind = 'quantize_dynamic'\n")
    cache = tmp_path / "cache"
    env = {**os.environ, "EDGEFAIR_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-c", "from edgefair.cli import main; main()", "run", str(recipe), "-q"]
    procs = [subprocess.Popen([*cmd, "--out", str(tmp_path / name)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode in RAN, err
        assert "corrupt" not in err and "Traceback" not in err
    a, b = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("a", "b"))
    assert _statistics(a) == _statistics(b)
    assert not list(cache.rglob("*.part"))  # no writer left a temporary behind
    # what they left is complete and verifies: every entry reads back without a CacheWarning
    import warnings

    from edgefair.cache import Cache

    shared = Cache(cache)
    entries = shared.entries()
    assert {e.kind for e in entries} == {"export", "step", "stats"} and not any(e.partial for e in entries)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for e in entries:
            assert shared.get_json(e.kind, e.key) is not None
            if e.kind != "stats":
                assert shared.get_file(e.kind, e.key, tmp_path / f"{e.key}.onnx")


def test_writes_wait_for_the_exclusive_lock(tmp_path):
    """Another process holding the lock (here: another open file of the same lock, as flock sees it)
    keeps a write from starting, and a read from seeing a half-replaced entry."""
    import fcntl
    import threading

    from edgefair.cache import LOCK_NAME, Cache

    cache = Cache(tmp_path / "c")
    cache.put_json("stats", "ab" * 32, {"v": 1})
    done = {}
    with open(tmp_path / "c" / LOCK_NAME, "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        writer = threading.Thread(target=lambda: (cache.put_json("stats", "ab" * 32, {"v": 2}), done.setdefault("w", True)))
        reader = threading.Thread(target=lambda: done.setdefault("r", cache.get_json("stats", "ab" * 32)))
        writer.start()
        reader.start()
        writer.join(0.5)
        reader.join(0.5)
        assert done == {}  # both wait while the lock is held
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    writer.join(10)
    reader.join(10)
    assert done["w"] is True and done["r"] in ({"v": 1}, {"v": 2})
    assert cache.get_json("stats", "ab" * 32) == {"v": 2}


def test_lru_eviction_removes_the_least_recently_used_first(tmp_path):
    import os
    import time

    from edgefair.cache import Cache

    cache = Cache(tmp_path / "c")
    keys = {name: name * 64 for name in "abc"}
    for name, key in keys.items():
        cache.put_json("stats", key, {"payload": name * 1000})
    old = time.time() - 3600
    for i, key in enumerate(keys.values()):  # a used an hour ago, b after it, c last
        os.utime(cache._path("stats", key, "json"), (old + 60 * i, old + 60 * i))
    assert cache.get_json("stats", keys["a"]) == {"payload": "a" * 1000}  # a read: now the most recent
    sizes = {e.key: e.size for e in cache.entries()}
    removed, freed = cache.remove(max_bytes=sizes[keys["a"]] + sizes[keys["c"]])
    assert (removed, freed) == (1, sizes[keys["b"]])
    assert {e.key for e in cache.entries()} == {keys["a"], keys["c"]}
    assert cache.remove(max_bytes=10**9) == (0, 0)


def test_run_evicts_to_the_configured_bound(recipe_dir, tmp_path, monkeypatch):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + STEPS)
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEFAIR_CACHE_MAX_BYTES", "10MB")
    _run(recipe, tmp_path / "a", cache)
    kept = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file() and f.name != ".lock")
    assert 0 < kept <= 10_000_000
    monkeypatch.setenv("EDGEFAIR_CACHE_MAX_BYTES", "1")
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "b"), "--cache-dir", str(cache), "-q"])
    assert result.exit_code in RAN and "evicted" in result.stderr
    assert not [f for f in cache.rglob("*") if f.is_file() and f.name != ".lock"]


def test_bad_cache_bound_is_bad_input(recipe_dir, tmp_path, monkeypatch):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE)
    monkeypatch.setenv("EDGEFAIR_CACHE_MAX_BYTES", "lots")
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.stderr.startswith("Error: EDGEFAIR_CACHE_MAX_BYTES: expected a size")
    assert not (tmp_path / "o").exists()


def test_parse_size_and_age():
    from edgefair.cache import parse_age, parse_size
    from edgefair.errors import EdgefairError

    assert parse_size("2GB", what="x") == 2_000_000_000 and parse_size("500M", what="x") == 500_000_000
    assert parse_size("1GiB", what="x") == 2**30 and parse_size("12345", what="x") == 12345
    assert parse_age("30d") == 30 * 86400 and parse_age("12h") == 43200 and parse_age("90") == 90
    for bad in ("", "2 parsecs", "-1GB"):
        with pytest.raises(EdgefairError, match="x: expected a size"):
            parse_size(bad, what="x")
    with pytest.raises(EdgefairError, match="--older-than"):
        parse_age("1 fortnight")


def test_cache_info_and_clear(recipe_dir, tmp_path):
    import os
    import time

    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE + STEPS)
    cache = tmp_path / "cache"
    _run(recipe, tmp_path / "a", cache)
    files = [f for f in cache.rglob("*") if f.is_file() and f.name != ".lock"]
    keys = {(f.relative_to(cache).parts[0], f.name.split(".")[0]) for f in files}
    info = json.loads(run_cli(["cache", "info", "--json", "--cache-dir", str(cache)]).stdout)
    assert info["location"] == str(cache)
    assert info["entries"] == len(keys) and info["bytes"] == sum(f.stat().st_size for f in files)
    assert info["max_bytes"] == 2_000_000_000
    text = run_cli(["cache", "info", "--cache-dir", str(cache)]).output
    assert f"location: {cache}" in text and f"entries: {len(keys)}," in text

    # entries unused for 40 days, and a temporary a killed writer left, go with --older-than 30d
    old = time.time() - 40 * 86400
    stale = {f for f in files if f.relative_to(cache).parts[0] == "stats"}
    for f in stale:
        os.utime(f, (old, old))
    partial = cache / "step" / "ab" / ".abab.onnx.x1y2.part"
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"half a model")
    result = run_cli(["cache", "clear", "--older-than", "30d", "--cache-dir", str(cache)])
    assert result.exit_code == 0
    n_stale = len({f.name.split(".")[0] for f in stale})
    assert result.output.startswith(f"removed {n_stale + 1} entries not used for 30d")
    assert not any(f.exists() for f in stale) and not partial.exists()
    assert all(f.exists() for f in files if f not in stale)

    assert run_cli(["cache", "clear", "--cache-dir", str(cache)]).exit_code == 0
    assert json.loads(run_cli(["cache", "info", "--json", "--cache-dir", str(cache)]).stdout)["entries"] == 0
    assert run_cli(["cache", "clear", "--older-than", "soon"]).exit_code == 2


def test_unusable_cache_folder_is_bad_input(recipe_dir, tmp_path):
    recipe = write_recipe(recipe_dir / "r.toml", BASE_RECIPE)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "o"), "--cache-dir", str(blocker / "cache")])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: cache: cannot use {blocker / 'cache'}:") and "--no-cache" in result.stderr
    assert not (tmp_path / "o").exists()
