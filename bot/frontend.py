"""What every front-end (Telegram, Discord, the console) is to the app: something to start and stop, with
the `Messenger` the conversation answers through.

A front-end only translates: platform updates become `bot.events` handed to `Conversation.dispatch` (the
one safe entry point), and the Messenger turns replies into platform calls. Rules live in the conversation.
"""

from __future__ import annotations

from typing import Protocol

from bot.events import Messenger


class Frontend(Protocol):
    messenger: Messenger

    @property
    def connected(self) -> bool:
        """True while updates can arrive (`/healthz` is 503 otherwise)."""

    async def start(self) -> None:
        """Connect and start receiving updates; raise with a one-line reason when that is impossible."""

    async def stop(self) -> None:
        """Stop receiving updates and release the connection."""
