"""Statistics of one compression step: per-group metrics, deltas vs the baseline, uncertainty.

``evaluate_step`` is the one-call entry point; ``Evaluator`` is the same for a run of several
steps against one baseline (the resamples and the baseline's work are done once). Point metrics of
every group come from one vectorised pass (``metrics.grouped_classification``).

Uncertainty comes from a *paired, stratified* Poisson bootstrap (``edgefair.bootstrap``): the
rows are split into cells of identical group membership (``groups.finest_cells``), each replicate
gives every row a Poisson(1) weight, rescaled inside every cell to the cell's size (so every group
keeps its size), and the step's and the baseline's features of a row get the same weight.
Replicate statistics are linear sums of per-row feature columns (correct, true and false
positive, per-bin ``confidence - correct``, flipped...), accumulated chunk by chunk of rows into
(replicates, cells, features) sums and then summed over the cells that make up each group: memory
grows with replicates x cells, not with replicates x rows, and the weights depend only on (seed,
row, replicate). Confidence intervals are percentile intervals of those replicates;
``accuracy_delta_ci`` and ``flip_rate_ci`` are then widened to at least Tango's paired score /
Clopper-Pearson's exact interval (``intervals``), because a percentile bootstrap of a group
without flips is [0, 0]; the raw ones are kept as ``*_ci_bootstrap``.

Per group, ``lost_correct``/``gained_correct`` and ``paired_counts`` carry everything a paired
rate change rests on; ``mcnemar_p`` (two-sided, as statsmodels) and ``mcnemar_p_drop`` (one-sided)
are descriptive. No decision is made here: the one significance rule, tested against each gate's
limit, lives in ``edgefair.gates``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import warnings

import numpy as np
from scipy import stats as sps

from edgefair import groups as grp
from edgefair import metrics as mt
from edgefair.bootstrap import CACHED_WEIGHTS, CHUNK_ROWS, PASS_REPLICATES, PoissonBootstrap, Runner
from edgefair.errors import DataError, RecipeError
from edgefair.intervals import widen_intervals

N_BOOT_ERROR = "n_boot: must be an integer >= 0, got {value!r}"
CONFIDENCE_ERROR = "confidence: must be a number in (0, 1), got {value!r}"
SEED_ERROR = "seed: must be an integer >= 0, got {value!r}"
MIN_GROUP_SIZE_ERROR = "min_group_size: must be an integer >= 1, got {value!r}"
N_BINS_ERROR = "n_bins: must be an integer >= 1, got {value!r}"
POSITIVE_LABEL_ERROR = "positive_label: must be an integer >= 0, got {value!r}"
SHAPE_MISMATCH_ERROR = "{what} has shape {got}, expected {expected} like the step's probabilities"
ALTERNATIVE_ERROR = "alternative must be 'two-sided' or 'drop', got {value!r}"
BASE_OUTPUTS_ERROR = "base_outputs is required when base_probs is given"

REASON_TOO_SMALL = "n < min_group_size ({min_group_size})"

CLASSIFICATION_KEYS = ("accuracy", "balanced_accuracy", "tpr", "fpr", "precision", "f1",
                       "selection_rate", "ece", "ece_equal_mass", "mce", "brier", "nll")
FIDELITY_KEYS = ("agreement", "flip_rate", "cosine_mean", "cosine_min", "rel_error_mean")
BOOT_RATES = 4  # leading columns of a model's resampled sums: positive label, correct, true positive, false positive


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
    positive_label: int = 1  # the favourable class: selection rate, equalized odds, binary TPR/FPR
    embedding: bool = False  # outputs are embeddings: fidelity by cosine and relative error only, no argmax flips

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
    return float(_mcnemar(np.array([lost]), np.array([gained]), alternative)[0])


def _mcnemar(lost: np.ndarray, gained: np.ndarray, alternative: str) -> np.ndarray:
    """``mcnemar_exact`` over arrays of discordant counts: one vectorised call, not one per group."""
    lost, gained = np.rint(lost).astype(np.int64), np.rint(gained).astype(np.int64)
    n = lost + gained
    if alternative == "drop":
        p = sps.binom.sf(lost - 1, n, 0.5)  # P[X >= lost]; 1 for lost = 0
    else:
        p = np.minimum(1.0, 2.0 * sps.binom.cdf(np.minimum(lost, gained), n, 0.5))
    return np.where(n > 0, p, 1.0)


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


def _ci(replicates: np.ndarray, confidence: float) -> np.ndarray:
    """Percentile interval along axis 0: (2, ...) lower and upper bounds."""
    tail = (1.0 - confidence) / 2.0
    return np.quantile(replicates, [tail, 1.0 - tail], axis=0)


BOOTSTRAP_MEMORY_SHARE = 0.5  # refuse a bootstrap that would need more than this share of the machine's memory
BOOTSTRAP_MEMORY_ERROR = ("evaluate.bootstrap: {n_boot} replicates over {cells} cells and {groups} groups of {rows} rows "
                          "need about {need:.1f} GB, more than half of this machine's {have:.1f} GB; lower it")


def bootstrap_bytes(*, n_boot: int, rows: int, cells: int, groups: int, bins: int, labelled: bool) -> int:
    """Peak memory of one step's bootstrap, in bytes, bounded whatever the number of rows: the per-cell sums
    of one pass (int64, and two float64 copies) over the step's and the baseline's features
    (BOOT_RATES + calibration bins each), the flips and the cell weights, the float64 weights of
    one chunk (``bootstrap.CHUNK_ROWS`` rows) and at most ``PASS_REPLICATES`` replicates, the
    per-group aggregates (B, groups + 1, F) of both
    models, ~14 (B, groups + 1) replicate arrays, and the weights kept while they fit in
    ``bootstrap.CACHED_WEIGHTS``."""
    g = groups + 1
    f = 2 + (2 * (BOOT_RATES + bins) if labelled else 0)
    kept = n_boot * rows if n_boot * rows <= CACHED_WEIGHTS else 0  # weights kept for small sets
    return 8 * n_boot * (3 * cells * f + 2 * g * f + 14 * g) + 8 * min(n_boot, PASS_REPLICATES) * CHUNK_ROWS + 8 * kept


def check_bootstrap_memory(masks: Mapping[str, np.ndarray], n: int, config: StatsConfig, *, labelled: bool) -> None:
    """Refuse (RecipeError) a bootstrap that would not fit in memory, saying what it would need."""
    import os

    cells = grp.finest_cells(masks, n)[1].shape[1] if masks else 1
    need = bootstrap_bytes(n_boot=config.n_boot, rows=n, cells=cells, groups=len(masks), bins=config.n_bins, labelled=labelled)
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > BOOTSTRAP_MEMORY_SHARE * have:
        raise RecipeError(BOOTSTRAP_MEMORY_ERROR.format(n_boot=config.n_boot, cells=cells, groups=len(masks), rows=n,
                                                        need=need / 1e9, have=have / 1e9))


# ---------------------------------------------------------------------------------------------
# One model, then one step against the baseline


NO_ROWS_ERROR = "no evaluation rows"
FOREIGN_MODEL_ERROR = "compare: both models must come from this Evaluator's model() (its groups and resamples)"


@dataclass
class Model:
    """One model's per-row quantities on the evaluation rows and what is derived from them once,
    however many steps it is compared with (the baseline's point metrics and bootstrap sums). No
    (N, K) probabilities are kept: ``Evaluator.model_from_batches`` reads them batch by batch."""

    k: int  # classes
    outputs: np.ndarray  # raw outputs as given (float32 from onnxruntime), for cosine and relative error
    pred: np.ndarray  # (N,) predicted class
    correct: np.ndarray | None = None  # (N,) bool, with labels
    point: dict[str, np.ndarray] | None = None  # grouped_classification over Evaluator.groups
    ece_bin: np.ndarray | None = None  # (N,) uniform calibration bin of the confidence, with labels
    ece_value: np.ndarray | None = None  # (N,) confidence - correct, with labels
    boot: np.ndarray | None = None  # (B, C, BOOT_RATES + bins used) resampled sums (see Evaluator._features)
    owner: object = None  # the Evaluator whose groups ``point`` and ``boot`` are over


class Evaluator:
    """Statistics of models on one set of evaluation rows, groups and settings.

    What depends only on the rows is built once: the group index, the bootstrap's cells, and for
    each ``Model`` its point metrics and resampled sums. ``compare`` then costs the step's own
    share, so evaluating a recipe's steps one after another does not redo the baseline's work.
    """

    def __init__(self, masks: Mapping[str, np.ndarray], y_true: np.ndarray | None, n: int, config: StatsConfig,
                 runner: Runner | None = None, advance: Callable[[int, int], None] | None = None) -> None:
        """``runner``: where the bootstrap's sums are computed (``PoissonBootstrap.sums``; an
        executor's tasks); the statistics are the same wherever. ``advance(done, total)``: rows
        of the bootstrap summed in this process, for progress."""
        if n == 0:
            raise DataError(NO_ROWS_ERROR)
        self.config, self.n = config, n
        self.masks = grp.validate_masks(masks, n)
        self.keys = list(self.masks)
        self.y_true = y_true
        self.runner, self.advance = runner, advance
        # row 0 is "overall", row 1 + i the i-th group
        self.groups = mt.Groups([np.ones(n, dtype=bool), *self.masks.values()])
        self._cells: tuple[np.ndarray, np.ndarray] | None = None
        self._engine: PoissonBootstrap | None = None
        self._checked: tuple[int, np.ndarray] | None = None  # (K, labels checked against K classes)

    # -- cells and resamples, built on first use ----------------------------------------------
    def _membership(self) -> np.ndarray:
        """(1 + G, C): which cells make up overall (all) and each group."""
        if self._cells is None:
            cell_of_row, membership = grp.finest_cells(self.masks, self.n)
            n_cells = membership.shape[1] if self.masks else 1
            self._cells = (cell_of_row, np.vstack([np.ones((1, n_cells), dtype=bool), membership]))
        return self._cells[1]

    def _resample(self, builders: list) -> list[np.ndarray]:
        """Per-cell replicate sums of each ``(build, fixed)`` feature set, from one set of weights."""
        membership = self._membership()
        if self._engine is None:
            self._engine = PoissonBootstrap(self._cells[0], membership.shape[1], n_boot=self.config.n_boot,
                                            seed=self.config.seed)
            self._cells = (None, membership)  # the engine keeps the rows' order: the cell of each row is not needed again
        return self._engine.sums(builders, self.runner, self.advance)

    # -- one model ------------------------------------------------------------------------------
    def model(self, probs: np.ndarray, outputs: np.ndarray | None = None) -> Model:
        """Check one model's (N, K) probabilities (and raw outputs) and derive its per-row quantities."""
        p = mt.check_probs(probs)
        n, k = p.shape
        if n != self.n:
            raise DataError(SHAPE_MISMATCH_ERROR.format(what="probabilities", got=p.shape, expected=(self.n, k)))
        return self._finish(k, p if outputs is None else np.asarray(outputs), self._row_terms(p, 0))

    def model_from_batches(self, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> Model:
        """``model`` from (probabilities, raw outputs) batches of consecutive rows, in order. Keeps
        the raw outputs and a few per-row quantities, never the (N, K) float64 probabilities; the
        result is the same as ``model`` on all rows at once, whatever the batch size."""
        outputs, terms, row, k = None, {}, 0, None
        for probs, out in batches:
            p, out = mt.check_probs(probs), np.asarray(out)
            if k is None:
                k = p.shape[1]
                outputs = np.empty((self.n, *out.shape[1:]), dtype=out.dtype)
            if p.shape[1] != k or len(out) != len(p) or row + len(p) > self.n:
                raise DataError(SHAPE_MISMATCH_ERROR.format(what="a batch of probabilities", got=p.shape,
                                                            expected=(min(len(p), max(self.n - row, 0)), k)))
            outputs[row:row + len(p)] = out
            for name, values in self._row_terms(p, row).items():  # filled in place: no per-batch pieces to join
                terms.setdefault(name, np.empty(self.n, dtype=values.dtype))[row:row + len(p)] = values
            row += len(p)
        if row != self.n:
            raise DataError(SHAPE_MISMATCH_ERROR.format(what="probabilities", got=(row, k), expected=(self.n, k)))
        return self._finish(k, outputs, terms)

    def _row_terms(self, p: np.ndarray, start: int) -> dict[str, np.ndarray]:
        """Per-row quantities of rows ``start, start + 1, ...`` (see ``metrics.row_terms``)."""
        if self.y_true is None:
            return {"pred": p.argmax(axis=1)}
        return mt.row_terms(self._labels(p.shape[1])[start:start + len(p)], p)

    def _finish(self, k: int, outputs: np.ndarray, terms: dict[str, np.ndarray]) -> Model:
        pred = terms.pop("pred").astype(np.min_scalar_type(-k), copy=False)  # int8 for up to 128 classes
        model = Model(k=k, outputs=outputs, pred=pred, owner=self)
        if self.y_true is not None:
            y = self._labels(k)
            cfg = self.config
            model.point = mt.grouped_from_terms(y, k, pred=model.pred, **terms, groups=self.groups,
                                                positive_label=cfg.positive_label, n_bins=cfg.n_bins)
            model.correct = model.pred == y
            conf = terms["conf"]
            model.ece_bin = mt.bin_index(conf, mt.bin_edges(conf, cfg.n_bins, "uniform")).astype(np.int16)
            model.ece_value = conf - model.correct
        return model

    def _labels(self, k: int) -> np.ndarray:
        """The labels checked against K classes (once: batches of a model ask for them again)."""
        if self._checked is None or self._checked[0] != k:
            y = mt.check_labels(self.y_true, self.n, k)
            if self.config.positive_label >= k:
                raise DataError(mt.LABELS_ERROR.format(n=self.n, k=k, detail=f"positive_label {self.config.positive_label}"))
            self._checked = (k, y)
        return self._checked[1]

    def _features(self, model: Model):
        """The bootstrap features of a labelled model: positive label, correct, true positive, false
        positive, then ``confidence - correct`` in the column of its calibration bin (bins used)."""
        positive, label = self._positive, self.config.positive_label
        used = np.bincount(model.ece_bin, minlength=self.config.n_bins) > 0  # empty bins add nothing to any sum
        column = BOOT_RATES + np.cumsum(used) - 1

        def build(rows: np.ndarray) -> np.ndarray:
            x = np.zeros((len(rows), BOOT_RATES + int(used.sum())))
            hit, pos = model.pred[rows] == label, positive[rows]
            x[:, 0], x[:, 1], x[:, 2], x[:, 3] = pos, model.correct[rows], hit & pos, hit & ~pos
            x[np.arange(len(rows)), column[model.ece_bin[rows]]] = model.ece_value[rows]
            return x

        return build, np.arange(BOOT_RATES + int(used.sum())) >= BOOT_RATES

    def _boot_sums(self, step: Model, base: Model | None, flip: np.ndarray | None) -> np.ndarray | None:
        """Fill ``step.boot`` and ``base.boot`` (labelled models) and return the flips' resampled
        sums (B, C, 1), in one pass over the rows: the sums are exact, so which ones share a pass
        does not change them."""
        models = [m for m in (step, base) if m is not None and m.correct is not None and m.boot is None]
        models = [m for i, m in enumerate(models) if m is not models[0] or i == 0]  # the baseline compared with itself
        builders = [self._features(m) for m in models]
        if flip is not None:
            builders.append((lambda rows: flip[rows, None], np.zeros(1, dtype=bool)))
        sums = self._resample(builders) if builders else []
        for m, s in zip(models, sums):
            m.boot = s
        return sums[-1] if flip is not None else None

    @property
    def _positive(self) -> np.ndarray:
        """(N,) bool: rows whose label is the positive class."""
        return np.asarray(self.y_true) == self.config.positive_label

    # -- one step ------------------------------------------------------------------------------
    def compare(self, step: Model, base: Model | None = None) -> dict:
        """All statistics of ``step``, paired against ``base`` (``None``: ``step`` is the baseline).

        Returns the dict described in ``evaluate_step``.
        """
        if step.owner is not self or (base is not None and base.owner is not self):
            raise ValueError(FOREIGN_MODEL_ERROR)
        cfg = self.config
        labels, paired = step.correct is not None, base is not None
        if paired:
            if base.k != step.k:
                raise DataError(SHAPE_MISMATCH_ERROR.format(what="base_probs", got=(self.n, base.k),
                                                            expected=(self.n, step.k)))
            if len(step.outputs) != self.n or len(base.outputs) != self.n:
                raise DataError(SHAPE_MISMATCH_ERROR.format(
                    what="outputs", got=(len(step.outputs), len(base.outputs)), expected=(self.n, self.n)))
        sizes = self.groups.sizes
        flip = None if not paired or cfg.embedding else (step.pred != base.pred).astype(np.float64)
        columns = self._fields(step, base, flip, labels)
        table = {name: {k: v[i] for k, v in columns.items()} for i, name in enumerate(["overall", *self.keys])}

        # 1. point estimates; groups below min_group_size keep only n, status and reason
        overall = table["overall"]
        groups: dict[str, dict] = {}
        for i, key in enumerate(self.keys, start=1):
            if sizes[i] < cfg.min_group_size:
                groups[key] = {"n": int(sizes[i]), "status": "insufficient_data",
                               "reason": REASON_TOO_SMALL.format(min_group_size=cfg.min_group_size)}
            else:
                row = table[key]
                groups[key] = {"n": row.pop("n"), "status": "ok", **row}
        positive = base_positive = {}
        if labels:
            rates = lambda p: {key: (mt.none_if_nan(p["positive_tpr"][i]), mt.none_if_nan(p["positive_fpr"][i]),  # noqa: E731
                                     mt.none_if_nan(p["selection_rate"][i])) for i, key in enumerate(self.keys, start=1)}
            positive = rates(step.point)
            base_positive = rates(base.point) if paired else {}

        # 2. one paired stratified bootstrap for every interval (column 0 = overall)
        sized = [k for k in self.keys if groups[k]["status"] == "ok"]
        boot_col = {key: i + 1 for i, key in enumerate(sized)}
        reps = self._bootstrap(step, base, flip, sized) if cfg.n_boot > 0 and (labels or paired) else {}
        ci_names = [name for name, wanted in (("accuracy", labels), ("ece", labels), ("accuracy_delta", labels and paired),
                                              ("ece_delta", labels and paired), ("flip_rate", flip is not None)) if wanted]
        cis = _ci(np.stack([reps[name] for name in ci_names], axis=1), cfg.confidence) if reps and ci_names else None
        for j, name in enumerate(ci_names):
            overall[f"{name}_ci"] = None if cis is None else [float(cis[0, j, 0]), float(cis[1, j, 0])]
            for key in sized:
                col = boot_col[key]
                groups[key][f"{name}_ci"] = None if cis is None else [float(cis[0, j, col]), float(cis[1, j, col])]
        if labels and paired:  # the ECE gate tests "increase > limit" with the bootstrap's standard error
            se = reps["ece_delta"].std(axis=0, ddof=1) if reps and cfg.n_boot > 1 else None
            for col, target in enumerate([overall, *(groups[k] for k in sized)]):
                target["ece_delta_se"] = None if se is None else float(se[col])

        # the percentile bootstrap collapses to [0, 0] for a group without flips: widen the accuracy-change
        # and flip-rate intervals to at least Tango's / Clopper-Pearson's (raw kept as *_ci_bootstrap)
        if cis is not None:
            overall = widen_intervals(overall, cfg.confidence)
            groups.update({key: widen_intervals(groups[key], cfg.confidence) for key in sized})

        ok = [k for k in self.keys if groups[k]["status"] == "ok"]

        # 4. family-wide quantities over the final ok groups
        if flip is not None:
            total_flips = float(flip.sum())
            flips = self.groups.sums(flip)
            index = {key: i for i, key in enumerate(self.keys, start=1)}
            for key in ok:
                share = None if total_flips == 0 else float(flips[index[key]] / total_flips)
                groups[key]["flip_share_ratio"] = None if share is None else share / (groups[key]["n"] / self.n)

        disparity = {scope: _disparity(keys, groups, positive, base_positive, reps, boot_col, cfg, labels=labels, paired=paired)
                     for scope, keys in grp.scopes(self.keys).items()}
        return {"overall": overall, "groups": groups, "disparity": disparity}

    def _fields(self, step: Model, base: Model | None, flip: np.ndarray | None, labels: bool) -> dict[str, list]:
        """Point fields of overall (index 0) and every group, as JSON-ready columns in report order."""
        paired = base is not None
        sizes = self.groups.sizes
        cols: dict[str, list] = {"n": [int(v) for v in sizes]}
        none = lambda values: [mt.none_if_nan(v) for v in values]  # noqa: E731
        if labels:
            sp = step.point
            for key in CLASSIFICATION_KEYS:
                cols[key] = none(sp[key])
            if paired:
                bp = base.point
                for key in CLASSIFICATION_KEYS:
                    cols[f"{key}_delta"] = none(sp[key] - bp[key])
                lost = (base.correct == 1) & (step.correct == 0)
                gained = (base.correct == 0) & (step.correct == 1)
                counts = self.groups.sums(np.stack([lost, gained], axis=1).astype(np.float64))
                cols["lost_correct"] = [int(v) for v in counts[:, 0]]
                cols["gained_correct"] = [int(v) for v in counts[:, 1]]
                cols["mcnemar_p"] = [float(v) for v in _mcnemar(counts[:, 0], counts[:, 1], "two-sided")]
                cols["mcnemar_p_drop"] = [float(v) for v in _mcnemar(counts[:, 0], counts[:, 1], "drop")]
                cols["paired_counts"] = self._paired_counts(step, base)
        if paired:
            cosine, rel = _row_fidelity(step.outputs, base.outputs)
            flips = np.zeros(len(cosine)) if flip is None else flip  # an embedding has no argmax to flip
            sums = self.groups.sums(np.stack([flips, cosine, rel], axis=1))
            with np.errstate(divide="ignore", invalid="ignore"):
                mean = sums / sizes[:, None]
            low = self.groups.minimum(cosine)
            empty = sizes == 0
            cols["agreement"] = [None if e or flip is None else float(1.0 - v) for e, v in zip(empty, mean[:, 0])]
            cols["flip_rate"] = [None if e or flip is None else float(v) for e, v in zip(empty, mean[:, 0])]
            cols["cosine_mean"] = [None if e else float(v) for e, v in zip(empty, mean[:, 1])]
            cols["cosine_min"] = [None if e else float(v) for e, v in zip(empty, low)]
            cols["rel_error_mean"] = [None if e else float(v) for e, v in zip(empty, mean[:, 2])]
            cols["cosine_sd"] = [None if s < 2 else float(v) for s, v in zip(sizes, self.groups.std(cosine, mean[:, 1]))]
        if labels:
            edges = np.linspace(0.0, 1.0, self.config.n_bins + 1)  # the uniform bins of grouped_classification
            sp = step.point
            cols["reliability"] = [mt.reliability_bins(edges, sp["bin_count"][i], sp["bin_confidence"][i],
                                                       sp["bin_correct"][i]) for i in range(len(sizes))]
        return cols

    def _paired_counts(self, step: Model, base: Model) -> list[dict]:
        """Per group (overall first), the counts behind every paired rate change, per class c:
        ``class_n`` rows of class c; ``recall_lost``/``recall_gained`` of them that the baseline
        predicted as c and the step does not, and the reverse; ``other_n`` rows of other classes;
        ``fp_added``/``fp_removed`` of them that the step newly predicts as c, and the reverse.
        A class's FPR rise is (fp_added - fp_removed) / other_n, its recall drop
        (recall_lost - recall_gained) / class_n, its selection-rate change
        (added - removed over all rows) / n with added = recall_gained + fp_added."""
        k = step.k
        y = self._labels(k)
        g = self.groups
        base_hit, step_hit = base.pred == y, step.pred == y
        class_n = g.counts(y, k)
        recall_lost = g.counts(y, k, (base_hit & ~step_hit).astype(np.float64))
        recall_gained = g.counts(y, k, (~base_hit & step_hit).astype(np.float64))
        changed = base.pred != step.pred
        # a row of class y whose prediction moved from a to b: b gains a false positive unless b == y,
        # a loses one unless a == y
        add_w = (changed & (step.pred != y)).astype(np.float64)
        rem_w = (changed & (base.pred != y)).astype(np.float64)
        fp_added = g.counts(np.where(add_w > 0, step.pred, 0), k, add_w)
        fp_removed = g.counts(np.where(rem_w > 0, base.pred, 0), k, rem_w)
        other_n = g.sizes[:, None] - class_n
        as_int = lambda a: [int(round(v)) for v in a]  # noqa: E731
        return [{"class_n": as_int(class_n[i]), "recall_lost": as_int(recall_lost[i]), "recall_gained": as_int(recall_gained[i]),
                 "other_n": as_int(other_n[i]), "fp_added": as_int(fp_added[i]), "fp_removed": as_int(fp_removed[i])}
                for i in range(len(g))]

    def _bootstrap(self, step: Model, base: Model | None, flip: np.ndarray | None, keys: list[str]) -> dict[str, np.ndarray]:
        """Replicate statistics for overall (column 0) and each of ``keys``: name -> (B, 1 + len(keys))."""
        index = {key: i for i, key in enumerate(self.keys, start=1)}
        rows = [0] + [index[k] for k in keys]
        cells_of = [np.flatnonzero(m) for m in self._membership()[rows]]
        sizes = self.groups.sizes[rows].astype(np.float64)
        flips = self._boot_sums(step, base, flip)

        def agg(cell_sums: np.ndarray) -> np.ndarray:  # (B, C, F) -> (B, G', F); no BLAS: the same sums on any machine
            return np.stack([cell_sums[:, c].sum(axis=1) for c in cells_of], axis=1)

        out: dict[str, np.ndarray] = {}
        with np.errstate(divide="ignore", invalid="ignore"):
            if step.correct is not None:
                s = agg(step.boot)  # columns: positive label, correct, true positive, false positive, bins...
                out["accuracy"] = s[..., 1] / sizes
                out["ece"] = np.abs(s[..., BOOT_RATES:]).sum(-1) / sizes
                if base is not None:
                    b = agg(base.boot)
                    out["base_accuracy"] = b[..., 1] / sizes
                    out["accuracy_delta"] = out["accuracy"] - out["base_accuracy"]
                    out["ece_delta"] = out["ece"] - np.abs(b[..., BOOT_RATES:]).sum(-1) / sizes
                    positives = s[..., 0]  # the same weights: equal to b[..., 0]
                    negatives = sizes - positives
                    for name, sums in (("", s), ("base_", b)):
                        out[f"{name}positive_tpr"] = sums[..., 2] / positives
                        out[f"{name}positive_fpr"] = sums[..., 3] / negatives
                        out[f"{name}selection_rate"] = (sums[..., 2] + sums[..., 3]) / sizes
            if flips is not None:
                out["flip_rate"] = agg(flips)[..., 0] / sizes
        return out


def _row_fidelity(outputs: np.ndarray, base_outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``metrics.row_fidelity`` chunk by chunk of rows (same values), so that the float64 copies it
    makes stay small however many rows there are."""
    if len(outputs) != len(base_outputs):
        return mt.row_fidelity(outputs, base_outputs)  # its shape error
    parts = [mt.row_fidelity(outputs[a:a + CHUNK_ROWS], base_outputs[a:a + CHUNK_ROWS]) for a in range(0, len(outputs), CHUNK_ROWS)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


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


def _disparity(scope_keys: list[str], groups: dict, positive: dict, base_positive: dict, reps: dict, boot_col: dict,
               config: StatsConfig, *, labels: bool, paired: bool) -> dict:
    """One scope's summaries over its ok groups (every field present, ``None`` when undefined)."""
    ok = [k for k in scope_keys if groups[k]["status"] == "ok"]
    out: dict = {"groups": ok, "excluded": [k for k in scope_keys if k not in ok]}
    names = (CLASSIFICATION_KEYS if labels else ()) + (FIDELITY_KEYS if paired else ())
    for name in names:
        out[name] = _summary({k: groups[k][name] for k in ok}, mt.HIGHER_IS_BETTER[name])
    if labels:
        out["demographic_parity_difference"], out["equalized_odds_difference"] = _parity_gaps({k: positive[k] for k in ok})
    if labels and paired:
        cols = [boot_col[k] for k in ok]
        base_point = {k: groups[k]["accuracy"] - groups[k]["accuracy_delta"] for k in ok}
        now = out["accuracy"]["gap"]
        base = _summary(base_point, True)["gap"]
        out["accuracy_gap_base"] = base
        _growth(out, "accuracy_gap", now, base, reps, "accuracy", cols, config)
        # equalized odds and demographic parity of the positive class, before and after
        out["base_demographic_parity_difference"], out["base_equalized_odds_difference"] = \
            _parity_gaps({k: base_positive[k] for k in ok})
        _growth(out, "demographic_parity", out["demographic_parity_difference"],
                out["base_demographic_parity_difference"], reps, "selection_rate", cols, config)
        _growth(out, "equalized_odds", out["equalized_odds_difference"],
                out["base_equalized_odds_difference"], reps, ("positive_tpr", "positive_fpr"), cols, config)
    return out


def _parity_gaps(rates: dict[str, tuple]) -> tuple[float | None, float | None]:
    """Demographic parity difference (selection-rate gap) and equalized odds difference (the larger
    of the TPR and FPR gaps) over groups' (tpr, fpr, selection rate)."""
    gap = lambda i, hib: _summary({k: v[i] for k, v in rates.items()}, hib)["gap"]  # noqa: E731
    tpr, fpr = gap(0, True), gap(1, False)
    return gap(2, True), (None if tpr is None or fpr is None else max(tpr, fpr))


def _replicate_gap(reps: dict, name: str, cols: list[int]) -> np.ndarray:
    x = reps[name][:, cols]
    return np.nanmax(x, axis=1) - np.nanmin(x, axis=1)


def _growth(out: dict, name: str, now, base, reps: dict, metric, cols: list[int], config: StatsConfig) -> None:
    """``{name}_growth`` = now - base with its percentile interval and bootstrap standard error."""
    out[f"{name}_growth"] = None if now is None or base is None else float(now - base)
    out[f"{name}_growth_ci"] = out[f"{name}_growth_se"] = None
    metrics = (metric,) if isinstance(metric, str) else metric
    if out[f"{name}_growth"] is None or not reps or f"base_{metrics[0]}" not in reps or len(cols) < 2:
        return
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample may leave a group without positives
        step = np.max([_replicate_gap(reps, m, cols) for m in metrics], axis=0)
        prior = np.max([_replicate_gap(reps, f"base_{m}", cols) for m in metrics], axis=0)
    growth = step - prior
    growth = growth[np.isfinite(growth)]
    if len(growth) < 2:
        return
    out[f"{name}_growth_ci"] = [float(v) for v in _ci(growth, config.confidence)]
    out[f"{name}_growth_se"] = float(growth.std(ddof=1))


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

    One-off use of ``Evaluator``; a pipeline comparing several steps with one baseline keeps one
    ``Evaluator`` and the baseline's ``Model`` instead (same results, less work).

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
        fewer than ``min_group_size`` rows carry
        only ``n``, ``status = "insufficient_data"`` and ``reason``, and are left out of the
        disparity summaries (listed under ``excluded``) and of the Holm family.

        Per ok group with labels and a baseline: ``*_delta`` for every metric, percentile
        ``accuracy_delta_ci``/``ece_delta_ci`` (each at ``confidence`` on its own; accuracy
        and flip-rate intervals widened, see the module docstring),
        ``lost_correct``/``gained_correct``, ``mcnemar_p``,
        ``mcnemar_p_drop`` (descriptive), ``flip_share_ratio``. Interval
        fields are ``None`` when ``n_boot = 0``.
    """
    p = mt.check_probs(probs)
    evaluator = Evaluator(masks, y_true, len(p), config)
    step = evaluator.model(p, outputs)
    if base_probs is None:
        return evaluator.compare(step)
    if base_outputs is None:
        raise DataError(BASE_OUTPUTS_ERROR)
    bp = mt.check_probs(base_probs)
    if bp.shape != p.shape:
        raise DataError(SHAPE_MISMATCH_ERROR.format(what="base_probs", got=bp.shape, expected=p.shape))
    return evaluator.compare(step, evaluator.model(bp, base_outputs))
