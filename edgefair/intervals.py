"""Analytic confidence intervals for counts, used beside the bootstrap where it breaks down.

A percentile bootstrap of a group with no discordant pairs returns [0, 0]: it cannot see
uncertainty that the sample does not show. These score/exact intervals do.
"""

from __future__ import annotations

import math

from scipy.stats import binomtest, norm


def proportion_ci(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval for k successes out of n."""
    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return (float(ci.low), float(ci.high))


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
    z = float(norm.ppf(0.5 + confidence / 2))
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
