"""Release gates: pure functions from the report's numbers and the recipe's thresholds to a verdict.

One rule for every gate (``decision = "ci"``, the default). A gate's *harm* is a number where
larger is worse (an accuracy or recall drop, an FPR rise, 1 - agreement, ...), compared with the
gate's limit ``t``:

- **fail** when the data show ``harm > t``: the one-sided p-value of ``H0: harm <= t`` is below
  ``alpha = 1 - confidence`` after Holm's correction over the gate's family (every group, and for
  multiclass every class, of one step). Testing against ``t`` and not against 0 means a true harm
  within the limit fails at most ``alpha`` of the time, however many groups there are;
- **pass** when the upper bound of the harm's two-sided ``confidence`` interval is within ``t``
  (non-inferiority shown for this group);
- otherwise **undecided**: the group is too small, or its harm too close to the limit, to tell.
  ``on_undecided`` says what that means: ``fail_if_significant`` (the default: fail when the
  observed harm exceeds the limit *and* the data show some harm, Holm-corrected; for the floors on
  agreement and cosine, which a compressed model never meets exactly, as ``fail_if_observed``),
  ``warn``, ``fail``, or ``fail_if_observed`` (fail when the observed harm exceeds the limit).
  The default was chosen by simulating this rule (``benchmarks/gate_simulation.py``): it is the
  policy that keeps false failures under balanced churn below 5% of builds and detects the most.

Paired rate changes (accuracy, recall, FPR, selection rate) use Tango's score interval and test
(``intervals``), flip rates Clopper-Pearson's exact ones, mean cosine a t interval, and the
bootstrap-only quantities (ECE change, growth of best-to-worst gaps) their percentile interval and
a normal test with the bootstrap's standard error. ``min_detectable`` is, per group and gate, the
smallest harm that fails on evidence at that group's size (at the Bonferroni level, which Holm's
first step uses): what the gate can see. ``decision = "point"`` compares point estimates only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
from scipy import stats as sps

from . import intervals as iv
from .stats import holm

PASS, FAIL, WARN = "pass", "fail", "warn"

# Thresholds a recipe gets without saying so ([gates] defaults = true): every harm edgefair measures
# is looked at. Labelled classifiers: 2 points of accuracy, 3 of any group's TPR or FPR, 3 of ECE;
# unlabelled classifiers: 95% agreement with the baseline; embeddings: mean cosine 0.95.
DEFAULTS_LABELLED = {"max_group_accuracy_drop": 0.02, "max_group_tpr_drop": 0.03,
                     "max_group_fpr_increase": 0.03, "max_group_ece_increase": 0.03}
DEFAULTS_UNLABELLED = {"min_group_agreement": 0.95}
DEFAULTS_EMBEDDING = {"min_group_cosine": 0.95}

GATE_TEXT = {
    "max_group_accuracy_drop": "accuracy drop",
    "max_group_tpr_drop": "true positive rate drop",
    "max_group_fpr_increase": "false positive rate rise",
    "max_group_selection_rate_change": "selection rate change",
    "max_group_ece_increase": "ECE increase",
    "max_group_flip_rate": "flip rate",
    "min_group_agreement": "agreement with the baseline",
    "min_group_cosine": "mean cosine to the baseline",
    "max_accuracy_gap_growth": "best-to-worst accuracy gap growth",
    "max_equalized_odds_growth": "equalized odds difference growth",
    "max_demographic_parity_growth": "demographic parity difference growth",
    "max_group_regression_vs_previous": "drop vs the last release",
}
# judged on each step's `vs_previous` (edgefair run --previous DIR): net loss of accuracy (or, without
# labels, of agreement with this run's baseline) against the last release's selected model
PREVIOUS_GATE = "max_group_regression_vs_previous"
LOWER_LIMIT_GATES = ("min_group_agreement", "min_group_cosine")  # the limit is a floor on a score
SCOPE_GATES = {"max_accuracy_gap_growth": "accuracy_gap", "max_equalized_odds_growth": "equalized_odds",
               "max_demographic_parity_growth": "demographic_parity"}


@dataclass
class Harm:
    """One harm of one group (or class, or scope) of one step, in larger-is-worse units."""

    value: float | None  # point estimate
    ci: tuple[float, float] | None  # two-sided interval at the run's confidence
    p: float | None = None  # one-sided p-value of "harm <= limit", before correction
    n: int | None = None  # the rows the estimate rests on
    min_detectable: float | None = None  # smallest harm that fails on evidence at this n
    se: float | None = None  # standard error, for the normal tests of bootstrap estimates
    counts: tuple[float, float, float] | None = None  # (lost, gained, n) of a paired rate change
    where: str | None = None  # e.g. "class 3" for a multiclass rate
    reason: str | None = None  # why there is no decision-grade estimate
    p_holm: float | None = None
    p_zero: float | None = None  # one-sided p-value of "harm <= 0" (is there any harm?), change gates only
    p_zero_holm: float | None = None


@dataclass(frozen=True)
class Rule:
    decision: str = "ci"
    on_undecided: str = "fail_if_significant"
    confidence: float = 0.95
    min_support: int = 50

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence


def decide(harm: Harm, limit: float, rule: Rule) -> tuple[str, str, str]:
    """(status, decision, reason) of one harm against its limit; decision is pass/fail/undecided."""
    if harm.value is None:
        return _undecided(harm, limit, rule, harm.reason or "no estimate (insufficient data)")
    if rule.decision == "point" or harm.ci is None:
        if harm.value <= limit:
            return PASS, "pass", "point estimate within the limit"
        return FAIL, "fail", "point estimate beyond the limit"
    if harm.reason:  # an estimate too thin to test (support below min_group_size)
        return _undecided(harm, limit, rule, harm.reason)
    if harm.p_holm is not None and harm.p_holm < rule.alpha:
        return FAIL, "fail", f"harm beyond the limit (one-sided p = {harm.p_holm:.2g}, Holm-corrected)"
    if harm.ci[1] <= limit:
        return PASS, "pass", "upper confidence bound within the limit"
    return _undecided(harm, limit, rule, "interval reaches beyond the limit, no evidence of harm beyond it")


def _undecided(harm: Harm, limit: float, rule: Rule, reason: str) -> tuple[str, str, str]:
    observed = harm.value is not None and harm.value > limit
    real = harm.p_zero_holm is not None and harm.p_zero_holm < rule.alpha if harm.p_zero is not None else observed
    if rule.on_undecided == "fail" or (observed and (rule.on_undecided == "fail_if_observed"
                                                     or (rule.on_undecided == "fail_if_significant" and real))):
        return FAIL, "undecided", f"undecided ({reason}); on_undecided = {rule.on_undecided}"
    return WARN, "undecided", reason


# ---- harms of one group, from the counts in the report ---------------------------------------------


def _paired(lost: float, gained: float, n: float, limit: float, rule: Rule, where: str | None = None) -> Harm:
    """A paired rate change with net loss (lost - gained) / n; its Tango interval and test are
    filled in for the whole family at once (``_fill_paired``)."""
    if not n:
        return Harm(None, None, n=0, where=where, reason="no rows")
    harm = Harm((lost - gained) / n, None, n=int(n), where=where, counts=(lost, gained, n))
    if n < rule.min_support:
        harm.reason = f"{int(n)} rows < min_group_size ({rule.min_support})"
    return harm


def _fill_paired(harms: list[Harm], limit: float, rule: Rule, two_sided: bool) -> None:
    """Tango's interval, p-value against the limit and (Bonferroni level) smallest failing loss of
    every paired harm of a family, in three vectorised calls instead of one per group."""
    todo = [h for h in harms if h.counts is not None]
    if not todo:
        return
    lost, gained, n = (np.array([h.counts[i] for h in todo], dtype=np.float64) for i in range(3))
    lo, hi = iv.paired_score_interval(lost, gained, n, rule.confidence)
    p = iv.paired_p_above(lost, gained, n, limit)
    p0 = iv.paired_p_above(lost, gained, n, 0.0)
    if two_sided:  # |change| > limit: either one-sided test, so twice the smaller p-value
        p = np.minimum(1.0, 2.0 * np.minimum(p, iv.paired_p_above(gained, lost, n, limit)))
        p0 = np.minimum(1.0, 2.0 * np.minimum(p0, iv.paired_p_above(gained, lost, n, 0.0)))
    testable = sum(1 for h in harms if not h.reason)
    level = rule.alpha / max(testable, 1) / (2.0 if two_sided else 1.0)
    md = iv.smallest_failing_loss(n, limit, level)
    for i, h in enumerate(todo):
        if two_sided:  # the interval of |change|
            h.value = abs(h.value)
            h.ci = (lo[i], hi[i]) if lo[i] > 0 else (-hi[i], -lo[i]) if hi[i] < 0 else (0.0, max(-lo[i], hi[i]))
        else:
            h.ci = (float(lo[i]), float(hi[i]))
        h.p, h.p_zero = float(p[i]), float(p0[i])
        h.min_detectable = None if np.isnan(md[i]) else float(md[i])


def _class_harms(g: dict, limit: float, rule: Rule, positive: int, kind: str) -> list[Harm]:
    """Recall drop (kind "tpr") or FPR rise ("fpr") of the positive class (binary) or every class."""
    pc = g.get("paired_counts")
    if not pc:
        return [Harm(None, None, reason="no labels")]
    k = len(pc["class_n"])
    classes = [positive] if k == 2 else range(k)
    out = []
    for c in classes:
        where = None if k == 2 else f"class {c}"
        if kind == "tpr":
            out.append(_paired(pc["recall_lost"][c], pc["recall_gained"][c], pc["class_n"][c], limit, rule, where))
        else:
            out.append(_paired(pc["fp_added"][c], pc["fp_removed"][c], pc["other_n"][c], limit, rule, where))
    return out


def _accuracy(g, limit, rule, positive):
    if g.get("lost_correct") is None:
        return [Harm(None, None, reason="no labels")]
    return [_paired(g["lost_correct"], g["gained_correct"], g["n"], limit, rule)]


def _selection(g, limit, rule, positive):
    pc = g.get("paired_counts")
    if not pc:
        return [Harm(None, None, reason="no labels")]
    up = pc["recall_gained"][positive] + pc["fp_added"][positive]
    down = pc["recall_lost"][positive] + pc["fp_removed"][positive]
    return [_paired(up, down, g["n"], limit, rule)]  # signed change; _fill_paired makes it |change|


def _ece(g, limit, rule, positive):
    if g.get("ece_delta") is None:
        return [Harm(None, None, reason="no labels")]
    return [_normal(g["ece_delta"], g.get("ece_delta_ci"), g.get("ece_delta_se"), limit, g["n"])]


def _normal(value: float, ci, se: float | None, limit: float, n: int | None) -> Harm:
    """A bootstrap estimate: its percentile interval, and a normal test with its standard error."""
    if ci is None or se is None:
        return Harm(value, None, n=n)
    p = float(sps.norm.sf((value - limit) / se)) if se > 0 else float(value <= limit)
    p0 = float(sps.norm.sf(value / se)) if se > 0 else float(value <= 0)
    return Harm(value, tuple(ci), p, n, se=se, p_zero=p0)


def _flips(g, limit, rule, positive):
    if g.get("flip_rate") is None:
        return [Harm(None, None, reason="no baseline")]
    n = g["n"]
    k = round(g["flip_rate"] * n)
    return [Harm(k / n, iv.proportion_ci(k, n, rule.confidence), iv.proportion_p_above(k, n, limit), n)]


def _cosine(g, limit, rule, positive):
    """Harm 1 - mean cosine against 1 - floor, with a t interval over the group's rows."""
    if g.get("cosine_mean") is None:
        return [Harm(None, None, reason="no baseline")]
    n, mean, sd = g["n"], g["cosine_mean"], g.get("cosine_sd") or 0.0
    harm = 1.0 - mean
    if n < 2:
        return [Harm(harm, None, n=n)]
    se = sd / math.sqrt(n)
    q = float(sps.t.ppf(0.5 + rule.confidence / 2, n - 1))
    p = float(sps.t.sf((harm - limit) / se, n - 1)) if se > 0 else float(harm <= limit)
    return [Harm(harm, (harm - q * se, harm + q * se), p, n, se=se)]


GROUP_HARMS: dict[str, Callable[..., list[Harm]]] = {
    "max_group_accuracy_drop": _accuracy,
    "max_group_tpr_drop": lambda g, t, r, pos: _class_harms(g, t, r, pos, "tpr"),
    "max_group_fpr_increase": lambda g, t, r, pos: _class_harms(g, t, r, pos, "fpr"),
    "max_group_selection_rate_change": _selection,
    "max_group_ece_increase": _ece,
    "max_group_flip_rate": _flips,
    "min_group_agreement": _flips,  # harm = flip rate = 1 - agreement, limit = 1 - floor
    "min_group_cosine": _cosine,  # harm = 1 - mean cosine, limit = 1 - floor
}


def _min_detectable(name: str, harm: Harm, limit: float, level: float) -> float | None:
    """Smallest harm that would fail on evidence at this group's n (see the module docstring);
    paired rate changes get theirs in ``_fill_paired``."""
    if harm.counts is not None or not harm.n:
        return harm.min_detectable
    if name in ("max_group_flip_rate", "min_group_agreement"):
        k = float(sps.binom.isf(level, harm.n, min(max(limit, 0.0), 1.0))) + 1.0
        return None if k > harm.n else k / harm.n
    # normal tests: the limit plus the one-sided quantile times the standard error
    return None if harm.se is None else limit + float(sps.norm.isf(level)) * harm.se


# ---- one step ------------------------------------------------------------------------------------


def effective_thresholds(gates: Any, *, labelled: bool, output: str) -> dict[str, float]:
    """The thresholds in force: the recipe's, and where it says nothing, the defaults (unless
    ``defaults = false``). Quality gates that need labels are dropped for label-free runs."""
    names = [*GROUP_HARMS, PREVIOUS_GATE, *SCOPE_GATES]
    chosen = {n: getattr(gates, n) for n in names if getattr(gates, n, None) is not None}
    if gates.defaults:
        defaults = DEFAULTS_EMBEDDING if output == "embedding" else DEFAULTS_LABELLED if labelled else DEFAULTS_UNLABELLED
        chosen = {**defaults, **chosen}
    needs_labels = {"max_group_accuracy_drop", "max_group_tpr_drop", "max_group_fpr_increase",
                    "max_group_selection_rate_change", "max_group_ece_increase", *SCOPE_GATES}
    if not labelled or output == "embedding":
        chosen = {n: t for n, t in chosen.items() if n not in needs_labels}
    if output == "embedding":  # no argmax: flips mean nothing for an embedding
        chosen = {n: t for n, t in chosen.items() if n not in ("max_group_flip_rate", "min_group_agreement", PREVIOUS_GATE)}
    return {n: chosen[n] for n in names if n in chosen}


def _limit(name: str, threshold: float) -> float:
    """A gate's limit in harm units: a floor on a score becomes a ceiling on 1 - score."""
    return 1.0 - threshold if name in LOWER_LIMIT_GATES else threshold


def _entry(name: str, scope: str | None, harm: Harm, threshold: float, status: str, decision: str, reason: str) -> dict[str, Any]:
    lower = name in LOWER_LIMIT_GATES  # reported as the score itself (agreement 0.93 vs floor 0.95)
    value = None if harm.value is None else (1.0 - harm.value if lower else harm.value)
    ci = None if harm.ci is None else ([1.0 - harm.ci[1], 1.0 - harm.ci[0]] if lower else list(harm.ci))
    md = harm.min_detectable
    entry = {
        "gate": name, "group": scope, "value": value, "ci": ci, "threshold": threshold, "status": status,
        "decision": decision, "reason": reason, "n": harm.n, "p_holm": harm.p_holm,
        "min_detectable": None if md is None else (1.0 - md if lower else md),
        "exceeds": None if value is None else (value < threshold if lower else value > threshold),
        "direction": "min" if lower else "max",
    }
    if harm.where:
        entry["where"] = harm.where
    return entry


def _family(name: str, harms: dict[str, Harm], limit: float, threshold: float, rule: Rule) -> Iterator[dict[str, Any]]:
    """Holm over every testable harm of one gate and step, then a decision per group (its worst)."""
    _fill_paired([h for hs in harms.values() for h in hs], limit, rule, two_sided=name == "max_group_selection_rate_change")
    testable = [(k, i) for k, hs in harms.items() for i, h in enumerate(hs) if h.p is not None and not h.reason and h.ci is not None]
    for (k, i), adjusted in zip(testable, holm([harms[k][i].p for k, i in testable])):
        harms[k][i].p_holm = adjusted
    changes = [(k, i) for k, i in testable if harms[k][i].p_zero is not None]
    for (k, i), adjusted in zip(changes, holm([harms[k][i].p_zero for k, i in changes])):
        harms[k][i].p_zero_holm = adjusted
    level = rule.alpha / max(len(testable), 1)
    for key, hs in harms.items():
        decided = []
        for h in hs:
            h.min_detectable = _min_detectable(name, h, limit, level) if rule.decision == "ci" else limit
            decided.append((h, decide(h, limit, rule)))
        # the group's outcome is its worst class: a failure, else an undecided one, else the largest harm
        order = {FAIL: 0, WARN: 1, PASS: 2}
        harm, (status, decision, reason) = min(decided, key=lambda hd: (order[hd[1][0]], -(hd[0].value if hd[0].value is not None else -np.inf)))
        yield _entry(name, key, harm, threshold, status, decision, reason)


def step_gates(step: dict[str, Any], thresholds: dict[str, float], rule: Rule, *, positive_label: int,
               latency_gate: float | None = None, size_gate: float | None = None) -> Iterator[dict[str, Any]]:
    if step["overall"].get("nonfinite_rows"):  # always checked: a model that emits NaN/inf cannot ship
        bad = step["overall"]["nonfinite_rows"]
        yield _entry("finite_outputs", None, Harm(float(bad), None), 0.0, FAIL, "fail", f"{bad} eval rows gave NaN or infinite outputs")
    if PREVIOUS_GATE in thresholds and step.get("vs_previous"):  # every model, the baseline too: none may regress
        threshold = thresholds[PREVIOUS_GATE]
        harms = {key: ([_paired(g["lost"], g["gained"], g["n"], threshold, rule)] if g.get("status") == "ok"
                       else [Harm(None, None, n=g.get("n"), reason=g.get("reason", "insufficient data"))])
                 for key, g in step["vs_previous"]["groups"].items()}
        for entry in _family(PREVIOUS_GATE, harms, threshold, threshold, rule):
            step["vs_previous"]["groups"][entry["group"]]["min_detectable"] = entry["min_detectable"]
            yield entry
    if step["index"] > 0:
        for name, threshold in thresholds.items():
            if name == PREVIOUS_GATE:
                continue
            limit = _limit(name, threshold)
            if name in SCOPE_GATES:
                metric = SCOPE_GATES[name]
                harms = {scope: [_normal(d.get(f"{metric}_growth"), d.get(f"{metric}_growth_ci"), d.get(f"{metric}_growth_se"), limit, None)
                                 if d.get(f"{metric}_growth") is not None else Harm(None, None, reason="fewer than two groups with data")]
                         for scope, d in step.get("disparity", {}).items()}
            else:
                harms = {key: (GROUP_HARMS[name](g, limit, rule, positive_label) if g.get("status") == "ok"
                               else [Harm(None, None, n=g.get("n"), reason=g.get("reason", "insufficient data"))])
                         for key, g in step["groups"].items()}
            for entry in _family(name, harms, limit, threshold, rule):
                if entry["group"] in step["groups"]:
                    step["groups"][entry["group"]].setdefault("min_detectable", {})[name] = entry["min_detectable"]
                yield entry
    lat = step.get("latency") or {}
    if latency_gate is not None:
        if lat.get("p95_ms") is None:
            yield _entry("max_latency_p95_ms", None, Harm(None, None), latency_gate,
                         *_undecided(Harm(None, None), latency_gate, rule, "no latency measured for this model"))
        else:
            ok = lat["p95_ms"] <= latency_gate
            yield _entry("max_latency_p95_ms", None, Harm(lat["p95_ms"], None), latency_gate, PASS if ok else FAIL,
                         PASS if ok else FAIL, f"measured p95 ({lat.get('source', 'local')})")
    if size_gate is not None:
        ok = step["size_bytes"] / 1e6 <= size_gate
        yield _entry("max_size_mb", None, Harm(step["size_bytes"] / 1e6, None), size_gate, PASS if ok else FAIL,
                     PASS if ok else FAIL, "model file size")


def apply_gates(report: dict[str, Any], gates: Any, *, confidence: float, min_group_size: int = 50,
                positive_label: int = 1, output: str = "logits", select: Any = None, tune: bool = False) -> None:
    """Fill each step's `gates` and `passed`, and the report's `verdict`, `selected`, `gates_applied`
    and `gate_summary` (in place).

    A step *passes* when no gate fails and at least one gate looked at it. The model to ship is the
    passing compressed step chosen by ``select.by`` (fastest, smallest or last); with no steps, the
    baseline is the candidate. The verdict is "pass" when a model to ship was found and, with
    ``select.require = "all"``, every compressed step passed too. ``tune``: the steps are
    alternatives and the baseline is kept when no passing candidate is faster.
    """
    steps = report["steps"]
    labelled = bool(report.get("data", {}).get("eval", {}).get("labelled", True))
    thresholds = effective_thresholds(gates, labelled=labelled, output=output)
    rule = Rule(decision=gates.decision, on_undecided=gates.on_undecided, confidence=confidence, min_support=min_group_size)
    compressed = steps[1:]
    candidates = compressed or steps[:1]  # with no steps, the baseline itself is what would ship
    for step in steps:
        step["gates"] = list(step_gates(step, thresholds, rule, positive_label=positive_label,
                                        latency_gate=gates.max_latency_p95_ms, size_gate=gates.max_size_mb))
        # a compressed model must have been looked at; the user's own model alone (no steps) changed nothing
        if step in compressed and not [g for g in step["gates"] if g["gate"] != "finite_outputs"]:
            step["gates"].append(_entry("no_gate", None, Harm(None, None), 0.0, FAIL, "fail",
                                        "no gate looked at this model ([gates] defaults = false and no gate set)"))
        step["passed"] = all(g["status"] != FAIL for g in step["gates"])
    by = getattr(select, "by", "fastest")
    require = getattr(select, "require", "selected")
    passing = [s for s in candidates if s["passed"]]
    if tune:  # the steps are alternatives: "every step must pass" means nothing, and the model
        require = "selected"  # itself stays when no passing candidate beats it on the chosen criterion
    chosen, why = _choose(passing, by)
    if tune and chosen is not None and steps[0]["passed"] and by in ("fastest", "smallest"):
        key = _speed if by == "fastest" else (lambda s: (s["size_bytes"], _speed(s)))
        if key(steps[0]) <= key(chosen):
            chosen, why = steps[0], f"no passing candidate is {'faster' if by == 'fastest' else 'smaller'} than the uncompressed model"
    ok = chosen is not None and (require != "all" or all(s["passed"] for s in candidates))
    report["verdict"] = "pass" if ok else "fail"
    report["selected"] = None if chosen is None else {"step": chosen["index"], "name": chosen["name"], "model": chosen["model"], "reason": why}
    report["gates_applied"] = {"thresholds": thresholds, "defaults": bool(gates.defaults), "decision": gates.decision,
                               "on_undecided": gates.on_undecided, "confidence": confidence, "min_group_size": min_group_size,
                               "select": by, "require": require}
    if PREVIOUS_GATE in thresholds and not any(s.get("vs_previous") for s in steps):
        report["gates_applied"]["not_applied"] = {PREVIOUS_GATE: "no last release to compare with (edgefair run --previous DIR)"}
    every = [(s, g) for s in steps for g in s["gates"]]
    report["gate_summary"] = {
        "failed": [_where(s, g) for s, g in every if g["status"] == FAIL],
        "warned": [_where(s, g) for s, g in every if g["status"] == WARN],
        # observed beyond the limit, whatever the status: every report names these on its first screen
        "exceeded": [_where(s, g) for s, g in every if g.get("exceeds") and s["index"] > 0],
        "failed_steps": [s["index"] for s in candidates if not s["passed"]],
    }


# `fastest`: steps whose p50 is within the fastest one's p50 ratio interval, and at most this factor
# above it, are as fast as it; the smallest of them ships
TIE_BAND_MAX = 1.03


def _choose(passing: list[dict[str, Any]], by: str) -> tuple[dict[str, Any] | None, str]:
    if not passing:
        return None, "no step passed every gate"
    if by == "last":
        return passing[-1], "the last step that passed every gate"
    if by == "smallest":
        return min(passing, key=lambda s: (s["size_bytes"], _speed(s))), "the smallest step that passed every gate"
    best = min(passing, key=_speed)
    lat = best.get("latency") or {}
    if lat.get("p50_ms") is None:
        return best, "the smallest step that passed every gate (no latency measured)"
    # steps within the fastest one's measurement noise are as fast: of those, the smallest (then the
    # first), so that the same models give the same choice however the timing noise falls
    ratio, ci = lat.get("ratio_p50_vs_first"), lat.get("ratio_p50_ci")
    band = ci[1] / ratio if ratio and ci and ci[1] > ratio else 1.0
    band = min(band, TIE_BAND_MAX)  # a wide interval (a noisy machine) must not tie a clearly slower step
    tied = [s for s in passing if _speed(s)[0] <= lat["p50_ms"] * band]
    chosen = min(tied, key=lambda s: (s["size_bytes"], s["index"]))
    if len(tied) == 1:
        return chosen, "the fastest step (p50) that passed every gate"
    return chosen, f"the smallest of {len(tied)} passing steps as fast as the fastest (p50, within timing noise)"


def _speed(step: dict[str, Any]) -> tuple[float, int]:
    lat = step.get("latency") or {}
    return (lat.get("p50_ms") or float("inf"), step["size_bytes"])


def _where(step: dict[str, Any], gate: dict[str, Any]) -> dict[str, Any]:
    out = {"step": step["index"], "name": step["name"], "gate": gate["gate"], "group": gate["group"], "value": gate["value"],
           "ci": gate.get("ci"), "threshold": gate["threshold"], "status": gate["status"], "decision": gate.get("decision"),
           "min_detectable": gate.get("min_detectable"), "n": gate.get("n")}
    if gate.get("where"):
        out["where"] = gate["where"]
    return out
