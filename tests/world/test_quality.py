import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import norm

from mist_debias.world.bias import PROFESSIONS
from mist_debias.world.oracle import Decoded
from mist_debias.world.quality import (
    eos_cosines,
    first_eos_embeddings,
    joint_distribution,
    latent_separation,
    load_world,
    wilson_interval,
)
from mist_debias.world.render import AGES, GENDERS, RACES, Attributes, render_batch


def test_wilson_interval_against_its_formula():
    z = norm.ppf(0.975)
    low, high = wilson_interval(30, 100, z=z)
    p, n = 0.3, 100
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 50)[0] == pytest.approx(0.0, abs=1e-12)


def test_joint_distribution_ignores_undecodable_images():
    decoded = [
        Decoded(Attributes("man", "White", "young", "doctor")),
        Decoded(Attributes("woman", "Black", "old", "doctor")),
        Decoded(None, "no torso"),
    ]
    joint = joint_distribution(decoded)
    assert joint.shape == (2, 3, 2) and joint.sum() == pytest.approx(1.0)
    assert joint[0, 0, 0] == 0.5 and joint[1, 2, 1] == 0.5


def test_first_eos_embedding_is_read_at_the_first_end_token(tiny_world):
    pipeline = load_world(tiny_world / "pipeline")
    prompts = ["a photo of a doctor", "a doctor"]
    embeddings = first_eos_embeddings(pipeline, prompts)
    ids = pipeline.tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    hidden = pipeline.text_encoder(ids)[0]
    # "a photo of a doctor" → [BOS, a, photo, of, a, doctor, EOS]: first EOS at position 6; "a doctor" at 3
    np.testing.assert_allclose(embeddings[0].detach().numpy(), hidden[0, 6].detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(embeddings[1].detach().numpy(), hidden[1, 3].detach().numpy(), rtol=1e-6)
    cosines = eos_cosines(pipeline)
    assert all(-1.0 <= value <= 1.0 for value in cosines.values())


class PoolingEncoder(torch.nn.Module):
    """A stand-in autoencoder whose posterior mean is the 4×4 average of the pixels (3 latent channels)."""

    def __init__(self, scaling_factor: float) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(scaling_factor=scaling_factor)

    def encode(self, pixels: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=torch.nn.functional.avg_pool2d(pixels, 4)))


def test_latent_separation_matches_its_equation():
    separation = latent_separation(PoolingEncoder(2.0), seed=3)
    people = [Attributes(*cell) for cell in itertools.product(GENDERS, RACES, AGES, PROFESSIONS)]

    def pooled(group):
        pixels = render_batch(group, np.random.default_rng(3)).astype(np.float64) / 127.5 - 1.0
        return 2.0 * pixels.reshape(len(group), 8, 4, 8, 4, 3).mean(axis=(2, 4))

    # every person's age flipped: half go young → old, half old → young, each distance counted once
    flipped = [Attributes(p.gender, p.race, "old" if p.age == "young" else "young", p.profession) for p in people]
    expected = np.linalg.norm(pooled(flipped) - pooled(people), axis=-1).sum(axis=(1, 2)).mean()
    assert separation["age"] == pytest.approx(expected, abs=0.01)
    white = [Attributes(p.gender, "White", p.age, p.profession) for p in people]
    asian = [Attributes(p.gender, "Asian", p.age, p.profession) for p in people]
    expected = np.linalg.norm(pooled(asian) - pooled(white), axis=-1).sum(axis=(1, 2)).mean()
    assert separation["race:White-Asian"] == pytest.approx(expected, abs=0.01)
    # the scaling factor multiplies every separation
    halved = latent_separation(PoolingEncoder(1.0), seed=3)
    assert all(halved[k] == pytest.approx(separation[k] / 2, abs=0.01) for k in separation)
