"""Proposals that name seeds reach the debias loop as exactly those seeds: same seed, same image."""

import numpy as np
import pytest

from mist_debias.core.generate import generate_images
from mist_debias.loop.config import AttributesConfig, RunConfig
from mist_debias.loop.control import Proposal
from mist_debias.loop.control.base import decode_labels
from mist_debias.loop.runner import prepare_run


def _run(sd1_dir, tiny_clip_dir, folder, budget=96, seed=0):
    settings = RunConfig().with_overrides(
        {
            "model": str(sd1_dir),
            "concepts": ["doctor", "nurse"],
            "attributes": AttributesConfig.from_cli((), ("man", "woman"), ()),
            "classifier.drive": str(tiny_clip_dir),
            "controller.name": "panel",
            "controller.block_size": 16,
            "budget": budget,
            "generation.steps": 2,
            "generation.batch_size": 8,
            "seed": seed,
        }
    )
    return prepare_run(settings, folder, device="cpu")[0]


def test_named_seeds_give_the_same_images_at_the_same_weights(sd1_dir, tiny_clip_dir, tmp_path):
    run = _run(sd1_dir, tiny_clip_dir, tmp_path / "run", seed=3)
    proposal = Proposal("nurse", np.zeros(2), "absolute", 4, seed_start=16)
    seeds = run._proposal_seeds(proposal)
    # run seed s, concept index c, seed index i: image seed (s·⌊2³²/φ⌋ + c·10⁷ + i) mod 2³²
    assert seeds == [(3 * 2_654_435_769 + 10**7 + 16 + i) % 2**32 for i in range(4)]
    prompt = run.concepts["nurse"].prompts.prompt
    # the same seeds, generated alone or inside a larger batch, give identical pixels
    alone = generate_images(run.pipe, [prompt] * 4, seeds, run.generation)
    mixed = generate_images(run.pipe, [prompt] * 6, [seeds[0] - 1, *seeds, seeds[-1] + 5], run.generation)
    for a, b in zip(alone, mixed[1:5], strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # a proposal may name any seeds
    listed = Proposal("nurse", np.zeros(2), "absolute", 3, seed_indices=(40, 17, 3))
    assert run._proposal_seeds(listed) == [(3 * 2_654_435_769 + 10**7 + i) % 2**32 for i in (40, 17, 3)]
    run.close()


class _Stop(Exception):
    pass


def _stop_after_three_rounds(run):
    if len({entry["round"] for entry in run.log}) >= 3:
        raise _Stop


def test_the_loop_uses_the_named_seeds_and_logs_them_for_resume(sd1_dir, tiny_clip_dir, tmp_path):
    run = _run(sd1_dir, tiny_clip_dir, tmp_path / "run", budget=2000)
    with pytest.raises(_Stop):
        run.run(on_round=_stop_after_three_rounds)
    log = run.log
    assert all(entry["seed_start"] is not None for entry in log)
    for entry in log:
        base = run.order.index(entry["concept"]) * 10**7
        indices = entry.get("seed_indices") or range(entry["seed_start"], entry["seed_start"] + entry["n_images"])
        assert entry["seeds"] == [base + indices[0], base + indices[-1]] and len(indices) == entry["n_images"]
        # every image's label is logged, and they add up to the logged counts
        counts, n_invalid, _ = decode_labels(entry["labels"], 2)
        assert counts.tolist() == entry["counts"] and n_invalid == entry["n_invalid"]
    # panel block 0 (seed indices 0–15) is measured at more than one weight for the same concept: common seeds
    block0 = [tuple(e["weights"]) for e in log if e["concept"] == "doctor" and e["seed_start"] == 0]
    assert len(set(block0)) >= 2
    # the controller rebuilt from the log proposes the same next batch
    resumed = _run(sd1_dir, tiny_clip_dir, tmp_path / "resumed", budget=2000)
    resumed.resume(log)
    proposals = run.controller.propose()
    assert proposals
    for a, b in zip(resumed.controller.propose(), proposals, strict=True):
        assert (a.concept, a.n_images, a.seeds()) == (b.concept, b.n_images, b.seeds())
        np.testing.assert_array_equal(a.weights, b.weights)
    run.close()
    resumed.close()
