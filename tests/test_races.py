"""One user's updates are handled concurrently (python-telegram-bot's concurrent_updates): an erasure that
lands in the middle of another update of the same user must not break it.

Found by bench/fuzz.py: a consent press still being recorded while the same user's "forget: yes" press
ran erased the user row between `touch_user` and the consent insert (FOREIGN KEY constraint failed, the
user got "something went wrong").
"""

from __future__ import annotations

import asyncio
from pathlib import Path

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
