"""Shared fixtures: a tiny real torch model (factory module, safetensors weights, torch.export .pt2)
and small labelled data with two sensitive attributes. Everything is real: no mocks of torch or
onnxruntime anywhere in the suite."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent

TINY_MODULE = textwrap.dedent(
    '''
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self, d: int = 6, h: int = 16, k: int = 3):
            super().__init__()
            self.fc1 = nn.Linear(d, h)
            self.fc2 = nn.Linear(h, k)

        def forward(self, features):
            return self.fc2(torch.relu(self.fc1(features)))


    def build():
        torch.manual_seed(0)
        return Tiny()


    def broken():
        raise RuntimeError("factory exploded")


    def not_a_module():
        return 42


    class Branchy(Tiny):
        """Data-dependent control flow: torch.export cannot trace it."""

        def forward(self, features):
            if features.sum() > 0:
                return self.fc2(torch.relu(self.fc1(features)))
            return self.fc2(self.fc1(features))


    def branchy():
        torch.manual_seed(0)
        return Branchy()
    '''
)


def write_recipe(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def make_tiny_data(rng: np.random.Generator, n: int, model) -> dict[str, np.ndarray]:
    import torch

    x = rng.normal(size=(n, 6)).astype(np.float32)
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    noise = rng.random(n) < 0.15
    label = np.where(noise, rng.integers(0, 3, n), pred).astype(np.int64)
    g = np.where(rng.random(n) < 0.03, "c", np.where(rng.random(n) < 0.5, "a", "b"))
    h = np.where(rng.random(n) < 0.5, "x", "y")
    return {"features": x, "label": label, "g": g.astype("<U1"), "h": h.astype("<U1")}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A folder with tiny_model.py, tiny.safetensors, tiny.pt2, eval.npz, calib.npz."""
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny_model.py").write_text(TINY_MODULE)
    sys.path.insert(0, str(root))
    try:
        import tiny_model  # noqa: F401

        model = tiny_model.build().eval()
    finally:
        sys.path.remove(str(root))
    save_file(model.state_dict(), str(root / "tiny.safetensors"))
    torch.save(model.state_dict(), root / "tiny_state.pt")
    ep = torch.export.export(model, (torch.zeros(4, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(root / "tiny.pt2"))
    rng = np.random.default_rng(0)
    np.savez(root / "eval.npz", **make_tiny_data(rng, 800, model))
    calib = make_tiny_data(rng, 64, model)
    np.savez(root / "calib.npz", features=calib["features"])
    return root


BASE_RECIPE = """
[model]
source = "tiny.pt2"

[data]
eval = "eval.npz"
calibration = "calib.npz"
groups = ["g", "h"]
min_group_size = 40

[evaluate]
bootstrap = 200

[latency]
warmup = 2
runs = 20
min_time_s = 0
"""


@pytest.fixture
def recipe_dir(tiny, tmp_path) -> Path:
    """A writable folder holding links to the tiny assets, for recipes written by a test."""
    for f in tiny.iterdir():
        if f.is_file():
            (tmp_path / f.name).symlink_to(f)
    return tmp_path


@pytest.fixture(scope="session")
def bundled_out(tmp_path_factory) -> Path:
    """One run of the bundled recipe (`edgefair run`, no cache) for the whole session: its output
    folder, with what the terminal printed in ../terminal.txt."""
    out = tmp_path_factory.mktemp("bundled") / "out"
    result = run_cli(["run", "--out", str(out), "--no-cache"])
    assert result.exit_code == 0, result.output
    (out.parent / "terminal.txt").write_text(result.output)
    return out


@pytest.fixture(scope="session")
def digits_out(tmp_path_factory) -> Path:
    """One run of the digits CNN recipe (`edgefair run`, no cache) for the whole session: its
    output folder."""
    out = tmp_path_factory.mktemp("digits") / "out"
    result = run_cli(["run", str(REPO / "calibration_data" / "digits_cnn.toml"), "--out", str(out), "--no-cache"])
    assert result.exit_code == 0, result.output
    return out


def run_cli(args: list[str]):
    from click.testing import CliRunner

    from edgefair.cli import main

    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Tests never share the user's cache; each test session has its own."""
    monkeypatch.setenv("EDGEFAIR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "edgefair-cache"))
