"""The axes a run did not edit: did debiasing one attribute move another?

MIST claims a disentangled edit: balancing gender should leave a concept's race and age as they were. Where the
classifier sees axes the run did not edit (a model profile says which it can see: the world's oracle decodes
gender, race and age), the concept is generated on the same fresh seeds with the original model and with the final
edit, each image is classified on every unedited axis, and each value's share before and after is compared on the
pairs both classified. The shift ``after − before`` gets Newcombe's paired interval
(:func:`~mist_debias.measure.metrics.paired_difference_interval`); an interval that excludes 0 is flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from PIL import Image

from mist_debias.core.spec import AttributeSpec, Axis
from mist_debias.measure.classifiers.base import CellClassifier
from mist_debias.measure.metrics import paired_difference_interval


@dataclass(frozen=True)
class AxisShift:
    """One value of an unedited axis: its share before and after the edit on ``pairs`` seeds, and the shift's
    interval."""

    axis: str
    value: str
    before: float
    after: float
    shift: float
    lower: float
    upper: float
    pairs: int

    @property
    def shifted(self) -> bool:
        """Whether the shift's interval excludes 0."""
        return self.lower > 0 or self.upper < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "shifted": self.shifted}


def unedited_axes(spec: AttributeSpec, observable: Sequence[Axis]) -> list[Axis]:
    """The observable axes that ``spec`` does not balance over (by name; explicit cells balance over none)."""
    edited = {axis.name.lower() for axis in spec.axes}
    return [axis for axis in observable if axis.name.lower() not in edited]


def axis_shifts(
    classifier: CellClassifier,
    original: Sequence[Image.Image],
    edited: Sequence[Image.Image],
    axes: Sequence[Axis],
    alpha: float = 0.05,
) -> list[AxisShift]:
    """Per value of every axis in ``axes``: share before and after and the paired shift (see the module).

    ``original[i]`` and ``edited[i]`` are the same seed without and with the edit; an axis none of whose pairs
    could be classified on both sides is left out.
    """
    shifts = []
    for axis in axes:
        axis_spec = AttributeSpec.from_axes([axis])
        before = classifier.classify(list(original), axis_spec)
        after = classifier.classify(list(edited), axis_spec)
        both = before.valid & after.valid
        if not both.any():
            continue
        for index, value in enumerate(axis.values):
            was, now = before.labels[both] == index, after.labels[both] == index
            shift, lower, upper = paired_difference_interval(was, now, alpha)
            shifts.append(
                AxisShift(axis.name, value, float(was.mean()), float(now.mean()), shift, lower, upper, int(both.sum()))
            )
    return shifts
