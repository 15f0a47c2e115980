"""Captions for rendered glyphs, consistent with the drawn attributes.

A caption is empty with probability ``p_empty`` (for classifier-free guidance). Otherwise it names the bare
profession ("a photo of a doctor") or, with probability ``p_attribute``, also some of the person's
attributes, each named independently (at least one), in one of three forms:

* adjectives before the profession: "a photo of an old Black female doctor",
* a person noun, no profession: "a photo of an old Black man" ("person" when gender is not named),
* a person noun and the profession: "a photo of a young Asian woman working as a nurse".

Attribute words: gender ``male``/``female`` (adjective) or ``man``/``woman`` (noun); race ``White``,
``Asian``, ``Black``; age ``young``, ``old``. Articles follow the next word ("an old", "an engineer").
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from mist_debias.world.render import AGES, BACKGROUND_COLORS, RACES, Attributes

TEMPLATES: tuple[str, ...] = ("a photo of {}", "an image of {}", "a picture of {}", "{}")
GENDER_ADJECTIVES: dict[str, str] = {"man": "male", "woman": "female"}
GENDER_WORDS: dict[str, str] = {"man": "man", "male": "man", "woman": "woman", "female": "woman"}
NAMED_ATTRIBUTE_PROBABILITY = 0.5
CAPTION_FORMS: tuple[str, ...] = ("adjective", "person", "working")
CAPTION_FORM_PROBABILITIES: tuple[float, ...] = (0.5, 0.25, 0.25)


def with_article(phrase: str) -> str:
    """Prefix ``phrase`` with "a" or "an" by its first letter ("an old man", "a CEO", "an engineer")."""
    article = "an" if phrase[0].lower() in "aeio" else "a"
    return f"{article} {phrase}"


def bare_caption(profession: str, template: str = TEMPLATES[0]) -> str:
    """The bare profession prompt, e.g. ``bare_caption("doctor") == "a photo of a doctor"``."""
    return template.format(with_article(profession))


def attribute_caption(
    attributes: Attributes,
    name_gender: bool,
    name_race: bool,
    name_age: bool,
    form: str = "adjective",
    template: str = TEMPLATES[0],
) -> str:
    """A caption naming the chosen attributes of ``attributes`` in ``form`` ∈ {adjective, person, working}."""
    words = []
    if name_age:
        words.append(attributes.age)
    if name_race:
        words.append(attributes.race)
    if form == "adjective":
        if name_gender:
            words.append(GENDER_ADJECTIVES[attributes.gender])
        return template.format(with_article(" ".join([*words, attributes.profession])))
    words.append(attributes.gender if name_gender else "person")
    person = with_article(" ".join(words))
    if form == "person":
        return template.format(person)
    if form == "working":
        return template.format(f"{person} working as {with_article(attributes.profession)}")
    raise ValueError(f"unknown caption form {form!r}")


def sample_caption(
    attributes: Attributes, rng: np.random.Generator, p_empty: float = 0.1, p_attribute: float = 0.6
) -> str:
    """Draw one caption for ``attributes``: empty, bare profession or naming attributes (see module doc)."""
    if rng.random() < p_empty:
        return ""
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    if rng.random() >= p_attribute:
        return bare_caption(attributes.profession, template)
    named = rng.random(3) < NAMED_ATTRIBUTE_PROBABILITY
    while not named.any():
        named = rng.random(3) < NAMED_ATTRIBUTE_PROBABILITY
    form = CAPTION_FORMS[int(rng.choice(len(CAPTION_FORMS), p=CAPTION_FORM_PROBABILITIES))]
    return attribute_caption(attributes, bool(named[0]), bool(named[1]), bool(named[2]), form, template)


def every_caption() -> list[str]:
    """Every caption :func:`sample_caption` can draw (sorted, the empty caption included)."""
    captions = {""}
    for template in TEMPLATES:
        for profession in BACKGROUND_COLORS:
            captions.add(bare_caption(profession, template))
            for gender, race, age in itertools.product(GENDER_ADJECTIVES, RACES, AGES):
                person = Attributes(gender, race, age, profession)
                for named in itertools.product((False, True), repeat=3):
                    if any(named):
                        for form in CAPTION_FORMS:
                            captions.add(attribute_caption(person, *named, form=form, template=template))
    return sorted(captions)


def sample_captions(
    people: list[Attributes], rng: np.random.Generator, p_empty: float = 0.1, p_attribute: float = 0.6
) -> list[str]:
    """One caption per person, drawn in order from ``rng``."""
    return [sample_caption(person, rng, p_empty, p_attribute) for person in people]


def named_attributes(caption: str) -> dict[str, str]:
    """The attributes a caption names, ``{axis: value}`` over gender, race, age and profession.

    ``named_attributes("a photo of an old Black female doctor") ==
    {"age": "old", "race": "Black", "gender": "woman", "profession": "doctor"}``; an empty caption names
    nothing. Words outside the world's vocabulary are ignored.
    """
    vocabulary = {
        **{word: ("gender", value) for word, value in GENDER_WORDS.items()},
        **{race.lower(): ("race", race) for race in RACES},
        **{age: ("age", age) for age in AGES},
        **{profession.lower(): ("profession", profession) for profession in BACKGROUND_COLORS},
    }
    named: dict[str, str] = {}
    for word in re.findall(r"[a-z]+", caption.lower()):
        if word in vocabulary:
            axis, value = vocabulary[word]
            named[axis] = value
    return named


def caption_fits(caption: str, attributes: Attributes) -> bool:
    """Whether every attribute the caption names agrees with ``attributes`` (an empty caption fits all)."""
    return all(getattr(attributes, axis) == value for axis, value in named_attributes(caption).items())
