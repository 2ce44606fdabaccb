"""An animated clip is delivered exactly once across a kill -9 of the real bot.

The real `python -m bot` (embedded worker, tiny model, tiny motion adapter; tests/bot_process.py, as in
bench/crash_sweep.py) talks to the fake Telegram server over real HTTP and is SIGKILLed twice, each time
restarted on the same data dir:

1. while the clip's `sendAnimation` is in flight (the upload has reached the server, which has not
   performed it yet): after the restart the clip arrives once;
2. right after the platform accepted a clip and the bot recorded the send (the clip is one part: caption
   and button ride with it, so no follow-up message is due): after the restart the clip is not sent again.

A kill in the milliseconds between the platform's answer and that record is the one case that can repeat
a send (the Bot API has no idempotency key); bot/delivery.py says so. /forget then deletes both clips,
which shows that the clip accepted before the second kill was recorded with its message id.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests import faces_data as fd
from tests.bot_process import Process, bot_environment, read_db
from tests.fake_faults import FaultyTelegram
from tests.fake_telegram import SentMessage
from tests.video_fixtures import SLOW, video_env, write_presets

pytestmark = pytest.mark.timeout(1500)

ALICE = 5101
STALL = 20.0  # seconds the in-flight upload is held (it never completes: the bot dies first)


def clips(fake: FaultyTelegram) -> list[SentMessage]:
    return [m for m in fake.messages(ALICE) if m.animation is not None]


def recorded_clips(data_dir: Path) -> int:
    """Clip deliveries whose send the bot has recorded (its one part, or the whole delivery)."""
    sql = "SELECT count(*) FROM deliveries WHERE kind='video' AND (parts_sent >= 1 OR state='sent')"
    return read_db(data_dir, sql)[0][0]


def pending_deliveries(data_dir: Path) -> int:
    return read_db(data_dir, "SELECT count(*) FROM deliveries WHERE state='pending'")[0][0]


async def until(condition, timeout: float, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(interval)


async def settled(fake: FaultyTelegram, data_dir: Path) -> None:
    """The restarted bot is up and its outbox has run: it answered /status and nothing is pending."""
    alice = fake.user(ALICE)
    last = fake.messages(ALICE)[-1].message_id
    await alice.send_text("/status")
    await fake.wait_for_message(ALICE, "Support reference", timeout=SLOW, after=last)
    await until(lambda: pending_deliveries(data_dir) == 0, SLOW, interval=0.2)
    await asyncio.sleep(2.5)  # a repeated send would be made now (the outbox polls every second)


async def test_a_clip_is_delivered_once_across_kill_9_of_the_bot(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    async with FaultyTelegram() as fake:
        env = {**bot_environment(fake, data_dir, tmp_path / "certs", embedded=True)}
        env.update(video_env(write_presets(tmp_path)))
        bot = Process(["-m", "bot"], env, tmp_path / "bot.log")
        bot.start()
        try:
            alice = fake.user(ALICE)
            await alice.send_text("/start")
            await alice.press(
                await fake.wait_for_message(ALICE, "Do you agree?", timeout=SLOW), "consent:yes"
            )
            await fake.wait_for_message(ALICE, "Thank you!", timeout=SLOW)
            await alice.send_album(list(fd.same_person_photos()))
            await alice.press(await fake.wait_for_message(ALICE, "photos so far", timeout=SLOW), "train")
            trained = await fake.wait_for_message(ALICE, "model is ready", timeout=2 * SLOW)

            # 1. Killed with the clip's upload in flight: the platform never performed it.
            fake.inject("sendAnimation", "stall", delay=STALL)
            await alice.press(trained, "style:clip")
            await fake.wait_for(lambda f: ("sendAnimation", "stall") in f.injected, timeout=2 * SLOW)
            bot.kill()
            assert clips(fake) == [] and fake.calls_to("sendAnimation") == []
            assert recorded_clips(data_dir) == 0
            bot.start()
            await fake.wait_for(lambda f: clips(f), timeout=SLOW)
            await settled(fake, data_dir)
            assert len(clips(fake)) == 1 and len(fake.calls_to("sendAnimation")) == 1

            # 2. Killed right after the platform accepted the next clip and the bot recorded it.
            await alice.press(trained, "style:clip")
            await until(lambda: recorded_clips(data_dir) == 2, 2 * SLOW)
            bot.kill()
            assert len(clips(fake)) == 2 and len(fake.calls_to("sendAnimation")) == 2
            bot.start()
            await settled(fake, data_dir)
            assert len(fake.calls_to("sendAnimation")) == 2  # the accepted clip was never sent again
            assert len(clips(fake)) == 2
            assert all("AI-generated" in clip.caption and clip.protect_content for clip in clips(fake))

            await alice.send_text("/forget")
            await alice.press(
                await fake.wait_for_message(ALICE, "deletes your photos", timeout=SLOW), "forget:yes"
            )
            await fake.wait_for_message(ALICE, "Everything is deleted", timeout=SLOW)
            assert clips(fake) == []  # both clip messages were recorded, so both are deleted
        except BaseException:
            print((tmp_path / "bot.log").read_text(errors="replace")[-4000:])
            raise
        finally:
            bot.stop()
