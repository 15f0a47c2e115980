"""Attribute axes, intersectional cells and target distributions.

A *cell* is one combination of attribute values (e.g. gender=woman, race=Asian, age=young) with the
natural-language phrase used to build its attribute prompt ("young Asian woman"). Cells come either
from the product of axes or from an explicit list of phrases (then ``values`` is empty).

Cell order for axes ``a_1 … a_A`` with ``n_1 … n_A`` values is the row-major product (the first axis varies
slowest), so the cell with value indices ``(i_1, …, i_A)`` has index

    k = ((i_1 · n_2 + i_2) · n_3 + i_3) … · n_A + i_A.

Every invalid input raises :class:`SpecError` with a one-line message that a command line can print as is.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from mist_debias.core.errors import MistError

TARGET_ATOL = 1e-6
"""How far from 1 the sum of a target distribution may be."""

AGE_AXES = frozenset({"age"})
RACE_AXES = frozenset({"race", "ethnicity", "skin", "skin_tone", "skintone", "skin-tone"})
GENDER_AXES = frozenset({"gender", "sex"})
POSTFIX_VALUES = frozenset({"with", "without"})
DEFAULT_NOUN = "person"

_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class SpecError(MistError):
    """An attribute specification (axes, cells or target) that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Axis:
    """One attribute axis, e.g. ``Axis("gender", ("man", "woman"))``.

    Raises :class:`SpecError` for an invalid name, fewer than two values, empty or duplicate values.
    """

    name: str
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        if not _NAME_PATTERN.match(self.name):
            raise SpecError(f"invalid axis name {self.name!r} (letters, digits, '_' and '-' only)")
        if any(not value.strip() or value != value.strip() for value in self.values):
            raise SpecError(f"axis {self.name!r} has an empty value or one with surrounding spaces")
        if len(self.values) < 2:
            raise SpecError(f"axis {self.name!r} needs at least 2 values, got {len(self.values)}")
        duplicates = _duplicates(value.lower() for value in self.values)
        if duplicates:
            raise SpecError(f"axis {self.name!r} repeats value(s): {', '.join(duplicates)}")

    def index(self, value: str) -> int:
        """Position of ``value`` on this axis."""
        try:
            return self.values.index(value)
        except ValueError:
            raise SpecError(f"axis {self.name!r} has no value {value!r} (values: {', '.join(self.values)})") from None


@dataclass(frozen=True)
class Cell:
    """One attribute cell: its value on each axis (empty for explicit cells) and its prompt phrase."""

    phrase: str
    values: tuple[tuple[str, str], ...] = ()

    def value(self, axis: str) -> str:
        """The cell's value on ``axis``."""
        return dict(self.values)[axis]


PhraseBuilder = Callable[[Sequence[tuple[str, str]]], str]


@dataclass(frozen=True)
class AttributeSpec:
    """The cells a concept is balanced over, and the target distribution ``t`` over them (sums to 1).

    Build one with :meth:`from_axes` (intersectional product) or :meth:`from_phrases` (explicit cells), or
    :func:`spec_from_cli` from command-line strings. Construction validates everything (see
    :func:`validate_target`) and raises :class:`SpecError`.
    """

    cells: tuple[Cell, ...]
    target: tuple[float, ...]
    axes: tuple[Axis, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "cells", tuple(self.cells))
        object.__setattr__(self, "axes", tuple(self.axes))
        if len(self.cells) < 2:
            raise SpecError(f"need at least 2 cells, got {len(self.cells)}")
        duplicates = _duplicates(cell.phrase.strip().lower() for cell in self.cells)
        if duplicates:
            raise SpecError(f"duplicate cell(s): {', '.join(duplicates)}")
        if any(not cell.phrase.strip() for cell in self.cells):
            raise SpecError("a cell has an empty phrase")
        object.__setattr__(self, "target", validate_target(self.target, len(self.cells)))
        if self.axes:
            self._check_axes()

    def _check_axes(self) -> None:
        names = [axis.name for axis in self.axes]
        duplicates = _duplicates(names)
        if duplicates:
            raise SpecError(f"duplicate axis name(s): {', '.join(duplicates)}")
        expected = math.prod(len(axis.values) for axis in self.axes)
        if len(self.cells) != expected:
            raise SpecError(f"{len(self.cells)} cells for axes that make {expected}")
        seen = set()
        for cell in self.cells:
            if [name for name, _ in cell.values] != names:
                raise SpecError(f"cell {cell.phrase!r} does not name one value per axis in axis order")
            seen.add(tuple(axis.index(value) for axis, (_, value) in zip(self.axes, cell.values, strict=True)))
        if len(seen) != expected:
            raise SpecError("the cells do not cover every combination of the axes exactly once")

    @classmethod
    def from_axes(
        cls,
        axes: Sequence[Axis],
        target: Sequence[float] | None = None,
        marginals: Mapping[str, Sequence[float]] | None = None,
        phrases: Mapping[str | tuple[str, ...], str] | None = None,
        phrase_builder: PhraseBuilder | None = None,
    ) -> AttributeSpec:
        """Intersectional spec: cells are the product of ``axes`` (first axis slowest).

        ``target`` (one value per cell) and ``marginals`` (per axis, see :func:`product_target`) are
        exclusive; with neither the target is uniform. ``phrases`` and ``phrase_builder``: see
        :func:`cells_from_axes`.
        """
        axes = check_axes(axes)
        cells = cells_from_axes(axes, phrases=phrases, phrase_builder=phrase_builder)
        if target is not None and marginals:
            raise SpecError("give either a per-cell target or per-axis marginals, not both")
        if marginals:
            target = product_target(axes, marginals)
        elif target is None:
            target = uniform_target(len(cells))
        return cls(cells=cells, target=tuple(target), axes=axes)

    @classmethod
    def from_phrases(cls, phrases: Sequence[str], target: Sequence[float] | None = None) -> AttributeSpec:
        """Explicit cells, one per phrase (duplicates rejected); uniform target unless ``target`` is given."""
        cells = cells_from_phrases(phrases)
        return cls(cells=cells, target=tuple(uniform_target(len(cells)) if target is None else target))

    @property
    def num_cells(self) -> int:
        return len(self.cells)

    @property
    def target_array(self) -> np.ndarray:
        return np.asarray(self.target, dtype=np.float64)

    @property
    def phrases(self) -> list[str]:
        return [cell.phrase for cell in self.cells]

    @property
    def axis_names(self) -> list[str]:
        return [axis.name for axis in self.axes]

    def axis(self, name: str) -> Axis:
        """The axis called ``name``."""
        for axis in self.axes:
            if axis.name == name:
                return axis
        if not self.axes:
            raise SpecError("this spec has explicit cells and no axes")
        raise SpecError(f"no axis {name!r} (axes: {', '.join(self.axis_names)})")

    def value_indices(self) -> np.ndarray:
        """``(K, A)`` integer array: entry ``[k, a]`` is the index of cell k's value on axis a."""
        self._require_axes()
        return np.array(
            [[axis.index(cell.value(axis.name)) for axis in self.axes] for cell in self.cells], dtype=np.int64
        ).reshape(len(self.cells), len(self.axes))

    def cell_index(self, values: Mapping[str, str]) -> int:
        """Index of the cell with the given value on every axis."""
        self._require_axes()
        missing = [name for name in self.axis_names if name not in values]
        extra = [name for name in values if name not in self.axis_names]
        if missing or extra:
            raise SpecError(f"cell values must name exactly the axes {', '.join(self.axis_names)}")
        wanted = tuple(self.axis(name).index(values[name]) for name in self.axis_names)
        matches = np.flatnonzero((self.value_indices() == np.array(wanted)).all(axis=1))
        return int(matches[0])

    def cell_values(self, index: int) -> dict[str, str]:
        """Axis name → value of cell ``index``."""
        self._require_axes()
        return dict(self.cells[index].values)

    def cells_with(self, axis: str, value: str) -> np.ndarray:
        """Indices of the cells whose value on ``axis`` is ``value`` (sorted)."""
        position = self.axis_names.index(self.axis(axis).name)
        column = self.value_indices()[:, position]
        return np.flatnonzero(column == self.axis(axis).index(value))

    def membership(self, axis: str) -> np.ndarray:
        """``(V, K)`` 0/1 matrix M with ``M[v, k] = 1`` iff cell k has value v on ``axis``."""
        values = self.axis(axis).values
        matrix = np.zeros((len(values), self.num_cells), dtype=np.float64)
        for row, value in enumerate(values):
            matrix[row, self.cells_with(axis, value)] = 1.0
        return matrix

    def marginalize(self, probs: np.ndarray, axis: str) -> np.ndarray:
        """Marginal over ``axis`` of per-cell quantities: ``p(v) = Σ_{k: cell k has v} p(k)``.

        ``probs`` has the cells on its last dimension (``(..., K)``); the result has ``(..., V)``.
        """
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape[-1] != self.num_cells:
            raise SpecError(f"expected {self.num_cells} cells on the last dimension, got {probs.shape[-1]}")
        return probs @ self.membership(axis).T

    def marginals(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`marginalize` over every axis: axis name → ``(..., V_a)``."""
        return {name: self.marginalize(probs, name) for name in self.axis_names}

    def marginal_target(self, axis: str) -> np.ndarray:
        """The target distribution of ``axis`` (the marginal of ``t``)."""
        return self.marginalize(self.target_array, axis)

    def to_dict(self) -> dict:
        """JSON-ready description; :meth:`from_dict` rebuilds an equal spec."""
        return {
            "axes": [{"name": axis.name, "values": list(axis.values)} for axis in self.axes],
            "cells": [{"phrase": cell.phrase, "values": dict(cell.values)} for cell in self.cells],
            "target": list(self.target),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> AttributeSpec:
        """Inverse of :meth:`to_dict`."""
        try:
            axes = tuple(Axis(item["name"], tuple(item["values"])) for item in data.get("axes", ()))
            names = [axis.name for axis in axes]
            cells = tuple(
                Cell(item["phrase"], tuple((name, item["values"][name]) for name in names)) for item in data["cells"]
            )
            return cls(cells=cells, target=tuple(float(p) for p in data["target"]), axes=axes)
        except (KeyError, TypeError) as error:
            raise SpecError(f"malformed attribute spec: missing or invalid {error}") from None

    def _require_axes(self) -> None:
        if not self.axes:
            raise SpecError("this spec has explicit cells and no axes")


def parse_axis(text: str) -> Axis:
    """Parse the command-line syntax ``NAME=v1,v2,...`` (spaces around items are ignored)."""
    name, sep, values = text.partition("=")
    if not sep or not name.strip() or not values.strip():
        raise SpecError(f"cannot parse axis {text!r}: expected NAME=v1,v2,...")
    items = [value.strip() for value in values.split(",")]
    if any(not item for item in items):
        raise SpecError(f"cannot parse axis {text!r}: empty value")
    return Axis(name.strip(), tuple(items))


def parse_axes(texts: Iterable[str]) -> tuple[Axis, ...]:
    """Parse several ``NAME=v1,v2,...`` strings; rejects duplicate axis names."""
    return check_axes([parse_axis(text) for text in texts])


def check_axes(axes: Sequence[Axis]) -> tuple[Axis, ...]:
    """At least one axis and no two with the same name."""
    axes = tuple(axes)
    if not axes:
        raise SpecError("no attribute axes given")
    duplicates = _duplicates(axis.name for axis in axes)
    if duplicates:
        raise SpecError(f"duplicate axis name(s): {', '.join(duplicates)}")
    return axes


def _axis_rank(name: str) -> int:
    """Word-order slot of an axis: age (0), other adjectives (1), race (2), gender noun (3)."""
    key = name.lower()
    if key in AGE_AXES:
        return 0
    if key in RACE_AXES:
        return 2
    if key in GENDER_AXES:
        return 3
    return 1


def natural_phrase(values: Sequence[tuple[str, str]]) -> str:
    """The default phrase of a cell from its ``(axis, value)`` pairs, in natural English order.

    Word order: age, then other adjective axes (in axis order), then race/ethnicity, then the gender value as
    the noun (``"person"`` when no gender axis is given); a value ``with``/``without`` becomes a trailing
    ``"with <axis>"`` (``"without eyeglasses"``). Examples: (gender=woman, race=Asian, age=young) →
    ``"young Asian woman"``; (race=Black,) → ``"Black person"``; (gender=man, eyeglasses=with) →
    ``"man with eyeglasses"``. Only the ordering rules depend on axis names (age, race, ethnicity, skin_tone,
    gender, sex); other axes keep their given order.
    """
    prefix: list[tuple[int, int, str]] = []
    postfix: list[str] = []
    noun = DEFAULT_NOUN
    for position, (axis, value) in enumerate(values):
        rank = _axis_rank(axis)
        if value.lower() in POSTFIX_VALUES:
            postfix.append(f"{value} {axis.replace('_', ' ')}")
        elif rank == 3:
            noun = value
        else:
            prefix.append((rank, position, value))
    words = [value for _, _, value in sorted(prefix)] + [noun] + postfix
    return " ".join(words)


def cell_key(values: Sequence[str]) -> str:
    """The key of a cell in a phrase-override mapping: its values in axis order joined by ``","``."""
    return ",".join(values)


def cells_from_axes(
    axes: Sequence[Axis],
    phrases: Mapping[str | tuple[str, ...], str] | None = None,
    phrase_builder: PhraseBuilder | None = None,
) -> tuple[Cell, ...]:
    """The product of ``axes`` as cells, first axis varying slowest.

    Each cell's phrase is ``phrase_builder(((axis, value), ...))`` (default :func:`natural_phrase`) unless
    ``phrases`` maps the cell (by its tuple of values in axis order, or :func:`cell_key` of it, e.g.
    ``"woman,Asian,young"``) to an explicit phrase. Unknown override keys and duplicate phrases are errors.
    """
    axes = check_axes(axes)
    builder = phrase_builder or natural_phrase
    overrides = {key if isinstance(key, str) else cell_key(key): phrase for key, phrase in (phrases or {}).items()}
    cells = []
    for combo in itertools.product(*(axis.values for axis in axes)):
        values = tuple(zip((axis.name for axis in axes), combo, strict=True))
        phrase = overrides.pop(cell_key(combo), None) or builder(values)
        cells.append(Cell(phrase=phrase, values=values))
    if overrides:
        raise SpecError(f"phrase override for unknown cell(s): {'; '.join(overrides)}")
    duplicates = _duplicates(cell.phrase.lower() for cell in cells)
    if duplicates:
        raise SpecError(f"several cells have the phrase(s): {', '.join(duplicates)}")
    return tuple(cells)


def cells_from_phrases(phrases: Sequence[str]) -> tuple[Cell, ...]:
    """Explicit cells from phrases (surrounding spaces stripped); empty or duplicate phrases are errors."""
    cleaned = [phrase.strip() for phrase in phrases]
    if any(not phrase for phrase in cleaned):
        raise SpecError("empty cell phrase")
    duplicates = _duplicates(phrase.lower() for phrase in cleaned)
    if duplicates:
        raise SpecError(f"duplicate cell(s): {', '.join(duplicates)}")
    if len(cleaned) < 2:
        raise SpecError(f"need at least 2 cells, got {len(cleaned)}")
    return tuple(Cell(phrase=phrase) for phrase in cleaned)


def uniform_target(num_cells: int) -> tuple[float, ...]:
    """``t_j = 1/K``."""
    return tuple([1.0 / num_cells] * num_cells)


def validate_target(target: Sequence[float], num_cells: int) -> tuple[float, ...]:
    """Check that ``target`` is a distribution over ``num_cells`` cells and return it as floats.

    Requires one value per cell, every value finite and ≥ 0, and ``|Σ_j t_j − 1| ≤ 1e-6``.
    """
    try:
        values = tuple(float(p) for p in target)
    except (TypeError, ValueError):
        raise SpecError(f"target must be a list of numbers, got {target!r}") from None
    if len(values) != num_cells:
        raise SpecError(f"target has {len(values)} values for {num_cells} cells")
    if not all(math.isfinite(p) for p in values):
        raise SpecError("target values must be finite")
    if any(p < 0 for p in values):
        raise SpecError("target values must be non-negative")
    total = math.fsum(values)
    if abs(total - 1.0) > TARGET_ATOL:
        raise SpecError(f"target must sum to 1, sums to {total:.6g}")
    return values


def parse_probabilities(text: str) -> tuple[float, ...]:
    """Parse ``"p1,p2,..."``; each item a decimal or a fraction such as ``1/3``."""
    items = [item.strip() for item in text.split(",")]
    try:
        return tuple(float(Fraction(item)) for item in items)
    except (ValueError, ZeroDivisionError):
        raise SpecError(f"cannot parse probabilities {text!r}: expected p1,p2,... (decimals or a/b)") from None


def product_target(axes: Sequence[Axis], marginals: Mapping[str, Sequence[float]]) -> tuple[float, ...]:
    """Joint target from per-axis marginals: ``t(v_1, …, v_A) = Π_a m_a(v_a)``.

    Axes missing from ``marginals`` get a uniform marginal; each given marginal is validated like a target.
    """
    axes = check_axes(axes)
    names = {axis.name for axis in axes}
    unknown = [name for name in marginals if name not in names]
    if unknown:
        raise SpecError(f"marginal for unknown axis {unknown[0]!r} (axes: {', '.join(sorted(names))})")
    joint = np.ones(1)
    for axis in axes:
        given = marginals.get(axis.name)
        try:
            marginal = uniform_target(len(axis.values)) if given is None else validate_target(given, len(axis.values))
        except SpecError as error:
            raise SpecError(f"marginal of axis {axis.name!r}: {error}") from None
        joint = np.outer(joint, marginal).ravel()
    return tuple(float(p) for p in joint)


def spec_from_cli(axes: Sequence[str] = (), cells: Sequence[str] = (), targets: Sequence[str] = ()) -> AttributeSpec:
    """Build a spec from command-line strings.

    ``axes``: ``NAME=v1,v2,...`` strings (intersectional); ``cells``: explicit phrases — exactly one of the two.
    ``targets``: nothing (uniform), one ``p1,p2,...`` (one value per cell), or one ``AXIS=p1,p2,...`` per axis
    whose marginal is given (the joint is their product, other axes uniform).
    """
    if bool(axes) == bool(cells):
        raise SpecError("give attribute axes (NAME=v1,v2,...) or explicit cells, exactly one of the two")
    per_cell, marginals = parse_targets(targets)
    if cells:
        if marginals:
            raise SpecError("per-axis targets need axes, not explicit cells")
        return AttributeSpec.from_phrases(cells, target=per_cell)
    return AttributeSpec.from_axes(parse_axes(axes), target=per_cell, marginals=marginals)


def parse_targets(texts: Sequence[str]) -> tuple[tuple[float, ...] | None, dict[str, tuple[float, ...]]]:
    """Split target strings into a per-cell target (``p1,...``) or per-axis marginals (``AXIS=p1,...``)."""
    per_cell: tuple[float, ...] | None = None
    marginals: dict[str, tuple[float, ...]] = {}
    for text in texts:
        name, sep, values = text.partition("=")
        if sep:
            if name.strip() in marginals:
                raise SpecError(f"two targets for axis {name.strip()!r}")
            marginals[name.strip()] = parse_probabilities(values)
        elif per_cell is not None:
            raise SpecError("give one per-cell target, not several")
        else:
            per_cell = parse_probabilities(text)
    if per_cell is not None and marginals:
        raise SpecError("give either a per-cell target or per-axis marginals, not both")
    return per_cell, marginals


def _duplicates(items: Iterable[str]) -> list[str]:
    """Items that occur more than once, in order of their second occurrence."""
    seen: set[str] = set()
    repeated: list[str] = []
    for item in items:
        if item in seen and item not in repeated:
            repeated.append(item)
        seen.add(item)
    return repeated
