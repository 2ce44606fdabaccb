"""A fake Telegram Bot API server for end-to-end tests.

The bot under test runs a real python-telegram-bot ``Application`` that long-polls this server over real
HTTP on 127.0.0.1. Tests drive users (``fake.user(42).send_photo(...)``) and inspect what the bot did
(``fake.messages(42)``, ``fake.calls_to("getFile")``, ``fake.downloads``)::

    fake = FakeTelegram()
    await fake.start()
    app = (
        ApplicationBuilder()
        .token(fake.token)
        .base_url(fake.base_url + "/bot")
        .base_file_url(fake.base_url + "/file/bot")
        .build()
    )

The server speaks the wire format PTB really sends (form-encoded, multipart with file parts and JSON
encoded fields, or JSON bodies) and answers like Telegram does, including the errors a careless bot
meets in production: "message is not modified", "file is too big", "chat not found", 429 with
``retry_after``, bad HTML, over-long texts and callback data.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from aiohttp import web

DOWNLOAD_LIMIT = 20 * 1024 * 1024  # getFile refuses bigger files
PHOTO_UPLOAD_LIMIT = 10 * 1024 * 1024
UPLOAD_LIMIT = 50 * 1024 * 1024
MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_CALLBACK_DATA = 64
THUMBNAIL_SIDES = (90, 320, 800, 1280)  # Telegram's "s", "m", "x", "y" photo sizes

_JSON_FIELDS = {
    "allowed_updates",
    "caption_entities",
    "commands",
    "entities",
    "link_preview_options",
    "media",
    "message_ids",
    "reply_markup",
    "reply_parameters",
    "scope",
}
_INT_FIELDS = {"cache_time", "limit", "message_id", "message_thread_id", "offset", "timeout"}
_BOOL_FIELDS = {
    "allow_sending_without_reply",
    "disable_content_type_detection",
    "disable_notification",
    "drop_pending_updates",
    "has_spoiler",
    "protect_content",
    "show_alert",
}
_HTML_TAGS = {
    "a", "b", "blockquote", "code", "del", "em", "i", "ins", "pre", "s", "span", "strike", "strong",
    "tg-emoji", "tg-spoiler", "u",
}  # fmt: skip
_COMMAND_RE = re.compile(r"[a-z0-9_]{1,32}")


class ApiError(Exception):
    """An error answer: ``{"ok": false, "error_code": status, "description": ...}``."""

    def __init__(self, status: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.parameters = parameters

    def response(self) -> web.Response:
        body: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return web.json_response(body, status=self.status)


def _bad_request(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


@dataclass
class UploadedFile:
    """A file part of a multipart request."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class StoredFile:
    """A file the server knows: ``getFile`` describes it, ``/file/bot<token>/<file_path>`` serves it."""

    file_id: str
    file_unique_id: str
    file_path: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class SentMessage:
    """A message in a chat: sent by the bot (``from_bot``) or by a fake user."""

    chat: dict[str, Any]
    message_id: int
    from_user: dict[str, Any]
    from_bot: bool
    date: int = field(default_factory=lambda: int(time.time()))
    text: str | None = None  # as the user sees it: HTML markup removed
    raw_text: str | None = None  # as the bot sent it
    parse_mode: str | None = None
    entities: list[dict[str, Any]] | None = None
    caption: str | None = None
    reply_markup: dict[str, Any] | None = None
    photo: bytes | None = None  # bytes of the largest size
    photo_sizes: list[dict[str, Any]] | None = None
    document: bytes | None = None
    document_json: dict[str, Any] | None = None
    animation: bytes | None = None  # sendAnimation: the MP4 (or GIF) as uploaded
    animation_json: dict[str, Any] | None = None
    media_group_id: str | None = None
    protect_content: bool = False
    edit_date: int | None = None
    edits: list[dict[str, Any]] = field(default_factory=list)  # earlier {text, caption, reply_markup}

    @property
    def chat_id(self) -> int:
        return self.chat["id"]

    @property
    def buttons(self) -> list[dict[str, Any]]:
        """Inline keyboard buttons, row by row, flattened."""
        rows = (self.reply_markup or {}).get("inline_keyboard", [])
        return [button for row in rows for button in row]

    @property
    def button_texts(self) -> list[str]:
        return [button["text"] for button in self.buttons]

    @property
    def document_name(self) -> str | None:
        return (self.document_json or {}).get("file_name")

    @property
    def mime_type(self) -> str | None:
        return (self.document_json or {}).get("mime_type")

    def find_button(self, text_or_data: str) -> dict[str, Any]:
        """The button whose text or callback_data is ``text_or_data`` (``consent:yes`` also finds
        ``consent:yes-<policy version>``); LookupError if there is none."""
        for button in self.buttons:
            data = button.get("callback_data") or ""
            if text_or_data in (button.get("text"), data) or data.startswith(text_or_data + "-"):
                return button
        raise LookupError(f"no button {text_or_data!r} on message {self.message_id}: {self.button_texts}")

    def to_json(self) -> dict[str, Any]:
        """The Bot API ``Message`` object."""
        message: dict[str, Any] = {
            "message_id": self.message_id,
            "date": self.date,
            "chat": self.chat,
            "from": self.from_user,
        }
        optional = {
            "text": self.text,
            "entities": self.entities,
            "caption": self.caption,
            "photo": self.photo_sizes,
            "document": self.document_json,
            "animation": self.animation_json,
            "media_group_id": self.media_group_id,
            "edit_date": self.edit_date,
        }
        message.update({key: value for key, value in optional.items() if value is not None})
        if self.protect_content:
            message["has_protected_content"] = True
        if self.reply_markup and "inline_keyboard" in self.reply_markup:
            message["reply_markup"] = self.reply_markup
        return message


class _HtmlChecker(HTMLParser):
    """Validates Telegram's HTML subset and collects the visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.visible: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HTML_TAGS:
            raise _bad_request(f'can\'t parse entities: Unsupported start tag "{tag}"')
        self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            raise _bad_request(f'can\'t parse entities: Unmatched end tag "{tag}"')

    def handle_data(self, data: str) -> None:
        self.visible.append(data)


def _visible_text(text: str, parse_mode: str | None) -> str:
    """What the user sees of ``text``; raises "can't parse entities" for broken HTML."""
    if (parse_mode or "").upper() != "HTML":
        return text
    if re.search(r"<(?![a-zA-Z/])", text):
        raise _bad_request('can\'t parse entities: Unsupported start tag "" at byte offset 0')
    checker = _HtmlChecker()
    checker.feed(text)
    checker.close()
    if checker.stack:
        raise _bad_request(
            f"can't parse entities: Can't find end tag corresponding to \"{checker.stack[-1]}\""
        )
    return "".join(checker.visible)


def _coerce(key: str, value: Any) -> Any:
    """Turn a form field back into the JSON value PTB encoded (PTB json.dumps every non-str value)."""
    if not isinstance(value, str):
        return value
    if key in _JSON_FIELDS:
        return json.loads(value)
    if key in _INT_FIELDS:
        return int(value)
    if key in _BOOL_FIELDS:
        return value.lower() in ("true", "1")
    if key in ("chat_id", "user_id") and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


async def _read_params(request: web.Request) -> dict[str, Any]:
    """Query string plus body: form-encoded, multipart (file parts become UploadedFile) or JSON."""
    params: dict[str, Any] = dict(request.query)
    if request.body_exists:
        if request.content_type == "application/json":
            params.update(await request.json())
        elif request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if part.filename is not None:
                    params[part.name] = UploadedFile(
                        part.name, part.filename, part.headers.get("Content-Type"), bytes(await part.read())
                    )
                else:
                    params[part.name] = await part.text()
        else:
            params.update(await request.post())
    return {key: _coerce(key, value) for key, value in params.items()}


def _image_size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:
        return None


def _thumbnail(data: bytes, side: int) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        image.thumbnail((side, side))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=80)
        return out.getvalue()


class FakeTelegram:
    """The fake Bot API server and the test-facing view of everything the bot did."""

    def __init__(
        self, token: str = "123456789:TEST-fake-telegram-token", bot_username: str = "likeness_test_bot"
    ):
        self.token = token
        self.bot_user = {
            "id": int(token.split(":")[0]),
            "is_bot": True,
            "first_name": "Likeness",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.base_url = ""
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.rejected: list[tuple[str, int]] = []  # (method, status) answered by fail_next
        self.errors: list[tuple[str, int, str]] = []  # (method, status, description) of every error answer
        self.deleted: set[tuple[int, int]] = set()
        self.answered_callbacks: list[dict[str, Any]] = []
        self.downloads: list[str] = []  # file_paths fetched from /file/bot<token>/
        self.commands: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (scope json, language) -> list
        self._chats: dict[int, dict[str, Any]] = {}
        self._blocked: set[int] = set()
        self._messages: dict[tuple[int, int], SentMessage] = {}
        self._next_message_id: dict[int, int] = {}
        self._files: dict[str, StoredFile] = {}
        self._files_by_path: dict[str, StoredFile] = {}
        self._file_counter = itertools.count(1)
        self._updates: list[dict[str, Any]] = []
        self.webhook: dict[str, Any] = {}  # what setWebhook registered (webhook mode)
        self._update_ids = itertools.count(1000)
        self._callback_ids = itertools.count(1)
        self._open_callbacks: set[str] = set()
        self._media_groups = itertools.count(1)
        self._failures: dict[str, list[ApiError]] = {}
        self._new_update = asyncio.Condition()
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._methods: dict[str, Callable[[dict[str, Any]], Any]] = {
            "getme": self._get_me,
            "logout": self._true,
            "close": self._true,
            "deletewebhook": self._delete_webhook,
            "setwebhook": self._set_webhook,
            "getwebhookinfo": self._get_webhook_info,
            "getupdates": self._get_updates,
            "setmycommands": self._set_my_commands,
            "getmycommands": self._get_my_commands,
            "deletemycommands": self._delete_my_commands,
            "setmydescription": self._true,
            "setmyshortdescription": self._true,
            "setmyname": self._true,
            "setchatmenubutton": self._true,
            "sendchataction": self._send_chat_action,
            "sendmessage": self._send_message,
            "sendphoto": self._send_photo,
            "senddocument": self._send_document,
            "sendanimation": self._send_animation,
            "sendmediagroup": self._send_media_group,
            "editmessagetext": self._edit_message_text,
            "editmessagecaption": self._edit_message_caption,
            "editmessagereplymarkup": self._edit_message_reply_markup,
            "deletemessage": self._delete_message,
            "deletemessages": self._delete_messages,
            "answercallbackquery": self._answer_callback_query,
            "getfile": self._get_file,
        }

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        app = web.Application(client_max_size=UPLOAD_LIMIT + 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Release pending long polls and shut the server down."""
        self._closing = True
        async with self._new_update:
            self._new_update.notify_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTelegram:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------------------- test-facing API

    def user(self, user_id: int, first_name: str = "Alex", username: str | None = None) -> FakeUser:
        """A user whose private chat with the bot has id ``user_id``."""
        user = FakeUser(self, user_id, first_name, username)
        self._chats[user_id] = user.chat_json
        return user

    def group(self, chat_id: int, title: str = "Friends") -> FakeGroup:
        """A group chat (use a negative id, as Telegram does) that has the bot as a member."""
        group = FakeGroup(self, chat_id, title)
        self._chats[chat_id] = group.chat_json
        return group

    def add_file(self, data: bytes, folder: str = "documents", extension: str = "bin") -> StoredFile:
        """Register bytes as a Telegram file; they become downloadable through getFile."""
        number = next(self._file_counter)
        stored = StoredFile(
            file_id=f"BQACAgFake{number:06d}",
            file_unique_id=f"AgADFake{number:06d}",
            file_path=f"{folder}/file_{number}.{extension}",
            data=bytes(data),
        )
        self._files[stored.file_id] = stored
        self._files_by_path[stored.file_path] = stored
        return stored

    def file(self, file_id: str) -> StoredFile:
        return self._files[file_id]

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        """Parameters of every request to ``method`` (case-insensitive), in order."""
        return [params for name, params in self.calls if name.lower() == method.lower()]

    def messages(self, chat_id: int) -> list[SentMessage]:
        """The bot's live (not deleted) messages in a chat, oldest first."""
        return [m for m in self._chat_messages(chat_id) if m.from_bot]

    def user_messages(self, chat_id: int) -> list[SentMessage]:
        """The live messages fake users sent in a chat, oldest first."""
        return [m for m in self._chat_messages(chat_id) if not m.from_bot]

    def message(self, chat_id: int, message_id: int) -> SentMessage | None:
        return self._messages.get((chat_id, message_id))

    def pending_updates(self) -> int:
        """Updates not yet confirmed by the bot through getUpdates' offset."""
        return len(self._updates)

    def fail_next(
        self,
        method: str,
        times: int = 1,
        status: int = 429,
        retry_after: int = 1,
        description: str | None = None,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with ``status`` (429 carries ``retry_after``)."""
        if status == 429:
            error = ApiError(
                429,
                description or f"Too Many Requests: retry after {retry_after}",
                {"retry_after": retry_after},
            )
        else:
            error = ApiError(status, description or f"{status} error injected by the test")
        self._failures.setdefault(method.lower(), []).extend([error] * times)

    async def wait_for(self, predicate: Callable[[FakeTelegram], Any], timeout: float = 30.0) -> Any:
        """Poll until ``predicate(self)`` is truthy and return its value; TimeoutError otherwise."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not (value := predicate(self)):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(
                    f"condition not met within {timeout} s; last calls: {self._last_calls()}; "
                    f"last errors: {self.errors[-3:]}"
                )
            await asyncio.sleep(0.02)
        return value

    async def wait_for_message(
        self, chat_id: int, contains: str, timeout: float = 30.0, after: int = 0
    ) -> SentMessage:
        """The first live bot message in ``chat_id`` (id > ``after``) with ``contains`` in text or caption."""

        def found(fake: FakeTelegram) -> SentMessage | None:
            return next(
                (
                    m
                    for m in fake.messages(chat_id)
                    if m.message_id > after and contains in (m.text or m.caption or "")
                ),
                None,
            )

        return await self.wait_for(found, timeout)

    # ----------------------------------------------------------------------------- used by FakeUser/Group

    async def _enqueue(self, update: dict[str, Any]) -> None:
        update = {"update_id": next(self._update_ids), **update}
        async with self._new_update:
            self._updates.append(update)
            self._new_update.notify_all()

    def _new_message(self, chat: dict[str, Any], from_user: dict[str, Any], **content: Any) -> SentMessage:
        chat_id = chat["id"]
        message_id = self._next_message_id.get(chat_id, 1)
        self._next_message_id[chat_id] = message_id + 1
        message = SentMessage(
            chat=chat, message_id=message_id, from_user=from_user, from_bot=from_user["is_bot"], **content
        )
        self._messages[(chat_id, message_id)] = message
        return message

    def _photo_sizes(self, data: bytes) -> list[dict[str, Any]]:
        """PhotoSize objects: real JPEG thumbnails below the original, which is the largest size."""
        size = _image_size(data)
        width, height = size or (1280, 1280)
        sides = [side for side in THUMBNAIL_SIDES if size and side < max(width, height)]
        sizes = []
        for side in sides:
            thumb = self.add_file(_thumbnail(data, side), "photos", "jpg")
            scale = side / max(width, height)
            sizes.append(self._photo_size(thumb, round(width * scale), round(height * scale)))
        sizes.append(self._photo_size(self.add_file(data, "photos", "jpg"), width, height))
        return sizes

    @staticmethod
    def _photo_size(stored: StoredFile, width: int, height: int) -> dict[str, Any]:
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.size,
            "width": width,
            "height": height,
        }

    def _document_json(self, data: bytes, file_name: str, mime_type: str) -> dict[str, Any]:
        stored = self.add_file(data, "documents", file_name.rsplit(".", 1)[-1] if "." in file_name else "bin")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_name": file_name,
            "mime_type": mime_type,
            "file_size": stored.size,
        }

    def _new_callback_id(self) -> str:
        callback_id = f"{next(self._callback_ids)}{self.bot_user['id']}"
        self._open_callbacks.add(callback_id)
        return callback_id

    def _chat_messages(self, chat_id: int) -> list[SentMessage]:
        return sorted(
            (m for (cid, _), m in self._messages.items() if cid == chat_id), key=lambda m: m.message_id
        )

    def _last_calls(self, count: int = 8) -> list[str]:
        return [name for name, _ in self.calls if name != "getUpdates"][-count:]

    # ----------------------------------------------------------------------------- HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if match := re.fullmatch(r"/bot([^/]+)/(\w+)", request.path):
            return await self._handle_api(request, *match.groups())
        if match := re.fullmatch(r"/file/bot([^/]+)/(.+)", request.path):
            return self._handle_download(*match.groups())
        return ApiError(404, "Not Found").response()

    async def _handle_api(self, request: web.Request, token: str, method: str) -> web.Response:
        if token != self.token:
            return ApiError(401, "Unauthorized").response()
        try:
            params = await _read_params(request)
        except (ValueError, TypeError):
            return self._error(method, _bad_request("can't parse request parameters"))
        self.calls.append((method, params))
        if failures := self._failures.get(method.lower()):
            error = failures.pop(0)
            self.rejected.append((method, error.status))
            return self._error(method, error)
        handler = self._methods.get(method.lower())
        if handler is None:
            return self._error(method, _bad_request(f"method {method} is not supported by the fake"))
        try:
            result = await handler(params)
        except ApiError as error:
            return self._error(method, error)
        except (KeyError, ValueError, TypeError) as error:
            return self._error(method, _bad_request(f"invalid parameters: {error!r}"))
        return web.json_response({"ok": True, "result": result})

    def _error(self, method: str, error: ApiError) -> web.Response:
        self.errors.append((method, error.status, error.description))
        return error.response()

    def _handle_download(self, token: str, file_path: str) -> web.Response:
        stored = self._files_by_path.get(file_path)
        if token != self.token or stored is None:
            return ApiError(404, "Not Found").response()
        self.downloads.append(file_path)
        return web.Response(body=stored.data, content_type="application/octet-stream")

    # ----------------------------------------------------------------------------- Bot API methods

    async def _true(self, params: dict[str, Any]) -> bool:
        return True

    async def _get_me(self, params: dict[str, Any]) -> dict[str, Any]:
        return self.bot_user

    async def _delete_webhook(self, params: dict[str, Any]) -> bool:
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    async def _set_webhook(self, params: dict[str, Any]) -> bool:
        self.webhook = {"url": params.get("url", ""), "secret_token": params.get("secret_token")}
        return True

    async def _get_webhook_info(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": self.webhook.get("url", ""),
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = params.get("offset", 0)
        limit = min(max(params.get("limit", 100), 1), 100)
        timeout = params.get("timeout", 0)
        if offset > 0:
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
        elif offset < 0:
            self._updates = self._updates[offset:]
        if not self._updates and timeout > 0 and not self._closing:
            async with self._new_update:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._new_update.wait_for(lambda: self._updates or self._closing), timeout
                    )
        return self._updates[:limit]

    async def _set_my_commands(self, params: dict[str, Any]) -> bool:
        commands = params["commands"]
        for command in commands:
            if not _COMMAND_RE.fullmatch(command.get("command", "")):
                raise _bad_request("BOT_COMMAND_INVALID")
            if not 1 <= len(command.get("description", "")) <= 256:
                raise _bad_request("BOT_COMMAND_DESCRIPTION_INVALID")
        self.commands[self._commands_key(params)] = commands
        return True

    async def _get_my_commands(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self.commands.get(self._commands_key(params), [])

    async def _delete_my_commands(self, params: dict[str, Any]) -> bool:
        self.commands.pop(self._commands_key(params), None)
        return True

    @staticmethod
    def _commands_key(params: dict[str, Any]) -> tuple[str, str]:
        scope = params.get("scope") or {"type": "default"}
        return json.dumps(scope, sort_keys=True), params.get("language_code") or ""

    async def _send_chat_action(self, params: dict[str, Any]) -> bool:
        self._target_chat(params)
        return True

    async def _send_message(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._target_chat(params)
        raw = params.get("text", "")
        text = _visible_text(raw, params.get("parse_mode"))
        if not text.strip():
            raise _bad_request("message text is empty")
        if len(text) > MAX_TEXT:
            raise _bad_request("message is too long")
        message = self._bot_message(
            chat, params, text=text, raw_text=raw, parse_mode=params.get("parse_mode")
        )
        return message.to_json()

    async def _send_photo(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._target_chat(params)
        data = self._input_file(params, params.get("photo"))
        sizes = self._checked_photo_sizes(data)
        message = self._bot_message(chat, params, photo=data, photo_sizes=sizes, **self._caption(params))
        return message.to_json()

    async def _send_document(self, params: dict[str, Any]) -> dict[str, Any]:
        chat = self._target_chat(params)
        value = params.get("document")
        data = self._input_file(params, value)
        name, mime = self._file_name_and_type(value)
        document = self._document_json(data, name, mime)
        message = self._bot_message(
            chat, params, document=data, document_json=document, **self._caption(params)
        )
        return message.to_json()

    async def _send_animation(self, params: dict[str, Any]) -> dict[str, Any]:
        """An animation: a GIF, or an H.264 MP4 without sound, which Telegram plays inline and loops.
        The fake probes it as Telegram does (a file that is not a playable video is refused) and, like
        Telegram, answers with both ``animation`` and ``document``."""
        chat = self._target_chat(params)
        value = params.get("animation")
        data = self._input_file(params, value)
        name, mime = self._file_name_and_type(value)
        width, height, duration = _probe_animation(data)
        document = self._document_json(data, name, mime if data[:3] != b"GIF" else "image/gif")
        animation = {**document, "width": width, "height": height, "duration": duration}
        message = self._bot_message(
            chat, params, animation=data, animation_json=animation, document=data, document_json=document,
            **self._caption(params),
        )  # fmt: skip
        return message.to_json()

    async def _send_media_group(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        chat = self._target_chat(params)
        media = params["media"]
        if not 2 <= len(media) <= 10:
            raise _bad_request("media group must contain 2-10 items")
        contents = []
        for item in media:  # check every item before sending any, as Telegram does
            value = item["media"]
            if value.startswith("attach://"):
                value = params.get(value.removeprefix("attach://"))
            data = self._input_file(params, value)
            content = self._caption(item)
            if item["type"] == "photo":
                content.update(photo=data, photo_sizes=self._checked_photo_sizes(data))
            elif item["type"] == "document":
                name, mime = self._file_name_and_type(value)
                content.update(document=data, document_json=self._document_json(data, name, mime))
            else:
                raise _bad_request(f"media type {item['type']} is not supported by the fake")
            contents.append(content)
        group_id = f"{next(self._media_groups)}{int(time.time())}"
        return [
            self._bot_message(chat, params, media_group_id=group_id, **content).to_json()
            for content in contents
        ]

    async def _edit_message_text(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._editable_message(params)
        if message.text is None:
            raise _bad_request("there is no text in the message to edit")
        raw = params.get("text", "")
        text = _visible_text(raw, params.get("parse_mode"))
        if not text.strip():
            raise _bad_request("message text is empty")
        if len(text) > MAX_TEXT:
            raise _bad_request("message is too long")
        self._apply_edit(message, params, text=text, raw_text=raw)
        return message.to_json()

    async def _edit_message_caption(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._editable_message(params)
        if message.text is not None:
            raise _bad_request("there is no caption in the message to edit")
        self._apply_edit(message, params, caption=self._caption(params).get("caption"))
        return message.to_json()

    async def _edit_message_reply_markup(self, params: dict[str, Any]) -> dict[str, Any]:
        message = self._editable_message(params)
        self._apply_edit(message, params)
        return message.to_json()

    async def _delete_message(self, params: dict[str, Any]) -> bool:
        key = (params["chat_id"], params["message_id"])
        if key not in self._messages:
            raise _bad_request("message to delete not found")
        self._delete(key)
        return True

    async def _delete_messages(self, params: dict[str, Any]) -> bool:
        """Messages that cannot be found are skipped, as the Bot API documents."""
        for message_id in params["message_ids"]:
            key = (params["chat_id"], message_id)
            if key in self._messages:
                self._delete(key)
        return True

    async def _answer_callback_query(self, params: dict[str, Any]) -> bool:
        callback_id = params["callback_query_id"]
        if callback_id not in self._open_callbacks:
            raise _bad_request("query is too old and response timeout expired or query ID is invalid")
        self._open_callbacks.discard(callback_id)
        self.answered_callbacks.append(params)
        return True

    async def _get_file(self, params: dict[str, Any]) -> dict[str, Any]:
        stored = self._files.get(params.get("file_id", ""))
        if stored is None:
            raise _bad_request("invalid file_id")
        if stored.size > DOWNLOAD_LIMIT:
            raise _bad_request("file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.size,
            "file_path": stored.file_path,
        }

    # ----------------------------------------------------------------------------- method helpers

    def _target_chat(self, params: dict[str, Any]) -> dict[str, Any]:
        chat_id = params.get("chat_id")
        if chat_id not in self._chats:
            raise _bad_request("chat not found")
        if chat_id in self._blocked:
            raise ApiError(403, "Forbidden: bot was blocked by the user")
        return self._chats[chat_id]

    def _bot_message(self, chat: dict[str, Any], params: dict[str, Any], **content: Any) -> SentMessage:
        return self._new_message(
            chat,
            self._public_bot_user(),
            reply_markup=self._checked_markup(params.get("reply_markup")),
            protect_content=bool(params.get("protect_content")),
            **content,
        )

    def _public_bot_user(self) -> dict[str, Any]:
        return {key: self.bot_user[key] for key in ("id", "is_bot", "first_name", "username")}

    @staticmethod
    def _checked_markup(markup: dict[str, Any] | None) -> dict[str, Any] | None:
        for row in (markup or {}).get("inline_keyboard", []):
            for button in row:
                if len(button.get("callback_data", "").encode()) > MAX_CALLBACK_DATA:
                    raise _bad_request("BUTTON_DATA_INVALID")
                if not button.get("text"):
                    raise _bad_request("text buttons are unallowed in the inline keyboard")
        return markup

    @staticmethod
    def _caption(params: dict[str, Any]) -> dict[str, Any]:
        raw = params.get("caption")
        if raw is None:
            return {}
        caption = _visible_text(raw, params.get("parse_mode"))
        if len(caption) > MAX_CAPTION:
            raise _bad_request("message caption is too long")
        return {"caption": caption}

    def _checked_photo_sizes(self, data: bytes) -> list[dict[str, Any]]:
        if len(data) > PHOTO_UPLOAD_LIMIT:
            raise _bad_request("photo is too big")
        if _image_size(data) is None:
            raise _bad_request("IMAGE_PROCESS_FAILED")
        return self._photo_sizes(data)

    def _input_file(self, params: dict[str, Any], value: Any) -> bytes:
        """Bytes of an uploaded part, an ``attach://`` part, or a known file_id."""
        if isinstance(value, str) and value.startswith("attach://"):
            value = params.get(value.removeprefix("attach://"))
        if isinstance(value, UploadedFile):
            if len(value.data) > UPLOAD_LIMIT:
                raise ApiError(413, "Request Entity Too Large")
            return value.data
        if isinstance(value, str) and value in self._files:
            return self._files[value].data
        raise _bad_request("wrong file identifier/HTTP URL specified")

    def _file_name_and_type(self, value: Any) -> tuple[str, str]:
        if isinstance(value, UploadedFile):
            return value.filename or value.name, value.content_type or "application/octet-stream"
        return "file.bin", "application/octet-stream"

    def _editable_message(self, params: dict[str, Any]) -> SentMessage:
        if "inline_message_id" in params:
            raise _bad_request("inline messages are not supported by the fake")
        message = self._messages.get((params.get("chat_id"), params.get("message_id")))
        if message is None:
            raise _bad_request("message to edit not found")
        if not message.from_bot:
            raise _bad_request("message can't be edited")
        return message

    def _apply_edit(self, message: SentMessage, params: dict[str, Any], **content: Any) -> None:
        """Editing without reply_markup removes the inline keyboard, as on Telegram."""
        markup = self._checked_markup(params.get("reply_markup"))
        before = {"text": message.text, "caption": message.caption, "reply_markup": message.reply_markup}
        after = {**before, **content, "reply_markup": markup}
        if {k: after[k] for k in before} == before:
            raise _bad_request(
                "message is not modified: specified new message content and reply markup are exactly the "
                "same as a current content and reply markup of the message"
            )
        message.edits.append(before)
        for key, value in content.items():
            setattr(message, key, value)
        message.reply_markup = markup
        message.edit_date = int(time.time())

    def _delete(self, key: tuple[int, int]) -> None:
        del self._messages[key]
        self.deleted.add(key)


class FakeUser:
    """A Telegram user acting in their private chat with the bot (chat id == user id)."""

    def __init__(self, fake: FakeTelegram, user_id: int, first_name: str, username: str | None):
        self.fake = fake
        self.id = user_id
        self.json: dict[str, Any] = {"id": user_id, "is_bot": False, "first_name": first_name}
        self.chat_json: dict[str, Any] = {"id": user_id, "type": "private", "first_name": first_name}
        if username:
            self.json["username"] = self.chat_json["username"] = username
        self.json["language_code"] = "en"

    @property
    def messages(self) -> list[SentMessage]:
        """The bot's live messages in this user's private chat."""
        return self.fake.messages(self.id)

    def block(self) -> None:
        """The user blocks the bot: sends to this chat answer 403."""
        self.fake._blocked.add(self.id)

    def unblock(self) -> None:
        self.fake._blocked.discard(self.id)

    async def send_text(self, text: str) -> SentMessage:
        return await _send_text(self.fake, self.chat_json, self.json, text)

    async def send_photo(
        self, data: bytes, media_group_id: str | None = None, caption: str | None = None
    ) -> SentMessage:
        return await _send_photo(self.fake, self.chat_json, self.json, data, media_group_id, caption)

    async def send_document(
        self, data: bytes, file_name: str = "file.bin", mime_type: str = "application/octet-stream"
    ) -> SentMessage:
        return await _send_document(self.fake, self.chat_json, self.json, data, file_name, mime_type)

    async def send_album(self, photos: Iterable[bytes], caption: str | None = None) -> list[SentMessage]:
        """Photo updates sharing one media_group_id; the caption rides on the first, as on Telegram."""
        group_id = f"album{next(self.fake._media_groups)}"
        return [
            await self.send_photo(data, media_group_id=group_id, caption=caption if i == 0 else None)
            for i, data in enumerate(photos)
        ]

    async def press(self, message: SentMessage, button: str) -> str:
        """Press the button with this text or callback_data of a live bot message; returns the query id."""
        live = self.fake.message(message.chat_id, message.message_id)
        if live is None:
            raise LookupError(f"message {message.message_id} was deleted")
        data = live.find_button(button).get("callback_data")
        if data is None:
            raise LookupError(f"button {button!r} is not a callback button")
        return await self._callback(data, live.to_json())

    async def forge_callback(self, data: str, message_id: int) -> str:
        """A callback query with arbitrary data, as a malicious client could send it."""
        live = self.fake.message(self.id, message_id)
        message = (
            live.to_json()
            if live
            else {"message_id": message_id, "date": int(time.time()), "chat": self.chat_json}
        )
        return await self._callback(data, message)

    async def _callback(self, data: str, message: dict[str, Any]) -> str:
        callback_id = self.fake._new_callback_id()
        query = {
            "id": callback_id,
            "from": self.json,
            "chat_instance": f"ci{message['chat']['id']}",
            "message": message,
            "data": data,
        }
        await self.fake._enqueue({"callback_query": query})
        return callback_id


class FakeGroup:
    """A group chat; every method takes the FakeUser who acts."""

    def __init__(self, fake: FakeTelegram, chat_id: int, title: str):
        self.fake = fake
        self.id = chat_id
        self.chat_json: dict[str, Any] = {"id": chat_id, "type": "group", "title": title}

    @property
    def messages(self) -> list[SentMessage]:
        return self.fake.messages(self.id)

    async def send_text(self, from_user: FakeUser, text: str) -> SentMessage:
        return await _send_text(self.fake, self.chat_json, from_user.json, text)

    async def send_photo(self, from_user: FakeUser, data: bytes, caption: str | None = None) -> SentMessage:
        return await _send_photo(self.fake, self.chat_json, from_user.json, data, None, caption)

    async def send_document(
        self,
        from_user: FakeUser,
        data: bytes,
        file_name: str = "file.bin",
        mime_type: str = "application/octet-stream",
    ) -> SentMessage:
        return await _send_document(self.fake, self.chat_json, from_user.json, data, file_name, mime_type)


async def _send_text(
    fake: FakeTelegram, chat: dict[str, Any], sender: dict[str, Any], text: str
) -> SentMessage:
    entities = None
    if text.startswith("/"):
        command = text.split(maxsplit=1)[0]
        entities = [{"type": "bot_command", "offset": 0, "length": len(command)}]
    message = fake._new_message(chat, sender, text=text, raw_text=text, entities=entities)
    await fake._enqueue({"message": message.to_json()})
    return message


def _probe_animation(data: bytes) -> tuple[int, int, int]:
    """(width, height, whole seconds) of an animation; ``ApiError`` 400 when it is not a playable video."""
    import av

    try:
        with av.open(io.BytesIO(data)) as box:
            stream = box.streams.video[0]
            frames = sum(1 for _ in box.decode(stream))
            rate = float(stream.average_rate or 0)
            if not frames or box.streams.audio:
                raise ValueError("not a silent video")
            return (
                stream.codec_context.width,
                stream.codec_context.height,
                round(frames / rate) if rate else 0,
            )
    except (av.error.FFmpegError, IndexError, ValueError):
        raise _bad_request("wrong file type for an animation") from None


async def _send_photo(
    fake: FakeTelegram,
    chat: dict[str, Any],
    sender: dict[str, Any],
    data: bytes,
    media_group_id: str | None,
    caption: str | None,
) -> SentMessage:
    sizes = fake._photo_sizes(data)
    message = fake._new_message(
        chat, sender, photo=data, photo_sizes=sizes, media_group_id=media_group_id, caption=caption
    )
    await fake._enqueue({"message": message.to_json()})
    return message


async def _send_document(
    fake: FakeTelegram,
    chat: dict[str, Any],
    sender: dict[str, Any],
    data: bytes,
    file_name: str,
    mime_type: str,
) -> SentMessage:
    document = fake._document_json(data, file_name, mime_type)
    message = fake._new_message(chat, sender, document=data, document_json=document)
    await fake._enqueue({"message": message.to_json()})
    return message
