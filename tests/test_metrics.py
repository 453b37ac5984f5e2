"""edgefair.metrics against independent references: scikit-learn, fairlearn, torchmetrics, direct formulas."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from fairlearn.metrics import false_positive_rate, selection_rate, true_positive_rate
from scipy.special import expit
from scipy.special import softmax as scipy_softmax
from sklearn import metrics as skm
from torchmetrics.functional.classification import multiclass_calibration_error

from edgefair import metrics as mt
from edgefair.errors import DataError


def random_case(seed: int, n: int, k: int, sharpness: float = 2.0):
    """Labels and moderately informative probabilities with continuous confidences."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(0.0, sharpness, (n, k))
    logits[np.arange(n), y] += sharpness * 0.8
    return y, scipy_softmax(logits, axis=1)


def direct_ece(conf, correct, edges, *, right_closed=True, reduce="sum"):
    """ECE/MCE written out bin by bin, straight from the definition."""
    n, total, worst = len(conf), 0.0, 0.0
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        if right_closed:
            inside = ((conf > lo) | ((i == 0) & (conf == lo))) & (conf <= hi)
        else:  # torchmetrics: [lo, hi), and 1.0 in a bin of its own
            inside = (conf >= lo) & (conf < hi)
        if inside.any():
            gap = abs(conf[inside].mean() - correct[inside].mean())
            total += inside.sum() / n * gap
            worst = max(worst, gap)
    if not right_closed:
        ones = conf >= edges[-1]
        if ones.any():
            gap = abs(conf[ones].mean() - correct[ones].mean())
            total += ones.sum() / n * gap
            worst = max(worst, gap)
    return total if reduce == "sum" else worst


# --- to_probabilities ------------------------------------------------------------------------


def test_logits_become_softmax():
    logits = np.random.default_rng(0).normal(0, 3, (50, 4))
    np.testing.assert_allclose(mt.to_probabilities(logits), scipy_softmax(logits, axis=1), atol=1e-12)


def test_binary_logit_column_becomes_two_columns():
    z = np.array([-3.0, 0.0, 2.5, 40.0, -800.0])
    for shaped in (z, z[:, None]):
        p = mt.to_probabilities(shaped)
        np.testing.assert_allclose(p[:, 1], expit(z), atol=1e-15)
        np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_probabilities_pass_through_and_single_column_is_p_of_class_1():
    p = np.array([[0.2, 0.8], [1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(mt.to_probabilities(p), p, atol=1e-7)
    np.testing.assert_allclose(mt.to_probabilities(np.array([0.0, 0.25, 1.0])),
                               [[1, 0], [0.75, 0.25], [0, 1]])


def test_auto_reads_rows_not_summing_to_one_as_logits():
    x = np.array([[0.2, 0.3], [0.1, 0.1]])  # in [0, 1] but rows sum to 0.5 and 0.2
    np.testing.assert_allclose(mt.to_probabilities(x), scipy_softmax(x, axis=1))
    with pytest.raises(DataError, match=re.escape(mt.NOT_PROBABILITIES_ERROR)):
        mt.to_probabilities(x, kind="probabilities")


def test_huge_logits_do_not_overflow():
    p = mt.to_probabilities(np.array([[1000.0, -1000.0, 0.0], [-1e308, 1e308, 0.0]]))
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, [[1, 0, 0], [0, 1, 0]])


def test_bad_outputs_are_errors():
    with pytest.raises(DataError, match=re.escape(mt.NON_FINITE_ERROR)):
        mt.to_probabilities(np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="kind must be"):
        mt.to_probabilities(np.zeros(3), kind="odds")  # type: ignore[arg-type]
    with pytest.raises(DataError):
        mt.to_probabilities(np.zeros((2, 2, 2)))


# --- classification metrics vs scikit-learn / fairlearn --------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [2, 3, 5])
def test_classification_metrics_match_sklearn(seed, k):
    y, p = random_case(seed, 300, k)
    got = mt.classification_metrics(y, p)
    pred = p.argmax(axis=1)
    labels = list(range(k))
    avg = dict(average="binary", pos_label=1) if k == 2 else dict(average="macro", labels=labels)
    assert got["n"] == 300
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert got["tpr"] == pytest.approx(skm.recall_score(y, pred, zero_division=np.nan, **avg))
    assert got["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=np.nan, **avg))
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, zero_division=np.nan, **avg))
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, p if k > 2 else p[:, 1]))
    assert got["nll"] == pytest.approx(skm.log_loss(y, p, labels=labels))
    assert got["selection_rate"] == pytest.approx(selection_rate(y, pred, pos_label=1))
    if k == 2:
        assert got["fpr"] == pytest.approx(false_positive_rate(y, pred))
    else:  # macro average of one-vs-rest FPRs
        fprs = [false_positive_rate(y == c, pred == c) for c in labels]
        assert got["fpr"] == pytest.approx(np.mean(fprs))


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_one_class_group_has_undefined_tpr_not_zero():
    y = np.zeros(6, dtype=int)
    p = np.array([[0.9, 0.1]] * 4 + [[0.3, 0.7]] * 2)
    got = mt.classification_metrics(y, p)
    assert got["tpr"] is None  # no positives: recall is undefined
    assert got["fpr"] == pytest.approx(2 / 6)
    assert got["precision"] == 0.0 and got["f1"] == 0.0
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, p.argmax(1)))
    assert got["accuracy"] == pytest.approx(4 / 6)


def test_all_predictions_identical():
    y = np.array([0, 1, 1, 0, 1])
    p = np.tile([0.6, 0.4], (5, 1))  # always predicts class 0
    got = mt.classification_metrics(y, p)
    assert got["selection_rate"] == 0.0
    assert got["precision"] is None  # never predicts the positive class
    assert got["tpr"] == 0.0 and got["fpr"] == 0.0 and got["f1"] == 0.0
    assert got["ece"] == pytest.approx(abs(0.6 - 0.4))  # one bin: confidence 0.6, accuracy 0.4
    assert got["mce"] == pytest.approx(0.2)


def test_probabilities_of_exactly_zero_and_one():
    y = np.array([1, 0, 1, 0])
    p = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # two right, two certain and wrong
    got = mt.classification_metrics(y, p)
    assert got["nll"] == pytest.approx(skm.log_loss(y, p))  # finite: clipped at float64 eps
    assert got["nll"] == pytest.approx(-np.log(np.finfo(np.float64).eps) / 2)
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y, p[:, 1]))
    assert got["ece"] == pytest.approx(0.5) and got["mce"] == pytest.approx(0.5)
    perfect = np.eye(2)[y]
    assert mt.classification_metrics(y, perfect)["ece"] == 0.0
    assert mt.classification_metrics(y, perfect)["nll"] == pytest.approx(skm.log_loss(y, perfect))


def test_empty_rows_give_none():
    got = mt.classification_metrics(np.zeros(0, dtype=int), np.zeros((0, 2)))
    assert got["n"] == 0
    assert all(v is None for k, v in got.items() if k != "n")


def test_bad_labels_are_errors():
    p = np.full((3, 2), 0.5)
    with pytest.raises(DataError, match="integer class ids"):
        mt.classification_metrics(np.array([0, 1, 2]), p)
    with pytest.raises(DataError, match="integer class ids"):
        mt.classification_metrics(np.array(["a", "b", "a"]), p)


def test_positive_rates_match_fairlearn_for_multiclass_one_vs_rest():
    y, p = random_case(3, 200, 4)
    pred = p.argmax(1)
    rates = mt.grouped_classification(y, p, mt.Groups([np.ones(len(y), dtype=bool)]), positive_label=2)
    tpr, fpr = rates["positive_tpr"][0], rates["positive_fpr"][0]
    assert tpr == pytest.approx(true_positive_rate(y == 2, pred == 2))
    assert fpr == pytest.approx(false_positive_rate(y == 2, pred == 2))


# --- calibration ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [2, 4])
@pytest.mark.parametrize("n_bins", [15, 7])
def test_ece_and_mce_match_direct_formula_and_torchmetrics(seed, k, n_bins):
    y, p = random_case(seed, 500, k)
    conf, correct = p.max(1), (p.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    got_ece = mt.ece(p, y, n_bins=n_bins)
    got_mce = mt.mce(p, y, n_bins=n_bins)
    assert got_ece == pytest.approx(direct_ece(conf, correct, edges), abs=1e-12)
    assert got_mce == pytest.approx(direct_ece(conf, correct, edges, reduce="max"), abs=1e-12)
    # torchmetrics computes in float32 internally; no confidence lies on a bin edge here
    preds, target = torch.from_numpy(p), torch.from_numpy(y)
    tm_ece = multiclass_calibration_error(preds, target, num_classes=k, n_bins=n_bins, norm="l1")
    tm_mce = multiclass_calibration_error(preds, target, num_classes=k, n_bins=n_bins, norm="max")
    assert got_ece == pytest.approx(tm_ece.item(), abs=1e-6)
    assert got_mce == pytest.approx(tm_mce.item(), abs=1e-6)


def test_bin_edges_are_right_closed_unlike_torchmetrics():
    edges = np.linspace(0, 1, 16)
    # confidences exactly on the inner edge 10/15 and exactly 1, sharing bins with other rows
    conf = np.array([edges[10], edges[10], 0.70, 0.70, 1.0, 1.0, 0.97, 0.97])
    p = np.stack([1 - conf, conf], axis=1)
    y = np.array([1, 0, 1, 1, 1, 1, 0, 1])
    correct = (p.argmax(1) == y).astype(float)
    ours = mt.ece(p, y)
    assert ours == pytest.approx(direct_ece(conf, correct, edges, right_closed=True))
    tm = multiclass_calibration_error(torch.from_numpy(p), torch.from_numpy(y), num_classes=2, norm="l1").item()
    assert tm == pytest.approx(direct_ece(conf, correct, edges, right_closed=False))
    assert ours != pytest.approx(tm)  # the documented difference, pinned
    assert mt.bin_index(np.array([0.0, edges[1], 1.0]), edges).tolist() == [0, 0, 14]


def test_reliability_bins():
    y, p = random_case(1, 400, 3)
    bins = mt.reliability(p, y, n_bins=10)
    conf, correct = p.max(1), p.argmax(1) == y
    assert len(bins) == 10 and sum(b["count"] for b in bins) == 400
    assert bins[0]["lo"] == 0.0 and bins[-1]["hi"] == 1.0
    for b in bins:
        inside = (conf > b["lo"]) & (conf <= b["hi"])
        assert b["count"] == inside.sum()
        if b["count"]:
            assert b["confidence"] == pytest.approx(conf[inside].mean())
            assert b["accuracy"] == pytest.approx(correct[inside].mean())
        else:
            assert b["confidence"] is None and b["accuracy"] is None
    ece_from_bins = sum(b["count"] / 400 * abs(b["confidence"] - b["accuracy"]) for b in bins if b["count"])
    assert mt.ece(p, y, n_bins=10) == pytest.approx(ece_from_bins)


def test_equal_mass_bins():
    y, p = random_case(2, 600, 2)
    bins = mt.reliability(p, y, n_bins=15, strategy="quantile")
    assert [b["count"] for b in bins] == [40] * 15  # distinct confidences split evenly
    conf, correct = p.max(1), (p.argmax(1) == y).astype(float)
    edges = np.quantile(conf, np.linspace(0, 1, 16))
    edges[0], edges[-1] = 0.0, 1.0
    assert mt.ece(p, y, strategy="quantile") == pytest.approx(direct_ece(conf, correct, edges))


def test_equal_mass_bins_keep_ties_together():
    p = np.tile([0.3, 0.7], (30, 1))
    y = np.array([1] * 21 + [0] * 9)
    bins = mt.reliability(p, y, n_bins=5, strategy="quantile")
    assert sorted(b["count"] for b in bins) == [0, 0, 0, 0, 30]
    assert mt.ece(p, y, n_bins=5, strategy="quantile") == pytest.approx(0.0)


def test_bad_binning_arguments():
    y, p = random_case(0, 10, 2)
    with pytest.raises(ValueError, match="strategy must be"):
        mt.ece(p, y, strategy="log")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_bins must be"):
        mt.ece(p, y, n_bins=0)


# --- fidelity ---------------------------------------------------------------------------------


def test_row_fidelity():
    a = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 0.0], [3.0, 4.0], [-1.0, -1.0]])
    cos, rel = mt.row_fidelity(a, b)
    np.testing.assert_allclose(cos, [1.0, 1.0, 1.0, -1.0])
    np.testing.assert_allclose(rel, [0.5, 0.0, 0.0, 2.0])
    from edgefair.stats import StatsConfig, evaluate_step

    step, base = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]), np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    fid = evaluate_step(masks={"g=x": np.ones(3, dtype=bool)}, probs=step, outputs=a[:3], y_true=None, base_probs=base,
                        base_outputs=b[:3], config=StatsConfig(n_boot=0, min_group_size=1))["overall"]
    assert fid["flip_rate"] == pytest.approx(1 / 3) and fid["agreement"] == pytest.approx(2 / 3)
    assert fid["cosine_min"] == 1.0 and fid["rel_error_mean"] == pytest.approx(0.5 / 3)


def test_hand_computed_accuracy_ece_and_flip_rate():
    """Four rows worked out on paper: predictions [0, 1, 0, 1], confidences .9 .8 .6 .7, labels
    [0, 1, 1, 1] -> accuracy 3/4; each row alone in its 1/15-wide bin, so ECE is the mean of
    |conf - correct| = (.1 + .2 + .6 + .3) / 4 = .3 and MCE .6; against a baseline predicting
    [0, 1, 1, 1], one row of four flipped."""
    from edgefair.metrics import classification_metrics, ece, mce
    from edgefair.stats import StatsConfig, evaluate_step

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    base = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.3, 0.7]])
    y = np.array([0, 1, 1, 1])
    assert classification_metrics(y, probs)["accuracy"] == 0.75
    assert ece(probs, y) == pytest.approx(0.3, abs=1e-12)
    assert mce(probs, y) == pytest.approx(0.6, abs=1e-12)
    out = evaluate_step(
        masks={"g=a": np.array([True, True, False, False]), "g=b": np.array([False, False, True, True])},
        probs=probs, outputs=probs, y_true=y, base_probs=base, base_outputs=base,
        config=StatsConfig(n_boot=100, min_group_size=1),
    )
    assert out["overall"]["flip_rate"] == 0.25 and out["overall"]["accuracy_delta"] == -0.25
    assert out["groups"]["g=a"]["accuracy"] == 1.0 and out["groups"]["g=a"]["flip_rate"] == 0.0
    assert out["groups"]["g=b"]["accuracy"] == 0.5 and out["groups"]["g=b"]["flip_rate"] == 0.5
    assert out["groups"]["g=b"]["ece"] == pytest.approx((0.6 + 0.3) / 2, abs=1e-12)
