import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mist_debias.core.spec import spec_from_cli
from mist_debias.measure.classifiers import CellClassifier, ClassifierError, CLIPCellClassifier

TEMPLATES = ("a photo of {a} {phrase}", "a headshot of {a} {phrase}")


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    sizes = [(48, 40), (32, 32), (64, 80), (40, 40), (33, 57)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]


@pytest.fixture(scope="module")
def spec():
    return spec_from_cli(["gender=man,woman", "race=Asian,White,Black", "age=young,old"])


@pytest.fixture(scope="module")
def joint(tiny_clip_dir) -> CLIPCellClassifier:
    return CLIPCellClassifier.load(str(tiny_clip_dir))


@pytest.fixture(scope="module")
def per_axis(tiny_clip_dir) -> CLIPCellClassifier:
    return CLIPCellClassifier.load(str(tiny_clip_dir), mode="per-axis")


def clip_forward_probs(classifier, images, texts):
    """Probabilities from CLIPModel's own forward pass (logits_per_image), softmax over texts."""
    tokens = classifier.tokenizer(texts, padding=True, return_tensors="pt")
    pixels = classifier.image_processor(images=[i.convert("RGB") for i in images], return_tensors="pt")
    with torch.no_grad():
        out = classifier.model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            pixel_values=pixels["pixel_values"],
        )
    return out.logits_per_image.double().softmax(dim=1).numpy()


def test_protocol_shape_and_sums(joint, per_axis, images, spec):
    for classifier in (joint, per_axis):
        assert isinstance(classifier, CellClassifier)
        predictions = classifier.classify(images, spec)
        assert predictions.probs.shape == (len(images), spec.num_cells)
        assert predictions.valid.all()
        np.testing.assert_array_equal(predictions.labels, predictions.probs.argmax(axis=1))
        np.testing.assert_allclose(predictions.probs.sum(axis=1), 1.0, atol=1e-12)
        assert predictions.counts().sum() == len(images)


def test_joint_matches_clip_forward(joint, images, spec):
    expected = clip_forward_probs(joint, images, [f"a photo of {p}" for p in _with_articles(spec.phrases)])
    np.testing.assert_allclose(joint.classify(images, spec).probs, expected, atol=1e-5)


def test_per_axis_matches_clip_forward_and_is_a_product(per_axis, images, spec):
    probs = per_axis.classify(images, spec).probs
    value_texts = {
        "gender": ["a photo of a man", "a photo of a woman"],
        "race": ["a photo of an Asian person", "a photo of a White person", "a photo of a Black person"],
        "age": ["a photo of a young person", "a photo of an old person"],
    }
    marginals = {axis: clip_forward_probs(per_axis, images, texts) for axis, texts in value_texts.items()}
    for axis, expected in marginals.items():
        np.testing.assert_allclose(spec.marginalize(probs, axis), expected, atol=1e-5)
    for k, cell in enumerate(spec.cells):
        product = np.prod([marginals[a.name][:, a.index(cell.value(a.name))] for a in spec.axes], axis=0)
        np.testing.assert_allclose(probs[:, k], product, atol=1e-5)


def test_template_ensembling(tiny_clip_dir, images):
    classifier = CLIPCellClassifier.load(str(tiny_clip_dir), templates=TEMPLATES)
    spec = spec_from_cli(cells=["old man", "young woman", "engineer"])
    tokens = classifier.tokenizer(
        [t.format(a=a, phrase=p) for p, a in zip(spec.phrases, ["an", "a", "an"], strict=True) for t in TEMPLATES],
        padding=True,
        return_tensors="pt",
    )
    pixels = classifier.image_processor(images=[i.convert("RGB") for i in images], return_tensors="pt")
    with torch.no_grad():
        text = classifier.model(**tokens, pixel_values=pixels["pixel_values"]).text_embeds.double()
        image = classifier.model(**tokens, pixel_values=pixels["pixel_values"]).image_embeds.double()
    mean = text.reshape(3, 2, -1).mean(dim=1)
    mean = mean / mean.norm(dim=1, keepdim=True)
    logits = classifier.logit_scale * image @ mean.T
    np.testing.assert_allclose(classifier.classify(images, spec).probs, logits.softmax(dim=1).numpy(), atol=1e-5)


def _with_articles(phrases):
    return [("an " if p[0].lower() in "aeiou" else "a ") + p for p in phrases]


def _steer_to(classifier: CLIPCellClassifier, phrase: str) -> None:
    """Make every image's CLIP embedding equal the text embedding of ``phrase``.

    The vision tower's final LayerNorm gets weight 0 and bias b, so its pooled output is b for every image;
    the visual projection P = t bᵀ / (bᵀb) then maps it to the target text direction t.
    """
    target = classifier.text_embeddings([phrase])[0]
    vision = classifier.model.vision_model
    bias = torch.linspace(-1.0, 1.0, vision.post_layernorm.bias.numel())
    with torch.no_grad():
        vision.post_layernorm.weight.zero_()
        vision.post_layernorm.bias.copy_(bias)
        classifier.model.visual_projection.weight.copy_(torch.outer(target, bias) / bias.dot(bias))


@pytest.mark.parametrize("cell", ["old Black woman", "young Asian man"])
def test_steered_model_picks_the_known_cell(tiny_clip_dir, images, spec, cell):
    classifier = CLIPCellClassifier.load(str(tiny_clip_dir))
    _steer_to(classifier, cell)
    predictions = classifier.classify(images, spec)
    assert (predictions.labels == spec.phrases.index(cell)).all()
    # cos = 1 for the steered phrase, so its logit is exactly the logit scale.
    np.testing.assert_allclose(classifier.logits(images[:1], [cell])[0, 0], classifier.logit_scale, rtol=1e-5)


def test_steered_per_axis_picks_the_known_value(tiny_clip_dir, images, spec):
    classifier = CLIPCellClassifier.load(str(tiny_clip_dir), mode="per-axis")
    _steer_to(classifier, "woman")
    probs = classifier.classify(images, spec).probs
    gender = spec.marginalize(probs, "gender")
    assert (gender[:, 1] > gender[:, 0]).all()


def test_batching_and_determinism(tiny_clip_dir, joint, images, spec):
    small = CLIPCellClassifier.load(str(tiny_clip_dir), batch_size=2)
    reference = joint.classify(images, spec).probs
    np.testing.assert_allclose(small.classify(images, spec).probs, reference, atol=1e-6)
    np.testing.assert_array_equal(joint.classify(images, spec).probs, reference)
    fresh = CLIPCellClassifier.load(str(tiny_clip_dir))
    np.testing.assert_array_equal(fresh.classify(images, spec).probs, reference)


def test_bfloat16(tiny_clip_dir, images, spec):
    classifier = CLIPCellClassifier.load(str(tiny_clip_dir), dtype=torch.bfloat16)
    assert classifier.dtype == torch.bfloat16
    probs = classifier.classify(images, spec).probs
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)


def test_empty_batch(joint, spec):
    predictions = joint.classify([], spec)
    assert predictions.probs.shape == (0, spec.num_cells)


def test_per_axis_needs_axes(per_axis, images):
    with pytest.raises(ClassifierError, match="needs a spec built from axes"):
        per_axis.classify(images, spec_from_cli(cells=["man", "woman"]))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "marginal"}, "unknown classifier mode"),
        ({"templates": ("a photo of {concept}",)}, "bad template"),
        ({"templates": ()}, "at least one text template"),
        ({"batch_size": 0}, "batch size"),
    ],
)
def test_bad_settings(joint, settings, message):
    with pytest.raises(ClassifierError, match=message):
        CLIPCellClassifier(joint.model, joint.tokenizer, joint.image_processor, **settings)


def test_not_a_clip_model(tmp_path, tiny_clip_dir):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_clip_dir / "config.json").read_text())
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"not a model")
    cases = {
        str(bert): "is not a CLIP model: its config says model_type 'bert'",
        str(tmp_path / "empty"): "cannot load CLIP model",
        str(a_file): "is not a CLIP model: no config.json",
        str(no_weights): "cannot load CLIP model",
    }
    (tmp_path / "empty").mkdir()
    cases[str(tmp_path / "empty")] = "is not a CLIP model: no config.json"
    cases[str(tmp_path / "missing" / "folder")] = "^CLIP model not found: .*missing/folder$"
    for path, message in cases.items():
        with pytest.raises(ClassifierError, match=message) as info:
            CLIPCellClassifier.load(path)
        assert "\n" not in str(info.value)


def test_loading_is_quiet_and_needs_no_torchvision(tiny_clip_dir, capfd):
    CLIPCellClassifier.load(str(tiny_clip_dir))
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert "torchvision" not in sys.modules


def test_other_random_model_gives_other_probabilities(tiny_clip_factory, joint, images, spec):
    other = CLIPCellClassifier.load(str(tiny_clip_factory(1)))
    assert not np.allclose(other.classify(images, spec).probs, joint.classify(images, spec).probs, atol=1e-3)
