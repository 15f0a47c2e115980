"""Per-axis classifiers combined into joint cells (e.g. gender × race × age).

Each group g covers a disjoint set of the spec's axes and gives the joint probability ``p_g(v_g | x)`` of its
axes' values (a one-axis group gives that axis's distribution). The probability of cell k, whose values on
group g's axes are ``v_g(k)``, is the product

    p(k | x) = Π_g p_g(v_g(k) | x),

which sums to 1 over the cells because the groups cover every axis exactly once, and whose marginal over
group g's axes is exactly ``p_g``. The product **assumes the groups' errors are independent** given the image
(a gender model's mistakes tell nothing about a race model's); correlated errors, such as both models failing on
the same dark or blurred faces, are not modelled. The hard label (``CellPredictions.labels``) is the arg-max
cell, which for a product is the combination of every group's own arg-max.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from mist_debias.core.spec import AttributeSpec
from mist_debias.measure.classifiers.base import CellPredictions
from mist_debias.measure.classifiers.clip import ClassifierError


class AxisGroupClassifier(Protocol):
    """A classifier of the values of some axes, jointly."""

    def ordered_axes(self, spec: AttributeSpec) -> tuple[str, ...]:
        """The axes it covers, in the spec's axis order."""

    def check(self, spec: AttributeSpec) -> None:
        """Raise :class:`~mist_debias.measure.classifiers.clip.ClassifierError` if it cannot classify ``spec``."""

    def joint_probabilities(self, images: Sequence[Image.Image], spec: AttributeSpec) -> np.ndarray:
        """``(n, V_1 … V_m)`` probabilities of the value combinations of :meth:`ordered_axes`."""


def check_axis_groups(groups: Sequence[AxisGroupClassifier], spec: AttributeSpec) -> None:
    """Refuse a spec whose axes are not each covered by exactly one group, or that a group cannot classify.

    Only :meth:`~AxisGroupClassifier.ordered_axes` and :meth:`~AxisGroupClassifier.check` are used, so label
    mappings can be checked before any model is loaded.
    """
    if not spec.axes:
        raise ClassifierError("per-axis classifiers need a spec built from axes, not explicit cells")
    for group in groups:
        group.check(spec)
    covered = [axis for group in groups for axis in group.ordered_axes(spec)]
    repeated = sorted({axis for axis in covered if covered.count(axis) > 1})
    if repeated:
        raise ClassifierError(f"axis {repeated[0]!r} has more than one classifier")
    missing = [axis for axis in spec.axis_names if axis not in covered]
    if missing:
        raise ClassifierError(f"no classifier for axis {missing[0]!r}: give labels for it")


class ProductCellClassifier:
    """A :class:`~mist_debias.measure.classifiers.base.CellClassifier` whose cell probability is the product of
    its groups' probabilities (see the module docstring, and its independence assumption)."""

    def __init__(self, groups: Sequence[AxisGroupClassifier]) -> None:
        if not groups:
            raise ClassifierError("a combined classifier needs at least one per-axis classifier")
        self.groups = tuple(groups)

    def check(self, spec: AttributeSpec) -> None:
        """See :func:`check_axis_groups`."""
        check_axis_groups(self.groups, spec)

    def classify(self, images: Sequence[Image.Image], spec: AttributeSpec) -> CellPredictions:
        self.check(spec)
        probs = np.ones((len(images), spec.num_cells))
        if len(images) == 0:
            return CellPredictions(probs=probs, valid=np.zeros(0, dtype=bool))
        value_indices = spec.value_indices()
        for group in self.groups:
            joint = group.joint_probabilities(images, spec)
            positions = [spec.axis_names.index(axis) for axis in group.ordered_axes(spec)]
            flat = np.ravel_multi_index(tuple(value_indices[:, positions].T), joint.shape[1:])
            probs *= joint.reshape(len(images), -1)[:, flat]
        return CellPredictions(probs=probs, valid=np.ones(len(images), dtype=bool))
