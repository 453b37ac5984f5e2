"""Analytic intervals and tests for counts: what the gates decide on.

Every group harm that is a change of a rate on the same rows (accuracy, a class's recall or false
positive rate, the selection rate) is a *paired* difference of two binary outcomes, and all the
information about it sits in two counts: ``lost`` (1 under the baseline, 0 under the step) and
``gained`` (the reverse), out of ``n`` rows. Tango's score interval (Tango 1998, "Equivalence test
and confidence interval for the difference in proportions for the paired-sample design", Stat Med
17:891-908) inverts the score test of ``H0: (lost - gained) / n = d`` with the nuisance parameter
at its restricted maximum-likelihood value. Unlike a percentile bootstrap (``[0, 0]`` for a group
without discordant rows) or Newcombe's hybrid interval (which collapses to ``[0, 0]`` at 50%
accuracy and is ``z^2 |1 - 2p| / n`` wide away from it), it behaves at zero counts: with no
discordant row out of ``n`` it is ``+-z^2 / (n + z^2)``, the rule of three's order of magnitude.
The same score statistic gives the one-sided p-value of "harm > margin" that the gates test.

Flip rates are single proportions: Clopper-Pearson's exact interval and binomial tail.
All functions take numpy arrays (or scalars) and work elementwise.
"""

from __future__ import annotations

import numpy as np
from scipy.special import betaincinv, ndtr, ndtri

BISECTION_STEPS = 45  # halves (-1, 1) to below 1e-13


def z_value(confidence: float) -> float:
    """Two-sided normal quantile: 1.96 for 0.95."""
    return float(ndtri(0.5 + confidence / 2.0))


def proportion_ci(k, n, confidence: float):
    """Clopper-Pearson (exact) interval for k successes out of n, from beta quantiles (the same
    interval as ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``). (0, 1) for n = 0."""
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    alpha = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k <= 0, 0.0, betaincinv(np.maximum(k, 1e-300), n - k + 1, alpha))
        high = np.where(k >= n, 1.0, betaincinv(k + 1, np.maximum(n - k, 1e-300), 1.0 - alpha))
    low, high = np.where(n > 0, low, 0.0), np.where(n > 0, high, 1.0)
    return (float(low), float(high)) if low.ndim == 0 else (low, high)


def proportion_p_above(k, n, limit):
    """One-sided exact p-value of ``H0: rate <= limit`` against ``rate > limit`` for k of n:
    ``P[Binomial(n, limit) >= k]``; 1 for n = 0."""
    from scipy.stats import binom

    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    p = np.where(n > 0, binom.sf(k - 1, n, np.clip(limit, 0.0, 1.0)), 1.0)
    return float(p) if p.ndim == 0 else p


def _restricted_nuisance(lost, gained, n, d):
    """Restricted MLE of P(gained) under (P(lost) - P(gained)) = d (Tango's quadratic)."""
    a = 2.0 * n
    b = -(lost + gained) + (2.0 * n - lost + gained) * d
    c = -gained * d * (1.0 - d)
    disc = np.maximum(b * b - 4.0 * a * c, 0.0)
    return np.maximum((np.sqrt(disc) - b) / (2.0 * a), 0.0)


def paired_score(lost, gained, n, d):
    """Tango's score statistic for ``H0: (P(lost) - P(gained)) = d``: large when the observed net
    loss exceeds d. 0 where it is 0/0 (no discordant row and d = 0)."""
    lost, gained, n, d = (np.asarray(v, dtype=np.float64) for v in (lost, gained, n, d))
    q = _restricted_nuisance(lost, gained, n, d)
    var = n * (2.0 * q + d * (1.0 - d))
    num = lost - gained - n * d
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(var > 0, num / np.sqrt(np.where(var > 0, var, 1.0)), np.sign(num) * np.inf)
    return np.where((var <= 0) & (num == 0), 0.0, t)


def paired_score_interval(lost, gained, n, confidence: float):
    """Tango's score interval for the net loss rate ``(lost - gained) / n``: arrays (low, high)
    (floats for scalar input). ``[-1, 1]`` for n = 0."""
    lost, gained, n = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (lost, gained, n)))
    z = z_value(confidence)
    safe_n = np.where(n > 0, n, 1.0)
    bounds = []
    for target in (z, -z):  # the score falls as d rises: T(low) = z, T(high) = -z
        lo, hi = np.full(n.shape, -1.0), np.full(n.shape, 1.0)
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2.0
            above = paired_score(lost, gained, safe_n, mid) > target
            lo, hi = np.where(above, mid, lo), np.where(above, hi, mid)
        bounds.append((lo + hi) / 2.0)
    low = np.where(n > 0, np.clip(bounds[0], -1.0, 1.0), -1.0)
    high = np.where(n > 0, np.clip(bounds[1], -1.0, 1.0), 1.0)
    return (float(low), float(high)) if low.ndim == 0 else (low, high)


def paired_p_above(lost, gained, n, margin):
    """One-sided p-value of ``H0: net loss rate <= margin`` against ``> margin`` (Tango's score
    test at the margin, as in non-inferiority testing); 1 for n = 0."""
    lost, gained, n, margin = (np.asarray(v, dtype=np.float64) for v in (lost, gained, n, margin))
    safe_n = np.where(n > 0, n, 1.0)
    p = np.where(n > 0, ndtr(-paired_score(lost, gained, safe_n, np.clip(margin, -0.999999, 0.999999))), 1.0)
    return float(p) if p.ndim == 0 else p


def smallest_failing_loss(n, margin, alpha: float):
    """The smallest net loss rate k/n (k rows lost, none gained) whose one-sided p-value against
    ``margin`` is below ``alpha``: what a gate can see at this n. NaN where even k = n is not enough."""
    n = np.asarray(n, dtype=np.float64)
    lo, hi = np.zeros(n.shape), n.copy()  # p(k = hi) < alpha is checked below; search the smallest k
    for _ in range(64):
        mid = np.floor((lo + hi) / 2.0)
        ok = paired_p_above(mid, 0.0, n, margin) < alpha
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid + 1)
        if np.all(lo >= hi):
            break
    reachable = (n > 0) & (paired_p_above(n, 0.0, n, margin) < alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(reachable, hi / np.where(n > 0, n, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def widen_intervals(g: dict, confidence: float) -> dict:
    """Make one group's `accuracy_delta_ci` and `flip_rate_ci` at least as wide as the analytic
    intervals (Tango's for the paired accuracy change, Clopper-Pearson's for flips), keeping the
    bootstrap's own as `*_ci_bootstrap`. Pure: returns a new dict.

    The percentile bootstrap of a group with no flipped predictions is [0, 0], a confident-looking
    number that the 70 rows behind it cannot support; the analytic intervals are not.
    """
    g = dict(g)
    n = g.get("n") or 0
    if g.get("accuracy_delta_ci") and g.get("lost_correct") is not None and n:
        low, high = paired_score_interval(g["lost_correct"], g["gained_correct"], n, confidence)
        _widen(g, "accuracy_delta_ci", (-high, -low))  # net loss -> accuracy change
    if g.get("flip_rate_ci") and g.get("flip_rate") is not None and n:
        _widen(g, "flip_rate_ci", proportion_ci(round(g["flip_rate"] * n), n, confidence))
    return g


def _widen(g: dict, field: str, analytic: tuple[float, float]) -> None:
    raw = g.get(f"{field}_bootstrap", g[field])  # widening twice starts from the bootstrap again
    g[f"{field}_bootstrap"] = raw
    g[field] = [min(raw[0], analytic[0]), max(raw[1], analytic[1])]
