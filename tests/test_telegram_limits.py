"""The bot keeps Telegram's flood limits itself (bot/telegram_limits.py): each private chat is paced at about
one message a second after a short burst, other chats are not held back by it, and callback-query answers
(not flood-limited by Telegram) never wait, not even during the pause that follows a 429.

The limiter is driven with recording callbacks in place of the HTTP call it wraps; bench/load.py measures
the same limiter end to end against a fake Bot API that enforces the limits (429s counted: 0)."""

from __future__ import annotations

import asyncio
import time

from telegram.error import RetryAfter

from bot.telegram_limits import CHAT_BURST, FloodLimiter, is_message


def recorder(log: list[tuple[str, float]], name: str, fail_first: int = 0):
    """A stand-in for the HTTP call: records when it ran; raises RetryAfter the first `fail_first` times."""
    failures = [fail_first]

    async def call() -> bool:
        log.append((name, time.monotonic()))
        if failures[0]:
            failures[0] -= 1
            raise RetryAfter(2)
        return True

    return call


async def send(limiter: FloodLimiter, call, endpoint: str, data: dict) -> object:
    return await limiter.process_request(call, (), {}, endpoint, data, None)


async def test_a_private_chat_gets_a_short_burst_then_one_message_a_second() -> None:
    limiter = FloodLimiter()
    log: list[tuple[str, float]] = []
    chat = [
        send(limiter, recorder(log, "chat"), "sendMessage", {"chat_id": 42}) for _ in range(CHAT_BURST + 2)
    ]
    other = send(limiter, recorder(log, "other"), "sendMessage", {"chat_id": 43})
    await asyncio.gather(*chat, other)
    times = [at for name, at in log if name == "chat"]
    start = times[0]
    assert all(at - start < 0.5 for at in times[:CHAT_BURST])  # the burst goes at once
    # then about one a second (a lower bound: a busy machine only makes the gaps longer)
    assert times[CHAT_BURST] - start >= 0.9
    assert times[CHAT_BURST + 1] - start >= 1.8
    other_at = next(at for name, at in log if name == "other")
    assert other_at < times[CHAT_BURST]  # another chat does not wait for this one


async def test_callback_answers_do_not_wait_for_the_pause_after_a_429() -> None:
    limiter = FloodLimiter()
    log: list[tuple[str, float]] = []
    message = asyncio.create_task(
        send(limiter, recorder(log, "sendMessage", fail_first=1), "sendMessage", {"chat_id": 42})
    )
    while not log:  # the message got its 429: the limiter now pauses flood-limited calls for 2 s
        await asyncio.sleep(0.01)
    await send(
        limiter, recorder(log, "answerCallbackQuery"), "answerCallbackQuery", {"callback_query_id": "1"}
    )
    await message
    assert [name for name, _ in log] == ["sendMessage", "answerCallbackQuery", "sendMessage"]


def test_what_counts_as_a_message() -> None:
    assert is_message("sendMessage") and is_message("sendMediaGroup") and is_message("editMessageText")
    assert is_message("copyMessage") and is_message("forwardMessage")
    assert not is_message("sendChatAction") and not is_message("deleteMessage")
    assert not is_message("answerCallbackQuery") and not is_message("getFile")
