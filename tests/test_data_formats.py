"""Data formats beyond .npz/.csv (Parquet, image folders, image indexes, a loader function), their
bad-input cases, and the #14 error messages, each through the real CLI where it is a promise of
`edgefair run` (exit 2, one `Error:` line naming the file/column/key, no traceback, no outputs)."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import BASE_RECIPE, run_cli, write_recipe
from edgefair import data as data_mod
from edgefair.errors import DataError
from edgefair.formats import ReadOptions

pa = pytest.importorskip("pyarrow")
import pyarrow.parquet as pq  # noqa: E402

NO_LATENCY = BASE_RECIPE.replace("[latency]\nwarmup = 2\nruns = 20\nmin_time_s = 0\n", "[latency]\nenabled = false\n")


def tiny_arrays(recipe_dir) -> dict:
    with np.load(recipe_dir / "eval.npz") as z:
        return dict(z)


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def tiny_table(recipe_dir) -> dict[str, np.ndarray]:
    """The tiny eval set as scalar columns f0..f5, label, g, h."""
    a = tiny_arrays(recipe_dir)
    cols = {f"f{i}": a["features"][:, i] for i in range(6)}
    cols.update(label=a["label"], g=a["g"], h=a["h"])
    return cols


def write_parquet(path: Path, cols: dict[str, np.ndarray]) -> Path:
    pq.write_table(pa.table({k: pa.array(v.tolist() if v.dtype.kind == "U" else v) for k, v in cols.items()}), path)
    return path


def run_ok(recipe_dir, text: str) -> dict:
    recipe = write_recipe(recipe_dir / "r.toml", text)
    out = recipe_dir / "out"
    result = run_cli(["run", str(recipe), "--out", str(out)])
    assert result.exit_code in (0, 1), result.output
    return json.loads((out / "report.json").read_text())


def run_bad(recipe_dir, text: str, *expected: str) -> str:
    recipe = write_recipe(recipe_dir / "r.toml", text)
    out = recipe_dir / "out"
    result = run_cli(["run", str(recipe), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.output.splitlines() if l.startswith("Error:")]
    assert len(lines) == 1, result.output
    for e in expected:
        assert e in lines[0], lines[0]
    assert not out.exists() or not any(out.iterdir()), "a failed run must not leave outputs behind"
    return lines[0]


# ---- Parquet -----------------------------------------------------------------------------------------


def test_parquet_reads_like_csv_and_npz(recipe_dir):
    cols = tiny_table(recipe_dir)
    write_parquet(recipe_dir / "eval.parquet", cols)
    write_csv(recipe_dir / "eval.csv", list(cols), [[cols[c][i] for c in cols] for i in range(len(cols["label"]))])
    kw = dict(key="data.eval", label=None, groups=("g", "h"))
    p, c, z = (data_mod.load(recipe_dir / f, **kw) for f in ("eval.parquet", "eval.csv", "eval.npz"))
    np.testing.assert_array_equal(p.inputs[data_mod.CSV_INPUT], z.inputs["features"])
    np.testing.assert_array_equal(p.inputs[data_mod.CSV_INPUT], c.inputs[data_mod.CSV_INPUT])
    np.testing.assert_array_equal(p.labels, z.labels)
    for g in ("g", "h"):
        np.testing.assert_array_equal(p.attributes[g], z.attributes[g])
    # read_columns: every column by name, for steps that need columns load() did not keep
    for f in ("eval.parquet", "eval.csv", "eval.npz"):
        assert data_mod.read_columns(recipe_dir / f, "k", text=("g",))["g"].tolist() == z.attributes["g"].tolist()
    with pytest.raises(DataError, match="cannot read columns from x.json"):
        data_mod.read_columns(recipe_dir / "x.json", "k")


def test_parquet_list_columns_are_named_inputs(recipe_dir):
    """List columns (token ids, vectors) make a table read like an .npz: one input per column."""
    a = tiny_arrays(recipe_dir)
    ids = np.arange(800 * 4).reshape(800, 4) % 7
    pq.write_table(pa.table({"features": pa.array(a["features"].tolist(), pa.list_(pa.float32(), 6)),
                             "input_ids": pa.array(ids.tolist()), "label": a["label"],
                             "g": a["g"].tolist(), "h": a["h"].tolist()}), recipe_dir / "lists.parquet")
    d = data_mod.load(recipe_dir / "lists.parquet", key="data.eval", label=None, groups=("g", "h"))
    assert sorted(d.inputs) == ["features", "input_ids"]
    np.testing.assert_array_equal(d.inputs["features"], a["features"])
    np.testing.assert_array_equal(d.inputs["input_ids"], ids)
    np.testing.assert_array_equal(d.labels, a["label"])
    pq.write_table(pa.table({"v": pa.array([[1.0, 2.0], [3.0]]), "g": ["a", "b"]}), recipe_dir / "ragged.parquet")
    with pytest.raises(DataError, match=r"data.eval: list column 'v' in .*ragged.parquet has rows of different lengths"):
        data_mod.load(recipe_dir / "ragged.parquet", key="data.eval", label=None, groups=("g",))


def test_parquet_integer_group_keeps_its_text(tmp_path):
    write_parquet(tmp_path / "d.parquet", {"x": np.arange(4.0), "region": np.array([1, 2, 10, 2])})
    d = data_mod.load(tmp_path / "d.parquet", key="data.eval", label=None, groups=("region",))
    assert d.attributes["region"].tolist() == ["1", "2", "10", "2"]


def test_parquet_eval_and_calibration_run_end_to_end(recipe_dir):
    """Parquet eval and calibration through `edgefair run`; per-group accuracy as sklearn computes
    it from the torch model's predictions on the same rows."""
    import torch
    from sklearn.metrics import accuracy_score

    cols = tiny_table(recipe_dir)
    write_parquet(recipe_dir / "eval.parquet", cols)
    write_parquet(recipe_dir / "calib.parquet", {k: v[:64] for k, v in cols.items() if k.startswith("f")})
    text = NO_LATENCY.replace('"eval.npz"', '"eval.parquet"').replace('"calib.npz"', '"calib.parquet"')
    report = run_ok(recipe_dir, text)
    assert report["data"]["eval"]["n"] == 800 and report["data"]["calibration"]["n"] == 64
    a = tiny_arrays(recipe_dir)
    model = torch.export.load(str(recipe_dir / "tiny.pt2")).module()
    with torch.no_grad():
        pred = model(torch.from_numpy(a["features"])).argmax(1).numpy()
    for value in ("a", "b"):
        m = a["g"] == value
        group = report["steps"][0]["groups"][f"g={value}"]
        assert group["n"] == int(m.sum())
        assert group["accuracy"] == pytest.approx(accuracy_score(a["label"][m], pred[m]))


# ---- image folders and indexes ------------------------------------------------------------------------

CNN = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinyCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, image):
            return self.fc(torch.relu(self.conv(image)).mean(dim=(2, 3)))


    def build():
        torch.manual_seed(0)
        return TinyCNN()
    """
)
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def make_images(root: Path, rng, per_cell: int = 6, size=(8, 8)) -> list[tuple[str, str, int, np.ndarray]]:
    """root/<light>/<label>/i.png, lossless: (relative path, light, label, uint8 HxWx3) of each."""
    out = []
    root.mkdir()
    (root / "notes.txt").write_text("not an image: ignored")
    (root / ".hidden").mkdir()
    Image.new("RGB", (3, 3)).save(root / ".hidden" / "x.png")  # hidden folders are ignored too
    for light, level in (("dim", 60), ("bright", 180)):
        for label in (0, 1):
            d = root / light / str(label)
            d.mkdir(parents=True)
            for i in range(per_cell):
                px = np.clip(rng.normal(level + 40 * label, 30, size=(*size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{i}.png")
                out.append((f"{light}/{label}/{i}.png", light, label, px))
    return out


def image_recipe(eval_: str, calibration: str, extra: str = "") -> str:
    return textwrap.dedent(
        f"""
        [model]
        source = "cnn.py:build"

        [data]
        eval = "{eval_}"
        calibration = "{calibration}"
        groups = ["light"]
        min_group_size = 5
        mean = {list(MEAN)}
        std = {list(STD)}
        {extra}

        [evaluate]
        bootstrap = 200

        [latency]
        enabled = false
        """
    )


@pytest.fixture
def images(tmp_path):
    (tmp_path / "cnn.py").write_text(CNN)
    return tmp_path, make_images(tmp_path / "imgs", np.random.default_rng(0))


def reference_pixels(items) -> np.ndarray:
    """What the README promises, computed here with numpy alone: [0, 1], (x - mean) / std, NCHW."""
    x = np.stack([px for *_, px in items]).astype(np.float32) / 255.0
    return ((x - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).transpose(0, 3, 1, 2)


def test_image_folder_loads_pixels_labels_and_groups(images):
    root, items = images
    opts = ReadOptions(subfolders=("light", "label"), mean=MEAN, std=STD)
    d = data_mod.load(root / "imgs", key="data.eval", label=None, groups=("light",), options=opts)
    order = sorted(range(len(items)), key=lambda i: str(root / "imgs" / items[i][0]))
    items = [items[i] for i in order]
    np.testing.assert_allclose(d.inputs[data_mod.CSV_INPUT], reference_pixels(items), rtol=1e-6, atol=1e-6)
    assert d.labels.tolist() == [it[2] for it in items]
    assert d.attributes["light"].tolist() == [it[1] for it in items]


def test_image_settings_channels_layout_resize(images):
    root, items = images
    base = data_mod.load(root / "imgs", key="k", label=None, groups=(), options=ReadOptions(subfolders=("light", "label")))
    x = base.inputs[data_mod.CSV_INPUT]
    ordered = sorted(items, key=lambda it: it[0])
    np.testing.assert_allclose(x, np.stack([px for *_, px in ordered]).transpose(0, 3, 1, 2) / 255.0, atol=1e-6)  # mean 0, std 1
    bgr = data_mod.load(root / "imgs", key="k", label=None, groups=(), options=ReadOptions(subfolders=("light", "label"), channels="bgr", layout="nhwc"))
    np.testing.assert_array_equal(bgr.inputs[data_mod.CSV_INPUT], x.transpose(0, 2, 3, 1)[..., ::-1])
    gray = data_mod.load(root / "imgs", key="k", label=None, groups=(), options=ReadOptions(subfolders=("light", "label"), channels="gray", image_size=(5, 3)))
    assert gray.inputs[data_mod.CSV_INPUT].shape == (len(items), 1, 5, 3)
    # resizing a one-colour image keeps its colour (bilinear): checks height/width are not swapped too
    Image.new("RGB", (7, 4), (51, 102, 204)).save(root / "flat.png")
    write_csv(root / "one.csv", ["path", "light"], [["flat.png", "x"]])
    flat = data_mod.load(root / "one.csv", key="k", label=None, groups=("light",), options=ReadOptions(image_column="path", image_size=(3, 6)))
    arr = flat.inputs[data_mod.CSV_INPUT]
    assert arr.shape == (1, 3, 3, 6)
    np.testing.assert_allclose(arr[0, :, 0, 0], [0.2, 0.4, 0.8], atol=1e-6)
    np.testing.assert_allclose(arr.std(axis=(2, 3)), 0, atol=1e-6)


def test_image_index_and_folder_run_end_to_end(images):
    """An index (.csv of image paths with group and label columns) as eval, a folder as
    calibration; the report's per-group accuracy matches torch on the same pixels (sklearn)."""
    import torch
    from sklearn.metrics import accuracy_score

    root, items = images
    write_csv(root / "imgs" / "index.csv", ["path", "label", "light"], [[p, lab, light] for p, light, lab, _ in items])
    text = image_recipe("imgs/index.csv", "imgs", 'image_column = "path"\nsubfolders = ["light", "label"]')
    text += "\n[[steps]]\nkind = 'quantize_static'\n"
    report = run_ok(root, text)
    import importlib.util

    spec = importlib.util.spec_from_file_location("cnn_ref", root / "cnn.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with torch.no_grad():
        pred = mod.build().eval()(torch.from_numpy(reference_pixels(items))).argmax(1).numpy()
    labels = np.array([it[2] for it in items])
    light = np.array([it[1] for it in items])
    groups = report["steps"][0]["groups"]
    for value in ("dim", "bright"):
        m = light == value
        assert groups[f"light={value}"]["n"] == int(m.sum())
        assert groups[f"light={value}"]["accuracy"] == pytest.approx(accuracy_score(labels[m], pred[m]))
    assert report["data"]["calibration"]["n"] == len(items)


IMAGE_BAD = [
    ("corrupt", "cannot read image"),
    ("truncated", "cannot read image"),
    ("mismatched", "set data.image_size"),
    ("empty_folder", "no .png/.jpg/.jpeg images in"),
    ("depth", "folder level(s) below"),
    ("label_name", "must hold integer class ids (0, 1, ...), has 'cat'"),
    ("index_missing_image", "image not found:"),
    ("index_escapes", "is outside"),
    ("index_absolute", "is outside"),
    ("index_no_column", "image column 'paht' not in"),
    ("index_missing_group", "group column 'light' not in"),
]


@pytest.mark.parametrize("case, expected", IMAGE_BAD, ids=[c for c, _ in IMAGE_BAD])
def test_image_bad_input(images, case, expected):
    root, items = images
    imgs = root / "imgs"
    eval_, extra = "imgs", 'subfolders = ["light", "label"]'
    named = None  # the file the message must name
    if case == "corrupt":
        named = imgs / "dim" / "0" / "0.png"
        named.write_bytes(b"not a png at all")
    elif case == "truncated":
        named = imgs / "dim" / "1" / "2.png"
        named.write_bytes(named.read_bytes()[:60])
    elif case == "mismatched":
        named = imgs / "dim" / "1" / "1.png"
        Image.new("RGB", (9, 8)).save(named)
    elif case == "empty_folder":
        (root / "none").mkdir()
        eval_ = "none"
    elif case == "depth":
        named = imgs / "dim" / "stray.png"
        Image.new("RGB", (8, 8)).save(named)
    elif case == "label_name":
        (imgs / "dim" / "1").rename(imgs / "dim" / "cat")
    else:
        rows = [[p, lab, light] for p, light, lab, _ in items]
        header = ["path", "label", "light"]
        if case == "index_missing_image":
            rows[3][0] = "dim/0/404.png"
            named = imgs / "dim" / "0" / "404.png"
        elif case == "index_escapes":
            rows[2][0] = "dim/../../cnn.py"
        elif case == "index_absolute":
            rows[2][0] = str(imgs / "dim" / "0" / "1.png")
        elif case == "index_missing_group":
            header[2] = "lighting"
        write_csv(imgs / "index.csv", header, rows)
        eval_ = "imgs/index.csv"
        extra = 'image_column = "paht"' if case == "index_no_column" else 'image_column = "path"'
    line = run_bad(root, image_recipe(eval_, "imgs/dim", extra), "data.eval:", expected)
    if named is not None:
        assert str(named) in line


def test_image_recipe_checks(images):
    root, _ = images
    run_bad(root, image_recipe("imgs", "imgs", "mean = [0.5, 0.5]").replace(f"mean = {list(MEAN)}\n", ""),
            "data.mean: needs 1 or 3 values for channels = 'rgb' (got 2)")
    run_bad(root, image_recipe("imgs", "imgs", "image_size = [8]"), "data.image_size: must be [height, width]")
    run_bad(root, image_recipe("imgs", "imgs", "std = [0.2, 0.0, 0.2]").replace(f"std = {list(STD)}\n", ""), "data.std: must be > 0")


# ---- a loader function ---------------------------------------------------------------------------------

LOADER = textwrap.dedent(
    """
    from pathlib import Path

    import numpy as np


    def load(path):
        Path(__file__).with_name("loader_ran.txt").write_text(str(path))  # proof that this code ran
        with np.load(path) as z:
            return {"features": z["features"], "label": z["label"], "g": z["g"], "h": z["h"]}


    def load_calib(path):
        with np.load(path) as z:
            return dict(z)


    def boom(path):
        raise RuntimeError("database unreachable")


    def not_a_mapping(path):
        return [1, 2, 3]


    def objects(path):
        return {"features": [[1.0], "x"], "g": ["a", "b"]}


    def no_group(path):
        with np.load(path) as z:
            return {"features": z["features"], "label": z["label"], "g": z["g"], "hh": z["h"]}


    def ragged(path):
        with np.load(path) as z:
            return {"features": z["features"][:10], "label": z["label"], "g": z["g"], "h": z["h"]}
    """
)


def test_loader_function_runs_the_users_code(recipe_dir):
    (recipe_dir / "my_loader.py").write_text(LOADER)
    text = NO_LATENCY.replace("[data]", '[data]\nloader = "my_loader.py:load"')
    text = text.replace('calibration = "calib.npz"\n', "")
    report = run_ok(recipe_dir, text)
    assert (recipe_dir / "loader_ran.txt").read_text() == str((recipe_dir / "eval.npz").resolve())
    assert report["data"]["eval"]["n"] == 800
    # a dotted module name is imported from the recipe's folder
    opts = ReadOptions(base=recipe_dir, loader="my_loader:load_calib")
    d = data_mod.load(recipe_dir / "calib.npz", key="data.calibration", label=None, groups=(), options=opts)
    assert d.inputs["features"].shape == (64, 6)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("my_loader.py:boom", "data.loader: my_loader.py:boom failed on data.eval (eval.npz): database unreachable"),
        ("my_loader.py:not_a_mapping", "data.loader: my_loader.py:not_a_mapping returned list for data.eval, not a mapping"),
        ("my_loader.py:objects", "returned array 'features' for data.eval"),
        ("my_loader.py:nope", "data.loader: cannot import my_loader.py:nope"),
        ("my_loader.py:no_group", "data.eval: group column 'h' not in"),
        ("my_loader.py:ragged", "data.eval: array 'features' in"),
        ("no_such_pkg.loaders:load", "data.loader: cannot import no_such_pkg.loaders:load"),
        ("not a spec", "data.loader: must be \"pkg.module:function\""),
    ],
)
def test_loader_bad_input(recipe_dir, spec, expected):
    (recipe_dir / "my_loader.py").write_text(LOADER)
    run_bad(recipe_dir, NO_LATENCY.replace("[data]", f'[data]\nloader = "{spec}"'), expected)


# ---- bad input per table format, and the #14 messages -------------------------------------------------


def test_parquet_bad_input(recipe_dir):
    cols = tiny_table(recipe_dir)
    (recipe_dir / "junk.parquet").write_bytes(b"PAR1 this is not parquet")
    run_bad(recipe_dir, NO_LATENCY.replace('"eval.npz"', '"junk.parquet"'), "data.eval: cannot read", "junk.parquet as Parquet")
    write_parquet(recipe_dir / "empty.parquet", {k: v[:0] for k, v in cols.items()})
    run_bad(recipe_dir, NO_LATENCY.replace('"eval.npz"', '"empty.parquet"'), "data.eval:", "empty.parquet has no rows")
    write_parquet(recipe_dir / "nogroup.parquet", {k: v for k, v in cols.items() if k != "h"} | {"hh": cols["h"]})
    run_bad(recipe_dir, NO_LATENCY.replace('"eval.npz"', '"nogroup.parquet"'), "data.eval: group column 'h' not in", "nogroup.parquet", "did you mean: hh?")
    table = pa.table({k: pa.array(v.tolist()) for k, v in cols.items()})
    f2 = table.column("f2").to_pylist()
    f2[5] = None
    pq.write_table(table.set_column(2, "f2", pa.array(f2)), recipe_dir / "null.parquet")
    run_bad(recipe_dir, NO_LATENCY.replace('"eval.npz"', '"null.parquet"'), "data.eval: column 'f2' in", "null.parquet has a missing value at data row 6")
    run_bad(recipe_dir, NO_LATENCY.replace('"eval.npz"', '"missing.parquet"'), "data.eval: file not found:", "missing.parquet")


def test_wrong_row_count_names_the_input(recipe_dir):
    arrays = tiny_arrays(recipe_dir)
    arrays["features"] = arrays["features"][:799]
    np.savez(recipe_dir / "short.npz", **arrays)
    line = run_bad(recipe_dir, NO_LATENCY.replace('"eval.npz"', '"short.npz"'), "data.eval: array 'features' in", "short.npz has 799 rows", "have 800")
    assert "array 'g'" not in line


def test_empty_npz(recipe_dir):
    np.savez(recipe_dir / "empty.npz")
    line = run_bad(recipe_dir, NO_LATENCY.replace('"eval.npz"', '"empty.npz"'), "data.eval:", "empty.npz holds no arrays")
    assert "(has: )" not in line


def test_width_mismatch_named_before_torch_runs(recipe_dir):
    cols = tiny_table(recipe_dir)
    cols.pop("f5")
    write_csv(recipe_dir / "narrow.csv", list(cols), [[cols[c][i] for c in cols] for i in range(800)])
    line = run_bad(recipe_dir, NO_LATENCY.replace('"eval.npz"', '"narrow.csv"').replace('calibration = "calib.npz"\n', ""),
                   "data.eval: array 'features' in narrow.csv has shape (800, 5) (5 feature columns), model input expects ('batch', 6)")
    assert "Guard failed" not in line


def test_missing_group_in_wide_csv_suggests_near_names(recipe_dir):
    a = tiny_arrays(recipe_dir)
    header = [f"feature_{i}" for i in range(96)] + ["label", "g", "hh"]
    rows = [[*np.tile(a["features"][i], 16).tolist(), a["label"][i], a["g"][i], a["h"][i]] for i in range(100)]
    write_csv(recipe_dir / "wide.csv", header, rows)
    line = run_bad(recipe_dir, NO_LATENCY.replace('"eval.npz"', '"wide.csv"').replace('calibration = "calib.npz"\n', ""),
                   "data.eval: group column 'h' not in", "wide.csv", "(did you mean: hh?)")
    assert "feature_17" not in line and len(line) < 200


def test_empty_csv(recipe_dir):
    (recipe_dir / "empty.csv").write_text("")
    run_bad(recipe_dir, NO_LATENCY.replace('"eval.npz"', '"empty.csv"'), "data.eval:", "empty.csv needs a header row")


def test_missing_column_without_near_name_stays_short(tmp_path):
    write_csv(tmp_path / "d.csv", [f"c{i}" for i in range(50)], [list(range(50))])
    with pytest.raises(DataError) as e:
        data_mod.load(tmp_path / "d.csv", key="data.eval", label=None, groups=("sex",))
    assert str(e.value) == f"data.eval: group column 'sex' not in {tmp_path / 'd.csv'} (50 columns, none close)"


def test_readme_data_formats_example_is_a_valid_data_table(images):
    """The README's image example, as written, is a [data] table the recipe parser accepts, and
    reads a folder laid out as it says, with an index beside it."""
    import re
    import tomllib

    from edgefair.config import build
    from edgefair.prepare import read_options
    from edgefair.recipe import DataConfig

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Data formats"):]
    block = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    table = tomllib.loads(block)["data"]
    config = build(DataConfig, table, "data")
    root, items = images
    (root / "imgs").rename(root / "photos")
    write_csv(root / "photos" / "calib.csv", ["path", "light"], [[p, light] for p, light, _, _ in items[:5]])
    (root / "r.toml").write_text(image_recipe("photos", "photos/calib.csv"))
    from edgefair.recipe import load_recipe

    recipe = load_recipe(root / "r.toml")
    recipe = type(recipe)(**{**recipe.__dict__, "data": config})
    options = read_options(recipe)
    d = data_mod.load(root / config.eval, key="data.eval", label=config.label, groups=config.groups, options=options)
    assert d.inputs[data_mod.CSV_INPUT].shape == (len(items), 3, 224, 224)
    c = data_mod.load(root / config.calibration, key="data.calibration", label=None, groups=(), optional_groups=config.groups, options=options)
    assert c.n == 5 and c.attributes["light"].tolist() == [it[1] for it in items[:5]]



def test_oversized_image_is_bad_input(images, monkeypatch):
    """Pillow's decompression-bomb guard (here lowered to 10 pixels) is bad input naming the file."""
    root, _ = images
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)
    with pytest.raises(DataError, match=r"data.eval: cannot read image .*\.png: Image size \(64 pixels\) exceeds limit"):
        data_mod.load(root / "imgs", key="data.eval", label=None, groups=(), options=ReadOptions(subfolders=("light", "label")))


def test_infinite_csv_value_is_named_not_cast_to_an_integer(recipe_dir):
    """A column of whole numbers with one "inf" was cast to int64 (a huge negative number, silently)."""
    cols = tiny_table(recipe_dir)
    rows = [[cols[c][i] for c in cols] for i in range(800)]
    for r in rows:
        r[2] = int(round(float(r[2])))  # f2 holds whole numbers only...
    rows[3][2] = "inf"  # ...and one infinite value
    write_csv(recipe_dir / "inf.csv", list(cols), rows)
    run_bad(recipe_dir, NO_LATENCY.replace('"eval.npz"', '"inf.csv"').replace('calibration = "calib.npz"\n', ""),
            "data.eval: array 'features' in inf.csv has NaN or infinite values in 1 rows (first: row 3)")
