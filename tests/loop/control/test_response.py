from dataclasses import replace

import numpy as np
import pytest
from scipy import optimize

from mist_debias.loop.control.response import fit_response, push_direction, zero_sum_basis
from mist_debias.loop.control.simulate import SeededPlant, SoftmaxPlant


@pytest.mark.parametrize("num_cells", [2, 3, 8])
def test_zero_sum_basis_is_orthonormal_and_sums_to_zero(num_cells):
    basis = zero_sum_basis(num_cells)
    np.testing.assert_allclose(basis.T @ basis, np.eye(num_cells - 1), atol=1e-12)
    np.testing.assert_allclose(basis.sum(axis=0), 0.0, atol=1e-12)


@pytest.mark.parametrize(("num_cells", "scale"), [(2, 0.2), (2, 80.0), (4, 3.0)])
def test_fit_recovers_an_exact_plant_and_solves_for_the_target(num_cells, scale):
    plant = SoftmaxPlant.from_ratios(np.linspace(1, 2, num_cells) / np.linspace(1, 2, num_cells).sum(), scale)
    basis = zero_sum_basis(num_cells)
    rng = np.random.default_rng(0)
    weights = np.stack([np.zeros(num_cells)] + [basis @ rng.normal(size=num_cells - 1) / scale for _ in range(6)])
    # Expected counts of 10⁶ images: the fit must reproduce the plant almost exactly.
    counts = np.stack([1e6 * plant.ratios(w) for w in weights])
    model = fit_response(weights, counts)
    assert model.gain == pytest.approx(scale, rel=2e-3)
    for w in weights:
        np.testing.assert_allclose(model.ratios(w), plant.ratios(w), atol=1e-4)
    target = np.full(num_cells, 1 / num_cells)
    solution = model.solve(target)
    assert solution.sum() == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(plant.ratios(solution), target, atol=1e-3)
    assert np.all(model.ratio_errors(solution) < 1e-3)


def test_standard_errors_shrink_with_more_images():
    weights = np.array([[0.0, 0.0], [0.5, -0.5], [-0.5, 0.5]])
    probs = np.array([[0.6, 0.4], [0.8, 0.2], [0.35, 0.65]])
    small = fit_response(weights, 100 * probs).ratio_errors(np.zeros(2))
    large = fit_response(weights, 10000 * probs).ratio_errors(np.zeros(2))
    # Standard errors scale as 1/sqrt(n): 100× the images, a tenth of the error.
    np.testing.assert_allclose(large, small / 10, rtol=0.05)


def test_saturated_batches_keep_a_finite_fit():
    model = fit_response(np.array([[0.0, 0.0], [1.0, -1.0]]), np.array([[15, 85], [64, 0]]))
    assert np.isfinite(model.gain) and model.gain > 0
    assert np.all(np.isfinite(model.solve([0.5, 0.5])))


def test_a_coupled_plant_is_fitted_with_its_coupling_and_solved_without_its_null_directions():
    """Cells that are products of two axes under an edit that moves each axis (gain s·C, C singular along the
    interaction): the fit recovers s with C, the solution reaches a product target, and it never steps along
    the interaction, which moves nothing."""
    plant = SeededPlant.from_axes([(0.8, 0.2), (0.3, 0.7)], 2.0)
    coupling = plant.coupling
    interaction = np.array([1.0, -1.0, -1.0, 1.0]) / 2.0
    np.testing.assert_allclose(coupling @ interaction, 0.0, atol=1e-12)
    basis = zero_sum_basis(4)
    rng = np.random.default_rng(1)
    weights = np.stack([np.zeros(4)] + [basis @ rng.normal(size=3) for _ in range(6)])
    counts = np.stack([1e6 * plant.ratios(w) for w in weights])
    model = fit_response(weights, counts, coupling=coupling)
    assert model.gain == pytest.approx(2.0, rel=2e-3)
    assert model.reach() == 2  # gender and age move, their interaction does not
    assert (
        fit_response(
            weights, np.stack([1e6 * SoftmaxPlant.from_ratios(np.full(4, 0.25), 2.0).ratios(w) for w in weights])
        ).reach()
        == 3
    )
    np.testing.assert_allclose(model.ratios(weights[3] + 5.0 * interaction), plant.ratios(weights[3]), atol=1e-3)
    solution = model.solve(np.full(4, 0.25))
    np.testing.assert_allclose(plant.ratios(solution), 0.25, atol=2e-3)
    assert abs(solution @ interaction) < 1e-6
    direction = push_direction(np.full(4, 0.25) - plant.ratios(np.zeros(4)), coupling)
    assert abs(direction @ interaction) < 1e-9 and direction.sum() == pytest.approx(0.0, abs=1e-12)
    change = np.array([0.2, -0.1, -0.3, 0.2])
    np.testing.assert_allclose(push_direction(change), change, atol=1e-12)  # no coupling: the change itself


def test_solve_leaves_directions_that_barely_move_the_ratios_alone():
    """A cross-effect that cancels 97% of the gain along one direction: the solution does not step along it
    (it would need an enormous weight for a change the edit barely makes); without the cutoff it would."""
    plant = SoftmaxPlant.from_ratios([0.5, 0.3, 0.2], 1.0)
    basis = zero_sum_basis(3)
    weights = np.stack([np.zeros(3), basis[:, 0], basis[:, 1], basis @ np.array([1.0, 1.0])])
    counts = np.stack([1e6 * plant.ratios(w) for w in weights])
    model = fit_response(weights, counts)
    weak = replace(
        model,
        theta=np.concatenate(
            [model.theta[:4], (-0.97 * model.theta[3] * np.outer(basis[:, 1], basis[:, 1]) @ basis).ravel()]
        ),
    )
    solution = weak.solve(np.array([0.2, 0.3, 0.5]))
    assert abs(solution @ basis[:, 1]) < 1e-6
    assert np.max(np.abs(solution)) < 10.0
    assert abs(weak.solve(np.array([0.2, 0.3, 0.5]), cutoff=1e-10) @ basis[:, 1]) > 10.0


def test_an_out_of_reach_target_is_solved_for_the_smallest_largest_miss():
    """Gender × age with a dependence the edit cannot change. For 25% each, the best any weight does is every
    cell within 0.0706 (both marginals balanced), and solve gets there. For 10/20/30/40 (another dependence)
    solve's largest miss is within 0.005 of the best over the gender and age weights, found by brute force
    on the plant; least squares in log-ratios, which favours the smallest cells, misses by 0.03 more."""
    independent = SeededPlant.from_axes([(0.8, 0.2), (0.3, 0.7)], 2.0)
    plant = replace(independent, offsets=independent.offsets - 0.29 * np.array([1.0, -1.0, -1.0, 1.0]))
    basis = zero_sum_basis(4)
    rng = np.random.default_rng(2)
    weights = np.stack([np.zeros(4)] + [basis @ rng.normal(size=3) for _ in range(6)])
    model = fit_response(weights, np.stack([1e6 * plant.ratios(w) for w in weights]), coupling=plant.coupling)
    joint = plant.ratios(model.solve(np.full(4, 0.25))).reshape(2, 2)
    np.testing.assert_allclose(joint.sum(axis=0), 0.5, atol=2e-3)
    np.testing.assert_allclose(joint.sum(axis=1), 0.5, atol=2e-3)
    assert np.max(np.abs(joint - 0.25)) == pytest.approx(0.0706, abs=2e-3)

    target = np.array([0.1, 0.2, 0.3, 0.4])
    gender, age = np.array([-1.0, -1.0, 1.0, 1.0]) / 2, np.array([-1.0, 1.0, -1.0, 1.0]) / 2

    def miss(w):
        return np.max(np.abs(plant.ratios(w) - target))

    best = min(
        optimize.minimize(lambda x: miss(x[0] * gender + x[1] * age), start, method="Nelder-Mead").fun
        for start in ([0.0, 0.0], [1.0, 1.0], [-1.0, 1.0])
    )
    assert best - 1e-6 <= miss(model.solve(target)) < best + 0.005
    push = basis.T @ (model.gain * plant.coupling @ basis + model.cross)
    least_squares = basis @ np.linalg.lstsq(push, basis.T @ (np.log(target) - model.offsets), rcond=0.1)[0]
    assert miss(least_squares) > miss(model.solve(target)) + 0.03
