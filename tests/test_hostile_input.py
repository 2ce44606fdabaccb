"""Hostile input at the intake: a corpus of hostile files and property-based (hypothesis) inputs.

For every input: no exception, no hang, bounded memory, an outcome with a text the user can read, and
nothing stored for a refused photo. The same corpus is also sent through the real Telegram bot, as photo
and as document, in tests/test_hostile_telegram.py.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import tomllib
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.facade import Engine
from engine.intake import REJECTION_CODES, Accepted, IntakeLimits, Rejected, process_photo
from tests import faces_data as fd
from tests.hostile_files import corpus
from tests.tiny_settings import tiny_settings

ROOT = Path(__file__).resolve().parent.parent
LIMITS = IntakeLimits()
INTAKE_TEXTS = tomllib.loads((ROOT / "config" / "texts" / "en.toml").read_text())["intake"]
CORPUS = corpus()


def outcome_of(data: bytes) -> str:
    """Run the intake; the outcome must be Accepted or a Rejected whose code has a text."""
    result = process_photo(data, LIMITS, [])
    if isinstance(result, Accepted):
        return "accepted"
    assert isinstance(result, Rejected)
    assert result.code in REJECTION_CODES and result.code in INTAKE_TEXTS, result
    reason, tip = INTAKE_TEXTS[result.code]
    reason.format(**result.detail)  # every placeholder of the text is filled by the detail
    tip.format(**result.detail)
    return result.code


@pytest.mark.parametrize(("name", "data", "expected"), CORPUS, ids=[name for name, _, _ in CORPUS])
def test_each_hostile_file_gets_an_expected_outcome(name: str, data: bytes, expected: frozenset) -> None:
    assert outcome_of(data) in expected


def test_every_rejection_code_has_a_text_with_its_placeholders() -> None:
    for code in (*REJECTION_CODES, "too_many_photos", "storage_full", "storage_busy"):
        assert code in INTAKE_TEXTS, code
        assert len(INTAKE_TEXTS[code]) == 2


@pytest.fixture
async def engine(data_dir: Path) -> AsyncIterator[Engine]:
    engine = await Engine.open(tiny_settings(data_dir))
    yield engine
    await engine.close()


async def test_nothing_is_stored_for_any_refused_hostile_file(engine: Engine) -> None:
    user = engine.pseudonym("telegram", 77)
    await engine.touch_user(user, "telegram")
    accepted = 0
    for _name, data, _expected in CORPUS:
        before = await engine.photo_count(user)
        result = await engine.add_photo(user, data)
        if isinstance(result.outcome, Accepted):
            accepted += 1
            assert await engine.photo_count(user) == before + 1
        else:
            assert await engine.photo_count(user) == before
    blobs = [p for p in engine.vault.blob_dir.rglob("*") if p.is_file()]
    assert len(blobs) == accepted == await engine.photo_count(user)
    assert not [p for p in blobs if p.suffix == ".tmp"]


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from engine.intake import IntakeLimits, process_photo
    from tests.hostile_files import corpus
    items = corpus()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peaks = {}
    for name, data, _ in items:
        process_photo(data, IntakeLimits(), [])
        peaks[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"base_kb": base, "peak_kb": max(peaks.values()), "worst": max(peaks, key=peaks.get)}))
    """
)


def test_the_corpus_runs_in_bounded_memory_without_hanging() -> None:
    """A child process, so that its peak RSS is the corpus's own; the timeout catches a hang."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    grown_mb = (figures["peak_kb"] - figures["base_kb"]) / 1024
    # The largest legitimate input is 40 MP: decoded RGB is 120 MB, plus working copies.
    assert grown_mb < 1024, figures


# --- property-based -----------------------------------------------------------------------------------

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=4096))
def test_any_bytes_get_a_readable_outcome(data: bytes) -> None:
    assert outcome_of(data) in REJECTION_CODES


MAGICS = [b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBP", b"\x00\x00\x00\x18ftypheic"]


@FAST
@given(st.sampled_from(MAGICS), st.binary(max_size=4096))
def test_any_bytes_behind_an_image_magic_get_a_readable_outcome(magic: bytes, tail: bytes) -> None:
    assert outcome_of(magic + tail) in {"corrupt", "too_many_pixels", "too_small", "no_face", "not_image"}


def _valid_images() -> list[bytes]:
    small = fd.astronaut().resize((300, 300))
    return [fd.encode(small, "JPEG", quality=80), fd.encode(small, "PNG"), fd.encode(small, "WEBP")]


VALID = _valid_images()


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    """A valid image with bytes flipped, cut off, or inserted: what a broken upload looks like."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 8))):
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, len(data) - 1))
        if action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at : at + draw(st.integers(1, 2048))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        if not data:
            break
    return bytes(data)


@SLOW
@given(mutated_image())
def test_mutated_images_never_crash_the_intake(data: bytes) -> None:
    outcome_of(data)


def _png_with_header(width: int, height: int, depth: int, colour: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@FAST
@given(
    st.integers(0, 2**31 - 1),
    st.integers(0, 2**31 - 1),
    st.sampled_from([1, 2, 4, 8, 16, 3, 0]),
    st.sampled_from([0, 2, 3, 4, 6, 1, 7]),
)
def test_any_declared_png_size_is_refused_from_the_header_or_decoded(
    width: int, height: int, depth: int, colour: int
) -> None:
    code = outcome_of(_png_with_header(width, height, depth, colour))
    if width * height > LIMITS.max_pixels and code != "corrupt":
        assert code == "too_many_pixels"
