"""The exact oracle: decode gender, race, age and profession of a world image from its pixels, no learning.

Each pixel x is labelled with its nearest palette colour p* (see :func:`~mist_debias.world.render.palette`)
when it is close enough,

    label(x) = argmin_p ‖x − p‖₂   if  min_p ‖x − p‖₂ ≤ tolerance,   else "unknown",

so blurred edges and off-palette pixels of generated images vote for nothing. Then, per image:

* profession = the background colour that most pixels carry (≥ ``min_background`` pixels and a share
  ≥ ``min_share`` of all background-labelled pixels),
* race = the majority skin colour, age = the majority hair colour (same count and share rules),
* gender = whether hair falls below the head: the number of hair pixels lower than the skin centroid is
  ≥ ``woman_hair`` (woman) or ≤ ``man_hair`` (man); anything in between is undecodable,
* a torso (≥ ``min_shirt`` shirt pixels) must be present.

When any rule fails the image is *undecodable* and carries the reason; the oracle never guesses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mist_debias.core.spec import AttributeSpec, Cell, SpecError
from mist_debias.measure.classifiers.base import CellPredictions
from mist_debias.world.render import AGES, BACKGROUND_COLORS, GENDERS, IMAGE_SIZE, RACES, Attributes, palette

GENDER_WORDS: dict[str, str] = {
    "man": "man",
    "men": "man",
    "male": "man",
    "boy": "man",
    "woman": "woman",
    "women": "woman",
    "female": "woman",
    "girl": "woman",
}
RACE_WORDS: dict[str, str] = {race.lower(): race for race in RACES}
AGE_WORDS: dict[str, str] = {age: age for age in AGES}
AXIS_WORDS: dict[str, dict[str, str]] = {"gender": GENDER_WORDS, "race": RACE_WORDS, "age": AGE_WORDS}


@dataclass(frozen=True)
class DecodeThresholds:
    """Tolerances of the decoder (pixel counts refer to a 32×32 image)."""

    tolerance: float = 40.0
    min_share: float = 0.85
    min_background: int = 150
    min_skin: int = 30
    min_hair: int = 15
    min_shirt: int = 80
    woman_hair: int = 25
    man_hair: int = 8


@dataclass(frozen=True)
class Decoded:
    """One image's decoded attributes, or ``None`` with the reason it could not be decoded."""

    attributes: Attributes | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.attributes is not None


def images_to_array(images: Sequence[Image.Image] | np.ndarray) -> np.ndarray:
    """PIL images or an (n, H, W, 3) uint8 array → (n, 32, 32, 3) float array (resized if needed)."""
    if isinstance(images, np.ndarray):
        array = images
    else:
        array = (
            np.stack(
                [
                    np.asarray(
                        image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
                        if image.size != (IMAGE_SIZE, IMAGE_SIZE)
                        else image.convert("RGB")
                    )
                    for image in images
                ]
            )
            if len(images)
            else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3))
        )
    if array.ndim != 4 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"expected images of shape (n, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), got {array.shape}")
    return array.astype(np.float64)


def _majority(labels: np.ndarray, codes: np.ndarray, minimum: int, share: float) -> tuple[int, str]:
    """Index into ``codes`` of the majority label, or −1 with a reason."""
    counts = np.array([(labels == code).sum() for code in codes])
    total = counts.sum()
    best = int(counts.argmax())
    if counts[best] < minimum:
        return -1, f"{counts[best]} pixels < {minimum}"
    if counts[best] < share * total:
        return -1, f"majority share {counts[best] / total:.2f} < {share}"
    return best, ""


class WorldDecoder:
    """Decode world images pixel-wise against the palette (see module docstring for the rules)."""

    def __init__(self, thresholds: DecodeThresholds | None = None) -> None:
        self.thresholds = thresholds or DecodeThresholds()
        colors = palette()
        self.names = list(colors)
        self.colors = np.asarray([colors[name] for name in self.names], dtype=np.float64)
        self.background_codes = np.array([self.names.index(f"bg:{p}") for p in BACKGROUND_COLORS])
        self.skin_codes = np.array([self.names.index(f"skin:{r}") for r in RACES])
        self.hair_codes = np.array([self.names.index(f"hair:{a}") for a in AGES])
        self.shirt_code = self.names.index("shirt")

    def pixel_labels(self, images: Sequence[Image.Image] | np.ndarray) -> np.ndarray:
        """Palette index per pixel, −1 where no palette colour is within tolerance; shape (n, 32, 32)."""
        array = images_to_array(images)
        squared = (array**2).sum(axis=-1, keepdims=True) - 2.0 * array @ self.colors.T + (self.colors**2).sum(axis=-1)
        labels = squared.argmin(axis=-1)
        return np.where(squared.min(axis=-1) <= self.thresholds.tolerance**2, labels, -1)

    def decode_labels(self, labels: np.ndarray) -> Decoded:
        """Decode one (32, 32) label map."""
        t = self.thresholds
        if (labels == self.shirt_code).sum() < t.min_shirt:
            return Decoded(None, "no torso")
        profession, why = _majority(labels, self.background_codes, t.min_background, t.min_share)
        if profession < 0:
            return Decoded(None, f"background: {why}")
        race, why = _majority(labels, self.skin_codes, t.min_skin, t.min_share)
        if race < 0:
            return Decoded(None, f"skin: {why}")
        age, why = _majority(labels, self.hair_codes, t.min_hair, t.min_share)
        if age < 0:
            return Decoded(None, f"hair: {why}")
        skin_rows = np.nonzero(np.isin(labels, self.skin_codes))[0]
        hair_rows = np.nonzero(np.isin(labels, self.hair_codes))[0]
        low_hair = int((hair_rows > skin_rows.mean()).sum())
        if low_hair >= t.woman_hair:
            gender = "woman"
        elif low_hair <= t.man_hair:
            gender = "man"
        else:
            return Decoded(None, f"gender: {low_hair} hair pixels below the head centre is ambiguous")
        return Decoded(Attributes(gender, RACES[race], AGES[age], tuple(BACKGROUND_COLORS)[profession]))

    def decode(self, images: Sequence[Image.Image] | np.ndarray) -> list[Decoded]:
        """Decode every image; undecodable ones carry ``attributes=None`` and a reason."""
        return [self.decode_labels(labels) for labels in self.pixel_labels(images)]


def _normalise_value(axis: str, value: str) -> str:
    words = AXIS_WORDS.get(axis.lower())
    if words is None:
        raise SpecError(f"the world oracle decodes axes {sorted(AXIS_WORDS)}, not {axis!r}")
    canonical = words.get(value.lower())
    if canonical is None:
        raise SpecError(f"the world oracle cannot recognise {axis}={value!r}; known: {sorted(set(words))}")
    return canonical


def cell_constraints(cell: Cell) -> dict[str, str]:
    """The attribute values a cell asks for, ``{axis: canonical value}``.

    Axis cells use their values; explicit cells (no values) are parsed from the words of their phrase
    ("young Black woman" → age=young, race=Black, gender=woman). Unknown words are ignored; a phrase that
    names no decodable attribute or two values of one axis is rejected.
    """
    if cell.values:
        return {axis.lower(): _normalise_value(axis, value) for axis, value in cell.values}
    constraints: dict[str, str] = {}
    for word in re.findall(r"[a-z]+", cell.phrase.lower()):
        for axis, words in AXIS_WORDS.items():
            if word in words:
                if constraints.get(axis, words[word]) != words[word]:
                    raise SpecError(f"cell {cell.phrase!r} names two values of {axis}")
                constraints[axis] = words[word]
    if not constraints:
        raise SpecError(f"cell {cell.phrase!r} names no attribute the world oracle decodes")
    return constraints


def _matches(attributes: Attributes, constraints: dict[str, str]) -> bool:
    return all(getattr(attributes, axis) == value for axis, value in constraints.items())


class WorldOracle:
    """The exact oracle as a :class:`~mist_debias.measure.classifiers.base.CellClassifier`.

    An image's row is one-hot on the cell its decoded attributes match (split evenly if several cells
    match, e.g. overlapping explicit cells); images that could not be decoded, or that match no cell, are
    invalid (``valid=False``, zero row).
    """

    def __init__(self, thresholds: DecodeThresholds | None = None) -> None:
        self.decoder = WorldDecoder(thresholds)

    def decode(self, images: Sequence[Image.Image] | np.ndarray) -> list[Decoded]:
        """The raw decoded attributes of each image (profession included)."""
        return self.decoder.decode(images)

    def classify(
        self, images: Sequence[Image.Image], spec: AttributeSpec, concept: str | None = None
    ) -> CellPredictions:
        """Cells of each image; with ``concept`` (a profession of the world) also whether each image still
        shows it (``kept``: its decoded profession is the concept)."""
        constraints = [cell_constraints(cell) for cell in spec.cells]
        decoded = self.decode(images)
        probs = np.zeros((len(decoded), spec.num_cells))
        for row, item in enumerate(decoded):
            if item.attributes is None:
                continue
            hits = [j for j, wanted in enumerate(constraints) if _matches(item.attributes, wanted)]
            if hits:
                probs[row, hits] = 1.0 / len(hits)
        kept = None
        if concept is not None and concept in BACKGROUND_COLORS:
            kept = np.array([item.ok and item.attributes.profession == concept for item in decoded])
        return CellPredictions(probs=probs, valid=probs.sum(axis=1) > 0, kept=kept)


def decode_rate(decoded: Sequence[Decoded]) -> float:
    """Fraction of images that could be decoded."""
    return float(np.mean([item.ok for item in decoded])) if decoded else float("nan")


__all__ = [
    "GENDERS",
    "DecodeThresholds",
    "Decoded",
    "WorldDecoder",
    "WorldOracle",
    "cell_constraints",
    "decode_rate",
]
