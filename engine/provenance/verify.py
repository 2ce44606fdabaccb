"""Check an image for Likeness's marks: `verify_image(data) -> MarkReport` and the `verify` command.

Each mark is judged on its own evidence: the watermark from the pixels only, IPTC/XMP from the XMP
packet, C2PA from the embedded manifest. Needs no bot, database or settings; with a deployment id the
watermark is matched against that deployment's payload, without it against every valid payload.
"""

from __future__ import annotations

import argparse
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from engine.provenance import c2pa_sign, metadata, watermark
from engine.provenance.marking import ProvenanceConfig

MIME_BY_PIL_FORMAT = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


@dataclass
class MarkReport:
    """Which marks an image carries."""

    watermark: bool
    watermark_bit_errors: int | None  # of 48 payload bits; None when the image is too small to decode
    watermark_tag: int | None  # the first 16 decoded bits (0xB4E1 when intact)
    watermark_deployment: int | None  # deployment bits of the nearest valid payload
    iptc_xmp: bool  # XMP says DigitalSourceType = trainedAlgorithmicMedia
    c2pa: bool
    c2pa_valid: bool | None  # signature and hashes valid (None: no manifest)
    c2pa_trusted: bool | None  # signer chains to a given trust anchor
    c2pa_ai_generated: bool | None  # manifest declares c2pa.created + trainedAlgorithmicMedia
    c2pa_issues: tuple[str, ...]
    visible: str = "n/a"  # a visible mark is not reliably detectable from pixels
    image_format: str | None = None


def verify_image(
    data: bytes, config: ProvenanceConfig | None = None, trust_anchors: Path | None = None
) -> MarkReport:
    """Report every mark found in an encoded image. Raises PIL's UnidentifiedImageError for non-images."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        image_format = image.format
        xmp = metadata.read_xmp(image)
        reading = watermark.read(image, config.deployment_id if config else None)
    mime = MIME_BY_PIL_FORMAT.get(image_format or "")
    manifest = c2pa_sign.read(data, mime, trust_anchors) if mime else c2pa_sign.C2paReading(False)
    return MarkReport(
        watermark=reading.present,
        watermark_bit_errors=reading.bit_errors,
        watermark_tag=reading.tag,
        watermark_deployment=reading.deployment_tag,
        iptc_xmp=xmp is not None and metadata.digital_source_type(xmp) == metadata.TRAINED_ALGORITHMIC_MEDIA,
        c2pa=manifest.present,
        c2pa_valid=manifest.valid,
        c2pa_trusted=manifest.trusted,
        c2pa_ai_generated=manifest.ai_generated,
        c2pa_issues=manifest.issues,
        image_format=image_format,
    )


def format_report(report: MarkReport) -> list[str]:
    """Human-readable lines, one per mark."""

    def present(flag: bool) -> str:
        return "present" if flag else "absent"

    if report.watermark_bit_errors is None:
        wm_detail = "image too small to carry it"
    elif not report.watermark:
        # What was decoded from an unmarked image is noise: printing it would look like a finding.
        wm_detail = "no Likeness payload in the pixels"
    else:
        wm_detail = (
            f"bit errors {report.watermark_bit_errors}/{watermark.PAYLOAD_BITS}, "
            f"tag 0x{report.watermark_tag:04X}, deployment 0x{report.watermark_deployment:04X}"
        )
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
        f"  watermark: {present(report.watermark)} ({wm_detail})",
        f"  iptc/xmp:  {present(report.iptc_xmp)} ({xmp_detail})",
        f"  c2pa:      {present(report.c2pa)} ({c2pa_detail})",
        f"  visible:   {report.visible} (not detectable from pixels)",
    ]


def verify_main(argv: list[str]) -> int:
    """`python -m engine verify FILE [FILE...]`: print which marks each image or MP4 clip carries.

    `argv` holds the arguments after `verify`. Returns 0 when every file was read (whatever marks it
    had), 2 when a file was missing or not an image or video.
    """
    parser = argparse.ArgumentParser(
        prog="python -m engine verify",
        description="Check images and MP4 clips for Likeness's AI-generated marks.",
    )
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--deployment-id", help="match the watermark against this deployment only")
    parser.add_argument("--trust-anchors", type=Path, help="PEM file of CA certificates to trust for C2PA")
    args = parser.parse_args(argv)
    config = ProvenanceConfig(deployment_id=args.deployment_id) if args.deployment_id else None

    status = 0
    for path in args.images:
        print(path)
        try:
            lines = _check_file(path.read_bytes(), config, args.trust_anchors)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            print(f"  error: cannot read image or video ({type(error).__name__})")
            status = 2
            continue
        print("\n".join(lines))
    return status


def _check_file(data: bytes, config: ProvenanceConfig | None, trust_anchors: Path | None) -> list[str]:
    """The report lines for an image, or for an MP4 clip (its file marks and every frame's watermark)."""
    from engine import mp4

    if not mp4.is_mp4(data):
        return format_report(verify_image(data, config, trust_anchors))
    import av

    from engine.provenance.video import format_video_report, verify_video

    try:
        return format_video_report(verify_video(data, config, trust_anchors))
    except av.error.FFmpegError as error:
        raise ValueError("not a readable video") from error
