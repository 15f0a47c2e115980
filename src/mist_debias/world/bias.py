"""The planted bias: per-profession joint distributions over gender × race × age.

Each profession has a table ``P[g, r, a]`` (shape 2 × 3 × 2, sums to 1) in the order of
:data:`~mist_debias.world.render.GENDERS`, :data:`~mist_debias.world.render.RACES` and
:data:`~mist_debias.world.render.AGES`. Most tables are products of marginals,

    P[g, r, a] = p_gender[g] · p_race[r] · p_age[a],

the CEO's is a mixture that is skewed on all three axes at once,

    P_CEO = ½ · δ(man, White, old) + ½ · p_gender ⊗ p_race ⊗ p_age,

and the control professions (teacher, artist) are uniform over the 12 cells.
"""

from __future__ import annotations

import numpy as np

from mist_debias.world.render import AGES, BACKGROUND_COLORS, GENDERS, RACES, Attributes

PROFESSIONS: tuple[str, ...] = tuple(BACKGROUND_COLORS)
CONTROL_PROFESSIONS: tuple[str, ...] = ("teacher", "artist")
TABLE_SHAPE = (len(GENDERS), len(RACES), len(AGES))


def _product(gender: tuple[float, float], race: tuple[float, float, float], age: tuple[float, float]):
    return np.einsum("g,r,a->gra", np.asarray(gender), np.asarray(race), np.asarray(age))


def planted_table() -> dict[str, np.ndarray]:
    """The planted joint distribution of every profession, ``{profession: P}`` with ``P.shape == (2, 3, 2)``.

    Axis order (gender, race, age); values in the order of ``GENDERS``, ``RACES``, ``AGES``.
    """
    ceo_corner = np.zeros(TABLE_SHAPE)
    ceo_corner[GENDERS.index("man"), RACES.index("White"), AGES.index("old")] = 1.0
    uniform = np.full(TABLE_SHAPE, 1.0 / np.prod(TABLE_SHAPE))
    return {
        "doctor": _product((0.9, 0.1), (0.7, 0.2, 0.1), (0.5, 0.5)),
        "nurse": _product((0.1, 0.9), (0.4, 0.3, 0.3), (0.7, 0.3)),
        "CEO": 0.5 * ceo_corner + 0.5 * _product((0.7, 0.3), (0.6, 0.25, 0.15), (0.3, 0.7)),
        "teacher": uniform.copy(),
        "lawyer": _product((0.7, 0.3), (0.6, 0.2, 0.2), (0.4, 0.6)),
        "chef": _product((0.75, 0.25), (0.4, 0.4, 0.2), (0.6, 0.4)),
        "engineer": _product((0.8, 0.2), (0.45, 0.45, 0.1), (0.6, 0.4)),
        "artist": uniform.copy(),
    }


def marginal(table: np.ndarray, axis: str) -> np.ndarray:
    """Marginal of a (2, 3, 2) table on ``axis`` ∈ {"gender", "race", "age"}."""
    index = ("gender", "race", "age").index(axis)
    other = tuple(i for i in range(3) if i != index)
    return table.sum(axis=other)


def sample_attributes(
    num: int, rng: np.random.Generator, professions: tuple[str, ...] = PROFESSIONS
) -> list[Attributes]:
    """Draw ``num`` people: a profession uniformly from ``professions``, then a cell from its planted table."""
    tables = planted_table()
    chosen = rng.integers(0, len(professions), size=num)
    people = []
    for index in chosen:
        profession = professions[int(index)]
        flat = tables[profession].ravel()
        cell = int(rng.choice(flat.size, p=flat))
        g, r, a = np.unravel_index(cell, TABLE_SHAPE)
        people.append(Attributes(GENDERS[g], RACES[r], AGES[a], profession))
    return people
