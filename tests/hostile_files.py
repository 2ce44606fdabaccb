"""A corpus of hostile and odd files, built in code: what a public bot gets sent as "a photo".

`corpus()` returns (name, bytes, expected) where `expected` is the set of intake outcomes the file may
have ("accepted" or a rejection code); it is a set because odd-but-valid images (an APNG, a 16-bit PNG)
legitimately reach the face checks. Used by tests/test_hostile_input.py and bench/fuzz.py.
"""

from __future__ import annotations

import functools
import io
import random
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

from tests import faces_data as fd

DECODE_FAILURES = {"corrupt", "not_image"}
FACE_CHECKS = {
    "accepted",
    "no_face",
    "several_faces",
    "face_too_small",
    "blurry",
    "too_small",
    "duplicate",
    "different_person",
}


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def real_png_bomb(side: int = 6000) -> bytes:
    """A PNG that really decodes to side x side grey pixels (36 MP, under the 40 MP limit) from ~40 KB."""
    row = b"\x00" + b"\x00" * side
    idat = zlib.compress(row * side, 9)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 header is rewritten to declare width x height."""
    data = bytearray(fd.encode(Image.new("RGB", (16, 16), "grey"), "JPEG"))
    at = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


def animated_gif() -> bytes:
    frames = [Image.new("P", (300, 300), i * 40) for i in range(3)]
    return fd.encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def animated(fmt: str) -> bytes:
    face = fd.astronaut()
    frames = [face, face.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return fd.encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)


def cmyk_jpeg() -> bytes:
    return fd.encode(fd.astronaut().convert("CMYK"), "JPEG", quality=90)


def png16() -> bytes:
    grey = np.asarray(fd.astronaut().convert("L"), dtype=np.uint16) * 257
    return fd.encode(Image.fromarray(grey), "PNG")  # uint16 -> mode I;16


def palette_png(transparent: bool) -> bytes:
    image = fd.astronaut().convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return fd.encode(image, "PNG", **({"transparency": 0} if transparent else {}))


def rgba_png() -> bytes:
    image = fd.astronaut().convert("RGBA")
    image.putalpha(128)
    return fd.encode(image, "PNG")


def exif_orientation(orientation: int) -> bytes:
    """A face JPEG carrying EXIF orientation 1..8 (some of them mirror)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return fd.encode(fd.astronaut(), "JPEG", quality=90, exif=exif)


def zip_file() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", fd.encode(fd.astronaut(), "JPEG"))
    return buffer.getvalue()


SVG = (
    b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000"><text>&b;</text></svg>'
)
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n"


@functools.cache
def corpus() -> tuple[tuple[str, bytes, frozenset[str]], ...]:
    """Every hostile file with the outcomes it may have."""
    face = fd.astronaut()
    jpeg, png, webp, heic = (
        fd.encode(face, "JPEG", quality=90),
        fd.encode(face, "PNG"),
        fd.encode(face, "WEBP"),
        fd.heic(face),
    )
    rng = random.Random(13)
    items: list[tuple[str, bytes, set[str]]] = [
        ("zero bytes", b"", {"not_image"}),
        ("one byte", b"\xff", {"not_image"}),
        ("jpeg magic only", b"\xff\xd8\xff", {"corrupt"}),
        ("png magic only", b"\x89PNG\r\n\x1a\n", {"corrupt"}),
        ("truncated jpeg", jpeg[: len(jpeg) // 2], {"corrupt"}),
        ("truncated png", png[: len(png) // 2], {"corrupt"}),
        ("truncated webp", webp[: len(webp) // 2], {"corrupt"}),
        ("truncated heic", heic[: len(heic) // 2], {"corrupt"}),
        ("png bomb header 30k x 30k", fd.png_bomb(), {"too_many_pixels"}),
        ("png bomb header 2^31-1 wide", fd.png_bomb(2**31 - 1, 1), {"too_many_pixels", "corrupt"}),
        ("jpeg declaring 65000 x 65000", jpeg_declaring(65000, 65000), {"too_many_pixels"}),
        ("real 36 MP zero png", real_png_bomb(), {"no_face"}),
        ("animated gif", animated_gif(), {"not_image"}),
        ("animated webp", animated("WEBP"), FACE_CHECKS),
        ("apng", animated("PNG"), FACE_CHECKS),
        ("16-bit png", png16(), FACE_CHECKS),
        ("palette png", palette_png(False), FACE_CHECKS),
        ("palette png with transparency", palette_png(True), FACE_CHECKS),
        ("rgba png", rgba_png(), FACE_CHECKS),
        ("cmyk jpeg", cmyk_jpeg(), FACE_CHECKS),
        ("tiff", fd.encode(face, "TIFF"), {"not_image"}),
        ("bmp", fd.encode(face, "BMP"), {"not_image"}),
        ("svg with entities", SVG, {"not_image"}),
        ("pdf renamed .jpg", PDF, {"not_image"}),
        ("zip renamed .jpg", zip_file(), {"not_image"}),
        ("random bytes", rng.randbytes(50_000), {"not_image"}),
        ("random bytes behind jpeg magic", b"\xff\xd8\xff" + rng.randbytes(50_000), {"corrupt"}),
        ("random bytes behind png magic", b"\x89PNG\r\n\x1a\n" + rng.randbytes(50_000), {"corrupt"}),
        ("1 pixel jpeg", fd.encode(Image.new("RGB", (1, 1)), "JPEG"), {"too_small"}),
        ("1 pixel png", fd.encode(Image.new("RGB", (1, 1)), "PNG"), {"too_small"}),
        ("1 x 10000 png", fd.encode(Image.new("L", (1, 10000)), "PNG"), {"too_small"}),
        ("over the byte limit", jpeg + b"\x00" * (20 * 1024 * 1024), {"too_large"}),
    ]
    items += [(f"exif orientation {n}", exif_orientation(n), FACE_CHECKS) for n in range(1, 9)]
    return tuple((name, data, frozenset(expected)) for name, data, expected in items)
