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
