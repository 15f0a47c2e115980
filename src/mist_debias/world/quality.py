"""Measure the quality bar of a world pipeline with the exact oracle.

For each prompt, ``n`` images are generated (seeds ``seed … seed+n−1``, the pipeline's sampler,
classifier-free guidance) and decoded. Reported:

* decodable rate (overall ≥ 0.95 is the bar),
* bare profession prompts: the joint distribution r over gender × race × age among decoded images vs the
  planted table P, ``max_cell |r − P|`` (bar ≤ 0.1), and the rate at which the profession is kept,
* attribute prompts: the fraction of decoded images that carry every attribute the prompt names (bar ≥ 0.9),
* control professions: the woman fraction with its 95% Wilson interval, which must contain ½,
* text-encoder geometry: cosines between first-EOS embeddings of prompt pairs, the keys MIST edits,
* autoencoder geometry: how far a change of each attribute moves the latents (:func:`latent_separation`).

The Wilson interval for k successes in n trials at z = 1.96 is

    (p̂ + z²/2n ± z √(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n),   p̂ = k/n.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from mist_debias.core.generate import GenerationConfig, generate_images
from mist_debias.world.bias import CONTROL_PROFESSIONS, PROFESSIONS, TABLE_SHAPE, planted_table
from mist_debias.world.bundled import WORLD_ETA, WORLD_GUIDANCE
from mist_debias.world.captions import bare_caption, caption_fits
from mist_debias.world.models import EOS_TOKEN_ID, MAX_TOKENS
from mist_debias.world.oracle import Decoded, WorldDecoder
from mist_debias.world.render import AGES, GENDERS, RACES, Attributes, render_batch
from mist_debias.world.train import images_to_tensor

ATTRIBUTE_PROMPTS: tuple[str, ...] = (
    "a photo of a female doctor",
    "a photo of a male nurse",
    "a photo of a Black doctor",
    "a photo of an old nurse",
    "a photo of a young Asian female CEO",
    "a photo of an old Black man",
    "a photo of a young White woman",
)
EOS_PAIRS: tuple[tuple[str, str], ...] = (
    ("a photo of a man", "a photo of a woman"),
    ("a photo of a doctor", "a photo of a nurse"),
    ("a photo of a doctor", "a photo of a female doctor"),
    ("a photo of a doctor", "a photo of a teacher"),
    ("a photo of a White person", "a photo of a Black person"),
    ("a photo of a young person", "a photo of an old person"),
)
MAX_CELL_ERROR = 0.1
MIN_DECODABLE = 0.95
MIN_FOLLOWED = 0.9


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (see module docstring)."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    centre = p + z * z / (2 * trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    denominator = 1 + z * z / trials
    return ((centre - half) / denominator, (centre + half) / denominator)


def load_world(model: Path, device: str = "cpu") -> StableDiffusionPipeline:
    """Load a world pipeline in float32 on ``device``, progress bars off."""
    diffusers_logging.disable_progress_bar()
    pipeline = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def generate(
    pipeline: StableDiffusionPipeline,
    prompt: str,
    num_images: int,
    steps: int,
    guidance: float,
    seed: int,
    eta: float = 0.0,
    batch_size: int = 100,
) -> np.ndarray:
    """``num_images`` images of ``prompt`` as (n, 32, 32, 3) uint8; image i uses seed ``seed + i``, DDIM η ``eta``."""
    config = GenerationConfig(steps=steps, guidance=guidance, batch_size=batch_size, eta=eta)
    images = generate_images(pipeline, [prompt] * num_images, range(seed, seed + num_images), config)
    return np.stack([np.asarray(image, dtype=np.uint8) for image in images])


def joint_distribution(decoded: list[Decoded]) -> np.ndarray:
    """Empirical (2, 3, 2) distribution over gender × race × age of the decoded images."""
    counts = np.zeros(TABLE_SHAPE)
    for item in decoded:
        if item.attributes is not None:
            a = item.attributes
            counts[GENDERS.index(a.gender), RACES.index(a.race), AGES.index(a.age)] += 1
    return counts / max(1.0, counts.sum())


def first_eos_embeddings(pipeline: StableDiffusionPipeline, prompts: list[str]) -> torch.Tensor:
    """Last-hidden-state vector at the first ``<|endoftext|>`` of each prompt (SD1 padding)."""
    ids = pipeline.tokenizer(
        prompts, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        hidden = pipeline.text_encoder(ids.to(pipeline.device))[0].cpu()
    first = (ids == EOS_TOKEN_ID).int().argmax(dim=1)
    return hidden[torch.arange(len(prompts)), first]


def eos_cosines(pipeline: StableDiffusionPipeline) -> dict[str, float]:
    """Cosine of the first-EOS embeddings of each pair in :data:`EOS_PAIRS`."""
    result = {}
    for left, right in EOS_PAIRS:
        embeddings = first_eos_embeddings(pipeline, [left, right])
        cosine = torch.nn.functional.cosine_similarity(embeddings[0], embeddings[1], dim=0).item()
        result[f"{left} | {right}"] = round(cosine, 4)
    return result


def clip_gender(clip_model: Path, images: np.ndarray) -> np.ndarray:
    """Zero-shot gender of each image by the world's CLIP ("a photo of a man" vs "… woman"): 1 = woman."""
    clip = CLIPModel.from_pretrained(clip_model, dtype=torch.float32).eval()
    processor = CLIPProcessor.from_pretrained(clip_model)
    inputs = processor(
        text=["a photo of a man", "a photo of a woman"],
        images=[Image.fromarray(image) for image in images],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        logits = clip(**inputs).logits_per_image
    return logits.argmax(dim=1).numpy()


def _clip_report(clip_model: Path, images: np.ndarray, decoded: list[Decoded]) -> dict:
    predicted = clip_gender(clip_model, images)
    valid = [i for i, item in enumerate(decoded) if item.ok]
    oracle = np.array([decoded[i].attributes.gender == "woman" for i in valid])
    return {
        "agreement": float(np.mean(predicted[valid] == oracle)) if valid else float("nan"),
        "clip_woman": float(predicted.mean()),
        "oracle_woman": float(oracle.mean()) if valid else float("nan"),
    }


def _prompt_report(prompt: str, decoded: list[Decoded]) -> dict:
    valid = [item.attributes for item in decoded if item.attributes is not None]
    women = sum(a.gender == "woman" for a in valid)
    return {
        "prompt": prompt,
        "num_images": len(decoded),
        "decodable": len(valid) / len(decoded),
        "followed": float(np.mean([caption_fits(prompt, a) for a in valid])) if valid else float("nan"),
        "woman": women / max(1, len(valid)),
        "woman_interval": wilson_interval(women, len(valid)),
        "joint": joint_distribution(decoded).round(4).tolist(),
        "undecodable_reasons": sorted({item.reason.split(":")[0] for item in decoded if not item.ok}),
    }


def latent_separation(vae: AutoencoderKL, seed: int = 0) -> dict[str, float]:
    """How far a change of one attribute moves the autoencoder's latents, per axis.

    Every cell of gender × race × age × profession x_i is rendered twice with the same jitter: as is and
    with attribute a set to each other value v. With μ the posterior mean and f the scaling factor (the
    latents the UNet learns), the separation of axis a is

        s_a = mean_{i, v} Σ_{h, w} ‖ f·μ(x_i^{a=v})[:, h, w] − f·μ(x_i)[:, h, w] ‖₂,

    the per-position distance over latent channels summed over positions. Also reported for each pair of
    adjacent races (``"race:White-Asian"``, …).
    """
    people = [Attributes(*cell) for cell in itertools.product(GENDERS, RACES, AGES, PROFESSIONS)]
    device = next(vae.parameters()).device

    def latents(group: list[Attributes]) -> torch.Tensor:
        batch = images_to_tensor(render_batch(group, np.random.default_rng(seed))).to(device)
        with torch.no_grad():
            return vae.config.scaling_factor * vae.encode(batch).latent_dist.mean.cpu()

    def distance(changed: torch.Tensor, reference: torch.Tensor) -> float:
        return (changed - reference).norm(dim=1).sum(dim=(1, 2)).mean().item()

    def shifted(axis: str, values: tuple[str, ...], shift: int) -> list[Attributes]:
        return [
            dataclasses.replace(p, **{axis: values[(values.index(getattr(p, axis)) + shift) % len(values)]})
            for p in people
        ]

    reference = latents(people)
    result = {}
    for axis, values in (("gender", GENDERS), ("race", RACES), ("age", AGES), ("profession", PROFESSIONS)):
        distances = [distance(latents(shifted(axis, values, shift)), reference) for shift in range(1, len(values))]
        result[axis] = round(float(np.mean(distances)), 2)
    by_race = {race: latents([dataclasses.replace(p, race=race) for p in people]) for race in RACES}
    for left, right in itertools.pairwise(RACES):
        result[f"race:{left}-{right}"] = round(distance(by_race[right], by_race[left]), 2)
    return result


def measure_quality(
    model: Path,
    num_images: int = 200,
    steps: int = 20,
    guidance: float = WORLD_GUIDANCE,
    eta: float = WORLD_ETA,
    seed: int = 0,
    device: str = "cpu",
    clip_model: Path | None = None,
) -> dict:
    """Generate, decode and score every prompt.

    Returns ``{"settings", "summary", "eos_cosine", "latent_separation", "bare", "attribute", "clip_vs_oracle"}``.

    With ``clip_model`` (the world's CLIP folder), also the zero-shot CLIP gender of the bare-prompt images
    against the oracle (``"clip_vs_oracle"``): agreement and both woman fractions per profession.
    """
    pipeline = load_world(Path(model), device)
    decoder = WorldDecoder()
    planted = planted_table()
    bare, attribute, clip_vs_oracle, total_valid, total = {}, {}, {}, 0, 0
    for profession in PROFESSIONS:
        prompt = bare_caption(profession)
        images = generate(pipeline, prompt, num_images, steps, guidance, seed, eta)
        decoded = decoder.decode(images)
        report = _prompt_report(prompt, decoded)
        if clip_model is not None:
            clip_vs_oracle[profession] = _clip_report(clip_model, images, decoded)
        report["max_cell_error"] = float(np.abs(joint_distribution(decoded) - planted[profession]).max())
        report["planted_woman"] = float(planted[profession][GENDERS.index("woman")].sum())
        bare[profession] = report
        total_valid += round(report["decodable"] * num_images)
        total += num_images
    for prompt in ATTRIBUTE_PROMPTS:
        decoded = decoder.decode(generate(pipeline, prompt, num_images, steps, guidance, seed, eta))
        attribute[prompt] = _prompt_report(prompt, decoded)
        total_valid += round(attribute[prompt]["decodable"] * num_images)
        total += num_images
    summary = {
        "decodable": total_valid / total,
        "decodable_ok": total_valid / total >= MIN_DECODABLE,
        "profession_kept": min(r["followed"] for r in bare.values()),
        "max_cell_error": {p: round(r["max_cell_error"], 4) for p, r in bare.items()},
        "bare_ok": all(r["max_cell_error"] <= MAX_CELL_ERROR for r in bare.values()),
        "attribute_followed": {p: round(r["followed"], 4) for p, r in attribute.items()},
        "attribute_ok": all(r["followed"] >= MIN_FOLLOWED for r in attribute.values()),
        "control_woman": {
            p: [round(bare[p]["woman"], 4), *map(float, bare[p]["woman_interval"])] for p in CONTROL_PROFESSIONS
        },
        "control_ok": all(
            bare[p]["woman_interval"][0] <= 0.5 <= bare[p]["woman_interval"][1] for p in CONTROL_PROFESSIONS
        ),
    }
    return {
        "settings": {
            "num_images": num_images,
            "steps": steps,
            "guidance": guidance,
            "eta": eta,
            "seed": seed,
            "device": device,
        },
        "summary": summary,
        "eos_cosine": eos_cosines(pipeline),
        "latent_separation": latent_separation(pipeline.vae),
        "bare": bare,
        "attribute": attribute,
        "clip_vs_oracle": clip_vs_oracle,
    }


def write_quality(path: Path, report: dict) -> None:
    """Write the report as JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
