"""What keeps the Telegram adapter alive on hostile or odd updates, and fair under load.

- `TolerantBot`: python-telegram-bot fetches a batch of updates and parses it as a whole; one update it
  cannot parse (e.g. a poll from an older self-hosted Bot API whose options lack `voter_count`) makes the
  whole batch fail, and the library fetches the same batch again at once, forever. Here each update is
  parsed on its own first; one that fails is replaced by an empty update with the same id, so polling
  moves past it, nothing is dispatched for it, and it is counted (`skipped_updates`).
- `ignore_without_user`: a handler for group -1 that stops updates with no user or no chat (channel
  posts, anonymous group admins, inline-mode callbacks, poll updates, an unparseable update's stand-in)
  before any conversation handler sees them; counted in `ignored_updates`.

Rate limits stay with the stock AIORateLimiter: it throttles only calls that carry a `chat_id`, so
callback-query answers and downloads never wait behind queued messages (bench/load.py measures it).
"""

from __future__ import annotations

import logging
from typing import Any

from telegram import Update
from telegram.ext import ApplicationHandlerStop, CallbackContext, ExtBot

log = logging.getLogger(__name__)


class Counters:
    """Process-wide counts for operators (numbers only)."""

    skipped_updates = 0
    ignored_updates = 0


class TolerantBot(ExtBot):
    """An ExtBot whose getUpdates never fails as a whole because of one unparseable update."""

    async def _post(self, endpoint: str, data: Any = None, *args: Any, **kwargs: Any) -> Any:
        result = await super()._post(endpoint, data, *args, **kwargs)
        if endpoint != "getUpdates" or not isinstance(result, list):
            return result
        return [self._parseable_or_stub(raw) for raw in result]

    def _parseable_or_stub(self, raw: Any) -> Any:
        try:
            Update.de_json(raw, self)
            return raw
        except Exception as error:
            Counters.skipped_updates += 1
            update_id = raw.get("update_id") if isinstance(raw, dict) else None
            log.warning(
                "skipped an update that cannot be parsed (%s); %d skipped so far",
                type(error).__name__,
                Counters.skipped_updates,
            )
            return {"update_id": update_id if isinstance(update_id, int) else 0}


async def ignore_without_user(update: object, context: CallbackContext) -> None:
    """Stop an update that has no user or no chat to answer (see the module docstring)."""
    user = update.effective_user if isinstance(update, Update) else None
    if user is not None and not user.is_bot and update.effective_chat is not None:
        return
    Counters.ignored_updates += 1
    raise ApplicationHandlerStop
