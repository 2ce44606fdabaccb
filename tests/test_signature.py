"""The face signature and portrait scores through the real Engine and Worker (tiny model, vault, SQLite):
kept sealed with the model, used for best-of-N, shown in the outbox, described in /mydata, gone with the
model's deadline and with /forget."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from engine.clock import FakeClock
from engine.facade import SIGNATURE_DESCRIPTION, Engine, PortraitScore
from engine.intake import Accepted, IntakeLimits, process_photo
from engine.settings import load_settings
from engine.worker import Models, Worker
from tests import faces_data

CHAT = {"chat_id": 515151, "user_id": 880001}
PRESET = """
[presets.fast]
label = "Fast"
prompt = "portrait photo of {token}"
negative_prompt = "blurry"
steps = 2
guidance = 6.0
aspect = "1:1"
"""
pytestmark = pytest.mark.timeout(600)


def env(data_dir: Path, presets: Path) -> dict[str, str]:
    return {
        "LIKENESS_DATA_DIR": str(data_dir),
        "LIKENESS_ENGINE_MODEL": "tiny",
        "LIKENESS_ENGINE_DEVICE": "cpu",
        "LIKENESS_ENGINE_TRAIN_STEPS": "2",
        "LIKENESS_ENGINE_IMAGES_PER_REQUEST": "2",
        "LIKENESS_ENGINE_CANDIDATES": "2",
        "LIKENESS_ENGINE_PRESETS": str(presets),
        "LIKENESS_UPLOAD_MIN_PHOTOS": "3",
    }


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("presets") / "presets.toml"
    path.write_text(PRESET, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory, presets):
    from types import SimpleNamespace

    settings = load_settings(env(tmp_path_factory.mktemp("models"), presets))
    return Models(SimpleNamespace(settings=settings))


@pytest.fixture(scope="module")
def embeddings() -> list[tuple[float, ...]]:
    """The descriptors intake computes for the three photos (what the signature must average)."""
    accepted: list[Accepted] = []
    for data in faces_data.same_person_photos():
        accepted.append(process_photo(data, IntakeLimits(), [a.fingerprint for a in accepted]))
    return [a.fingerprint.embedding for a in accepted]


@pytest.fixture
async def trained(tmp_path, presets, models):
    """An engine whose user has trained a model (and whose photos are therefore gone)."""
    clock = FakeClock()
    engine = await Engine.open(load_settings(env(tmp_path / "data", presets)), clock)
    user = engine.pseudonym("telegram", CHAT["user_id"])
    await engine.give_consent(user, "telegram", CHAT, "1", "self")
    for data in faces_data.same_person_photos():
        assert isinstance((await engine.add_photo(user, data)).outcome, Accepted)
    await engine.start_training(user)
    worker = Worker(engine, models)
    assert await worker.run_once()
    yield engine, user, worker, clock
    await engine.close()


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


async def test_training_keeps_a_sealed_signature_that_mydata_describes_in_words(
    trained, embeddings, tmp_path
):
    engine, user, _, _ = trained
    assert await engine.photo_count(user) == 0  # photos are gone, the signature stays with the model
    signature = await engine.signature(user)
    assert signature is not None and signature.photos == 3
    assert np.allclose(signature.embedding, np.mean(embeddings, axis=0))
    # No plaintext anywhere on disk: neither the signature's bytes nor its format tag.
    raw = struct.pack("<4d", *signature.embedding[:4])
    for path in _files(tmp_path / "data"):
        content = path.read_bytes()
        assert raw not in content and b"LKSG" not in content, path.name
    # /mydata describes it in words, never its numbers.
    summary, _ = await engine.export(user)
    text = summary.decode()
    assert json.loads(text)["face_signature"] == SIGNATURE_DESCRIPTION
    for value in signature.embedding[:8]:
        assert repr(value)[:8] not in text and f"{value:.4f}" not in text


async def test_generation_delivers_the_best_with_scores_and_keeps_raw_distances(trained):
    engine, user, worker, _ = trained
    job_id = await engine.request_portraits(user, "fast")
    assert await worker.run_once()
    (delivery,) = [d for d in await engine.pending_deliveries("telegram") if d.kind == "portraits"]
    assert len(delivery.images) == 2  # images_per_request, always
    # The tiny model draws no face: both are delivered, honestly marked under the minimum.
    assert delivery.scores == [PortraitScore(0, None, True)] * 2
    row = await engine.store.fetchone("SELECT metadata FROM jobs WHERE id=?", (job_id,))
    metadata = json.loads(row["metadata"])
    assert len(metadata["candidates"]) == 4  # 2 portraits x 2 candidates
    assert metadata["delivered"] == [0, 1] and metadata["below_minimum"] == 2 and metadata["measured"]


async def test_the_signature_goes_with_the_models_deadline(trained):
    engine, user, _, clock = trained
    clock.advance(engine.settings.retention.model + 1)
    counts = await engine.retention.run_due()
    assert counts.get("adapter") == 1
    assert await engine.signature(user) is None
    rows = await engine.store.fetchall("SELECT signature FROM adapters WHERE user_id=?", (user,))
    assert rows == []


async def test_forget_deletes_the_signature(trained):
    engine, user, _, _ = trained
    await engine.forget(user)
    assert await engine.signature(user) is None
    assert await engine.store.fetchall("SELECT id FROM adapters") == []
