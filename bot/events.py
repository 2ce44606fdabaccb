"""Platform-neutral events and replies: the only vocabulary between the adapters and the conversation.

An adapter (Telegram, Discord, console) turns a platform update into one of the events below and calls
`Conversation.handle(event)`. The conversation answers through the adapter's `Messenger`, which turns a
neutral `Reply` into platform calls. Nothing here knows about any platform.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Chat:
    """Where an event happened and where answers go.

    `chat_id` is the platform's id of the conversation (a Telegram chat id, a Discord channel id) and
    `user_id` the platform's id of the person who acted. Both are personal data: never log them (nor
    `language`).
    `by_chat_user` is False when, in a private chat, the person who acted is not that chat's user (a
    forged or replayed press on someone else's message); the conversation then changes nothing.
    """

    platform: str  # "telegram" | "discord" | "console"
    chat_id: str
    user_id: str
    private: bool
    by_chat_user: bool = True
    language: str = ""  # the language the platform reports for the user ('es', 'pt-BR'); '' if none


@dataclass(frozen=True)
class IncomingPhoto:
    """A photo or image file the user sent; not yet downloaded.

    `size` is what the platform reports (None when unknown), checked before `download` is called.
    `download` fetches the bytes; the conversation calls it only after consent, in a private chat.
    `name` is the file name where the user chose one (the console's paths); it is only shown back to them.
    """

    size: int | None
    download: Callable[[], Awaitable[bytes]]
    as_file: bool = False
    name: str | None = None


@dataclass(frozen=True)
class Command:
    chat: Chat
    name: str  # without the slash: "start", "forget", ...
    args: str = ""
    interaction: object | None = None  # platform handle for replies that must answer an interaction


@dataclass(frozen=True)
class ButtonPress:
    chat: Chat
    data: str  # untrusted: parsed and authorised by the conversation
    message_id: str | None = None
    interaction: object | None = None


@dataclass(frozen=True)
class TextMessage:
    chat: Chat
    text: str


@dataclass(frozen=True)
class PhotoMessage:
    """One or more photos; an album (Telegram media group, Discord message with attachments) is one event."""

    chat: Chat
    photos: tuple[IncomingPhoto, ...]


Event = Command | ButtonPress | TextMessage | PhotoMessage


@dataclass(frozen=True)
class Button:
    label: str
    data: str


@dataclass(frozen=True)
class Reply:
    """A message to show: text, optional rows of buttons, optional images (encoded bytes)."""

    text: str = ""
    buttons: tuple[tuple[Button, ...], ...] = ()
    images: tuple[bytes, ...] = ()
    image_names: tuple[str, ...] = ()
    as_files: bool = False  # send images as documents/attachments (keeps metadata)
    protect: bool = False  # delivered portraits: the platform's adapter protects them where it is set to
    ephemeral: bool = False  # only the user sees it (Discord interactions); ignored elsewhere
    files: tuple[tuple[str, bytes], ...] = field(default=())  # (file name, bytes) sent as documents
    # (file name, MP4): a clip played inline and looped, in one message with the text and buttons
    animation: tuple[str, bytes] | None = None


class Messenger(Protocol):
    """What the conversation needs from a platform adapter."""

    platform: str
    # How long the platform lets a bot delete its own messages (seconds; math.inf: no limit). Message
    # deadlines are capped to it, and the privacy policy shown on this platform says so.
    message_lifetime: float

    async def send(self, chat: Chat, reply: Reply, *, interaction: object | None = None) -> list[str]:
        """Send a reply; return the ids of every message sent (for later edits and deletion)."""

    async def edit(self, chat: Chat, message_id: str, reply: Reply) -> None:
        """Replace the text (and buttons) of a message sent earlier."""

    async def delete(self, chat: Chat, message_id: str) -> bool:
        """Delete a message the bot sent; False where the platform no longer allows it."""

    async def acknowledge(self, event: Event, text: str = "") -> None:
        """Answer a button press (Telegram's answerCallbackQuery, Discord's defer) with an optional toast."""

    def explain(self, error: Exception) -> str | None:
        """The user's text for an error the platform caused (e.g. closed DMs); None for anything else."""
