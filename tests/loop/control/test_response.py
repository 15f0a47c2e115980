import numpy as np
import pytest

from mist_debias.loop.control.response import fit_response, zero_sum_basis
from mist_debias.loop.control.simulate import SoftmaxPlant


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
