"""Platform faults against the running bot (real PTB over HTTP, tests/fake_faults.py): 429 with retry_after,
5xx, a reset connection, and a Bot API that is down for a while (a short injected window keeps the test
fast). Every user is answered exactly once and the bot recovers by itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import App
from tests.fake_faults import FaultyTelegram
from tests.tiny_settings import tiny_settings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def running(data_dir: Path) -> AsyncIterator[tuple[FaultyTelegram, App]]:
    async with FaultyTelegram() as fake:
        settings = tiny_settings(
            data_dir, LIKENESS_TELEGRAM_TOKEN=fake.token, LIKENESS_TELEGRAM_API_URL=fake.base_url
        )
        app = await App.create(settings, with_worker=False)
        await app.start()
        try:
            yield fake, app
        finally:
            await app.stop()


def help_answers(fake: FaultyTelegram, chat_id: int) -> int:
    return sum(1 for m in fake.messages(chat_id) if "/help" in (m.text or "") or "Commands" in (m.text or ""))


@pytest.mark.parametrize(
    ("kind", "options"),
    [("429", {"retry_after": 1}), ("5xx", {"status": 502}), ("5xx", {"status": 500}),
     ("reset", {"after_effect": False})],
)  # fmt: skip
async def test_a_failed_send_is_retried_and_arrives_once(
    running: tuple[FaultyTelegram, App], kind: str, options: dict
) -> None:
    fake, _ = running
    user = fake.user(61)
    fake.inject("sendMessage", kind, times=2, **options)
    await user.send_text("/help")
    await fake.wait_for(lambda f: help_answers(f, 61) >= 1, timeout=30)
    assert [k for _, k in fake.injected] == [kind, kind]
    assert help_answers(fake, 61) == 1


async def test_a_bot_api_down_for_a_while_loses_nothing_and_recovers(
    running: tuple[FaultyTelegram, App],
) -> None:
    fake, app = running
    users = [fake.user(70 + n) for n in range(3)]
    fake.down(4.0)  # every call, long polling included, answers 502
    for user in users:
        await user.send_text("/help")
    await fake.wait_for(lambda f: all(help_answers(f, u.id) for u in users), timeout=60)
    assert any(kind == "down" for _, kind in fake.injected)
    assert [help_answers(fake, u.id) for u in users] == [1, 1, 1]
    assert not app.stop_event.is_set()
    later = fake.user(80)
    await later.send_text("/help")  # and it keeps serving
    await fake.wait_for(lambda f: help_answers(f, 80) == 1, timeout=30)
