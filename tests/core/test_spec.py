import itertools
import json

import numpy as np
import pytest

from mist_debias.core.spec import (
    AttributeSpec,
    Axis,
    Cell,
    SpecError,
    cells_from_axes,
    natural_phrase,
    parse_axes,
    parse_axis,
    parse_probabilities,
    product_target,
    spec_from_cli,
    validate_target,
)

AXES_CLI = ["gender=man,woman", "race=White,Black,Asian", "age=young,old"]


@pytest.fixture
def spec3() -> AttributeSpec:
    return spec_from_cli(AXES_CLI)


def test_parse_axis_strips_spaces():
    assert parse_axis(" race = White, Black ,Asian ") == Axis("race", ("White", "Black", "Asian"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gender", "expected NAME=v1,v2"),
        ("=man,woman", "expected NAME=v1,v2"),
        ("gender=", "expected NAME=v1,v2"),
        ("gender=man,,woman", "empty value"),
        ("gender=man", "at least 2 values"),
        ("gender=man,Man", "repeats value"),
        ("gen der=man,woman", "invalid axis name"),
    ],
)
def test_parse_axis_errors(text, message):
    with pytest.raises(SpecError, match=message) as info:
        parse_axis(text)
    assert "\n" not in str(info.value)


def test_duplicate_axis_names_rejected():
    with pytest.raises(SpecError, match="duplicate axis name"):
        parse_axes(["gender=man,woman", "gender=male,female"])


def test_cells_are_row_major_product(spec3):
    axes = spec3.axes
    expected = list(itertools.product(*(axis.values for axis in axes)))
    assert [tuple(v for _, v in cell.values) for cell in spec3.cells] == expected
    sizes = [len(axis.values) for axis in axes]
    for index, cell in enumerate(spec3.cells):
        i1, i2, i3 = (axis.index(cell.value(axis.name)) for axis in axes)
        assert index == (i1 * sizes[1] + i2) * sizes[2] + i3
        assert spec3.cell_index(dict(cell.values)) == index
        assert spec3.cell_values(index) == dict(cell.values)


def test_natural_phrases(spec3):
    assert spec3.cells[0].phrase == "young White man"
    assert spec3.phrases[spec3.cell_index({"gender": "woman", "race": "Asian", "age": "young"})] == (
        "young Asian woman"
    )
    assert natural_phrase([("race", "Black")]) == "Black person"
    assert natural_phrase([("eyeglasses", "without"), ("gender", "woman"), ("age", "old")]) == (
        "old woman without eyeglasses"
    )
    assert natural_phrase([("hair", "blond"), ("gender", "man"), ("race", "Asian")]) == "blond Asian man"


def test_phrase_overrides_and_builder():
    axes = parse_axes(["gender=man,woman", "age=young,old"])
    cells = cells_from_axes(axes, phrases={"woman,old": "elderly woman", ("man", "young"): "boy"})
    assert [cell.phrase for cell in cells] == ["boy", "old man", "young woman", "elderly woman"]
    cells = cells_from_axes(axes, phrase_builder=lambda values: "-".join(v for _, v in values))
    assert [cell.phrase for cell in cells] == ["man-young", "man-old", "woman-young", "woman-old"]
    with pytest.raises(SpecError, match="unknown cell"):
        cells_from_axes(axes, phrases={"woman,middle": "x"})
    with pytest.raises(SpecError, match="several cells have the phrase"):
        cells_from_axes(axes, phrases={"woman,old": "old man"})


def test_explicit_cells():
    spec = spec_from_cli(cells=["man", " woman "])
    assert spec.phrases == ["man", "woman"]
    assert spec.target == (0.5, 0.5)
    assert spec.axes == ()
    with pytest.raises(SpecError, match="duplicate cell"):
        spec_from_cli(cells=["man", "woman", "Man"])
    with pytest.raises(SpecError, match="at least 2 cells"):
        spec_from_cli(cells=["man"])
    with pytest.raises(SpecError, match="no axes"):
        spec.cells_with("gender", "man")


def test_axes_xor_cells():
    with pytest.raises(SpecError, match="exactly one"):
        spec_from_cli()
    with pytest.raises(SpecError, match="exactly one"):
        spec_from_cli(axes=["gender=man,woman"], cells=["a", "b"])


def test_uniform_default(spec3):
    assert spec3.num_cells == 12
    np.testing.assert_allclose(spec3.target_array, np.full(12, 1 / 12))


def test_custom_target_and_fractions():
    spec = spec_from_cli(cells=["a", "b", "c"], targets=["1/2, 1/4, 0.25"])
    assert spec.target == (0.5, 0.25, 0.25)
    spec = spec_from_cli(cells=["a", "b", "c"], targets=["1/3,1/3,1/3"])
    assert abs(sum(spec.target) - 1) < 1e-12


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ([0.5, 0.5, 0.0, 0.1], "4 values for 3 cells"),
        ([0.5, 0.5], "2 values for 3 cells"),
        ([1.2, -0.1, -0.1], "non-negative"),
        ([0.5, 0.3, 0.3], "sum to 1"),
        ([float("nan"), 0.5, 0.5], "finite"),
        ([float("inf"), 0.5, 0.5], "finite"),
        (["x", 0.5, 0.5], "list of numbers"),
    ],
)
def test_target_validation(target, message):
    with pytest.raises(SpecError, match=message):
        validate_target(target, 3)


def test_target_tolerance_is_1e6():
    validate_target([0.5, 0.5 + 9e-7], 2)
    with pytest.raises(SpecError):
        validate_target([0.5, 0.5 + 2e-6], 2)


def test_bad_probability_text():
    with pytest.raises(SpecError, match="cannot parse probabilities"):
        parse_probabilities("0.5,half")
    with pytest.raises(SpecError, match="cannot parse probabilities"):
        parse_probabilities("1/0,1")


def test_marginal_target_is_product():
    spec = spec_from_cli(AXES_CLI, targets=["gender=0.3,0.7", "age=0.2,0.8"])
    # t(g, r, a) = m_g(g) · (1/3) · m_a(a), checked cell by cell by value lookup.
    m_gender = {"man": 0.3, "woman": 0.7}
    m_age = {"young": 0.2, "old": 0.8}
    for cell, t in zip(spec.cells, spec.target, strict=True):
        assert t == pytest.approx(m_gender[cell.value("gender")] * m_age[cell.value("age")] / 3)
    np.testing.assert_allclose(spec.marginal_target("gender"), [0.3, 0.7])
    np.testing.assert_allclose(spec.marginal_target("race"), [1 / 3] * 3)
    np.testing.assert_allclose(spec.marginal_target("age"), [0.2, 0.8])


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (["height=0.5,0.5"], "unknown axis 'height'"),
        (["gender=0.5,0.4"], "marginal of axis 'gender': target must sum to 1"),
        (["race=0.5,0.5"], "marginal of axis 'race': target has 2 values for 3 cells"),
        (["gender=0.5,0.5", "gender=0.5,0.5"], "two targets for axis"),
        (["gender=0.5,0.5", "0.5" + ",0" * 11], "not both"),
        (["0.5,0.5", "0.5,0.5"], "one per-cell target"),
    ],
)
def test_marginal_target_errors(targets, message):
    with pytest.raises(SpecError, match=message):
        spec_from_cli(AXES_CLI, targets=targets)


def test_product_target_missing_axes_uniform():
    axes = parse_axes(["gender=man,woman", "age=young,old"])
    assert product_target(axes, {}) == (0.25, 0.25, 0.25, 0.25)


def test_marginalisation(spec3):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(12), size=5)
    race = spec3.marginalize(probs, "race")
    assert race.shape == (5, 3)
    for v, value in enumerate(spec3.axis("race").values):
        members = [k for k, cell in enumerate(spec3.cells) if cell.value("race") == value]
        np.testing.assert_array_equal(spec3.cells_with("race", value), members)
        np.testing.assert_allclose(race[:, v], probs[:, members].sum(axis=1))
    np.testing.assert_allclose(race.sum(axis=1), 1.0)
    marginals = spec3.marginals(probs)
    assert list(marginals) == ["gender", "race", "age"]
    np.testing.assert_array_equal(marginals["race"], race)
    with pytest.raises(SpecError, match="no axis 'height'"):
        spec3.marginalize(probs, "height")
    with pytest.raises(SpecError, match="no value 'Latino'"):
        spec3.cells_with("race", "Latino")
    with pytest.raises(SpecError, match="expected 12 cells"):
        spec3.marginalize(probs[:, :4], "race")


def test_value_indices(spec3):
    indices = spec3.value_indices()
    assert indices.shape == (12, 3)
    assert indices[0].tolist() == [0, 0, 0]
    assert indices[-1].tolist() == [1, 2, 1]
    assert indices[spec3.cell_index({"gender": "woman", "race": "Black", "age": "young"})].tolist() == [1, 1, 0]


def test_round_trip_through_json(spec3):
    spec = spec_from_cli(AXES_CLI, targets=["gender=0.25,0.75"])
    for original in (spec, spec3, spec_from_cli(cells=["man", "woman"], targets=["0.4,0.6"])):
        assert AttributeSpec.from_dict(json.loads(json.dumps(original.to_dict()))) == original


def test_direct_construction_is_validated():
    axis = Axis("gender", ("man", "woman"))
    man = Cell("man", (("gender", "man"),))
    woman = Cell("woman", (("gender", "woman"),))
    AttributeSpec(cells=(man, woman), target=(0.5, 0.5), axes=(axis,))
    with pytest.raises(SpecError, match="cover every combination"):
        AttributeSpec(cells=(man, Cell("male", (("gender", "man"),))), target=(0.5, 0.5), axes=(axis,))
    with pytest.raises(SpecError, match="at least 2 cells"):
        AttributeSpec(cells=(man,), target=(1.0,))
    with pytest.raises(SpecError, match="sum to 1"):
        AttributeSpec(cells=(man, woman), target=(0.5, 0.6), axes=(axis,))
    with pytest.raises(SpecError, match="malformed"):
        AttributeSpec.from_dict({"axes": []})
