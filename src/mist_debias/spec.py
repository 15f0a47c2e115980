"""Attribute axes, intersectional cells and target distributions.

A *cell* is one combination of attribute values (e.g. gender=woman, race=Asian, age=young) with the
natural-language phrase used to build its attribute prompt ("young Asian woman"). Cells come either
from the product of axes or from an explicit list of phrases (then ``values`` is empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Axis:
    """One attribute axis, e.g. ``Axis("gender", ("man", "woman"))``."""

    name: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Cell:
    """One attribute cell: its value on each axis (empty for explicit cells) and its prompt phrase."""

    phrase: str
    values: tuple[tuple[str, str], ...] = ()

    def value(self, axis: str) -> str:
        """The cell's value on ``axis``."""
        return dict(self.values)[axis]


@dataclass(frozen=True)
class AttributeSpec:
    """The cells a concept is balanced over, and the target distribution ``t`` over them (sums to 1)."""

    cells: tuple[Cell, ...]
    target: tuple[float, ...]
    axes: tuple[Axis, ...] = field(default=())

    @property
    def num_cells(self) -> int:
        return len(self.cells)

    @property
    def target_array(self) -> np.ndarray:
        return np.asarray(self.target, dtype=np.float64)

    @property
    def phrases(self) -> list[str]:
        return [cell.phrase for cell in self.cells]
