"""A run leaves the process as it found it (issue 14, "No process-global side effects"): the root
logger's level, the current folder, the umask and the imported modules belong to the application
that calls edgefair, which may run several pipelines in threads. Real export, quantization (with
onnxruntime's pre-processing) and evaluation of a factory-built model whose code imports a helper
module from its own folder."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import write_recipe

PARTS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 16)
            self.fc2 = nn.Linear(16, 3)

        def forward(self, features):
            return self.fc2(torch.relu(self.fc1(features)))
    """
)
MODEL = textwrap.dedent(
    """
    from pathlib import Path

    import torch

    import netparts  # a helper module beside this file: the user's code too

    with open(Path(__file__).with_name("imports.log"), "a") as log:  # counts how often this file runs
        log.write("imported\\n")


    def build():
        torch.manual_seed(0)
        return netparts.Tiny()
    """
)
RECIPE = """
[model]
source = "net/model.py:build"

[data]
eval = "eval.npz"
calibration = "calib.npz"
groups = ["g", "h"]
min_group_size = 40

[evaluate]
bootstrap = 100

[latency]
warmup = 1
runs = 10
sessions = 1
min_time_s = 0

[[steps]]
kind = "quantize_dynamic"

[[steps]]
kind = "quantize_static"
input = "baseline"
"""


def umask() -> int:
    """The umask, read without changing it (Linux)."""
    m = re.search(r"^Umask:\s*([0-7]+)$", Path("/proc/self/status").read_text(), re.M)
    if not m:
        pytest.skip("no Umask line in /proc/self/status")
    return int(m.group(1), 8)


@pytest.fixture
def factory_recipe(tiny, tmp_path) -> Path:
    for name in ("eval.npz", "calib.npz"):
        (tmp_path / name).symlink_to(tiny / name)
    net = tmp_path / "net"
    net.mkdir()
    (net / "netparts.py").write_text(PARTS)
    (net / "model.py").write_text(MODEL)
    return write_recipe(tmp_path / "r.toml", RECIPE)


def test_a_run_leaves_process_state_as_it_found_it(factory_recipe, tmp_path, monkeypatch):
    from edgefair.cache import Cache
    from edgefair.pipeline import run
    from edgefair.recipe import load_recipe

    root = logging.getLogger()
    level, cwd = root.level, os.getcwd()
    root.setLevel(logging.INFO)  # an application's own choices, which edgefair must keep
    old_mask = os.umask(0o027)
    changes: list[str] = []  # a change a run undoes before it ends is still seen by other threads meanwhile
    for name in ("chdir", "umask"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *a, _real=real, _name=name: (changes.append(_name), _real(*a))[1])
    net = factory_recipe.parent / "net"
    try:
        recipe = load_recipe(factory_recipe)
        cache = Cache(None)  # every run loads the model from its source (a cached export would not)
        run(recipe, tmp_path / "first", cache=cache)  # also imports what a first run needs
        mine = [n for n, m in sys.modules.items() if str(net) in str(getattr(m, "__file__", None) or "")]
        assert mine == []  # model.py and netparts.py are forgotten
        before = set(sys.modules)
        report = run(recipe, tmp_path / "second", cache=cache)
        assert set(sys.modules) == before
        assert root.level == logging.INFO and os.getcwd() == cwd and umask() == 0o027
        assert changes == []
        assert (net / "imports.log").read_text().count("imported") == 2  # each run ran the user's file afresh
        assert [s["name"] for s in report["steps"]] == ["baseline", "quantize_dynamic", "quantize_static"]
        # the files a run writes get the application's umask, applied without changing it
        out = tmp_path / "second"
        assert stat.S_IMODE(out.stat().st_mode) == 0o750
        assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o640}
    finally:
        monkeypatch.undo()
        os.umask(old_mask)
        root.setLevel(level)


THREAD_RECIPE = """
[model]
source = "tiny.onnx"

[data]
eval = "eval.npz"
calibration = "calib.npz"
groups = ["g", "h"]
min_group_size = 40

[evaluate]
bootstrap = 100
seed = {seed}

[latency]
warmup = 1
runs = 10
sessions = 1
min_time_s = 0

[[steps]]
kind = "{kind}"
"""


def statistics(report: dict) -> list:
    """What a run measured, without timings, latency and cache use."""
    return [(s["name"], s["sha256"], s["overall"], s["groups"], s["gates"]) for s in report["steps"]] + [report["verdict"]]


def test_two_pipelines_in_two_threads_match_sequential_runs(tiny, tmp_path):
    """Two runs in two threads of one process (an ONNX source: torch's exporter itself is not
    thread-safe) give the statistics of the same runs one after the other, and each its own folder."""
    import threading

    import numpy as np
    import torch

    from edgefair.cache import Cache
    from edgefair.export import export_onnx
    from edgefair.pipeline import run
    from edgefair.recipe import load_recipe

    module = torch.export.load(str(tiny / "tiny.pt2")).module()
    export_onnx(module, {"features": np.zeros((4, 6), np.float32)}, ["features"], tmp_path / "tiny.onnx")
    for name in ("eval.npz", "calib.npz"):
        (tmp_path / name).symlink_to(tiny / name)
    recipes = [load_recipe(write_recipe(tmp_path / f"r{i}.toml", THREAD_RECIPE.format(seed=i, kind=kind)))
               for i, kind in enumerate(("quantize_static", "quantize_dynamic"))]
    alone = [statistics(run(r, tmp_path / f"alone-{i}", cache=Cache(None))) for i, r in enumerate(recipes)]
    together: list = [None, None]
    errors: list = []

    def work(i: int) -> None:
        try:
            together[i] = statistics(run(recipes[i], tmp_path / f"together-{i}", cache=Cache(None)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert together == alone
    assert alone[0] != alone[1]  # two different runs, not one result twice
    for i in range(2):
        report = json.loads((tmp_path / f"together-{i}" / "report.json").read_text())
        assert statistics(report) == alone[i]
