"""The outbox records each platform-accepted part of a delivery at once (Engine.part_sent), so a restart
resumes after the last acknowledged send instead of repeating the whole delivery."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.facade import Engine
from tests.tiny_settings import tiny_settings

CHAT = {"chat_id": "5", "user_id": "5"}


@pytest.fixture
async def engine(data_dir: Path) -> AsyncIterator[Engine]:
    engine = await Engine.open(tiny_settings(data_dir))
    yield engine
    await engine.close()


async def finished_generation(engine: Engine) -> tuple[str, str]:
    user = engine.pseudonym("telegram", 5)
    await engine.touch_user(user, "telegram", CHAT)
    job_id = await engine.queue.enqueue(user, "generate", {"preset": "x"})
    job = await engine.queue.claim("w")
    assert await engine.record_portraits(job, "x", [b"one", b"two"], "adapter0")
    return user, job_id


async def test_a_recorded_part_is_not_pending_again_after_a_restart(engine: Engine, data_dir: Path) -> None:
    user, job_id = await finished_generation(engine)
    [delivery] = await engine.pending_deliveries("telegram")
    assert delivery.parts_sent == 0
    await engine.part_sent(delivery, 0, ["101", "102"], "telegram")  # the media group was accepted
    await engine.close()

    reopened = await Engine.open(tiny_settings(data_dir))  # the bot was killed and restarts
    try:
        [again] = await reopened.pending_deliveries("telegram")
        assert again.id == delivery.id and again.parts_sent == 1
        assert await reopened.messages(user) == ["101", "102"]  # deletable with /forget
        await reopened.part_sent(again, 0, ["101", "102"], "telegram")  # recorded twice: no-op
        assert await reopened.messages(user) == ["101", "102"]
        await reopened.part_sent(again, 1, ["103"], "telegram")  # the "another style" button
        await reopened.delivered(again, [], "telegram")
        assert await reopened.pending_deliveries("telegram") == []
        assert sorted(await reopened.messages(user)) == ["101", "102", "103"]
        assert await reopened.tables.outputs.count(user) == 0  # delivered portraits are gone
    finally:
        await reopened.close()
    assert job_id


async def test_part_sent_after_forget_records_nothing(engine: Engine) -> None:
    user, _ = await finished_generation(engine)
    [delivery] = await engine.pending_deliveries("telegram")
    await engine.forget(user)
    await engine.part_sent(delivery, 0, ["101"], "telegram")
    assert await engine.messages(user) == []
