"""Training speed levers, each measured per step against a baseline measured in the same run.

    python bench/train.py                                  # SD1.5 and SDXL shapes, random weights
    python bench/train.py --arch sd15 --resolution 512 --steps 10 --repeats 3

The baseline is the diffusers DreamBooth-LoRA scripts' plain path: every step encodes its photos with the
VAE and the prompt with the text encoder(s), diffusers' eager attention (``AttnProcessor``), the default
AdamW kernel, fp32. Each lever switches one thing on (``TrainConfig`` knobs, the same code path the worker
runs); "all" switches every lever on. Levers:

- ``encode once``: photos to VAE latents and the prompt to embeddings once per job (``cache_latents``,
  ``cache_text``);
- ``sdpa``: torch's scaled-dot-product attention (``attention="sdpa"``);
- ``fused adamw``: ``torch.optim.AdamW(fused=True)`` (``fused_adamw``);
- ``bf16``: weights in bf16 with autocast, LoRA parameters fp32 (what ``pick_device`` gives on CUDA).

Time per step is the steady state: from the end of the first step to the end of the last, so the one-time
setup (encoding, adapter injection) is reported apart. Random weights (engine/ml/tiny.py): speed does not
depend on the values. On CPU the default resolution is 256 px to keep a run within minutes; say so when
quoting the figures. Human lines first; the LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # first, so that the `engine` package wins over bench/engine.py

import torch  # noqa: E402

from bench.engine import PROMPT, synthetic_photos  # noqa: E402
from engine.ml.device import pick_device  # noqa: E402
from engine.ml.pipeline import load_pipeline, native_resolution  # noqa: E402
from engine.ml.train import TrainConfig, train_lora  # noqa: E402

BASELINE = {"cache_latents": False, "cache_text": False, "attention": "eager", "fused_adamw": False}
ON = {"cache_latents": True, "cache_text": True, "attention": "sdpa", "fused_adamw": True}
# Lever name -> (TrainConfig changes over the baseline, weights in bf16).
LEVERS = {
    "baseline": ({}, False),
    "encode once": ({"cache_latents": True, "cache_text": True}, False),
    "sdpa": ({"attention": "sdpa"}, False),
    "fused adamw": ({"fused_adamw": True}, False),
    "bf16": ({}, True),
    "all": (ON, True),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _set_dtype(pipe, dtype: torch.dtype) -> None:
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.to(dtype=dtype)


def time_run(pipe, photos, config: TrainConfig, device: torch.device) -> dict:
    """One training run: steady-state seconds per step, one-time setup seconds, the loss curve."""
    stamps: list[float] = []

    def progress(fraction: float, message: str) -> None:
        if message.startswith("training step"):
            _sync(device)
            stamps.append(time.perf_counter())

    _sync(device)
    started = time.perf_counter()
    result = train_lora(pipe, photos, PROMPT, config, progress=progress)
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return {
        "s_per_step": per_step,
        "setup_s": max(0.0, stamps[0] - started - per_step),
        "losses": result.losses,
    }


def bench_arch(
    args: argparse.Namespace, arch: str, device: torch.device, dtype: torch.dtype, log=print
) -> dict:
    """Every lever on one architecture, ``args.repeats`` rounds; the median per lever."""
    started = time.perf_counter()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build random weights directly in ``dtype`` (SDXL: 7 GB, not 14 GB)
    try:
        pipe = load_pipeline(arch if arch.startswith("tiny") else f"random:{arch}", device, dtype)
    finally:
        torch.set_default_dtype(previous)
    log(f"{arch}: random-weights pipeline built in {time.perf_counter() - started:.1f} s")
    resolution = args.resolution or (native_resolution(pipe) if device.type == "cuda" else 256)
    photos = synthetic_photos(args.photos, size=max(resolution, 256))
    base = dataclasses.replace(
        TrainConfig(),
        steps=args.steps + 1,  # step 1 is warm-up
        resolution=resolution,
        gradient_checkpointing=None if args.checkpointing == "auto" else args.checkpointing == "on",
        **BASELINE,
    )
    levers = [name for name in LEVERS if name in args.levers or name == "baseline"]
    if dtype != torch.float32:  # every run already has half-precision weights: no separate bf16 lever
        levers = [name for name in levers if name != "bf16"]
    # fp32 levers first, then the bf16 ones (the weights are cast once, not back and forth).
    levers.sort(key=lambda name: LEVERS[name][1])
    runs: dict[str, list[dict]] = {name: [] for name in levers}
    for round_ in range(args.repeats):
        for half in (False, True):
            if half and dtype == torch.float32 and any(LEVERS[n][1] for n in levers):
                _set_dtype(pipe, torch.bfloat16)
            for name in levers:
                changes, bf16 = LEVERS[name]
                if bf16 != half:
                    continue
                run = time_run(pipe, photos, dataclasses.replace(base, **changes), device)
                runs[name].append(run)
                log(f"  {arch} round {round_ + 1} {name}: {run['s_per_step']:.3f} s/step")
            if half and dtype == torch.float32:
                _set_dtype(pipe, torch.float32)
    base_s = statistics.median(r["s_per_step"] for r in runs["baseline"])
    out = {}
    for name in levers:
        per_step = statistics.median(r["s_per_step"] for r in runs[name])
        setup = statistics.median(r["setup_s"] for r in runs[name])
        out[name] = {
            "s_per_step": round(per_step, 4),
            "speedup_vs_baseline": round(base_s / per_step, 3),
            "setup_s": round(setup, 3),
            "first_loss": round(runs[name][0]["losses"][0], 5),
        }
        log(
            f"{arch} {resolution}px {name:>12}: {per_step:8.3f} s/step  x{base_s / per_step:5.2f} vs baseline"
            f"  (setup {setup:.2f} s, first loss {runs[name][0]['losses'][0]:.4f})"
        )
    del pipe
    gc.collect()
    return {"resolution": resolution, "timed_steps": args.steps, "repeats": args.repeats, "levers": out}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", nargs="+", default=["sd15", "sdxl"], choices=["tiny", "tiny-sdxl", "sd15", "sdxl"]
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype", default="fp32", help="weights of every run: fp32 (the bf16 levers cast to bf16) or bf16"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (plus one warm-up step)")
    parser.add_argument("--resolution", type=int, default=0, help="0 = native on CUDA, 256 on CPU")
    parser.add_argument("--photos", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1, help="rounds over all levers; medians are reported")
    parser.add_argument("--checkpointing", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=list(LEVERS))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device, dtype = pick_device(args.device, args.dtype)
    print(f"device {device} ({torch.get_num_threads()} threads) weights {str(dtype).removeprefix('torch.')}")
    result = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "archs": {arch: bench_arch(args, arch, device, dtype) for arch in args.arch},
    }
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
