"""Statistics of one compression step: per-group metrics, deltas vs the baseline, uncertainty.

``evaluate_step`` is the one entry point. Uncertainty comes from a *paired, stratified* bootstrap:
the rows are split into cells of identical group membership (``groups.finest_cells``), each
replicate resamples rows with replacement inside every cell (so every group keeps its size), and
the step's and the baseline's predictions of a resampled row travel together. Replicate statistics
are linear sums of per-row feature columns (correct, flipped, per-bin ``confidence - correct``...),
so every group's replicates come from one (B, n_cell) count matrix times a (n_cell, F) feature
matrix per cell, then a sum over the cells that make up each group: no Python loop over replicates.
Confidence intervals are percentile intervals of those replicates.

Accuracy changes are tested per group with the exact McNemar test (only discordant rows carry
information about a paired change): ``mcnemar_p`` is two-sided (as statsmodels), ``mcnemar_p_drop``
one-sided for a drop, which is what an accuracy gate asks. Both are Holm-corrected across the
groups with status ``ok`` (``*_holm``); the corrected one-sided value is what a gate should use to
fail a build (``significant_accuracy_drops``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

from edgefair import groups as grp
from edgefair import metrics as mt
from edgefair.errors import DataError, RecipeError

N_BOOT_ERROR = "n_boot: must be an integer >= 0, got {value!r}"
CONFIDENCE_ERROR = "confidence: must be a number in (0, 1), got {value!r}"
SEED_ERROR = "seed: must be an integer >= 0, got {value!r}"
MIN_GROUP_SIZE_ERROR = "min_group_size: must be an integer >= 1, got {value!r}"
N_BINS_ERROR = "n_bins: must be an integer >= 1, got {value!r}"
MAX_CI_WIDTH_ERROR = "max_ci_width: must be a number > 0 or None, got {value!r}"
POSITIVE_LABEL_ERROR = "positive_label: must be an integer >= 0, got {value!r}"
SHAPE_MISMATCH_ERROR = "{what} has shape {got}, expected {expected} like the step's probabilities"
ALTERNATIVE_ERROR = "alternative must be 'two-sided' or 'drop', got {value!r}"
BASE_OUTPUTS_ERROR = "base_outputs is required when base_probs is given"

REASON_TOO_SMALL = "n < min_group_size ({min_group_size})"
REASON_CI_TOO_WIDE = "{field} width {width:.4f} > max_ci_width ({max_ci_width:g})"

CLASSIFICATION_KEYS = ("accuracy", "balanced_accuracy", "tpr", "fpr", "precision", "f1",
                       "selection_rate", "ece", "ece_equal_mass", "mce", "brier", "nll")
FIDELITY_KEYS = ("agreement", "flip_rate", "cosine_mean", "cosine_min", "rel_error_mean")
SE_FLOOR = 1e-9  # below this a bootstrap spread is float rounding, not variation
BOOT_CHUNK_ELEMENTS = 4_000_000  # bound the (replicates x rows) count matrix to ~16 MB of float32


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class StatsConfig:
    """How ``evaluate_step`` measures uncertainty and decides which groups are too small."""

    n_boot: int = 1000  # replicates; 1000 makes the 2.5%/97.5% percentiles stable to ~0.1 point
    confidence: float = 0.95  # two-sided CI level; alpha = 1 - confidence for the Holm-corrected tests
    seed: int = 0  # same seed + same masks -> same resamples at every step (common random numbers)
    min_group_size: int = 50  # below this, per-group rates are too noisy to report as numbers
    n_bins: int = 15  # calibration bins: the customary 15 of Guo et al. (2017)
    # A group whose decision interval is wider than this reports insufficient_data. The decision
    # interval is accuracy_delta_ci (labels and baseline), accuracy_ci (labels, baseline step) or
    # flip_rate_ci (no labels). None: only min_group_size decides.
    max_ci_width: float | None = None
    positive_label: int = 1  # the favourable class: selection rate, equalized odds, binary TPR/FPR

    def __post_init__(self) -> None:
        if not _is_int(self.n_boot) or self.n_boot < 0:
            raise RecipeError(N_BOOT_ERROR.format(value=self.n_boot))
        if isinstance(self.confidence, bool) or not isinstance(self.confidence, (int, float)) \
                or not 0.0 < self.confidence < 1.0:
            raise RecipeError(CONFIDENCE_ERROR.format(value=self.confidence))
        if not _is_int(self.seed) or self.seed < 0:
            raise RecipeError(SEED_ERROR.format(value=self.seed))
        if not _is_int(self.min_group_size) or self.min_group_size < 1:
            raise RecipeError(MIN_GROUP_SIZE_ERROR.format(value=self.min_group_size))
        if not _is_int(self.n_bins) or self.n_bins < 1:
            raise RecipeError(N_BINS_ERROR.format(value=self.n_bins))
        if self.max_ci_width is not None and (
                isinstance(self.max_ci_width, bool) or not isinstance(self.max_ci_width, (int, float))
                or not self.max_ci_width > 0):
            raise RecipeError(MAX_CI_WIDTH_ERROR.format(value=self.max_ci_width))
        if not _is_int(self.positive_label) or self.positive_label < 0:
            raise RecipeError(POSITIVE_LABEL_ERROR.format(value=self.positive_label))


# ---------------------------------------------------------------------------------------------
# Exact tests


def mcnemar_exact(lost: int, gained: int, *, alternative: Literal["two-sided", "drop"] = "two-sided") -> float:
    """Exact McNemar p-value from the discordant counts of a paired accuracy comparison.

    ``lost``: rows the baseline got right and the step gets wrong; ``gained``: the reverse. Under
    no change each discordant row is lost or gained with probability 1/2.
    ``"two-sided"`` (as statsmodels ``mcnemar(exact=True)``):
    ``min(1, 2 * P[Binomial(lost + gained, 1/2) <= min(lost, gained)])``.
    ``"drop"`` (one-sided, alternative: the step is less accurate): ``P[Binomial(n, 1/2) >= lost]``.
    Both are 1.0 when there is no discordant row.
    """
    if alternative not in ("two-sided", "drop"):
        raise ValueError(ALTERNATIVE_ERROR.format(value=alternative))
    n = int(lost) + int(gained)
    if n == 0:
        return 1.0
    if alternative == "drop":
        return float(sps.binom.sf(int(lost) - 1, n, 0.5))
    return float(min(1.0, 2.0 * sps.binom.cdf(min(lost, gained), n, 0.5)))


def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values, in input order (as statsmodels ``multipletests(method="holm")``)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return [float(v) for v in out]


# ---------------------------------------------------------------------------------------------
# Bootstrap engine


def resample_sums(
    features: np.ndarray, cell_of_row: np.ndarray, n_cells: int, *, n_boot: int, seed: int
) -> np.ndarray:
    """Per-cell sums of ``features`` (N, F) over ``n_boot`` stratified resamples: (B, C, F) float64.

    Replicate b draws, inside each cell of size m, m row indices uniformly with replacement; the
    sum is then ``counts[b] @ features[cell]``. Cells are visited in index order and replicates in
    blocks of a size that depends only on the cell size, so a seed gives the same result anywhere.
    """
    rng = np.random.default_rng(seed)
    n_features = features.shape[1]
    out = np.zeros((n_boot, n_cells, n_features), dtype=np.float64)
    order = np.argsort(cell_of_row, kind="stable")
    bounds = np.searchsorted(cell_of_row[order], np.arange(n_cells + 1))
    for c in range(n_cells):
        rows = order[bounds[c]:bounds[c + 1]]
        m = len(rows)
        if m == 0:
            continue
        x = features[rows]  # (m, F) float32
        block = max(1, min(n_boot, BOOT_CHUNK_ELEMENTS // m))
        for b0 in range(0, n_boot, block):
            nb = min(block, n_boot - b0)
            draws = rng.integers(0, m, size=(nb, m))
            draws += np.arange(nb)[:, None] * m  # one bincount for the whole block
            counts = np.bincount(draws.ravel(), minlength=nb * m).reshape(nb, m).astype(np.float32)
            out[b0:b0 + nb, c] = counts @ x  # (nb, m) @ (m, F)
    return out


@dataclass
class _Rows:
    """Per-row quantities of the step (and baseline) that every statistic is built from."""

    pred: np.ndarray
    probs: np.ndarray
    y: np.ndarray | None = None
    correct: np.ndarray | None = None
    ece_terms: np.ndarray | None = None  # (N, n_bins): one-hot(bin) * (confidence - correct)
    base_pred: np.ndarray | None = None
    base_probs: np.ndarray | None = None
    base_correct: np.ndarray | None = None
    base_ece_terms: np.ndarray | None = None
    flip: np.ndarray | None = None
    cosine: np.ndarray | None = None
    rel_error: np.ndarray | None = None


def _ece_terms(probs: np.ndarray, correct: np.ndarray, n_bins: int) -> np.ndarray:
    conf, _ = mt.top_label(probs)
    idx = mt.bin_index(conf, mt.bin_edges(conf, n_bins, "uniform"))
    terms = np.zeros((len(probs), n_bins), dtype=np.float64)
    terms[np.arange(len(probs)), idx] = conf - correct
    return terms


def _feature_layout(rows: _Rows) -> tuple[np.ndarray, dict[str, slice]]:
    """Stack the bootstrap feature columns (float32: counts and |values| <= 1 sum exactly enough)."""
    blocks: list[np.ndarray] = []
    layout: dict[str, slice] = {}
    start = 0
    for name, block in (("correct", rows.correct), ("ece", rows.ece_terms),
                        ("base_correct", rows.base_correct), ("base_ece", rows.base_ece_terms),
                        ("flip", rows.flip)):
        if block is None:
            continue
        block = block.reshape(len(block), -1)
        layout[name] = slice(start, start + block.shape[1])
        blocks.append(block)
        start += block.shape[1]
    return np.hstack(blocks).astype(np.float32), layout


def _derive(sums: np.ndarray, sizes: np.ndarray, layout: dict[str, slice]) -> dict[str, np.ndarray]:
    """Statistics from group sums (..., G, F) and group sizes (G,): each (..., G)."""
    out: dict[str, np.ndarray] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        if "correct" in layout:
            out["accuracy"] = sums[..., layout["correct"]].sum(-1) / sizes
            out["ece"] = np.abs(sums[..., layout["ece"]]).sum(-1) / sizes
        if "base_correct" in layout:
            out["accuracy_delta"] = out["accuracy"] - sums[..., layout["base_correct"]].sum(-1) / sizes
            out["ece_delta"] = out["ece"] - np.abs(sums[..., layout["base_ece"]]).sum(-1) / sizes
            out["base_accuracy"] = out["accuracy"] - out["accuracy_delta"]
        if "flip" in layout:
            out["flip_rate"] = sums[..., layout["flip"]].sum(-1) / sizes
    return out


def simultaneous_ci(replicates: np.ndarray, point: np.ndarray, confidence: float) -> np.ndarray:
    """Intervals that hold for all G groups at once with probability ``confidence``: (G, 2).

    Max-|z| bootstrap band: each group's replicates are standardized by their bootstrap standard
    error, ``c`` is the ``confidence`` quantile over replicates of the largest |z| across groups,
    and the band is ``point +- c * se``. The joint replicates carry the overlap between groups
    (``sex=Female`` contains ``sex=Female&race=Black``), so this is narrower than Bonferroni while
    keeping family-wise coverage. A group with zero bootstrap spread gets ``[point, point]``.
    """
    se = replicates.std(axis=0, ddof=1) if len(replicates) > 1 else np.zeros(replicates.shape[1])
    live = se > SE_FLOOR
    half = np.zeros_like(point, dtype=np.float64)
    if live.any():
        z = np.abs(replicates[:, live] - point[live]) / se[live]
        half[live] = np.quantile(z.max(axis=1), confidence) * se[live]
    return np.stack([point - half, point + half], axis=1)


def _ci(replicates: np.ndarray, confidence: float) -> np.ndarray:
    """Percentile interval along axis 0: (2, ...) lower and upper bounds."""
    tail = (1.0 - confidence) / 2.0
    return np.quantile(replicates, [tail, 1.0 - tail], axis=0)


# ---------------------------------------------------------------------------------------------
# One step


NO_ROWS_ERROR = "no evaluation rows"
CI_WIDTH_NEEDS_BOOT_ERROR = "max_ci_width: needs n_boot > 0 (the interval comes from the bootstrap)"


def _build_rows(probs, outputs, y_true, base_probs, base_outputs, config: StatsConfig) -> _Rows:
    n, k = probs.shape
    _, pred = mt.top_label(probs)
    y = None if y_true is None else mt.check_labels(y_true, n, k)
    rows = _Rows(pred=pred, probs=probs, y=y)
    if y is not None:
        if config.positive_label >= k:
            raise DataError(mt.LABELS_ERROR.format(n=n, k=k, detail=f"positive_label {config.positive_label}"))
        rows.correct = (pred == y).astype(np.float64)
        rows.ece_terms = _ece_terms(probs, rows.correct, config.n_bins)
    if base_probs is not None:
        bp = mt.check_probs(base_probs)
        if bp.shape != probs.shape:
            raise DataError(SHAPE_MISMATCH_ERROR.format(what="base_probs", got=bp.shape, expected=probs.shape))
        if base_outputs is None:
            raise DataError(BASE_OUTPUTS_ERROR)
        _, rows.base_pred = mt.top_label(bp)
        rows.base_probs = bp
        rows.flip = (pred != rows.base_pred).astype(np.float64)
        step_out = probs if outputs is None else np.asarray(outputs)
        if len(step_out) != n or len(np.asarray(base_outputs)) != n:
            raise DataError(SHAPE_MISMATCH_ERROR.format(
                what="outputs", got=(len(step_out), len(np.asarray(base_outputs))), expected=(n, n)))
        rows.cosine, rows.rel_error = mt.row_fidelity(step_out, base_outputs)
        if y is not None:
            rows.base_correct = (rows.base_pred == y).astype(np.float64)
            rows.base_ece_terms = _ece_terms(bp, rows.base_correct, config.n_bins)
    return rows


def _point(rows: _Rows, mask: np.ndarray, config: StatsConfig) -> tuple[dict, tuple]:
    """Point estimates over the masked rows; also the one-vs-rest (TPR, FPR) for equalized odds."""
    out: dict = {"n": int(mask.sum())}
    y = rows.y
    positive = (None, None)
    if y is not None:
        p, yt = rows.probs[mask], y[mask]
        step = mt.classification_metrics(yt, p, positive_label=config.positive_label, n_bins=config.n_bins)
        del step["n"]
        out.update(step)
        cm = mt.confusion(yt, rows.pred[mask], p.shape[1])
        positive = mt.positive_rates(cm, positive_label=config.positive_label)
        if rows.base_probs is not None:
            base = mt.classification_metrics(yt, rows.base_probs[mask], positive_label=config.positive_label,
                                             n_bins=config.n_bins)
            for key in CLASSIFICATION_KEYS:
                a, b = step[key], base[key]
                out[f"{key}_delta"] = None if a is None or b is None else float(a - b)
            lost = int(((rows.base_correct == 1) & (rows.correct == 0))[mask].sum())
            gained = int(((rows.base_correct == 0) & (rows.correct == 1))[mask].sum())
            out.update(lost_correct=lost, gained_correct=gained, mcnemar_p=mcnemar_exact(lost, gained),
                       mcnemar_p_drop=mcnemar_exact(lost, gained, alternative="drop"))
    if rows.base_pred is not None:
        out.update(mt.fidelity_metrics(rows.pred[mask], rows.base_pred[mask],
                                       rows.cosine[mask], rows.rel_error[mask]))
    if y is not None:
        out["reliability"] = mt.reliability(rows.probs[mask], y[mask], n_bins=config.n_bins)
    return out, positive


def _bootstrap(rows: _Rows, masks: dict[str, np.ndarray], keys: list[str], config: StatsConfig, n: int):
    """Replicate statistics for the overall rows (column 0) and each of ``keys``: name -> (B, 1 + len(keys))."""
    if rows.correct is None and rows.flip is None:
        return {}
    features, layout = _feature_layout(rows)
    cell_of_row, membership = grp.finest_cells(masks, n)
    n_cells = membership.shape[1] if masks else 1
    sums = resample_sums(features, cell_of_row, n_cells, n_boot=config.n_boot, seed=config.seed)
    index = {key: i for i, key in enumerate(masks)}
    member = np.vstack([np.ones((1, n_cells), dtype=bool)] + [membership[index[k]][None] for k in keys])
    group_sums = np.einsum("bcf,gc->bgf", sums, member.astype(np.float64))  # (B, G', F)
    sizes = np.array([n] + [int(masks[k].sum()) for k in keys], dtype=np.float64)
    return _derive(group_sums, sizes, layout)


def _summary(values: dict[str, float | None], higher_is_better: bool) -> dict:
    """Best, worst, gap (max - min) and min ratio (min / max) over the groups with a value."""
    valid = {k: v for k, v in values.items() if v is not None}
    if len(valid) < 2:
        return {"best_group": None, "best": None, "worst_group": None, "worst": None,
                "gap": None, "min_ratio": None}
    hi_key = max(valid, key=valid.__getitem__)
    lo_key = min(valid, key=valid.__getitem__)
    best, worst = (hi_key, lo_key) if higher_is_better else (lo_key, hi_key)
    hi, lo = valid[hi_key], valid[lo_key]
    return {"best_group": best, "best": valid[best], "worst_group": worst, "worst": valid[worst],
            "gap": float(hi - lo), "min_ratio": None if hi == 0 else float(lo / hi)}


def _disparity(scope_keys: list[str], groups: dict, positive: dict, reps: dict, boot_col: dict,
               config: StatsConfig, *, labels: bool, paired: bool) -> dict:
    """One scope's summaries over its ok groups (every field present, ``None`` when undefined)."""
    ok = [k for k in scope_keys if groups[k]["status"] == "ok"]
    out: dict = {"groups": ok, "excluded": [k for k in scope_keys if k not in ok]}
    names = (CLASSIFICATION_KEYS if labels else ()) + (FIDELITY_KEYS if paired else ())
    for name in names:
        out[name] = _summary({k: groups[k][name] for k in ok}, mt.HIGHER_IS_BETTER[name])
    if labels:
        out["demographic_parity_difference"] = out["selection_rate"]["gap"]
        tpr = _summary({k: positive[k][0] for k in ok}, True)["gap"]
        fpr = _summary({k: positive[k][1] for k in ok}, False)["gap"]
        out["equalized_odds_difference"] = None if tpr is None or fpr is None else max(tpr, fpr)
    if labels and paired:
        now = out["accuracy"]["gap"]
        base = _summary({k: groups[k]["accuracy"] - groups[k]["accuracy_delta"] for k in ok}, True)["gap"]
        out["accuracy_gap_base"] = base
        out["accuracy_gap_growth"] = None if now is None else float(now - base)
        out["accuracy_gap_growth_ci"] = None
        if now is not None and "base_accuracy" in reps:
            cols = [boot_col[k] for k in ok]
            step, basr = reps["accuracy"][:, cols], reps["base_accuracy"][:, cols]
            growth = (step.max(1) - step.min(1)) - (basr.max(1) - basr.min(1))
            out["accuracy_gap_growth_ci"] = [float(v) for v in _ci(growth, config.confidence)]
    return out


def evaluate_step(
    *,
    masks: Mapping[str, np.ndarray],
    probs: np.ndarray,
    outputs: np.ndarray | None,
    y_true: np.ndarray | None,
    base_probs: np.ndarray | None,
    base_outputs: np.ndarray | None,
    config: StatsConfig,
) -> dict:
    """All statistics of one step, as JSON-ready plain Python (see the module docstring).

    Args:
        masks: group key -> (N,) bool mask, e.g. from ``groups.group_masks``.
        probs: (N, K) class probabilities of this step (``metrics.to_probabilities``).
        outputs: raw outputs of this step, compared with ``base_outputs`` for cosine/relative
            error (``None``: use ``probs``).
        y_true: (N,) class ids, or ``None`` for label-free fidelity only.
        base_probs, base_outputs: the uncompressed baseline on the same rows, or ``None`` when
            this *is* the baseline (no delta fields then).
        config: bootstrap, confidence and group-size settings.

    Returns:
        ``{"overall": {...}, "groups": {key: {...}}, "disparity": {scope: {...}}}``. Groups with
        fewer than ``min_group_size`` rows (or, with ``max_ci_width``, too wide an interval) carry
        only ``n``, ``status = "insufficient_data"`` and ``reason``, and are left out of the
        disparity summaries (listed under ``excluded``) and of the Holm family.

        Per ok group with labels and a baseline: ``*_delta`` for every metric, percentile
        ``accuracy_delta_ci``/``ece_delta_ci`` (each at ``confidence`` on its own) and
        ``accuracy_delta_ci_simultaneous``/``ece_delta_ci_simultaneous`` (all ok groups at once,
        see ``simultaneous_ci``), ``lost_correct``/``gained_correct``, ``mcnemar_p``,
        ``mcnemar_p_drop`` and their Holm-corrected ``*_holm``, ``flip_share_ratio``. Interval
        fields are ``None`` when ``n_boot = 0``.
    """
    p = mt.check_probs(probs)
    n = len(p)
    if n == 0:
        raise DataError(NO_ROWS_ERROR)
    if config.max_ci_width is not None and config.n_boot == 0:
        raise RecipeError(CI_WIDTH_NEEDS_BOOT_ERROR)
    masks = grp.validate_masks(masks, n)
    rows = _build_rows(p, outputs, y_true, base_probs, base_outputs, config)
    labels, paired = rows.correct is not None, rows.base_pred is not None

    # 1. point estimates; groups below min_group_size keep only n, status and reason
    overall, _ = _point(rows, np.ones(n, dtype=bool), config)
    groups: dict[str, dict] = {}
    positive: dict[str, tuple] = {}
    for key, mask in masks.items():
        size = int(mask.sum())
        if size < config.min_group_size:
            groups[key] = {"n": size, "status": "insufficient_data",
                           "reason": REASON_TOO_SMALL.format(min_group_size=config.min_group_size)}
            continue
        fields, positive[key] = _point(rows, mask, config)
        groups[key] = {"n": size, "status": "ok", **{k: v for k, v in fields.items() if k != "n"}}

    # 2. one paired stratified bootstrap for every interval (column 0 = overall)
    sized = [k for k in masks if groups[k]["status"] == "ok"]
    boot_col = {key: i + 1 for i, key in enumerate(sized)}
    reps = _bootstrap(rows, masks, sized, config, n) if config.n_boot > 0 else {}
    ci_names = [("accuracy", labels), ("ece", labels), ("accuracy_delta", labels and paired),
                ("ece_delta", labels and paired), ("flip_rate", paired)]
    for name, wanted in ci_names:
        if not wanted:
            continue
        ci = _ci(reps[name], config.confidence) if name in reps else None
        overall[f"{name}_ci"] = None if ci is None else [float(ci[0, 0]), float(ci[1, 0])]
        for key in sized:
            col = boot_col[key]
            groups[key][f"{name}_ci"] = None if ci is None else [float(ci[0, col]), float(ci[1, col])]

    # 3. groups whose decision interval is too wide to decide join the insufficient ones
    decision = "accuracy_delta_ci" if labels and paired else "accuracy_ci" if labels else "flip_rate_ci"
    if config.max_ci_width is not None and (labels or paired):
        for key in sized:
            lo, hi = groups[key][decision]
            if hi - lo > config.max_ci_width:
                reason = REASON_CI_TOO_WIDE.format(field=decision, width=hi - lo,
                                                   max_ci_width=config.max_ci_width)
                groups[key] = {"n": groups[key]["n"], "status": "insufficient_data", "reason": reason}
    ok = [k for k in masks if groups[k]["status"] == "ok"]

    if labels and paired:  # family-wise intervals over the ok groups, for gates that fail builds
        for name in ("accuracy_delta", "ece_delta"):
            band = None
            if reps and ok:
                point = np.array([groups[k][name] for k in ok], dtype=np.float64)
                band = simultaneous_ci(reps[name][:, [boot_col[k] for k in ok]], point, config.confidence)
            for i, key in enumerate(ok):
                groups[key][f"{name}_ci_simultaneous"] = None if band is None else [float(v) for v in band[i]]

    # 4. family-wide quantities over the final ok groups
    if paired:
        total_flips = float(rows.flip.sum())
        for key in ok:
            share = None if total_flips == 0 else float(rows.flip[masks[key]].sum() / total_flips)
            groups[key]["flip_share_ratio"] = None if share is None else share / (groups[key]["n"] / n)
    if labels and paired:
        for field in ("mcnemar_p", "mcnemar_p_drop"):
            for key, adjusted in zip(ok, holm([groups[k][field] for k in ok])):
                groups[key][f"{field}_holm"] = adjusted

    disparity = {scope: _disparity(keys, groups, positive, reps, boot_col, config, labels=labels, paired=paired)
                 for scope, keys in grp.scopes(list(masks)).items()}
    return {"overall": overall, "groups": groups, "disparity": disparity}


def significant_accuracy_drops(result: dict, *, alpha: float) -> list[str]:
    """Groups (status ok) whose accuracy fell significantly: the one-sided exact McNemar p-value
    for a drop, Holm-corrected across the ok groups, is below ``alpha``. The family-wise chance of
    flagging any group when nothing changed is at most ``alpha``."""
    return [key for key, g in result["groups"].items()
            if g["status"] == "ok" and g.get("mcnemar_p_drop_holm") is not None
            and g["mcnemar_p_drop_holm"] < alpha]
