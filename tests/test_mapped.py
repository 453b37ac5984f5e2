"""Eval arrays mapped from an uncompressed .npz (mapped.py): the same values as np.load, the same
statistics as an eval set held in memory, and resident memory that a pass hands back."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgefair import data as data_mod
from edgefair import mapped
from edgefair.errors import DataError

from conftest import BASE_RECIPE, run_cli, write_recipe


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "x": rng.normal(size=(50, 4, 3)).astype(np.float32),
        "ids": rng.integers(0, 9, size=(50, 7)),
        "mask": rng.random(50) < 0.5,
        "label": rng.integers(0, 2, 50).astype(np.int8),
        "group": np.array(["alpha", "b"] * 25),
        "bytes": np.array([b"q", b"rr"] * 25),
    }


def test_mapped_arrays_equal_np_load_and_are_read_only(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, **_arrays())
    got = mapped.map_npz(path)
    with np.load(path, allow_pickle=False) as z:
        assert sorted(got) == sorted(z.files)
        for name in z.files:
            assert got[name].dtype == z[name].dtype and got[name].shape == z[name].shape
            np.testing.assert_array_equal(got[name], z[name])
            assert mapped.mapping_of(got[name][3:9]) is not None  # views read the file too
            assert not got[name].flags.writeable


@pytest.mark.parametrize("how", ["compressed", "fortran", "object"])
def test_members_that_cannot_be_mapped_fall_back_to_reading_whole(tmp_path, how):
    path = tmp_path / "d.npz"
    if how == "compressed":
        np.savez_compressed(path, x=np.ones((4, 2), np.float32))
    elif how == "fortran":
        np.savez(path, x=np.asfortranarray(np.arange(12, dtype=np.float32).reshape(4, 3)))
    else:
        np.savez(path, x=np.array([{"a": 1}, None], dtype=object))
    assert mapped.map_npz(path) is None
    if how == "object":  # read whole, the pickle is still refused
        with pytest.raises(DataError, match="pickled"):
            data_mod.load(path, key="data.eval", label=None, groups=(), stream=True)
    else:
        loaded = data_mod.load(path, key="data.eval", label=None, groups=(), stream=True)
        assert mapped.mapping_of(loaded.inputs["x"]) is None
        with np.load(path) as z:
            np.testing.assert_array_equal(loaded.inputs["x"], z["x"])


def test_a_truncated_npz_is_a_data_error_not_a_crash(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((1000, 8), np.float32))
    raw = path.read_bytes()
    # cut the member's data but keep the zip's central directory: the sizes no longer fit the file
    with zipfile.ZipFile(path) as z:
        offset = z.infolist()[0].header_offset
    cut = tmp_path / "cut.npz"
    cut.write_bytes(raw[: offset + 200] + raw[-200:])
    with pytest.raises(DataError, match=r"data\.eval.*cut\.npz"):
        data_mod.load(cut, key="data.eval", label=None, groups=(), stream=True)


def test_only_inputs_stay_mapped_labels_and_groups_are_copied(tmp_path):
    path = tmp_path / "d.npz"
    arrays = _arrays()
    np.savez(path, **arrays)
    loaded = data_mod.load(path, key="data.eval", label="label", groups=["group"], ignore=("bytes", "mask", "ids"), stream=True)
    assert mapped.mapping_of(loaded.inputs["x"]) is not None
    assert mapped.mapping_of(loaded.labels) is None and mapped.mapping_of(loaded.attributes["group"]) is None
    np.testing.assert_array_equal(loaded.labels, arrays["label"])
    feeds = list(loaded.batches(7))
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in feeds]), arrays["x"])
    assert [len(f["x"]) for f in feeds] == [7] * 7 + [1]


def _resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping's first line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_a_pass_over_mapped_rows_hands_the_pages_back(tmp_path, monkeypatch):
    """The claim behind the million-row benchmark: a pass over the eval rows keeps at most about
    RELEASE_BYTES of them resident, however many there are."""
    monkeypatch.setattr(mapped, "RELEASE_BYTES", 2**20)
    path = tmp_path / "big.npz"
    np.savez(path, features=np.ones((40_000, 256), np.float32))  # 41 MB
    loaded = data_mod.load(path, key="data.eval", label=None, groups=(), stream=True)
    peak = 0
    total = 0.0
    for feed in loaded.batches(1000):
        total += float(feed["features"].sum(dtype=np.float64))
        peak = max(peak, _resident_kb(path))
    assert total == 40_000 * 256
    assert 0 < peak <= 4 * 1024, f"{peak} kB of the file resident during the pass"
    assert _resident_kb(path) == 0
    # without the release the whole file would stay resident after one pass: the check can fail
    whole = mapped.map_npz(path)["features"]
    float(whole.sum(dtype=np.float64))
    assert _resident_kb(path) > 30 * 1024


def test_mapped_and_in_memory_eval_sets_give_the_same_statistics(recipe_dir):
    """The same rows from an uncompressed (mapped) and a compressed (read whole) .npz: report.json
    statistics and verdicts equal."""
    with np.load(recipe_dir / "eval.npz") as z:
        np.savez_compressed(recipe_dir / "eval_packed.npz", **{k: z[k] for k in z.files})
    reports = []
    for name in ("eval.npz", "eval_packed.npz"):
        text = BASE_RECIPE.replace('eval = "eval.npz"', f'eval = "{name}"') + '\n[[steps]]\nkind = "quantize_dynamic"\n'
        recipe = write_recipe(recipe_dir / f"r_{name}.toml", text)
        out = recipe_dir / f"out_{name}"
        result = run_cli(["run", str(recipe), "--out", str(out), "--no-cache", "-q"])
        assert result.exit_code in (0, 1), result.output
        reports.append(json.loads((out / "report.json").read_text()))
    a, b = reports
    assert a["verdict"] == b["verdict"]
    assert len(a["steps"]) == len(b["steps"]) == 2
    for sa, sb in zip(a["steps"], b["steps"]):
        for field in ("overall", "groups", "disparity", "gates", "passed"):
            assert sa[field] == sb[field], field


def test_a_file_rewritten_while_it_is_read_is_a_data_error(tmp_path):
    """Rewriting a mapped eval file in place (np.savez to the same path) between passes: the next
    pass ends with a DataError naming the file, instead of statistics from a mix of two files."""
    path = tmp_path / "d.npz"
    np.savez(path, features=np.zeros((5000, 8), np.float32))
    loaded = data_mod.load(path, key="data.eval", label=None, groups=(), stream=True)
    assert sum(len(f["features"]) for f in loaded.batches(1000)) == 5000
    np.savez(path, features=np.ones((5000, 8), np.float32))  # same size, new content and mtime
    import os

    os.utime(path, ns=(1, 1))  # a different modification time even on a coarse clock
    with pytest.raises(DataError, match=r"data\.eval: .*d\.npz changed while edgefair read it"):
        list(loaded.batches(1000))


def test_batches_follow_the_batch_grid_of_row_0_across_release_chunks(tmp_path, monkeypatch):
    """A pass hands pages back in runs of whole batches: every batch but the last is full, as the
    model (fixed batch, or outputs that depend on the batch) must see them, and `limit` stops at it."""
    monkeypatch.setattr(mapped, "RELEASE_BYTES", 1000 * 4 * 8 + 123)  # 1,000.x rows: not a multiple of 64
    path = tmp_path / "d.npz"
    np.savez(path, features=np.arange(10_000 * 8, dtype=np.float32).reshape(10_000, 8))
    for stream in (True, False):
        loaded = data_mod.load(path, key="data.eval", label=None, groups=(), stream=stream)
        sizes = [len(f["features"]) for f in loaded.batches(64)]
        assert sizes == [64] * 156 + [16]
        assert sum(len(f["features"]) for f in loaded.batches(64, limit=100)) == 100


REWRITE = """
import os, sys
import numpy as np
from pathlib import Path
from edgefair import data as data_mod
from edgefair.errors import DataError

path = Path(sys.argv[1])
np.savez(path, features=np.zeros((20_000, 64), np.float32))
loaded = data_mod.load(path, key="data.eval", label=None, groups=(), stream=True)
sum(len(f["features"]) for f in loaded.batches(1000))  # one whole pass
before = os.stat(path)
if sys.argv[2] == "smaller":  # rewritten in place, shorter: its pages beyond the end are gone
    np.savez(path, features=np.zeros((10, 64), np.float32))
else:  # the same size, the old modification time put back (cp -p, rsync -t)
    np.savez(path, features=np.ones((20_000, 64), np.float32))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
try:
    list(loaded.batches(1000))
except DataError as e:
    print(e)
    sys.exit(2)
"""


@pytest.mark.parametrize("how", ["smaller", "same size, old mtime"])
def test_a_file_rewritten_between_passes_is_a_data_error_not_a_crash(tmp_path, how):
    """In a child process, so that a regression shows as a failed test, not a crashed session
    (reading a mapped page past a file's new end is SIGBUS)."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", REWRITE, str(tmp_path / "d.npz"), how.split(",")[0]],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "d.npz changed while edgefair read it" in done.stdout


def test_a_header_that_does_not_fit_its_member_is_not_mapped(tmp_path):
    """A corrupt shape in a member's header would make the array read into the next member: such
    a file is read by np.load instead, which reports it (a DataError naming the file)."""
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones(100, np.float32), y=np.zeros(100, np.float32))
    raw = path.read_bytes()
    assert raw.count(b"(100,)") == 2
    path.write_bytes(raw.replace(b"(100,)", b"(199,)", 1))
    assert mapped.map_npz(path) is None
    with pytest.raises(DataError, match=r"data\.eval: cannot read .*d\.npz"):
        data_mod.load(path, key="data.eval", label=None, groups=(), stream=True)


def _resident_kb_at(arr: np.ndarray) -> int:
    """Resident kB of the mapping that holds `arr`'s first byte (/proc/self/smaps)."""
    address, inside, total = arr.ctypes.data, False, 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:
            lo, hi = (int(v, 16) for v in head[0].split("-"))
            inside = lo <= address < hi
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_a_float64_file_for_a_float32_model_is_converted_without_holding_its_rows(tmp_path, monkeypatch):
    """numpy saves float64 by default: the conversion to the model's float32 goes run by run into a
    mapped temporary file, so neither the file's rows nor the converted ones stay resident."""
    monkeypatch.setattr(mapped, "RELEASE_BYTES", 2**20)
    x = np.random.default_rng(1).normal(size=(40_000, 128))  # 41 MB as float64
    path = tmp_path / "d.npz"
    np.savez(path, features=x)
    loaded = data_mod.load(path, key="data.eval", label=None, groups=(), stream=True)
    out = mapped.cast(loaded.inputs["features"], np.float32)
    assert out.dtype == np.float32 and mapped.mapping_of(out) is not None and not out.flags.writeable
    assert _resident_kb_at(out) <= 4 * 1024 and _resident_kb(path) == 0  # after the conversion
    peak, rows = 0, []
    for feed in data_mod.Dataset(path, {"features": out}, None, {}).batches(1000):
        rows.append(feed["features"][:, :2].copy())
        peak = max(peak, _resident_kb_at(out))
    assert 0 < peak <= 4 * 1024
    np.testing.assert_array_equal(np.concatenate(rows), x[:, :2].astype(np.float32))


def test_a_float64_eval_file_gives_the_statistics_of_its_float32_twin(recipe_dir):
    """numpy's default float64 rows for a float32 torch model: traced and exported in float32, the
    rows converted through a mapped temporary file; the statistics of the float32 file."""
    with np.load(recipe_dir / "eval.npz") as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(recipe_dir / "eval64.npz", **{**arrays, "features": arrays["features"].astype(np.float64)})
    reports = []
    for name in ("eval.npz", "eval64.npz"):
        text = BASE_RECIPE.replace('eval = "eval.npz"', f'eval = "{name}"') + '\n[[steps]]\nkind = "quantize_dynamic"\n'
        out = recipe_dir / f"out_{name}"
        result = run_cli(["run", str(write_recipe(recipe_dir / f"r_{name}.toml", text)), "--out", str(out), "--no-cache", "-q"])
        assert result.exit_code in (0, 1), result.output
        reports.append(json.loads((out / "report.json").read_text()))
    assert reports[0]["steps"][0]["sha256"] == reports[1]["steps"][0]["sha256"]  # the same float32 export
    for sa, sb in zip(reports[0]["steps"], reports[1]["steps"]):
        for field in ("overall", "groups", "disparity", "gates", "passed"):
            assert sa[field] == sb[field], field


from test_publish import small_disk  # noqa: E402,F401 - a 1 MB tmpfs


def test_a_full_temporary_folder_is_a_data_error_naming_it(tmp_path, small_disk, monkeypatch):
    """Converting a mapped float64 array needs its float32 size in the temporary folder: a real
    full disk (1 MB tmpfs, 1.6 MB needed) is a one-line DataError naming the folder and the size,
    not a crash (stores into a mapping of a sparse file there would be SIGBUS)."""
    import tempfile

    path = tmp_path / "d.npz"
    np.savez(path, features=np.ones((2000, 200)))
    loaded = data_mod.load(path, key="data.eval", label=None, groups=(), stream=True)
    monkeypatch.setattr(tempfile, "tempdir", str(small_disk))
    with pytest.raises(DataError, match=rf"array 'features': cannot convert it from float64 to the model's float32 in the "
                                        rf"temporary folder {small_disk} \(No space left on device\); it needs 2 MB there"):
        mapped.cast(loaded.inputs["features"], np.float32, "data.eval: array 'features'")
    assert not list(small_disk.iterdir())  # nothing left behind


def _source(module, names=("features",)):
    from edgefair.source import ModelSource

    return ModelSource("factory", "test:build", None, module.eval(), list(names), None)


def _rows(x: np.ndarray) -> "data_mod.Dataset":
    return data_mod.Dataset(Path("eval.npz"), {"features": x}, None, {})


def test_torch_rows_are_traced_as_they_are_unless_they_fail_then_in_the_models_float_dtype():
    """Which float dtype the exporter traces real-valued rows in: the data's own whenever the model
    runs on it (a float64 model on float64 rows; a model with float64 normalisation buffers and
    float32 weights on float32 rows); the model's float dtype only when the rows as they are fail
    (float64 rows, numpy's default, for a float32 model); a bfloat16 model is a one-line DataError."""
    import torch

    from edgefair.prepare import _check_torch_inputs

    class Normalised(torch.nn.Module):  # float64 buffers first, float32 weights: computes in float32 at the end
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.zeros(4, dtype=torch.float64))
            self.linear = torch.nn.Linear(4, 2)

        def forward(self, features):
            return self.linear((features.double() - self.mean).float())

    x32 = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    assert _check_torch_inputs(_source(torch.nn.Linear(4, 2).double()), _rows(x32.astype(np.float64))) == {}
    assert _check_torch_inputs(_source(Normalised()), _rows(x32)) == {}  # not cast to the buffers' float64
    assert _check_torch_inputs(_source(torch.nn.Linear(4, 2)), _rows(x32.astype(np.float64))) == {"features": np.float32}
    with pytest.raises(DataError, match=r"data\.eval: arrays \(features: \(8, 4\)\) in eval\.npz do not fit the model"):
        _check_torch_inputs(_source(torch.nn.Linear(4, 2).to(torch.bfloat16)), _rows(x32))
