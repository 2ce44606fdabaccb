"""Shared pieces for the retention and /forget tests: settings, a recording messenger, a driven user.

`Harness` wires the real App (engine, conversation, delete-message callback) to a `Recorder` messenger and
drives one or more users through the conversation; the worker runs jobs one at a time with `run_once()`
on a tiny model that is built once per test session (`tiny_models()`).
"""

from __future__ import annotations

import asyncio
import functools
import io
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from bot.app import App
from bot.delivery import deliver_pending
from bot.events import Button, ButtonPress, Chat, Command, Event, IncomingPhoto, PhotoMessage, Reply
from bot.telegram_bot import TelegramMessenger
from engine.clock import Clock, FakeClock
from engine.db import USER_TABLES
from engine.facade import Engine
from engine.settings import Settings
from tests import faces_data as fd
from tests.tiny_settings import tiny_settings

HOUR = 3600.0

RETENTION_ENV = {  # the watermark is not what these tests are about, and it costs time
    "LIKENESS_ENGINE_POLL_INTERVAL": "0.1",
    "LIKENESS_PROVENANCE_INVISIBLE_WATERMARK": "false",
}


# Where rows and keys go: set per test by the `on_every_backend` fixture (empty: SQLite in the data dir).
BACKEND_ENV: dict[str, str] = {}


def make_settings(data_dir: Path, **env: str) -> Settings:
    return tiny_settings(data_dir, **{**RETENTION_ENV, **BACKEND_ENV, **env})


@functools.cache
def tiny_models() -> Any:
    """One tiny pipeline for the whole test session (the worker's `Models`, built from settings only)."""
    from engine.worker import Models

    settings = make_settings(Path("/nonexistent-unused"))
    return Models(SimpleNamespace(settings=settings))


same_person_photos = fd.same_person_photos


@dataclass
class Sent:
    chat: Chat
    reply: Reply
    ids: list[str]


@dataclass
class Recorder:
    """A Messenger (and front-end) that keeps everything in memory and records every call."""

    platform: str = "telegram"
    message_lifetime: float = math.inf
    sent: list[Sent] = field(default_factory=list)
    edits: list[tuple[str, str]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    acks: list[str] = field(default_factory=list)
    on_start: Any = None
    conversation: Any = None
    _next: int = 0

    @property
    def messenger(self) -> Recorder:
        return self

    def explain(self, error: Exception) -> str | None:
        return None

    async def send(self, chat: Chat, reply: Reply, *, interaction: object | None = None) -> list[str]:
        ids = []
        for _ in range(max(1, len(reply.images))):  # like a media group: one message per image
            self._next += 1
            ids.append(f"msg{self._next}")
        self.sent.append(Sent(chat, reply, ids))
        return ids

    async def edit(self, chat: Chat, message_id: str, reply: Reply) -> None:
        self.edits.append((message_id, reply.text))

    async def delete(self, chat: Chat, message_id: str) -> bool:
        self.deleted.append(message_id)
        return True

    async def acknowledge(self, event: Event, text: str = "") -> None:
        self.acks.append(text)

    async def start(self) -> None:
        if self.on_start:
            await self.on_start()

    async def stop(self) -> None:
        pass

    # -- reading what was sent -------------------------------------------------------------------------
    @property
    def last(self) -> Reply:
        return self.sent[-1].reply

    def buttons(self) -> list[Button]:
        return [button for sent in self.sent for row in sent.reply.buttons for button in row]

    def texts(self) -> list[str]:
        return [sent.reply.text for sent in self.sent]


@dataclass
class User:
    chat: Chat
    id: str  # pseudonym
    platform_id: str
    downloads: list[int] = field(default_factory=list)  # indexes of photos actually downloaded


class Harness:
    """The real App on a data dir, a Recorder messenger, a FakeClock (or a real one), a worker."""

    def __init__(self, app: App, recorder: Recorder, clock: Clock, worker: Any):
        self.app, self.recorder, self.clock, self.worker = app, recorder, clock, worker

    @classmethod
    async def open(
        cls, settings: Settings, clock: Clock | None = None, platform: str = "telegram"
    ) -> Harness:
        from engine.worker import Worker

        clock = clock if clock is not None else FakeClock()
        lifetime = TelegramMessenger.message_lifetime if platform == "telegram" else math.inf
        recorder = Recorder(platform, message_lifetime=lifetime)
        app = await App.create(settings, clock=clock, console=recorder, with_worker=False)
        return cls(app, recorder, clock, Worker(app.engine, models=tiny_models()))

    async def close(self) -> None:
        await self.app.stop()

    @property
    def engine(self) -> Engine:
        return self.app.engine

    @property
    def data_dir(self) -> Path:
        return self.app.settings.data_dir

    def user(self, platform_id: str) -> User:
        platform = self.recorder.platform
        chat = Chat(platform, f"chat-{platform_id}", platform_id, True)
        return User(chat, self.engine.pseudonym(platform, platform_id), platform_id)

    # -- talking -----------------------------------------------------------------------------------------
    async def command(self, user: User, name: str) -> Reply:
        await self.app.conversation.handle(Command(user.chat, name))
        return self.recorder.last

    async def press(self, user: User, data: str) -> Reply:
        await self.app.conversation.handle(ButtonPress(user.chat, data))
        return self.recorder.last

    async def send_photos(self, user: User, photos: tuple[bytes, ...]) -> Reply:
        def incoming(index: int, data: bytes) -> IncomingPhoto:
            async def download() -> bytes:
                user.downloads.append(index)
                return data

            return IncomingPhoto(size=len(data), download=download)

        event = PhotoMessage(user.chat, tuple(incoming(i, data) for i, data in enumerate(photos)))
        await self.app.conversation.handle(event)
        return self.recorder.last

    async def consent(self, user: User) -> None:
        await self.command(user, "start")
        await self.press(user, "consent:yes")

    async def onboard(self, user: User, photos: tuple[bytes, ...] | None = None) -> None:
        """Consent and upload the photos (three of one person by default)."""
        await self.consent(user)
        await self.send_photos(user, same_person_photos() if photos is None else photos)

    async def run_jobs(self) -> int:
        ran = 0
        while await self.worker.run_once():
            ran += 1
        return ran

    async def train(self, user: User) -> None:
        await self.press(user, "train")
        await self.run_jobs()

    async def generate(self, user: User, style: str | None = None) -> None:
        style = style or next(iter(self.engine.presets))
        await self.press(user, f"style:{style}")
        await self.run_jobs()

    async def deliver(self) -> int:
        return await deliver_pending(self.app.conversation, self.recorder.platform)

    async def full_flow(self, user: User) -> None:
        await self.onboard(user)
        await self.train(user)
        await self.generate(user)
        await self.deliver()

    # -- looking at what is stored -----------------------------------------------------------------------
    async def rows(self, user: User) -> dict[str, int]:
        counts = {}
        for table in USER_TABLES:
            column = "id" if table == "users" else "user_id"
            row = await self.engine.store.fetchone(
                f"SELECT COUNT(*) AS n FROM {table} WHERE {column}=?", (user.id,)
            )
            counts[table] = row["n"]
        return counts

    async def count(self, table: str, user: User, where: str = "1=1") -> int:
        row = await self.engine.store.fetchone(
            f"SELECT COUNT(*) AS n FROM {table} WHERE user_id=? AND {where}", (user.id,)
        )
        return row["n"]

    async def deadline(self, user: User, kind: str) -> float | None:
        row = await self.engine.store.fetchone(
            "SELECT MIN(due_at) AS due FROM deadlines WHERE user_id=? AND kind=?", (user.id, kind)
        )
        return row["due"]

    def blob_files(self, user: User) -> set[str]:
        folder = self.data_dir / "blobs" / user.id
        return {p.stem for p in folder.iterdir()} if folder.is_dir() else set()


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def files_under(folder: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


async def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll an async predicate until it is true (fails the test after `timeout`)."""

    async def poll() -> None:
        while not await predicate():
            await asyncio.sleep(interval)

    await asyncio.wait_for(poll(), timeout)
