"""Video jobs through the engine: queue -> worker -> sealed output -> outbox -> export -> forget.

Real Engine (SQLite, vault), real worker with the tiny model and the tiny motion adapter, CPU (the presets
and settings from tests/video_fixtures.py).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import io
import json
import zipfile
from pathlib import Path
from types import SimpleNamespace

import diffusers
import pytest
import transformers

from engine.errors import Refused
from engine.facade import Engine
from engine.provenance.video import verify_video
from engine.worker import Models, Worker
from tests import faces_data as fd
from tests.video_fixtures import CLIP_FRAMES, video_settings, write_presets

diffusers.utils.logging.set_verbosity_error()
transformers.utils.logging.set_verbosity_error()

CHAT = {"chat_id": 424242, "user_id": 777001}
pytestmark = pytest.mark.timeout(900)


def settings_for(data_dir: Path, presets: Path, **extra: str):
    return video_settings(
        data_dir,
        presets,
        LIKENESS_ENGINE_TRAIN_STEPS="3",
        LIKENESS_ENGINE_IMAGES_PER_REQUEST="1",
        LIKENESS_PROVENANCE_DEPLOYMENT_ID="video-jobs",
        **extra,
    )


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> Path:
    return write_presets(tmp_path_factory.mktemp("presets"), clip_aspect="4:5")


async def test_video_job_from_request_to_forget(tmp_path, presets):
    settings = settings_for(tmp_path / "data", presets)
    engine = await Engine.open(settings)
    try:
        worker = Worker(engine, Models(SimpleNamespace(settings=settings)))
        user = engine.pseudonym("telegram", CHAT["user_id"])
        await engine.give_consent(user, "telegram", CHAT, "1", "self")
        for data in fd.same_person_photos():
            await engine.add_photo(user, data)
        await engine.start_training(user)
        assert await worker.run_once()
        job_id = await engine.request_portraits(user, "clip")
        job = await engine.job(user, job_id)
        assert job.kind == "video" and job.payload == {"preset": "clip"}
        assert await worker.run_once()

        [delivery] = [d for d in await engine.pending_deliveries("telegram") if d.kind == "video"]
        assert delivery.preset == "clip" and len(delivery.images) == 1
        output_id, clip = delivery.images[0]
        report = verify_video(clip)
        assert (report.frames, report.fps) == (CLIP_FRAMES, 8.0)
        # 56x72 (4:5) frames, upscaled for the watermark to even sides, short side 512
        assert (report.width, report.height) == (512, 660)
        assert report.watermark and report.watermark_frames >= 7 and report.iptc_xmp

        status = await engine.status(user, "telegram", {"en": "1"})
        assert status.outputs == 1 and status.output_deadline is not None
        summary, archive = await engine.export(user)
        with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
            assert zipped.read(f"videos/{output_id}.mp4") == clip
        assert [o["preset"] for o in json.loads(summary)["outputs"]] == ["clip"]

        blob = engine.vault.blobs.path(user, output_id)
        assert blob.exists() and clip not in blob.read_bytes()  # sealed at rest
        await engine.delivered(delivery, ["m1"], "telegram")
        assert [d.kind for d in await engine.pending_deliveries("telegram")] == ["trained"]
        assert (await engine.status(user, "telegram", {"en": "1"})).outputs == 0  # delivered: deleted at once
        assert not blob.exists()

        second = await engine.request_portraits(user, "clip")
        receipt = await engine.forget(user)
        assert receipt.counts["models"] == 1
        assert await engine.job(user, second) is None
        assert not await engine.is_known(user)
    finally:
        await engine.close()


async def test_video_presets_are_hidden_when_video_is_off(tmp_path, presets):
    engine = await Engine.open(settings_for(tmp_path, presets, LIKENESS_ENGINE_MOTION_ADAPTER="off"))
    try:
        assert set(engine.presets) == {"fast"}
        user = engine.pseudonym("telegram", CHAT["user_id"])
        await engine.give_consent(user, "telegram", CHAT, "1", "self")
        with pytest.raises(Refused) as refused:
            await engine.request_portraits(user, "clip")
        assert refused.value.reason == "unknown_style"
    finally:
        await engine.close()
