import numpy as np
import pytest

from mist_debias.loop.control import ConceptTarget, Observation, PanelController, Proposal
from mist_debias.loop.control.base import decode_labels, encode_labels


def test_labels_encode_cell_concept_kept_and_undecodable_and_decode_to_counts():
    labels = encode_labels([0, 1, -1, 1, 0], [True, False, False, True, True], num_cells=2)
    assert labels == (0, 3, -1, 1, 0)
    counts, n_invalid, kept = decode_labels(labels, 2)
    assert counts.tolist() == [2, 2] and n_invalid == 1 and kept == 3
    assert encode_labels([2, -1, 0]) == (2, -1, 0)  # a classifier that cannot tell the concept


def test_observations_with_labels_and_named_seeds_round_trip_and_must_agree():
    controller = PanelController([ConceptTarget("c", (0.5, 0.5))])
    with pytest.raises(ValueError, match="labels disagree"):
        controller.observe("c", [0.0, 0.0], [2, 2], 0, 4, 0, None, (0, 0, 0, 1))
    with pytest.raises(ValueError, match="seed indices"):
        controller.observe("c", [0.0, 0.0], [2, 2], 0, None, None, (0, 1, 2), None)
    obs = Observation("c", (0.0, 0.0), (2, 1), 1, 3, 5, (5, 9, 7, 8), (0, 1, -1, 0))
    assert Observation.from_dict(obs.to_dict()) == obs
    assert list(obs.seeds()) == [5, 9, 7, 8]


def test_a_concept_target_round_trips_with_its_coupling():
    target = ConceptTarget("c", (0.25,) * 4, 0.04, coupling=tuple(tuple(row) for row in 0.5 + 0.5 * np.eye(4)))
    assert ConceptTarget.from_dict(target.to_dict()) == target
    plain = ConceptTarget("d", (0.3, 0.7))
    assert ConceptTarget.from_dict(plain.to_dict()) == plain and "coupling" not in plain.to_dict()


def test_a_proposal_naming_seeds_is_granted_whole_or_waits():
    proposal = Proposal("c", np.zeros(2), "absolute", 3, seed_indices=(8, 2, 5))
    assert proposal.seed_start == 8 and list(proposal.seeds()) == [8, 2, 5]
    with pytest.raises(ValueError, match="n_images"):
        Proposal("c", np.zeros(2), "absolute", 2, seed_indices=(8, 2, 5))


def test_a_concept_target_keeps_a_valid_coupling_and_refuses_a_bad_one():
    coupling = np.array([[1.0, 0.4], [0.4, 1.0]])
    target = ConceptTarget("doctor", (0.5, 0.5), coupling=coupling)
    np.testing.assert_array_equal(np.asarray(target.coupling), coupling)
    assert target.to_dict()["coupling"] == [[1.0, 0.4], [0.4, 1.0]]
    assert ConceptTarget("doctor", (0.5, 0.5)).coupling is None  # the response reads None as the identity
    assert "coupling" not in ConceptTarget("doctor", (0.5, 0.5)).to_dict()
    for bad in (np.eye(3), [[1.0, 0.5], [0.4, 1.0]], [[1.0, 2.0], [2.0, 1.0]], [[1.0, np.nan], [np.nan, 1.0]]):
        with pytest.raises(ValueError, match="coupling"):
            ConceptTarget("doctor", (0.5, 0.5), coupling=bad)
