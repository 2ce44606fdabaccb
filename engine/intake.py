"""Photo intake: every photo a user sends passes here before anything is stored.

`process_photo` turns untrusted bytes into either an `Accepted` face crop (sRGB PNG, no metadata at all)
with the `Fingerprint` later photos are compared against, or a `Rejected` with a code for the message.
Pure functions: no storage, no encryption (the engine facade encrypts what we return).

Checks, in the order a user is told about them (see docs/intake.md for the thresholds' measurements):
too_large, not_image, too_many_pixels, corrupt, too_small, several_faces, no_face, face_too_small,
blurry, duplicate, different_person.
"""

from __future__ import annotations

import logging
import statistics
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass

import imagehash
import numpy as np
from PIL import Image

from engine import faces
from engine.imaging import (
    DEFAULT_MAX_PIXELS,
    DecodeError,
    TooManyPixels,
    decode_srgb,
    encode_png,
    laplacian_sharpness,
    open_image,
    sniff_format,
)

__all__ = [
    "REJECTION_CODES",
    "Accepted",
    "Fingerprint",
    "IntakeLimits",
    "Rejected",
    "check_reported_size",
    "process_photo",
    "sniff_format",
]

logger = logging.getLogger(__name__)

REJECTION_CODES = (
    "too_large",
    "not_image",
    "corrupt",
    "too_many_pixels",
    "too_small",
    "no_face",
    "several_faces",
    "face_too_small",
    "blurry",
    "different_person",
    "duplicate",
)

# Face detection runs on a copy scaled down to at most these sides: HOG with one upsampling step finds
# faces down to ~40 px there, i.e. ~5% of the shorter side, which is enough to see a group photo.
DETECT_SHORT_SIDE = 768
DETECT_LONG_SIDE = 1536
SHARPNESS_SIZE = 128  # face region resampled to this square before measuring blur


@dataclass(frozen=True)
class IntakeLimits:
    """Every threshold of the intake. The defaults are justified in docs/intake.md."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 256  # shorter side of the decoded photo
    output_size: int = 1024  # side of the stored square face crop (never upscaled)
    min_face_fraction: float = 0.12  # face box side / shorter image side
    min_face_pixels: int = 80  # face box side in pixels: the HOG detector's own window size
    blur_threshold: float = 15.0  # contrast-normalised Laplacian variance of the face at 128 px
    same_person_threshold: float = 0.6  # median dlib descriptor distance to the accepted photos
    duplicate_bits: int = 6  # perceptual hash (64-bit pHash) distance of the face crops
    face_score: float = 0.0  # HOG score for the main face (dlib's default)
    other_face_score: float = 0.5  # HOG score for a second face to count
    other_face_ratio: float = 1 / 3  # a second face smaller than this times the main one is background
    crop_scale: float = 2.2  # crop side / face box side: hair and shoulders


_FP_MAGIC = b"LKFP"
_FP_VERSION = 1
_FP_HEADER = struct.Struct("<4sBH")


@dataclass(frozen=True)
class Fingerprint:
    """What later photos are compared against; the engine stores it encrypted."""

    embedding: tuple[float, ...]  # 128-D dlib descriptor
    phash: str  # hex perceptual hash of the face crop

    def to_bytes(self) -> bytes:
        """`LKFP`, version, length, float64 embedding, ASCII hex pHash."""
        n = len(self.embedding)
        return (
            _FP_HEADER.pack(_FP_MAGIC, _FP_VERSION, n)
            + struct.pack(f"<{n}d", *self.embedding)
            + self.phash.encode("ascii")
        )

    @classmethod
    def from_bytes(cls, b: bytes) -> Fingerprint:
        magic, version, n = _FP_HEADER.unpack_from(b)
        if magic != _FP_MAGIC or version != _FP_VERSION:
            raise ValueError("not a version 1 fingerprint")
        start = _FP_HEADER.size
        end = start + 8 * n
        if len(b) < end:
            raise ValueError("truncated fingerprint")
        embedding = struct.unpack_from(f"<{n}d", b, start)
        phash = b[end:].decode("ascii")
        int(phash, 16)  # raises ValueError if it is not hex
        return cls(embedding=tuple(embedding), phash=phash)


@dataclass(frozen=True)
class Accepted:
    image: bytes  # face-centred square crop, sRGB PNG, no metadata
    fingerprint: Fingerprint
    width: int
    height: int


@dataclass(frozen=True)
class Rejected:
    code: str  # one of REJECTION_CODES
    detail: dict[str, int | float | str]  # numbers for the message, e.g. {"limit_mb": 20}


def check_reported_size(size: int | None, limits: IntakeLimits) -> Rejected | None:
    """Refuse before downloading when the platform reports a size over the limit (None: unknown)."""
    if size is not None and size > limits.max_bytes:
        return _too_large(size, limits)
    return None


def process_photo(data: bytes, limits: IntakeLimits, previous: Sequence[Fingerprint]) -> Accepted | Rejected:
    """Run every check on `data` against the user's already accepted photos (`previous`)."""
    started = time.perf_counter()
    result = _process(data, limits, previous)
    code = "accepted" if isinstance(result, Accepted) else result.code
    logger.debug("intake %s in %.0f ms", code, (time.perf_counter() - started) * 1000)
    return result


def _process(data: bytes, limits: IntakeLimits, previous: Sequence[Fingerprint]) -> Accepted | Rejected:
    if len(data) > limits.max_bytes:
        return _too_large(len(data), limits)
    fmt = sniff_format(data)
    if fmt is None:
        return Rejected("not_image", {"formats": "JPEG, PNG, WebP, HEIC"})
    try:
        image = decode_srgb(open_image(data, fmt, limits.max_pixels))
    except TooManyPixels:
        return Rejected("too_many_pixels", {"limit_mp": round(limits.max_pixels / 1e6, 1)})
    except DecodeError:
        return Rejected("corrupt", {})
    width, height = image.size
    if min(width, height) < limits.min_side:
        return Rejected("too_small", {"min_side": limits.min_side, "side": min(width, height)})

    # Faces are found on a smaller copy; boxes are mapped back to full resolution.
    scale = min(1.0, DETECT_SHORT_SIDE / min(width, height), DETECT_LONG_SIDE / max(width, height))
    small = image if scale == 1.0 else image.resize((round(width * scale), round(height * scale)))
    small_rgb = np.asarray(small)
    found = faces.detect_faces(small_rgb, upsample=1, min_score=limits.face_score)
    if found:
        main = found[0]
        candidates = [
            f
            for f in found[1:]
            if f.score >= limits.other_face_score and f.side >= main.side * limits.other_face_ratio
        ]
        # HOG alone takes textured patches (a badge, a collar) for faces once a photo is turned a few
        # degrees: a second face counts only when the CNN detector sees one there too (docs/intake.md).
        others = [f for f in candidates if faces.confirm_face(small_rgb, f)]
        if others:
            return Rejected("several_faces", {"faces": 1 + len(others)})
    else:
        return Rejected("no_face", {})

    face = main.scaled(1 / scale)
    fraction = face.side / min(width, height)
    if fraction < limits.min_face_fraction or face.side < limits.min_face_pixels:
        return Rejected(
            "face_too_small",
            {
                "percent": round(100 * fraction),
                "min_percent": round(100 * limits.min_face_fraction),
                "face_px": face.side,
                "min_face_px": limits.min_face_pixels,
            },
        )
    rgb = np.asarray(image)
    sharpness = laplacian_sharpness(rgb, (face.left, face.top, face.right, face.bottom), SHARPNESS_SIZE)
    if sharpness < limits.blur_threshold:
        return Rejected("blurry", {"sharpness": round(sharpness, 1), "threshold": limits.blur_threshold})

    crop = _face_crop(image, face, limits)
    fingerprint = Fingerprint(
        embedding=faces.describe_face(small_rgb, main), phash=str(imagehash.phash(crop))
    )
    if previous:
        bits = min(_phash_bits(fingerprint.phash, p.phash) for p in previous)
        if bits <= limits.duplicate_bits:
            return Rejected("duplicate", {"bits": bits})
        distance = statistics.median(
            faces.descriptor_distance(fingerprint.embedding, p.embedding) for p in previous
        )
        if distance > limits.same_person_threshold:
            return Rejected(
                "different_person",
                {"distance": round(distance, 3), "threshold": limits.same_person_threshold},
            )
    return Accepted(image=encode_png(crop), fingerprint=fingerprint, width=crop.width, height=crop.height)


def crop_box(face: faces.Face, width: int, height: int, crop_scale: float) -> tuple[int, int, int, int]:
    """Square around the face centre, `crop_scale` times the face, shrunk and shifted to stay inside.

    We clamp rather than pad: padding would add borders the model would learn to draw.
    """
    side = min(round(face.side * crop_scale), width, height)
    cx, cy = face.centre
    left = min(max(0, round(cx - side / 2)), width - side)
    top = min(max(0, round(cy - side / 2)), height - side)
    return left, top, left + side, top + side


def _face_crop(image: Image.Image, face: faces.Face, limits: IntakeLimits) -> Image.Image:
    box = crop_box(face, image.width, image.height, limits.crop_scale)
    side = box[2] - box[0]
    out = min(side, limits.output_size)
    return image.resize((out, out), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


def _phash_bits(a: str, b: str) -> int:
    return int(imagehash.hex_to_hash(a) - imagehash.hex_to_hash(b))


def _too_large(size: int, limits: IntakeLimits) -> Rejected:
    return Rejected(
        "too_large",
        {"limit_mb": _megabytes(limits.max_bytes), "size_mb": _megabytes(size)},
    )


def _megabytes(n: int) -> int | float:
    mb = round(n / 2**20, 1)
    return int(mb) if mb.is_integer() else mb
