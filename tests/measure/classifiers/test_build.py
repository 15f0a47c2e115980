import numpy as np
import pytest
from PIL import Image

from mist_debias.core.spec import AttributeSpec, spec_from_cli
from mist_debias.measure.classifiers import ClassifierError, CLIPCellClassifier
from mist_debias.measure.classifiers import build as build_module
from mist_debias.measure.classifiers.build import build_classifier, parse_classifier_spec
from mist_debias.measure.classifiers.combined import ProductCellClassifier
from mist_debias.measure.classifiers.face_gate import FaceGatedClassifier
from mist_debias.measure.classifiers.hf import HFImageClassifier

GENDER = ("Male", "Female")
JOINT = ("Male_Asian", "Female_Asian", "Male_White", "Female_White")
GENDER_MAP = {"gender": {"Male": "man", "Female": "woman"}}
SPEC = spec_from_cli(["gender=man,woman"])
SPEC2 = spec_from_cli(["gender=man,woman", "race=Asian,White"])


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)) for _ in range(4)]


@pytest.fixture
def load_calls(monkeypatch) -> list[str]:
    """Every HFImageClassifier.load call's model, in order (the loads still happen)."""
    calls: list[str] = []
    original = HFImageClassifier.load.__func__

    def spy(cls, path_or_id, *args, **kwargs):
        calls.append(path_or_id)
        return original(cls, path_or_id, *args, **kwargs)

    monkeypatch.setattr(HFImageClassifier, "load", classmethod(spy))
    return calls


def test_one_hf_model_without_gate_is_its_mapped_distribution(vit_factory, images):
    folder = str(vit_factory(GENDER))
    classifier = build_classifier(
        {"type": "hf", "model": folder, "labels": GENDER_MAP, "face_gate": False}, SPEC, "cpu"
    )
    assert isinstance(classifier, ProductCellClassifier)
    expected = HFImageClassifier.load(folder).label_probabilities(images)
    np.testing.assert_allclose(classifier.classify(images, SPEC).probs, expected, rtol=1e-12)


def test_each_model_is_loaded_once_however_many_axes_it_serves(vit_factory, images, load_calls):
    joint = str(vit_factory(JOINT, seed=5))
    entries = [
        {
            "model": joint,
            "labels": {"gender": {label: {"Male": "man", "Female": "woman"}[label[:-6]] for label in JOINT}},
        },
        {"model": joint, "labels": {"race": {label: label.split("_")[1] for label in JOINT}}},
    ]
    classifier = build_classifier({"type": "hf", "models": entries, "face_gate": False}, SPEC2)
    assert load_calls == [joint]
    (group,) = classifier.groups
    assert group.ordered_axes(SPEC2) == ("gender", "race")
    probs = classifier.classify(images, SPEC2).probs
    label_probs = group.classifier.label_probabilities(images)
    cells = [SPEC2.cell_index({"gender": g, "race": r}) for r in ("Asian", "White") for g in ("man", "woman")]
    np.testing.assert_allclose(probs[:, cells], label_probs, rtol=1e-12)


def test_a_model_per_axis_loads_each_once(vit_factory, images, load_calls):
    gender, race = str(vit_factory(GENDER)), str(vit_factory(("Asian", "White"), seed=6))
    entries = [
        {"model": gender, "labels": GENDER_MAP},
        {"model": race, "labels": {"race": {"Asian": "Asian", "White": "White"}}},
    ]
    classifier = build_classifier({"type": "hf", "models": entries, "face_gate": False}, [SPEC2, SPEC2])
    assert sorted(load_calls) == sorted([gender, race])
    predictions = classifier.classify(images, SPEC2)
    np.testing.assert_allclose(predictions.probs.sum(axis=1), 1.0, atol=1e-12)


def test_a_cell_without_labels_is_refused_before_any_weights_load(vit_factory, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("weights loaded before the mapping was checked")

    monkeypatch.setattr(HFImageClassifier, "load", no_loading)
    folder = str(vit_factory(GENDER))
    config = {"type": "hf", "model": folder, "labels": {"gender": {"Male": "man", "Female": "man"}}, "face_gate": False}
    with pytest.raises(ClassifierError) as error:
        build_classifier(config, SPEC)
    assert str(error.value) == (
        f"the label mapping leaves cell 'woman' without labels: no label of {folder} maps to gender=woman"
    )
    # Every concept's spec is checked: the second lacks a classifier for race.
    good = {**config, "labels": GENDER_MAP}
    with pytest.raises(ClassifierError, match="no classifier for axis 'race'"):
        build_classifier(good, [SPEC, SPEC2])


def test_gate_settings_are_passed_on_and_a_missing_detector_fails_before_loading(vit_factory, monkeypatch):
    folder = str(vit_factory(GENDER))
    config = {"type": "hf", "model": folder, "labels": GENDER_MAP, "face_gate": {"crop": False, "margin": 0.5}}
    classifier = build_classifier(config, SPEC)
    assert isinstance(classifier, FaceGatedClassifier)
    assert (classifier.crop, classifier.margin) == (False, 0.5)
    assert isinstance(build_classifier({**config, "face_gate": True}, SPEC), FaceGatedClassifier)
    monkeypatch.setattr(HFImageClassifier, "load", None)
    monkeypatch.setattr(build_module, "HaarFaceDetector", _missing_opencv)
    with pytest.raises(ClassifierError, match="needs OpenCV"):
        build_classifier({"type": "hf", "model": folder, "labels": GENDER_MAP}, SPEC)  # the gate is on by default


def _missing_opencv(**kwargs):
    raise ClassifierError("the face gate needs OpenCV: pip install ...")


def test_clip_type_builds_the_zero_shot_classifier(tiny_clip_dir):
    classifier = build_classifier({"type": "clip", "model": str(tiny_clip_dir), "mode": "per-axis"}, SPEC2)
    assert isinstance(classifier, CLIPCellClassifier) and classifier.mode == "per-axis"
    with pytest.raises(ClassifierError, match=r"classifier.mode per-axis needs attributes built from axes"):
        build_classifier(
            {"type": "clip", "model": str(tiny_clip_dir), "mode": "per-axis"}, AttributeSpec.from_phrases(["a", "b"])
        )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("hf", "classifier.drive must be a mapping with a type (hf, clip)"),
        ({"model": "m"}, "classifier.drive.type must be one of hf, clip, got None"),
        ({"type": "vit"}, "classifier.drive.type must be one of hf, clip, got 'vit'"),
        ({"type": "hf", "modle": "m", "labels": GENDER_MAP}, "classifier.drive.modle: Extra inputs are not permitted"),
        ({"type": "hf"}, "classifier.drive: give model + labels, or models"),
        ({"type": "hf", "model": "m"}, "classifier.drive: model and labels go together"),
        (
            {"type": "hf", "model": "m", "labels": GENDER_MAP, "models": [{"model": "m", "labels": GENDER_MAP}]},
            "classifier.drive: give either model + labels or models, not both",
        ),
        (
            {"type": "hf", "model": "m", "labels": GENDER_MAP, "batch_size": 0},
            "classifier.drive.batch_size: Input should be greater than 0",
        ),
        (
            {"type": "hf", "model": "m", "labels": GENDER_MAP, "face_gate": {"margin": -1}},
            "classifier.drive.face_gate.margin: Input should be greater than or equal to 0",
        ),
        ({"type": "clip", "mode": "both"}, "classifier.drive.mode: Input should be 'joint' or 'per-axis'"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(config, message):
    with pytest.raises(ClassifierError) as error:
        parse_classifier_spec(config, "classifier.drive")
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_an_axis_mapped_twice_for_one_model_is_refused():
    entries = [{"model": "m", "labels": GENDER_MAP}, {"model": "m", "labels": GENDER_MAP}]
    with pytest.raises(ClassifierError, match="axis 'gender' is mapped twice for m"):
        build_classifier({"type": "hf", "models": entries, "face_gate": False}, SPEC)


def test_built_hf_classifier_behind_the_gate_classifies_only_the_one_face_image(vit_factory, render_faces):
    folder = str(vit_factory(GENDER))
    classifier = build_classifier({"type": "hf", "model": folder, "labels": GENDER_MAP}, SPEC)
    images = [
        render_faces(256, 256, [(28, 28, 200)]),
        render_faces(256, 256, []),
        render_faces(512, 256, [(20, 28, 200), (290, 28, 200)]),
    ]
    predictions = classifier.classify(images, SPEC)
    np.testing.assert_array_equal(predictions.valid, [True, False, False])
    (face,) = classifier.detector.detect(images[0])
    crop = images[0].crop(face.with_margin(0.25, images[0].size))
    expected = HFImageClassifier.load(folder).label_probabilities([crop])
    np.testing.assert_allclose(predictions.probs[:1], expected, rtol=1e-12)
    np.testing.assert_array_equal(predictions.probs[1:], 0.0)


def test_a_parsed_spec_round_trips_through_json_for_run_folders():
    from pydantic import TypeAdapter

    from mist_debias.measure.classifiers.build import ClassifierSpec

    adapter = TypeAdapter(ClassifierSpec)
    for data in (
        {"type": "hf", "model": "m", "labels": GENDER_MAP, "ignore": ["x"], "face_gate": {"margin": 0.5}},
        {"type": "hf", "models": [{"model": "m", "labels": GENDER_MAP}], "face_gate": False},
        {"type": "clip", "model": "c", "mode": "per-axis", "face_gate": True},
    ):
        spec = adapter.validate_python(data)
        assert spec == parse_classifier_spec(data)
        assert adapter.validate_python(adapter.dump_python(spec, mode="json")) == spec
    assert parse_classifier_spec({"type": "clip", "face_gate": True}).face_gate.margin == 0.25
    assert parse_classifier_spec({"type": "hf", "model": "m", "labels": GENDER_MAP}).face_gate is not None
    assert parse_classifier_spec({"type": "clip"}).face_gate is None
