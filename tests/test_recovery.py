"""Recovery after structured pruning without labels (distillation on calibration inputs) and with
group-aware row weights. Real torch, torch.export, ONNX export and onnxruntime on tiny MLPs; all
agreement and accuracy figures are measured on HELD-OUT rows the recovery never saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import BASE_RECIPE, make_tiny_data, run_cli, write_recipe
from edgefair.config import build
from edgefair.data import load
from edgefair.errors import RecipeError, StepError
from edgefair.export import export_onnx
from edgefair.runtime import make_session
from edgefair.steps import StepContext
from edgefair.steps.finetune import FinetuneSettings, finetune
from edgefair.steps.prune import PruneConfig, prune_step


class MLP(nn.Module):
    def __init__(self, h1: int = 64, h2: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(), nn.Linear(h2, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def _trained(x: np.ndarray, y: np.ndarray) -> MLP:
    """The fp32 model: trained on labels once (deterministic, one thread); recovery never sees labels."""
    torch.manual_seed(0)
    model = MLP()
    finetune(model, {"features": x}, y, ["features"], FinetuneSettings(epochs=40, lr=1e-2, batch_size=64, seed=0))
    return model.eval()


def _prune(model, tmp: Path, cfg: PruneConfig, *, calibration=None, train=None, groups=()):
    tmp.mkdir(parents=True, exist_ok=True)
    example = (calibration or train).inputs["features"][:4]

    def export(module, dst: Path) -> None:
        export_onnx(module, {"features": example}, ["features"], dst)

    src, dst = tmp / "base.onnx", tmp / "pruned.onnx"
    export(model, src)
    ctx = StepContext(torch_model=model, calibration=calibration, train=train, export=export, workdir=tmp, seed=0, groups=groups)
    return src, dst, prune_step(cfg, src, dst, ctx)


def _pred(path: Path, x: np.ndarray) -> np.ndarray:
    return make_session(path, threads=1).run(None, {"features": x})[0].argmax(axis=1)


def _write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def _calibration(path: Path, groups=()):
    """Loaded as the pipeline loads data.calibration: no labels, no group columns."""
    return load(path, key="data.calibration", label=None, groups=(), ignore=("label", *groups))


# --- (a) label-free distillation -----------------------------------------------------------------

def _task(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    w = np.random.default_rng(0).normal(size=(6, 3))
    return x, (x @ w + 0.5 * np.sin(2 * x[:, :3])).argmax(axis=1).astype(np.int64)


def test_label_free_distillation_on_calibration_inputs_recovers_held_out_agreement(tmp_path):
    """75% of the hidden neurons removed: the pruned MLP agrees with fp32 on 56% of held-out rows;
    30 epochs of distillation on 512 unlabelled calibration inputs bring it to 94% (measured on
    the exported ONNX models). No labels are used: no data.train, and the calibration file's label
    column (all zeros here, which would wreck the model if trained on) is never read."""
    x, y = _task(1024, seed=0)
    model = _trained(x, y)
    x_cal, _ = _task(512, seed=1)
    # a label column of nonsense (all 0) that the pipeline's loader picks up: label-free recovery never reads it
    calib = _calibration(_write_npz(tmp_path / "calib.npz", features=x_cal, label=np.zeros(512, np.int64)))
    assert calib.labels is not None
    x_held, _ = _task(1024, seed=2)
    src, plain, _ = _prune(model, tmp_path / "plain", PruneConfig(sparsity=0.75, structured=True), calibration=calib)
    cfg = PruneConfig(sparsity=0.75, structured=True, finetune_epochs=30, lr=1e-2, distill=True, temperature=2.0,
                      recovery_data="calibration")
    _, tuned, out = _prune(model, tmp_path / "kd", cfg, calibration=calib)
    base = _pred(src, x_held)
    before, after = (float((_pred(p, x_held) == base).mean()) for p in (plain, tuned))
    assert before < 0.7 and after > 0.9, (before, after)  # 0.56 -> 0.96 here
    ft = out.details["finetune"]
    assert ft["data"] == "data.calibration" and ft["file"] == "calib.npz" and ft["rows"] == 512
    assert ft["labels_used"] is False and ft["distilled"] is True and ft["distill_loss"] == "kl"
    assert ft["teacher_agreement"]["after"] > ft["teacher_agreement"]["before"]
    assert not any("not fine-tuned" in w for w in out.warnings)


def test_a_recovery_that_fails_says_so_plainly(tmp_path):
    """The README: where recovery cannot bring a pruned model back, the report says so. 7/8 of the
    neurons gone and one epoch at a tiny learning rate: the student stays far from the teacher."""
    x, y = _task(1024, seed=0)
    model = _trained(x, y)
    calib = _calibration(_write_npz(tmp_path / "calib.npz", features=_task(256, seed=1)[0]))
    cfg = PruneConfig(sparsity=0.875, structured=True, finetune_epochs=1, lr=1e-6, distill=True, recovery_data="calibration")
    _, _, out = _prune(model, tmp_path / "weak", cfg, calibration=calib)
    agree = out.details["finetune"]["teacher_agreement"]
    assert agree["after"] < 0.9
    assert [w for w in out.warnings if w.startswith("recovery did not bring the pruned model back")], out.warnings
    # and a recovery that works says nothing of the kind
    good = PruneConfig(sparsity=0.5, structured=True, finetune_epochs=30, lr=1e-2, distill=True, recovery_data="calibration")
    _, _, ok = _prune(model, tmp_path / "good", good, calibration=calib)
    assert ok.details["finetune"]["teacher_agreement"]["after"] >= 0.9
    assert not [w for w in ok.warnings if w.startswith("recovery did not")]


def test_auto_recovers_on_calibration_when_there_is_no_train_data(tmp_path):
    """recovery_data = "auto" (the default): data.train when given, else calibration inputs with distill."""
    x, y = _task(256, seed=0)
    model = _trained(x, y)
    calib = _calibration(_write_npz(tmp_path / "calib.npz", features=_task(128, seed=1)[0]))
    cfg = PruneConfig(sparsity=0.5, structured=True, finetune_epochs=2, distill=True)
    _, _, out = _prune(model, tmp_path / "auto", cfg, calibration=calib)
    assert out.details["finetune"]["data"] == "data.calibration" and out.details["finetune"]["labels_used"] is False
    train = load(_write_npz(tmp_path / "train.npz", features=x, label=y), key="data.train", label=None, groups=(), require_labels=True)
    _, _, out = _prune(model, tmp_path / "train", cfg, calibration=calib, train=train)
    assert out.details["finetune"]["data"] == "data.train" and out.details["finetune"]["labels_used"] is True
    assert out.details["finetune"]["rows"] == 256


def test_label_free_recovery_is_deterministic(tmp_path):
    x, y = _task(256, seed=0)
    model = _trained(x, y)
    x_cal = _task(128, seed=1)[0]
    calib = _calibration(_write_npz(tmp_path / "calib.npz", features=x_cal, g=np.where(x_cal[:, 0] > 1, "s", "l")))
    cfg = PruneConfig(sparsity=0.5, structured=True, finetune_epochs=3, distill=True, recovery_data="calibration",
                      recovery_weighting="disagreement")
    states = []
    for i in range(2):
        torch.manual_seed(100 + i)  # the global RNG state must not matter
        _, _, out = _prune(model, tmp_path / f"run{i}", cfg, calibration=calib)
        states.append(out.torch_model.state_dict())
        assert len(out.details["finetune"]["disagreement_per_epoch"]) == 3
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


# --- (b) group-aware recovery ----------------------------------------------------------------------

W = np.random.default_rng(0).normal(size=(2, 6, 3))


def _two_groups(n: int, small_share: float, seed: int):
    """A large group and a small one in a region of its own (feature 0 shifted by 3) with a different,
    nonlinear rule."""
    rng = np.random.default_rng(seed)
    small = rng.random(n) < small_share
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[small, 0] += 3.0
    y = np.where(small, (np.sin(2 * x) @ W[1]).argmax(1), (x @ W[0] + 0.5 * np.sin(2 * x[:, :3])).argmax(1))
    return x, y.astype(np.int64), np.where(small, "small", "large").astype("<U5")


def test_group_weighting_raises_the_small_groups_held_out_agreement(tmp_path):
    """The fp32 model learnt both groups (half the training rows each); the calibration rows hold
    3% of the small group (15 of 512). Pruned to 1/8 of its hidden neurons and distilled on them
    unweighted, the student serves the large group and agrees with fp32 on 45.1% of the small
    group's held-out rows; with every group weighing the same (rows capped at 5x the mean: the
    small cell's would be 17x) it agrees on 49.2% (the large group pays 0.3 points: 90.4% -> 90.15%;
    uncapped: 52.0%, at 1.1 points). Measured on 2,000 held-out rows per group."""
    x, y, _ = _two_groups(4000, 0.5, seed=1)
    model = _trained(x, y)
    x_cal, y_cal, g_cal = _two_groups(512, 0.03, seed=2)
    # the group column is read from the file by name: the pipeline loads calibration data without it
    calib = _calibration(_write_npz(tmp_path / "calib.npz", features=x_cal, label=y_cal, g=g_cal), groups=("g",))
    assert calib.attributes == {}
    x_held, _, g_held = _two_groups(4000, 0.5, seed=3)
    agreement = {}
    for weighting in ("none", "groups"):
        cfg = PruneConfig(sparsity=0.875, structured=True, finetune_epochs=30, lr=1e-2, distill=True, temperature=2.0,
                          recovery_data="calibration", recovery_weighting=weighting)
        src, dst, out = _prune(model, tmp_path / weighting, cfg, calibration=calib, groups=("g",))
        base, pred = _pred(src, x_held), _pred(dst, x_held)
        agreement[weighting] = {k: float((pred == base)[g_held == k].mean()) for k in ("large", "small")}
    ft = out.details["finetune"]
    assert ft["weighting"] == "groups" and ft["cells"] == 2 and ft["smallest_cell"] == {"cell": "g=small", "rows": 15}
    assert ft["max_row_weight"] == pytest.approx(5.0) and ft["weight_cap"] == 5.0 and ft["capped_rows"] == 15  # 17.07 uncapped
    none, groups = agreement["none"], agreement["groups"]
    assert min(none.values()) == none["small"] and min(groups.values()) == groups["small"]  # the worst group
    assert groups["small"] > none["small"] + 0.03, agreement  # 0.451 -> 0.4915 here
    assert groups["large"] > none["large"] - 0.03, agreement  # the price: about a point


def test_group_weights_give_every_cell_the_same_total(tmp_path):
    from edgefair.steps.prune import group_weights

    calib = _calibration(_write_npz(tmp_path / "c.npz", features=np.zeros((10, 6), np.float32),
                                    a=np.array(list("xxxxxxxyyy")), b=np.array(list("pqpqpqpqpp"))), groups=("a", "b"))
    w, info = group_weights(calib, ("a", "b"), "data.calibration")
    cells = [f"{a}{b}" for a, b in zip("xxxxxxxyyy", "pqpqpqpqpp")]
    totals = {c: w[[i for i, k in enumerate(cells) if k == c]].sum() for c in set(cells)}
    assert np.allclose(list(totals.values()), 10 / 4) and w.mean() == pytest.approx(1.0)
    assert info["cells"] == 4 and info["smallest_cell"] == {"cell": "a=y&b=q", "rows": 1}


@pytest.mark.parametrize("cap", [1.0, 1.5, 2.0, 5.0, 50.0])
def test_capped_group_weights_keep_mean_one_and_order(cap):
    """Trimming: no weight above the cap, mean 1, and the weights' order is kept (a smaller cell's
    row never weighs less than a larger cell's)."""
    from edgefair.steps.prune import capped_mean_one

    counts = np.array([1] * 2 + [3] * 6 + [20] * 40 + [452] * 452)  # cells of 2, 6, 40 and 452 rows
    w = capped_mean_one(1.0 / counts, cap)
    assert w.mean() == pytest.approx(1.0) and w.max() <= cap * (1 + 1e-9)
    order = np.argsort(counts, kind="stable")
    assert np.all(np.diff(w[order]) <= 1e-12)  # non-increasing in cell size
    uncapped = capped_mean_one(1.0 / counts, np.inf)
    if cap >= uncapped.max():
        assert np.allclose(w, uncapped)
    if cap == 1.0:
        assert np.allclose(w, 1.0)  # a cap of 1 is no weighting at all


# --- through the pipeline ----------------------------------------------------------------------------

def test_pipeline_recovery_on_calibration(recipe_dir, tmp_path):
    """A recipe with no data.train: the structured step distils on the calibration file's inputs,
    weighting by the recipe's groups, read from that file by name."""
    cal = make_tiny_data(np.random.default_rng(5), 256, _tiny_module(recipe_dir))
    np.savez(recipe_dir / "calib_groups.npz", **cal)
    text = BASE_RECIPE.replace('calibration = "calib.npz"', 'calibration = "calib_groups.npz"') + """
[[steps]]
name = "structured"
kind = "prune"
structured = true
sparsity = 0.5
finetune_epochs = 3
distill = true
recovery_data = "calibration"
recovery_weighting = "groups"
"""
    out = tmp_path / "out"
    result = run_cli(["run", str(write_recipe(recipe_dir / "r.toml", text)), "--out", str(out), "-q", "--no-cache"])
    assert result.exit_code in (0, 1), result.output
    step = next(s for s in json.loads((out / "report.json").read_text())["steps"] if s["name"] == "structured")
    ft = step["details"]["finetune"]
    assert ft["data"] == "data.calibration" and ft["rows"] == 256 and ft["labels_used"] is False
    assert ft["weighting_groups"] == ["g", "h"] and ft["cells"] == 6


def _tiny_module(root: Path):
    import sys

    sys.path.insert(0, str(root))
    try:
        import tiny_model

        return tiny_model.build().eval()
    finally:
        sys.path.remove(str(root))


# --- (c) config and data errors ---------------------------------------------------------------------

@pytest.mark.parametrize(
    "table, message",
    [
        ({"recovery_data": "eval"}, "steps[0].recovery_data: must be one of 'auto', 'train', 'calibration'"),
        ({"recovery_weighting": "fair"}, "steps[0].recovery_weighting: must be one of 'none', 'groups', 'disagreement'"),
        ({"distill_loss": "l1"}, "steps[0].distill_loss: must be one of"),
        ({"disagreement_weight": 0.5, "recovery_weighting": "disagreement"}, "steps[0].disagreement_weight: must be >= 1"),
        ({"finetune_epochs": 0, "distill": False, "recovery_data": "calibration"}, "steps[0].recovery_data: applies to recovery fine-tuning"),
        ({"finetune_epochs": 0, "distill": False, "recovery_weighting": "groups"}, "steps[0].recovery_weighting: applies to recovery fine-tuning"),
        ({"distill": False, "recovery_data": "calibration"}, "steps[0].recovery_data: the calibration rows carry no labels"),
        ({"distill": False, "distill_loss": "mse"}, "steps[0].distill_loss: needs distill = true"),
        ({"distill_loss": "mse", "recovery_weighting": "disagreement"}, "steps[0].recovery_weighting: 'disagreement' compares predicted classes"),
        ({"recovery_groups": ["sex"]}, "steps[0].recovery_groups: applies to recovery_weighting = 'groups' only"),
        ({"recovery_groups": ["sex", "sex"], "recovery_weighting": "groups"}, "steps[0].recovery_groups: names a group twice"),
        ({"disagreement_weight": 2.0}, "steps[0].disagreement_weight: applies to recovery_weighting = 'disagreement' only"),
        ({"recovery_max_weight": 3.0}, "steps[0].recovery_max_weight: applies to recovery_weighting = 'groups' only"),
        ({"recovery_max_weight": 0.5, "recovery_weighting": "groups"}, "steps[0].recovery_max_weight: must be >= 1"),
    ],
)
def test_config_errors_name_the_key(table, message):
    base = {"sparsity": 0.5, "structured": True, "finetune_epochs": 2, "distill": True}
    with pytest.raises(RecipeError) as e:
        build(PruneConfig, {**base, **table}, "steps[0]")
    assert message in str(e.value)


def test_direct_construction_checks_the_choices_too():
    with pytest.raises(ValueError, match="recovery_data: must be one of"):
        PruneConfig(sparsity=0.5, structured=True, finetune_epochs=1, recovery_data="eval")


def test_missing_recovery_data_is_a_clear_error(tmp_path):
    x, y = _task(64, seed=0)
    model = _trained(x, y)
    calib = _calibration(_write_npz(tmp_path / "calib.npz", features=x))
    cases = [
        (PruneConfig(sparsity=0.5, structured=True, finetune_epochs=1), "prune.finetune_epochs: recovery fine-tuning needs data"),
        (PruneConfig(sparsity=0.5, structured=True, finetune_epochs=1, recovery_data="train"), 'prune.recovery_data = "train": needs labelled data.train'),
        (PruneConfig(sparsity=0.5, structured=True, finetune_epochs=1, distill=True, recovery_weighting="groups"),
         'prune.recovery_weighting = "groups": no groups to weight by'),
    ]
    for i, (cfg, message) in enumerate(cases):
        with pytest.raises(StepError, match=message.replace("(", r"\(").replace(".", r"\.")):
            _prune(model, tmp_path / str(i), cfg, calibration=calib)
    cfg = PruneConfig(sparsity=0.5, structured=True, finetune_epochs=1, distill=True, recovery_weighting="groups")
    with pytest.raises(StepError, match="group column 'sex' not in data.calibration"):
        _prune(model, tmp_path / "g", cfg, calibration=calib, groups=("sex",))
    train = load(_write_npz(tmp_path / "t.npz", features=x, label=y), key="data.train", label=None, groups=(), require_labels=True)
    cfg = PruneConfig(sparsity=0.5, structured=True, finetune_epochs=1, distill=True, recovery_data="calibration")
    with pytest.raises(StepError, match='prune.recovery_data = "calibration": needs data.calibration'):
        _prune(model, tmp_path / "c", cfg, train=train)


def test_finetune_reports_each_epoch_to_the_progress_hook():
    """Progress (terminal only) sees every fine-tuning epoch: (1, 3), (2, 3), (3, 3)."""
    x, y = _task(128, seed=0)
    seen = []
    torch.manual_seed(0)
    finetune(MLP(), {"features": x}, y, ["features"], FinetuneSettings(epochs=3, lr=1e-2, batch_size=64, seed=0),
             on_epoch=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
