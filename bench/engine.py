"""Benchmark the ML core: training speed, generation speed, adapter swap vs full load, photos -> portraits.

    python bench/engine.py                                   # tiny pipeline, whatever device is there
    python bench/engine.py --arch sdxl --random-weights      # real SDXL shapes, random weights, no download
    python bench/engine.py --model /models/sdxl-base --steps 200
    python bench/engine.py --arch sd15 --random-weights --likeness-only --gen-steps 2 --images 1
                                        # extra time of candidates, face refinement and the 2x pass

Needs only torch, diffusers, peft, transformers, safetensors, accelerate, pillow and numpy, except the
engine-overhead run (skip it with --no-overhead): that one drives the real Engine + Worker (vault, SQLite,
intake, provenance marks) and also needs the engine's dependencies and scikit-image (sample face photos).
Prints human-readable lines; the LAST line is one JSON object (see ``run_bench``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # first, so that the `engine` package wins over this file (bench/engine.py)

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

from engine.ml.device import pick_device  # noqa: E402
from engine.ml.generate import Generator  # noqa: E402
from engine.ml.pipeline import load_pipeline, native_resolution, set_active_adapter  # noqa: E402
from engine.ml.train import TrainConfig, train_lora  # noqa: E402
from engine.presets import load_presets  # noqa: E402

PROMPT = "a photo of sks person"


def synthetic_photos(count: int, size: int = 768) -> list[PIL.Image.Image]:
    """Deterministic face-sized stand-ins (speed does not depend on content; no personal data needed)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    photos = []
    for _ in range(count):
        base = rng.uniform(0, 255, 3)
        blob = np.exp(-(((xx - 0.5) ** 2 + (yy - 0.45) ** 2) / 0.05))[..., None]
        image = base * (1 - blob) + rng.uniform(150, 230, 3) * blob + rng.normal(0, 8, (size, size, 3))
        photos.append(PIL.Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)))
    return photos


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def likeness_extras(pipe, preset, images: int, candidates: int, device: torch.device, log=print) -> dict:
    """Extra time of best-of-N (more candidates + dlib scoring), face refinement and the 2x pass, each
    against the plain generation of ``images`` portraits measured here, in the same run.

    Random weights draw no faces, so refinement gets a fixed face box (a quarter of the shorter side, in
    the upper middle: a face in a wide shot); its cost does not depend on what is drawn there.
    """
    from engine.likeness import score

    generator = Generator(pipe, cache_size=1)
    warm = generator.generate(None, dataclasses.replace(preset, steps=1), "sks person", 1, seed=0)
    score(warm[0], None)  # loads dlib's models

    def timed(fn):
        _sync(device)
        started = time.perf_counter()
        value = fn()
        _sync(device)
        return time.perf_counter() - started, value

    base_s, drawn = timed(lambda: generator.generate(None, preset, "sks person", images, seed=0))
    more_s, more = timed(lambda: generator.generate(None, preset, "sks person", images * candidates, seed=0))
    score_s, _ = timed(lambda: [score(image, None) for image in more])
    width, height = drawn[0].size
    side = min(width, height) // 4
    box = (width // 2 - side // 2, height // 4, width // 2 + side // 2, height // 4 + side)
    refine_s, _ = timed(
        lambda: [generator.refine_face(None, preset, "sks person", im, box, seed=1) for im in drawn]
    )
    hires_s, big = timed(lambda: [generator.upscale(None, preset, "sks person", im, seed=2) for im in drawn])
    result = {
        "likeness_images": images,
        "likeness_image_size": [width, height],
        "likeness_generate_seconds": round(base_s, 3),
        "candidates": candidates,
        "candidates_extra_seconds": round(more_s + score_s - base_s, 3),
        "candidates_extra_ratio": round((more_s + score_s - base_s) / base_s, 3),
        "scoring_seconds_per_image": round(score_s / len(more), 4),
        "refine_extra_seconds": round(refine_s, 3),
        "refine_extra_ratio": round(refine_s / base_s, 3),
        "hires_extra_seconds": round(hires_s, 3),
        "hires_extra_ratio": round(hires_s / base_s, 3),
        "hires_size": list(big[0].size),
    }
    log(
        f"likeness extras vs {images} x {width}x{height} ({base_s:.2f} s): {candidates} candidates "
        f"+{result['candidates_extra_ratio'] * 100:.0f}% (scoring {score_s / len(more) * 1000:.0f} ms/image), "
        f"face refinement +{result['refine_extra_ratio'] * 100:.0f}%, 2x pass to {big[0].size[0]}x"
        f"{big[0].size[1]} +{result['hires_extra_ratio'] * 100:.0f}%"
    )
    return result


def run_bench(args: argparse.Namespace, log=print) -> dict:
    """Run every measurement once and return the result dict (the hook for callers that add more keys)."""
    device, dtype = pick_device(args.device, args.dtype)
    model = f"random:{args.arch}" if args.random_weights else args.model
    presets = load_presets(ROOT / "config" / "presets.toml")
    preset = presets[args.preset]
    if args.gen_steps:
        preset = dataclasses.replace(preset, steps=args.gen_steps)
    log(f"device {device} dtype {str(dtype).removeprefix('torch.')} model {model}")
    if args.likeness_only:
        pipe = load_pipeline(model, device, dtype)
        return {
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "model": model,
            "generate_steps": preset.steps,
            **likeness_extras(pipe, preset, args.images, args.candidates, device, log),
        }

    _sync(device)
    started = time.perf_counter()
    pipe = load_pipeline(model, device, dtype)
    _sync(device)
    load_s = time.perf_counter() - started
    native = native_resolution(pipe)
    log(f"pipeline load {load_s:.2f} s (native {native}px)")
    if device.type == "cuda":  # kernels and allocator warm-up, as in a long-running worker
        Generator(pipe).generate(None, dataclasses.replace(preset, steps=2), "sks person", 1, seed=0)

    defaults = TrainConfig()
    config = TrainConfig(
        steps=args.steps or defaults.steps,
        resolution=args.resolution,
        learning_rate=defaults.learning_rate,
        gradient_checkpointing=None if args.checkpointing == "auto" else args.checkpointing == "on",
    )
    photos = synthetic_photos(args.photos)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # Photos -> portraits: train, load the adapter, generate the portraits; wall clock for all of it.
    stamps: list[float] = []
    _sync(device)
    portraits_started = time.perf_counter()
    result = train_lora(
        pipe, photos, PROMPT, config, progress=lambda f, m: stamps.append(time.perf_counter())
    )
    _sync(device)
    train_s = time.perf_counter() - portraits_started
    # Steady-state speed: from the end of step 1 to the end of the last step (no latent caching, no warm-up).
    step_stamps = stamps[1 : 1 + result.steps]
    if len(step_stamps) >= 2:
        steps_per_s = (len(step_stamps) - 1) / (step_stamps[-1] - step_stamps[0])
    else:
        steps_per_s = result.steps / result.seconds
    log(
        f"training {result.steps} steps at {config.resolution or native}px: {train_s:.2f} s, "
        f"{steps_per_s:.3f} steps/s, loss {statistics.mean(result.losses[:5]):.4f} -> "
        f"{statistics.mean(result.losses[-5:]):.4f}, adapter {len(result.adapter) / 1e6:.1f} MB"
    )
    generator = Generator(pipe, cache_size=4)
    _sync(device)
    started = time.perf_counter()
    generator.load_adapter("bench", result.adapter)  # the first load injects a new adapter slot
    _sync(device)
    first_load_s = time.perf_counter() - started
    gen_started = time.perf_counter()
    images = generator.generate("bench", preset, "sks person", args.images, seed=0)
    _sync(device)
    gen_s = time.perf_counter() - gen_started
    portraits_s = time.perf_counter() - portraits_started
    width, height = images[0].size
    images_per_s = args.images / gen_s
    log(
        f"generation: {args.images} x {width}x{height}, {preset.steps} steps: "
        f"{gen_s:.2f} s, {images_per_s:.3f} images/s"
    )
    log(f"photos to {args.images} portraits: {portraits_s:.2f} s")

    # Adapter swap, steady state: owners rotate over more users than the cache holds, so every timed load
    # evicts the least recently used adapter and reuses its slot, as in a busy worker. The first
    # cache_size loads fill the cache (new slots are injected then) and are not timed.
    rotation = generator.cache_size + 2
    swaps = []
    for i in range(generator.cache_size + args.swaps):
        owner = f"swap{i % rotation}"
        _sync(device)
        started = time.perf_counter()
        generator.load_adapter(owner, result.adapter)
        set_active_adapter(pipe, generator._loaded[owner])
        _sync(device)
        if i >= generator.cache_size:
            swaps.append(time.perf_counter() - started)
        set_active_adapter(pipe, None)
    swap_s = statistics.median(swaps)
    log(
        f"adapter load+swap {swap_s * 1000:.1f} ms (median of {len(swaps)} with eviction; first load "
        f"{first_load_s * 1000:.1f} ms) vs pipeline load {load_s:.2f} s"
    )

    overhead = None
    if args.overhead:
        overhead = engine_overhead(pipe, preset, config.steps, args.images)
        log(
            f"engine job (train + generate {args.images}) through Engine + Worker: "
            f"{overhead['job_seconds']:.2f} s wall, {overhead['compute_seconds']:.2f} s model compute, "
            f"overhead {overhead['overhead_ratio'] * 100:.2f}%"
        )

    extras = likeness_extras(pipe, preset, args.images, args.candidates, device, log) if args.likeness else {}

    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    if peak_gb is not None:
        log(f"peak CUDA memory {peak_gb:.1f} GiB")
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "dtype": str(dtype).removeprefix("torch."),
        "model": model,
        "native_resolution": native,
        "train_steps": result.steps,
        "train_resolution": config.resolution or native,
        "train_seconds": round(train_s, 3),
        "train_steps_per_s": round(steps_per_s, 4),
        "adapter_mb": round(len(result.adapter) / 1e6, 2),
        "images": args.images,
        "image_size": [width, height],
        "generate_steps": preset.steps,
        "images_per_s": round(images_per_s, 4),
        "pipeline_load_seconds": round(load_s, 3),
        "adapter_swap_seconds": round(swap_s, 4),
        "adapter_first_load_seconds": round(first_load_s, 4),
        "swap_vs_load_ratio": round(load_s / swap_s, 1),
        "portraits_seconds": round(portraits_s, 3),
        "peak_cuda_gib": None if peak_gb is None else round(peak_gb, 2),
        "engine_job_seconds": None if overhead is None else round(overhead["job_seconds"], 3),
        "engine_compute_seconds": None if overhead is None else round(overhead["compute_seconds"], 3),
        "overhead_ratio": None if overhead is None else round(overhead["overhead_ratio"], 4),
        **extras,
    }


def engine_overhead(pipe, preset, train_steps: int, images: int) -> dict:
    """One user's whole job through the real Engine and Worker (temp data dir, this pipeline): train, then
    generate ``images`` portraits. ``overhead_ratio = (wall - model compute) / model compute``, where model
    compute is ``Worker.compute_seconds`` (training, adapter load, generation, marking) and wall runs from
    the worker's start to the end of the generation job (claims, heartbeats, vault, SQLite, outbox)."""
    import asyncio
    import tempfile
    import types

    from skimage import data as samples

    from engine.facade import Engine
    from engine.settings import load_settings
    from engine.worker import Worker

    face = PIL.Image.fromarray(samples.astronaut())  # public sample photo; passes intake
    photos = [
        face,
        face.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT),
        face.rotate(8, PIL.Image.Resampling.BICUBIC),
    ]

    async def run(data_dir: str) -> dict:
        env = {
            "LIKENESS_DATA_DIR": data_dir,
            "LIKENESS_UPLOAD_MIN_PHOTOS": str(len(photos)),
            "LIKENESS_ENGINE_IMAGES_PER_REQUEST": str(images),
        }
        engine = await Engine.open(load_settings(env))
        engine.presets[preset.key] = preset
        user = engine.pseudonym("bench", 1)
        await engine.give_consent(user, "bench", {"chat": 1}, "1", "self")
        for photo in photos:
            encoded = io.BytesIO()
            photo.save(encoded, "JPEG", quality=90)
            await engine.add_photo(user, encoded.getvalue())
        await engine.start_training(user)
        generate_id = await engine.request_portraits(user, preset.key)
        models = types.SimpleNamespace(
            pipe=pipe, generator=Generator(pipe, cache_size=4), train_steps=train_steps
        )
        worker = Worker(engine, models, name="bench")
        run_job, finished = worker.run_job, []

        async def timed_run_job(job):
            await run_job(job)
            if job.id == generate_id:
                finished.append(time.perf_counter())
                worker.stop()

        worker.run_job = timed_run_job
        started = time.perf_counter()
        await worker.run()
        states = [row["state"] for row in await engine.store.fetchall("SELECT state FROM jobs")]
        await engine.close()
        if states != ["done", "done"]:
            raise RuntimeError(f"engine jobs did not finish: {states}")
        wall, compute = finished[0] - started, worker.compute_seconds
        return {"job_seconds": wall, "compute_seconds": compute, "overhead_ratio": (wall - compute) / compute}

    with tempfile.TemporaryDirectory(prefix="likeness-bench-") as data_dir:
        return asyncio.run(run(data_dir))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny", help="tiny, a Hugging Face id, a diffusers folder or a checkpoint"
    )
    parser.add_argument("--arch", choices=["tiny", "tiny-sdxl", "sd15", "sdxl"], default="sd15")
    parser.add_argument(
        "--random-weights", action="store_true", help="build --arch offline with random weights"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--steps", type=int, default=0, help="training steps (0 = TrainConfig default)")
    parser.add_argument("--resolution", type=int, default=0, help="training resolution (0 = native)")
    parser.add_argument("--checkpointing", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--images", type=int, default=4, help="portraits per request")
    parser.add_argument("--photos", type=int, default=4, help="training photos")
    parser.add_argument("--preset", default="headshot")
    parser.add_argument("--gen-steps", type=int, default=0, help="denoising steps (0 = the preset's)")
    parser.add_argument("--swaps", type=int, default=10, help="timed steady-state adapter swaps")
    parser.add_argument(
        "--no-overhead",
        dest="overhead",
        action="store_false",
        help="skip the engine-overhead run (a whole job through the real Engine + Worker)",
    )
    parser.add_argument("--candidates", type=int, default=2, help="candidates per portrait (best-of-N)")
    parser.add_argument(
        "--no-likeness",
        dest="likeness",
        action="store_false",
        help="skip the extra time of candidates, face refinement and the 2x pass",
    )
    parser.add_argument(
        "--likeness-only", action="store_true", help="only measure candidates, refinement and the 2x pass"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    result = run_bench(parse_args(argv))
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
