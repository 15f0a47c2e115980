from dataclasses import replace

import numpy as np
from scipy import special

from mist_debias.loop.control import ConceptTarget, OfficialController
from mist_debias.loop.control.simulate import SeededPlant, SoftmaxPlant, product_coupling, simulate


def test_plant_ratios_follow_the_softmax_map():
    plant = SoftmaxPlant.from_ratios([0.5, 0.3, 0.2], scale=2.0, cross=0.4, seed=3)
    np.testing.assert_allclose(plant.ratios(np.zeros(3)), [0.5, 0.3, 0.2])
    w = np.array([0.3, -0.1, -0.2])
    np.testing.assert_allclose(plant.ratios(w), special.softmax(np.log([0.5, 0.3, 0.2]) + plant.gain @ w))
    saturated = SoftmaxPlant(plant.offsets, plant.gain, saturation=0.1)
    np.testing.assert_allclose(
        saturated.ratios(w), special.softmax(plant.offsets + plant.gain @ (0.1 * np.tanh(w / 0.1)))
    )


def test_sampling_is_seeded_and_counts_invalid_images():
    plant = SoftmaxPlant.from_ratios([0.6, 0.4], scale=1.0, invalid_rate=0.1)
    first = plant.sample(np.zeros(2), 1000, np.random.default_rng(5))
    second = plant.sample(np.zeros(2), 1000, np.random.default_rng(5))
    assert first[0].tolist() == second[0].tolist() and first[1] == second[1]
    assert first[0].sum() + first[1] == 1000 and 50 < first[1] < 150


def test_increments_accumulate():
    plant = SoftmaxPlant.from_ratios([0.8, 0.2], scale=5.0)
    controller = OfficialController([ConceptTarget("c", (0.5, 0.5))], max_iterations=3)
    result = simulate(controller, {"c": plant}, seed=0)
    increments = [np.asarray(obs.weights) for obs in controller.observations]
    np.testing.assert_allclose(result.final_weights["c"], np.sum(increments, axis=0))
    assert result.rounds == 3


def test_no_image_decodes_beyond_the_decodable_limit():
    plant = SoftmaxPlant.from_ratios([0.6, 0.4], scale=1.0, decodable_limit=2.0)
    rng = np.random.default_rng(0)
    counts, n_invalid = plant.sample([2.5, -2.5], 64, rng)
    assert counts.tolist() == [0, 0] and n_invalid == 64
    counts, n_invalid = plant.sample([2.0, -2.0], 64, rng)
    assert counts.sum() == 64 and n_invalid == 0


def test_seeded_plant_is_the_softmax_over_seeds_and_each_seed_keeps_its_cell():
    from mist_debias.loop.control.simulate import SeededPlant

    plant = SeededPlant.from_ratios([0.5, 0.3, 0.2], scale=2.0, cross=0.4, seed=3, invalid_rate=0.1)
    w = np.array([0.3, -0.1, -0.2])
    seeds = np.arange(40000)
    counts, n_invalid, kept = plant.sample_seeds(w, seeds)
    # Gumbel-max: over many seeds the share is softmax(a + B w) (4 standard errors)
    np.testing.assert_allclose(counts / counts.sum(), plant.ratios(w), atol=4 * np.sqrt(0.25 / counts.sum()))
    assert abs(n_invalid / 40000 - 0.1) < 0.01 and kept == counts.sum()
    # common random numbers: the same seeds give the same cells, another population other cells
    again, _ = plant.classify(w, seeds[:500])
    first, _ = plant.classify(w, seeds[:500])
    np.testing.assert_array_equal(again, first)
    other, _ = plant.with_noise_seed(1).classify(w, seeds[:500])
    assert np.any(other != first)


def test_two_cell_seeds_flip_once_at_their_own_threshold():
    from mist_debias.loop.control.simulate import SeededPlant

    plant = SeededPlant.from_ratios([0.85, 0.15], scale=3.0)
    xs = np.linspace(-1.5, 1.5, 61)
    cells = np.stack([plant.classify([-x, x], np.arange(300))[0] for x in xs])
    flips = np.sum(np.abs(np.diff(cells, axis=0)), axis=0)
    assert np.all(flips <= 1) and np.sum(flips == 1) > 250  # monotone per seed


def test_a_plant_with_steep_seeds_is_their_mixture_and_steeper_than_logit_linear():
    """A share p of seeds with noise σ g: the ratios are p·softmax(ℓ/σ) + (1 − p)·softmax(ℓ) over many seeds,
    and near balance the share moves faster than the logit-linear plant with the same logits."""
    wide = SeededPlant(np.array([0.437, -0.437]), 0.575 * np.eye(2))
    steep = replace(wide, steep_share=0.83, steep_scale=0.065)
    for x in (0.5, 0.76, 0.9):
        logits = wide.logits([-x, x])
        expected = 0.83 * special.softmax(logits / 0.065) + 0.17 * special.softmax(logits)
        np.testing.assert_allclose(steep.ratios([-x, x]), expected)
        counts, _, _ = steep.sample_seeds([-x, x], np.arange(40000))
        np.testing.assert_allclose(counts / counts.sum(), expected, atol=4 * np.sqrt(0.25 / 40000))
    slope = (steep.ratios([-0.77, 0.77])[1] - steep.ratios([-0.75, 0.75])[1]) / 0.02
    assert slope > 5 * (wide.ratios([-0.77, 0.77])[1] - wide.ratios([-0.75, 0.75])[1]) / 0.02


def test_seeded_plant_loses_the_concept_for_large_edits():
    from mist_debias.loop.control.simulate import SeededPlant

    plant = SeededPlant.from_ratios([0.6, 0.4], scale=1.0, loss_radius=2.0)
    assert plant.kept_share([0.0, 0.0]) == 1.0
    assert plant.kept_share([2.0, -2.0]) == np.exp(-1.0)
    counts, _, kept = plant.sample_seeds([2.0, -2.0], np.arange(20000))
    assert abs(kept / counts.sum() - np.exp(-1.0)) < 0.015


def test_a_plant_of_product_cells_moves_each_axis_and_keeps_the_axes_independent():
    """from_axes: unedited ratios are the product of the axes' ratios, C_jk is the share of axes cells j and k
    agree on, and at any weight the joint stays the product of its marginals (the interaction out of reach)."""
    plant = SeededPlant.from_axes([(0.8, 0.2), (0.6, 0.25, 0.15)], 3.0)
    np.testing.assert_allclose(plant.ratios(np.zeros(6)), np.outer([0.8, 0.2], [0.6, 0.25, 0.15]).ravel())
    assert plant.coupling[0, 0] == 1.0 and plant.coupling[0, 1] == 0.5 and plant.coupling[0, 4] == 0.0
    np.testing.assert_array_equal(product_coupling([2, 3]), plant.coupling)
    weights = np.random.default_rng(0).normal(size=6)
    joint = plant.ratios(weights).reshape(2, 3)
    np.testing.assert_allclose(joint, np.outer(joint.sum(axis=1), joint.sum(axis=0)), atol=1e-12)
    assert not np.allclose(joint.sum(axis=1), [0.8, 0.2])
    assert plant.with_noise_seed(3).coupling is plant.coupling
