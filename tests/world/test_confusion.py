import numpy as np

from mist_debias.core.spec import AttributeSpec, Axis
from mist_debias.measure.classifiers.base import CellPredictions
from mist_debias.world.confusion import estimate_confusion, known_cell_glyphs
from mist_debias.world.oracle import WorldOracle, cell_constraints

SPEC = AttributeSpec.from_axes([Axis("gender", ("man", "woman")), Axis("race", ("White", "Asian", "Black"))])


def test_glyphs_carry_their_cells_attributes():
    glyphs = known_cell_glyphs(SPEC, "doctor", 5, np.random.default_rng(0))
    assert len(glyphs) == 5 * SPEC.num_cells
    for index, glyph in enumerate(glyphs):
        wanted = cell_constraints(SPEC.cells[index // 5])
        assert {axis: getattr(glyph, axis) for axis in wanted} == wanted
        assert glyph.profession == "doctor"


def test_the_exact_oracle_has_an_identity_confusion():
    matrix = estimate_confusion(WorldOracle(), SPEC, "doctor", n=20, seed=1)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
    assert np.all(np.diag(matrix) >= 0.95)


def gender_swapped(spec):
    """For each cell, the index of the cell with the other gender and the same race."""
    swap = {"man": "woman", "woman": "man"}
    values = [cell.values for cell in spec.cells]
    return [values.index(tuple((axis, swap.get(value, value)) for axis, value in cell)) for cell in values]


class _SwapsGender:
    """Classifies like the oracle, then swaps man and woman: a classifier with known errors."""

    def classify(self, images, spec):
        truth = WorldOracle().classify(images, spec)
        return CellPredictions(probs=truth.probs[:, gender_swapped(spec)], valid=truth.valid)


def test_a_classifier_that_swaps_gender_gets_a_swapped_matrix():
    matrix = estimate_confusion(_SwapsGender(), SPEC, "doctor", n=20, seed=1)
    assert np.all(matrix[np.arange(SPEC.num_cells), gender_swapped(SPEC)] >= 0.95)
