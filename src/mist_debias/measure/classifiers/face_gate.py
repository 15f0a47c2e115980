"""A face gate: only images showing exactly one detected face are classified; the rest are counted invalid.

Real Stable Diffusion images of a profession often show no face (a stethoscope on a desk, a back turned) or
several (a team); a face classifier would still put each of them in some cell. The gate runs a face detector on
every image and passes on only the images with exactly one face, optionally cropped to that face with a
margin (face classifiers such as FairFace's are trained on face crops); every other image gets
``valid=False`` and a zero row, so it is counted and reported, never guessed.

The default detector is OpenCV's Viola–Jones Haar cascade ``haarcascade_frontalface_default.xml``, whose
weights ship inside the ``opencv-python-headless`` 4.x wheel (``cv2.data.haarcascades``), so it works offline.
OpenCV 5 no longer ships the cascades; install the ``faces`` extra (``opencv-python-headless>=4.8,<5``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from mist_debias.core.spec import AttributeSpec
from mist_debias.measure.classifiers.base import CellClassifier, CellPredictions
from mist_debias.measure.classifiers.clip import ClassifierError

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
FACES_EXTRA = "pip install 'opencv-python-headless>=4.8,<5' (the mist-debias[faces] extra)"


@dataclass(frozen=True)
class FaceBox:
    """A detected face: top-left corner ``(x, y)`` and size ``width × height`` in pixels."""

    x: int
    y: int
    width: int
    height: int

    def with_margin(self, margin: float, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """PIL crop box ``(left, top, right, bottom)`` grown by ``margin`` × the face size on every side,
        clipped to the image (``image_size`` = width, height)."""
        grow_x, grow_y = round(margin * self.width), round(margin * self.height)
        width, height = image_size
        return (
            max(0, self.x - grow_x),
            max(0, self.y - grow_y),
            min(width, self.x + self.width + grow_x),
            min(height, self.y + self.height + grow_y),
        )


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds the faces in an image."""

    def detect(self, image: Image.Image) -> list[FaceBox]: ...


class HaarFaceDetector:
    """OpenCV's Haar-cascade face detector (``cv2.CascadeClassifier.detectMultiScale`` on the grey image).

    ``scale_factor`` and ``min_neighbors`` are OpenCV's (image pyramid step; how many overlapping raw
    detections a face needs). Faces narrower than ``min_face`` × the image's shorter side are ignored.
    """

    def __init__(
        self,
        cascade: str = DEFAULT_CASCADE,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face: float = 0.05,
    ) -> None:
        if scale_factor <= 1.0:
            raise ClassifierError(f"face gate scale_factor must be above 1, got {scale_factor}")
        if min_neighbors < 0:
            raise ClassifierError(f"face gate min_neighbors must be 0 or more, got {min_neighbors}")
        if not 0.0 <= min_face < 1.0:
            raise ClassifierError(f"face gate min_face must be in [0, 1), got {min_face}")
        self._cv2 = _import_cv2()
        path = Path(self._cv2.data.haarcascades) / cascade
        if not path.is_file():
            raise ClassifierError(f"no Haar cascade {cascade!r} in OpenCV {self._cv2.__version__}; {FACES_EXTRA}")
        self._cascade = self._cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise ClassifierError(f"OpenCV could not read the Haar cascade {path}")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face = min_face

    def detect(self, image: Image.Image) -> list[FaceBox]:
        grey = np.asarray(image.convert("L"))
        side = max(1, round(self.min_face * min(grey.shape)))
        boxes = self._cascade.detectMultiScale(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
        )
        return [FaceBox(*(int(value) for value in box)) for box in boxes]


class FaceGatedClassifier:
    """A :class:`~mist_debias.measure.classifiers.base.CellClassifier` that classifies only one-face images.

    For each image the detector's face count c decides: c = 1 → the image (cropped to the face grown by
    ``margin`` on every side when ``crop``) goes to ``classifier``; c ≠ 1 → ``valid=False`` and a zero row.
    Rows the inner classifier marks invalid stay invalid.
    """

    def __init__(
        self, classifier: CellClassifier, detector: FaceDetector, crop: bool = True, margin: float = 0.25
    ) -> None:
        if margin < 0:
            raise ClassifierError(f"face gate margin must be 0 or more, got {margin}")
        self.classifier = classifier
        self.detector = detector
        self.crop = crop
        self.margin = margin

    def faces(self, images: Sequence[Image.Image]) -> list[list[FaceBox]]:
        """The detected faces of every image."""
        return [self.detector.detect(image) for image in images]

    def classify(self, images: Sequence[Image.Image], spec: AttributeSpec) -> CellPredictions:
        probs = np.zeros((len(images), spec.num_cells))
        valid = np.zeros(len(images), dtype=bool)
        faces = self.faces(images)
        kept = [row for row, boxes in enumerate(faces) if len(boxes) == 1]
        if kept:
            inputs = [self._face_image(images[row], faces[row][0]) for row in kept]
            inner = self.classifier.classify(inputs, spec)
            probs[kept] = np.where(inner.valid[:, None], inner.probs, 0.0)
            valid[kept] = inner.valid
        return CellPredictions(probs=probs, valid=valid)

    def _face_image(self, image: Image.Image, box: FaceBox) -> Image.Image:
        return image.crop(box.with_margin(self.margin, image.size)) if self.crop else image


def _import_cv2():
    """OpenCV, imported on first use; a clear error when it is missing or has no Haar cascades."""
    try:
        import cv2
    except ImportError:
        raise ClassifierError(f"the face gate needs OpenCV: {FACES_EXTRA}") from None
    if not hasattr(cv2, "CascadeClassifier"):
        raise ClassifierError(f"OpenCV {cv2.__version__} has no Haar cascades; {FACES_EXTRA}")
    return cv2
