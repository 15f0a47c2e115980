import sys
import types

import numpy as np
import pytest
from PIL import Image

from mist_debias.core.spec import spec_from_cli
from mist_debias.measure.classifiers import CellClassifier, CellPredictions, ClassifierError
from mist_debias.measure.classifiers.face_gate import FaceBox, FaceGatedClassifier, HaarFaceDetector


class ListedFaces:
    """A detector that returns, for the image whose top-left pixel's red value is i, the boxes ``faces[i]``."""

    def __init__(self, faces: list[list[FaceBox]]) -> None:
        self.faces = faces

    def detect(self, image: Image.Image) -> list[FaceBox]:
        return self.faces[image.getpixel((0, 0))[0]]


class Recorder:
    """A classifier that records what it is given; image j gets the one-hot row of cell (red value of (0, 0)) mod
    K, and is invalid when that red value is in ``invalid``."""

    def __init__(self, invalid: frozenset[int] = frozenset()) -> None:
        self.seen: list[Image.Image] = []
        self.invalid = invalid

    def classify(self, images, spec) -> CellPredictions:
        self.seen.extend(images)
        ids = [image.getpixel((0, 0))[0] for image in images]
        probs = np.zeros((len(images), spec.num_cells))
        probs[np.arange(len(images)), [i % spec.num_cells for i in ids]] = 1.0
        valid = np.array([i not in self.invalid for i in ids], dtype=bool)
        return CellPredictions(probs=np.where(valid[:, None], probs, 0.0), valid=valid)


def tagged(index: int, size: tuple[int, int] = (100, 80)) -> Image.Image:
    """An image whose top-left pixel carries ``index`` in its red channel."""
    image = Image.new("RGB", size, (200, 200, 200))
    image.putpixel((0, 0), (index, 0, 0))
    return image


SPEC = spec_from_cli(["gender=man,woman", "age=young,old"])
ONE = [FaceBox(10, 20, 40, 30)]


def test_only_one_face_images_are_classified_and_the_rest_counted_invalid():
    faces = [[], ONE, [FaceBox(0, 0, 10, 10), FaceBox(50, 50, 10, 10)], ONE, [], ONE]
    recorder = Recorder()
    gate = FaceGatedClassifier(recorder, ListedFaces(faces), crop=False)
    assert isinstance(gate, CellClassifier)
    predictions = gate.classify([tagged(i) for i in range(len(faces))], SPEC)
    np.testing.assert_array_equal(predictions.valid, [False, True, False, True, False, True])
    assert [image.getpixel((0, 0))[0] for image in recorder.seen] == [1, 3, 5]
    np.testing.assert_array_equal(predictions.probs[~predictions.valid], 0.0)
    np.testing.assert_array_equal(predictions.labels, [-1, 1, -1, 3, -1, 1])
    np.testing.assert_array_equal(predictions.counts(), [0, 2, 0, 1])


def test_inner_invalid_rows_stay_invalid_and_no_face_means_no_call():
    recorder = Recorder(invalid=frozenset({1}))
    predictions = FaceGatedClassifier(recorder, ListedFaces([ONE, ONE]), crop=False).classify(
        [tagged(0), tagged(1)], SPEC
    )
    np.testing.assert_array_equal(predictions.valid, [True, False])
    np.testing.assert_array_equal(predictions.probs[1], 0.0)
    empty = Recorder()
    none = FaceGatedClassifier(empty, ListedFaces([[]]), crop=False).classify([tagged(0)], SPEC)
    assert empty.seen == [] and not none.valid.any()


def test_crop_is_the_face_grown_by_the_margin_and_clipped_to_the_image():
    assert FaceBox(10, 20, 40, 30).with_margin(0.25, (100, 80)) == (0, 12, 60, 58)
    assert FaceBox(70, 60, 40, 30).with_margin(0.5, (100, 80)) == (50, 45, 100, 80)
    recorder = Recorder()
    FaceGatedClassifier(recorder, ListedFaces([ONE]), margin=0.25).classify([tagged(0)], SPEC)
    assert recorder.seen[0].size == (60, 46)


def test_bad_margin_is_refused():
    with pytest.raises(ClassifierError, match="margin"):
        FaceGatedClassifier(Recorder(), ListedFaces([]), margin=-0.1)


def test_haar_detects_one_drawn_face_none_on_blank_or_noise_and_each_of_several(render_faces):
    detector = HaarFaceDetector()
    (face,) = detector.detect(render_faces(256, 256, [(28, 28, 200)]))
    # The cascade's box sits on the drawn face: its centre within a tenth of the face size of the drawing's.
    assert abs(face.x + face.width / 2 - 128) < 20 and abs(face.y + face.height / 2 - 128) < 20
    assert 100 <= face.width <= 200
    assert detector.detect(render_faces(256, 256, [])) == []
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8))
    assert detector.detect(noise) == []
    assert len(detector.detect(render_faces(512, 256, [(20, 28, 200), (290, 28, 200)]))) == 2
    assert len(detector.detect(render_faces(600, 200, [(0, 0, 200), (200, 0, 200), (400, 0, 200)]))) == 3


def test_min_face_ignores_faces_smaller_than_its_share_of_the_image(render_faces):
    small = render_faces(256, 256, [(100, 60, 80)])
    assert len(HaarFaceDetector().detect(small)) == 1
    assert HaarFaceDetector(min_face=0.4).detect(small) == []


def test_gate_with_haar_classifies_only_the_one_face_image(render_faces):
    images = [
        render_faces(256, 256, []),
        render_faces(256, 256, [(28, 28, 200)]),
        render_faces(512, 256, [(20, 28, 200), (290, 28, 200)]),
    ]
    recorder = Recorder()
    predictions = FaceGatedClassifier(recorder, HaarFaceDetector()).classify(images, SPEC)
    np.testing.assert_array_equal(predictions.valid, [False, True, False])
    assert len(recorder.seen) == 1 and recorder.seen[0].size[0] < 256


def test_missing_opencv_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ClassifierError, match=r"needs OpenCV: pip install 'opencv-python-headless>=4.8,<5'"):
        HaarFaceDetector()


def test_opencv_without_cascades_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(__version__="5.0.0"))
    with pytest.raises(ClassifierError, match=r"OpenCV 5.0.0 has no Haar cascades"):
        HaarFaceDetector()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scale_factor": 1.0}, "scale_factor"),
        ({"min_neighbors": -1}, "min_neighbors"),
        ({"min_face": 1.0}, "min_face"),
    ],
)
def test_bad_detector_settings_are_refused(options, message):
    with pytest.raises(ClassifierError, match=message):
        HaarFaceDetector(**options)
