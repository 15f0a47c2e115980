import numpy as np
import pytest

from mist_debias.loop.control.base import encode_labels
from mist_debias.loop.control.infer import UNKNOWN, in_convex_hull, infer_labels
from mist_debias.loop.control.simulate import SeededPlant


def test_a_convex_combination_is_in_the_hull_and_a_separated_point_is_not():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(5, 4))
    weights = rng.dirichlet(np.ones(5))
    assert in_convex_hull(points, weights @ points)
    # beyond a supporting hyperplane: a direction d, a point past the largest projection of the points
    direction = rng.normal(size=4)
    outside = points[np.argmax(points @ direction)] + 0.01 * direction
    assert not in_convex_hull(points, outside)


def test_one_point_is_its_own_hull_and_two_points_a_segment():
    a, b = np.array([0.0, 0.0]), np.array([1.0, -1.0])
    assert in_convex_hull(a[None], a) and not in_convex_hull(a[None], b)
    assert in_convex_hull(np.stack([a, b]), 0.3 * a + 0.7 * b)
    assert not in_convex_hull(np.stack([a, b]), np.array([0.3, -0.29]))  # off the segment
    assert not in_convex_hull(np.stack([a, b]), 1.2 * b)  # on the line, past its end


@pytest.mark.parametrize("num_cells", [2, 4])
def test_inferred_labels_are_the_seeds_true_labels_in_a_random_utility_plant(num_cells):
    """In a seeded plant every seed's cells are convex regions: whatever is inferred must be what the seed
    really shows at the new weight, and most seeds near measured weights are inferred."""
    ratios = np.full(num_cells, 1 / num_cells)
    plant = SeededPlant.from_ratios(ratios, 4.0, cross=0.3, seed=1, invalid_rate=0.05, loss_radius=1.0)
    seeds = np.arange(400)
    rng = np.random.default_rng(1)
    points = rng.normal(scale=0.3, size=(4, num_cells))
    labels = np.array([encode_labels(*plant.classify(w, seeds), num_cells) for w in points])
    inferred_total = 0
    for _ in range(10):
        weights = rng.dirichlet(np.ones(len(points))) @ points
        inferred = infer_labels(points, labels, weights, num_cells)
        truth = np.array(encode_labels(*plant.classify(weights, seeds), num_cells))
        known = inferred != UNKNOWN
        np.testing.assert_array_equal(inferred[known], truth[known])
        inferred_total += known.sum()
    assert inferred_total > 0.3 * 10 * len(seeds)


def test_undecodable_or_lost_images_and_unmeasured_seeds_are_never_inferred():
    points = np.array([[0.0, 0.0], [1.0, -1.0]])
    labels = np.array([[0, -1, 2, UNKNOWN, 1], [0, -1, 2, 1, 1]])  # code 2 = cell 0 without the concept
    inferred = infer_labels(points, labels, np.array([0.5, -0.5]), num_cells=2)
    np.testing.assert_array_equal(inferred, [0, UNKNOWN, UNKNOWN, UNKNOWN, 1])
