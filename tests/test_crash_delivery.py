"""Crashes in the Telegram path, over real HTTP against the fake Bot API (no model: the results are
recorded directly through the engine, as the worker would):

- the bot dies while the "another style" message is in flight, after the portraits were accepted: a
  restart must not send the portraits again;
- the bot dies with album photos in its collection buffer, or with an update fetched but not answered:
  after the restart the user is answered (the offset was not acknowledged before handling).
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from bot.app import App
from bot.delivery import deliver_pending
from tests import faces_data as fd
from tests.fake_faults import FaultyTelegram
from tests.tiny_settings import tiny_settings

pytestmark = pytest.mark.timeout(120)


def settings(fake: FaultyTelegram, data_dir: Path):
    return tiny_settings(
        data_dir, LIKENESS_TELEGRAM_TOKEN=fake.token, LIKENESS_TELEGRAM_API_URL=fake.base_url
    )


async def finished_portraits(app: App, chat_id: int) -> str:
    engine = app.engine
    user = engine.pseudonym("telegram", chat_id)
    await engine.touch_user(user, "telegram", {"chat_id": str(chat_id), "user_id": str(chat_id)})
    preset = next(iter(engine.presets))
    await engine.queue.enqueue(user, "generate", {"preset": preset})
    job = await engine.queue.claim("w")
    images = [fd.encode(fd.noise(64, 64, seed), "PNG") for seed in (1, 2)]
    assert await engine.record_portraits(job, preset, images, "adapter0")
    return user


async def crash(app: App) -> None:
    """What SIGKILL leaves: no graceful stop of anything in flight; only the files on disk remain."""
    for frontend in app.frontends:
        with contextlib.suppress(Exception):
            await frontend.app.updater.stop()  # stop polling without handling more
    await app.engine.close()


async def test_a_crash_during_the_follow_up_message_does_not_resend_the_portraits(data_dir: Path) -> None:
    async with FaultyTelegram() as fake:
        app = await App.create(settings(fake, data_dir), with_worker=False)
        await app.frontends[0].app.initialize()
        user = await finished_portraits(app, 31)
        fake.user(31)
        fake.inject("sendMessage", "timeout", delay=30.0)  # the "another style" message hangs ...
        sending = asyncio.create_task(deliver_pending(app.conversation, "telegram"))
        await fake.wait_for(lambda f: f.calls_to("sendMessage"))
        sending.cancel()  # ... and the bot dies right then
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        assert len(fake.calls_to("sendMediaGroup")) == 1
        await app.frontends[0].app.shutdown()
        await app.engine.close()

        restarted = await App.create(settings(fake, data_dir), with_worker=False)
        await restarted.frontends[0].app.initialize()
        try:
            assert await deliver_pending(restarted.conversation, "telegram") == 1
            assert len(fake.calls_to("sendMediaGroup")) == 1  # the portraits were not sent again
            # The button message was in flight at the crash (the fake performed it, the bot never
            # learned): that one call can be repeated; nothing that was acknowledged is.
            assert [m.text for m in fake.messages(31) if m.text] == ["⬆️", "⬆️"]
            assert await restarted.engine.pending_deliveries("telegram") == []
            assert len(await restarted.engine.messages(user)) == 3  # two portraits and the button
        finally:
            await restarted.frontends[0].app.shutdown()
            await restarted.engine.close()


async def test_album_photos_in_the_buffer_survive_a_crash(data_dir: Path) -> None:
    async with FaultyTelegram() as fake:
        app = await App.create(settings(fake, data_dir), with_worker=False)
        await app.start()
        alice = fake.user(41)
        await alice.send_text("/start")
        consent = await fake.wait_for_message(41, "Do you agree?")
        await alice.press(consent, "consent:yes")
        await fake.wait_for_message(41, "Thank you!")
        await alice.send_album(fd.same_person_photos())
        await fake.wait_for(lambda f: f.pending_updates() == 0 or len(f.calls_to("getUpdates")) > 3)
        await asyncio.sleep(0.3)  # fetched, waiting in the 1.5 s album buffer
        await crash(app)
        assert not [m for m in fake.messages(41) if "photos so far" in (m.text or "")]

        restarted = await App.create(settings(fake, data_dir), with_worker=False)
        await restarted.start()
        try:
            summary = await fake.wait_for_message(41, "photos so far", timeout=30)
            assert "3 of at least 3" in summary.text or "Photo 3" in summary.text
        finally:
            await restarted.stop()
