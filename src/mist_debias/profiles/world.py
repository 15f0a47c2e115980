"""The synthetic world's profile: the bundled pipeline, its sampler, its professions and its exact oracle."""

from __future__ import annotations

from collections.abc import Sequence

from mist_debias.core.prompts import concept_prompt, strip_article
from mist_debias.core.spec import Axis
from mist_debias.loop.profile import ModelProfile, ProfileSampler
from mist_debias.world.bias import PROFESSIONS
from mist_debias.world.bundled import WORLD_ETA, WORLD_GUIDANCE, bundled_world_path
from mist_debias.world.render import AGES, GENDERS, RACES

WORLD_STEPS = 20
WORLD_BATCH_SIZE = 64


def world_preserve_set(edited: Sequence[str], template: str) -> list[str]:
    """``""`` and every world profession not edited, as concept prompts: the world has no other concepts."""
    skipped = {strip_article(concept).lower() for concept in edited}
    return ["", *(concept_prompt(p, template) for p in PROFESSIONS if p.lower() not in skipped)]


def world_oracle(device=None):
    """The world's exact pixel decoder (CPU, any ``device`` ignored)."""
    from mist_debias.world.oracle import WorldOracle

    return WorldOracle()


WORLD = ModelProfile(
    name="world",
    description="the bundled synthetic world: person glyphs with planted bias, graded by an exact oracle",
    pipeline=bundled_world_path(),
    sampler=ProfileSampler(steps=WORLD_STEPS, guidance=WORLD_GUIDANCE, eta=WORLD_ETA, batch_size=WORLD_BATCH_SIZE),
    preserve_set=world_preserve_set,
    classifier=world_oracle,
    demo_concepts=("doctor",),
    demo_axes=("gender=man,woman",),
    observable_axes=(Axis("gender", GENDERS), Axis("race", RACES), Axis("age", AGES)),
)
