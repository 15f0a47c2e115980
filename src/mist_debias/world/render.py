"""Render 32×32 RGB person glyphs whose attributes are drawn unambiguously.

One glyph is a head on a grey torso in front of a coloured background:

* profession → background colour (one saturated colour per profession),
* race       → skin colour of head and neck (three well separated tones),
* age        → hair colour (young: dark navy, old: light blue),
* gender     → hair length and head shape (man: square head, short cap of hair;
  woman: round head, long hair falling beside the head down to the shoulders).

Every colour of :data:`PALETTE` is at least :data:`MIN_PALETTE_DISTANCE` apart (Euclidean, RGB 0–255) from
every other, and the colour jitter is far smaller than half that distance, so a pixel's nearest palette
colour names its part. The three skin tones are at least :data:`MIN_SKIN_DISTANCE` apart: a generated
face painted between two tones (a model that has not committed to one) is then far from both and counted
as undecodable rather than read as either. Position (head centre) and colours are jittered per image
from a numpy Generator, so the same generator state renders the same image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGE_SIZE = 32
GENDERS: tuple[str, ...] = ("man", "woman")
RACES: tuple[str, ...] = ("White", "Asian", "Black")
AGES: tuple[str, ...] = ("young", "old")

SKIN_COLORS: dict[str, tuple[int, int, int]] = {
    "White": (255, 230, 210),
    "Asian": (196, 140, 80),
    "Black": (84, 46, 26),
}
HAIR_COLORS: dict[str, tuple[int, int, int]] = {
    "young": (24, 28, 96),
    "old": (150, 200, 255),
}
SHIRT_COLOR: tuple[int, int, int] = (96, 96, 104)
BACKGROUND_COLORS: dict[str, tuple[int, int, int]] = {
    "doctor": (40, 110, 225),
    "nurse": (232, 70, 150),
    "CEO": (18, 110, 40),
    "teacher": (250, 236, 30),
    "lawyer": (130, 30, 170),
    "chef": (220, 20, 30),
    "engineer": (30, 200, 190),
    "artist": (150, 230, 60),
}
MIN_PALETTE_DISTANCE = 80.0
MIN_SKIN_DISTANCE = 150.0

HEAD_CENTER = (12, 16)  # (row, column) before jitter
HEAD_HALF = 6  # the head spans rows/cols centre-6 .. centre+5
POSITION_JITTER = (2, 3)  # max |Δrow|, |Δcol|
COLOR_JITTER = 8  # max per-channel offset of each part's colour, per image
PIXEL_NOISE = 3  # max per-channel, per-pixel noise


@dataclass(frozen=True)
class Attributes:
    """The attributes of one person glyph."""

    gender: str
    race: str
    age: str
    profession: str

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("gender", self.gender, GENDERS),
            ("race", self.race, RACES),
            ("age", self.age, AGES),
            ("profession", self.profession, tuple(BACKGROUND_COLORS)),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def palette() -> dict[str, tuple[int, int, int]]:
    """All part colours by part name: ``bg:<profession>``, ``skin:<race>``, ``hair:<age>``, ``shirt``."""
    colors = {f"bg:{name}": rgb for name, rgb in BACKGROUND_COLORS.items()}
    colors.update({f"skin:{name}": rgb for name, rgb in SKIN_COLORS.items()})
    colors.update({f"hair:{name}": rgb for name, rgb in HAIR_COLORS.items()})
    colors["shirt"] = SHIRT_COLOR
    return colors


def _jittered(rgb: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float64) + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)


def head_mask(gender: str, row: int, col: int) -> np.ndarray:
    """Boolean 32×32 mask of the head centred at (row, col): a square with cut corners (man) or a disc."""
    rows, cols = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    dr, dc = rows - row + 0.5, cols - col + 0.5
    if gender == "man":
        inside = (np.abs(dr) <= HEAD_HALF) & (np.abs(dc) <= HEAD_HALF)
        return inside & (np.abs(dr) + np.abs(dc) <= 2 * HEAD_HALF - 2)
    return dr**2 + dc**2 <= (HEAD_HALF + 0.3) ** 2


def part_masks(attributes: Attributes, row: int, col: int) -> dict[str, np.ndarray]:
    """Boolean masks of each drawn part, in drawing order (later parts cover earlier ones)."""
    rows, cols = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    torso = (rows >= row + HEAD_HALF + 2) & (np.abs(cols - col + 0.5) <= 9)
    neck = (rows >= row + HEAD_HALF - 1) & (rows < row + HEAD_HALF + 2) & (np.abs(cols - col + 0.5) <= 2)
    head = head_mask(attributes.gender, row, col)
    cap = (rows >= row - HEAD_HALF - 1) & (rows <= row - HEAD_HALF + 2) & (np.abs(cols - col + 0.5) <= 7)
    cap &= head | (rows < row - HEAD_HALF + 1)
    masks = {"shirt": torso, "neck": neck}
    if attributes.gender == "woman":
        masks["hair_back"] = (
            (rows >= row - HEAD_HALF) & (rows <= row + HEAD_HALF + 3) & (np.abs(cols - col + 0.5) <= 9.5)
        )
    masks.update({"head": head, "hair": cap})
    return masks


def render(attributes: Attributes, rng: np.random.Generator) -> np.ndarray:
    """Render one glyph as a uint8 array of shape (32, 32, 3); jitter drawn from ``rng``."""
    row = HEAD_CENTER[0] + int(rng.integers(-POSITION_JITTER[0], POSITION_JITTER[0] + 1))
    col = HEAD_CENTER[1] + int(rng.integers(-POSITION_JITTER[1], POSITION_JITTER[1] + 1))
    skin = _jittered(SKIN_COLORS[attributes.race], rng)
    colors = {
        "shirt": _jittered(SHIRT_COLOR, rng),
        "neck": skin,
        "head": skin,
        "hair": _jittered(HAIR_COLORS[attributes.age], rng),
    }
    colors["hair_back"] = colors["hair"]
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float64)
    image[:] = _jittered(BACKGROUND_COLORS[attributes.profession], rng)
    for part, mask in part_masks(attributes, row, col).items():
        image[mask] = colors[part]
    image += rng.integers(-PIXEL_NOISE, PIXEL_NOISE + 1, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_batch(attributes: list[Attributes], rng: np.random.Generator) -> np.ndarray:
    """Render several glyphs, shape (n, 32, 32, 3) uint8, consuming ``rng`` in order."""
    if not attributes:
        return np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    return np.stack([render(item, rng) for item in attributes])


def to_pil(image: np.ndarray) -> Image.Image:
    """A (32, 32, 3) uint8 array as a PIL RGB image."""
    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
