"""The classifier protocol: images → per-cell probabilities, with undecodable images kept apart."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from mist_debias.core.spec import AttributeSpec


@dataclass(frozen=True)
class CellPredictions:
    """Per-image cell probabilities ``probs`` (n × K, rows sum to 1 where ``valid``).

    ``valid[i]`` is False when image i could not be classified at all (e.g. the oracle could not decode it);
    such rows are zeros and are counted and reported, never guessed. ``kept[i]``: whether image i still shows
    the concept it was generated for (None when the classifier was not asked or cannot tell).
    """

    probs: np.ndarray
    valid: np.ndarray
    kept: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        """Arg-max cell per image, −1 where invalid."""
        labels = self.probs.argmax(axis=1)
        return np.where(self.valid, labels, -1)

    def counts(self) -> np.ndarray:
        """Hard counts per cell over the valid images (length K)."""
        num_cells = self.probs.shape[1]
        return np.bincount(self.labels[self.valid], minlength=num_cells)

    def kept_count(self) -> int | None:
        """Valid images that still show the concept (None when the classifier did not tell)."""
        return None if self.kept is None else int(np.sum(self.kept & self.valid))


@runtime_checkable
class CellClassifier(Protocol):
    """Anything that assigns images to the cells of an :class:`AttributeSpec`."""

    def classify(self, images: list[Image.Image], spec: AttributeSpec) -> CellPredictions: ...


def classify_concept(
    classifier: CellClassifier, images: list[Image.Image], spec: AttributeSpec, concept: str
) -> CellPredictions:
    """``classifier.classify``, also asking whether each image still shows ``concept`` where the classifier can
    tell (its ``classify`` takes a ``concept`` keyword, as the world's oracle does); otherwise ``kept`` is None."""
    if "concept" in inspect.signature(classifier.classify).parameters:
        return classifier.classify(images, spec, concept=concept)
    return classifier.classify(images, spec)
