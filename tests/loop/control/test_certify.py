import numpy as np
import pytest
from scipy import stats

from mist_debias.loop.control.certify import (
    certifies,
    certifies_sequentially,
    crossing_boundaries,
    equivalence_bounds,
    look_alpha,
    look_success,
    plan_look,
)


def test_alpha_spending_sums_to_alpha():
    shares = [look_alpha(0.05, 0.6, m) for m in range(1, 200)]
    assert shares[0] == pytest.approx(0.03) and shares[1] == pytest.approx(0.012)
    assert sum(shares) == pytest.approx(0.05) and sum(shares) <= 0.05


def test_bounds_are_one_sided_clopper_pearson_at_alpha():
    lower, upper = equivalence_bounds([40, 60], 0.05)
    # Lower bound: the α quantile of Beta(k, n − k + 1); upper: the 1 − α quantile of Beta(k + 1, n − k).
    assert lower[0] == pytest.approx(stats.beta.ppf(0.05, 40, 61))
    assert upper[0] == pytest.approx(stats.beta.ppf(0.95, 41, 60))
    assert upper[1] == pytest.approx(1 - lower[0])


@pytest.mark.parametrize(("n", "alpha"), [(600, 0.05), (1000, 0.03), (2000, 0.012)])
def test_false_certificate_probability_is_at_most_alpha_exactly(n, alpha):
    """Two cells, the true ratio on or just outside the tolerance (0.55, 0.555 for a target of 0.5 ± 0.05):
    P(certify), summed exactly over the binomial outcomes the test passes, is at most α."""
    passing = np.array([k for k in range(n + 1) if certifies([k, n - k], [0.5, 0.5], 0.05, alpha)[0]])
    for truth in (0.55, 0.555, 0.45):
        assert stats.binom.pmf(passing, n, truth).sum() <= alpha
    # ... and it has power where the ratio is on target
    assert stats.binom.pmf(passing, n, 0.5).sum() > 0.5


def test_intersection_union_needs_no_correction_over_cells():
    """Four cells, one 0.005 outside its tolerance: a look at level α certifies in ≤ α of samples."""
    rng = np.random.default_rng(0)
    truth = np.array([0.305, 0.25, 0.25, 0.195])
    certified = sum(certifies(rng.multinomial(400, truth), [0.25] * 4, 0.05, 0.05)[0] for _ in range(4000))
    assert certified / 4000 <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 4000)


def test_a_sample_exactly_on_target_certifies_from_about_300_images_at_alpha_005():
    assert certifies([150, 150], [0.5, 0.5], 0.05, 0.05)[0]
    assert not certifies([130, 130], [0.5, 0.5], 0.05, 0.05)[0]


def test_look_success_grows_with_precision_and_plan_picks_the_cheapest():
    target = np.array([0.5, 0.5])
    on = look_success([100, 400, 1600], target, [0.0, 0.0], target, 0.05, 0.03)
    assert on[0] < on[1] < on[2] <= 1.0
    vague = look_success([400], target, [0.05, 0.05], target, 0.05, 0.03)[0]
    assert vague < on[1]
    sizes = np.arange(64, 4097, 16)
    n, chance = plan_look(target, [0.01, 0.01], target, 0.05, 0.03, sizes)
    costs = sizes / np.maximum(look_success(sizes, target, [0.01, 0.01], target, 0.05, 0.03), 1e-300)
    assert n == sizes[np.argmin(costs)] and 0 < chance <= 1


@pytest.mark.parametrize(
    ("sizes", "alphas", "null"), [([60, 120], [0.03, 0.01], 0.45), ([40, 80, 160], [0.02, 0.01, 0.01], 0.3)]
)
def test_group_sequential_boundaries_keep_the_false_crossing_probability_below_the_alpha_spent(sizes, alphas, null):
    """Enumerate every path of the pooled counts exactly: P(X_i ≥ c_i for some look i) ≤ Σ α."""
    boundaries = crossing_boundaries(sizes, alphas, null)
    increments = np.diff([0, *sizes])
    paths = {0: 1.0}  # pooled count → probability, over paths that have not crossed
    crossed = 0.0
    for step, boundary in zip(increments, boundaries, strict=True):
        pmf = stats.binom.pmf(np.arange(step + 1), step, null)
        nxt: dict[int, float] = {}
        for count, prob in paths.items():
            for extra, p in enumerate(pmf):
                total = count + extra
                if total >= boundary:
                    crossed += prob * p
                else:
                    nxt[total] = nxt.get(total, 0.0) + prob * p
        paths = nxt
    assert crossed <= sum(alphas) + 1e-12
    assert crossed > 0.5 * sum(alphas)  # not wastefully conservative


def test_the_first_look_is_clopper_pearson_and_later_pooled_looks_beat_a_bonferroni_look():
    # look 1: the same smallest passing count as the one-sided Clopper–Pearson bound
    passing = [k for k in range(701) if equivalence_bounds([k, 700 - k], 0.0425)[0][0] >= 0.45]
    assert crossing_boundaries([700], [0.0425], 0.45)[0] == passing[0]
    # two looks of 704: a pooled 678/1408 certifies sequentially, not as a separate Clopper–Pearson look at α₂
    looks = [[340, 364], [338, 366]]
    assert certifies_sequentially(looks, [0.5, 0.5], 0.05, [0.0425, 0.0064])[0]
    assert not certifies([678, 730], [0.5, 0.5], 0.05, 0.0064)[0]


def test_sequential_bounds_decide_the_certificate():
    rng = np.random.default_rng(3)
    for _ in range(20):
        looks = rng.multinomial(300, [0.27, 0.23, 0.26, 0.24], size=2)
        passed, lower, upper = certifies_sequentially(looks, [0.25] * 4, 0.05, [0.03, 0.01])
        inside = bool(np.all(lower >= 0.2 - 1e-6) and np.all(upper <= 0.3 + 1e-6))
        assert passed == inside
        pooled = looks.sum(axis=0) / looks.sum()
        assert np.all(lower <= pooled) and np.all(pooled <= upper)
