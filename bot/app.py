"""Runs everything in one process: the front-ends, the outbox and progress loops, the retention
scheduler and (by default) an embedded engine worker, all on one event loop sharing one `Engine`.

The front-ends are one per configured platform (`bot.platforms`), plus the console when asked for.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from bot.delivery import run_deliveries
from bot.events import Chat
from bot.flow import Conversation, run_progress_updates
from bot.frontend import Frontend
from bot.platforms import build_frontends, token_names
from bot.texts import Texts
from engine.clock import Clock
from engine.errors import StartupError
from engine.facade import Engine
from engine.runtime import Background, one_line
from engine.settings import Settings

log = logging.getLogger(__name__)


class NoFrontend(Exception):
    """No platform token is set."""


@dataclass
class App:
    settings: Settings
    engine: Engine
    conversation: Conversation
    background: Background
    frontends: list[Frontend] = field(default_factory=list)
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)

    @classmethod
    async def create(
        cls,
        settings: Settings,
        clock: Clock | None = None,
        console: Any = None,
        with_worker: bool | None = None,
        models: Any = None,
    ) -> App:
        """`console`: a front-end built outside (the terminal, a test's recorder); it is given the
        conversation as `console.conversation`. `models`: already loaded models for the embedded worker
        (tests share one between apps)."""
        engine = await Engine.open(settings, clock)
        try:
            conversation = Conversation(engine, Texts(settings))
            frontends = build_frontends(settings, conversation)
        except BaseException:
            await engine.close()
            raise
        embedded = settings.engine.embedded_worker if with_worker is None else with_worker
        app = cls(settings, engine, conversation, Background(engine, with_worker=embedded, models=models))
        if console is not None:
            console.conversation = conversation
            frontends.insert(0, console)
        for frontend in frontends:
            app.add_frontend(frontend)
        if not app.frontends:
            await engine.close()
            raise NoFrontend(
                f"no platform token is set: set {' and/or '.join(token_names())} "
                "(or run `python -m bot --console` to try it in the terminal)"
            )
        return app

    def add_frontend(self, frontend: Frontend) -> None:
        """Run `frontend` too; the conversation answers its platform through its messenger."""
        self.frontends.append(frontend)
        self.conversation.add_messenger(frontend.messenger)

    @property
    def worker(self) -> Any:
        """The embedded worker, or None (its `models` can be shared with another app in tests)."""
        return self.background.worker

    async def delete_message(self, user_id: str, row_id: str) -> bool:
        """Retention callback: delete one delivered message from its chat."""
        target = await self.engine.message_target(user_id, row_id)
        if target is None or target.platform not in self.conversation.messengers:
            return False
        chat = Chat(target.platform, target.chat["chat_id"], target.chat["user_id"], True)
        return await self.conversation.messengers[target.platform].delete(chat, target.message_id)

    def connected(self) -> bool:
        """Every front-end is connected (for /healthz)."""
        return all(frontend.connected for frontend in self.frontends)

    async def start(self) -> None:
        """Overdue deletions first, then the front-ends, the loops and the worker."""
        public = any(platform != "console" for platform in self.conversation.messengers)
        if public and not self.settings.operator_contact:  # the console's only user is the operator
            log.warning(
                "LIKENESS_OPERATOR_CONTACT is not set: /privacy tells users that the operator has not set a "
                "contact address; set an email address or URL"
            )
        await self.background.start(self.delete_message, self.stop_event, self.connected)
        for frontend in self.frontends:
            try:
                await frontend.start()
            except Exception as error:
                raise StartupError(f"{frontend.messenger.platform}: {one_line(error)}") from error
        for platform in self.conversation.messengers:
            self.tasks.append(
                asyncio.create_task(run_deliveries(self.conversation, platform, self.stop_event))
            )
            self.tasks.append(
                asyncio.create_task(run_progress_updates(self.conversation, platform, self.stop_event))
            )
        self.background.run_worker()

    async def wait(self) -> None:
        await self.stop_event.wait()

    async def stop(self) -> None:
        self.stop_event.set()
        await self.background.stop()
        for frontend in self.frontends:
            try:
                await frontend.stop()
            except Exception:
                log.exception("stopping a front-end failed")
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.engine.close()
