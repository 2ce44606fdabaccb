"""Animated clips with a user's LoRA: AnimateDiff built on the resident pipeline's own components.

``VideoGenerator`` wraps the ``Generator`` (engine/ml/generate.py): the user's adapter is loaded into, and
activated in, the same slots the stills use; the video pipeline (``AnimateDiffPipeline`` for SD 1.x,
``AnimateDiffSDXLPipeline`` for SDXL) shares the resident VAE, text encoders and UNet layers
(engine/ml/motion.py) and adds only the motion adapter, loaded on the first clip.

Seamless loops are made by *crossfade*: ``overlap`` extra frames are generated and the clip's last
``overlap`` frames are blended into its first ones, so the last frame leads smoothly into the first and
motion keeps its direction (a ping-pong loop would reverse it).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AnimateDiffPipeline,
    AnimateDiffSDXLPipeline,
    DDIMScheduler,
    DiffusionPipeline,
    StableDiffusionXLPipeline,
)

from engine.ml.generate import GenerationStopped, Generator, Progress
from engine.ml.motion import load_motion_adapter, motion_unet
from engine.ml.pipeline import native_resolution, size_multiple
from engine.presets import Preset, preset_size

DECODE_CHUNK = 4  # frames the VAE decodes at once (SD 1.x pipeline; SDXL decodes one by one with slicing)


@dataclass(frozen=True)
class Clip:
    """Decoded frames of one clip, in playback order, and its frame rate."""

    frames: list[PIL.Image.Image]
    fps: int

    @property
    def seconds(self) -> float:
        return len(self.frames) / self.fps


def loop_overlap(frames: int) -> int:
    """Frames generated beyond ``frames`` to crossfade the end into the start: a quarter, at least 2."""
    return max(2, frames // 4)


def crossfade_loop(frames: list[PIL.Image.Image], overlap: int) -> list[PIL.Image.Image]:
    """``len(frames) - overlap`` frames that loop seamlessly.

    Output frame ``i < overlap`` blends generated frame ``n - overlap + i`` into frame ``i`` with weight
    ``(i + 1) / (overlap + 1)`` on frame ``i``; the rest are unchanged. The last output frame is generated
    frame ``n - overlap - 1``, and the first is mostly frame ``n - overlap``: its successor.
    """
    if not 0 < overlap < len(frames) - overlap:
        raise ValueError("overlap must be positive and less than half the frames")
    n = len(frames)
    out = []
    for i in range(n - overlap):
        if i < overlap:
            weight = (i + 1) / (overlap + 1)
            head = np.asarray(frames[i], dtype=np.float32)
            tail = np.asarray(frames[n - overlap + i], dtype=np.float32)
            mixed = weight * head + (1 - weight) * tail
            out.append(PIL.Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8)))
        else:
            out.append(frames[i])
    return out


def _scheduler(pipe: DiffusionPipeline) -> DDIMScheduler:
    """DDIM on the linear beta schedule AnimateDiff's motion modules were trained with."""
    return DDIMScheduler.from_config(
        pipe.scheduler.config,
        beta_schedule="linear",
        clip_sample=False,
        timestep_spacing="linspace",
        steps_offset=1,
    )


def build_video_pipeline(pipe: DiffusionPipeline, motion_adapter: str) -> DiffusionPipeline:
    """The AnimateDiff pipeline for ``pipe``'s family, sharing its components; adds the motion adapter."""
    adapter = load_motion_adapter(motion_adapter, pipe.unet)
    unet = motion_unet(pipe.unet, adapter)
    cls = AnimateDiffSDXLPipeline if isinstance(pipe, StableDiffusionXLPipeline) else AnimateDiffPipeline
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
        # torch_dtype: from_pipe casts every component to it (float32 by default), shared ones included.
        video = cls.from_pipe(
            pipe, unet=unet, motion_adapter=adapter, scheduler=_scheduler(pipe), torch_dtype=pipe.unet.dtype
        )
    video.set_progress_bar_config(disable=True)
    return video


class VideoGenerator:
    """Clips of a preset with an owner's adapter, on the ``Generator``'s resident pipeline and slots."""

    def __init__(self, generator: Generator, motion_adapter: str = "auto") -> None:
        self.generator = generator
        self.motion_adapter = motion_adapter
        self._video: DiffusionPipeline | None = None

    @property
    def pipeline(self) -> DiffusionPipeline:
        """The video pipeline, built on first use (loads the motion adapter)."""
        if self._video is None:
            self._video = build_video_pipeline(self.generator.pipe, self.motion_adapter)
        return self._video

    @torch.no_grad()
    def generate(
        self,
        owner: str | None,
        preset: Preset,
        token: str,
        seed: int,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Clip:
        """One clip of video ``preset`` with ``owner``'s adapter (``None``: the base model).

        ``preset.frames`` frames at ``preset.fps``; with ``preset.loop`` it loops seamlessly (crossfade).
        Same seed, same clip, on every device (CPU generator).
        """
        if not preset.video:
            raise ValueError(f"preset {preset.key!r} is not a video preset")
        video = self.pipeline
        overlap = loop_overlap(preset.frames) if preset.loop else 0
        count = preset.frames + overlap
        limit = int(video.unet.config.motion_max_seq_length)
        if count > limit:
            raise ValueError(f"the motion adapter makes at most {limit} frames; this preset needs {count}")
        width, height = preset_size(
            preset, native_resolution(self.generator.pipe), size_multiple(self.generator.pipe)
        )
        steps = preset.steps

        def on_step_end(p, step: int, timestep, kwargs: dict) -> dict:
            if should_stop and should_stop():
                p._interrupt = True
            elif progress:
                progress((step + 1) / steps, f"animating step {step + 1}/{steps}")
            return kwargs

        extra = {} if isinstance(video, AnimateDiffSDXLPipeline) else {"decode_chunk_size": DECODE_CHUNK}
        with self.generator.active(owner):
            result = video(
                prompt=preset.render(token),
                negative_prompt=preset.negative_prompt or None,
                num_frames=count,
                num_inference_steps=steps,
                guidance_scale=preset.guidance,
                width=width,
                height=height,
                generator=torch.Generator("cpu").manual_seed(seed),
                callback_on_step_end=on_step_end,
                output_type="pil",
                **extra,
            )
        if should_stop and video.interrupt:
            raise GenerationStopped("generation stopped on request")
        frames = list(result.frames[0])
        if overlap:
            frames = crossfade_loop(frames, overlap)
        return Clip(frames, preset.fps)
