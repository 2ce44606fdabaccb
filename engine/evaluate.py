"""`python -m engine eval PHOTOS_DIR`: how much the portraits look like the person, measured.

Trains a model on the photos minus ``--holdout`` held out, makes portraits per preset the way the worker
does (best-of-N against the training photos' signature, refinement, upscaling), and scores what would be
delivered against the *held-out* photos' signature, so a model that only copies its training photos gains
nothing. The same is done with the base model (no LoRA: a stranger baseline); the gain is the headline.

Everything stays in memory: no database, no vault, no file is written. Settings are the usual ``LIKENESS_*``
ones (model, device, train steps, images per request, candidates, minimum likeness). Human lines go to
standard output, then one JSON line, always last.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.settings import Settings, SettingsError, load_settings

log = logging.getLogger(__name__)

EVAL_OWNER = "eval"


class EvalError(Exception):
    """A problem with the command line or the photos; the message is for the operator."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine eval", description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path, help="folder of one person's photos (JPEG, PNG, WebP, HEIC)")
    parser.add_argument("--holdout", type=int, default=2, help="photos kept out of training (default 2)")
    parser.add_argument("--presets", default="", help="comma-separated preset keys (default: all)")
    parser.add_argument("--runs", type=int, default=1, help="requests per preset (default 1)")
    parser.add_argument("--steps", type=int, default=0, help="sampling steps instead of the presets' own")
    return parser


def summarise(values: list[int | None]) -> dict[str, float | None]:
    """Mean and 10th percentile of the likeness of portraits with a face, and the rate of one-face ones."""
    found = [v for v in values if v is not None]
    return {
        "likeness_mean": round(statistics.fmean(found), 1) if found else None,
        "likeness_p10": round(float(np.percentile(found, 10)), 1) if found else None,
        "face_rate": round(len(found) / len(values), 3) if values else None,
    }


def _intake(folder: Path, settings: Settings) -> list[Any]:
    """Every photo in ``folder`` through the product's intake, in name order; only accepted ones kept."""
    from engine.intake import Accepted, IntakeLimits, process_photo

    limits = IntakeLimits(
        max_bytes=settings.upload.max_mb * 1024 * 1024,
        max_pixels=settings.upload.max_pixels,
        min_side=settings.upload.min_side,
    )
    accepted: list[Accepted] = []
    rejected: dict[str, int] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        outcome = process_photo(path.read_bytes(), limits, [a.fingerprint for a in accepted])
        if isinstance(outcome, Accepted):
            accepted.append(outcome)
        else:
            rejected[outcome.code] = rejected.get(outcome.code, 0) + 1
    detail = ", ".join(f"{n} {code}" for code, n in sorted(rejected.items()))
    print(f"photos: {len(accepted)} accepted" + (f", rejected: {detail}" if detail else ""))
    return accepted


def evaluate(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """Run the evaluation and return the result (the JSON line's content)."""
    import dataclasses

    from engine.likeness import Signature, score
    from engine.presets import load_presets

    if not args.photos.is_dir():
        raise EvalError(f"{args.photos} is not a folder")
    if args.holdout < 0 or args.runs < 1 or args.steps < 0:
        raise EvalError("--holdout must be 0 or more, --runs at least 1, --steps 0 or more")
    presets = load_presets(settings.engine.presets_path)
    keys = [k.strip() for k in args.presets.split(",") if k.strip()] or list(presets)
    unknown = [k for k in keys if k not in presets]
    if unknown:
        raise EvalError(f"unknown preset {unknown[0]!r}; choose from {', '.join(presets)}")

    accepted = _intake(args.photos, settings)
    if len(accepted) < args.holdout + 1:
        raise EvalError(
            f"{len(accepted)} photos passed the intake; at least {args.holdout + 1} are needed "
            f"(one to train on plus --holdout {args.holdout})"
        )
    train = accepted[: len(accepted) - args.holdout]
    held = accepted[len(accepted) - args.holdout :] or train
    train_signature = Signature.from_embeddings([a.fingerprint.embedding for a in train])
    reference = Signature.from_embeddings([a.fingerprint.embedding for a in held])
    if not args.holdout:
        print("note: --holdout 0 scores against the training photos themselves")

    from PIL import Image

    from engine.ml.device import pick_device
    from engine.ml.generate import Generator
    from engine.ml.pipeline import load_pipeline
    from engine.ml.portraits import make_portraits
    from engine.ml.train import TrainConfig, train_lora
    from engine.worker import TOKEN  # trained and prompted exactly as the worker does

    engine = settings.engine
    device, dtype = pick_device(engine.device, engine.dtype)
    started = time.perf_counter()
    pipe = load_pipeline(engine.model, device, dtype)
    print(f"model {engine.model} on {device} ({time.perf_counter() - started:.1f} s)")
    images = [Image.open(io.BytesIO(a.image)).convert("RGB") for a in train]
    config = TrainConfig(steps=engine.train_steps) if engine.train_steps else TrainConfig()
    started = time.perf_counter()
    trained = train_lora(pipe, images, f"a photo of {TOKEN} person", config)
    print(f"trained on {len(train)} photos, {trained.steps} steps ({time.perf_counter() - started:.1f} s)")
    generator = Generator(pipe, cache_size=1)
    generator.load_adapter(EVAL_OWNER, trained.adapter)

    per_preset: dict[str, dict[str, Any]] = {}
    mine_all: list[int | None] = []
    base_all: list[int | None] = []
    for index, key in enumerate(keys):
        preset = presets[key]
        if args.steps:
            preset = dataclasses.replace(preset, steps=args.steps)
        mine: list[int | None] = []
        base: list[int | None] = []
        for run in range(args.runs):
            seed = 7919 * run + 104729 * index
            for owner, sink in ((EVAL_OWNER, mine), (None, base)):
                made = make_portraits(
                    generator,
                    owner,
                    preset,
                    TOKEN,
                    engine.images_per_request,
                    engine.candidates,
                    seed,
                    train_signature,
                    engine.min_likeness,
                )
                for image in made.images:
                    s = score(image, reference)
                    sink.append(s.likeness if s.one_face else None)
        ours, theirs = summarise(mine), summarise(base)
        per_preset[key] = {**ours, **{f"baseline_{k}": v for k, v in theirs.items()}}
        print(
            f"{key}: likeness {_fmt(ours['likeness_mean'])} (p10 {_fmt(ours['likeness_p10'])}), "
            f"faces {_pct(ours['face_rate'])}; base model {_fmt(theirs['likeness_mean'])}, "
            f"faces {_pct(theirs['face_rate'])}"
        )
        mine_all += mine
        base_all += base
    generator.forget(EVAL_OWNER)

    ours, theirs = summarise(mine_all), summarise(base_all)
    gain = (
        round(ours["likeness_mean"] - theirs["likeness_mean"], 1)
        if ours["likeness_mean"] is not None and theirs["likeness_mean"] is not None
        else None
    )
    print(
        f"overall: likeness {_fmt(ours['likeness_mean'])} vs {_fmt(theirs['likeness_mean'])} for the base "
        f"model (gain {_fmt(gain)}); faces {_pct(ours['face_rate'])} vs {_pct(theirs['face_rate'])}"
    )
    return {
        **ours,
        **{f"baseline_{k}": v for k, v in theirs.items()},
        "gain": gain,
        "per_preset": per_preset,
        "photos": len(accepted),
        "holdout": args.holdout,
        "runs": args.runs,
        "portraits": len(mine_all),
        "candidates": engine.candidates,
        "model": engine.model,
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:g}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{round(100 * value)}%"


def main(argv: list[str]) -> int:
    """The `eval` command; returns the exit status. The JSON line is printed last, also on errors."""
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        result = evaluate(args, settings)
    except Exception as error:
        from engine.ml.pipeline import ModelLoadError

        if not isinstance(error, EvalError | SettingsError | ModelLoadError):
            raise
        print(f"likeness eval: {error}", file=sys.stderr)
        print(json.dumps({"error": str(error)}))
        return 2
    print(json.dumps(result))
    return 0
