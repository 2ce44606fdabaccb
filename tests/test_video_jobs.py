"""Video jobs through the engine: queue -> worker -> sealed output -> outbox -> export -> forget.

Real Engine (SQLite, vault), real worker with the tiny model and the tiny motion adapter, CPU.
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
from engine.settings import load_settings
from engine.worker import Models, Worker
from tests import faces_data as fd

diffusers.utils.logging.set_verbosity_error()
transformers.utils.logging.set_verbosity_error()

PRESETS = """
[presets.fast]
label = "Fast"
prompt = "portrait photo of {token}"
negative_prompt = "blurry"
steps = 2
guidance = 6.0
aspect = "1:1"

[presets.clip]
label = "Clip (animated)"
prompt = "portrait photo of {token}, smiling"
negative_prompt = "blurry"
steps = 2
guidance = 6.0
aspect = "4:5"
video = true
frames = 8
fps = 8
loop = true
"""
CHAT = {"chat_id": 424242, "user_id": 777001}
pytestmark = pytest.mark.timeout(900)


def env(data_dir: Path, presets: Path, **extra: str) -> dict[str, str]:
    return {
        "LIKENESS_DATA_DIR": str(data_dir),
        "LIKENESS_ENGINE_MODEL": "tiny",
        "LIKENESS_ENGINE_DEVICE": "cpu",
        "LIKENESS_ENGINE_TRAIN_STEPS": "3",
        "LIKENESS_ENGINE_IMAGES_PER_REQUEST": "1",
        "LIKENESS_ENGINE_PRESETS": str(presets),
        "LIKENESS_ENGINE_MOTION_ADAPTER": "tiny",
        "LIKENESS_UPLOAD_MIN_PHOTOS": "3",
        "LIKENESS_PROVENANCE_DEPLOYMENT_ID": "video-jobs",
        **extra,
    }


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("presets") / "presets.toml"
    path.write_text(PRESETS, encoding="utf-8")
    return path


async def test_video_job_from_request_to_forget(tmp_path, presets):
    settings = load_settings(env(tmp_path / "data", presets))
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
        assert (report.frames, report.fps) == (8, 8.0)
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
    engine = await Engine.open(load_settings(env(tmp_path, presets, LIKENESS_ENGINE_MOTION_ADAPTER="off")))
    try:
        assert set(engine.presets) == {"fast"}
        user = engine.pseudonym("telegram", CHAT["user_id"])
        await engine.give_consent(user, "telegram", CHAT, "1", "self")
        with pytest.raises(Refused) as refused:
            await engine.request_portraits(user, "clip")
        assert refused.value.reason == "unknown_style"
    finally:
        await engine.close()
