"""Analytic confidence intervals for counts, used beside the bootstrap where it breaks down.

A percentile bootstrap of a group with no discordant pairs returns [0, 0]: it cannot see
uncertainty that the sample does not show. These score/exact intervals do.
"""

from __future__ import annotations

import math

from scipy.special import betaincinv, ndtri


def proportion_ci(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval for k successes out of n, from beta quantiles (the same
    interval as ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``, without its root search)."""
    if n == 0:
        return (0.0, 1.0)
    alpha = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, alpha))
    high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1.0 - alpha))
    return (low, high)


def _wilson(k: int, n: int, z: float) -> tuple[float, float]:
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return centre - half, centre + half


def paired_difference_ci(both: int, lost: int, gained: int, neither: int, confidence: float) -> tuple[float, float]:
    """Newcombe (1998, method 10) score interval for p_step - p_base of paired binary outcomes.

    both: correct under both models; lost: correct at baseline only; gained: correct under the
    step only; neither: wrong under both.
    """
    n = both + lost + gained + neither
    if n == 0:
        return (-1.0, 1.0)
    z = float(ndtri(0.5 + confidence / 2))
    p1, p2 = (both + lost) / n, (both + gained) / n  # baseline, step
    l1, u1 = _wilson(both + lost, n, z)
    l2, u2 = _wilson(both + gained, n, z)
    margins = [(both + lost), (gained + neither), (both + gained), (lost + neither)]
    phi = 0.0
    if all(margins):
        phi = (both * neither - lost * gained) / math.sqrt(math.prod(margins))
    d = p2 - p1
    lo = d - math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    hi = d + math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return (max(-1.0, lo), min(1.0, hi))


def widen_intervals(g: dict, confidence: float) -> dict:
    """Make one group's `accuracy_delta_ci` and `flip_rate_ci` at least as wide as the analytic
    intervals, keeping the bootstrap's own as `*_ci_bootstrap`. Pure: returns a new dict.

    The percentile bootstrap of a group with no flipped predictions is [0, 0], a confident-looking
    number that the 70 rows behind it cannot support; Newcombe's and Clopper-Pearson's are not.
    """
    g = dict(g)
    n = g.get("n") or 0
    if g.get("accuracy_delta_ci") and g.get("lost_correct") is not None and n:
        lost, gained = g["lost_correct"], g["gained_correct"]
        both = round(g["accuracy"] * n) - gained
        _widen(g, "accuracy_delta_ci", paired_difference_ci(both, lost, gained, n - both - lost - gained, confidence))
    if g.get("flip_rate_ci") and g.get("flip_rate") is not None and n:
        _widen(g, "flip_rate_ci", proportion_ci(round(g["flip_rate"] * n), n, confidence))
    return g


def _widen(g: dict, field: str, analytic: tuple[float, float]) -> None:
    raw = g.get(f"{field}_bootstrap", g[field])  # widening twice starts from the bootstrap again
    g[f"{field}_bootstrap"] = raw
    g[field] = [min(raw[0], analytic[0]), max(raw[1], analytic[1])]
