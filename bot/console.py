"""A terminal front-end for the same conversation: try the whole product without a platform account.

Type commands as in a chat (`/start`, `/train`, ...), `photo PATH [PATH ...]` to send photos, a button's
number to press it, `quit` to leave. Portraits and files are written to the folder given on the command
line.
"""

from __future__ import annotations

import asyncio
import math
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from bot.events import (
    Button,
    ButtonPress,
    Chat,
    Command,
    Event,
    IncomingPhoto,
    PhotoMessage,
    Reply,
    TextMessage,
)

if TYPE_CHECKING:
    from bot.flow import Conversation

CHAT = Chat("console", "console", "console-user", True)


def terminal_language(environ: dict[str, str] | None = None) -> str:
    """The terminal user's language, as the C library reads it: LC_ALL, then LC_MESSAGES, then LANG."""
    environ = os.environ if environ is None else environ
    return next((environ[name] for name in ("LC_ALL", "LC_MESSAGES", "LANG") if environ.get(name)), "")


class ConsoleFrontend:
    """Messenger and front-end in one: prints replies, numbers buttons, saves images to `out_dir`."""

    platform = "console"
    message_lifetime = math.inf
    connected = True  # the terminal is always there

    def __init__(
        self, out_dir: Path, write: Callable[[str], None] | None = None, language: str | None = None
    ):
        self.out_dir = out_dir
        self.chat = replace(CHAT, language=terminal_language() if language is None else language)
        self.write = write or (lambda text: print(text, flush=True))
        self.buttons: list[Button] = []
        self.next_id = 0
        self.on_quit: Callable[[], None] = lambda: None
        self.saved: list[Path] = []  # every file written for the user, removed again by /forget
        self.conversation: Conversation | None = None  # given by the App
        self._reader: asyncio.Task | None = None

    @property
    def messenger(self) -> ConsoleFrontend:
        return self

    # -- Messenger -------------------------------------------------------------------------------------
    async def send(self, chat: Chat, reply: Reply, *, interaction: object | None = None) -> list[str]:
        self.next_id += 1
        lines = [f"\n🤖 {reply.text}"] if reply.text else []
        self.out_dir.mkdir(parents=True, exist_ok=True)
        names = reply.image_names or tuple(
            f"portrait-{self.next_id}-{n + 1}.png" for n in range(len(reply.images))
        )
        clip = [reply.animation] if reply.animation else []
        for name, data in [*zip(names, reply.images, strict=True), *reply.files, *clip]:
            path = self.out_dir / name
            path.write_bytes(data)
            self.saved.append(path)
            lines.append(f"   📎 saved {path}")
        if reply.buttons:
            self.buttons = [button for row in reply.buttons for button in row]
            lines += [f"   [{n}] {button.label}" for n, button in enumerate(self.buttons, start=1)]
        self.write("\n".join(lines))
        return [str(self.next_id)]

    async def edit(self, chat: Chat, message_id: str, reply: Reply) -> None:
        self.write(f"   ⏳ {reply.text}")

    async def delete(self, chat: Chat, message_id: str) -> bool:
        return True

    async def delete_saved_files(self, chat: Chat) -> int:
        """/forget: remove every portrait and /mydata file this console wrote; returns how many."""
        removed = 0
        for path in self.saved:
            if path.is_file():
                path.unlink()
                removed += 1
        self.saved.clear()
        return removed

    async def acknowledge(self, event: Event, text: str = "") -> None:
        if text:
            self.write(f"   ({text})")

    def explain(self, error: Exception) -> str | None:
        return None

    # -- input -----------------------------------------------------------------------------------------
    def parse(self, line: str) -> Event | None:
        """One line typed by the user -> an event (None: nothing to do)."""
        line = line.strip()
        if not line:
            return None
        if line.startswith("/"):
            name, _, args = line[1:].partition(" ")
            return Command(self.chat, name.lower(), args.strip())
        if line.isdigit() and 1 <= int(line) <= len(self.buttons):
            return ButtonPress(self.chat, self.buttons[int(line) - 1].data)
        if line.startswith("photo "):
            photos = []
            for name in shlex.split(line[6:]):
                path = Path(name).expanduser()
                if not path.is_file():
                    self.write(f"   no such file: {name}")
                    continue
                photos.append(
                    IncomingPhoto(
                        size=path.stat().st_size,
                        download=lambda p=path: asyncio.to_thread(p.read_bytes),
                        name=path.name,
                    )
                )
            return PhotoMessage(self.chat, tuple(photos)) if photos else None
        return TextMessage(self.chat, line)

    async def _read_loop(self) -> None:
        self.write("Likeness console. Type /start to begin, `photo PATH ...` to send photos, quit to leave.")
        while True:
            line = await asyncio.to_thread(self._read_line)
            if not line or line.strip() in {"quit", "exit"}:
                self.on_quit()
                return
            try:
                event = self.parse(line)
            except (OSError, ValueError) as error:  # an unreadable path, unbalanced quotes
                self.write(f"   cannot read that line ({type(error).__name__})")
                continue
            if event is not None and self.conversation is not None:
                await self.conversation.dispatch(event)

    @staticmethod
    def _read_line() -> str:
        """One line from stdin, after a `> ` prompt when a person types it (not when input is piped)."""
        if sys.stdin.isatty():
            sys.stdout.write("> ")
            sys.stdout.flush()
        return sys.stdin.readline()

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_loop())

    async def stop(self) -> None:
        if self._reader:
            self._reader.cancel()
