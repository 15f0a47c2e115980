"""Session fixtures: tiny SD1.x / SD2.x / SDXL pipelines saved to disk and loaded back like a user's model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging

from mist_debias.core.pipeline import load_pipeline
from mist_debias.testing import FAMILIES, build_clip, build_pipeline, save_clip, save_pipeline

diffusers_logging.disable_progress_bar()
# The models under test are tiny: one thread per process is faster than two fighting over shared cores, and
# subprocesses (CLI runs, torchrun workers) inherit the setting.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def pipeline_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved random-weight pipeline folder per family, built once per test session."""
    root = tmp_path_factory.mktemp("pipelines")
    return {family: save_pipeline(build_pipeline(family, seed=7), root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def sd1_dir(pipeline_dirs: dict[str, Path]) -> Path:
    return pipeline_dirs["sd1"]


@pytest.fixture
def sd1_pipe(sd1_dir: Path):
    """A fresh SD1.x pipeline loaded with ``from_pretrained`` (tests may edit it in place)."""
    return load_pipeline(sd1_dir, device="cpu")


@pytest.fixture(params=FAMILIES)
def any_pipe(request: pytest.FixtureRequest, pipeline_dirs: dict[str, Path]):
    """Each family's pipeline, loaded from its folder."""
    return load_pipeline(pipeline_dirs[request.param], device="cpu")


@pytest.fixture(scope="session")
def tiny_clip_factory(tmp_path_factory: pytest.TempPathFactory):
    """``factory(seed)`` → folder of a saved tiny random CLIP (weights drawn with ``seed``)."""

    def factory(seed: int) -> Path:
        return save_clip(build_clip(seed), tmp_path_factory.mktemp(f"tiny-clip-{seed}"))

    return factory


@pytest.fixture(scope="session")
def tiny_clip_dir(tiny_clip_factory) -> Path:
    return tiny_clip_factory(0)


@pytest.fixture(scope="session")
def ddpm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved unconditional DDPM pipeline: a family the project cannot edit (no text enters it)."""
    pipe = DDPMPipeline(
        unet=UNet2DModel(
            sample_size=8,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=16,
        ),
        scheduler=DDPMScheduler(),
    )
    folder = tmp_path_factory.mktemp("ddpm")
    pipe.save_pretrained(folder)
    return folder
