"""Watermark robustness: decode rate after JPEG re-compression and resizing, on real photos.

    PYTHONPATH=. python bench/watermark.py [--sizes 512 1024] [--images 20] [--stock]

Marks crops of scikit-image's sample photos at each size, applies each transform, and decodes from
the pixels without knowing the deployment (the verifier's default). A decode counts when at most
`watermark.MAX_BIT_ERRORS` of 48 bits differ from a valid payload. `--stock` also measures
invisible-watermark's own `WatermarkEncoder` (dwtDct on the U channel) with the same payload.
Prints a table and, last, one line of JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable
from statistics import mean

import numpy as np
from PIL import Image
from skimage import data as photos

from engine.provenance import watermark

PHOTOS = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
DEPLOYMENT = "bench"
Transform = Callable[[Image.Image], Image.Image]


def test_images(count: int) -> list[tuple[str, Image.Image]]:
    """Square crops of the sample photos: the centre, then the top-left and bottom-right 60%."""
    images = []
    for crop in ("centre", "top-left", "bottom-right"):
        for name in PHOTOS:
            photo = Image.fromarray(getattr(photos, name)()).convert("RGB")
            w, h = photo.size
            side = min(w, h) if crop == "centre" else int(min(w, h) * 0.6)
            left, top = {"centre": ((w - side) // 2, (h - side) // 2), "top-left": (0, 0)}.get(
                crop, (w - side, h - side)
            )
            images.append((f"{name}/{crop}", photo.crop((left, top, left + side, top + side))))
    return images[:count]


def jpeg(quality: int, subsampling: int) -> Transform:
    def apply(image: Image.Image) -> Image.Image:
        out = io.BytesIO()
        image.save(out, "JPEG", quality=quality, subsampling=subsampling)
        return Image.open(io.BytesIO(out.getvalue())).convert("RGB")

    return apply


def resize(factor: float, back: bool) -> Transform:
    def apply(image: Image.Image) -> Image.Image:
        size = image.size
        small = image.resize((round(size[0] * factor), round(size[1] * factor)), Image.Resampling.LANCZOS)
        return small.resize(size, Image.Resampling.LANCZOS) if back else small

    return apply


TRANSFORMS: dict[str, Transform] = {"none (PNG)": lambda image: image}
for _q in (95, 90, 87, 85, 75):
    for _sub, _label in ((0, "4:4:4"), (2, "4:2:0")):
        TRANSFORMS[f"JPEG q{_q} {_label}"] = jpeg(_q, _sub)
for _f in (0.75, 0.5):
    TRANSFORMS[f"resize {_f}x"] = resize(_f, back=False)
    TRANSFORMS[f"resize {_f}x, back up"] = resize(_f, back=True)


def stock_embed(image: Image.Image) -> Image.Image:
    """invisible-watermark's WatermarkEncoder.encode(..., 'dwtDct') with our payload."""
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", watermark.payload_bits(watermark.deployment_tag(DEPLOYMENT)).tolist())
    bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
    return Image.fromarray(np.ascontiguousarray(encoder.encode(bgr, "dwtDct")[:, :, ::-1]))


def stock_read(image: Image.Image) -> watermark.WatermarkReading:
    from imwatermark import WatermarkDecoder

    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    if image.width * image.height < 256 * 256:
        return watermark.match(None)
    bits = WatermarkDecoder("bits", watermark.PAYLOAD_BITS).decode(bgr, "dwtDct")
    return watermark.match(np.asarray(bits, dtype=np.uint8))


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--stock", action="store_true", help="also measure the stock dwtDct encoder")
    args = parser.parse_args()

    methods: dict[str, tuple[Callable, Callable]] = {
        "likeness": (lambda image: watermark.embed(image, DEPLOYMENT), watermark.read)
    }
    if args.stock:
        methods["stock"] = (stock_embed, stock_read)

    started = time.perf_counter()
    images = test_images(args.images)
    results: dict = {}
    for method, (embed, read) in methods.items():
        for size in args.sizes:
            hits = {name: [] for name in TRANSFORMS}
            errors = {name: [] for name in TRANSFORMS}
            psnrs, false_hits, unmarked_errors = [], 0, []
            for _, photo in images:
                original = photo.resize((size, size), Image.Resampling.LANCZOS)
                marked = embed(original)
                psnrs.append(psnr(original, marked))
                unmarked = read(original)
                false_hits += unmarked.present
                unmarked_errors.append(unmarked.bit_errors)
                for name, transform in TRANSFORMS.items():
                    reading = read(transform(marked))
                    hits[name].append(reading.present)
                    errors[name].append(reading.bit_errors if reading.bit_errors is not None else 48)
            results[f"{method}@{size}"] = {
                "psnr_db": round(mean(psnrs), 1),
                "unmarked_false_positives": false_hits,
                "unmarked_min_bit_errors": min(unmarked_errors),
                "decode_rate": {name: round(mean(v), 3) for name, v in hits.items()},
                "mean_bit_errors": {name: round(mean(v), 1) for name, v in errors.items()},
            }

    columns = list(results)
    print(
        f"{len(images)} images; decode rate (mean bit errors of 48); present when <= "
        f"{watermark.MAX_BIT_ERRORS} errors, deployment unknown\n"
    )
    print(f"| transform | {' | '.join(columns)} |")
    print(f"|---|{'---|' * len(columns)}")
    for name in TRANSFORMS:
        cells = [
            f"{results[c]['decode_rate'][name]:.0%} ({results[c]['mean_bit_errors'][name]})" for c in columns
        ]
        print(f"| {name} | {' | '.join(cells)} |")
    print(f"| PSNR of marking (dB) | {' | '.join(str(results[c]['psnr_db']) for c in columns)} |")
    print(
        "| unmarked judged present | "
        + " | ".join(f"{results[c]['unmarked_false_positives']}/{len(images)}" for c in columns)
        + " |"
    )
    print(
        "| unmarked: fewest bit errors | "
        + " | ".join(str(results[c]["unmarked_min_bit_errors"]) for c in columns)
        + " |"
    )
    print(f"\n{time.perf_counter() - started:.0f} s")
    print(json.dumps({"images": len(images), "max_bit_errors": watermark.MAX_BIT_ERRORS, "results": results}))


if __name__ == "__main__":
    main()
