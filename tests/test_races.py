"""One user's updates are handled concurrently (python-telegram-bot's concurrent_updates): an erasure that
lands in the middle of another update of the same user must not break it.

Found by bench/fuzz.py: a consent press still being recorded while the same user's "forget: yes" press
ran erased the user row between `touch_user` and the consent insert (FOREIGN KEY constraint failed, the
user got "something went wrong").
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.texts import Texts
from engine.facade import Engine
from tests.tiny_settings import tiny_settings

CHAT = {"chat_id": "1", "user_id": "1"}


async def test_forget_during_consent_waits_for_it_then_erases_it(tmp_path: Path) -> None:
    engine = await Engine.open(tiny_settings(tmp_path))
    try:
        user = engine.pseudonym("telegram", 1)
        ensure = engine.tables.users.ensure
        forgetting: list[asyncio.Task] = []

        async def ensure_then_forget(*args, **kwargs):
            created = await ensure(*args, **kwargs)
            if not forgetting:  # the user's next update, /forget confirmed, runs right now
                forgetting.append(asyncio.create_task(engine.forget(user)))
                await asyncio.wait(forgetting, timeout=2.0)
            return created

        engine.tables.users.ensure = ensure_then_forget
        await engine.give_consent(user, "telegram", CHAT, "en-1", "The photos are of me.")
        receipt = await forgetting[0]
        assert "consent records" in receipt.counts and receipt.counts["consent records"] == 1
        assert await engine.consent(user) is None  # the later erasure wins, as ordered
    finally:
        await engine.close()


async def test_a_second_forget_waits_for_a_consent_that_waited_for_the_first(tmp_path: Path) -> None:
    """The per-user lock outlives an erasure while others await it (a replayed "forget: yes" press)."""
    engine = await Engine.open(tiny_settings(tmp_path))
    try:
        user = engine.pseudonym("telegram", 1)
        await engine.give_consent(user, "telegram", CHAT, "en-1", "The photos are of me.")
        cancel_user, ensure = engine.queue.cancel_user, engine.tables.users.ensure
        first_forget_may_go = asyncio.Event()
        forgets: list[asyncio.Task] = []

        async def paused_cancel_user(*args, **kwargs):
            if len(forgets) == 1:
                await first_forget_may_go.wait()
            return await cancel_user(*args, **kwargs)

        async def ensure_then_forget(*args, **kwargs):
            created = await ensure(*args, **kwargs)
            if len(forgets) == 1:  # the replayed press: a second erasure, right now
                forgets.append(asyncio.create_task(engine.forget(user)))
                await asyncio.wait(forgets[1:], timeout=2.0)
            return created

        engine.queue.cancel_user = paused_cancel_user
        forgets.append(asyncio.create_task(engine.forget(user)))  # holds the lock, paused
        await asyncio.sleep(0.05)
        consent = asyncio.create_task(engine.give_consent(user, "telegram", CHAT, "en-1", "Mine."))
        await asyncio.sleep(0.05)  # the consent now awaits the first erasure's lock
        engine.tables.users.ensure = ensure_then_forget
        first_forget_may_go.set()
        await forgets[0]
        await consent  # raised IntegrityError when the first erasure dropped the lock others awaited
        await forgets[1]
        assert await engine.consent(user) is None
        assert engine._user_locks == {}  # nothing kept for an erased user
    finally:
        await engine.close()


async def test_a_photo_arriving_after_forget_is_not_stored(tmp_path: Path) -> None:
    """The upload checked consent, then the same user's /forget ran before the photo was stored."""
    from tests import faces_data as fd

    engine = await Engine.open(tiny_settings(tmp_path))
    try:
        user = engine.pseudonym("telegram", 1)
        await engine.give_consent(user, "telegram", CHAT, "en-1", "The photos are of me.")
        await engine.touch_user(user, "telegram", CHAT)  # what the upload does before storing each photo
        await engine.forget(user)
        result = await engine.add_photo(user, fd.encode(fd.astronaut(), "JPEG", quality=90))
        assert result.outcome.code == "erased" and result.count == 0
        reason, tip = Texts(engine.settings).rejection(result.outcome)  # the user reads why
        assert "deleted" in reason and "/start" in tip
        assert await engine.photo_count(user) == 0
        assert not [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    finally:
        await engine.close()
