"""Image seeds of a run: run seed 0 is the layout itself, and other run seeds are independent replicates."""

import itertools

import torch

from mist_debias.loop.debias import VALIDATION_SEED_OFFSET, image_seeds


def test_run_seed_zero_is_the_layout():
    assert image_seeds(0, 0, range(3)) == [0, 1, 2]
    assert image_seeds(0, 2, [VALIDATION_SEED_OFFSET + 7]) == [20_000_000 + 5_000_000 + 7]


def test_image_seeds_stay_below_two_to_the_32():
    """torch's CPU generator keeps only the low 32 bits of a seed, so a larger seed would repeat a smaller one."""
    generated = torch.randn(3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(generated, torch.randn(3, generator=torch.Generator().manual_seed(5 + 2**32)))
    seeds = image_seeds(2**32 - 1, 99, range(10_000_000 - 3, 10_000_000))
    assert all(0 <= seed < 2**32 for seed in seeds)


def test_runs_of_two_concepts_with_nearby_seeds_share_no_image_seed():
    """The seed spaces of run seeds 0…100, each two concepts wide (2·10⁷ seeds), are disjoint modulo 2³²."""
    width = 2 * 10_000_000
    starts = sorted(image_seeds(run_seed, 0, [0])[0] for run_seed in range(101))
    gaps = [b - a for a, b in itertools.pairwise(starts)] + [starts[0] + 2**32 - starts[-1]]
    assert min(gaps) >= width
    # and every seed index of one run's two concepts lands inside its own window
    start = image_seeds(7, 0, [0])[0]
    last = image_seeds(7, 1, [10_000_000 - 1])[0]
    assert (last - start) % 2**32 == width - 1
