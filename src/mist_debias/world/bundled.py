"""Where the trained world ships inside the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED_DIR = ("assets", "world")
WORLD_GUIDANCE = 1.5
"""Classifier-free guidance at which the shipped world's quality bar is measured; the default of every
command that generates on the world. Stronger guidance amplifies the planted bias past its table (at guidance 2,
η 0.5 the doctor is 65% young against 50% planted)."""
WORLD_ETA = 0.75
"""DDIM η of the same sampler: three quarters of the posterior noise re-injected at each step resolves
faces the deterministic sampler leaves between two skin tones."""


def bundled_world_dir() -> Path:
    """The folder of the shipped world (``pipeline/``, ``clip/``, ``training.json``, ``quality.json``)."""
    return Path(str(resources.files("mist_debias").joinpath(*BUNDLED_DIR)))


def bundled_world_path() -> Path:
    """The shipped ``StableDiffusionPipeline`` folder of the synthetic world."""
    return bundled_world_dir() / "pipeline"


def bundled_world_clip_path() -> Path:
    """The shipped tiny ``CLIPModel`` of the world (with its tokenizer), a zero-shot classifier."""
    return bundled_world_dir() / "clip"
