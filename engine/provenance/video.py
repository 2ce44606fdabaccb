"""Mark a clip as AI-generated (`mark_video`) and check an MP4 for the marks (`verify_video`).

Every frame gets the invisible watermark (after the last resize, before encoding), the MP4 carries the
IPTC Digital Source Type in XMP (engine/mp4.py) and, when configured, a C2PA manifest that
signs the final bytes. Verification reads the file's marks and the watermark of every decoded frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

from engine import mp4, video_encode
from engine.provenance import c2pa_sign, metadata, visible, watermark
from engine.provenance.marking import ProvenanceConfig

MP4_MIME = "video/mp4"


def frame_size(width: int, height: int, min_side: int = watermark.MIN_SIDE) -> tuple[int, int]:
    """Even sides (H.264 yuv420p), the aspect kept, the shorter side at least ``min_side`` (watermark)."""
    scale = max(1.0, min_side / min(width, height))

    def even(x: float) -> int:
        return max(2, math.ceil(x * scale / 2) * 2)

    return even(width), even(height)


def mark_frames(frames: list[PIL.Image.Image], config: ProvenanceConfig) -> list[PIL.Image.Image]:
    """Frames resized to an even size the watermark fits, with the visible and invisible marks."""
    size = frame_size(*frames[0].size)
    out = []
    for frame in frames:
        frame = frame.convert("RGB")
        if frame.size != size:
            frame = frame.resize(size, PIL.Image.Resampling.LANCZOS)
        if config.visible_watermark:
            frame = visible.add_mark(frame)
        if config.invisible_watermark:
            frame = watermark.embed(frame, config.deployment_id)
        out.append(frame)
    return out


def mark_video(frames: list[PIL.Image.Image], fps: int, config: ProvenanceConfig) -> bytes:
    """Mark every frame, encode an H.264 MP4, add the XMP box, then sign with C2PA when configured."""
    data = video_encode.encode_mp4(mark_frames(frames, config), fps)
    data = mp4.add_xmp(data, metadata.XMP_PACKET)
    if config.c2pa_cert is not None and config.c2pa_key is not None:
        data = c2pa_sign.sign(data, "mp4", config.c2pa_cert, config.c2pa_key, config.c2pa_tsa_url)
    return data


@dataclass(frozen=True)
class VideoReport:
    """Which marks an MP4 carries: the file's own, and the watermark frame by frame."""

    frames: int
    fps: float
    width: int
    height: int
    watermark_frames: int  # frames whose watermark decodes within the error budget
    iptc_xmp: bool
    c2pa: bool
    c2pa_valid: bool | None
    c2pa_trusted: bool | None
    c2pa_ai_generated: bool | None
    c2pa_issues: tuple[str, ...]

    @property
    def watermark_rate(self) -> float:
        return self.watermark_frames / self.frames if self.frames else 0.0

    @property
    def watermark(self) -> bool:
        """Marked when most frames carry the watermark (one frame can be damaged by the codec)."""
        return self.watermark_rate > 0.5


def verify_video(
    data: bytes, config: ProvenanceConfig | None = None, trust_anchors: Path | None = None
) -> VideoReport:
    """Report the marks of an MP4. Raises ``ValueError`` or PyAV's errors for data that is no video."""
    decoded = video_encode.decode_mp4(data)
    deployment = config.deployment_id if config else None
    marked = sum(watermark.read(frame, deployment).present for frame in decoded.frames)
    xmp = mp4.read_xmp(data)
    manifest = c2pa_sign.read(data, MP4_MIME, trust_anchors)
    return VideoReport(
        frames=len(decoded.frames),
        fps=decoded.fps,
        width=decoded.width,
        height=decoded.height,
        watermark_frames=marked,
        iptc_xmp=xmp is not None and metadata.digital_source_type(xmp) == metadata.TRAINED_ALGORITHMIC_MEDIA,
        c2pa=manifest.present,
        c2pa_valid=manifest.valid,
        c2pa_trusted=manifest.trusted,
        c2pa_ai_generated=manifest.ai_generated,
        c2pa_issues=manifest.issues,
    )


def format_video_report(report: VideoReport) -> list[str]:
    """Human-readable lines, one per mark."""

    def present(flag: bool) -> str:
        return "present" if flag else "absent"

    clip = f"{report.frames} frames, {report.fps:g} fps, {report.width}x{report.height}"
    rate = f"{report.watermark_frames}/{report.frames} frames ({report.watermark_rate:.0%})"
    xmp_detail = "DigitalSourceType trainedAlgorithmicMedia" if report.iptc_xmp else "no AI source type"
    if report.c2pa:
        c2pa_detail = "signature valid" if report.c2pa_valid else "INVALID"
        c2pa_detail += ", trusted signer" if report.c2pa_trusted else ", untrusted signer"
        if not report.c2pa_ai_generated:
            c2pa_detail += ", no trainedAlgorithmicMedia creation action"
        if report.c2pa_issues:
            c2pa_detail += f" ({', '.join(report.c2pa_issues)})"
    else:
        c2pa_detail = "no manifest"
    return [
        f"  video:     {clip}",
        f"  watermark: {present(report.watermark)} in {rate}",
        f"  iptc/xmp:  {present(report.iptc_xmp)} ({xmp_detail})",
        f"  c2pa:      {present(report.c2pa)} ({c2pa_detail})",
    ]
