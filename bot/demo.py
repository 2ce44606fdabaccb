"""A ready photo set for a first try without your own selfies: `python -m bot --console --demo`.

Grace Hopper's official US Navy portrait (public domain), as it ships inside matplotlib's sample data, is
mirrored, turned, re-framed and re-lit into distinct photos of one person. Each one passes the photo intake
after the ones before it (a test checks this): same person, a face large and sharp enough, no duplicates.
The portraits a model trained on them gives are of Grace Hopper, which is the point: a newcomer reaches
training and styles in one step, with nobody's personal photos.
"""

from __future__ import annotations

import io
import shlex
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps, ImageStat

SOURCE = "grace_hopper.jpg"  # matplotlib's sample data


class DemoUnavailable(Exception):
    """The package that ships the demo face is not installed; `str()` says how to install it."""


@dataclass(frozen=True)
class Variant:
    mirror: bool
    degrees: float
    zoom: float  # > 1 crops the borders, like a photo taken closer
    light: float  # brightness factor


# Angles and mirroring make each face crop differ from every other by more than the duplicate threshold.
VARIANTS = (
    Variant(False, 0, 1.0, 1.0),
    Variant(True, 0, 1.08, 1.06),
    Variant(False, -9, 1.12, 0.94),
    Variant(False, 5, 1.05, 1.1),
    Variant(True, -5, 1.1, 0.97),
    Variant(True, 9, 1.12, 1.04),
    Variant(False, 9, 1.15, 1.0),
    Variant(True, -9, 1.08, 0.92),
)


def source_photo() -> Image.Image:
    """The public-domain portrait from matplotlib's sample data."""
    try:
        from matplotlib import cbook
    except ImportError:
        raise DemoUnavailable(
            "the demo photos come from matplotlib's sample data: install it with "
            '`pip install matplotlib` (scripts/run installs it with the ".[test]" extra).'
        ) from None
    with Image.open(cbook.get_sample_data(SOURCE, asfileobj=False)) as image:
        return image.convert("RGB")


def render(base: Image.Image, variant: Variant) -> Image.Image:
    """One demo photo: `base` mirrored, turned (corners filled with the photo's edge colour), cropped, lit."""
    image = ImageOps.mirror(base) if variant.mirror else base
    if variant.degrees:
        edge = tuple(round(v) for v in ImageStat.Stat(image.crop((0, 0, image.width, 8))).mean)
        image = image.rotate(variant.degrees, resample=Image.Resampling.BICUBIC, fillcolor=edge)
    if variant.zoom > 1:
        width, height = round(image.width / variant.zoom), round(image.height / variant.zoom)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    return ImageEnhance.Brightness(image).enhance(variant.light)


def demo_photos() -> list[tuple[str, bytes]]:
    """`(file name, JPEG bytes)` for every demo photo, in the order to send them."""
    base = source_photo()
    photos = []
    for n, variant in enumerate(VARIANTS, start=1):
        buffer = io.BytesIO()
        render(base, variant).save(buffer, format="JPEG", quality=92)
        photos.append((f"demo-{n}.jpg", buffer.getvalue()))
    return photos


def write_demo_photos(folder: Path) -> list[Path]:
    """Write the demo photos into `folder` (created if needed) and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in demo_photos():
        path = folder / name
        path.write_bytes(data)
        paths.append(path)
    return paths


def send_line(paths: list[Path]) -> str:
    """The console line that sends every demo photo at once."""
    return "photo " + " ".join(shlex.quote(str(path)) for path in paths)
