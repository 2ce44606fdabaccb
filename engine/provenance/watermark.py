"""Invisible watermark: a 48-bit payload hidden in the luma with invisible-watermark's dwtDct coder.

Payload layout (48 bits, big-endian):

    16-bit fixed tag 0xB4E1 | 16 bits of SHA-256(deployment_id) | CRC-16/CCITT over the first 32 bits

The tag and checksum let a verifier decide "present" without knowing the deployment; the middle
16 bits say which deployment marked the image (never which user). Decoding picks the nearest valid
codeword; the image counts as marked when at most `MAX_BIT_ERRORS` bits differ from it. The
chance that an unmarked image passes by accident is computed in `false_positive_rate()` and
documented in docs/provenance.md.
"""

from __future__ import annotations

import binascii
import hashlib
import math
from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
import pywt
from PIL import Image

TAG = 0xB4E1
PAYLOAD_BITS = 48
MAX_BIT_ERRORS = 3
MIN_SIDE = 512  # outputs are upscaled to at least this before marking (dwtDct refuses < 256x256)
SCALE = 16.0  # quantisation step of the marked DCT coefficient: strength vs. visibility
BLOCK = 4


@dataclass(frozen=True)
class WatermarkReading:
    """What the pixels say: whether the mark is there, how many bits were off, and the payload's fields."""

    present: bool
    bit_errors: int | None  # Hamming distance to the nearest valid codeword; None if undecodable
    tag: int | None  # the first 16 decoded bits (TAG when intact), None if undecodable
    deployment_tag: int | None  # the 16 deployment bits of the nearest codeword


def deployment_tag(deployment_id: str) -> int:
    """The 16 bits of SHA-256(deployment_id) carried in the payload."""
    return int.from_bytes(hashlib.sha256(deployment_id.encode()).digest()[:2], "big")


def payload_bits(dep_tag: int) -> np.ndarray:
    """The 48-bit codeword for a deployment tag, as an array of 0/1."""
    head = TAG.to_bytes(2, "big") + dep_tag.to_bytes(2, "big")
    crc = binascii.crc_hqx(head, 0xFFFF)
    return np.unpackbits(np.frombuffer(head + crc.to_bytes(2, "big"), dtype=np.uint8))


@cache
def _all_codewords() -> np.ndarray:
    """Every valid codeword (one per possible deployment tag), shape (65536, 48)."""
    return np.stack([payload_bits(t) for t in range(1 << 16)])


def false_positive_rate(max_errors: int = MAX_BIT_ERRORS, known_deployment: bool = False) -> float:
    """Probability that 48 uniformly random bits lie within `max_errors` of a valid codeword."""
    ball = sum(math.comb(PAYLOAD_BITS, i) for i in range(max_errors + 1))
    codewords = 1 if known_deployment else 1 << 16
    return codewords * ball / 2**PAYLOAD_BITS


def prepare(image: Image.Image, min_side: int = MIN_SIDE) -> Image.Image:
    """RGB copy, upscaled (Lanczos) so that its shortest side is at least `min_side`."""
    image = image.convert("RGB")
    short = min(image.size)
    if short < min_side:
        scale = min_side / short
        size = (max(min_side, round(image.width * scale)), max(min_side, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image


def _block_coder(bits: list[int]):
    """invisible-watermark's dwtDct block coder; imported late because the package imports torch."""
    from imwatermark.maxDct import EmbedMaxDct

    return EmbedMaxDct(bits, wmLen=PAYLOAD_BITS, block=BLOCK)


def _luma_band(bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """YUV copy of a BGR image, and the Haar DWT of its luma (cropped to a multiple of 4)."""
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    rows, cols = yuv.shape[0] // 4 * 4, yuv.shape[1] // 4 * 4
    approx, details = pywt.dwt2(yuv[:rows, :cols, 0].astype(np.float64), "haar")
    return yuv, approx, details


def embed(image: Image.Image, deployment_id: str, scale: float = SCALE) -> Image.Image:
    """Return a watermarked RGB copy of `image` (upscaled first when small). Mark after the last resize.

    invisible-watermark's dwtDct block coder (`EmbedMaxDct.encode_frame`) writes the bits into the
    DWT approximation band of the luma. We do the colour and wavelet transforms here rather than call
    `WatermarkEncoder.encode`, which marks a chroma channel (erased by 4:2:0 JPEG) and swaps the H and
    V detail bands when it inverts the DWT (PSNR 36-41 dB instead of ~48 dB); see docs/provenance.md.
    """
    rgb = prepare(image)
    bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
    yuv, approx, details = _luma_band(bgr)
    bits = payload_bits(deployment_tag(deployment_id)).tolist()
    _block_coder(bits).encode_frame(approx, scale)
    rows, cols = approx.shape[0] * 2, approx.shape[1] * 2
    luma = pywt.idwt2((approx, details), "haar")
    yuv[:rows, :cols, 0] = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    marked = cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR)
    return Image.fromarray(np.ascontiguousarray(marked[:, :, ::-1]))


def decode_bits(image: Image.Image, scale: float = SCALE) -> np.ndarray | None:
    """The 48 raw bits read from the pixels, or None when the image is too small to carry them."""
    rgb = image.convert("RGB")
    if rgb.width * rgb.height < 256 * 256:
        return None
    bgr = np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])
    _, approx, _ = _luma_band(bgr)
    votes: list[list[int]] = [[] for _ in range(PAYLOAD_BITS)]
    votes = _block_coder([]).decode_frame(approx, scale, votes)
    return (np.array([np.mean(v) for v in votes]) > 0.5).astype(np.uint8)


def read(image: Image.Image, deployment_id: str | None = None) -> WatermarkReading:
    """Decode the watermark from the pixels only and judge it (see `match`)."""
    return match(decode_bits(image), deployment_id)


def match(bits: np.ndarray | None, deployment_id: str | None = None) -> WatermarkReading:
    """Judge 48 decoded bits.

    With `deployment_id` the bits are compared with that deployment's codeword; without it, with the
    nearest of all 65536 valid codewords. Present when at most `MAX_BIT_ERRORS` bits differ.
    """
    if bits is None:
        return WatermarkReading(present=False, bit_errors=None, tag=None, deployment_tag=None)
    if deployment_id is not None:
        dep = deployment_tag(deployment_id)
        errors = int(np.count_nonzero(bits != payload_bits(dep)))
    else:
        distances = np.count_nonzero(_all_codewords() != bits, axis=1)
        dep = int(np.argmin(distances))
        errors = int(distances[dep])
    return WatermarkReading(
        present=errors <= MAX_BIT_ERRORS,
        bit_errors=errors,
        tag=int.from_bytes(np.packbits(bits[:16]).tobytes(), "big"),
        deployment_tag=dep,
    )
