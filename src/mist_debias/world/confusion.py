"""A classifier's confusion matrix on the world, estimated from rendered glyphs whose cells are known.

For each cell i of a spec, ``n`` glyphs are rendered with the attributes the cell names (the others drawn
uniformly, the profession fixed to the concept's background) and classified; row i of the matrix is

    C[i, j] = #(valid glyphs of cell i predicted j) / #(valid glyphs of cell i)      (P(predicted j | true i))

which is what a CLEAM-style correction (:func:`mist_debias.measure.metrics.cleam_correct`) inverts. Clean
renders are easier than generated images (no faces painted between two skin tones), so the matrix measures
the classifier's errors on what the world draws, not on everything the model may generate.
"""

from __future__ import annotations

import numpy as np

from mist_debias.core.spec import AttributeSpec
from mist_debias.measure.classifiers.base import CellClassifier
from mist_debias.world.oracle import cell_constraints
from mist_debias.world.render import AGES, GENDERS, RACES, Attributes, render_batch, to_pil

_AXIS_VALUES = {"gender": GENDERS, "race": RACES, "age": AGES}


def known_cell_glyphs(spec: AttributeSpec, profession: str, n: int, rng: np.random.Generator) -> list[Attributes]:
    """``n`` attribute draws per cell, cell by cell: what the cell names is fixed, the rest uniform."""
    draws = []
    for cell in spec.cells:
        wanted = cell_constraints(cell)
        for _ in range(n):
            values = {axis: wanted.get(axis) or str(rng.choice(options)) for axis, options in _AXIS_VALUES.items()}
            draws.append(Attributes(profession=profession, **values))
    return draws


def estimate_confusion(
    classifier: CellClassifier, spec: AttributeSpec, profession: str, n: int = 100, seed: int = 0
) -> np.ndarray:
    """The K×K confusion matrix of ``classifier`` over ``spec``'s cells on ``n`` rendered glyphs per cell.

    A cell none of whose glyphs the classifier could classify gets a row of NaN (no evidence of its errors).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = np.random.default_rng(seed)
    glyphs = known_cell_glyphs(spec, profession, n, rng)
    images = [to_pil(image) for image in render_batch(glyphs, rng)]
    predictions = classifier.classify(images, spec)
    labels = predictions.labels.reshape(spec.num_cells, n)
    matrix = np.full((spec.num_cells, spec.num_cells), np.nan)
    for true_cell, row in enumerate(labels):
        valid = row[row >= 0]
        if len(valid):
            matrix[true_cell] = np.bincount(valid, minlength=spec.num_cells) / len(valid)
    return matrix
