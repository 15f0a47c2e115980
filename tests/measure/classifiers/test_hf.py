import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, ViTForImageClassification

from mist_debias.core.spec import AttributeSpec, spec_from_cli
from mist_debias.measure.classifiers import ClassifierError
from mist_debias.measure.classifiers.hf import HFAxisGroup, HFImageClassifier, LabelMapping, read_labels

RACE_LABELS = ("East Asian", "Southeast Asian", "White", "Black", "Indian")
RACE_MAP = {"race": {"East Asian": "Asian", "Southeast Asian": "Asian", "White": "White", "Black": "Black"}}
SPEC = spec_from_cli(["gender=man,woman", "race=Asian,White,Black"])


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(1)
    sizes = [(48, 40), (32, 32), (64, 80), (40, 40), (33, 57)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


def forward_probs(folder, images) -> np.ndarray:
    """softmax of the model's own forward pass, float64."""
    model = ViTForImageClassification.from_pretrained(str(folder)).eval()
    pixels = AutoImageProcessor.from_pretrained(str(folder))(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return torch.softmax(model(pixel_values=pixels).logits.double(), dim=1).numpy()


def test_read_labels_is_id2label_in_logit_order(vit_factory):
    assert read_labels(str(vit_factory(RACE_LABELS))) == RACE_LABELS


def test_label_probabilities_match_the_model_forward_in_batches(vit_factory, images):
    folder = vit_factory(RACE_LABELS)
    classifier = HFImageClassifier.load(str(folder), batch_size=2)
    assert classifier.labels == RACE_LABELS
    np.testing.assert_allclose(classifier.label_probabilities(images), forward_probs(folder, images), atol=1e-6)
    assert classifier.label_probabilities([]).shape == (0, len(RACE_LABELS))


def test_labels_mapped_to_one_value_are_summed_and_ignored_ones_renormalised_away(vit_factory, images):
    folder = vit_factory(RACE_LABELS)
    mapping = LabelMapping(str(folder), RACE_LABELS, RACE_MAP, ignore=("Indian",))
    group = HFAxisGroup(HFImageClassifier.load(str(folder)), mapping)
    p = forward_probs(folder, images)
    kept = p[:, :4].sum(axis=1)
    expected = np.stack([(p[:, 0] + p[:, 1]) / kept, p[:, 2] / kept, p[:, 3] / kept], axis=1)
    assert group.ordered_axes(SPEC) == ("race",)
    np.testing.assert_allclose(group.joint_probabilities(images, SPEC), expected, atol=1e-6)


def test_a_joint_label_model_keeps_its_joint_distribution(vit_factory, images):
    labels = ("Male_Asian", "Female_Asian", "Male_White", "Female_White", "Male_Black", "Female_Black")
    folder = vit_factory(labels, seed=3)
    values = {
        "race": {label: label.split("_")[1] for label in labels},
        "gender": {label: {"Male": "man", "Female": "woman"}[label.split("_")[0]] for label in labels},
    }
    group = HFAxisGroup(HFImageClassifier.load(str(folder)), LabelMapping(str(folder), labels, values))
    p = forward_probs(folder, images)
    joint = group.joint_probabilities(images, SPEC)
    assert group.ordered_axes(SPEC) == ("gender", "race")  # the spec's order, not the mapping's
    assert joint.shape == (len(images), 2, 3)
    np.testing.assert_allclose(joint[:, 0, :], p[:, [0, 2, 4]], atol=1e-6)
    np.testing.assert_allclose(joint[:, 1, :], p[:, [1, 3, 5]], atol=1e-6)


@pytest.mark.parametrize(
    ("values", "ignore", "message"),
    [
        ({"race": {"Asian": "Asian"}}, (), r"has no label 'Asian' \(its labels: East Asian, Southeast Asian,"),
        (RACE_MAP, (), "label 'Indian' of m is not mapped"),
        (RACE_MAP, ("Indian", "White"), "label 'White' of m is both mapped and ignored"),
        ({}, (), "no label mapping for m"),
        ({"race": {}}, RACE_LABELS, "every label of m is ignored"),
        (
            {"race": {label: "White" for label in RACE_LABELS}, "gender": {"White": "man"}},
            (),
            "label 'East Asian' of m is mapped on race but not on gender",
        ),
    ],
)
def test_a_mapping_that_does_not_fit_the_model_is_refused(values, ignore, message):
    with pytest.raises(ClassifierError, match=message):
        LabelMapping("m", RACE_LABELS, values, ignore)


def test_a_cell_without_labels_is_refused_naming_the_cell():
    mapping = LabelMapping("m", RACE_LABELS, {"race": {label: "White" for label in RACE_LABELS}})
    with pytest.raises(ClassifierError) as error:
        mapping.check(SPEC)
    assert str(error.value) == (
        "the label mapping leaves cell 'Asian man' without labels: no label of m maps to race=Asian"
    )


def test_a_joint_combination_without_labels_is_refused_naming_the_cell():
    labels = ("Male_Asian", "Female_Asian", "Male_White")
    values = {
        "gender": {"Male_Asian": "man", "Female_Asian": "woman", "Male_White": "man"},
        "race": {"Male_Asian": "Asian", "Female_Asian": "Asian", "Male_White": "White"},
    }
    spec = spec_from_cli(["gender=man,woman", "race=Asian,White"])
    with pytest.raises(ClassifierError, match=r"leaves cell 'White woman' without labels: .* gender=woman, race=White"):
        LabelMapping("m", labels, values).check(spec)


@pytest.mark.parametrize(
    ("values", "spec", "message"),
    [
        ({"race": {label: "white" for label in RACE_LABELS[:4]}}, SPEC, r"maps to race='white', not a value of race"),
        ({"skin": {label: "light" for label in RACE_LABELS[:4]}}, SPEC, "axis 'skin', which the spec lacks"),
        (RACE_MAP, AttributeSpec.from_phrases(["doctor", "nurse"]), "explicit cells"),
    ],
)
def test_a_mapping_that_does_not_fit_the_spec_is_refused(values, spec, message):
    with pytest.raises(ClassifierError, match=message):
        LabelMapping("m", RACE_LABELS, values, ignore=("Indian",)).check(spec)


def test_loading_errors_are_one_line(tmp_path, vit_factory):
    with pytest.raises(ClassifierError, match=r"^image-classification model not found: .*missing$") as error:
        read_labels(str(tmp_path / "missing"))
    assert "\n" not in str(error.value)
    # A folder whose weights are only a pickle: refused (safetensors only), never unpickled.
    folder = vit_factory(RACE_LABELS)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (pickled / name).write_bytes((folder / name).read_bytes())
    torch.save(ViTForImageClassification.from_pretrained(str(folder)).state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ClassifierError, match=r"^cannot load image classifier .*pickled") as error:
        HFImageClassifier.load(str(pickled))
    assert "\n" not in str(error.value)
