"""Photo intake on CPU: throughput of the full path, and the measurements behind the thresholds.

    PYTHONPATH=. python bench/intake.py            # photos/s on 20 photos of mixed sizes and formats
    PYTHONPATH=. python bench/intake.py --measure  # blur, face-score and descriptor-distance tables

Human-readable lines first; the last line is JSON.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import statistics
import time

import numpy as np
from PIL import Image, ImageEnhance

from engine import faces
from engine.imaging import laplacian_sharpness
from engine.intake import SHARPNESS_SIZE, IntakeLimits, process_photo
from tests import faces_data as fd


def mixed_photos() -> list[tuple[str, bytes]]:
    """20 photos: phone-sized JPEGs up to 10.5 Mpx, HEIC, WebP, PNG, and a few refusals."""
    grace, astro = fd.grace_hopper(), fd.astronaut()
    photos = [
        ("jpeg 0.3 Mpx", fd.encode(grace)),
        ("jpeg 1.2 Mpx", fd.encode(fd.upscaled(grace, 2))),
        ("jpeg 4.9 Mpx", fd.encode(fd.upscaled(grace, 4))),
        ("jpeg 10.5 Mpx", fd.encode(fd.upscaled(grace, 5.86), quality=90)),
        ("png 1.2 Mpx", fd.encode(fd.upscaled(grace, 2), "PNG")),
        ("heic 1.2 Mpx", fd.heic(fd.upscaled(grace, 2))),
        ("webp 1.2 Mpx", fd.encode(fd.upscaled(grace, 2), "WEBP", quality=90)),
        ("jpeg no face", fd.encode(fd.upscaled(fd.coffee(), 2))),
        ("jpeg two faces", fd.encode(fd.upscaled(fd.side_by_side(astro, grace), 2))),
        ("jpeg + metadata", fd.jpeg_with_metadata(fd.upscaled(grace, 2))),
    ]
    return photos * 2


def bench(rounds: int) -> dict:
    limits = IntakeLimits()
    photos = mixed_photos()
    # Each photo is the user's first: face photos run every step down to the PNG encoding.
    process_photo(photos[0][1], limits, [])  # load the models outside the timing
    previous: list = []
    per_kind: dict[str, list[float]] = {}
    started = time.perf_counter()
    for _ in range(rounds):
        for kind, data in photos:
            t = time.perf_counter()
            result = process_photo(data, limits, previous)
            per_kind.setdefault(f"{kind} -> {getattr(result, 'code', 'accepted')}", []).append(
                time.perf_counter() - t
            )
    elapsed = time.perf_counter() - started
    n = rounds * len(photos)
    for kind, times in per_kind.items():
        print(f"{kind:40s} {1000 * statistics.median(times):7.0f} ms")
    rate = n / elapsed
    print(f"{n} photos in {elapsed:.1f} s: {rate:.2f} photos/s on CPU (one thread)")
    return {"photos": n, "seconds": round(elapsed, 2), "photos_per_s": round(rate, 2)}


def _detect(im: Image.Image) -> tuple[np.ndarray, list[faces.Face]]:
    a = np.asarray(im.convert("RGB"))
    return a, faces.detect_faces(a, upsample=1, min_score=-0.5)


def measure_blur() -> list[dict]:
    """Sharpness of the face against Gaussian blur; `effective` is sigma in pixels of the 128 px face."""
    rows = []
    bases = {
        "astronaut": fd.astronaut(),
        "grace_hopper": fd.grace_hopper(),
        "astronaut_x2": fd.upscaled(fd.astronaut(), 2),
        "grace_hopper_x2.5": fd.upscaled(fd.grace_hopper(), 2.5),
        "astronaut_dark": ImageEnhance.Brightness(fd.astronaut()).enhance(0.5),
    }
    for name, base in bases.items():
        for sigma in (0, 0.5, 1, 1.5, 2, 3, 4, 6):
            a, found = _detect(fd.blurred(base, sigma) if sigma else base)
            found = [f for f in found if f.score >= 0]
            if not found:
                rows.append({"image": name, "sigma": sigma, "detected": False})
                continue
            f = found[0]
            sharp = laplacian_sharpness(a, (f.left, f.top, f.right, f.bottom), SHARPNESS_SIZE)
            effective = round(sigma * SHARPNESS_SIZE / f.side, 2)
            rows.append({"image": name, "sigma": sigma, "effective": effective, "sharpness": round(sharp, 1)})
            print(f"blur {name:18s} sigma={sigma:<4} effective={effective:<5} sharpness={sharp:7.1f}")
    return rows


def measure_scores() -> dict:
    """HOG scores of true faces and of false detections over scales and small rotations."""
    true_scores, false_scores = [], []
    for base in (fd.astronaut(), fd.grace_hopper()):
        for scale, angle in itertools.product((0.75, 1, 1.5, 2), (-10, -5, 0, 5, 10)):
            im = fd.upscaled(base, scale).rotate(angle, resample=Image.Resampling.BICUBIC)
            _, found = _detect(im)
            if found:
                true_scores.append(found[0].score)
                false_scores += [f.score for f in found[1:]]
    for im in (fd.coffee(), fd.chelsea(), fd.noise()):
        false_scores += [f.score for f in _detect(im)[1]]
    summary = {
        "true_min": round(min(true_scores), 2),
        "true_median": round(statistics.median(true_scores), 2),
        "false_max": round(max(false_scores), 2),
        "false_over_0.5": sum(s >= 0.5 for s in false_scores),
        "false_count": len(false_scores),
    }
    print(f"scores {summary}")
    return summary


def measure_distances() -> dict:
    """dlib descriptor distances: variants of one photo vs different people."""

    def variants(base: Image.Image) -> list[Image.Image]:
        w, h = base.size
        return [
            base,
            base.crop((w // 10, h // 12, w - w // 20, h - h // 6)),
            base.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            ImageEnhance.Brightness(base).enhance(1.3),
            ImageEnhance.Brightness(base).enhance(0.6),
            Image.open(io.BytesIO(fd.encode(base, quality=30))),
            fd.upscaled(base, 2),
            base.rotate(8, resample=Image.Resampling.BICUBIC),
            fd.blurred(base, 1),
            base.convert("L").convert("RGB"),
        ]

    people = {}
    for name, base in (("astronaut", fd.astronaut()), ("grace_hopper", fd.grace_hopper())):
        people[name] = []
        for im in variants(base):
            a, found = _detect(im)
            people[name].append(faces.describe_face(a, found[0]))
    same = [faces.descriptor_distance(x, y) for d in people.values() for x, y in itertools.combinations(d, 2)]
    cross = [faces.descriptor_distance(x, y) for x in people["astronaut"] for y in people["grace_hopper"]]
    lfw = []
    for crop in fd.lfw_faces():
        a = np.asarray(Image.fromarray(crop).convert("RGB").resize((150, 150), Image.Resampling.BICUBIC))
        lfw.append(faces.describe_face(a, faces.Face(0, 0, 149, 149, 0.0)))
    lfw_pairs = [faces.descriptor_distance(x, y) for x, y in itertools.combinations(lfw, 2)]
    lfw_vs = [faces.descriptor_distance(x, y) for x in lfw for d in people.values() for y in d[:1]]

    def stats(values: list[float]) -> dict:
        return {
            "n": len(values),
            "min": round(min(values), 3),
            "p5": round(float(np.percentile(values, 5)), 3),
            "median": round(statistics.median(values), 3),
            "max": round(max(values), 3),
        }

    result = {
        "same_photo_variants": stats(same),
        "astronaut_vs_grace_hopper": stats(cross),
        "lfw_25px_pairs": stats(lfw_pairs),
        "lfw_25px_vs_astronaut_grace": stats(lfw_vs),
    }
    for key, value in result.items():
        print(f"distance {key:30s} {value}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="passes over the 20 photos")
    parser.add_argument("--measure", action="store_true", help="print the threshold measurements instead")
    args = parser.parse_args()
    if args.measure:
        out = {"blur": measure_blur(), "scores": measure_scores(), "distances": measure_distances()}
    else:
        out = bench(args.rounds)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
