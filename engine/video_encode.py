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

from engine import mp4

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


# BT.601, limited ("TV") range: the luma the watermark lives in (OpenCV's YUV) is exactly the Y plane, so
# 4:2:0 chroma subsampling cannot disturb it. Rows: Y, Cb, Cr from R, G, B in 0..255.
_RGB_TO_YUV = (
    np.array(
        [[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]], dtype=np.float64
    )
    / 255.0
)
_YUV_OFFSET = np.array([16.0, 128.0, 128.0])
_YUV_TO_RGB = np.linalg.inv(_RGB_TO_YUV)


def rgb_to_yuv420p(image: PIL.Image.Image) -> np.ndarray:
    """The planar yuv420p layout PyAV takes: Y, then Cb and Cr averaged over 2x2 blocks, rounded.

    Done here rather than by swscale, whose fast RGB path shifts every level by about -1 per round trip:
    enough to flip bits of the quantised watermark."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    height, width = rgb.shape[:2]
    yuv = rgb @ _RGB_TO_YUV.T + _YUV_OFFSET
    chroma = yuv[:, :, 1:].reshape(height // 2, 2, width // 2, 2, 2).mean(axis=(1, 3))
    planes = [yuv[:, :, 0].ravel(), chroma[:, :, 0].ravel(), chroma[:, :, 1].ravel()]
    flat = np.clip(np.rint(np.concatenate(planes)), 0, 255).astype(np.uint8)
    return flat.reshape(height * 3 // 2, width)


def yuv420p_to_rgb(planar: np.ndarray, width: int, height: int) -> PIL.Image.Image:
    """The inverse of ``rgb_to_yuv420p`` (chroma repeated over each 2x2 block)."""
    flat = planar.reshape(-1)
    quarter = (width // 2) * (height // 2)
    y = flat[: width * height].reshape(height, width).astype(np.float64)
    cb = flat[width * height : width * height + quarter].reshape(height // 2, width // 2)
    cr = flat[width * height + quarter : width * height + 2 * quarter].reshape(height // 2, width // 2)
    up = np.stack([cb, cr], axis=-1).repeat(2, axis=0).repeat(2, axis=1).astype(np.float64)
    yuv = np.concatenate([y[:, :, None], up], axis=-1) - _YUV_OFFSET
    rgb = yuv @ _YUV_TO_RGB.T
    return PIL.Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def _open_stream(box, fps: float, width: int, height: int, options: dict[str, str]):
    stream = box.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    stream.options = options
    context = stream.codec_context
    context.flags |= av.codec.context.Flags.bitexact
    context.color_range = 1  # MPEG / limited
    context.colorspace = context.color_primaries = 6  # SMPTE 170M (BT.601 525)
    context.color_trc = 6
    return stream


def _x264_options(crf: int, tune: str | None, bframes: int | None) -> dict[str, str]:
    options = {"crf": str(crf), "preset": PRESET, "profile": "high"}
    if tune:
        options["tune"] = tune
    if bframes is not None:
        options["bf"] = str(bframes)
    return options


def encode_mp4(
    frames: list[PIL.Image.Image],
    fps: int,
    crf: int = CRF,
    tune: str | None = TUNE,
    bframes: int | None = BFRAMES,
) -> bytes:
    """Encode RGB frames of one size (even sides) as an H.264 yuv420p MP4 at ``fps`` (BT.601, tagged).

    ``tune=None, bframes=None``: x264's own defaults."""
    if not frames:
        raise ValueError("no frames to encode")
    width, height = frames[0].size
    if width % 2 or height % 2:
        raise ValueError(f"H.264 yuv420p needs even sides, got {width}x{height}")
    out = io.BytesIO()
    with av.open(out, "w", format="mp4", options={"fflags": "+bitexact"}) as box:
        stream = _open_stream(box, fps, width, height, _x264_options(crf, tune, bframes))
        for image in frames:
            if image.size != (width, height):
                raise ValueError("all frames must have the same size")
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(image), format="yuv420p")
            box.mux(stream.encode(frame))
        box.mux(stream.encode(None))
    return mp4.faststart(out.getvalue())


def decode_mp4(data: bytes) -> Decoded:
    """Every frame of the first video stream, as RGB images. Raises ``ValueError`` or PyAV's
    ``av.error.FFmpegError`` for data that is not a readable video."""
    with av.open(io.BytesIO(data), "r") as box:
        if not box.streams.video:
            raise ValueError("no video stream")
        stream = box.streams.video[0]
        frames = []
        for frame in box.decode(stream):
            planar = frame.reformat(format="yuv420p").to_ndarray()
            frames.append(yuv420p_to_rgb(planar, frame.width // 2 * 2, frame.height // 2 * 2))
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


def transcode_mp4(data: bytes, crf: int, scale: float = 1.0) -> bytes:
    """What a platform that transcodes uploads does: decode and encode again in YUV (no RGB step) with
    x264's defaults at ``crf``, optionally resized. For the watermark survival benchmark and tests."""
    out = io.BytesIO()
    with av.open(io.BytesIO(data), "r") as source, av.open(out, "w", format="mp4") as box:
        video = source.streams.video[0]
        width = round(video.codec_context.width * scale / 2) * 2
        height = round(video.codec_context.height * scale / 2) * 2
        rate = video.average_rate or 8
        stream = _open_stream(box, rate, width, height, _x264_options(crf, None, None))
        for index, frame in enumerate(source.decode(video)):
            frame = frame.reformat(width=width, height=height, format="yuv420p", interpolation="LANCZOS")
            frame.pts, frame.time_base = index, Fraction(1) / Fraction(rate)
            box.mux(stream.encode(frame))
        box.mux(stream.encode(None))
    return out.getvalue()
