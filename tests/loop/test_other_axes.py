import numpy as np
import pytest

from mist_debias.core.spec import AttributeSpec, Axis
from mist_debias.loop.other_axes import axis_shifts, unedited_axes
from mist_debias.world.oracle import WorldOracle
from mist_debias.world.render import Attributes, render_batch, to_pil

GENDER = Axis("gender", ("man", "woman"))
RACE = Axis("race", ("White", "Asian", "Black"))
AGE = Axis("age", ("young", "old"))


def glyphs(attributes: list[Attributes], seed: int = 0):
    return [to_pil(image) for image in render_batch(attributes, np.random.default_rng(seed))]


def test_unedited_axes_are_the_observable_ones_the_spec_does_not_balance():
    spec = AttributeSpec.from_axes([GENDER])
    assert unedited_axes(spec, [GENDER, RACE, AGE]) == [RACE, AGE]
    assert unedited_axes(AttributeSpec.from_phrases(["man", "woman"]), [GENDER, AGE]) == [GENDER, AGE]


def test_an_edit_that_ages_a_third_of_the_people_is_flagged_and_race_is_not():
    people = [Attributes("man", ("White", "Asian", "Black")[i % 3], "young", "doctor") for i in range(60)]
    aged = [Attributes(p.gender, p.race, "old" if i % 3 == 0 else "young", p.profession) for i, p in enumerate(people)]
    shifts = {(s.axis, s.value): s for s in axis_shifts(WorldOracle(), glyphs(people), glyphs(aged, 1), [RACE, AGE])}
    old = shifts[("age", "old")]
    assert (old.before, old.after, old.pairs) == (0.0, pytest.approx(1 / 3), 60)
    assert old.shifted and old.lower > 0
    assert not any(shifts[("race", value)].shifted for value in RACE.values)
    assert shifts[("race", "White")].before == shifts[("race", "White")].after == pytest.approx(1 / 3)
    assert old.to_dict()["shifted"] is True


def test_pairs_the_classifier_cannot_read_are_left_out():
    people = [Attributes("woman", "Black", "old", "nurse")] * 4
    blank = [to_pil(np.zeros((32, 32, 3), dtype=np.uint8))] * 4
    assert axis_shifts(WorldOracle(), glyphs(people), blank, [AGE]) == []
