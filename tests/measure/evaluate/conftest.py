"""Fixtures for evaluation tests: a tiny saved SD1 pipeline, a real MIST edit of it, a colour classifier."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.utils import logging as diffusers_logging

from mist_debias.core.edit import Edit
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.core.pipeline import load_pipeline
from mist_debias.core.solve import EditHyperparameters
from mist_debias.core.spec import AttributeSpec
from mist_debias.core.targets import ConceptPrompts, EditProblem
from mist_debias.core.text import PromptEncoder
from mist_debias.measure.classifiers.base import CellPredictions
from mist_debias.testing import build_pipeline, save_pipeline

diffusers_logging.disable_progress_bar()

SAMPLER = ["--steps", "2", "--height", "32", "--width", "32", "--batch-size", "4", "--guidance", "7.5"]


class StripeClassifier:
    """Deterministic stand-in classifier: the image is cut into K vertical stripes and cell j's logit is
    stripe j's mean brightness minus the image's (in grey levels, times ``sharpness``); images whose pixels all
    have one value are invalid. Random-weight models give varied, reproducible labels."""

    def __init__(self, sharpness: float = 0.5) -> None:
        self.sharpness = sharpness
        self.images_seen = 0

    def classify(self, images, spec: AttributeSpec) -> CellPredictions:
        self.images_seen += len(images)
        k = spec.num_cells
        arrays = [np.asarray(image.convert("L"), dtype=np.float64) for image in images]
        logits = np.array([[s.mean() - a.mean() for s in np.array_split(a, k, axis=1)] for a in arrays])
        probs = np.exp(self.sharpness * (logits - logits.max(axis=1, keepdims=True)))
        probs /= probs.sum(axis=1, keepdims=True)
        valid = np.array([a.std() > 0 for a in arrays])
        return CellPredictions(probs=np.where(valid[:, None], probs, 0.0), valid=valid)


@pytest.fixture(scope="session")
def stripes() -> type[StripeClassifier]:
    """The stand-in classifier class (call it for a fresh instance)."""
    return StripeClassifier


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the tiny UNet is far faster so on a shared two-core machine, and runs match the
    one-thread processes that ``torchrun`` starts."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A saved random-weight SD1 pipeline folder."""
    return save_pipeline(build_pipeline("sd1", seed=7), tmp_path_factory.mktemp("evaluate") / "sd1")


def solve_edit(model: Path, concept: str, weights: tuple[float, float], out: Path) -> Path:
    """A real MIST edit of ``concept`` toward "a photo of a man"/"a photo of a woman", saved to ``out``."""
    pipe = load_pipeline(model, device="cpu")
    layers = find_cross_attention_projections(pipe.unet)
    attributes = ("a photo of a man", "a photo of a woman")
    problem = EditProblem(
        PromptEncoder(pipe), [ConceptPrompts(concept, attributes)], hparams=EditHyperparameters(lam=0.5)
    )
    update = problem.solve({p.name: p.module.weight.detach() for p in layers}, [list(weights)])
    info = {
        "base_model": str(model),
        "method": "mist",
        "concepts": [{"prompt": concept, "attributes": list(attributes), "weights": list(weights)}],
    }
    return Edit.from_update(update, layers, info).save(out)


@pytest.fixture(scope="session")
def foreign_edit(tmp_path_factory) -> Path:
    """An edit solved on another random model (a different base-model fingerprint)."""
    root = tmp_path_factory.mktemp("foreign")
    other = save_pipeline(build_pipeline("sd1", seed=99), root / "model")
    return solve_edit(other, "a photo of a doctor", (1.0, -1.0), root / "foreign.safetensors")


@pytest.fixture(scope="session")
def doctor_edit(tiny_model, tmp_path_factory) -> Path:
    """A strong edit of "a photo of a doctor" (weights large enough to change the tiny model's images)."""
    out = tmp_path_factory.mktemp("edit") / "doctor.safetensors"
    return solve_edit(tiny_model, "a photo of a doctor", (4.0, -4.0), out)


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    """A small prompt set: two doctor prompts, one teacher prompt, one scene."""
    path = tmp_path_factory.mktemp("prompts") / "prompts.csv"
    rows = [
        ("a photo of a doctor", "doctor"),
        ("a portrait of a doctor", "doctor"),
        ("a photo of a teacher", "teacher"),
        ("a snowy forest in winter", "non-person"),
    ]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "concept"])
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """A saved random-weight CLIP model (real tokenizer, 32-pixel images) usable as ``--classifier``."""
    from transformers import CLIPConfig, CLIPModel

    from mist_debias.core.clip_vocab import write_clip_tokenizer
    from mist_debias.measure.classifiers.clip import CLIPImageProcessor

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    text = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    text |= {"num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": 49406}
    text |= {"eos_token_id": 49407, "pad_token_id": 49407}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4}
    vision |= {"image_size": 32, "patch_size": 8}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    write_clip_tokenizer(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
