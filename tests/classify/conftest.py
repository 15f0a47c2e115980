import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from mist_debias.classify.clip import CLIPImageProcessor
from mist_debias.clip_vocab import write_clip_tokenizer

IMAGE_SIZE = 32


def build_tiny_clip(seed: int = 0) -> CLIPModel:
    """A randomly initialised CLIP small enough for CPU tests (real vocabulary, 32-pixel images)."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIZE,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    return CLIPModel(config).eval()


def save_clip(model: CLIPModel, folder: Path, tokenizer_dir: Path) -> Path:
    """Save ``model`` with a copy of the tokenizer files in ``tokenizer_dir`` and a CLIP image processor."""
    model.save_pretrained(folder)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, folder / file.name)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_factory(tmp_path_factory) -> Callable[[int], Path]:
    """``factory(seed)`` → folder of a saved tiny random CLIP (weights drawn with ``seed``)."""

    tokenizer_dir = write_clip_tokenizer(tmp_path_factory.mktemp("clip-tokenizer"))

    def factory(seed: int) -> Path:
        return save_clip(build_tiny_clip(seed), tmp_path_factory.mktemp(f"tiny-clip-{seed}"), tokenizer_dir)

    return factory


@pytest.fixture(scope="session")
def tiny_clip_dir(tiny_clip_factory) -> Path:
    return tiny_clip_factory(0)
