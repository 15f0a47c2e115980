import numpy as np
import pytest

from mist_debias.core.spec import AttributeSpec, Axis, Cell
from mist_debias.measure.classifiers.base import CellClassifier
from mist_debias.world.bias import sample_attributes
from mist_debias.world.oracle import WorldDecoder, WorldOracle, cell_constraints, decode_rate
from mist_debias.world.render import HAIR_COLORS, Attributes, render, render_batch, to_pil


def _axis_spec(*axes: Axis) -> AttributeSpec:
    import itertools

    cells = tuple(
        Cell(" ".join(values), tuple(zip([a.name for a in axes], values, strict=True)))
        for values in itertools.product(*(a.values for a in axes))
    )
    return AttributeSpec(cells=cells, target=tuple([1 / len(cells)] * len(cells)), axes=axes)


def test_decodes_clean_renders_exactly():
    rng = np.random.default_rng(2024)
    people = sample_attributes(1200, rng)
    decoded = WorldDecoder().decode(render_batch(people, rng))
    accuracy = np.mean([item.attributes == person for item, person in zip(decoded, people, strict=True)])
    assert accuracy >= 0.995
    assert decode_rate(decoded) >= 0.995


def test_blank_and_garbage_images_are_not_decoded():
    rng = np.random.default_rng(0)
    images = np.concatenate(
        [
            np.zeros((1, 32, 32, 3), np.uint8),
            np.full((1, 32, 32, 3), 255, np.uint8),
            np.tile(np.array([40, 110, 225], np.uint8), (1, 32, 32, 1)),  # pure doctor background
            rng.integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8),
        ]
    )
    decoded = WorldDecoder().decode(images)
    assert all(not item.ok for item in decoded)
    assert all(item.reason for item in decoded)


def test_damaged_glyph_is_not_guessed():
    rng = np.random.default_rng(5)
    image = render(Attributes("woman", "White", "young", "lawyer"), rng)
    # half the hair recoloured as old hair: the age vote has no clear majority
    decoder = WorldDecoder()
    labels = decoder.pixel_labels(image[None])[0]
    hair = np.argwhere(labels == decoder.names.index("hair:young"))
    damaged = image.copy()
    for row, col in hair[::2]:
        damaged[row, col] = HAIR_COLORS["old"]
    result = decoder.decode(damaged[None])[0]
    assert not result.ok and result.reason.startswith("hair")


def test_oracle_is_a_cell_classifier_on_axes():
    oracle = WorldOracle()
    assert isinstance(oracle, CellClassifier)
    people = [
        Attributes("man", "White", "old", "doctor"),
        Attributes("woman", "Black", "young", "nurse"),
        Attributes("woman", "Asian", "old", "CEO"),
    ]
    images = [to_pil(im) for im in render_batch(people, np.random.default_rng(1))]
    spec = _axis_spec(Axis("gender", ("male", "female")), Axis("race", ("white", "ASIAN", "Black")))
    predictions = oracle.classify(images, spec)
    assert predictions.valid.all()
    assert [spec.cells[j].phrase for j in predictions.labels] == ["male white", "female Black", "female ASIAN"]
    np.testing.assert_array_equal(predictions.probs.sum(axis=1), 1.0)


def test_explicit_cells_and_unmatched_images():
    people = [
        Attributes("woman", "Black", "young", "nurse"),
        Attributes("man", "Asian", "old", "chef"),
        Attributes("woman", "White", "old", "artist"),
    ]
    images = [to_pil(im) for im in render_batch(people, np.random.default_rng(4))]
    spec = AttributeSpec(cells=(Cell("young Black woman"), Cell("old Asian man")), target=(0.5, 0.5))
    predictions = WorldOracle().classify(images, spec)
    assert predictions.labels.tolist() == [0, 1, -1]
    assert predictions.valid.tolist() == [True, True, False]
    np.testing.assert_array_equal(predictions.counts(), [1, 1])


def test_overlapping_explicit_cells_share_the_image():
    image = to_pil(render(Attributes("woman", "Asian", "young", "teacher"), np.random.default_rng(0)))
    spec = AttributeSpec(cells=(Cell("woman"), Cell("young person")), target=(0.5, 0.5))
    np.testing.assert_allclose(WorldOracle().classify([image], spec).probs, [[0.5, 0.5]])


def test_cell_constraints_parsing_and_errors():
    assert cell_constraints(Cell("an old White male")) == {"age": "old", "race": "White", "gender": "man"}
    assert cell_constraints(Cell("x", (("Gender", "Female"),))) == {"gender": "woman"}
    with pytest.raises(ValueError, match="names no attribute"):
        cell_constraints(Cell("with eyeglasses"))
    with pytest.raises(ValueError, match="two values"):
        cell_constraints(Cell("young old man"))
    with pytest.raises(ValueError, match="axes"):
        cell_constraints(Cell("x", (("eyeglasses", "with"),)))
    with pytest.raises(ValueError, match="cannot recognise"):
        cell_constraints(Cell("x", (("race", "Latino"),)))


def test_undecodable_images_are_invalid_rows():
    spec = _axis_spec(Axis("gender", ("man", "woman")))
    blank = to_pil(np.zeros((32, 32, 3), np.uint8))
    predictions = WorldOracle().classify([blank], spec)
    assert predictions.valid.tolist() == [False]
    assert predictions.probs.sum() == 0
