"""MP4 encoding and decoding with PyAV (its wheel ships FFmpeg and libx264; no system ffmpeg needed).

Clips are H.264 (High profile), yuv420p, no audio, even sides, with the index before the data
(``faststart``, so platforms start playing before the download ends). The muxer runs bit-exact: no encoder version or
creation time in the container.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import PIL.Image

from engine.provenance import mp4

# x264 settings that keep the invisible watermark in every frame: CRF 12, `tune grain` (less dead-zone
# quantisation, no DCT decimation) and no B-frames (coarser-quantised B-frames lose it first). x264's
# defaults at CRF 18 lose it in most frames (docs/provenance.md, "Video"). 150-600 KB per second at 512x640.
CRF = 12
TUNE = "grain"
BFRAMES = 0
PRESET = "medium"


@dataclass(frozen=True)
class Decoded:
    """A decoded MP4: its frames (RGB), frame rate, size and codec."""

    frames: list[PIL.Image.Image]
    fps: float
    width: int
    height: int
    codec: str
    pixel_format: str
    audio_streams: int


def encode_mp4(
    frames: list[PIL.Image.Image],
    fps: int,
    crf: int = CRF,
    tune: str | None = TUNE,
    bframes: int | None = BFRAMES,
) -> bytes:
    """Encode RGB frames of one size (even sides) as an H.264 yuv420p MP4 at ``fps``.

    ``tune=None, bframes=None``: x264's own defaults (what a platform that transcodes would use)."""
    if not frames:
        raise ValueError("no frames to encode")
    width, height = frames[0].size
    if width % 2 or height % 2:
        raise ValueError(f"H.264 yuv420p needs even sides, got {width}x{height}")
    out = io.BytesIO()
    with av.open(out, "w", format="mp4", options={"fflags": "+bitexact"}) as box:
        stream = box.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        options = {"crf": str(crf), "preset": PRESET, "profile": "high"}
        if tune:
            options["tune"] = tune
        if bframes is not None:
            options["bf"] = str(bframes)
        stream.options = options
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for image in frames:
            if image.size != (width, height):
                raise ValueError("all frames must have the same size")
            frame = av.VideoFrame.from_ndarray(np.asarray(image.convert("RGB")), format="rgb24")
            box.mux(stream.encode(frame))
        box.mux(stream.encode(None))
    return mp4.faststart(out.getvalue())


def decode_mp4(data: bytes) -> Decoded:
    """Every frame of the first video stream, as RGB images. Raises ``av.error.FFmpegError`` (or
    ``av.error.InvalidDataError``) for data that is not a readable video."""
    with av.open(io.BytesIO(data), "r") as box:
        if not box.streams.video:
            raise ValueError("no video stream")
        stream = box.streams.video[0]
        frames = [frame.to_image() for frame in box.decode(stream)]
        rate = stream.average_rate or stream.guessed_rate or 0
        return Decoded(
            frames=frames,
            fps=float(rate),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            codec=stream.codec_context.name,
            pixel_format=stream.codec_context.pix_fmt or "",
            audio_streams=len(box.streams.audio),
        )


def reencode_mp4(data: bytes, crf: int, scale: float = 1.0) -> bytes:
    """Decode, optionally resize, and encode again with x264's defaults at ``crf``: what a platform that
    transcodes uploads does (survival benchmarks and tests)."""
    decoded = decode_mp4(data)
    frames = decoded.frames
    if scale != 1.0:
        size = (round(decoded.width * scale / 2) * 2, round(decoded.height * scale / 2) * 2)
        frames = [frame.resize(size, PIL.Image.Resampling.LANCZOS) for frame in frames]
    return encode_mp4(frames, round(decoded.fps), crf, tune=None, bframes=None)
