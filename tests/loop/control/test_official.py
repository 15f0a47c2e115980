import numpy as np
import pytest

from mist_debias.loop.control import ConceptTarget, OfficialController
from mist_debias.loop.control.simulate import simulate


def test_reproduces_the_published_update_rule():
    controller = OfficialController([ConceptTarget("doctor", (0.5, 0.5))])
    (first,) = controller.propose()
    assert first.mode == "increment" and first.n_images == 128
    np.testing.assert_array_equal(first.weights, [0.0, 0.0])  # measure the unedited model first
    controller.observe("doctor", first.weights, [100, 28])
    (second,) = controller.propose()
    np.testing.assert_allclose(second.weights, 0.1 * (np.array([0.5, 0.5]) - np.array([100, 28]) / 128))
    controller.observe("doctor", second.weights, [90, 38])
    (third,) = controller.propose()
    np.testing.assert_allclose(third.weights, 0.1 * (0.5 - np.array([90, 38]) / 128))
    # The increments compound: the applied total is their sum.
    np.testing.assert_allclose(controller.status("doctor").weights, first.weights + second.weights)


def test_stops_on_point_estimates_inside_the_tolerance():
    controller = OfficialController([ConceptTarget("nurse", (0.5, 0.5), tolerance=0.05)])
    controller.observe("nurse", np.zeros(2), [70, 58])  # |r − t| = 0.047 < 0.05: stop, no interval asked
    status = controller.status("nurse")
    assert status.converged and status.reason == "converged" and status.finished
    assert controller.propose() == []
    with pytest.raises(ValueError, match="finished"):
        controller.observe("nurse", np.zeros(2), [64, 64])


def test_max_iterations_and_budget():
    controller = OfficialController([ConceptTarget("a", (0.5, 0.5))], max_iterations=2)
    for _ in range(2):
        (p,) = controller.propose()
        controller.observe("a", p.weights, [128, 0])
    assert controller.status("a").reason == "max_iterations" and controller.propose() == []
    budgeted = OfficialController([ConceptTarget("a", (0.5, 0.5)), ConceptTarget("b", (0.5, 0.5))], budget=300)
    assert [p.concept for p in budgeted.propose()] == ["a", "b"]
    budgeted.observe("a", np.zeros(2), [128, 0])
    budgeted.observe("b", np.zeros(2), [128, 0])
    assert budgeted.propose() == []  # 44 images left: less than one fixed batch
    assert budgeted.status("a").reason == "budget" and budgeted.images_used == 256


def test_converges_on_an_easy_plant(plants):
    controller = OfficialController([ConceptTarget("easy", (0.5, 0.5))])
    simulate(controller, {"easy": plants["easy"]}, seed=0)
    status = controller.status("easy")
    assert status.converged and status.iterations <= 10


def test_fixed_step_fails_on_weak_and_oscillates_on_strong_plants(plants):
    weak = OfficialController([ConceptTarget("small", (0.5, 0.5))])
    result = simulate(weak, {"small": plants["small"]}, seed=0)
    assert not weak.status("small").converged and weak.status("small").reason == "max_iterations"
    assert plants["small"].ratios(result.final_weights["small"])[0] > 0.7  # still far from 50%
    strong = OfficialController([ConceptTarget("large", (0.5, 0.5))])
    simulate(strong, {"large": plants["large"]}, seed=0)
    minority = [obs.counts[1] / sum(obs.counts) for obs in strong.observations[1:]]
    assert not strong.status("large").converged
    assert min(minority) < 0.05 and max(minority) > 0.95  # flips between ~0% and ~100%


def test_config_round_trip():
    controller = OfficialController([ConceptTarget("a", (0.25, 0.75), 0.1)], budget=1000, n_images=64, step=0.3)
    rebuilt = OfficialController.from_dict(controller.to_dict())
    assert rebuilt.to_dict() == controller.to_dict()
