import numpy as np
import pytest
from PIL import Image

from mist_debias.core.spec import spec_from_cli
from mist_debias.measure.classifiers import CellClassifier, ClassifierError
from mist_debias.measure.classifiers.combined import ProductCellClassifier
from mist_debias.measure.classifiers.hf import HFAxisGroup, HFImageClassifier, LabelMapping

GENDER = ("Male", "Female")
RACE = ("East Asian", "Southeast Asian", "White", "Black", "Indian")
AGE = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")
MAPS = {
    GENDER: ({"gender": {"Male": "man", "Female": "woman"}}, ()),
    RACE: (
        {"race": {"East Asian": "Asian", "Southeast Asian": "Asian", "White": "White", "Black": "Black"}},
        ("Indian",),
    ),
    AGE: ({"age": {label: "young" if i < 5 else "old" for i, label in enumerate(AGE)}}, ()),
}
SPEC = spec_from_cli(["gender=man,woman", "race=Asian,White,Black", "age=young,old"])


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(2)
    return [Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 36, 3), dtype=np.uint8)) for i in range(6)]


@pytest.fixture(scope="module")
def groups(vit_factory) -> list[HFAxisGroup]:
    result = []
    for seed, (labels, (values, ignore)) in enumerate(MAPS.items()):
        folder = str(vit_factory(labels, seed=10 + seed))
        result.append(HFAxisGroup(HFImageClassifier.load(folder), LabelMapping(folder, labels, values, ignore)))
    return result


def axis_probabilities(group, images) -> np.ndarray:
    """The group's value distribution computed by hand from its label probabilities (sum, then renormalise)."""
    p = group.classifier.label_probabilities(images)
    labels = group.classifier.labels
    (axis,) = group.mapping.values
    values = SPEC.axis(axis).values
    sums = np.stack(
        [
            p[:, [labels.index(label) for label, v in group.mapping.values[axis].items() if v == value]].sum(1)
            for value in values
        ],
        axis=1,
    )
    return sums / sums.sum(axis=1, keepdims=True)


def test_joint_is_the_product_of_the_axes_and_its_marginals_are_the_axes(groups, images):
    classifier = ProductCellClassifier(groups)
    assert isinstance(classifier, CellClassifier)
    predictions = classifier.classify(images, SPEC)
    per_axis = {
        axis: axis_probabilities(group, images) for group, axis in zip(groups, ("gender", "race", "age"), strict=True)
    }
    for k, cell in enumerate(SPEC.cells):
        expected = np.prod([per_axis[a.name][:, a.index(cell.value(a.name))] for a in SPEC.axes], axis=0)
        np.testing.assert_allclose(predictions.probs[:, k], expected, rtol=1e-12)
    np.testing.assert_allclose(predictions.probs.sum(axis=1), 1.0, atol=1e-12)
    for axis, expected in per_axis.items():
        np.testing.assert_allclose(SPEC.marginalize(predictions.probs, axis), expected, atol=1e-12)
    assert predictions.valid.all()
    # The hard label is the cell of every axis's own arg-max.
    for row, label in enumerate(predictions.labels):
        wanted = {a.name: a.values[per_axis[a.name][row].argmax()] for a in SPEC.axes}
        assert label == SPEC.cell_index(wanted)


def test_group_order_does_not_matter(groups, images):
    forward = ProductCellClassifier(groups).classify(images, SPEC).probs
    backward = ProductCellClassifier(groups[::-1]).classify(images, SPEC).probs
    np.testing.assert_allclose(forward, backward, rtol=1e-12)


def test_no_images_give_empty_predictions(groups):
    predictions = ProductCellClassifier(groups).classify([], SPEC)
    assert predictions.probs.shape == (0, SPEC.num_cells) and predictions.valid.shape == (0,)


def test_an_axis_without_a_classifier_or_with_two_is_refused(groups, images):
    with pytest.raises(ClassifierError, match="no classifier for axis 'age'"):
        ProductCellClassifier(groups[:2]).classify(images, SPEC)
    with pytest.raises(ClassifierError, match="axis 'gender' has more than one classifier"):
        ProductCellClassifier([groups[0], *groups]).check(SPEC)
    with pytest.raises(ClassifierError, match="at least one"):
        ProductCellClassifier([])
