"""Telegram's flood limits, kept on the bot's side, so the Bot API never has to answer 429.

Telegram allows a bot about 30 messages a second overall, about one a second in a chat (a short burst is
tolerated) and 20 a minute in a group. The stock `AIORateLimiter` paces groups and the overall rate, but:

- it paces the overall rate at exactly 30/s, measured when a call leaves the limiter; calls reach the
  Bot API a variable time later (HTTP, a busy event loop), so bunched arrivals exceed 30 in a second and
  are refused (bench/load.py counted 429s for the stock limiter at full load, for an echo bot too).
  `FloodLimiter` paces at MESSAGES_PER_SECOND, with that margin;
- it does not pace private chats at all: a delivery (album, then the "another style" button) plus a
  progress message could exceed one a second in one chat. `FloodLimiter` paces each private chat's
  messages at CHAT_PER_SECOND with a burst of CHAT_BURST;
- once any call got a 429, every call waits for the retry time, callback-query answers included.
  Calls that carry no `chat_id` (answerCallbackQuery, getUpdates, getFile, ...) are not flood-limited
  by Telegram: `FloodLimiter` sends them at once, never behind queued messages.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from aiolimiter import AsyncLimiter
from telegram.ext import AIORateLimiter

MESSAGES_PER_SECOND = 25  # Telegram's ~30/s, less a margin for the time between limiter and Bot API
CHAT_BURST, CHAT_PER_SECOND = 3, 1.0  # per private chat
MAX_RETRIES = 3  # a 429 that still happens is retried after its retry_after
_PRUNE_ABOVE = 512  # idle (full) per-chat limiters are forgotten beyond this many


def is_message(endpoint: str) -> bool:
    """A call that puts or changes a message in a chat (what Telegram's per-chat limit counts)."""
    name = endpoint.lower()
    return (name.startswith(("send", "edit", "copymessage", "forwardmessage"))) and name != "sendchataction"


class FloodLimiter(AIORateLimiter):
    """`AIORateLimiter` with a margin, per-private-chat pacing, and no wait for unlimited calls."""

    def __init__(self) -> None:
        super().__init__(overall_max_rate=MESSAGES_PER_SECOND, max_retries=MAX_RETRIES)
        self._chats: dict[int, AsyncLimiter] = {}

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, Any]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> Any:
        if data.get("chat_id") is None:  # not flood-limited: never queued, never paused by a 429
            return await callback(*args, **kwargs)
        chat = self._private_chat(data["chat_id"]) if is_message(endpoint) else None
        if chat is None:
            return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)
        async with chat:
            return await super().process_request(callback, args, kwargs, endpoint, data, rate_limit_args)

    def _private_chat(self, chat_id: Any) -> AsyncLimiter | None:
        """The limiter of a private chat (a positive numeric id); groups are paced by the stock limiter."""
        try:
            chat_id = int(chat_id)
        except (TypeError, ValueError):
            return None
        if chat_id <= 0:
            return None
        if len(self._chats) > _PRUNE_ABOVE:
            for key, limiter in list(self._chats.items()):
                if key != chat_id and limiter.has_capacity(limiter.max_rate):
                    del self._chats[key]
        if chat_id not in self._chats:
            self._chats[chat_id] = AsyncLimiter(CHAT_BURST, CHAT_BURST / CHAT_PER_SECOND)
        return self._chats[chat_id]
