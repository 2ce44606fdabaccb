"""Telegram adapter: python-telegram-bot v22 updates → neutral events, neutral replies → Bot API calls.

Long polling against `LIKENESS_TELEGRAM_API_URL` (`<url>/bot<token>/<method>`, files at
`<url>/file/bot<token>/<path>`). Telegram's flood limits are kept by `bot.telegram_limits.FloodLimiter`;
sends also retry on network errors and 5xx answers, so a reply is not lost to a hiccup. The `[telegram]`
settings are read here (`TelegramSettings`); `bot.platforms` lists this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from telegram import (
    BotCommand,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaDocument,
    InputMediaPhoto,
    Message,
    Update,
)
from telegram.error import (
    BadRequest,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

from bot.events import ButtonPress, Chat, Command, Event, IncomingPhoto, PhotoMessage, Reply, TextMessage
from bot.flow import COMMANDS, Conversation
from bot.telegram_limits import FloodLimiter
from bot.telegram_safety import HoldingApplication, TolerantBot, ignore_without_user
from engine.settings import SettingsError, Url

log = logging.getLogger(__name__)

ALBUM_WAIT_SECONDS = 1.5  # updates of one media group arrive separately: answer once, after the last
SEND_ATTEMPTS = 4
# Telegram lets bots delete messages only while they are younger than 48 hours; an hour's margin.
MESSAGE_LIFETIME = 47 * 3600.0
T = TypeVar("T")


@dataclass(frozen=True)
class TelegramSettings:
    """The `[telegram]` section (LIKENESS_TELEGRAM_*); config/default.toml documents each key."""

    token: str
    api_url: Url
    protect_content: bool
    webhook_url: str
    webhook_secret: str
    webhook_listen: str

    def __post_init__(self) -> None:
        if not self.webhook_url:
            return
        if not re.match(r"^https://[^/\s]+/\S*$", self.webhook_url):
            raise SettingsError(
                f"setting LIKENESS_TELEGRAM_WEBHOOK_URL: expected the public https:// URL Telegram posts "
                f"updates to, got {self.webhook_url!r}"
            )
        if not re.fullmatch(r"[A-Za-z0-9_-]{16,256}", self.webhook_secret):
            raise SettingsError(
                "setting LIKENESS_TELEGRAM_WEBHOOK_SECRET: required with a webhook URL: 16 to 256 characters "
                "of A-Z, a-z, 0-9, _ and - (e.g. the output of `openssl rand -hex 32`)"
            )
        if not re.fullmatch(r"[^\s:]+:\d{1,5}", self.webhook_listen):
            raise SettingsError(
                f"setting LIKENESS_TELEGRAM_WEBHOOK_LISTEN: expected host:port, got {self.webhook_listen!r}"
            )

    @property
    def listen(self) -> tuple[str, int]:
        host, _, port = self.webhook_listen.rpartition(":")
        return host, int(port)


SETTINGS = TelegramSettings


def frontend(settings: TelegramSettings, conversation: Conversation) -> TelegramFrontend | None:
    """The Telegram front-end, or None when no token is set."""
    return TelegramFrontend(settings, conversation) if settings.token else None


async def with_retries(call: Callable[[], Awaitable[T]]) -> T:
    """Retry a Bot API call on flood control, time-outs and server errors (5xx), with backoff."""
    for attempt in range(1, SEND_ATTEMPTS + 1):
        try:
            return await call()
        except RetryAfter as error:
            if attempt == SEND_ATTEMPTS:
                raise
            retry = error.retry_after
            await asyncio.sleep(retry.total_seconds() if hasattr(retry, "total_seconds") else float(retry))
        except (TimedOut, NetworkError) as error:
            if attempt == SEND_ATTEMPTS or isinstance(error, BadRequest | Forbidden):
                raise
            await asyncio.sleep(0.5 * 2**attempt)
    raise AssertionError("unreachable")


def keyboard(reply: Reply) -> InlineKeyboardMarkup | None:
    if not reply.buttons:
        return None
    return InlineKeyboardMarkup(
        [
            [InlineKeyboardButton(button.label, callback_data=button.data) for button in row]
            for row in reply.buttons
        ]
    )


class TelegramMessenger:
    """The Messenger the conversation talks to, for Telegram."""

    platform = "telegram"
    message_lifetime = MESSAGE_LIFETIME

    def __init__(self, application: Application, protect_content: bool = False):
        self.app = application
        self.protect_content = protect_content  # LIKENESS_TELEGRAM_PROTECT_CONTENT, for portraits

    def protect(self, reply: Reply) -> bool:
        """Ask Telegram to prevent forwarding and saving: for portraits, when the operator wants it."""
        return reply.protect and self.protect_content

    @property
    def bot(self) -> Any:
        return self.app.bot

    def invite_link(self, code: str) -> str | None:
        """The deep link `https://t.me/<bot>?start=<code>` (it arrives as `/start <code>`)."""
        try:
            username = self.app.bot.username  # known once the front-end is initialised
        except RuntimeError:
            return None
        return f"https://t.me/{username}?start={code}"

    async def send(self, chat: Chat, reply: Reply, *, interaction: object | None = None) -> list[str]:
        chat_id = int(chat.chat_id)
        sent: list[Message] = []
        for name, data in reply.files:
            sent.append(
                await with_retries(
                    lambda n=name, d=data: self.bot.send_document(
                        chat_id, document=d, filename=n, protect_content=self.protect(reply)
                    )
                )
            )
        if reply.animation:  # inline, looping playback; caption and buttons on the same message
            name, clip = reply.animation
            sent.append(
                await with_retries(
                    lambda: self.bot.send_animation(
                        chat_id,
                        animation=clip,
                        filename=name,
                        caption=reply.text,
                        reply_markup=keyboard(reply),
                        protect_content=self.protect(reply),
                    )
                )
            )
        elif reply.images:
            names = reply.image_names or tuple(f"portrait-{n + 1}.png" for n in range(len(reply.images)))
            media_type = InputMediaDocument if reply.as_files else InputMediaPhoto
            media = [
                media_type(media=data, filename=name, caption=reply.text if index == 0 else None)
                for index, (data, name) in enumerate(zip(reply.images, names, strict=True))
            ]
            if len(media) == 1:
                send_one = self.bot.send_document if reply.as_files else self.bot.send_photo
                field = "document" if reply.as_files else "photo"
                sent.append(
                    await with_retries(
                        lambda: send_one(
                            chat_id,
                            **{field: reply.images[0]},
                            caption=reply.text,
                            protect_content=self.protect(reply),
                            **({"filename": names[0]} if reply.as_files else {}),
                        )
                    )
                )
            else:
                sent += await with_retries(
                    lambda: self.bot.send_media_group(
                        chat_id, media=media, protect_content=self.protect(reply)
                    )
                )
            if reply.buttons:  # the images arrived; a lost button message must not make them resend
                with contextlib.suppress(TelegramError):
                    sent.append(
                        await with_retries(
                            lambda: self.bot.send_message(chat_id, "⬆️", reply_markup=keyboard(reply))
                        )
                    )
        elif reply.text and not reply.files:
            sent.append(
                await with_retries(
                    lambda: self.bot.send_message(
                        chat_id,
                        reply.text,
                        reply_markup=keyboard(reply),
                        protect_content=self.protect(reply),
                    )
                )
            )
        elif reply.files and reply.text:
            sent.append(await with_retries(lambda: self.bot.send_message(chat_id, reply.text)))
        return [str(message.message_id) for message in sent]

    async def edit(self, chat: Chat, message_id: str, reply: Reply) -> None:
        try:
            await with_retries(
                lambda: self.bot.edit_message_text(
                    reply.text,
                    chat_id=int(chat.chat_id),
                    message_id=int(message_id),
                    reply_markup=keyboard(reply),
                )
            )
        except BadRequest as error:
            if "not modified" not in str(error).lower():
                raise

    async def delete(self, chat: Chat, message_id: str) -> bool:
        try:
            return bool(
                await with_retries(lambda: self.bot.delete_message(int(chat.chat_id), int(message_id)))
            )
        except (BadRequest, Forbidden):
            return False  # too old (48 h) or already gone

    async def acknowledge(self, event: Event, text: str = "") -> None:
        query = getattr(event, "interaction", None)
        if query is not None:
            with contextlib.suppress(BadRequest):  # query too old: the press still works
                await query.answer(text or None)

    def explain(self, error: Exception) -> str | None:
        return None  # a user who blocked the bot cannot be told anything


def to_chat(update: Update) -> Chat:
    """The chat of an update; in a private chat (whose id is its user's id) also whether its user acted."""
    chat, user = update.effective_chat, update.effective_user
    private = chat.type == "private"
    return Chat(
        "telegram",
        str(chat.id),
        str(user.id),
        private,
        by_chat_user=not private or chat.id == user.id,
        language=user.language_code or "",
    )


def incoming(message: Message) -> IncomingPhoto | None:
    """The photo or image file in a message, not yet downloaded."""
    if message.photo:
        item, as_file = message.photo[-1], False
    elif message.document:
        item, as_file = message.document, True
    else:
        return None

    async def download() -> bytes:
        file = await with_retries(lambda: item.get_file())
        return bytes(await file.download_as_bytearray())

    return IncomingPhoto(size=item.file_size, download=download, as_file=as_file)


class TelegramFrontend:
    """Builds the Application, registers the handlers in one place, and runs long polling."""

    def __init__(self, settings: TelegramSettings, conversation: Conversation):
        self.settings = settings
        api = settings.api_url.rstrip("/")
        bot = TolerantBot(
            settings.token,
            base_url=f"{api}/bot",
            base_file_url=f"{api}/file/bot",
            rate_limiter=FloodLimiter(),
        )
        self.app = (
            ApplicationBuilder()
            .bot(bot)
            .application_class(HoldingApplication)
            .concurrent_updates(True)
            .build()
        )
        self.bot = bot
        self.conversation = conversation
        self.dispatch = conversation.dispatch
        self.messenger = TelegramMessenger(self.app, settings.protect_content)
        self._albums: dict[str, list[IncomingPhoto]] = {}
        self._album_updates: dict[str, list[int]] = {}
        self._album_tasks: dict[str, asyncio.Task] = {}
        self.app.add_handler(TypeHandler(object, ignore_without_user), group=-1)
        self.app.add_handler(MessageHandler(filters.COMMAND, self.on_command))
        self.app.add_handler(CallbackQueryHandler(self.on_button))
        self.app.add_handler(MessageHandler(filters.PHOTO | filters.Document.ALL, self.on_photo))
        self.app.add_handler(MessageHandler(filters.TEXT, self.on_text))
        self.app.add_error_handler(self.on_error)

    async def on_command(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """/start, /help, ...: the name without the slash and the @botname suffix."""
        text = update.effective_message.text or ""
        name, _, args = text[1:].partition(" ")
        await self.dispatch(Command(to_chat(update), name.split("@")[0].lower(), args.strip()))

    async def on_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        message_id = str(query.message.message_id) if query.message else None
        await self.dispatch(ButtonPress(to_chat(update), query.data or "", message_id, interaction=query))

    async def on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await self.dispatch(TextMessage(to_chat(update), update.effective_message.text or ""))

    async def on_photo(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """A photo or a file; photos of one album are collected and answered once."""
        message = update.effective_message
        photo = incoming(message)
        if photo is None:
            return
        chat = to_chat(update)
        group = message.media_group_id
        if not group or not chat.private:
            await self.dispatch(PhotoMessage(chat, (photo,)))
            return
        key = f"{chat.chat_id}:{group}"
        self._albums.setdefault(key, []).append(photo)
        self.bot.adopt(update.update_id)  # acknowledged only once the album is answered
        self._album_updates.setdefault(key, []).append(update.update_id)
        if key in self._album_tasks:
            self._album_tasks[key].cancel()
        self._album_tasks[key] = asyncio.create_task(self._flush_album(key, chat))

    async def _flush_album(self, key: str, chat: Chat) -> None:
        await asyncio.sleep(ALBUM_WAIT_SECONDS)
        photos = self._albums.pop(key, [])
        update_ids = self._album_updates.pop(key, [])
        self._album_tasks.pop(key, None)
        try:
            if photos:
                await self.dispatch(PhotoMessage(chat, tuple(photos)))
        finally:
            for update_id in update_ids:
                self.bot.release(update_id)

    async def set_commands(self) -> None:
        """The command menu in every language: English by default, each other language for its users."""
        texts = self.conversation.t
        for code, language in texts.languages.items():
            commands = [BotCommand(name, language.command(name)) for name in COMMANDS]
            await self.app.bot.set_my_commands(commands, language_code=None if code == "en" else code)

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("telegram error: %s", type(context.error).__name__)

    async def start(self) -> None:
        try:
            await self.app.initialize()
        except InvalidToken:
            raise RuntimeError("the bot token was rejected; check LIKENESS_TELEGRAM_TOKEN") from None
        except NetworkError as error:
            raise RuntimeError(
                f"cannot reach the Bot API ({error}); check LIKENESS_TELEGRAM_API_URL"
            ) from None
        await self.set_commands()
        await self.app.start()
        if self.settings.webhook_url:
            await self._start_webhook()
        else:
            await self.app.updater.start_polling(poll_interval=0.0, timeout=10, drop_pending_updates=False)
            log.info("telegram front-end polling")

    async def _start_webhook(self) -> None:
        """Serve the webhook URL's path on the listen address (behind the operator's HTTPS proxy or load
        balancer) and register the URL with its secret: a request without the secret header gets 403."""
        host, port = self.settings.listen
        await self.app.updater.start_webhook(
            listen=host,
            port=port,
            url_path=urlsplit(self.settings.webhook_url).path.lstrip("/"),
            webhook_url=self.settings.webhook_url,
            secret_token=self.settings.webhook_secret,
            drop_pending_updates=False,
        )
        log.info("telegram front-end receiving updates by webhook on %s:%d", host, port)

    @property
    def connected(self) -> bool:
        """True while updates are being received (for /healthz)."""
        return bool(self.app.running and self.app.updater and self.app.updater.running)

    async def stop(self) -> None:
        for task in self._album_tasks.values():
            task.cancel()
        if self.app.updater.running:
            await self.app.updater.stop()
        if self.app.running:
            await self.app.stop()
        await self.app.shutdown()
