"""Benchmark animated clips: frames per second and seconds per clip, beside stills in the same run.

    python bench/video.py --arch tiny                          # tiny pipeline + tiny motion adapter
    python bench/video.py --arch sd15 --steps 2                # real SD1.5 shapes, random weights
    python bench/video.py --arch sdxl --steps 2 --dtype bfloat16
    python bench/video.py --watermark                          # watermark survival after H.264 re-encoding

Random weights (engine/ml/tiny.py, a random motion adapter of the released AnimateDiff shapes): nothing is
downloaded. Denoising is timed step by step, so a short run (``--steps 2``) gives the per-step cost; the
"clip at N steps" figure is ``N`` times that plus the VAE decode and the marking (watermark on every frame,
H.264 encode), all measured. The still baseline is one image of the same size and steps, same run.
Prints human lines; the LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402

from engine import video_encode  # noqa: E402
from engine.ml.device import pick_device  # noqa: E402
from engine.ml.generate import Generator  # noqa: E402
from engine.ml.pipeline import load_pipeline  # noqa: E402
from engine.ml.video import VideoGenerator  # noqa: E402
from engine.presets import Preset  # noqa: E402
from engine.provenance import watermark  # noqa: E402
from engine.provenance.marking import ProvenanceConfig  # noqa: E402
from engine.provenance.video import mark_video  # noqa: E402

MODELS = {"tiny": "tiny", "sd15": "random:sd15", "sdxl": "random:sdxl"}
DEPLOYMENT = "bench"


def peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_speed(args: argparse.Namespace) -> dict:
    device, dtype = pick_device(args.device, args.dtype)
    pipe = load_pipeline(MODELS[args.arch], device, dtype)
    preset = Preset(
        "bench", "Bench (animated)", "portrait photo of {token}", "blurry", args.steps, 7.5, "1:1",
        video=True, frames=args.frames, fps=8, loop=args.loop,
    )  # fmt: skip
    still = dataclasses.replace(preset, video=False)
    generator = Generator(pipe)
    videos = VideoGenerator(generator, "tiny")

    started = time.perf_counter()
    _ = videos.pipeline  # builds the motion UNet (shared layers) and the AnimateDiff pipeline
    build = time.perf_counter() - started

    def timed(fn, *a, **kw):
        marks: list[float] = []
        begin = time.perf_counter()
        out = fn(*a, progress=lambda _f, _s: marks.append(time.perf_counter()), **kw)
        total = time.perf_counter() - begin
        steps = np.diff([begin, *marks])
        return out, total, float(statistics.median(steps[1:] if len(steps) > 1 else steps)), marks[-1] - begin

    _, _, still_step, _ = timed(generator.generate, None, still, "sks person", 1, 0)
    clip, clip_total, clip_step, denoise = timed(videos.generate, None, preset, "sks person", 0)
    decode = clip_total - denoise
    begin = time.perf_counter()
    data = mark_video(clip.frames, clip.fps, ProvenanceConfig(DEPLOYMENT))
    marking = time.perf_counter() - begin
    generated = preset.frames + (max(2, preset.frames // 4) if preset.loop else 0)
    per_clip = args.at_steps * clip_step + decode + marking
    result = {
        "arch": args.arch,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "size": f"{clip.frames[0].width}x{clip.frames[0].height}",
        "frames": preset.frames,
        "frames_generated": generated,
        "steps_run": args.steps,
        "pipeline_build_s": round(build, 2),
        "still_step_s": round(still_step, 3),
        "clip_step_s": round(clip_step, 3),
        "clip_step_per_still_step": round(clip_step / still_step, 2),
        "vae_decode_s": round(decode, 2),
        "marking_s": round(marking, 2),
        "mp4_kb": len(data) // 1024,
        "at_steps": args.at_steps,
        "clip_s_at_steps": round(per_clip, 1),
        "frames_per_s_at_steps": round(preset.frames / per_clip, 3),
        "peak_gib": round(peak_gib(device), 2),
    }
    print(f"{args.arch} {result['size']} x{generated} frames on {device} ({result['dtype']}):")
    print(f"  build video pipeline (motion adapter, shared layers): {build:.2f} s")
    print(
        f"  one denoising step: still {still_step:.3f} s, clip {clip_step:.3f} s ({clip_step / still_step:.1f}x)"
    )
    print(f"  VAE decode {decode:.2f} s, marking (watermark x{preset.frames} + H.264) {marking:.2f} s")
    print(f"  clip at {args.at_steps} steps: {per_clip:.1f} s = {preset.frames / per_clip:.3f} frames/s")
    print(f"  peak memory {result['peak_gib']:.2f} GiB, MP4 {result['mp4_kb']} KB")
    return result


def pan_clip(photo: PIL.Image.Image, frames: int, size: tuple[int, int]) -> list[PIL.Image.Image]:
    """A slow pan across a photo (2 px right, 1 px down per frame)."""
    w, h = photo.size
    crop = int(min(w, h) * 0.85)
    return [photo.crop((2 * i, i, crop + 2 * i, crop + i)).resize(size) for i in range(frames)]


def run_watermark(args: argparse.Namespace) -> dict:
    """Marked clips (our encoder), then re-encoded as a transcoding platform would (x264 defaults)."""
    from skimage import data as photos

    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
    clips, unmarked = [], []
    for name in names:
        photo = PIL.Image.fromarray(getattr(photos, name)()).convert("RGB")
        frames = pan_clip(photo, args.frames, (512, 640))
        clips.append(mark_video(frames, 8, ProvenanceConfig(DEPLOYMENT)))
        unmarked.append(video_encode.encode_mp4(frames, 8))
    transforms = [("as delivered (CRF 12, tune grain, no B-frames)", lambda d: d)]
    for crf in (12, 14, 18, 23, 28):
        transforms.append(
            (f"re-encoded, x264 defaults, CRF {crf}", lambda d, c=crf: video_encode.transcode_mp4(d, c))
        )
    transforms.append(("re-encoded at 0.75x, CRF 18", lambda d: video_encode.transcode_mp4(d, 18, 0.75)))
    rows = {}
    print(f"{len(clips)} panning clips of sample photos, {args.frames} frames each, 512x640, 8 fps")
    print("| transform | frames marked | clips judged marked | mean bit errors |")
    print("|---|---|---|---|")
    unmarked_frames = [f for clip in unmarked for f in video_encode.decode_mp4(clip).frames]
    false_hits = sum(watermark.read(f).present for f in unmarked_frames)
    for label, transform in transforms:
        frames_ok, clips_ok, errors, total = 0, 0, [], 0
        for clip in clips:
            decoded = video_encode.decode_mp4(transform(clip))
            readings = [watermark.read(f) for f in decoded.frames]
            ok = sum(r.present for r in readings)
            frames_ok += ok
            total += len(readings)
            clips_ok += ok > len(readings) / 2
            errors += [r.bit_errors for r in readings if r.bit_errors is not None]
        rows[label] = {
            "frames": frames_ok / total,
            "clips": clips_ok / len(clips),
            "bit_errors": float(np.mean(errors)),
        }
        print(f"| {label} | {frames_ok / total:.0%} | {clips_ok}/{len(clips)} | {np.mean(errors):.1f} |")
    print(f"| unmarked clips (same encoder) | {false_hits}/{len(unmarked_frames)} frames judged marked | | |")
    return {"watermark": rows, "unmarked_frames_judged_marked": false_hits}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3, help="denoising steps actually run (timed per step)")
    parser.add_argument("--at-steps", type=int, default=25, help="steps of the clip figure (the presets' 25)")
    parser.add_argument("--no-loop", dest="loop", action="store_false")
    parser.add_argument("--watermark", action="store_true", help="measure watermark survival instead")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    result = run_watermark(args) if args.watermark else run_speed(args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
