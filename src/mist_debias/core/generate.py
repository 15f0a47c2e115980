"""Seeded, batched image generation that counts UNet evaluations.

Each image has its own ``torch.Generator`` seeded with its seed (on the CPU, so the same seed gives the same
initial latent on every device), which makes an image independent of the batch it was generated in.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from diffusers import DiffusionPipeline
from PIL import Image


@dataclass(frozen=True)
class GenerationConfig:
    """Sampler settings shared by every image of a run.

    ``eta`` is DDIM's η: the share of the posterior noise re-injected at each step, σ_t = η·σ_t^DDPM (0 is the
    deterministic DDIM sampler, 1 is DDPM's ancestral step); schedulers without an ``eta`` ignore it, and it is
    not passed to pipelines that take none (SD3, FLUX).
    """

    steps: int = 20
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    batch_size: int = 16
    eta: float = 0.0

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if not (math.isfinite(self.guidance) and self.guidance >= 0):
            raise ValueError(f"guidance must be a finite number ≥ 0, got {self.guidance}")
        if self.batch_size <= 0:
            raise ValueError(f"batch size must be positive, got {self.batch_size}")
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"eta must be a finite number ≥ 0, got {self.eta}")
        for side in (self.height, self.width):
            if side is not None and (side <= 0 or side % 8):
                raise ValueError(f"height and width must be positive multiples of 8, got {side}")

    def to_dict(self) -> dict:
        return asdict(self)


class UNetEvaluationCounter:
    """Counts UNet evaluations: the number of latents the UNet denoised, summed over its forward calls.

    With classifier-free guidance each denoising step of one image costs two evaluations.
    """

    def __init__(self, unet: torch.nn.Module) -> None:
        self.count = 0
        self._handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.count += int(sample.shape[0])

    def close(self) -> None:
        self._handle.remove()


@torch.no_grad()
def generate_images(
    pipe: DiffusionPipeline, prompts: Sequence[str], seeds: Sequence[int], config: GenerationConfig
) -> list[Image.Image]:
    """One image per (prompt, seed) pair, in order, generated in batches of ``config.batch_size``."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    images: list[Image.Image] = []
    sampler = {"eta": config.eta} if "eta" in inspect.signature(pipe.__call__).parameters else {}
    for start in range(0, len(prompts), config.batch_size):
        batch_prompts = list(prompts[start : start + config.batch_size])
        batch_seeds = seeds[start : start + config.batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in batch_seeds]
        output = pipe(
            prompt=batch_prompts,
            negative_prompt=[config.negative_prompt] * len(batch_prompts) if config.negative_prompt else None,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            **sampler,
            height=config.height,
            width=config.width,
            generator=generators,
            output_type="pil",
        )
        images.extend(output.images)
    return images
