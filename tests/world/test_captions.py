import numpy as np
import pytest

from mist_debias.world.bias import sample_attributes
from mist_debias.world.captions import (
    attribute_caption,
    bare_caption,
    caption_fits,
    named_attributes,
    sample_captions,
    with_article,
)
from mist_debias.world.render import Attributes


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("doctor", "a doctor"),
        ("engineer", "an engineer"),
        ("artist", "an artist"),
        ("CEO", "a CEO"),
        ("old man", "an old man"),
        ("Asian nurse", "an Asian nurse"),
        ("young chef", "a young chef"),
    ],
)
def test_articles(phrase, expected):
    assert with_article(phrase) == expected


def test_bare_and_attribute_captions():
    person = Attributes("woman", "Black", "old", "doctor")
    assert bare_caption("doctor") == "a photo of a doctor"
    assert attribute_caption(person, True, False, False) == "a photo of a female doctor"
    assert attribute_caption(person, True, True, True, form="person") == "a photo of an old Black woman"
    assert (
        attribute_caption(person, False, True, False, form="working") == "a photo of a Black person working as a doctor"
    )


def test_named_attributes_parses_every_axis():
    assert named_attributes("a photo of an old Black female doctor") == {
        "age": "old",
        "race": "Black",
        "gender": "woman",
        "profession": "doctor",
    }
    assert named_attributes("an image of a young man working as a CEO") == {
        "age": "young",
        "gender": "man",
        "profession": "CEO",
    }
    assert named_attributes("") == {}


def test_sampled_captions_are_consistent_with_the_rendered_attributes():
    rng = np.random.default_rng(0)
    people = sample_attributes(4000, rng)
    captions = sample_captions(people, rng, p_empty=0.1, p_attribute=0.6)
    assert all(caption_fits(c, p) for c, p in zip(captions, people, strict=True))
    empty = np.mean([c == "" for c in captions])
    assert 0.08 < empty < 0.12
    non_empty = [c for c in captions if c]
    naming = np.mean([len(named_attributes(c).keys() - {"profession"}) > 0 for c in non_empty])
    assert 0.55 < naming < 0.65
    # a caption that names a wrong attribute does not fit
    assert not caption_fits("a photo of a male nurse", Attributes("woman", "White", "young", "nurse"))
