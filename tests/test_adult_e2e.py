"""The bundled default recipe on real UCI Adult data, end to end, checked against an independent
recomputation from each step's ONNX file (onnxruntime + scikit-learn + fairlearn)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from fairlearn.metrics import MetricFrame
from sklearn.metrics import accuracy_score

from conftest import REPO, run_cli


@pytest.fixture(scope="module")
def adult_run(bundled_out):
    return bundled_out, json.loads((bundled_out / "report.json").read_text())


def test_the_terminal_names_the_largest_harm_first(adult_run):
    """README/issue: the first screen of the terminal names the group, metric and size of the
    largest harm (the same sentence as report.md's, recomputed here from the gate entries)."""
    from edgefair import render as r

    out, report = adult_run
    text = (out.parent / "terminal.txt").read_text().splitlines()
    step, gate = r.largest_harm(report)
    best = max(((g["value"] / g["threshold"]), g["group"]) for s in report["steps"][1:] for g in s["gates"]
               if g["gate"] in r.GATE_TEXT and g.get("direction") == "max" and g.get("value") is not None and g.get("threshold"))
    assert gate["group"] == best[1]
    verdict = next(i for i, x in enumerate(text) if x.startswith("verdict:"))  # after the progress lines (stderr)
    line = next(i for i, x in enumerate(text) if x.startswith("largest harm:"))
    assert 0 < line - verdict <= 3  # right under the verdict
    joined = " ".join(x.strip() for x in text[line:line + 3])
    assert gate["group"] in joined and r.gate_words(gate["gate"]) in joined and r.fmt_observed(gate) in joined


def test_default_recipe_reports_every_group_of_every_step(adult_run):
    _, report = adult_run
    assert len(report["steps"]) >= 4
    assert report["verdict"] == "pass" and report["selected"] is not None
    for step in report["steps"]:
        for key in ["sex=Female", "sex=Male", "race=White", "race=Black", "race=Asian-Pac-Islander", "race=Amer-Indian-Eskimo", "race=Other"]:
            g = step["groups"][key]
            assert g["status"] == "ok" and {"accuracy", "ece", "n"} <= set(g)
            if step["index"] > 0:
                assert "flip_rate" in g and "accuracy_delta_ci" in g
        assert step["latency"]["p95_ms"] > 0 and step["latency"]["runs"] >= 200 and step["latency"]["min_time_s"] == 0.5


def test_no_step_that_breaks_equal_opportunity_passes_or_ships(adult_run):
    """The bundled run's structured steps keep accuracy but take 6-8 points of women's TPR: they
    fail, the reports name the group on their first screen, and a step that harms no one ships.
    Checked against TPR/FPR recomputed from the ONNX files with fairlearn."""
    from fairlearn.metrics import false_positive_rate, true_positive_rate

    out, report = adult_run
    with np.load(REPO / "calibration_data" / "adult_eval.npz") as z:
        x, y, sex, race = z["features"], z["label"], z["sex"], z["race"]
    preds = {}
    for step in report["steps"]:
        sess = ort.InferenceSession(str(out / step["model"]), providers=["CPUExecutionProvider"])
        b = step["eval_batch_size"]
        preds[step["index"]] = np.concatenate([sess.run(None, {"features": x[i:i + b]})[0] for i in range(0, len(x), b)]).argmax(1)
    harmful = set()
    for step in report["steps"][1:]:
        for attr, col in (("sex", sex), ("race", race)):
            metrics = {"tpr": true_positive_rate, "fpr": false_positive_rate}
            now = MetricFrame(metrics=metrics, y_true=y, y_pred=preds[step["index"]], sensitive_features=col).by_group
            then = MetricFrame(metrics=metrics, y_true=y, y_pred=preds[0], sensitive_features=col).by_group
            for value in np.unique(col):
                pos, neg = int(((col == value) & (y == 1)).sum()), int(((col == value) & (y == 0)).sum())
                tpr_drop = then.loc[value, "tpr"] - now.loc[value, "tpr"]
                fpr_rise = now.loc[value, "fpr"] - then.loc[value, "fpr"]
                if (pos >= 200 and tpr_drop >= 0.03) or (neg >= 200 and fpr_rise >= 0.03):
                    harmful.add((step["index"], f"{attr}={value}"))
    assert {s for s, _ in harmful} >= {5, 6}, harmful  # the structured steps do harm women
    for index, group in harmful:
        step = report["steps"][index]
        assert not step["passed"], (step["name"], group)
        assert report["selected"]["step"] != index
    assert report["verdict"] == "pass" and report["steps"][report["selected"]["step"]]["passed"]
    first_screen = (out / "report.md").read_text().split("| # |")[0]
    for index, group in harmful:
        assert group in first_screen, group


def test_dynamic_quantization_is_evaluated_at_the_deployed_batch(adult_run):
    _, report = adult_run
    sizes = {s["kind"]: s["eval_batch_size"] for s in report["steps"]}
    assert sizes["quantize_dynamic"] == 1 and sizes["export"] == 1024


def test_per_group_accuracy_matches_recomputation(adult_run):
    out, report = adult_run
    with np.load(REPO / "calibration_data" / "adult_eval.npz") as z:
        x, y, sex, race = z["features"], z["label"], z["sex"], z["race"]
    base = None
    for step in report["steps"]:
        sess = ort.InferenceSession(str(out / step["model"]), providers=["CPUExecutionProvider"])
        # dynamic int8 computes activation ranges per call: evaluate at the batch edgefair used
        b = step["eval_batch_size"]
        pred = np.concatenate([sess.run(None, {"features": x[i : i + b]})[0] for i in range(0, len(x), b)]).argmax(1)
        base = pred if base is None else base
        frame = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=pred, sensitive_features={"sex": sex, "race": race})
        for (s, r), acc in frame.by_group.items():
            entry = step["groups"].get(f"sex={s}&race={r}")
            if entry and entry["status"] == "ok":
                assert entry["accuracy"] == pytest.approx(acc, abs=1e-9)
        for attr, col in (("sex", sex), ("race", race)):
            for value in np.unique(col):
                m = col == value
                entry = step["groups"][f"{attr}={value}"]
                assert entry["n"] == int(m.sum())
                assert entry["accuracy"] == pytest.approx(accuracy_score(y[m], pred[m]), abs=1e-9)
                if step["index"] > 0:
                    assert entry["flip_rate"] == pytest.approx(float(np.mean(pred[m] != base[m])), abs=1e-9)


def test_digits_cnn_recipe_end_to_end(digits_out):
    """The CNN reference recipe on real scikit-learn digits: structured pruning shrinks the exported
    convolutions, every digit is reported, and the gates pass (exit 0: the fixture checks it)."""
    import onnx

    out = digits_out
    report = json.loads((out / "report.json").read_text())
    assert {f"digit={d}" for d in range(10)} <= set(report["steps"][0]["groups"])
    pruned = next(s for s in report["steps"] if s["name"] == "pruned")

    def conv_channels(path):
        model = onnx.load(str(path))
        weights = {t.name: t.dims for t in model.graph.initializer}
        return [weights[n.input[1]][0] for n in model.graph.node if n.op_type == "Conv" and n.input[1] in weights]

    base, small = conv_channels(out / "00-baseline.onnx"), conv_channels(out / pruned["model"])
    assert base and len(base) == len(small) and all(s == b // 2 for s, b in zip(small, base))
    assert pruned["size_bytes"] < 0.35 * report["steps"][0]["size_bytes"]
