"""Property tests (hypothesis) for the data loaders, the recipe's [data] table and the per-group
metrics: random valid tables read back the same from .npz, .csv and .parquet; every scope's group
supports add up to n; permuting rows changes no per-group metric, each recomputed with sklearn."""

from __future__ import annotations

import csv
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgefair import data as data_mod
from edgefair.errors import RecipeError
from edgefair.groups import group_masks, scopes
from edgefair.metrics import Groups, grouped_classification
from edgefair.recipe import load_recipe

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

# derandomize: the same examples on every run (reproducible CI); database=None: nothing written to the repo
FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
GROUP_VALUES = ["a", "b", "01", "1", "x y"]  # "01" and "1" must stay apart (exact text)


@st.composite
def tables(draw):
    """A valid labelled table: n rows, 1-3 float32 features, labels in [0, 3), two group columns."""
    n = draw(st.integers(1, 25))
    k = draw(st.integers(1, 3))
    finite = st.floats(-1e6, 1e6, width=32, allow_nan=False, allow_subnormal=False)
    x = np.array(draw(st.lists(st.lists(finite, min_size=k, max_size=k), min_size=n, max_size=n)), dtype=np.float32)
    y = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.int64)
    pool = draw(st.lists(st.sampled_from(GROUP_VALUES), min_size=1, max_size=3, unique=True))  # e.g. only "01" and "1"
    g = np.array(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)))
    h = np.array(draw(st.lists(st.sampled_from(["p", "q"]), min_size=n, max_size=n)))
    return x.reshape(n, k), y, g, h


def write_all(folder: Path, x, y, g, h) -> dict[str, Path]:
    names = [f"f{i}" for i in range(x.shape[1])]
    np.savez(folder / "t.npz", features=x, label=y, g=g, h=h)
    with open(folder / "t.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*names, "label", "g", "h"])
        # repr of a float32 widened to float64 reads back to the same float32
        w.writerows([[*(repr(float(v)) for v in x[i]), int(y[i]), g[i], h[i]] for i in range(len(y))])
    cols = {n: pa.array(x[:, i]) for i, n in enumerate(names)}
    cols.update(label=pa.array(y), g=pa.array(g.tolist()), h=pa.array(h.tolist()))
    pq.write_table(pa.table(cols), folder / "t.parquet")
    return {s: folder / f"t.{s}" for s in ("npz", "csv", "parquet")}


@FAST
@given(tables())
@example((np.array([[0.5], [-2.0]], np.float32), np.array([0, 1]), np.array(["01", "1"]), np.array(["p", "q"])))  # numeric-looking groups
def test_tables_round_trip_in_every_format(table):
    x, y, g, h = table
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, path in write_all(Path(tmp), x, y, g, h).items():
            d = data_mod.load(path, key="data.eval", label=None, groups=("g", "h"))
            (inputs,) = d.inputs.values()
            np.testing.assert_array_equal(inputs, x, err_msg=fmt)
            assert inputs.dtype == np.float32
            np.testing.assert_array_equal(d.labels, y, err_msg=fmt)
            assert d.attributes["g"].tolist() == g.tolist(), fmt
            assert d.attributes["h"].tolist() == h.tolist(), fmt
            # calibration-style reading: inputs only, groups kept when present, nothing else taken as input
            c = data_mod.load(path, key="data.calibration", label=None, groups=(), ignore=("label",), optional_groups=("g", "h", "absent"))
            np.testing.assert_array_equal(next(iter(c.inputs.values())), x)
            assert set(c.attributes) == {"g", "h"}


@FAST
@given(tables())
def test_group_supports_add_up_to_n(table):
    x, y, g, h = table
    with tempfile.TemporaryDirectory() as tmp:
        d = data_mod.load(write_all(Path(tmp), x, y, g, h)["parquet"], key="data.eval", label=None, groups=("g", "h"))
    masks = group_masks(d.attributes, intersections=True)
    for scope, keys in scopes(list(masks)).items():
        assert sum(int(masks[k].sum()) for k in keys) == len(y), scope
        assert all(not (masks[a] & masks[b]).any() for a in keys for b in keys if a < b), scope  # a partition
    for attr, values in (("g", g), ("h", h)):
        for value, count in Counter(values.tolist()).items():
            assert int(masks[f"{attr}={value}"].sum()) == count


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(tables(), st.integers(0, 2**32 - 1))
def test_permuting_rows_changes_no_group_metric(table, seed):
    from sklearn.metrics import accuracy_score, recall_score

    x, y, g, h = table
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(y), 3))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    perm = rng.permutation(len(y))

    def metrics(order):
        masks = group_masks({"g": g[order], "h": h[order]}, intersections=True)
        return list(masks), grouped_classification(y[order], probs[order], Groups(list(masks.values())))

    keys, before = metrics(np.arange(len(y)))
    keys_after, after = metrics(perm)
    assert keys == keys_after
    for name in ("accuracy", "balanced_accuracy", "tpr", "fpr", "selection_rate", "positive_tpr", "ece", "brier", "nll"):
        np.testing.assert_allclose(after[name], before[name], rtol=1e-12, atol=1e-12, equal_nan=True, err_msg=name)
    for name in ("accuracy", "balanced_accuracy", "tpr", "fpr", "precision", "f1", "selection_rate", "ece", "mce", "brier"):
        v = before[name][~np.isnan(before[name])]
        top = 2.0 if name == "brier" else 1.0  # multiclass Brier: squared error summed over the classes, at most 2
        assert ((v >= -1e-12) & (v <= top + 1e-12)).all(), name
    assert (before["nll"][~np.isnan(before["nll"])] >= 0).all()
    # and they are the metrics sklearn computes on each group's rows
    masks = group_masks({"g": g, "h": h}, intersections=True)
    pred = probs.argmax(axis=1)
    for i, key in enumerate(keys):
        m = masks[key]
        if not m.any():
            assert np.isnan(before["accuracy"][i])
            continue
        assert before["accuracy"][i] == pytest.approx(accuracy_score(y[m], pred[m]))
        if (y[m] == 1).any():
            assert before["positive_tpr"][i] == pytest.approx(recall_score(y[m] == 1, pred[m] == 1))
        assert before["selection_rate"][i] == pytest.approx(np.mean(pred[m] == 1))


# ---- the recipe's [data] table ----------------------------------------------------------------------

DATA_KEYS = {
    "label": st.sampled_from(["label", "y"]),
    "intersections": st.booleans(),
    "min_group_size": st.integers(1, 500),
    "features": st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True),
    "positive_label": st.integers(0, 5),
    "subfolders": st.lists(st.sampled_from(["label", "light", "site"]), min_size=1, max_size=3, unique=True),
    "image_size": st.lists(st.integers(1, 512), min_size=2, max_size=2),
    "channels": st.sampled_from(["rgb", "bgr", "gray"]),
    "layout": st.sampled_from(["nchw", "nhwc"]),
    "loader": st.sampled_from(["pkg.mod:load", "loaders/read.py:read_rows"]),
}


def write_recipe_file(folder: Path, data: dict) -> Path:
    import tomli_w

    (folder / "eval.npz").write_bytes(b"")  # only its existence is checked while parsing
    text = tomli_w.dumps({"model": {"source": "m:build"}, "data": {"eval": "eval.npz", "groups": ["sex"], **data}})
    (folder / "r.toml").write_text(text)
    return folder / "r.toml"


@FAST
@given(st.fixed_dictionaries({}, optional=DATA_KEYS), st.data())
def test_valid_data_tables_parse_and_round_trip(table, draw):
    channels = 1 if table.get("channels") == "gray" else 3
    width = draw.draw(st.sampled_from([1, channels]))
    table["mean"] = draw.draw(st.lists(st.floats(-2, 2), min_size=width, max_size=width))
    table["std"] = draw.draw(st.lists(st.floats(0.01, 5), min_size=width, max_size=width))
    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(write_recipe_file(Path(tmp), table))
    resolved = recipe.resolved()["data"]
    for key, value in table.items():
        assert resolved[key] == pytest.approx(value) if key in ("mean", "std") else resolved[key] == value, key


BAD_DATA = [
    ({"mean": [0.5, 0.5]}, "data.mean: needs 1 or 3 values"),
    ({"channels": "gray", "std": [0.2, 0.2, 0.2]}, "data.std: needs 1 or 1 values for channels = 'gray'"),
    ({"std": [0.0]}, "data.std: must be > 0"),
    ({"image_size": [224]}, "data.image_size: must be [height, width]"),
    ({"image_size": [224, 0]}, "data.image_size: must be > 0"),
    ({"channels": "rgba"}, "data.channels: must be one of"),
    ({"layout": "chw"}, "data.layout: must be one of"),
    ({"loader": "no colon"}, "data.loader: must be"),
    ({"loader": "m:f", "image_column": "path"}, "data.image_column: a loader returns arrays"),
    ({"subfolders": ["label", "label"]}, "data.subfolders: must name each folder level once"),
    ({"subfolders": []}, "data.subfolders: must name each folder level once"),
]


@pytest.mark.parametrize("table, expected", BAD_DATA)
def test_bad_data_keys_name_the_key(tmp_path, table, expected):
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe_file(tmp_path, table))
    assert str(e.value).startswith(expected), str(e.value)


@FAST
@given(st.dictionaries(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12), st.integers(), min_size=1, max_size=3))
def test_unknown_data_keys_are_named(tmp_path, extra):
    known = set(DATA_KEYS) | {"eval", "calibration", "train", "groups", "mean", "std", "image_column"}
    unknown = sorted(k for k in extra if k not in known)
    if not unknown:
        return
    with pytest.raises(RecipeError) as e:
        load_recipe(write_recipe_file(tmp_path, {k: v for k, v in extra.items() if k not in known}))
    assert str(e.value).startswith(f"data.{unknown[0]}: unknown key"), str(e.value)
