"""Point metrics over one set of rows: classification, calibration, fidelity. Pure numpy.

Conventions (shared with ``edgefair.stats``):
- ``probs`` is (N, K) with K >= 2 columns of class probabilities; the prediction is the argmax
  (ties go to the lowest class id) and the *confidence* is the top-label probability.
- A ratio whose denominator is zero (TPR of a group with no positives, precision of a model that
  never predicts the positive class, ...) is ``None``, never a made-up 0 or 1. For the multiclass
  macro averages such classes are left out of the average (scikit-learn's ``zero_division=np.nan``);
  if every class is undefined the average is ``None``.
- Binary (K = 2): ``tpr``/``fpr``/``precision``/``f1`` are those of ``positive_label``.
  Multiclass (K > 2): they are macro averages of the one-vs-rest value of every class.
  ``selection_rate`` is always the share of rows predicted as ``positive_label`` (the favourable
  outcome), so demographic parity means the same thing for K = 2 and K > 2.
- Calibration bins (``strategy="uniform"``): edges ``0, 1/B, ..., 1``; bins are right-closed,
  ``(e_i, e_{i+1}]``, and confidence exactly 0 falls in the first bin. torchmetrics uses
  left-closed bins ``[e_i, e_{i+1})`` and puts confidence exactly 1 in a bin of its own: the two
  agree unless a confidence lies exactly on an inner edge or equals 1 while other rows share the
  last bin. ``strategy="quantile"`` (equal mass): edges are the ``0, 1/B, ..., 1`` quantiles of
  the confidences, same right-closed rule, so tied confidences stay in one bin and a bin may be
  empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from edgefair.errors import DataError

OUTPUT_SHAPE_ERROR = "model outputs must have shape (N,), (N, 1) or (N, K), got {shape}"
NON_FINITE_ERROR = "model outputs contain NaN or infinite values"
NOT_PROBABILITIES_ERROR = "outputs are not probabilities: values must be in [0, 1] and rows sum to 1"
KIND_ERROR = "kind must be 'auto', 'logits' or 'probabilities', got {kind!r}"
STRATEGY_ERROR = "strategy must be 'uniform' or 'quantile', got {strategy!r}"
N_BINS_ERROR = "n_bins must be an integer >= 1, got {n_bins!r}"
PROBS_SHAPE_ERROR = "probabilities must have shape (N, K) with K >= 2, got {shape}"
LABELS_ERROR = "labels must be {n} integer class ids in [0, {k}), got {detail}"

ROW_SUM_TOLERANCE = 1e-4  # float32 softmax outputs sum to 1 within ~1e-6; 1e-4 leaves margin
# a compressed model of a probability-output baseline: int8 QDQ on the Softmax output moves each
# row sum by up to K/255; fp16 by ~1e-3
COMPRESSED_ROW_SUM_TOLERANCE = 0.05
LOG_EPS = float(np.finfo(np.float64).eps)  # scikit-learn's log_loss clip for float64 input

# Direction of each metric, used to name best/worst groups (scikit-learn: *_score up, *_loss down).
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True, "balanced_accuracy": True, "tpr": True, "fpr": False, "precision": True,
    "f1": True, "selection_rate": True, "ece": False, "ece_equal_mass": False, "mce": False,
    "brier": False, "nll": False, "agreement": True, "flip_rate": False, "cosine_mean": True,
    "cosine_min": True, "rel_error_mean": False,
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])  # exp of a negative number: never overflows
    out[~pos] = ex / (1.0 + ex)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row maximum so that no exponent overflows."""
    with np.errstate(over="ignore"):  # -1e308 - 1e308 = -inf, whose exp is the right 0
        z = logits - logits.max(axis=1, keepdims=True)
    ez = np.exp(z)
    return ez / ez.sum(axis=1, keepdims=True)


def output_kind(outputs: np.ndarray) -> Literal["logits", "probabilities"]:
    """What "auto" reads `outputs` as (decide it once, on the baseline, for every step)."""
    x = np.asarray(outputs, dtype=np.float64)
    x = x[:, None] if x.ndim == 1 else x
    in_unit = bool(((x >= 0) & (x <= 1)).all())
    sums_to_one = x.ndim == 2 and (x.shape[1] == 1 or bool((np.abs(x.sum(axis=1) - 1.0) <= ROW_SUM_TOLERANCE).all()))
    return "probabilities" if in_unit and sums_to_one else "logits"


def to_probabilities(
    outputs: np.ndarray, kind: Literal["auto", "logits", "probabilities"] = "auto", *, tolerance: float = ROW_SUM_TOLERANCE
) -> np.ndarray:
    """Turn raw model outputs into (N, K) float64 class probabilities.

    (N,) or (N, 1) outputs are binary scores for class 1: a sigmoid for logits, then stacked as
    ``[1 - p, p]``. ``"auto"`` reads them as probabilities when every value is in [0, 1] and (for
    K >= 2) rows sum to 1 within 1e-4, else as logits (softmax for K >= 2). With explicit
    ``"probabilities"``, values and row sums may be off by `tolerance` (a quantized Softmax output);
    they are clipped to [0, 1] and renormalised.
    """
    if kind not in ("auto", "logits", "probabilities"):
        raise ValueError(KIND_ERROR.format(kind=kind))
    x = np.asarray(outputs, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or x.shape[1] < 1:
        raise DataError(OUTPUT_SHAPE_ERROR.format(shape=np.shape(outputs)))
    if not np.isfinite(x).all():
        raise DataError(NON_FINITE_ERROR)
    in_unit = bool(((x >= 0) & (x <= 1)).all())
    sums_to_one = x.shape[1] == 1 or bool((np.abs(x.sum(axis=1) - 1.0) <= ROW_SUM_TOLERANCE).all())
    if kind == "auto":
        kind = "probabilities" if in_unit and sums_to_one else "logits"
    if kind == "probabilities":
        near_unit = bool(((x >= -tolerance) & (x <= 1 + tolerance)).all())
        near_one = x.shape[1] == 1 or bool((np.abs(x.sum(axis=1) - 1.0) <= tolerance).all())
        if not (near_unit and near_one):
            raise DataError(NOT_PROBABILITIES_ERROR)
        x = np.clip(x, 0.0, 1.0)
        if x.shape[1] == 1:
            return np.hstack([1.0 - x, x])
        sums = x.sum(axis=1, keepdims=True)
        return np.divide(x, sums, out=np.full_like(x, 1.0 / x.shape[1]), where=sums > 0)
    if x.shape[1] == 1:
        p1 = _sigmoid(x)
        return np.hstack([1.0 - p1, p1])
    return softmax(x)


def check_probs(probs: np.ndarray) -> np.ndarray:
    """Validate (N, K >= 2) probabilities and return them as float64."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise DataError(PROBS_SHAPE_ERROR.format(shape=np.shape(probs)))
    if not np.isfinite(p).all():
        raise DataError(NON_FINITE_ERROR)
    return p


def check_labels(y_true: np.ndarray, n: int, k: int) -> np.ndarray:
    """Validate integer class ids in [0, k) for n rows and return them as int64."""
    y = np.asarray(y_true)
    if y.shape != (n,):
        raise DataError(LABELS_ERROR.format(n=n, k=k, detail=f"shape {y.shape}"))
    if y.dtype.kind not in "iub":
        if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
            y = y.astype(np.int64)
        else:
            raise DataError(LABELS_ERROR.format(n=n, k=k, detail=f"dtype {y.dtype}"))
    y = y.astype(np.int64)
    if n and (y.min() < 0 or y.max() >= k):
        raise DataError(LABELS_ERROR.format(n=n, k=k, detail=f"values in [{y.min()}, {y.max()}]"))
    return y


def top_label(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence (top-label probability) and predicted class of each row."""
    pred = probs.argmax(axis=1)
    return probs[np.arange(len(probs)), pred], pred


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def bin_edges(confidence: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    """The n_bins + 1 bin edges (see the module docstring for the closed side)."""
    if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(N_BINS_ERROR.format(n_bins=n_bins))
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    if strategy == "quantile":
        if len(confidence) == 0:
            return np.linspace(0.0, 1.0, n_bins + 1)
        return _sorted_quantiles(np.sort(confidence), n_bins)
    raise ValueError(STRATEGY_ERROR.format(strategy=strategy))


def _sorted_quantiles(values: np.ndarray, n_bins: int) -> np.ndarray:
    """``bin_edges(values, n_bins, "quantile")`` for sorted ``values``: numpy's default (linear)
    quantile, same arithmetic, without ``np.quantile``'s per-call overhead."""
    pos = np.linspace(0.0, 1.0, n_bins + 1) * (len(values) - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, len(values) - 1)
    t = pos - lo
    a, b = values[lo], values[hi]
    diff = b - a
    edges = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
    edges[0], edges[-1] = 0.0, 1.0  # cover the whole range; inner edges carry the mass split
    return edges


def bin_index(confidence: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Right-closed bin of each confidence: bin i holds (edges[i], edges[i+1]]; 0 goes to bin 0."""
    return np.searchsorted(edges[1:-1], confidence, side="left")


def _binned(probs: np.ndarray, y_true: np.ndarray, n_bins: int, strategy: str):
    """Edges and per-bin count, confidence sum and correct sum of one set of rows."""
    p = check_probs(probs)
    y = check_labels(y_true, len(p), p.shape[1])
    conf, pred = top_label(p)
    edges = bin_edges(conf, n_bins, strategy)
    sums = _group_bins(conf, (pred == y).astype(np.float64), Groups([np.ones(len(p), dtype=bool)]), edges)
    return (edges, *(v[0] for v in sums))


def _group_bins(conf: np.ndarray, correct: np.ndarray, groups: Groups, edges: np.ndarray):
    """Per group and bin: row count, confidence sum and correct sum, each (G, n_bins)."""
    idx, n_bins = bin_index(conf, edges), len(edges) - 1
    return groups.counts(idx, n_bins).astype(np.float64), groups.counts(idx, n_bins, conf), groups.counts(idx, n_bins, correct)


def reliability(
    probs: np.ndarray, y_true: np.ndarray, *, n_bins: int = 15,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> list[dict]:
    """Reliability-curve data, one dict per bin: ``lo``, ``hi`` (edges), ``count``, ``confidence``
    (mean top-label confidence) and ``accuracy``; the last two are ``None`` for an empty bin."""
    edges, count, conf_sum, acc_sum = _binned(probs, y_true, n_bins, strategy)
    return reliability_bins(edges, count, conf_sum, acc_sum)


def reliability_bins(edges: np.ndarray, count: np.ndarray, conf_sum: np.ndarray, acc_sum: np.ndarray) -> list[dict]:
    """Reliability-curve data from bin edges and per-bin sums (see ``reliability``)."""
    return [
        {"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(count[i]),
         "confidence": _ratio(conf_sum[i], count[i]), "accuracy": _ratio(acc_sum[i], count[i])}
        for i in range(len(count))
    ]


def ece(
    probs: np.ndarray, y_true: np.ndarray, *, n_bins: int = 15,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> float | None:
    """Top-label expected calibration error: sum over bins of (count/N) * |accuracy - confidence|.

    ``None`` for zero rows.
    """
    if strategy == "quantile":  # the equal-mass ECE of grouped_classification, for one group
        p = check_probs(probs)
        conf, pred = top_label(p)
        bin_edges(conf, n_bins, strategy)  # checks n_bins
        correct = (pred == check_labels(y_true, len(p), p.shape[1])).astype(np.float64)
        return none_if_nan(_equal_mass_ece(conf, correct, Groups([np.ones(len(p), dtype=bool)]), n_bins)[0])
    _, count, conf_sum, acc_sum = _binned(probs, y_true, n_bins, strategy)
    n = count.sum()
    return None if n == 0 else float(np.abs(conf_sum - acc_sum).sum() / n)


def mce(
    probs: np.ndarray, y_true: np.ndarray, *, n_bins: int = 15,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> float | None:
    """Maximum calibration error: the largest |accuracy - confidence| over non-empty bins."""
    _, count, conf_sum, acc_sum = _binned(probs, y_true, n_bins, strategy)
    full = count > 0
    return None if not full.any() else float(np.max(np.abs(conf_sum[full] - acc_sum[full]) / count[full]))


def none_if_nan(value: float) -> float | None:
    """JSON's null for an undefined (NaN) metric, else a plain float."""
    return None if np.isnan(value) else float(value)


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN where every value is NaN (no warning)."""
    defined = ~np.isnan(values)
    count = defined.sum(axis=-1)
    total = np.where(defined, values, 0.0).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, total / count, np.nan)


def grouped_rates(cm: np.ndarray, *, positive_label: int = 1) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy (mean recall over the classes present, as scikit-learn), TPR,
    FPR, precision, F1 and selection rate of G confusion matrices (G, K, K; rows = true class):
    name -> (G,), NaN when undefined. Also ``positive_tpr``/``positive_fpr``: the one-vs-rest
    rates of ``positive_label`` for any K (what equalized odds compares).
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = cm.shape[-1]
    n = cm.sum(axis=(1, 2))
    tp = np.diagonal(cm, axis1=1, axis2=2)
    actual = cm.sum(axis=2)  # per true class
    predicted = cm.sum(axis=1)  # per predicted class
    fp = predicted - tp
    fn = actual - tp
    tn = n[:, None] - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(actual > 0, tp / actual, np.nan)
        # a class absent from both labels and predictions has FPR 0 by construction: leave it out of
        # the macro average, as TPR/precision/F1 leave out classes they cannot measure
        fpr = np.where((fp + tn > 0) & ((actual > 0) | (predicted > 0)), fp / (fp + tn), np.nan)
        precision = np.where(predicted > 0, tp / predicted, np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        ratio = lambda a, b: np.where(b > 0, a / b, np.nan)  # noqa: E731
        pos = positive_label
        out = {"accuracy": ratio(tp.sum(axis=1), n), "balanced_accuracy": _nanmean(recall)}
        if k == 2:
            out.update(tpr=recall[:, pos], fpr=fpr[:, pos], precision=precision[:, pos], f1=f1[:, pos])
        else:
            out.update(tpr=_nanmean(recall), fpr=_nanmean(fpr), precision=_nanmean(precision), f1=_nanmean(f1))
        out["selection_rate"] = ratio(predicted[:, pos], n)
        neg = n - actual[:, pos]
        out["positive_tpr"] = ratio(tp[:, pos], actual[:, pos])
        out["positive_fpr"] = ratio(predicted[:, pos] - tp[:, pos], neg)
    return out


DENSE_GROUP_ELEMENTS = 2_000_000  # 16 MB of float64
SUM_CHUNK = 65_536  # rows per running-sum piece in Groups


class Groups:
    """G sets of rows, given as boolean masks over N rows. Per-group sums and counts run group by
    group over the group's rows in row order (``np.bincount`` adds sequentially), so memory grows
    with the largest group, not with G x N, and nothing per (group, row) pair is kept (up to
    ``DENSE_GROUP_ELEMENTS``, sums are a product with a dense 0/1 matrix instead)."""

    def __init__(self, masks: Sequence[np.ndarray]) -> None:
        self.masks = [np.asarray(m, dtype=bool) for m in masks]
        self.sizes = np.array([int(np.count_nonzero(m)) for m in self.masks], dtype=np.int64)
        # small cases: a dense (G, N) 0/1 matrix makes sums one product, a few times faster
        small = len(self.masks) * len(self.masks[0]) <= DENSE_GROUP_ELEMENTS if self.masks else False
        self._dense = np.array(self.masks, dtype=np.float64) if small else None

    def __len__(self) -> int:
        return len(self.masks)

    @staticmethod
    def _total(values: np.ndarray) -> float:
        """Sum of a group's values added one after another from 0.0, in row order (a running sum
        carried across chunks: the same additions as one pass, without a per-row index)."""
        total = 0.0
        for a in range(0, len(values), SUM_CHUNK):
            total = float(np.cumsum(np.concatenate([[total], values[a:a + SUM_CHUNK]]))[-1])
        return total

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per-group sums of (N,) or (N, F) values: (G,) or (G, F)."""
        if self._dense is not None:
            return self._dense @ np.asarray(values, dtype=np.float64)
        v = np.asarray(values, dtype=np.float64)
        if v.ndim == 1:
            return np.array([self._total(v[m]) for m in self.masks])
        return np.array([[self._total(v[:, f][m]) for f in range(v.shape[1])] for m in self.masks]).reshape(len(self), v.shape[1])

    def counts(self, codes: np.ndarray, n_codes: int, weights: np.ndarray | None = None) -> np.ndarray:
        """(G, n_codes): per group, how many rows (or how much of ``weights``) have each code."""
        out = np.zeros((len(self), n_codes), dtype=np.int64 if weights is None else np.float64)
        for g, m in enumerate(self.masks):
            out[g] = np.bincount(codes[m], weights=None if weights is None else weights[m], minlength=n_codes)
        return out

    def std(self, values: np.ndarray, means: np.ndarray) -> np.ndarray:
        """Per-group sample standard deviation of (N,) values around the groups' ``means`` (G,), in
        two passes (a sum of squares minus n * mean^2 cancels when the values are all near 1); NaN
        below two rows."""
        v, mu = np.asarray(values, dtype=np.float64), np.asarray(means, dtype=np.float64)
        ss = np.array([self._total(_squared(v[m] - mu[g])) for g, m in enumerate(self.masks)])
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.sizes > 1, np.sqrt(ss / (self.sizes - 1)), np.nan)

    def minimum(self, values: np.ndarray) -> np.ndarray:
        """Per-group minimum of (N,) values: (G,), NaN for an empty group."""
        v = np.asarray(values, dtype=np.float64)
        return np.array([v[m].min() if n else np.nan for m, n in zip(self.masks, self.sizes)])


def _squared(x: np.ndarray) -> np.ndarray:
    return x * x


def row_terms(y: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Per-row quantities behind ``grouped_classification``: ``conf`` (top-label probability),
    ``pred`` (argmax), ``sq`` (Brier term) and ``nll`` (log-loss term), each (N,). Row by row, so
    computing them batch by batch gives the same values as on all rows at once."""
    k = probs.shape[1]
    conf, pred = top_label(probs)
    sq = ((probs - np.eye(k)[y]) ** 2).sum(axis=1) / (2.0 if k == 2 else 1.0)
    nll = -np.log(np.clip(probs[np.arange(len(probs)), y], LOG_EPS, 1.0 - LOG_EPS))
    return {"conf": conf, "pred": pred, "sq": sq, "nll": nll}


def grouped_classification(
    y: np.ndarray, probs: np.ndarray, groups: Groups, *, positive_label: int = 1, n_bins: int = 15
) -> dict[str, np.ndarray]:
    """``classification_metrics`` of every group at once: name -> (G,) float, NaN when undefined.

    Also ``positive_tpr``/``positive_fpr`` (see ``grouped_rates``) and the uniform-bin reliability
    sums ``bin_count``, ``bin_confidence``, ``bin_correct``: (G, n_bins) each. ``y`` and ``probs``
    must already be checked (``check_labels``, ``check_probs``).
    """
    return grouped_from_terms(y, probs.shape[1], **row_terms(y, probs), groups=groups,
                              positive_label=positive_label, n_bins=n_bins)


def grouped_from_terms(
    y: np.ndarray, k: int, *, conf: np.ndarray, pred: np.ndarray, sq: np.ndarray, nll: np.ndarray, groups: Groups,
    positive_label: int = 1, n_bins: int = 15,
) -> dict[str, np.ndarray]:
    """``grouped_classification`` from the rows' ``row_terms`` (K classes): what a caller that
    reads the model's outputs batch by batch keeps instead of the (N, K) probabilities."""
    correct = (pred == y).astype(np.float64)
    out = grouped_rates(groups.counts(y * k + pred, k * k).reshape(-1, k, k), positive_label=positive_label)
    n = groups.sizes.astype(np.float64)
    count, conf_sum, acc_sum = _group_bins(conf, correct, groups, bin_edges(conf, n_bins, "uniform"))
    gap = np.abs(conf_sum - acc_sum)
    with np.errstate(divide="ignore", invalid="ignore"):
        out["ece"] = np.where(n > 0, gap.sum(axis=1) / n, np.nan)
        per_bin = np.where(count > 0, gap / count, -np.inf)
        out["mce"] = np.where(n > 0, per_bin.max(axis=1), np.nan)
        out["brier"], out["nll"] = (np.where(n > 0, groups.sums(np.stack([sq, nll], axis=1)).T / n, np.nan))
    out["ece_equal_mass"] = _equal_mass_ece(conf, correct, groups, n_bins)
    out.update(bin_count=count, bin_confidence=conf_sum, bin_correct=acc_sum)
    return out


def _equal_mass_ece(conf: np.ndarray, correct: np.ndarray, groups: Groups, n_bins: int) -> np.ndarray:
    """Equal-mass ECE of every group: (G,), NaN for an empty group. One sort of all rows; a group's
    rows in that order are its sorted rows, and its bins contiguous runs summed by a cumsum."""
    order = np.argsort(conf, kind="stable")
    ranked, gap = conf[order], (conf - correct)[order]
    out = np.full(len(groups), np.nan)
    for g, mask in enumerate(groups.masks):
        m = mask[order]
        values = ranked[m]
        if len(values) == 0:
            continue
        edges = _sorted_quantiles(values, n_bins)
        # bin i holds (e_i, e_i+1]: it ends after the last value <= its upper edge
        bounds = np.concatenate([[0], np.searchsorted(values, edges[1:-1], side="right"), [len(values)]])
        running = np.concatenate([[0.0], np.cumsum(gap[m])])
        out[g] = np.abs(running[bounds[1:]] - running[bounds[:-1]]).sum() / len(values)
    return out


CLASSIFICATION_METRICS = ("accuracy", "balanced_accuracy", "tpr", "fpr", "precision", "f1", "selection_rate",
                          "ece", "ece_equal_mass", "mce", "brier", "nll")


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, *, positive_label: int = 1, n_bins: int = 15
) -> dict[str, float | int | None]:
    """Every per-group metric of one model on one set of rows (see the module docstring).

    Keys: ``n``, ``accuracy``, ``balanced_accuracy``, ``tpr``, ``fpr``, ``precision``, ``f1``,
    ``selection_rate``, ``ece`` (uniform bins), ``ece_equal_mass``, ``mce``, ``brier``, ``nll``.
    """
    p = check_probs(probs)
    k = p.shape[1]
    y = check_labels(y_true, len(p), k)
    if not 0 <= positive_label < k:
        raise DataError(LABELS_ERROR.format(n=len(p), k=k, detail=f"positive_label {positive_label}"))
    if not isinstance(n_bins, (int, np.integer)) or isinstance(n_bins, bool) or n_bins < 1:
        raise ValueError(N_BINS_ERROR.format(n_bins=n_bins))
    values = grouped_classification(y, p, Groups([np.ones(len(p), dtype=bool)]),
                                    positive_label=positive_label, n_bins=n_bins)
    return {"n": int(len(p)), **{name: none_if_nan(values[name][0]) for name in CLASSIFICATION_METRICS}}


def _as_rows(outputs: np.ndarray) -> np.ndarray:
    x = np.asarray(outputs, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x.reshape(len(x), -1)


def row_fidelity(outputs: np.ndarray, base_outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row cosine similarity and relative error of raw outputs vs the baseline's.

    (N,) outputs count as 1-vector rows (cosine is then the sign agreement). Cosine of two zero
    rows is 1, of one zero row 0; relative error divides by max(||base||, 1e-12).
    """
    a, b = _as_rows(outputs), _as_rows(base_outputs)
    if a.shape != b.shape:
        raise DataError(OUTPUT_SHAPE_ERROR.format(shape=f"{a.shape} vs baseline {b.shape}"))
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = np.where((na > 0) & (nb > 0), dot / (na * nb), np.where((na == 0) & (nb == 0), 1.0, 0.0))
    cosine = np.clip(cosine, -1.0, 1.0)
    rel = np.linalg.norm(a - b, axis=1) / np.maximum(nb, 1e-12)
    return cosine, rel
