"""Structured pruning and recovery fine-tuning on tiny real models: real torch.export, ONNX export
and onnxruntime, no mocks."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgefair.data import Dataset
from edgefair.errors import RecipeError
from edgefair.config import build
from edgefair.export import export_onnx
from edgefair.runtime import make_session
from edgefair.steps import StepContext
from edgefair.steps.finetune import FinetuneSettings, finetune
from edgefair.steps.prune import PruneConfig, prune_step
from edgefair.steps.structured import channel_importance, select_channels


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 4))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(pixels))


def _data(name: str, shape: tuple[int, ...], n_classes: int, n: int = 64) -> Dataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    y = rng.integers(0, n_classes, size=n).astype(np.int64)
    return Dataset(Path("mem.npz"), {name: x}, y, {})


def _randomize_bn(model: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running stats, so slicing them matters
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
    return model.eval()


def _run(model, data: Dataset, tmp: Path, cfg: PruneConfig, train: Dataset | None = None):
    name = next(iter(data.inputs))

    def export(module, dst: Path) -> None:
        export_onnx(module, {name: data.inputs[name][:4]}, [name], dst)

    src = tmp / "base.onnx"
    export(model, src)
    ctx = StepContext(torch_model=model, calibration=data, train=train, export=export, workdir=tmp, seed=0)
    dst = tmp / "pruned.onnx"
    return src, dst, prune_step(cfg, src, dst, ctx)


def _initializer_shapes(path: Path) -> list[tuple[int, ...]]:
    return sorted(tuple(i.dims) for i in onnx.load(str(path)).graph.initializer if len(i.dims) >= 1)


def _agree(model, path: Path, data: Dataset) -> None:
    name, x = next(iter(data.inputs.items()))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = make_session(path, threads=1).run(None, {name: x})[0]
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_linear_shapes_shrink_in_onnx(tmp_path):
    data = _data("features", (6,), 3)
    src, dst, out = _run(MLP().eval(), data, tmp_path, PruneConfig(sparsity=0.5, structured=True))
    assert out.details["engine"] == "torch-pruning"
    assert (6, 16) not in _initializer_shapes(dst)
    weights = [s for s in _initializer_shapes(dst) if len(s) == 2]
    # Linear(6,16)->8 neurons, Linear(16,8)->(8 in, 4 out), final Linear(8,3) keeps its 3 outputs
    assert sorted(weights) == [(3, 4), (4, 8), (8, 6)]  # Gemm(transB=1): (out, in)
    assert out.details["channels"] == {"net.0.weight": [16, 8], "net.2.weight": [8, 4]}
    assert out.details["skipped"] == {"net.4.weight": "feeds the model output"}
    assert dst.stat().st_size < src.stat().st_size
    _agree(out.torch_model, dst, data)


def test_conv_bn_shapes_shrink_and_outputs_agree(tmp_path):
    data = _data("pixels", (1, 8, 8), 4)
    model = _randomize_bn(CNN())
    reference = copy.deepcopy(model.state_dict())
    src, dst, out = _run(model, data, tmp_path, PruneConfig(sparsity=0.5, structured=True))
    shapes = _initializer_shapes(dst)
    assert (4, 1, 3, 3) in shapes and (8, 4, 3, 3) in shapes  # conv1 8->4 out, conv2 (16->8 out, 8->4 in)
    assert out.details["channels"] == {"body.0.weight": [8, 4], "body.3.weight": [16, 8], "head.1.weight": [12, 6]}
    pruned = out.torch_model
    assert pruned.body[1].num_features == 4 and pruned.body[4].running_mean.shape == (8,)
    assert pruned.head[1].in_features == 8 * 16 and pruned.head[3].in_features == 6
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in reference.items()}  # input untouched
    _agree(pruned, dst, data)
    probs = make_session(dst, threads=1).run(None, {"pixels": data.inputs["pixels"]})[0]
    assert np.isfinite(probs).all()


def test_kept_channels_compute_what_they_computed_before(tmp_path):
    """Without fine-tuning, each kept conv channel's activations equal the unpruned model's."""
    data = _data("pixels", (1, 8, 8), 4)
    model = _randomize_bn(CNN())
    _, _, out = _run(model, data, tmp_path, PruneConfig(sparsity=0.5, structured=True))
    x = torch.from_numpy(data.inputs["pixels"])
    keep = select_channels([channel_importance(model.body[0].weight.detach().numpy(), "l1")], 0.5, "layer")[0]
    with torch.no_grad():
        full = model.body[:3](x)[:, keep]
        small = out.torch_model.body[:3](x)
    torch.testing.assert_close(small, full)


def test_pt2_graph_module_path(tmp_path):
    data = _data("features", (6,), 3)
    torch.manual_seed(0)
    program = torch.export.export(MLP().eval(), (torch.from_numpy(data.inputs["features"][:4]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "mlp.pt2"
    torch.export.save(program, str(path))
    gm = torch.export.load(str(path)).module()
    _, dst, out = _run(gm, data, tmp_path, PruneConfig(sparsity=0.5, structured=True, finetune_epochs=2, distill=True), train=data)
    assert out.details["channels"] == {"net.0.weight": [16, 8], "net.2.weight": [8, 4]}
    assert out.details["engine"] == "graph"  # an exported program has no layer modules for Torch-Pruning
    assert dict(gm.named_parameters())["net.0.weight"].shape == (16, 6)  # the input module is untouched
    _agree(out.torch_model, dst, data)
    batch = make_session(dst, threads=1).run(None, {"features": data.inputs["features"][:1]})[0]
    assert batch.shape == (1, 3)  # batch axis still dynamic


def test_finetune_is_deterministic():
    data = _data("pixels", (1, 8, 8), 4)
    settings = FinetuneSettings(epochs=2, lr=1e-2, batch_size=16, seed=3)
    results = []
    for _ in range(2):
        torch.manual_seed(123)  # different init each time would show up below; same init here
        model = _randomize_bn(CNN())
        teacher = _randomize_bn(CNN())
        torch.manual_seed(999 if results else 5)  # global RNG state must not matter
        finetune(model, data.inputs, data.labels, ["pixels"], settings, teacher=teacher)
        results.append({k: v.clone() for k, v in model.state_dict().items()})
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k
    assert not model.training


def _learnable_task(n: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """3 classes from a fixed nonlinear function of 6 features: an MLP learns it well."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    w = rng.normal(size=(6, 3))
    y = (x @ w + 0.5 * np.sin(2 * x[:, :3])).argmax(axis=1).astype(np.int64)
    return x, y


def _accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    return float((make_session(path, threads=1).run(None, {"features": x})[0].argmax(axis=1) == y).mean())


def test_finetune_recovers_accuracy_lost_to_pruning(tmp_path):
    """Structured pruning of 75% of a trained MLP's hidden neurons costs accuracy on held-out rows;
    fine-tuning on the training rows wins most of it back (measured on the exported ONNX models)."""
    x, y = _learnable_task()
    train = Dataset(Path("train.npz"), {"features": x[:512]}, y[:512], {})
    x_test, y_test = x[512:], y[512:]
    torch.manual_seed(0)
    model = MLP()  # trained like any model first (deterministic, one thread)
    finetune(model, train.inputs, train.labels, ["features"], FinetuneSettings(epochs=40, lr=1e-2, batch_size=64, seed=0))
    (tmp_path / "plain").mkdir()
    (tmp_path / "tuned").mkdir()
    src, plain_dst, _ = _run(model, train, tmp_path / "plain", PruneConfig(sparsity=0.75, structured=True))
    _, tuned_dst, tuned = _run(model, train, tmp_path / "tuned",
                               PruneConfig(sparsity=0.75, structured=True, finetune_epochs=20, lr=3e-2), train=train)
    full, plain, recovered = (_accuracy(p, x_test, y_test) for p in (src, plain_dst, tuned_dst))
    assert full > 0.85, full  # the task is learnt
    assert plain < full - 0.2, (full, plain)  # and pruning alone loses much of it
    assert recovered > plain + 0.2 and recovered > full - 0.05, (full, plain, recovered)  # 0.47 -> 0.93 of 0.94 here
    assert len(tuned.details["finetune"]["loss"]) == 20
    _agree(tuned.torch_model, tuned_dst, train)


@pytest.mark.parametrize(
    "table, message",
    [
        ({"sparsity": 0.5, "finetune_epochs": 2}, "steps[0].finetune_epochs: recovery fine-tuning needs structured = true"),
        ({"sparsity": 0.5, "structured": True, "distill": True}, "steps[0].distill: needs finetune_epochs > 0"),
        ({"sparsity": 0.5, "structured": True, "importance": "l3"}, "steps[0].importance: must be one of 'l1', 'l2'"),
    ],
)
def test_config_errors(table, message):
    with pytest.raises(RecipeError) as e:
        build(PruneConfig, table, "steps[0]")
    assert str(e.value).startswith(message)


def test_global_scope_keeps_a_channel_per_layer():
    keeps = select_channels([np.array([1.0, 2.0, 3.0, 4.0]), np.array([100.0, 0.001, 0.002])], 0.5, "global")
    assert all(len(k) >= 1 for k in keeps)
    assert sum(len(k) for k in keeps) == 3  # round(0.5 * 7) = 4 removed
    assert keeps[1].tolist() == [0]  # per-layer normalization: the big layer keeps only its dominant channel


def test_layer_called_twice_is_left_whole(tmp_path):
    """head(relu(f1(a))) + head(relu(f2(a))): one slicing of head's columns cannot serve both calls."""
    import pytest
    import torch

    from edgefair.errors import StepError
    from edgefair.steps.structured import find_groups, trace_graph

    class Shared(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.f1, self.f2, self.head = torch.nn.Linear(4, 16), torch.nn.Linear(4, 16), torch.nn.Linear(16, 2)

        def forward(self, a):
            return self.head(torch.relu(self.f1(a))) + self.head(torch.relu(self.f2(a)))

    groups, skipped = find_groups(trace_graph(Shared().eval(), (torch.zeros(2, 4),)))
    assert groups == []
    assert "more than one call" in skipped["f1.weight"] and "more than one call" in skipped["f2.weight"]


def test_view_flatten_idiom_is_pruned_through(tmp_path):
    """h.view(h.size(0), -1) before the classifier is the common CNN head: prune through it."""
    import torch

    from edgefair.steps.structured import find_groups, trace_graph

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8 * 4 * 4, 3)

        def forward(self, x):
            h = torch.relu(self.c(x))
            return self.fc(h.view(h.size(0), -1))

    groups, skipped = find_groups(trace_graph(Head().eval(), (torch.zeros(2, 1, 4, 4),)))
    assert [g.weight for g in groups] == ["c.weight"], skipped
    assert groups[0].consumers == [("fc.weight", 0)]


def test_finetune_trains_a_probability_output_model_through_log_probabilities():
    """A model ending in softmax must not be softmaxed again by the loss: the first epoch's loss is
    the cross-entropy of its own probabilities (lr ~ 0 keeps the weights where they were)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from edgefair.steps.finetune import FinetuneSettings, finetune

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=1))
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 64)
    with torch.no_grad():
        expected = F.nll_loss(torch.log(model(torch.from_numpy(x))), torch.from_numpy(y)).item()
    out = finetune(model, {"x": x}, y, ["x"], FinetuneSettings(epochs=1, lr=1e-12, batch_size=64, seed=0), probabilities=True)
    assert out["loss"][0] == pytest.approx(expected, rel=1e-5)


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


class TinyResNet(nn.Module):
    """Stem, two residual blocks with identity shortcuts, global average pool, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.block1, self.block2 = Block(8), Block(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.block2(self.block1(torch.relu(self.bn(self.stem(pixels)))))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1))


RESIDUAL = ["stem.weight", "block1.c2.weight", "block2.c2.weight"]  # their outputs meet in the adds


def test_residual_adds_couple_their_producers():
    from edgefair.steps.structured import find_groups, trace_graph

    groups, skipped = find_groups(trace_graph(TinyResNet().eval(), (torch.zeros(2, 1, 8, 8),)))
    assert skipped == {"fc.weight": "feeds the model output"}
    by_first = {g.weight: g for g in groups}
    coupled = by_first["stem.weight"]
    assert coupled.weights == RESIDUAL
    assert sorted(w for w, _ in coupled.consumers) == ["block1.c1.weight", "block2.c1.weight", "fc.weight"]
    assert sorted(coupled.norm) == sorted(f"{m}.{t}" for m in ("bn", "block1.b2", "block2.b2")
                                          for t in ("weight", "bias", "running_mean", "running_var"))
    assert sorted(by_first) == ["block1.c1.weight", "block2.c1.weight", "stem.weight"]


def test_residual_network_prunes_to_the_same_channels_everywhere(tmp_path):
    """Channels 1 and 5 are dead in every producer feeding the residual stream (zero weights, zero
    BatchNorm affine): removing them from all of them at once must leave the outputs unchanged. An
    index mismatch between the coupled layers would change them."""
    data = _data("pixels", (1, 8, 8), 4)
    model = _randomize_bn(TinyResNet())
    dead = [1, 5]
    with torch.no_grad():
        for conv, bn in ((model.stem, model.bn), (model.block1.c2, model.block1.b2), (model.block2.c2, model.block2.b2)):
            conv.weight[dead] = 0.0
            bn.weight[dead], bn.bias[dead] = 0.0, 0.0
    cfg = PruneConfig(sparsity=0.25, structured=True, exclude=["block1.c1.weight", "block2.c1.weight"])
    _, dst, out = _run(model, data, tmp_path, cfg)
    assert out.details["channels"] == {w: [8, 6] for w in RESIDUAL}
    pruned = out.torch_model
    assert pruned.fc.in_features == 6 and pruned.block1.c1.in_channels == 6 and pruned.block2.c2.out_channels == 6
    x = torch.from_numpy(data.inputs["pixels"])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-5, atol=1e-5)
    _agree(pruned, dst, data)


def test_residual_add_with_the_model_input_is_left_whole():
    from edgefair.steps.structured import find_groups, trace_graph

    class InputShortcut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(x + self.a(x)))  # a's channels are added to the input's: fixed

    groups, skipped = find_groups(trace_graph(InputShortcut().eval(), (torch.zeros(2, 4),)))
    assert groups == [] and skipped["a.weight"] == "feeds add"


def test_residual_coupling_in_a_pt2_program(tmp_path):
    data = _data("pixels", (1, 8, 8), 4)
    program = torch.export.export(_randomize_bn(TinyResNet()), (torch.from_numpy(data.inputs["pixels"][:4]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(tmp_path / "r.pt2"))
    gm = torch.export.load(str(tmp_path / "r.pt2")).module()
    _, dst, out = _run(gm, data, tmp_path, PruneConfig(sparsity=0.5, structured=True))
    assert {w: out.details["channels"][w] for w in RESIDUAL} == {w: [8, 4] for w in RESIDUAL}
    _agree(out.torch_model, dst, data)


class TinyMobileNet(nn.Module):
    """Pointwise -> depthwise -> pointwise (MobileNet's separable block), pool, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.pw1, self.bn1 = nn.Conv2d(1, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.pw2, self.bn3 = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.pw1(pixels)))
        h = torch.relu(self.bn2(self.dw(h)))
        h = torch.relu(self.bn3(self.pw2(h)))
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1))


def _dead_mobilenet() -> nn.Module:
    """Channels 2 and 6 of pw1 are dead through the depthwise conv: removing them changes nothing."""
    model = _randomize_bn(TinyMobileNet())
    with torch.no_grad():
        model.pw1.weight[[2, 6]] = 0.0
        for bn in (model.bn1, model.bn2):
            bn.weight[[2, 6]], bn.bias[[2, 6]] = 0.0, 0.0
    return model


@pytest.mark.parametrize("source", ["module", "pt2"])
def test_depthwise_conv_shrinks_with_the_channels_it_reads(tmp_path, source):
    data = _data("pixels", (1, 8, 8), 4)
    model = _dead_mobilenet()
    reference = copy.deepcopy(model)
    if source == "pt2":
        program = torch.export.export(model, (torch.from_numpy(data.inputs["pixels"][:4]),),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
        torch.export.save(program, str(tmp_path / "m.pt2"))
        model = torch.export.load(str(tmp_path / "m.pt2")).module()
    cfg = PruneConfig(sparsity=0.25, structured=True, exclude=["pw2.weight"])
    _, dst, out = _run(model, data, tmp_path, cfg)
    assert out.details["channels"] == {"pw1.weight": [8, 6]}
    pruned = out.torch_model
    assert dict(pruned.named_parameters())["dw.weight"].shape == (6, 1, 3, 3)
    assert dict(pruned.named_parameters())["pw2.weight"].shape == (16, 6, 1, 1)
    x = torch.from_numpy(data.inputs["pixels"])
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), reference(x), rtol=1e-5, atol=1e-5)
    _agree(pruned, dst, data)
    conv_groups = [a.i for n in onnx.load(str(dst)).graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert 6 in conv_groups  # the depthwise Conv node now has 6 groups


def test_excluding_a_depthwise_conv_keeps_the_channels_it_reads(tmp_path):
    data = _data("pixels", (1, 8, 8), 4)
    _, _, out = _run(_dead_mobilenet(), data, tmp_path, PruneConfig(sparsity=0.25, structured=True, exclude=["dw.weight"]))
    assert "pw1.weight" not in out.details["channels"]
    assert out.details["skipped"]["pw1.weight"] == "shares its channels with dw.weight, which is excluded"
    assert dict(out.torch_model.named_parameters())["dw.weight"].shape == (8, 1, 3, 3)


def _skipped(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    from edgefair.steps.structured import find_groups, trace_graph

    return find_groups(trace_graph(model.eval(), (example,)))[1]


def test_broadcast_add_does_not_couple_layers_of_different_widths():
    class Broadcast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Linear(6, 1), nn.Linear(6, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.b(x) + self.a(x)))  # (N, 8) + (N, 1): a broadcast

    skipped = _skipped(Broadcast(), torch.zeros(2, 6))
    assert skipped["a.weight"] == skipped["b.weight"] == "feeds add"


def test_batch_norm_shared_by_two_layers_is_left_whole():
    class SharedNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.bn = nn.Linear(6, 8), nn.Linear(6, 8), nn.BatchNorm1d(8)
            self.ha, self.hb = nn.Linear(8, 2), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.ha(self.bn(self.a(x))) + self.hb(self.bn(self.b(x)))

    skipped = _skipped(SharedNorm(), torch.zeros(2, 6))
    assert "more than one call" in skipped["a.weight"] and "more than one call" in skipped["b.weight"]


def test_reshape_that_folds_channels_into_the_batch_is_not_a_flatten():
    class PerChannelHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(16, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.c(x))
            return self.fc(h.reshape(h.shape[0] * 4, -1)).reshape(h.shape[0], -1)

    assert _skipped(PerChannelHead(), torch.zeros(2, 1, 4, 4))["c.weight"] == "feeds reshape"


def test_conv_transpose_sizes_stay_right():
    from edgefair.steps.structured import _sync_module_sizes

    up = nn.ConvTranspose2d(3, 5, 2, stride=2)
    _sync_module_sizes(nn.Sequential(up))
    assert (up.in_channels, up.out_channels) == (3, 5)


def test_pt2_exported_for_one_batch_size_is_traced_at_that_size(tmp_path):
    data = _data("features", (6,), 3)
    program = torch.export.export(MLP().eval(), (torch.from_numpy(data.inputs["features"][:4]),))  # batch fixed at 4
    torch.export.save(program, str(tmp_path / "fixed.pt2"))
    gm = torch.export.load(str(tmp_path / "fixed.pt2")).module()
    name = "features"
    src, dst = tmp_path / "base.onnx", tmp_path / "pruned.onnx"
    export = lambda module, path: export_onnx(module, {name: data.inputs[name][:4]}, [name], path)  # noqa: E731
    export(gm, src)
    ctx = StepContext(torch_model=gm, calibration=data, train=None, export=export, workdir=tmp_path, seed=0)
    out = prune_step(PruneConfig(sparsity=0.5, structured=True), src, dst, ctx)
    assert out.details["channels"] == {"net.0.weight": [16, 8], "net.2.weight": [8, 4]}


def test_concatenated_channels_are_left_whole():
    class Concat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(torch.cat([self.a(x), self.b(x)], dim=1)))

    skipped = _skipped(Concat(), torch.zeros(2, 4))
    assert skipped["a.weight"] == skipped["b.weight"] == "feeds cat"
