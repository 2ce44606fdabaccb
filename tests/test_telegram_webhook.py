"""Telegram by webhook: the real python-telegram-bot webhook server on 127.0.0.1, the fake Bot API for
everything the bot sends. A request without the right secret header gets 403 and is not processed; the
bot never polls."""

from __future__ import annotations

import asyncio
import socket
import time

import aiohttp
import pytest

from bot.app import App
from engine.settings import SettingsError
from tests.fake_telegram import FakeTelegram
from tests.tiny_settings import tiny_settings

SECRET = "a-webhook-secret-of-32-characters"
HOOK = "https://bot.example.org/telegram/hook-7f3a"
USER = 5001


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_update(update_id: int) -> dict:
    chat = {"id": USER, "type": "private", "first_name": "Webhook"}
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": int(time.time()),
            "chat": chat,
            "from": {"id": USER, "is_bot": False, "first_name": "Webhook"},
            "text": "/start",
            "entities": [{"type": "bot_command", "offset": 0, "length": 6}],
        },
    }


async def test_updates_arrive_by_webhook_only_with_the_secret(tmp_path) -> None:
    fake = FakeTelegram()
    await fake.start()
    port = free_port()
    settings = tiny_settings(
        tmp_path / "data",
        LIKENESS_TELEGRAM_TOKEN=fake.token,
        LIKENESS_TELEGRAM_API_URL=fake.base_url,
        LIKENESS_TELEGRAM_WEBHOOK_URL=HOOK,
        LIKENESS_TELEGRAM_WEBHOOK_SECRET=SECRET,
        LIKENESS_TELEGRAM_WEBHOOK_LISTEN=f"127.0.0.1:{port}",
        LIKENESS_ENGINE_EMBEDDED_WORKER="false",
    )
    app = await App.create(settings)
    await app.start()
    try:
        fake.user(USER)
        assert fake.webhook == {"url": HOOK, "secret_token": SECRET}  # registered with its secret
        url = f"http://127.0.0.1:{port}/telegram/hook-7f3a"
        async with aiohttp.ClientSession() as http:
            for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "wrong-secret-wrong-secret"}):
                async with http.post(url, json=start_update(1), headers=headers) as response:
                    assert response.status == 403
            await asyncio.sleep(1.0)
            assert fake.messages(USER) == []  # refused requests were not processed

            async with http.post(
                url, json=start_update(2), headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
            ) as response:
                assert response.status == 200
        consent = await fake.wait_for_message(USER, "Do you agree?")
        assert consent is not None
        assert fake.calls_to("getUpdates") == []  # never polls in webhook mode
    finally:
        await app.stop()
        await fake.stop()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LIKENESS_TELEGRAM_WEBHOOK_URL": "http://bot.example.org/hook"}, "LIKENESS_TELEGRAM_WEBHOOK_URL"),
        ({"LIKENESS_TELEGRAM_WEBHOOK_URL": HOOK}, "LIKENESS_TELEGRAM_WEBHOOK_SECRET"),
        (
            {"LIKENESS_TELEGRAM_WEBHOOK_URL": HOOK, "LIKENESS_TELEGRAM_WEBHOOK_SECRET": "short"},
            "LIKENESS_TELEGRAM_WEBHOOK_SECRET",
        ),
        (
            {
                "LIKENESS_TELEGRAM_WEBHOOK_URL": HOOK,
                "LIKENESS_TELEGRAM_WEBHOOK_SECRET": SECRET,
                "LIKENESS_TELEGRAM_WEBHOOK_LISTEN": "8443",
            },
            "LIKENESS_TELEGRAM_WEBHOOK_LISTEN",
        ),
    ],
)
async def test_bad_webhook_settings_stop_the_start_naming_the_setting(env, named, tmp_path) -> None:
    settings = tiny_settings(tmp_path / "data", LIKENESS_TELEGRAM_TOKEN="123:abc", **env)
    with pytest.raises(SettingsError, match=named):
        await App.create(settings, with_worker=False)
