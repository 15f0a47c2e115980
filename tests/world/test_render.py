import itertools

import numpy as np
import pytest

from mist_debias.world.render import (
    AGES,
    BACKGROUND_COLORS,
    COLOR_JITTER,
    GENDERS,
    MIN_PALETTE_DISTANCE,
    MIN_SKIN_DISTANCE,
    PIXEL_NOISE,
    RACES,
    Attributes,
    palette,
    render,
    render_batch,
    to_pil,
)


def test_palette_colours_are_well_separated():
    colors = palette()
    distances = [np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(colors.values(), 2)]
    assert min(distances) >= MIN_PALETTE_DISTANCE
    # the worst-case jitter of a pixel stays well inside half the separation
    assert np.sqrt(3) * (COLOR_JITTER + PIXEL_NOISE) < MIN_PALETTE_DISTANCE / 2


def test_race_axis_has_three_distinct_skin_tones():
    assert RACES == ("White", "Asian", "Black")
    skins = [palette()[f"skin:{race}"] for race in RACES]
    distances = [np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(skins, 2)]
    assert min(distances) >= MIN_SKIN_DISTANCE


def test_same_generator_state_renders_the_same_image():
    person = Attributes("woman", "Asian", "old", "nurse")
    first = render(person, np.random.default_rng(7))
    second = render(person, np.random.default_rng(7))
    assert first.dtype == np.uint8 and first.shape == (32, 32, 3)
    np.testing.assert_array_equal(first, second)


def test_jitter_moves_and_recolours_the_glyph():
    person = Attributes("man", "Black", "young", "doctor")
    rng = np.random.default_rng(0)
    images = render_batch([person] * 40, rng)
    assert len({image.tobytes() for image in images}) == 40
    corner = images[:, 0, 0].astype(float)
    assert np.abs(corner - BACKGROUND_COLORS["doctor"]).max() <= COLOR_JITTER + PIXEL_NOISE
    assert corner.std(axis=0).min() > 0
    # the head moves: the skin-coloured area's top row varies
    skin = np.asarray(palette()["skin:Black"], dtype=float)
    tops = {int(np.nonzero((np.abs(im.astype(float) - skin).max(-1) < 20).any(1))[0][0]) for im in images}
    assert len(tops) > 1


def test_attributes_reject_unknown_values():
    with pytest.raises(ValueError, match="race"):
        Attributes("man", "Martian", "young", "doctor")


@pytest.mark.parametrize(("gender", "race", "age"), list(itertools.product(GENDERS, RACES, AGES)))
def test_every_cell_draws_its_part_colours(gender, race, age):
    image = render(Attributes(gender, race, age, "chef"), np.random.default_rng(1)).astype(float)
    for part in (f"skin:{race}", f"hair:{age}", "bg:chef", "shirt"):
        near = (np.linalg.norm(image - palette()[part], axis=-1) < 25).sum()
        assert near >= 15, part


def test_to_pil_round_trips():
    image = render(Attributes("man", "White", "old", "CEO"), np.random.default_rng(3))
    np.testing.assert_array_equal(np.asarray(to_pil(image)), image)
