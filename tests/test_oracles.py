"""edgefair's intervals, tests, bootstrap and per-group fields against references that share no
code with edgefair: Tango's score interval re-derived by numerically maximizing the restricted
multinomial likelihood, published PropCIs values, coverage and size by simulation and exact
enumeration, scikit-learn's Brier score and log loss, fairlearn's MetricFrame and parity
differences, and pandas recounts of the paired counts.

Notation: a paired comparison of a baseline and a step on n rows has ``lost`` rows (1 under the
baseline, 0 under the step), ``gained`` rows (the reverse) and ``n - lost - gained`` concordant
rows; edgefair's intervals are for the net loss rate ``(lost - gained) / n``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (MetricFrame, demographic_parity_difference, equalized_odds_difference,
                               false_positive_rate, selection_rate, true_positive_rate)
from scipy import optimize
from scipy.special import softmax
from scipy.stats import binomtest, multinomial, norm
from sklearn import metrics as skm

from edgefair import intervals as iv
from edgefair import stats as st
from edgefair.groups import group_masks

# =============================================================================================
# 1. An independent Tango (1998) interval: restricted MLE by numerical maximization, score
#    statistic from its definition, endpoints by brentq


def restricted_mle_gained(lost: int, gained: int, n: int, d: float) -> float:
    """P(gained) maximizing the multinomial log-likelihood
    ``lost log(q + d) + gained log(q) + rest log(1 - 2q - d)`` under P(lost) - P(gained) = d.

    The log-likelihood is concave in q on the feasible interval [max(0, -d), (1 - d) / 2], so the
    maximum is where its derivative crosses zero (found by brentq) or a boundary where the
    derivative does not change sign. No closed form involved."""
    rest = n - lost - gained
    low, high = max(0.0, -d), (1.0 - d) / 2.0
    if high - low <= 1e-15:
        return low

    def slope(q: float) -> float:
        out = 0.0
        if lost:
            out += lost / (q + d)
        if gained:
            out += gained / q
        if rest:
            out -= 2.0 * rest / (1.0 - 2.0 * q - d)
        return out

    a, b = low + 1e-15 * (1.0 + abs(low)) + 1e-300, high - 1e-15
    if slope(a) <= 0:
        return low
    if slope(b) >= 0:
        return high
    return optimize.brentq(slope, a, b, xtol=1e-16, maxiter=500)


def score_reference(lost: int, gained: int, n: int, d: float) -> float:
    """(lost - gained - n d) / sqrt(Var(lost - gained)), the variance of a multinomial count
    difference, n [(p_lost + p_gained) - (p_lost - p_gained)^2], at the restricted MLE."""
    q = restricted_mle_gained(lost, gained, n, d)
    p_lost, p_gained = q + d, q
    var = n * ((p_lost + p_gained) - (p_lost - p_gained) ** 2)
    num = lost - gained - n * d
    if var <= 0:
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def rao_score(lost: int, gained: int, n: int, d: float) -> float:
    """The textbook Rao score statistic for d with nuisance q: sign(U_d) sqrt(U' I^-1 U) with the
    expected multinomial information I = n sum_j (dp_j/dtheta)(dp_j/dtheta)' / p_j, at the
    restricted MLE (interior cells only)."""
    q = restricted_mle_gained(lost, gained, n, d)
    p = np.array([q + d, q, 1.0 - 2.0 * q - d])  # P(lost), P(gained), P(concordant)
    counts = np.array([lost, gained, n - lost - gained], dtype=np.float64)
    jac = np.array([[1.0, 1.0], [0.0, 1.0], [-1.0, -2.0]])  # d p / d(d, q)
    u = jac.T @ (counts / p)
    info = n * (jac.T / p) @ jac
    return float(np.sign(u[0]) * np.sqrt(u @ np.linalg.solve(info, u)))


def tango_reference(lost: int, gained: int, n: int, confidence: float) -> tuple[float, float]:
    """{d : -z <= score(d) <= z}, the endpoints by brentq on the score (which falls as d rises)."""
    z = norm.ppf(0.5 + confidence / 2.0)
    point, eps = (lost - gained) / n, 1e-13
    f = lambda d, target: score_reference(lost, gained, n, d) - target  # noqa: E731
    low = -1.0 if f(-1.0 + eps, z) <= 0 else optimize.brentq(f, -1.0 + eps, point, args=(z,), xtol=1e-15)
    high = 1.0 if f(1.0 - eps, -z) >= 0 else optimize.brentq(f, point, 1.0 - eps, args=(-z,), xtol=1e-15)
    return low, high


def count_grid():
    """(lost, gained, n) with zeros, all-discordant, one-sided and balanced counts."""
    out = []
    for n in (1, 2, 7, 30, 68, 200, 1000):
        values = sorted({0, 1, 2, n // 10, n // 3, n // 2, n - 1, n} & set(range(n + 1)))
        out += [(lost, gained, n) for lost in values for gained in values if lost + gained <= n]
    return out


GRID = count_grid()

# PropCIs 0.3-0 ``scoreci.mp(b, c, n, conf.level = 0.95)`` outputs (R 4.4.2), as recorded with
# their provenance in dipak-bhujbal/llama-tools tests/fixtures/tango_propcis_oracle.json. PropCIs'
# interval is for (c - b) / n with b = "reference right, candidate wrong", i.e. for -(net loss)
# with lost = b, gained = c. PropCIs stops its bisection at ~1e-7, hence the 1e-6 tolerance.
PROPCIS = [
    (40, 20, 160, -0.21806423366069794, -0.030864588916301727),
    (20, 40, 160, 0.030864521861076355, 0.21806428581476212),
    (0, 0, 100, -0.03699350357055664, 0.036993443965911865),
    (1, 7, 50, 0.011619682312011706, 0.24658078670501707),
    (7, 1, 50, -0.24658083915710446, -0.011619749069213856),
    (0, 5, 25, 0.04016923904418947, 0.3913094520568848),
    (5, 0, 25, -0.39130954742431645, -0.0401693105697632),
    (2, 2, 30, -0.1621800661087036, 0.16218000650405884),
    (50, 0, 50, -1.0, -0.8573047518730164),
    (11, 4, 320, -0.04968377873301506, 0.00209718327969313),
    (4, 11, 320, -0.00209718327969313, 0.049683837033808236),
]


@pytest.mark.parametrize(("b", "c", "n", "lower", "upper"), PROPCIS)
def test_tango_interval_matches_propcis(b, c, n, lower, upper):
    low, high = iv.paired_score_interval(b, c, n, 0.95)
    assert (-high, -low) == pytest.approx((lower, upper), abs=1e-6)
    assert tango_reference(b, c, n, 0.95) == pytest.approx((-upper, -lower), abs=1e-6)  # the reference too


def test_restricted_mle_agrees_with_a_bounded_optimizer():
    """The root of the likelihood's slope is the maximum a generic bounded optimizer finds."""
    for lost, gained, n, d in [(40, 20, 160, 0.1), (7, 1, 50, -0.05), (0, 3, 30, 0.02), (12, 0, 68, 0.3)]:
        rest = n - lost - gained

        def neg_loglik(q):
            cells = [(lost, q + d), (gained, q), (rest, 1.0 - 2.0 * q - d)]
            return -sum(k * math.log(max(p, 1e-300)) for k, p in cells if k)

        found = optimize.minimize_scalar(neg_loglik, bounds=(max(0.0, -d), (1.0 - d) / 2.0), method="bounded",
                                         options={"xatol": 1e-12}).x
        assert restricted_mle_gained(lost, gained, n, d) == pytest.approx(found, abs=1e-6)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_tango_interval_matches_numerical_inversion_on_a_grid(confidence):
    lost, gained, n = (np.array(v, dtype=float) for v in zip(*GRID))
    low, high = iv.paired_score_interval(lost, gained, n, confidence)  # one vectorised call
    expected = np.array([tango_reference(*row, confidence) for row in GRID])
    np.testing.assert_allclose(low, expected[:, 0], atol=1e-9, rtol=0)
    np.testing.assert_allclose(high, expected[:, 1], atol=1e-9, rtol=0)
    for (l_, g_, n_), lo, hi in zip(GRID, low, high):  # and scalar calls give the same floats
        assert iv.paired_score_interval(l_, g_, n_, confidence) == (lo, hi)


@pytest.mark.parametrize("n", [1, 10, 68, 100, 1000, 10**6])
@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.999])
def test_zero_discordant_rows_give_the_closed_form(n, confidence):
    z = norm.ppf(0.5 + confidence / 2)
    half = z * z / (n + z * z)
    assert iv.paired_score_interval(0, 0, n, confidence) == pytest.approx((-half, half), abs=1e-12)


def test_tango_statistic_is_the_rao_score_statistic():
    """Away from the boundary Tango's statistic equals the generic score statistic (efficient
    information from the multinomial's expected information), so the formula is the score test."""
    for lost, gained, n in [(40, 20, 160), (7, 1, 50), (2, 9, 30), (100, 3, 1000), (5, 5, 68)]:
        for d in (-0.2, -0.03, 0.0, 0.01, 0.1, 0.25):
            expected = rao_score(lost, gained, n, d)
            assert float(iv.paired_score(lost, gained, n, d)) == pytest.approx(expected, rel=1e-9, abs=1e-12)
            assert score_reference(lost, gained, n, d) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_paired_p_above_is_the_upper_tail_of_the_reference_score():
    margins = (-0.1, 0.0, 0.01, 0.05, 0.2)
    rows = [(l_, g_, n_, m) for (l_, g_, n_) in GRID[::3] for m in margins]
    lost, gained, n, margin = (np.array(v, dtype=float) for v in zip(*rows))
    got = iv.paired_p_above(lost, gained, n, margin)
    expected = [norm.sf(score_reference(*row)) for row in rows]
    np.testing.assert_allclose(got, expected, atol=1e-12, rtol=1e-9)
    assert iv.paired_p_above(3, 1, 0, 0.0) == 1.0


@pytest.mark.parametrize("n", [1, 3, 20, 68, 200])
@pytest.mark.parametrize("margin", [0.0, 0.02, 0.1])
def test_smallest_failing_loss_by_brute_force(n, margin):
    alpha = 0.05
    failing = [k for k in range(n + 1) if norm.sf(score_reference(k, 0, n, margin)) < alpha]
    got = iv.smallest_failing_loss(n, margin, alpha)
    if failing:
        assert got == pytest.approx(min(failing) / n, abs=1e-12)
    else:
        assert math.isnan(got)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (0, 68), (7, 68), (250, 1000)])
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_proportion_ci_and_p_value_match_scipy(k, n, confidence):
    expected = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    assert iv.proportion_ci(k, n, confidence) == pytest.approx((expected.low, expected.high), abs=1e-10)
    for limit in (0.0, 0.01, 0.1, 0.5):
        p = binomtest(k, n, limit, alternative="greater").pvalue if 0 < limit else float(k == 0)
        assert iv.proportion_p_above(k, n, limit) == pytest.approx(p, abs=1e-12)
    assert iv.proportion_ci(0, 0, confidence) == (0.0, 1.0) and iv.proportion_p_above(0, 0, 0.1) == 1.0


# =============================================================================================
# 2. Coverage of Tango's interval and size of the one-sided test


def paired_draws(n, p_lost, p_gained, draws, seed):
    x = np.random.default_rng(seed).multinomial(n, [p_lost, p_gained, 1.0 - p_lost - p_gained], size=draws)
    return x[:, 0].astype(float), x[:, 1].astype(float)


SETTINGS = [(0.05, 0.02), (0.10, 0.10), (0.15, 0.05), (0.01, 0.01), (0.30, 0.10), (0.02, 0.0)]


@pytest.mark.parametrize("n", [68, 200, 1000])
def test_tango_interval_covers_by_simulation(n):
    for i, (p_lost, p_gained) in enumerate(SETTINGS):
        lost, gained = paired_draws(n, p_lost, p_gained, 4000, seed=100 * n + i)
        low, high = iv.paired_score_interval(lost, gained, n, 0.95)
        d = p_lost - p_gained
        coverage = np.mean((low <= d) & (d <= high))
        assert coverage >= 0.93, (n, p_lost, p_gained, coverage)
        if n * (p_lost + p_gained) >= 10:  # enough discordant rows: not far above nominal either
            assert coverage <= 0.97, (n, p_lost, p_gained, coverage)


def exact_paired(n, p_lost, p_gained):
    """Every (lost, gained) with lost + gained <= n and its multinomial probability."""
    lost, gained = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = lost + gained <= n
    lost, gained = lost[keep], gained[keep]
    pmf = multinomial.pmf(np.stack([lost, gained, n - lost - gained], axis=1), n, [p_lost, p_gained, 1 - p_lost - p_gained])
    return lost.astype(float), gained.astype(float), pmf


@pytest.mark.parametrize("n", [68, 200])
def test_tango_interval_exact_coverage(n):
    for p_lost, p_gained in SETTINGS:
        lost, gained, pmf = exact_paired(n, p_lost, p_gained)
        assert pmf.sum() == pytest.approx(1.0)
        low, high = iv.paired_score_interval(lost, gained, n, 0.95)
        d = p_lost - p_gained
        assert pmf[(low <= d) & (d <= high)].sum() >= 0.93, (n, p_lost, p_gained)


# The one-sided test "reject when paired_p_above(margin = true d) < 0.05" is anti-conservative on
# the "harm" side with few discordant rows (skewness of the discordant counts and lattice effects;
# no skewness correction). Exact sizes by enumeration: n = 68: 0.075 at (0.05, 0.02), 0.074 at
# (0.10, 0); n = 200: 0.081 at (0.03, 0), 0.073 at (0.035, 0.005); n = 1000: 0.068 at (0.005, 0),
# 0.062 at (0.03, 0). Hence the tolerances, which still catch a test of the wrong tail or margin.
SIZE_SETTINGS = SETTINGS + [(0.03, 0.0), (0.10, 0.0), (0.005, 0.0)]


@pytest.mark.parametrize("n", [68, 200])
def test_one_sided_test_exact_size_at_the_true_difference(n):
    for p_lost, p_gained in SIZE_SETTINGS:
        lost, gained, pmf = exact_paired(n, p_lost, p_gained)
        size = pmf[iv.paired_p_above(lost, gained, n, p_lost - p_gained) < 0.05].sum()
        assert size <= 0.05 + 0.035, (n, p_lost, p_gained, size)


def test_one_sided_test_rejects_at_most_about_alpha_by_simulation():
    n = 1000
    for i, (p_lost, p_gained) in enumerate(SIZE_SETTINGS):
        lost, gained = paired_draws(n, p_lost, p_gained, 4000, seed=7 + i)
        rate = np.mean(iv.paired_p_above(lost, gained, n, p_lost - p_gained) < 0.05)
        assert rate <= 0.05 + 0.02, (n, p_lost, p_gained, rate)  # exact worst 0.068; Monte Carlo sd ~0.004


@pytest.mark.xfail(strict=True, reason="Tango's one-sided score test has exact size 0.075 (not 0.05) at n = 68, "
                                       "P(lost) = 0.05, P(gained) = 0.02: no skewness correction (cf. ratesci)")
def test_one_sided_test_exact_size_at_small_n():
    lost, gained, pmf = exact_paired(68, 0.05, 0.02)
    size = pmf[iv.paired_p_above(lost, gained, 68, 0.03) < 0.05].sum()
    assert size <= 0.06


# =============================================================================================
# 3. Coverage of evaluate_step's bootstrap intervals over repeated evaluation sets


POPULATION_N, EVAL_N, DRAWS, N_BOOT = 200_000, 600, 200, 200


def two_columns(logit):
    return np.stack([1.0 / (1.0 + np.exp(logit)), 1.0 / (1.0 + np.exp(-logit))], axis=1)


def direct_ece(probs, y, n_bins=15):
    """Top-label ECE over the uniform bins (e_i, e_i+1], written out (no edgefair)."""
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(float)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    gap = np.bincount(idx, weights=conf - correct, minlength=n_bins)
    return float(np.abs(gap).sum() / len(y))


@pytest.fixture(scope="module")
def coverage_run():
    """A finite population of two groups in which both models are miscalibrated in every group
    (the step overconfident and noisier on group p), group q is more accurate, and the TPR gap is
    far larger than the FPR gap; DRAWS evaluation sets of EVAL_N rows drawn from it with
    replacement, each evaluated with N_BOOT replicates."""
    rng = np.random.default_rng(2024)
    a = np.where(rng.random(POPULATION_N) < 0.4, "p", "q")
    y = (rng.random(POPULATION_N) < 0.5).astype(int)
    z = (2 * y - 1) * np.where(a == "q", 1.5, 0.8) + rng.normal(0, 1, POPULATION_N) - 0.6 * (a == "p")
    base = two_columns(0.8 * z)
    step = two_columns(1.7 * (z + rng.normal(0, np.where(a == "p", 0.9, 0.3))))
    masks = {"A=p": a == "p", "A=q": a == "q"}

    truth = {}
    for key, m in [("overall", np.ones(POPULATION_N, dtype=bool)), *masks.items()]:
        truth[f"ece_delta {key}"] = direct_ece(step[m], y[m]) - direct_ece(base[m], y[m])
        accuracy = lambda probs: skm.accuracy_score(y[m], probs[m].argmax(1))  # noqa: E731
        truth[f"accuracy_delta {key}"] = accuracy(step) - accuracy(base)
    def gaps(probs):  # |p - q| differences of accuracy, TPR, FPR and selection rate, by hand
        hit, sel = probs.argmax(1) == y, probs.argmax(1) == 1
        rate = lambda v, rows: [v[rows & (a == g)].mean() for g in "pq"]  # noqa: E731
        acc, tpr, fpr, dp = rate(hit, y >= 0), rate(sel, y == 1), rate(sel, y == 0), rate(sel, y >= 0)
        return {"acc": abs(acc[0] - acc[1]), "eo": max(abs(tpr[0] - tpr[1]), abs(fpr[0] - fpr[1])), "dp": abs(dp[0] - dp[1])}

    now, before = gaps(step), gaps(base)
    for name, short in (("accuracy_gap_growth", "acc"), ("equalized_odds_growth", "eo"), ("demographic_parity_growth", "dp")):
        truth[name] = now[short] - before[short]

    records = {name: [] for name in truth}
    draw = np.random.default_rng(7)
    for r in range(DRAWS):
        idx = draw.integers(0, POPULATION_N, EVAL_N)
        res = st.evaluate_step(masks={k: m[idx] for k, m in masks.items()}, probs=step[idx], outputs=step[idx],
                               y_true=y[idx], base_probs=base[idx], base_outputs=base[idx],
                               config=st.StatsConfig(n_boot=N_BOOT, seed=r, min_group_size=50))
        for name in truth:
            if " " in name:
                field, key = name.split(" ")
                g = res["overall"] if key == "overall" else res["groups"][key]
                records[name].append((g[field], *g[f"{field}_ci"]))
            else:
                d = res["disparity"]["A"]
                records[name].append((d[name], *d[f"{name}_ci"]))
    summary = {}
    for name, t in truth.items():
        x = np.array(records[name], dtype=float)
        summary[name] = {"truth": t, "coverage": float(np.mean((x[:, 1] <= t) & (t <= x[:, 2]))),
                         "width_ratio": float(np.mean(x[:, 2] - x[:, 1]) / (2 * norm.ppf(0.975) * x[:, 0].std())),
                         "bias": float(x[:, 0].mean() - t)}
    return summary


@pytest.mark.parametrize("name", ["ece_delta A=p", "ece_delta A=q", "accuracy_gap_growth", "equalized_odds_growth",
                                  "demographic_parity_growth", "accuracy_delta overall", "accuracy_delta A=p",
                                  "accuracy_delta A=q"])
def test_bootstrap_intervals_cover_the_population_value(coverage_run, name):
    s = coverage_run[name]
    assert s["coverage"] >= 0.85, s
    # and not by being wide: mean width close to +-1.96 sd of the estimate over the draws (0.92 to
    # 1.19 here; a 99% interval would be 1.31 times wider, [-1, 1] ~20 times)
    assert 0.75 <= s["width_ratio"] <= 1.3, s


@pytest.mark.xfail(strict=True, reason="binned ECE is biased upward for a nearly calibrated model (the step's overall "
                                       "ECE is 0.02): ece_delta is biased by +0.017 (sd 0.018) and its percentile "
                                       "interval covers the population value in 78% of the draws")
def test_ece_delta_interval_covers_when_the_step_is_nearly_calibrated(coverage_run):
    assert coverage_run["ece_delta overall"]["coverage"] >= 0.85


# =============================================================================================
# 4-6. Per-group fields against scikit-learn, pandas and fairlearn


def labelled_case(seed, n, k, flip=0.3):
    rng = np.random.default_rng(seed)
    g = rng.choice(["a", "b", "c"], n, p=[0.3, 0.3, 0.4])
    h = rng.choice(["u", "v"], n, p=[0.45, 0.55])
    y = rng.integers(0, k, n)
    base_logits = rng.normal(0, 1.5, (n, k))
    base_logits[np.arange(n), y] += 1.0 + 0.6 * (g == "c")
    step_logits = base_logits + rng.normal(0, 1.5 * flip, (n, k)) + 0.4 * (h == "u")[:, None] * np.eye(k)[k - 1]
    return dict(g=g, h=h, y=y, base=softmax(base_logits, axis=1), step=softmax(step_logits, axis=1))


def evaluate(case, *, positive_label=1, min_group_size=1, n_boot=0):
    masks = group_masks({"g": case["g"], "h": case["h"]}, intersections=True)
    result = st.evaluate_step(masks=masks, probs=case["step"], outputs=case["step"], y_true=case["y"],
                              base_probs=case["base"], base_outputs=case["base"],
                              config=st.StatsConfig(n_boot=n_boot, min_group_size=min_group_size, positive_label=positive_label))
    return masks, result


def all_groups(masks, result):
    n = len(next(iter(masks.values())))
    yield "overall", np.ones(n, dtype=bool), result["overall"]
    for key, mask in masks.items():
        yield key, mask, result["groups"][key]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_group_brier_and_nll_match_sklearn(k):
    case = labelled_case(seed=k, n=900, k=k)
    masks, result = evaluate(case)
    labels = list(range(k))
    for key, m, g in all_groups(masks, result):
        y = case["y"][m]
        brier, nll = {}, {}
        for name, probs in (("step", case["step"]), ("base", case["base"])):
            p = probs[m]
            if k == 2:  # scikit-learn's binary Brier score: mean squared error of P(class 1)
                brier[name] = skm.brier_score_loss(y, p[:, 1], pos_label=1)
                assert brier[name] == pytest.approx(((p - np.eye(2)[y]) ** 2).sum(axis=1).mean() / 2)
            else:  # multiclass: mean over rows of the summed squared one-hot error, not halved
                brier[name] = ((p - np.eye(k)[y]) ** 2).sum(axis=1).mean()
                assert skm.brier_score_loss(y, p, labels=labels) == pytest.approx(brier[name])
            nll[name] = skm.log_loss(y, p, labels=labels)
        assert g["brier"] == pytest.approx(brier["step"], rel=1e-12), key
        assert g["nll"] == pytest.approx(nll["step"], rel=1e-12), key
        assert g["brier_delta"] == pytest.approx(brier["step"] - brier["base"], abs=1e-12), key
        assert g["nll_delta"] == pytest.approx(nll["step"] - nll["base"], abs=1e-12), key


def recount(y, base_pred, step_pred, c):
    """The six paired counts of class c, straight from their definitions, with pandas."""
    df = pd.DataFrame({"pos": y == c, "was": base_pred == c, "now": step_pred == c})
    pos, neg = df[df.pos], df[~df.pos]
    return {"class_n": len(pos), "recall_lost": int((pos.was & ~pos.now).sum()),
            "recall_gained": int((~pos.was & pos.now).sum()),
            "other_n": len(neg), "fp_added": int((~neg.was & neg.now).sum()), "fp_removed": int((neg.was & ~neg.now).sum())}


def fairlearn_rates(case, scope, probs, c, rows):
    cols = scope.split("&")
    frame = MetricFrame(metrics={"tpr": true_positive_rate, "fpr": false_positive_rate, "sel": selection_rate},
                        y_true=(case["y"] == c)[rows], y_pred=(probs.argmax(1) == c)[rows],
                        sensitive_features=pd.DataFrame({col: case[col][rows] for col in cols}))
    return frame


def group_key(scope, index):
    values = index if isinstance(index, tuple) else (index,)
    return "&".join(f"{col}={v}" for col, v in zip(scope.split("&"), values))


@pytest.mark.parametrize("k", [2, 3])
def test_paired_counts_match_pandas_and_fairlearn_rate_changes(k):
    case = labelled_case(seed=10 + k, n=1200, k=k, flip=0.5)
    masks, result = evaluate(case)
    base_pred, step_pred = case["base"].argmax(1), case["step"].argmax(1)
    for key, m, g in all_groups(masks, result):
        pc = g["paired_counts"]
        for c in range(k):
            expected = recount(case["y"][m], base_pred[m], step_pred[m], c)
            assert {f: pc[f][c] for f in expected} == expected, (key, c)
            assert pc["class_n"][c] + pc["other_n"][c] == g["n"]
    everything = np.ones(len(case["y"]), dtype=bool)
    checked = 0
    for scope in ("g", "h", "g&h"):
        for c in range(k):
            now, was = (fairlearn_rates(case, scope, p, c, everything) for p in (case["step"], case["base"]))
            targets = [(result["groups"][group_key(scope, i)], now.by_group.loc[i] - was.by_group.loc[i])
                       for i in now.by_group.index]
            for g, change in targets + [(result["overall"], now.overall - was.overall)]:
                pc = {f: v[c] for f, v in g["paired_counts"].items()}
                assert (pc["recall_gained"] - pc["recall_lost"]) / pc["class_n"] == pytest.approx(change["tpr"], abs=1e-12)
                assert (pc["fp_added"] - pc["fp_removed"]) / pc["other_n"] == pytest.approx(change["fpr"], abs=1e-12)
                added, removed = pc["recall_gained"] + pc["fp_added"], pc["recall_lost"] + pc["fp_removed"]
                assert (added - removed) / g["n"] == pytest.approx(change["sel"], abs=1e-12)
                checked += 1
    assert checked == k * (3 + 2 + 6 + 3)  # every group of every scope, and overall per scope


@pytest.mark.parametrize(("k", "positive_label", "min_group_size"), [(2, 1, 1), (2, 0, 1), (3, 2, 1), (3, 1, 1), (2, 1, 220)])
def test_parity_growth_matches_fairlearn(k, positive_label, min_group_size):
    case = labelled_case(seed=20 + k, n=1500, k=k, flip=0.5)
    masks, result = evaluate(case, positive_label=positive_label, min_group_size=min_group_size)
    y_pos = case["y"] == positive_label
    excluded_any = False
    for scope in ("g", "h", "g&h"):
        d = result["disparity"][scope]
        excluded_any |= bool(d["excluded"])
        rows = np.logical_or.reduce([masks[key] for key in d["groups"]])  # the ok groups' rows only
        sf = pd.DataFrame({col: case[col][rows] for col in scope.split("&")})
        values = {}
        for name, probs in (("step", case["step"]), ("base", case["base"])):
            pred_pos = probs.argmax(1)[rows] == positive_label
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values[name] = (demographic_parity_difference(y_pos[rows], pred_pos, sensitive_features=sf),
                                equalized_odds_difference(y_pos[rows], pred_pos, sensitive_features=sf))
        assert d["base_demographic_parity_difference"] == pytest.approx(values["base"][0], abs=1e-12)
        assert d["base_equalized_odds_difference"] == pytest.approx(values["base"][1], abs=1e-12)
        assert d["demographic_parity_difference"] == pytest.approx(values["step"][0], abs=1e-12)
        assert d["equalized_odds_difference"] == pytest.approx(values["step"][1], abs=1e-12)
        assert d["demographic_parity_growth"] == pytest.approx(values["step"][0] - values["base"][0], abs=1e-12)
        assert d["equalized_odds_growth"] == pytest.approx(values["step"][1] - values["base"][1], abs=1e-12)
    assert excluded_any == (min_group_size > 1)


def test_cosine_sd_keeps_precision_for_near_identical_outputs():
    rng = np.random.default_rng(0)
    n = 2000
    base = rng.normal(0, 3, (n, 8))
    for eps in (1e-4, 1e-5):  # relative output errors of fp16 / fine int8 size
        step = base + rng.normal(0, eps, base.shape) * np.abs(base)
        g = st.evaluate_step(masks={"a=x": np.ones(n, dtype=bool)}, probs=softmax(step, axis=1), outputs=step,
                             y_true=None, base_probs=softmax(base, axis=1), base_outputs=base,
                             config=st.StatsConfig(n_boot=0))["overall"]
        cos = (step * base).sum(1) / (np.linalg.norm(step, axis=1) * np.linalg.norm(base, axis=1))
        assert g["cosine_sd"] == pytest.approx(np.std(cos, ddof=1), rel=0.01), eps


def test_cosine_sd_and_ece_delta_se_by_hand():
    """cosine_sd: sample standard deviation (ddof 1) of the row cosines; ece_delta_se: the same
    order as the spread of a slow bootstrap of the ECE change."""
    case = labelled_case(seed=3, n=600, k=3, flip=0.6)
    masks, result = evaluate(case, n_boot=300)
    a, b = case["step"], case["base"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    for key, m, g in all_groups(masks, result):
        assert g["cosine_sd"] == pytest.approx(np.std(cos[m], ddof=1), rel=1e-9, abs=1e-12), key
    rng = np.random.default_rng(0)
    m = masks["g=c"]
    y, p, q = case["y"][m], a[m], b[m]
    reps = []
    for _ in range(300):
        i = rng.integers(0, len(y), len(y))
        reps.append(direct_ece(p[i], y[i]) - direct_ece(q[i], y[i]))
    assert result["groups"]["g=c"]["ece_delta_se"] == pytest.approx(np.std(reps, ddof=1), rel=0.25)
