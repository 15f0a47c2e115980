import numpy as np
import pytest

from mist_debias.world.bias import (
    CONTROL_PROFESSIONS,
    PROFESSIONS,
    TABLE_SHAPE,
    marginal,
    planted_table,
    sample_attributes,
)
from mist_debias.world.render import AGES, GENDERS, RACES


def test_every_profession_has_a_distribution_over_the_twelve_cells():
    tables = planted_table()
    assert set(tables) == set(PROFESSIONS) and 6 <= len(PROFESSIONS) <= 8
    for table in tables.values():
        assert table.shape == TABLE_SHAPE == (2, 3, 2)
        assert (table >= 0).all()
        np.testing.assert_allclose(table.sum(), 1.0, atol=1e-12)


def test_planted_skews():
    tables = planted_table()
    man, woman = GENDERS.index("man"), GENDERS.index("woman")
    assert marginal(tables["doctor"], "gender")[man] == pytest.approx(0.9)
    assert marginal(tables["doctor"], "race")[RACES.index("White")] >= 0.5
    assert marginal(tables["nurse"], "gender")[woman] == pytest.approx(0.9)
    ceo = tables["CEO"]
    assert ceo[man, RACES.index("White"), AGES.index("old")] > 0.5
    # skewed on all three axes at once, not a product of its marginals
    product = np.einsum("g,r,a->gra", *(marginal(ceo, axis) for axis in ("gender", "race", "age")))
    assert np.abs(product - ceo).max() > 0.05
    for control in CONTROL_PROFESSIONS:
        np.testing.assert_allclose(tables[control], 1 / 12)


def test_samples_follow_the_planted_table():
    rng = np.random.default_rng(0)
    people = sample_attributes(24000, rng)
    tables = planted_table()
    for profession in ("doctor", "CEO", "teacher"):
        chosen = [p for p in people if p.profession == profession]
        counts = np.zeros(TABLE_SHAPE)
        for p in chosen:
            counts[GENDERS.index(p.gender), RACES.index(p.race), AGES.index(p.age)] += 1
        assert np.abs(counts / len(chosen) - tables[profession]).max() < 0.03
    assert abs(sum(p.profession == "nurse" for p in people) / len(people) - 1 / len(PROFESSIONS)) < 0.01


def test_sampling_is_deterministic():
    first = sample_attributes(50, np.random.default_rng(3))
    assert first == sample_attributes(50, np.random.default_rng(3))
