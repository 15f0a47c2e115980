import json

import torch
from transformers import CLIPModel

from mist_debias.world.bundled import (
    WORLD_ETA,
    WORLD_GUIDANCE,
    bundled_world_clip_path,
    bundled_world_dir,
    bundled_world_path,
)
from mist_debias.world.models import WorldConfig, build_sample_scheduler
from mist_debias.world.oracle import WorldDecoder
from mist_debias.world.quality import generate, load_world
from mist_debias.world.train import training_manifest


def test_bundled_world_generates_decodable_images_of_the_prompt():
    pipeline = load_world(bundled_world_path())
    assert pipeline.unet.dtype == torch.float32
    prompt = "a photo of a CEO"
    images = generate(pipeline, prompt, num_images=16, steps=20, guidance=WORLD_GUIDANCE, seed=0, eta=WORLD_ETA)
    decoded = WorldDecoder().decode(images)
    valid = [item.attributes for item in decoded if item.ok]
    assert len(valid) >= 12
    assert all(person.profession == "CEO" for person in valid)
    # the planted CEO is mostly a man
    assert sum(person.gender == "man" for person in valid) >= len(valid) - 2


def test_bundled_clip_loads_in_float32():
    clip = CLIPModel.from_pretrained(bundled_world_clip_path())
    assert clip.dtype == torch.float32
    assert clip.config.text_config.hidden_size == 128


def test_bundled_world_was_trained_with_the_default_configuration():
    summary = json.loads((bundled_world_dir() / "training.json").read_text(encoding="utf-8"))
    assert {key: summary[key] for key in ("seed", "config")} == training_manifest(WorldConfig(), seed=0)


def test_bundled_world_samples_with_the_scheduler_training_writes():
    pipeline = load_world(bundled_world_path())
    expected = build_sample_scheduler()
    assert type(pipeline.scheduler) is type(expected)
    assert {key: value for key, value in pipeline.scheduler.config.items() if not key.startswith("_")} == {
        key: value for key, value in expected.config.items() if not key.startswith("_")
    }
