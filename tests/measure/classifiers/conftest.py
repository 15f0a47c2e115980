"""Fixtures for the real-photograph classifiers: tiny random ViT classifiers saved like a user's model, and a
face drawn with PIL that OpenCV's frontal-face Haar cascade detects."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from transformers import ViTConfig, ViTForImageClassification

try:  # transformers ≥ 5: the PIL backend by its own name.
    from transformers import ViTImageProcessorPil as ViTImageProcessor
except ImportError:
    from transformers import ViTImageProcessor


def build_vit_classifier(labels: Sequence[str], seed: int, folder: Path) -> Path:
    """Save a random-weight 32-pixel ViT image classifier with ``labels`` (safetensors) and its processor."""
    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        id2label=dict(enumerate(labels)),
        label2id={label: index for index, label in enumerate(labels)},
    )
    ViTForImageClassification(config).eval().save_pretrained(str(folder))
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def vit_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Sequence[str], int], Path]:
    """``factory(labels, seed)`` → folder of a saved tiny ViT classifier (built once per arguments)."""
    built: dict[tuple[tuple[str, ...], int], Path] = {}

    def factory(labels: Sequence[str], seed: int = 0) -> Path:
        key = (tuple(labels), seed)
        if key not in built:
            built[key] = build_vit_classifier(labels, seed, tmp_path_factory.mktemp(f"vit-{seed}"))
        return built[key]

    return factory


def draw_face(image: Image.Image, left: int, top: int, size: int) -> None:
    """Draw a frontal face (skin ellipse, dark eyes under brows, lit nose, mouth) in a ``size`` square."""
    draw = ImageDraw.Draw(image)
    s = size / 200

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [left + x0 * s, top + y0 * s, left + x1 * s, top + y1 * s]

    draw.ellipse(box(50, 30, 150, 170), fill=(220, 180, 150))
    for x in (75, 125):
        draw.ellipse(box(x - 14, 72, x + 14, 88), fill=(40, 30, 30))
        draw.rectangle(box(x - 18, 60, x + 18, 66), fill=(70, 50, 40))
    draw.polygon(
        [(left + 100 * s, top + 85 * s), (left + 90 * s, top + 120 * s), (left + 110 * s, top + 120 * s)],
        fill=(200, 160, 130),
    )
    draw.ellipse(box(80, 135, 120, 148), fill=(140, 60, 60))


def face_scene(width: int, height: int, faces: Sequence[tuple[int, int, int]]) -> Image.Image:
    """A plain background with a face drawn in each ``(left, top, size)`` square, softly blurred."""
    image = Image.new("RGB", (width, height), (60, 70, 90))
    for left, top, size in faces:
        draw_face(image, left, top, size)
    return image.filter(ImageFilter.GaussianBlur(2))


@pytest.fixture(scope="session")
def render_faces() -> Callable[[int, int, Sequence[tuple[int, int, int]]], Image.Image]:
    """:func:`face_scene`, for tests."""
    return face_scene
