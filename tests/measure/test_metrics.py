import itertools
import json
import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats

from mist_debias.measure.metrics import (
    Distribution,
    cleam_correct,
    clopper_pearson_interval,
    confidence_sequence,
    deviation_ratio,
    kl_divergence,
    marginals,
    paired_cell_test,
    project_to_simplex,
    simultaneous_confidence_sequence,
    simultaneous_intervals,
    wilson_interval,
)


def test_wilson_matches_score_test_inversion():
    # The Wilson interval is {p : |p̂ − p| ≤ z sqrt(p(1 − p)/n)}: its ends solve the quadratic exactly.
    k, n, alpha = 13, 40, 0.05
    z = stats.norm.ppf(1 - alpha / 2)
    lower, upper = wilson_interval(k, n, alpha)
    for end in (lower, upper):
        assert abs(k / n - end) == pytest.approx(z * math.sqrt(end * (1 - end) / n), rel=1e-10)
    assert lower < k / n < upper


def test_wilson_known_values_and_empty_sample():
    lower, upper = wilson_interval(np.array([50, 5]), 100)
    np.testing.assert_allclose(lower, [0.403832, 0.021544], atol=1e-6)
    np.testing.assert_allclose(upper, [0.596168, 0.111750], atol=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    ("k", "n", "wilson", "exact"),
    [  # Newcombe (1998), Statistics in Medicine 17:857, Table II: score (Wilson) and exact (Clopper–Pearson)
        (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
        (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
        (0, 20, (0.0, 0.1611), (0.0, 0.1684)),
        (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
    ],
)
def test_binomial_intervals_match_newcombes_table(k, n, wilson, exact):
    np.testing.assert_allclose(np.ravel(wilson_interval(k, n)), wilson, atol=5e-5)
    np.testing.assert_allclose(np.ravel(clopper_pearson_interval(k, n)), exact, atol=5e-5)


def test_paired_cell_test_hand_computed_p_values():
    # cell 0: 1 pair moved into it, 7 out of it: p = 2 · P(Bin(8, ½) ≤ 1) = 2 · 9/256
    before = np.array([0] * 7 + [1] + [0] * 4 + [1] * 4)
    after = np.array([1] * 7 + [0] + [0] * 4 + [1] * 4)
    p, adjusted = paired_cell_test(before, after, 2)
    assert p == [pytest.approx(18 / 256), pytest.approx(18 / 256)] and adjusted == pytest.approx(18 / 256)
    # three cells: cell 2 never moves (p = 1); Bonferroni over K = 3 gives 3 · 18/256
    p3, adjusted3 = paired_cell_test(before, after, 3)
    assert p3[2] == 1.0 and adjusted3 == pytest.approx(3 * 18 / 256)
    # 0 into, 5 out of cell 0: p = 2 / 32; a Bonferroni factor never lifts a p-value above 1
    p5, adjusted5 = paired_cell_test(np.zeros(5, int), np.array([1, 2, 1, 2, 1]), 3)
    assert p5[0] == pytest.approx(2 / 32) and adjusted5 == pytest.approx(6 / 32)
    assert paired_cell_test(np.array([0, 1]), np.array([1, 0]), 3)[1] == 1.0


def test_clopper_pearson_edges_and_tail_probabilities():
    n, alpha = 30, 0.05
    lower, upper = clopper_pearson_interval(np.array([0, 7, 30]), n, alpha)
    assert lower[0] == 0.0 and upper[2] == 1.0
    assert upper[0] == pytest.approx(1 - (alpha / 2) ** (1 / n))
    # Exact tails: P(X ≥ 7 | p = lower) = α/2 and P(X ≤ 7 | p = upper) = α/2.
    assert stats.binom.sf(6, n, lower[1]) == pytest.approx(alpha / 2, rel=1e-8)
    assert stats.binom.cdf(7, n, upper[1]) == pytest.approx(alpha / 2, rel=1e-8)


def test_simultaneous_wilson_is_goodman():
    counts = np.array([40, 25, 20, 10, 5])
    n, alpha = counts.sum(), 0.05
    a = stats.chi2.ppf(1 - alpha / len(counts), 1)
    root = np.sqrt(a * (a + 4 * counts * (n - counts) / n))
    goodman_lower = (a + 2 * counts - root) / (2 * (n + a))
    goodman_upper = (a + 2 * counts + root) / (2 * (n + a))
    lower, upper = simultaneous_intervals(counts, alpha)
    np.testing.assert_allclose(lower, goodman_lower, rtol=1e-10)
    np.testing.assert_allclose(upper, goodman_upper, rtol=1e-10)


@pytest.mark.parametrize("method", ["wilson", "clopper-pearson"])
def test_simultaneous_intervals_cover_jointly(method):
    rng = np.random.default_rng(0)
    p = np.array([0.4, 0.3, 0.2, 0.07, 0.03])
    sims = 400
    covered = 0
    for counts in rng.multinomial(200, p, size=sims):
        lower, upper = simultaneous_intervals(counts, 0.05, method)
        covered += np.all((lower <= p) & (p <= upper))
    # Bonferroni is conservative: joint coverage ≥ 95%; allow 2.5 binomial standard errors of slack.
    assert covered / sims >= 0.95 - 2.5 * math.sqrt(0.95 * 0.05 / sims)


def test_unknown_interval_method_is_rejected():
    with pytest.raises(ValueError, match="unknown interval method"):
        simultaneous_intervals([1, 2], method="wald")


def test_deviation_ratio():
    assert deviation_ratio([0.5, 0.5], [0.5, 0.5]) == 0.0
    assert deviation_ratio([1.0, 0.0], [0.5, 0.5]) == 1.0
    r = np.array([0.4, 0.1, 0.3, 0.2])
    assert deviation_ratio(r, np.full(4, 0.25)) == pytest.approx(0.15 / 0.75)
    # Non-uniform target: the normaliser is max_j max(t_j, 1 − t_j).
    assert deviation_ratio([0.5, 0.5], [0.8, 0.2]) == pytest.approx(0.3 / 0.8)


def test_kl_divergence_zeros():
    r, t = np.array([0.6, 0.4, 0.0]), np.array([0.5, 0.3, 0.2])
    assert kl_divergence(r, t) == pytest.approx(stats.entropy(r, t))
    assert kl_divergence(r, t) == pytest.approx(0.6 * math.log(0.6 / 0.5) + 0.4 * math.log(0.4 / 0.3))
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == math.inf
    assert kl_divergence([1.0, 0.0], [1.0, 0.0]) == 0.0


def test_marginals_follow_product_order():
    gender, race, age = np.array([0.3, 0.7]), np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.55, 0.45])
    joint = np.array([g * r * a for g, r, a in itertools.product(gender, race, age)])
    m_gender, m_race, m_age = marginals(joint, (2, 4, 2))
    np.testing.assert_allclose(m_gender, gender)
    np.testing.assert_allclose(m_race, race)
    np.testing.assert_allclose(m_age, age)
    counts = np.arange(16)
    assert marginals(counts, (2, 4, 2))[0].tolist() == [sum(range(8)), sum(range(8, 16))]
    with pytest.raises(ValueError):
        marginals(joint, (2, 3))


def test_project_to_simplex_matches_constrained_solver():
    rng = np.random.default_rng(1)
    for _ in range(5):
        v = rng.normal(size=5)
        p = project_to_simplex(v)
        reference = optimize.minimize(
            lambda x, v=v: np.sum((x - v) ** 2),
            np.full(5, 0.2),
            constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
            bounds=[(0, None)] * 5,
            method="SLSQP",
            options={"ftol": 1e-14},
        ).x
        np.testing.assert_allclose(p, reference, atol=1e-6)
        assert p.min() >= 0 and p.sum() == pytest.approx(1.0)


def test_cleam_inverts_a_known_confusion_matrix():
    confusion = np.array([[0.9, 0.08, 0.02], [0.1, 0.85, 0.05], [0.05, 0.15, 0.8]])
    p = np.array([0.2, 0.5, 0.3])
    q = confusion.T @ p  # observed = Cᵀ p
    np.testing.assert_allclose(cleam_correct(q, confusion), p, atol=1e-9)


def test_cleam_projects_impossible_observations_onto_the_simplex():
    confusion = np.array([[0.7, 0.3], [0.3, 0.7]])
    q = np.array([0.95, 0.05])  # no true p gives more than 70% of class 0
    p = cleam_correct(q, confusion)
    grid = np.linspace(0, 1, 100001)
    residual = [np.sum((confusion.T @ np.array([x, 1 - x]) - q) ** 2) for x in grid[::100]]
    assert p[0] == pytest.approx(grid[::100][int(np.argmin(residual))], abs=1e-3)
    np.testing.assert_allclose(p, [1.0, 0.0], atol=1e-9)


def _mixture_martingale_by_quadrature(p, s, n, a, b):
    """M_n(p) = ∫ q^S (1 − q)^(n − S) Beta(q; a, b) dq / (p^S (1 − p)^(n − S)), integrated numerically."""
    log_null = s * math.log(p) + (n - s) * math.log(1 - p)

    def integrand(q):
        return math.exp(s * math.log(q) + (n - s) * math.log(1 - q) - log_null + stats.beta.logpdf(q, a, b))

    return integrate.quad(integrand, 0, 1, points=[s / n], limit=200, epsabs=0)[0]


def test_confidence_sequence_ends_are_where_the_mixture_martingale_hits_one_over_alpha():
    s, n, alpha, mean, strength = 37, 90, 0.05, 0.5, 20.0
    lower, upper = confidence_sequence(s, n, alpha, mean, strength)
    for end in (lower, upper):
        value = _mixture_martingale_by_quadrature(end, s, n, mean * strength, (1 - mean) * strength)
        assert value == pytest.approx(1 / alpha, rel=1e-6)
    assert lower < s / n < upper
    # It is wider than the fixed-n interval: it pays for being valid at every n.
    w_lower, w_upper = wilson_interval(s, n, alpha)
    assert lower < w_lower and upper > w_upper


def test_confidence_sequence_is_anytime_valid_where_repeated_wilson_is_not():
    """Over 200 looks (one per 10 images), the sequence misses p at ANY look in ≤ α of the runs; checking
    a fixed-n Wilson interval at every look misses far more often. Misses are found exactly: the sequence
    misses p at n iff the mixture martingale M_n(p) ≥ 1/α (checked against the interval on a few runs)."""
    from scipy import special

    rng = np.random.default_rng(7)
    p, alpha, runs, looks, step = 0.3, 0.05, 2000, 200, 10
    a, b = 100 * p, 100 * (1 - p)
    draws = rng.random((runs, looks * step)) < p
    successes = np.cumsum(draws, axis=1)[:, step - 1 :: step]
    n = np.arange(1, looks + 1) * step
    log_m = (
        special.betaln(a + successes, b + n - successes)
        - special.betaln(a, b)
        - successes * math.log(p)
        - (n - successes) * math.log(1 - p)
    )
    cs_missed = np.any(log_m >= math.log(1 / alpha), axis=1)
    for run in range(5):
        lower, upper = confidence_sequence(successes[run], n, alpha, p, 100.0)
        assert np.any((lower > p) | (upper < p)) == cs_missed[run]
    lower, upper = wilson_interval(successes, n, alpha)
    wilson_missed = np.any((lower > p) | (upper < p), axis=1)
    assert cs_missed.mean() <= alpha + 2.5 * math.sqrt(alpha * (1 - alpha) / runs)
    assert wilson_missed.mean() > 3 * alpha


def test_simultaneous_confidence_sequence_uses_bonferroni_for_three_or_more_cells():
    counts = np.array([30, 50, 20])
    lower, upper = simultaneous_confidence_sequence(counts, 0.05, [0.3, 0.5, 0.2], 50.0)
    single_lower, single_upper = confidence_sequence(50, 100, 0.05 / 3, 0.5, 50.0)
    assert lower[1] == pytest.approx(single_lower) and upper[1] == pytest.approx(single_upper)
    two_lower, two_upper = simultaneous_confidence_sequence(np.array([40, 60]), 0.05, [0.5, 0.5], 50.0)
    # Two complementary cells: no adjustment, and the intervals mirror each other.
    assert two_lower[0] == pytest.approx(1 - two_upper[1]) and two_upper[0] == pytest.approx(1 - two_lower[1])


def test_distribution_summary_serialises_to_json():
    d = Distribution.from_counts([30, 10, 0], [0.5, 0.5, 0.0], n_invalid=2)
    assert d.n == 40 and d.ratios == (0.75, 0.25, 0.0)
    assert d.deviation == pytest.approx(0.25 / 1.0)
    data = json.loads(json.dumps(d.to_dict()))
    assert data["counts"] == [30, 10, 0] and data["n_invalid"] == 2
    assert data["kl"] == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    lower, upper = simultaneous_intervals([30, 10, 0])
    assert data["lower"] == pytest.approx(lower.tolist()) and data["upper"] == pytest.approx(upper.tolist())
    infinite = Distribution.from_counts([5, 5], [1.0, 0.0]).to_dict()
    assert infinite["kl"] is None
    with pytest.raises(ValueError):
        Distribution.from_counts([1, 2, 3], [0.5, 0.5])


def _wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_paired_difference_interval_follows_newcombes_hybrid_score_equations():
    from mist_debias.measure.metrics import paired_difference_interval

    a, b, c, d = 30, 10, 2, 58
    before = np.array([1] * a + [1] * b + [0] * c + [0] * d, dtype=bool)
    after = np.array([1] * a + [0] * b + [1] * c + [0] * d, dtype=bool)
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n
    (l1, u1), (l2, u2) = _wilson_by_hand(a + b, n), _wilson_by_hand(a + c, n)
    phi = (a * d - b * c) / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    lower = (p2 - p1) - math.sqrt((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2)
    upper = (p2 - p1) + math.sqrt((u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2)
    theta, low, high = paired_difference_interval(before, after)
    assert theta == pytest.approx(-0.08) and low == pytest.approx(lower) and high == pytest.approx(upper)
    assert high < 0  # 10 units left, 2 came: a shift
    swapped = paired_difference_interval(after, before)
    assert swapped == pytest.approx((-theta, -high, -low))
    same = paired_difference_interval(before, before)
    assert same[0] == 0 and same[1] < 0 < same[2]


def test_paired_difference_interval_covers_the_true_shift():
    from mist_debias.measure.metrics import paired_difference_interval

    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        before = rng.random(120) < 0.4
        flip = rng.random(120) < 0.1  # a tenth of the units change side: the true shift is 0.1·(0.6 − 0.4)
        after = before ^ flip
        _, low, high = paired_difference_interval(before, after)
        hits += low <= 0.1 * (0.6 - 0.4) <= high
    assert hits / 400 >= 0.93
