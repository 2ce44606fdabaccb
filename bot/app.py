"""Runs everything in one process: the front-ends, the outbox and progress loops, the retention
scheduler and (by default) an embedded engine worker, all on one event loop sharing one `Engine`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from bot.delivery import run_deliveries
from bot.events import Chat
from bot.flow import Conversation, run_progress_updates
from bot.texts import Texts
from engine.facade import Engine
from engine.retention import RetentionScheduler
from engine.settings import Settings
from engine.store import Clock

log = logging.getLogger(__name__)


class NoFrontend(Exception):
    """No platform token is set."""


class StartupError(Exception):
    """A front-end or the model could not start; `str()` is one line for the operator."""


@dataclass
class App:
    settings: Settings
    engine: Engine
    conversation: Conversation
    frontends: list[Any] = field(default_factory=list)
    worker: Any = None
    retention: RetentionScheduler | None = None
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
        """`models`: an already loaded `engine.worker.Models` for the embedded worker (tests share one)."""
        engine = await Engine.open(settings, clock)
        conversation = Conversation(engine, Texts(settings))
        app = cls(settings, engine, conversation)
        if console is not None:
            app.frontends.append(console)
            conversation.add_messenger(console)
            console.conversation = conversation
        if settings.telegram.token:
            from bot.telegram_bot import TelegramFrontend

            app.frontends.append(TelegramFrontend(settings.telegram, conversation))
        if settings.discord.token:
            from bot.discord_bot import DiscordFrontend

            app.frontends.append(DiscordFrontend(settings.discord, conversation))
        if not app.frontends:
            await engine.close()
            raise NoFrontend(
                "no platform token is set: set LIKENESS_TELEGRAM_TOKEN and/or LIKENESS_DISCORD_TOKEN "
                "(or run `python -m bot --console` to try it in the terminal)"
            )
        if settings.engine.embedded_worker if with_worker is None else with_worker:
            from engine.worker import Worker

            app.worker = Worker(engine, models=models)
        return app

    async def delete_message(self, user_id: str, row_id: str) -> bool:
        """Retention callback: delete one delivered message from its chat."""
        row = await self.engine.store.fetchone(
            "SELECT m.message_id, u.platform FROM sent_messages m JOIN users u ON u.id = m.user_id WHERE m.id=?",
            (row_id,),
        )
        address = await self.engine.chat_of(user_id)
        if row is None or address is None or row["platform"] not in self.conversation.messengers:
            return False
        chat = Chat(row["platform"], address["chat_id"], address["user_id"], True)
        return await self.conversation.messengers[row["platform"]].delete(chat, row["message_id"])

    async def start(self) -> None:
        """Overdue deletions first, then the front-ends, the loops and the worker."""
        self.retention = RetentionScheduler(self.engine, self.delete_message)
        overdue = await self.retention.start()
        if overdue:
            log.info("deleted overdue data at start-up: %s", overdue)
        await self.engine.retry_deliveries_now()
        if self.worker is not None and self.worker.models is None:
            await self._load_model()
        for frontend in self.frontends:
            try:
                await frontend.start()
            except Exception as error:
                raise StartupError(
                    f"{type(frontend).__name__.removesuffix('Frontend').lower()}: {_one_line(error)}"
                ) from error
        for platform in self.conversation.messengers:
            self.tasks.append(
                asyncio.create_task(run_deliveries(self.conversation, platform, self.stop_event))
            )
            self.tasks.append(
                asyncio.create_task(run_progress_updates(self.conversation, platform, self.stop_event))
            )
        if self.worker is not None:
            self.tasks.append(asyncio.create_task(self._run_worker()))

    async def _load_model(self) -> None:
        """Load the model before taking updates, so a missing model fails the start with one line."""
        from engine.worker import Models

        try:
            self.worker.models = await asyncio.to_thread(Models, self.engine)
        except Exception as error:
            raise StartupError(f"engine: {_one_line(error)}") from error

    async def _run_worker(self) -> None:
        try:
            await self.worker.run()
        except Exception as error:
            log.error("the engine worker stopped: %s", str(error).splitlines()[0] if str(error) else error)
            self.stop_event.set()
            raise

    async def wait(self) -> None:
        await self.stop_event.wait()

    async def stop(self) -> None:
        self.stop_event.set()
        if self.worker is not None:
            self.worker.stop()
        for frontend in self.frontends:
            try:
                await frontend.stop()
            except Exception:
                log.exception("stopping a front-end failed")
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.retention:
            self.retention.stop()
        await self.engine.close()


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
