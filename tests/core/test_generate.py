"""Seeded generation: DDIM η re-injects noise drawn from each image's own generator."""

import numpy as np
import pytest

from mist_debias.core.generate import GenerationConfig, generate_images

PROMPT = "a photo of a doctor"


def images(pipe, seeds, eta, batch_size=4):
    config = GenerationConfig(steps=4, guidance=5.0, height=32, width=32, batch_size=batch_size, eta=eta)
    out = generate_images(pipe, [PROMPT] * len(seeds), seeds, config)
    return np.stack([np.asarray(image, dtype=np.int16) for image in out])


@pytest.mark.parametrize("eta", [-0.1, float("nan"), float("inf")])
def test_eta_must_be_finite_and_non_negative(eta):
    with pytest.raises(ValueError, match="eta must be a finite number ≥ 0"):
        GenerationConfig(eta=eta)


def test_eta_changes_the_sampler_and_stays_seeded_per_image(sd1_pipe):
    assert type(sd1_pipe.scheduler).__name__ == "DDIMScheduler"
    deterministic = images(sd1_pipe, [5, 6, 7], eta=0.0)
    stochastic = images(sd1_pipe, [5, 6, 7], eta=1.0)
    assert np.abs(stochastic - deterministic).mean() > 1.0
    # Same seeds, same images; and an image does not depend on the batch it was generated in.
    np.testing.assert_array_equal(images(sd1_pipe, [5, 6, 7], eta=1.0), stochastic)
    np.testing.assert_array_equal(images(sd1_pipe, [6], eta=1.0, batch_size=1)[0], stochastic[1])
