"""What keeps the Telegram adapter alive on hostile or odd updates, and fair under load.

- `TolerantBot`: python-telegram-bot fetches a batch of updates and parses it as a whole; one update it
  cannot parse (e.g. a poll from an older self-hosted Bot API whose options lack `voter_count`) makes the
  whole batch fail, and the library fetches the same batch again at once, forever. Here each update is
  parsed on its own first; one that fails is replaced by an empty update with the same id, so polling
  moves past it, nothing is dispatched for it, and it is counted (`skipped_updates`).
- Offsets are acknowledged only after handling: python-telegram-bot confirms a batch (the next
  getUpdates' `offset`) as soon as it is queued, so a crash loses every update fetched but not yet
  answered, and every album photo waiting in the collection buffer. `TolerantBot` holds each fetched
  update until `done(update_id)`; the offset it sends never passes a held update, so after a crash
  Telegram delivers those again (at-least-once). Updates fetched again while still held are not
  dispatched twice; while anything is held, polls return at once, so they are paced (HELD_POLL_PAUSE).
  An update handled for longer than HOLD_SECONDS, or a full batch of held updates, no longer holds the
  offset back, so a slow handler can never starve the others. `HoldingApplication` calls `done` when the handlers finish, unless a handler
  `adopt`ed the update (the album buffer does, and releases it after the album is answered).
- `ignore_without_user`: a handler for group -1 that stops updates with no user or no chat (channel
  posts, anonymous group admins, inline-mode callbacks, poll updates, an unparseable update's stand-in)
  before any conversation handler sees them; counted in `ignored_updates`.

Rate limits are `bot.telegram_limits.FloodLimiter`'s: callback-query answers and downloads never wait
behind queued messages (bench/load.py measures it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from telegram import Update
from telegram.ext import Application, ApplicationHandlerStop, CallbackContext, ExtBot

log = logging.getLogger(__name__)

HELD_POLL_PAUSE = 0.2  # while updates are held, a poll returns them at once: pause between such polls
HOLD_SECONDS = 30.0  # an update still being handled after this long no longer holds the offset back


class Counters:
    """Process-wide counts for operators (numbers only)."""

    skipped_updates = 0
    ignored_updates = 0


class TolerantBot(ExtBot):
    """An ExtBot whose getUpdates never fails as a whole because of one unparseable update, and that
    acknowledges an update only once it was handled."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._held: dict[int, float] = {}  # update id -> when it was fetched
        self._adopted: set[int] = set()
        self._starved = False

    def done(self, update_id: int) -> None:
        """The update was handled: the next poll may acknowledge it (unless it was adopted)."""
        if update_id not in self._adopted:
            self._held.pop(update_id, None)

    def adopt(self, update_id: int) -> None:
        """A handler keeps the update beyond its return (e.g. an album photo); `release` ends it."""
        self._adopted.add(update_id)

    def release(self, update_id: int) -> None:
        self._adopted.discard(update_id)
        self._held.pop(update_id, None)

    @property
    def held(self) -> int:
        return len(self._held)

    async def _post(self, endpoint: str, data: Any = None, *args: Any, **kwargs: Any) -> Any:
        if endpoint != "getUpdates" or not isinstance(data, dict):
            return await super()._post(endpoint, data, *args, **kwargs)
        asked = data.get("offset") or 0
        recent = time.monotonic() - HOLD_SECONDS
        holding = [update_id for update_id, fetched in self._held.items() if fetched > recent]
        if holding and asked and not self._starved:
            data = {**data, "offset": min(asked, min(holding))}  # never confirm a held update
        self._starved = False
        result = await super()._post(endpoint, data, *args, **kwargs)
        if not isinstance(result, list):
            return result
        fresh = []
        for raw in result:
            update_id = raw.get("update_id") if isinstance(raw, dict) else None
            if isinstance(update_id, int) and (update_id < asked or update_id in self._held):
                continue  # fetched before and still being handled: not dispatched twice
            if isinstance(update_id, int):
                self._held[update_id] = time.monotonic()
            fresh.append(self._parseable_or_stub(raw))
        if result and not fresh:
            # Only held updates came back. A full batch of them would hide newer ones: the next poll
            # asks from where the library is, this once. Otherwise pause, so as not to spin.
            self._starved = len(result) >= (data.get("limit") or 100)
            await asyncio.sleep(0 if self._starved else HELD_POLL_PAUSE)
        return fresh

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


class HoldingApplication(Application):
    """Tells a `TolerantBot` when each update has been handled (see the module docstring)."""

    async def process_update(self, update: object) -> None:
        try:
            await super().process_update(update)
        finally:
            if isinstance(update, Update) and isinstance(self.bot, TolerantBot):
                self.bot.done(update.update_id)
