"""Checks on the shipped UCI Adult reference data and reference model.

Fast (a few seconds). The rebuild test only runs where the raw UCI files are
present at ../shared/datasets/adult relative to the repo root.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "calibration_data"
MODELS = REPO / "models"
RAW = REPO / ".." / "shared" / "datasets" / "adult"
SPLITS = ("train", "eval", "calib")
EXPECTED_ROWS = {"train": 36177, "eval": 9045, "calib": 512}
GROUP_VALUES = {
    "sex": {"Female", "Male"},
    "race": {"White", "Black", "Asian-Pac-Islander", "Amer-Indian-Eskimo", "Other"},
    "age_group": {"<25", "25-44", "45-64", "65+"},
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def _import_adult_mlp():
    spec = importlib.util.spec_from_file_location("adult_mlp", MODELS / "adult_mlp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((DATA / "adult_features.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def data() -> dict[str, dict[str, np.ndarray]]:
    return {s: _load_npz(DATA / f"adult_{s}.npz") for s in SPLITS}


@pytest.fixture(scope="module")
def pt2_module():
    return torch.export.load(str(MODELS / "adult_mlp.pt2")).module()


@pytest.fixture(scope="module")
def eager_model():
    from safetensors.torch import load_file

    mod = _import_adult_mlp()
    model = mod.build()
    model.load_state_dict(load_file(str(MODELS / "adult_mlp.safetensors")))
    return model.eval()


@pytest.mark.parametrize("split", SPLITS)
def test_npz_keys_dtypes_shapes(split, data, meta):
    d = data[split]
    assert set(d) == {"features", "label", "sex", "race", "age_group"}
    n = EXPECTED_ROWS[split]
    assert meta["row_counts"][split]["rows"] == n
    assert d["features"].dtype == np.float32
    assert d["features"].shape == (n, meta["n_features"])
    assert np.isfinite(d["features"]).all()
    assert d["label"].dtype == np.int64 and d["label"].shape == (n,)
    assert set(np.unique(d["label"]).tolist()) == {0, 1}
    assert int(d["label"].sum()) == meta["row_counts"][split]["positives"]
    for g, values in GROUP_VALUES.items():
        assert d[g].dtype.kind == "U", g  # numpy unicode, not object
        assert d[g].shape == (n,)
        assert set(d[g].tolist()) == values, g


def test_feature_metadata(meta, data):
    names = meta["feature_names"]
    assert len(names) == meta["n_features"] == data["train"]["features"].shape[1]
    assert len(set(names)) == len(names)
    # Sensitive attributes and fnlwgt are never features.
    for banned in ("sex", "race", "fnlwgt"):
        assert not any(n == banned or n.startswith(banned + "=") for n in names), banned
    n_num = len(meta["numeric_features"])
    assert names[:n_num] == meta["numeric_features"]
    # Numeric columns are standardized with train statistics; one-hot blocks sum to 1.
    train = data["train"]["features"].astype(np.float64)
    np.testing.assert_allclose(train[:, :n_num].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train[:, :n_num].std(0), 1.0, atol=1e-5)
    for split in SPLITS:
        onehot = data[split]["features"][:, n_num:]
        assert set(np.unique(onehot).tolist()) <= {0.0, 1.0}
        assert (onehot.sum(1) <= len(meta["categories"])).all()


def test_split_sizes_stratification_and_calib_subset(data, meta):
    assert sum(EXPECTED_ROWS[s] for s in ("train", "eval")) == meta["rows_total_after_dropping_missing"]
    rate = {s: float(data[s]["label"].mean()) for s in SPLITS}
    assert abs(rate["train"] - rate["eval"]) < 0.002  # stratified by label

    def rows(split):
        d = data[split]
        return {d["features"][i].tobytes() + d["label"][i].tobytes() + d["sex"][i].encode()
                + d["race"][i].encode() + d["age_group"][i].encode() for i in range(len(d["label"]))}

    # Calibration rows are drawn from train. (Eval rows are disjoint from train by
    # construction, but many persons share an identical feature vector once fnlwgt is
    # dropped, so eval/train row equality is not a meaningful check.)
    assert rows("calib") <= rows("train")


def test_feature_count_matches_model(meta):
    mod = _import_adult_mlp()
    assert mod.N_FEATURES == meta["n_features"]
    model = mod.build()
    assert model.net[0].in_features == meta["n_features"]


def test_pt2_loads_and_gives_finite_logits(pt2_module, data):
    x = torch.from_numpy(data["calib"]["features"])
    with torch.no_grad():
        out = pt2_module(x)
        one = pt2_module(x[:1])
    assert out.shape == (len(x), 2)
    assert one.shape == (1, 2)  # dynamic batch dimension
    assert torch.isfinite(out).all()


def test_safetensors_matches_pt2(pt2_module, eager_model, data):
    x = torch.from_numpy(data["eval"]["features"][:2048])
    with torch.no_grad():
        a = eager_model(features=x)
        b = pt2_module(x)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_shipped_model_eval_accuracy(eager_model, data):
    d = data["eval"]
    with torch.no_grad():
        pred = eager_model(torch.from_numpy(d["features"])).argmax(1).numpy()
    acc = float(np.mean(pred == d["label"]))
    assert acc > 0.82, acc
    for sex in ("Female", "Male"):
        m = d["sex"] == sex
        assert np.mean(pred[m] == d["label"][m]) > 0.75, sex


def test_model_artifacts_are_small():
    for name in ("adult_mlp.pt2", "adult_mlp.safetensors"):
        assert (MODELS / name).stat().st_size < 2_000_000, name
    total = sum((DATA / f"adult_{s}.npz").stat().st_size for s in SPLITS)
    assert total < 5_000_000


@pytest.mark.skipif(not (RAW / "adult.data").is_file() or not (RAW / "adult.test").is_file(),
                    reason="raw UCI Adult files not present at ../shared/datasets/adult")
def test_rebuild_is_byte_identical(tmp_path, meta):
    spec = importlib.util.spec_from_file_location("build_adult_data",
                                                  REPO / "scripts" / "build_adult_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.build(RAW, tmp_path)
    for name, info in meta["raw_files"].items():
        assert _sha256(RAW / name) == info["sha256"], f"raw {name} differs from the one used"
    for split in SPLITS:
        fname = f"adult_{split}.npz"
        new, old = _load_npz(tmp_path / fname), _load_npz(DATA / fname)
        assert set(new) == set(old)
        for k in old:  # content first, for a readable failure
            np.testing.assert_array_equal(new[k], old[k], err_msg=f"{fname}:{k}")
        # Byte equality also depends on the zlib build (deflate output).
        assert _sha256(tmp_path / fname) == _sha256(DATA / fname), fname
    assert _sha256(tmp_path / "adult_features.json") == _sha256(DATA / "adult_features.json")
