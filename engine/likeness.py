"""Likeness: how much a generated portrait looks like its owner, on a documented 0-100 scale.

- The *signature* is the mean of the dlib face descriptors (128-D) of the user's accepted photos. It is
  a summary of the face, kept with the user's model (sealed, same deadline) and never shown as numbers.
- A candidate's *distance* is the Euclidean distance from its face's descriptor to the signature. dlib's
  own operating point: two photos of one person are usually closer than 0.6 (99.38% on LFW).
- The *likeness* maps that distance to 0-100 with a logistic curve centred on dlib's 0.6::

      likeness = 100 / (1 + exp((distance - 0.6) / 0.05))

      distance  0.35  0.45  0.50  0.55  0.60  0.65  0.70  0.80
      likeness    99    95    88    73    50    27    12     2

  So 50 means "at dlib's same-person threshold", above 85 is a clear match, below 20 looks like someone
  else. The distance to a mean of several photos is at most the average distance to each of them
  (the triangle inequality), so the landmark stays conservative for a signature of several photos.

Scoring a candidate also counts its faces; candidates with exactly one face always rank before those
with none or several, whatever their distance.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from engine import faces

THRESHOLD = 0.6  # dlib's same-person operating point (distance)
SPREAD = 0.05  # distance units per e-fold of the logistic curve
DETECT_LONG_SIDE = 768  # faces are found on a copy at most this long, HOG upsampled once: faces from
# ~40 px there (~53 px in a 1024 px image). bench/engine.py reports the time per image.
OTHER_FACE_SCORE = 0.5  # as in intake: a second face counts when HOG is this sure ...
OTHER_FACE_RATIO = 1 / 3  # ... and it is at least this big relative to the main face

_MAGIC = b"LKSG"
_VERSION = 1
_HEADER = struct.Struct("<4sBHH")  # magic, version, photos, dimensions


def likeness_from_distance(distance: float) -> int:
    """The 0-100 likeness of a descriptor ``distance`` (see the module docstring for the curve)."""
    if not math.isfinite(distance) or distance < 0:
        raise ValueError("distance must be a finite non-negative number")
    z = (distance - THRESHOLD) / SPREAD
    if z > 50:
        return 0
    return round(100 / (1 + math.exp(z)))


def distance_for_likeness(likeness: float) -> float:
    """The largest distance that still reaches ``likeness`` (0-100); the inverse of the curve."""
    if not 0 <= likeness <= 100:
        raise ValueError("likeness must be between 0 and 100")
    if likeness <= 0:
        return math.inf
    if likeness >= 100:
        return 0.0
    return max(0.0, THRESHOLD + SPREAD * math.log(100 / likeness - 1))


@dataclass(frozen=True)
class Signature:
    """The mean dlib descriptor of a user's accepted photos and how many photos it summarises."""

    embedding: tuple[float, ...]
    photos: int

    @classmethod
    def from_embeddings(cls, embeddings: Sequence[Sequence[float]]) -> Signature:
        if not embeddings:
            raise ValueError("a signature needs at least one face descriptor")
        mean = np.mean(np.asarray(embeddings, dtype=np.float64), axis=0)
        return cls(embedding=tuple(float(v) for v in mean), photos=len(embeddings))

    def to_bytes(self) -> bytes:
        """``LKSG``, version, photo count, dimensions, float64 values."""
        n = len(self.embedding)
        return _HEADER.pack(_MAGIC, _VERSION, self.photos, n) + struct.pack(f"<{n}d", *self.embedding)

    @classmethod
    def from_bytes(cls, data: bytes) -> Signature:
        if len(data) < _HEADER.size:
            raise ValueError("not a likeness signature")
        magic, version, photos, n = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION or len(data) != _HEADER.size + 8 * n:
            raise ValueError("not a version 1 likeness signature")
        return cls(embedding=struct.unpack_from(f"<{n}d", data, _HEADER.size), photos=photos)

    def distance(self, descriptor: Sequence[float]) -> float:
        return faces.descriptor_distance(tuple(descriptor), self.embedding)


@dataclass(frozen=True)
class Score:
    """One candidate: how many faces, and for the main face its distance and likeness (None: no face)."""

    faces: int
    distance: float | None
    likeness: int | None
    box: faces.Face | None = None  # the main face, in the scored image's pixels

    @property
    def one_face(self) -> bool:
        return self.faces == 1

    def reaches(self, min_likeness: int) -> bool:
        """Exactly one face and at least ``min_likeness``."""
        return self.one_face and self.likeness is not None and self.likeness >= min_likeness


def find_faces(image: Image.Image) -> list[faces.Face]:
    """The image's faces in its own pixels, main (best HOG score) first; small or unsure extras dropped."""
    scale = min(1.0, DETECT_LONG_SIDE / max(image.size))
    small = image.convert("RGB")
    if scale < 1.0:
        small = small.resize((round(image.width * scale), round(image.height * scale)))
    found = faces.detect_faces(np.asarray(small), upsample=1)
    if not found:
        return []
    main = found[0]
    others = [f for f in found[1:] if f.score >= OTHER_FACE_SCORE and f.side >= main.side * OTHER_FACE_RATIO]
    return [f.scaled(1 / scale) for f in (main, *others)]


def score(image: Image.Image, signature: Signature | None) -> Score:
    """Count the faces of ``image`` and measure its main face against ``signature`` (if there is one)."""
    found = find_faces(image)
    if not found:
        return Score(faces=0, distance=None, likeness=None)
    main = found[0]
    if signature is None:
        return Score(faces=len(found), distance=None, likeness=None, box=main)
    rgb = np.asarray(image.convert("RGB"))
    distance = signature.distance(faces.describe_face(rgb, main))
    return Score(faces=len(found), distance=distance, likeness=likeness_from_distance(distance), box=main)


def rank(scores: Sequence[Score]) -> list[int]:
    """Candidate indices, best first: one face by distance, then several faces by distance, then no face.

    Ties keep the generation order, so the ranking is deterministic.
    """

    def key(i: int) -> tuple[int, float, int]:
        s = scores[i]
        group = 0 if s.one_face else (1 if s.faces > 1 else 2)
        return group, s.distance if s.distance is not None else math.inf, i

    return sorted(range(len(scores)), key=key)


@dataclass(frozen=True)
class Selection:
    """The candidates to deliver (best first) and how many of them miss the minimum likeness."""

    indices: list[int]
    below_minimum: int

    @property
    def needs_note(self) -> bool:
        """Fewer than the requested number reached the minimum: the user is told, nothing is dropped."""
        return self.below_minimum > 0


def select(scores: Sequence[Score], count: int, min_likeness: int) -> Selection:
    """The ``count`` best candidates (always ``count``, as long as there are that many) and the gate."""
    if count < 1 or count > len(scores):
        raise ValueError("count must be between 1 and the number of candidates")
    chosen = rank(scores)[:count]
    below = sum(1 for i in chosen if not scores[i].reaches(min_likeness))
    return Selection(indices=chosen, below_minimum=below)
