"""Animated clips end to end over real HTTP: the real python-telegram-bot Application long-polls
`tests/fake_telegram.py`, the embedded worker runs the tiny model with the tiny motion adapter on CPU.

One press of a video style yields exactly one message: `sendAnimation` with the MP4, the AI-generated
caption, protect_content and the "Another style" button; the delivered bytes decode back and carry the
watermark. A delivery stuck behind a block survives a restart and is sent exactly once; /forget deletes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from bot.app import App
from bot.delivery import deliver_pending
from engine import video_encode
from engine.provenance.video import verify_video
from engine.settings import Settings
from tests import faces_data as fd
from tests.fake_telegram import FakeTelegram, FakeUser, SentMessage
from tests.video_fixtures import CLIP_FRAMES, CLIP_LABEL, SLOW, video_settings, write_presets

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]

ALICE = 2001


@dataclass
class World:
    fake: FakeTelegram
    settings: Settings
    app: App
    alice: FakeUser
    trained: SentMessage
    clip: SentMessage
    before_clip: list[SentMessage]


def animations(fake: FakeTelegram, chat_id: int) -> list[SentMessage]:
    return [m for m in fake.messages(chat_id) if m.animation is not None]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    fake = FakeTelegram()
    await fake.start()
    base = tmp_path_factory.mktemp("video-telegram")
    settings = video_settings(
        base / "data",
        write_presets(base),
        LIKENESS_TELEGRAM_TOKEN=fake.token,
        LIKENESS_TELEGRAM_API_URL=fake.base_url,
        LIKENESS_PROVENANCE_DEPLOYMENT_ID="video-e2e",
    )
    app = await App.create(settings)
    await app.start()
    state: World | None = None
    try:
        alice = fake.user(ALICE)
        await alice.send_text("/start")
        await alice.press(await fake.wait_for_message(ALICE, "Do you agree?"), "consent:yes")
        await fake.wait_for_message(ALICE, "Thank you!")
        await alice.send_album(list(fd.same_person_photos()))
        await alice.press(await fake.wait_for_message(ALICE, "photos so far"), "train")
        trained = await fake.wait_for_message(ALICE, "model is ready", timeout=SLOW)
        before = list(fake.messages(ALICE))
        await alice.press(trained, "style:clip")
        clip = await fake.wait_for(lambda f: next(iter(animations(f, ALICE)), None), SLOW)
        state = World(fake, settings, app, alice, trained, clip, before)
        yield state
    finally:
        await (state.app if state else app).stop()
        await fake.stop()


async def test_video_styles_sit_beside_the_still_styles(world: World) -> None:
    rows = world.trained.reply_markup["inline_keyboard"]
    datas = [[b["callback_data"] for b in row] for row in rows]
    assert ["style:fast"] in datas and ["style:clip"] in datas
    assert datas.index(["style:clip"]) > datas.index(["style:fast"])  # its own row, after the stills
    assert CLIP_LABEL in world.trained.button_texts


async def test_one_press_is_one_clip_message(world: World) -> None:
    clip = world.clip
    new = [m for m in world.fake.messages(ALICE) if m.message_id > world.before_clip[-1].message_id]
    results = [m for m in new if m.document is not None or m.photo is not None]
    assert results == [clip]  # not the same clip again as a document, no "⬆️" button message
    assert len(world.fake.calls_to("sendAnimation")) == 1
    texts = [e.get("text") or "" for m in new for e in [*m.edits, {"text": m.text}]]
    assert any(f"{CLIP_LABEL}: one animated clip coming up." in t for t in texts)  # progress, then the clip
    assert "AI-generated" in clip.caption and CLIP_LABEL in clip.caption
    assert clip.protect_content
    assert clip.button_texts == ["Another style"]
    assert clip.animation_json["mime_type"] == "video/mp4"
    assert clip.animation_json["file_name"] == "likeness-clip.mp4"


async def test_the_delivered_clip_decodes_and_carries_the_marks(world: World) -> None:
    decoded = video_encode.decode_mp4(world.clip.animation)
    assert (len(decoded.frames), decoded.fps, decoded.codec, decoded.pixel_format) == (
        CLIP_FRAMES,
        8.0,
        "h264",
        "yuv420p",
    )
    assert (decoded.width, decoded.height) == (512, 512) and decoded.audio_streams == 0
    assert world.clip.animation_json["width"] == 512 and world.clip.animation_json["duration"] == 1
    report = verify_video(world.clip.animation)
    assert report.watermark and report.watermark_frames >= 7 and report.iptc_xmp
    engine = world.app.engine
    assert (await engine.status(engine.pseudonym("telegram", ALICE), "telegram", {"en": "1"})).outputs == 0


async def test_a_pending_clip_survives_a_block_and_a_restart_and_is_sent_once(world: World) -> None:
    fake, alice, engine = world.fake, world.alice, world.app.engine
    user_id = engine.pseudonym("telegram", ALICE)
    before = len(animations(fake, ALICE))
    alice.block()
    await alice.press(world.trained, "style:clip")
    await fake.wait_for(lambda f: any(e[0] == "sendAnimation" and e[1] == 403 for e in f.errors), SLOW)
    for _ in range(100):  # the failed send is recorded right after the platform refused it
        stuck = await engine.store.fetchall(
            "SELECT kind, attempts FROM deliveries WHERE user_id=? AND state='pending'", (user_id,)
        )
        if stuck and stuck[0]["attempts"] >= 1:
            break
        await asyncio.sleep(0.1)
    assert [(row["kind"], row["attempts"] >= 1) for row in stuck] == [("video", True)]  # kept, backing off

    await world.app.stop()
    alice.unblock()
    world.app = await App.create(world.settings, models=world.app.worker.models)
    await world.app.start()
    engine = world.app.engine
    await fake.wait_for(lambda f: len(animations(f, ALICE)) > before, SLOW)
    for _ in range(100):  # the send is recorded right after the platform accepted it
        if not await engine.pending_deliveries("telegram"):
            break
        await asyncio.sleep(0.1)
    assert await engine.pending_deliveries("telegram") == []
    assert await deliver_pending(world.app.conversation, "telegram") == 0
    await asyncio.sleep(1.5)  # a duplicate would have been sent by now (the outbox polls every second)
    assert len(animations(fake, ALICE)) == before + 1
    assert verify_video(animations(fake, ALICE)[-1].animation).watermark


async def test_forget_deletes_the_clips(world: World) -> None:
    fake, alice, engine = world.fake, world.alice, world.app.engine
    assert animations(fake, ALICE)
    await alice.send_text("/forget")
    await alice.press(await fake.wait_for_message(ALICE, "deletes your photos"), "forget:yes")
    await fake.wait_for_message(ALICE, "Everything is deleted", timeout=60)
    assert animations(fake, ALICE) == []  # the clip messages are deleted from the chat
    assert not await engine.is_known(engine.pseudonym("telegram", ALICE))
