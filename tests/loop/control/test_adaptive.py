import json

import numpy as np
import pytest

from mist_debias.loop.control import AdaptiveController, ConceptTarget, Observation, controller_from_dict
from mist_debias.loop.control.simulate import SoftmaxPlant, simulate

HALF = (0.5, 0.5)


@pytest.mark.parametrize("plant_name", ["easy", "small", "large"])
def test_converges_where_a_fixed_step_is_fine_too_weak_or_too_strong(plants, plant_name):
    controller = AdaptiveController([ConceptTarget(plant_name, HALF)])
    result = simulate(controller, {plant_name: plants[plant_name]}, seed=1)
    status = controller.status(plant_name)
    assert status.converged and status.reason == "converged" and status.mode == "absolute"
    true_ratios = plants[plant_name].ratios(result.final_weights[plant_name])
    assert np.max(np.abs(true_ratios - 0.5)) < 0.05
    # The certificate: every cell's anytime-valid interval inside [t − ε, t + ε].
    assert np.all(np.array(status.certificate_lower) >= 0.45)
    assert np.all(np.array(status.certificate_upper) <= 0.55)
    assert status.certificate_alpha <= 0.05


def test_certificate_is_honest_over_many_runs(plants):
    """Measured: the share of certified runs whose TRUE ratio at the certified weights is within the
    tolerance, and whose certificate intervals contain the true ratios. Both must be ≥ 95%."""
    certified = within = covered = 0
    for name, plant in plants.items():
        for seed in range(20):
            controller = AdaptiveController([ConceptTarget(name, HALF)])
            result = simulate(controller, {name: plant}, seed=100 + seed)
            status = controller.status(name)
            if not status.converged:
                continue
            true_ratios = plant.ratios(result.final_weights[name])
            certified += 1
            within += np.max(np.abs(true_ratios - 0.5)) < 0.05
            covered += np.all(
                (np.array(status.certificate_lower) <= true_ratios)
                & (true_ratios <= np.array(status.certificate_upper))
            )
    assert certified >= 57, f"only {certified}/60 runs converged"
    assert within / certified >= 0.95, f"true ratio within tolerance in {within}/{certified}"
    assert covered / certified >= 0.95, f"certificate covered the truth in {covered}/{certified}"


def test_never_certifies_a_concept_that_cannot_reach_the_tolerance():
    # The ratio sits 0.005 outside the tolerance and no weight moves it. Checking a 95% interval after
    # every batch at the same weight would sometimes declare success; the certificate must not (the
    # anytime guarantee allows ≤ 5% of runs; ≤ 2 of 20 is asked).
    plant = SoftmaxPlant.from_ratios([0.555, 0.445], scale=0.0)
    false_certificates = 0
    for seed in range(20):
        controller = AdaptiveController([ConceptTarget("stuck", HALF)], budget=2000)
        simulate(controller, {"stuck": plant}, seed=seed)
        status = controller.status("stuck")
        assert status.images_used <= 2000
        false_certificates += status.converged
    assert false_certificates <= 2


def test_budget_caps_the_run(plants):
    controller = AdaptiveController([ConceptTarget("small", HALF)], budget=700)
    simulate(controller, {"small": plants["small"]}, seed=0)
    status = controller.status("small")
    assert controller.images_used <= 700 and status.reason == "budget" and not status.converged
    assert controller.propose() == []


def test_several_concepts_two_and_eight_cells_with_a_shared_budget():
    rng = np.random.default_rng(0)
    intersectional = SoftmaxPlant.from_ratios(
        rng.dirichlet(np.full(8, 3.0)), scale=2.0, cross=0.3, seed=4, invalid_rate=0.02
    )
    binary = SoftmaxPlant.from_ratios([0.2, 0.8], scale=1.5)
    uniform8 = tuple(np.full(8, 1 / 8))
    controller = AdaptiveController([ConceptTarget("doctor", uniform8), ConceptTarget("nurse", HALF)], budget=40000)
    result = simulate(controller, {"doctor": intersectional, "nurse": binary}, seed=3)
    for name, plant, target in (("doctor", intersectional, uniform8), ("nurse", binary, HALF)):
        status = controller.status(name)
        assert status.converged, status.reason
        assert np.max(np.abs(plant.ratios(result.final_weights[name]) - np.array(target))) < 0.05
        assert abs(sum(result.final_weights[name])) < 1e-9  # zero-sum weights
    assert controller.images_used <= 40000
    # A converged concept is frozen: it gets no proposals and accepts no observations.
    with pytest.raises(ValueError, match="finished"):
        controller.observe("nurse", np.zeros(2), [1, 1])


def test_weights_it_did_not_propose_are_never_certified():
    controller = AdaptiveController([ConceptTarget("c", HALF)])
    controller.observe("c", [0.3, -0.3], [5000, 5000])  # perfect balance, but not a planned candidate
    assert not controller.status("c").converged
    fresh = AdaptiveController([ConceptTarget("c", HALF)])
    (proposal,) = fresh.propose()
    fresh.observe("c", proposal.weights, [5000, 5000])  # the same evidence at the proposed weights
    assert fresh.status("c").converged


def test_propose_is_pure_and_replay_restores_the_state_exactly():
    rng = np.random.default_rng(0)
    plants = {
        "doctor": SoftmaxPlant.from_ratios(rng.dirichlet(np.full(8, 3.0)), scale=0.5, cross=0.3, seed=1),
        "nurse": SoftmaxPlant.from_ratios([0.9, 0.1], scale=40.0),
    }
    concepts = [ConceptTarget("doctor", tuple(np.full(8, 1 / 8))), ConceptTarget("nurse", HALF)]
    original = AdaptiveController(concepts, budget=30000)
    sampler = np.random.default_rng(42)
    for _ in range(6):
        proposals = original.propose()
        assert [p.weights.tolist() for p in proposals] == [p.weights.tolist() for p in original.propose()]
        for p in proposals:
            counts, n_invalid = plants[p.concept].sample(p.weights, p.n_images, sampler)
            original.observe(p.concept, p.weights, counts, n_invalid)
    # What the loop logs, through JSON, and back.
    config = json.loads(json.dumps(original.to_dict()))
    log = [json.loads(json.dumps(obs.to_dict())) for obs in original.observations]
    restored = controller_from_dict(config)
    for entry in log:
        obs = Observation.from_dict(entry)
        restored.observe(obs.concept, obs.weights, obs.counts, obs.n_invalid)
    assert restored.to_dict() == original.to_dict()
    # Both continue identically from here.
    for controller in (original, restored):
        continuation = np.random.default_rng(7)
        for _ in range(4):
            for p in controller.propose():
                counts, n_invalid = plants[p.concept].sample(p.weights, p.n_images, continuation)
                controller.observe(p.concept, p.weights, counts, n_invalid)
    assert [o.to_dict() for o in restored.observations] == [o.to_dict() for o in original.observations]
    for name in plants:
        assert restored.status(name).to_dict() == original.status(name).to_dict()
    replayed = AdaptiveController.replay(config, [o.to_dict() for o in original.observations])
    assert [p.weights.tolist() for p in replayed.propose()] == [p.weights.tolist() for p in original.propose()]


def test_invalid_configuration_and_observations_are_rejected():
    with pytest.raises(ValueError):
        ConceptTarget("c", (0.6, 0.6))
    with pytest.raises(ValueError):
        ConceptTarget("c", HALF, tolerance=0.5)
    with pytest.raises(ValueError):
        AdaptiveController([ConceptTarget("c", HALF), ConceptTarget("c", HALF)])
    with pytest.raises(ValueError):
        AdaptiveController([ConceptTarget("c", HALF)], budget=0)
    controller = AdaptiveController([ConceptTarget("c", HALF)])
    with pytest.raises(ValueError):
        controller.observe("c", [0.0, 0.0, 0.0], [1, 2, 3])
    with pytest.raises(ValueError):
        controller.observe("c", [0.0, 0.0], [-1, 2])
    with pytest.raises(KeyError):
        controller.observe("other", [0.0, 0.0], [1, 2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backs_off_from_weights_where_nothing_decodes(seed):
    """A 4-cell concept whose images stop decoding beyond max |w| > 2 (an edit pushed past its range):
    a batch there carries no information. The trust region must shrink away from such weights instead of
    spending the budget at them, and the reported weights must lie where images decode."""
    plant = SoftmaxPlant.from_ratios([0.08, 0.85, 0.01, 0.06], scale=1.0, cross=0.3, seed=2, decodable_limit=2.0)
    controller = AdaptiveController([ConceptTarget("CEO", (0.25,) * 4)], budget=3072)
    simulate(controller, {"CEO": plant}, seed=seed)
    batches = len(controller.observations)
    dead = sum(sum(obs.counts) == 0 for obs in controller.observations)
    status = controller.status("CEO")
    assert dead <= batches // 4, (dead, batches)
    assert np.max(np.abs(status.weights)) <= 2.0
    assert np.max(np.abs(plant.ratios(status.weights) - 0.25)) < 0.05


def test_a_step_into_undecodable_weights_halves_the_next_step():
    controller = AdaptiveController([ConceptTarget("c", HALF)])
    controller.observe("c", [0.0, 0.0], [60, 4])
    (probe,) = controller.propose()
    controller.observe("c", probe.weights, [52, 12])
    (step,) = controller.propose()
    centre = probe.weights  # the probe is the measured weight closest to the target
    length = np.linalg.norm(step.weights - centre)
    controller.observe("c", step.weights, [0, 0], step.n_images)
    (after,) = controller.propose()
    assert np.linalg.norm(after.weights - centre) <= 0.5 * length + 1e-12


def test_reports_the_weight_most_surely_on_target_not_the_luckiest_batch():
    controller = AdaptiveController([ConceptTarget("c", HALF)], max_iterations=4)
    controller.observe("c", [0.0, 0.0], [60, 4])
    controller.observe("c", [-0.5, 0.5], [270, 230])  # 0.54 on 500 images
    controller.observe("c", [-0.9, 0.9], [4, 4])  # exactly 0.5, but on 8 images
    controller.observe("c", [-0.7, 0.7], [16, 16], 200)  # 0.5, but 200 of 232 images undecodable
    status = controller.status("c")
    assert status.finished and not status.converged
    np.testing.assert_array_equal(status.weights, [-0.5, 0.5])
    assert status.pooled.counts == (270, 230)


# The first ten batches of TIME on the world's doctor (guidance 1.5, η 0.75): weights (−x, x), counts, invalid.
_DOCTOR_TRACE = [
    (0.0, (62, 1), 1),
    (0.5, (23, 39), 2),
    (0.443145361090852, (33, 29), 2),
    (0.4501737436296788, (33, 27), 4),
    (0.4571102132338782, (29, 34), 1),
    (0.45282736820303315, (32, 31), 1),
    (0.45351077459534694, (35, 27), 2),
    (0.45805171209138146, (28, 32), 4),
    (0.45609738563630603, (27, 33), 4),
    (0.4535313083391824, (40, 23), 1),
]


def test_a_noisy_batch_near_the_target_does_not_collapse_the_trust_region():
    """Nine batches of 64 around x ≈ 0.45 straddle 50 / 50; the tenth (40 / 23) is 2 standard errors off.
    That is noise, not a failed step: the controller must go on to certify near x ≈ 0.45 with a larger
    batch instead of shrinking its region to nothing and exploring with 64 images until the budget ends."""
    controller = AdaptiveController([ConceptTarget("doctor", HALF)], budget=3072)
    for x, counts, n_invalid in _DOCTOR_TRACE:
        controller.observe("doctor", [-x, x], counts, n_invalid)
    (proposal,) = controller.propose()
    assert proposal.n_images > controller.n_min
    assert abs(proposal.weights[1] - 0.455) < 0.02
