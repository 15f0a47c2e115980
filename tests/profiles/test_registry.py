"""Model profiles: the entry-point registry, MODEL resolution, and the world's profile."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import pytest

import mist_debias.profiles as profiles
from mist_debias.core.errors import MistError
from mist_debias.loop.profile import ModelProfile, profile_classifier
from mist_debias.profiles import find_profile, model_path, registered_profiles
from mist_debias.profiles.world import WORLD, world_preserve_set
from mist_debias.world.bias import PROFESSIONS
from mist_debias.world.bundled import bundled_world_path
from mist_debias.world.oracle import WorldOracle


def test_the_world_registers_through_its_entry_point():
    assert registered_profiles()["world"] is WORLD


@pytest.mark.parametrize("model", [None, "world", str(bundled_world_path()), str(bundled_world_path()) + "/"])
def test_the_world_is_found_by_name_folder_and_as_the_default(model):
    assert find_profile(model) is WORLD
    assert model_path(model, WORLD) == (str(WORLD.pipeline) if model in (None, "world") else model)


@pytest.mark.parametrize("model", ["CompVis/stable-diffusion-v1-4", "World", "./world-copy", "/tmp"])
def test_anything_else_has_no_profile(model):
    assert find_profile(model) is None
    assert model_path(model, None) == model


def test_a_relative_path_to_the_world_folder_is_the_world(monkeypatch):
    monkeypatch.chdir(bundled_world_path().parent)
    assert find_profile("pipeline") is WORLD
    assert find_profile("./pipeline") is WORLD


def test_an_entry_point_that_is_no_profile_is_refused(monkeypatch):
    bad = EntryPoint(name="bad", value="os:sep", group=profiles.ENTRY_POINT_GROUP)
    monkeypatch.setattr(profiles, "entry_points", lambda group: [bad])
    with pytest.raises(MistError, match=r"'bad' .* is not a ModelProfile"):
        registered_profiles()


def test_the_worlds_sampler_is_its_quality_bar_sampler():
    sampler = WORLD.sampler
    assert (sampler.steps, sampler.guidance, sampler.eta, sampler.batch_size) == (20, 1.5, 0.75, 64)
    assert sampler.describe() == "20 steps, guidance 1.5, η 0.75"


def test_the_worlds_preserve_set_is_every_other_profession():
    assert world_preserve_set(["the doctor", "CEO"], "a photo of {a} {concept}") == [
        "",
        *(f"a photo of {'an' if p[0] in 'aeiou' else 'a'} {p}" for p in PROFESSIONS if p not in ("doctor", "CEO")),
    ]
    assert len(world_preserve_set([], "{concept}")) == 1 + len(PROFESSIONS)


def test_the_oracle_comes_from_the_profile():
    assert isinstance(profile_classifier(WORLD, "world", "cpu"), WorldOracle)
    plain = ModelProfile(
        name="plain", description="", pipeline=bundled_world_path(), sampler=WORLD.sampler, preserve_set=lambda e, t: []
    )
    for profile in (None, plain):
        with pytest.raises(MistError, match="model 'x/y' has no oracle"):
            profile_classifier(profile, "x/y", "cpu")
