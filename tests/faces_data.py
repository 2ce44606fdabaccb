"""Test images built from photos shipped inside installed packages (nothing is downloaded).

Real faces: scikit-image's `astronaut` (Eileen Collins) and matplotlib's `grace_hopper.jpg`.
No faces: scikit-image's `coffee` and `chelsea` (a cat), and random noise.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
import pillow_heif
from matplotlib import cbook
from PIL import Image, ImageCms, ImageFilter, ImageOps
from skimage import data

pillow_heif.register_heif_opener()

GPS_LATITUDE = (48.0, 51.0, 29.5)  # a recognisable value to look for in the output
COMMENT = b"LIKENESS-SECRET-COMMENT"
XMP_MARKER = b"LIKENESS-SECRET-XMP"


def astronaut() -> Image.Image:
    """512x512 RGB, one frontal face (about 90 px) and a helmet that fools HOG a little."""
    return Image.fromarray(data.astronaut())


def grace_hopper() -> Image.Image:
    """512x600 RGB portrait, one frontal face (about 190 px)."""
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        return im.convert("RGB")


def coffee() -> Image.Image:
    return Image.fromarray(data.coffee())


def chelsea() -> Image.Image:
    return Image.fromarray(data.chelsea())


def noise(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def upscaled(im: Image.Image, factor: float) -> Image.Image:
    return im.resize((round(im.width * factor), round(im.height * factor)), Image.Resampling.LANCZOS)


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    """A two-person "group photo": both images at the same height, next to each other."""
    height = min(left.height, right.height)
    left = left.resize((round(left.width * height / left.height), height))
    right = right.resize((round(right.width * height / right.height), height))
    canvas = Image.new("RGB", (left.width + right.width, height))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width, 0))
    return canvas


def blurred(im: Image.Image, sigma: float) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(sigma))


def encode(im: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def heic(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="HEIF", quality=quality)
    return buf.getvalue()


def jpeg_with_metadata(im: Image.Image) -> bytes:
    """JPEG carrying GPS EXIF, a camera MakerNote-ish tag, a COM comment, an XMP packet and an ICC profile."""
    exif = Image.Exif()
    exif[0x010F] = "LikenessCam"  # Make
    exif[0x0131] = "LIKENESS-SECRET-SOFTWARE"  # Software
    gps = exif.get_ifd(0x8825)
    gps[1] = "N"
    gps[2] = GPS_LATITUDE
    gps[3] = "E"
    gps[4] = (2.0, 17.0, 40.2)
    xmp = (
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" dc:creator="' + XMP_MARKER + b'"/>'
        b"</rdf:RDF></x:xmpmeta>"
    )
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return encode(im, "JPEG", quality=92, exif=exif, comment=COMMENT, xmp=xmp, icc_profile=icc)


def jpeg_with_orientation(im: Image.Image, orientation: int) -> bytes:
    """Store `im` rotated as a camera would, with the EXIF Orientation tag that undoes it."""
    stored = {
        6: lambda i: i.transpose(Image.Transpose.ROTATE_90),  # display = rotate 90 CW
        8: lambda i: i.transpose(Image.Transpose.ROTATE_270),
        3: lambda i: i.transpose(Image.Transpose.ROTATE_180),
    }[orientation](im)
    exif = Image.Exif()
    exif[0x0112] = orientation
    check = ImageOps.exif_transpose(Image.open(io.BytesIO(encode(stored, "JPEG", exif=exif))))
    assert check.size == im.size
    return encode(stored, "JPEG", quality=92, exif=exif)


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header declares width x height pixels; its pixel data is cut short.

    If a decoder ever tried to decode it, it would fail as corrupt (after allocating width*height bytes);
    a correct intake refuses it from the header alone.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def lfw_faces() -> np.ndarray:
    """scikit-image's 25x25 greyscale crops of 100 faces from Labeled Faces in the Wild (as uint8)."""
    faces = data.lfw_subset()[:100]
    return (faces * 255).clip(0, 255).astype(np.uint8)


@functools.cache
def same_person_photos() -> tuple[bytes, ...]:
    """Three JPEGs of one person that pass intake together: the astronaut, mirrored, and turned 8°."""
    base = astronaut()
    images = [
        base,
        base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        base.rotate(8, resample=Image.Resampling.BICUBIC),
    ]
    return tuple(encode(image, quality=90) for image in images)
