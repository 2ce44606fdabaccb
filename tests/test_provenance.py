"""Provenance marks: each mark is applied, survives what it should, and the verifier reports it honestly."""

from __future__ import annotations

import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import c2pa
import numpy as np
import pytest
from PIL import Image, JpegImagePlugin
from skimage import data as photos

from engine.provenance import (
    MarkReport,
    ProvenanceConfig,
    mark_image,
    metadata,
    verify_image,
    verify_main,
    visible,
    watermark,
)
from tests.certs import CertChain, make_test_chain

DEPLOYMENT = "test-deployment"


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> CertChain:
    return make_test_chain(tmp_path_factory.mktemp("c2pa"))


@pytest.fixture(scope="module")
def portrait() -> Image.Image:
    return Image.fromarray(photos.astronaut())


@pytest.fixture(scope="module")
def signed_png(chain: CertChain, portrait: Image.Image) -> bytes:
    config = ProvenanceConfig(DEPLOYMENT, c2pa_cert=chain.cert, c2pa_key=chain.key)
    return mark_image(portrait, config)


def png_bytes(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def jpeg_bytes(image: Image.Image, quality: int, subsampling: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, subsampling=subsampling)
    return out.getvalue()


def assert_all_absent(report: MarkReport) -> None:
    assert not report.watermark
    assert report.watermark_bit_errors is not None
    assert report.watermark_bit_errors > watermark.MAX_BIT_ERRORS
    assert not report.iptc_xmp
    assert not report.c2pa
    assert report.c2pa_valid is None


def test_marked_png_carries_every_mark(signed_png: bytes) -> None:
    report = verify_image(signed_png)

    assert report.image_format == "PNG"
    assert report.watermark
    assert report.watermark_bit_errors == 0
    assert report.watermark_tag == watermark.TAG
    assert report.watermark_deployment == watermark.deployment_tag(DEPLOYMENT)
    assert report.iptc_xmp
    assert report.c2pa
    assert report.c2pa_valid
    assert report.c2pa_ai_generated
    assert report.c2pa_trusted is False
    assert "signingCredential.untrusted" in report.c2pa_issues
    assert report.visible == "n/a"


def test_c2pa_trusted_with_the_test_root_as_anchor(signed_png: bytes, chain: CertChain) -> None:
    report = verify_image(signed_png, trust_anchors=chain.root)

    assert report.c2pa_valid
    assert report.c2pa_trusted
    assert report.c2pa_issues == ()


def test_c2pa_manifest_is_minimal(signed_png: bytes) -> None:
    with c2pa.Reader("image/png", io.BytesIO(signed_png)) as reader:
        store = json.loads(reader.json())
    manifest = store["manifests"][store["active_manifest"]]

    assert manifest["claim_generator_info"][0]["name"] == "Likeness"
    assert "thumbnail" not in manifest
    assert not manifest.get("ingredients")
    actions = [a for assertion in manifest["assertions"] for a in assertion["data"].get("actions", [])]
    assert actions == [{"action": "c2pa.created", "digitalSourceType": metadata.TRAINED_ALGORITHMIC_MEDIA}]


def test_jpeg_output_is_444_and_carries_every_mark(chain: CertChain, portrait: Image.Image) -> None:
    config = ProvenanceConfig(DEPLOYMENT, c2pa_cert=chain.cert, c2pa_key=chain.key, output_format="jpeg")
    data = mark_image(portrait, config)

    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert JpegImagePlugin.get_sampling(image) == 0  # 4:4:4
    report = verify_image(data, config)
    assert report.watermark and report.watermark_bit_errors == 0
    assert report.iptc_xmp
    assert report.c2pa and report.c2pa_valid


def test_tampered_pixels_fail_c2pa_validation(chain: CertChain, portrait: Image.Image) -> None:
    config = ProvenanceConfig(DEPLOYMENT, c2pa_cert=chain.cert, c2pa_key=chain.key, output_format="jpeg")
    data = bytearray(mark_image(portrait, config))
    at = len(data) - 100  # inside the entropy-coded scan, before the end-of-image marker
    while 0xFF in (data[at - 1], data[at], data[at] ^ 1):
        at -= 1
    data[at] ^= 1

    report = verify_image(bytes(data))
    assert report.c2pa
    assert report.c2pa_valid is False


@pytest.mark.parametrize("name", ["coffee", "chelsea", "rocket"])
def test_unmarked_photo_is_absent_for_every_mark(name: str) -> None:
    image = Image.fromarray(getattr(photos, name)())

    assert_all_absent(verify_image(png_bytes(image)))
    assert_all_absent(verify_image(jpeg_bytes(image, 95, 0)))


def test_stripped_metadata_keeps_only_the_watermark(signed_png: bytes) -> None:
    with Image.open(io.BytesIO(signed_png)) as image:
        pixels_only = png_bytes(image.convert("RGB"))

    report = verify_image(pixels_only)
    assert report.watermark
    assert report.watermark_bit_errors == 0
    assert not report.iptc_xmp
    assert not report.c2pa


def test_watermark_survives_telegram_like_jpeg(signed_png: bytes) -> None:
    with Image.open(io.BytesIO(signed_png)) as image:
        recompressed = jpeg_bytes(image.convert("RGB"), 87, 2)  # 4:2:0, as photo re-encoders do

    report = verify_image(recompressed)
    assert report.watermark
    assert not report.iptc_xmp and not report.c2pa


def test_small_image_is_upscaled_and_marked(portrait: Image.Image) -> None:
    small = portrait.crop((180, 60, 340, 220)).resize((64, 64))

    data = mark_image(small, ProvenanceConfig(DEPLOYMENT))
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (watermark.MIN_SIDE, watermark.MIN_SIDE)
    report = verify_image(data, ProvenanceConfig(DEPLOYMENT))
    assert report.watermark and report.watermark_bit_errors == 0
    assert report.iptc_xmp
    assert not report.c2pa


def test_xmp_holds_the_source_type_and_nothing_identifying(portrait: Image.Image) -> None:
    data = mark_image(portrait, ProvenanceConfig(DEPLOYMENT))
    with Image.open(io.BytesIO(data)) as image:
        xmp = metadata.read_xmp(image)
        assert set(image.info) == {"xmp", metadata.PNG_XMP_KEY}  # the iTXt chunk only: no EXIF, no text

    assert xmp is not None
    assert metadata.digital_source_type(xmp) == metadata.TRAINED_ALGORITHMIC_MEDIA
    root = ET.fromstring(xmp)
    values = [v for element in root.iter() for v in [*element.attrib.values(), (element.text or "").strip()]]
    assert sorted(v for v in values if v) == [metadata.TRAINED_ALGORITHMIC_MEDIA]
    assert DEPLOYMENT.encode() not in data


def test_deployment_id_selects_the_payload(signed_png: bytes) -> None:
    ours = verify_image(signed_png, ProvenanceConfig(DEPLOYMENT))
    theirs = verify_image(signed_png, ProvenanceConfig("another-deployment"))

    assert ours.watermark and ours.watermark_bit_errors == 0
    assert not theirs.watermark
    assert theirs.watermark_bit_errors is not None and theirs.watermark_bit_errors >= 4


def test_false_positive_rate_matches_the_documented_bound() -> None:
    assert watermark.false_positive_rate() == pytest.approx(4.30e-6, rel=1e-2)
    assert watermark.false_positive_rate(known_deployment=True) == pytest.approx(6.56e-11, rel=1e-2)
    codewords = watermark._all_codewords()
    distances = np.count_nonzero(codewords[1:] != codewords[0], axis=1)
    assert distances.min() == watermark.MAX_BIT_ERRORS + 1  # one deployment's mark never reads as another's


def test_visible_mark_only_touches_the_bottom_right_corner(portrait: Image.Image) -> None:
    marked = visible.add_mark(portrait)

    diff = np.any(np.asarray(marked, dtype=int) != np.asarray(portrait, dtype=int), axis=2)
    rows, cols = np.nonzero(diff)
    assert rows.size > 0
    assert rows.min() > portrait.height * 0.9
    assert cols.min() > portrait.width * 0.9


def test_visible_mark_option_keeps_the_other_marks(portrait: Image.Image) -> None:
    plain = mark_image(portrait, ProvenanceConfig(DEPLOYMENT))
    data = mark_image(portrait, ProvenanceConfig(DEPLOYMENT, visible_watermark=True))

    assert data != plain
    report = verify_image(data)
    assert report.watermark and report.iptc_xmp and report.visible == "n/a"


def test_watermark_can_be_turned_off(portrait: Image.Image) -> None:
    data = mark_image(portrait, ProvenanceConfig(DEPLOYMENT, invisible_watermark=False))

    report = verify_image(data)
    assert not report.watermark
    assert report.iptc_xmp


@pytest.mark.parametrize(
    "kwargs",
    [
        {"deployment_id": ""},
        {"deployment_id": "x", "output_format": "gif"},
        {"deployment_id": "x", "c2pa_cert": Path("cert.pem")},
    ],
)
def test_config_rejects_incomplete_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ProvenanceConfig(**kwargs)


def test_verify_main_prints_present_and_absent(
    signed_png: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marked = tmp_path / "marked.png"
    marked.write_bytes(signed_png)
    plain = tmp_path / "plain.png"
    plain.write_bytes(png_bytes(Image.fromarray(photos.coffee())))

    assert verify_main([str(marked), str(plain)]) == 0

    out = capsys.readouterr().out
    marked_part, plain_part = out.split(str(plain))
    assert "watermark: present (bit errors 0/48, tag 0xB4E1" in marked_part
    assert "iptc/xmp:  present" in marked_part
    assert "c2pa:      present (signature valid, untrusted signer" in marked_part
    assert "watermark: absent (no Likeness payload in the pixels)" in plain_part
    assert "tag 0x" not in plain_part and "deployment 0x" not in plain_part  # decoded noise is not shown
    assert "iptc/xmp:  absent" in plain_part
    assert "c2pa:      absent (no manifest)" in plain_part


def test_verify_main_reports_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")

    assert verify_main([str(not_an_image), str(tmp_path / "missing.png")]) == 2
    assert capsys.readouterr().out.count("error: cannot read image") == 2
