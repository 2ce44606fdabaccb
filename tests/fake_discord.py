"""A fake Discord (REST API + gateway websocket) on 127.0.0.1 for end-to-end tests.

A real discord.py client talks to it over real HTTP and a real websocket; tests play the users:

    fake = FakeDiscord()
    await fake.start()
    configure_api_root(fake.api_url)          # bot/discord_connect.py
    ...start the bot with fake.token...
    alex = fake.user(1001)
    interaction = await alex.slash("start")
    await fake.wait_for(lambda: fake.interaction_responses(interaction))

It keeps what the bot did (messages, interaction responses, command syncs, downloads) for assertions,
answers like Discord where a bot can get it wrong (closed DMs, double acknowledgements, unregistered
commands, missing intents) and is deliberately small elsewhere: no rate limits, no permissions, one shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import mimetypes
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

T = TypeVar("T")
Attachment = tuple[str, bytes, str]  # (filename, data, content type)

API = "/api/v10"
DISCORD_EPOCH_MS = 1420070400000

# Gateway intents the fake honours when dispatching.
INTENT_GUILDS = 1 << 0
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15

EPHEMERAL = 1 << 6
LOADING = 1 << 7
# Interaction callback types.
MESSAGE = 4
DEFERRED_MESSAGE = 5
DEFERRED_UPDATE = 6
UPDATE_MESSAGE = 7
# Component types a user can press.
PRESSABLE = {2, 3, 5, 6, 7, 8}


def _now() -> str:
    return datetime.now(UTC).isoformat()


class DiscordError(Exception):
    """An API error, answered with Discord's JSON body ``{"message": ..., "code": ...}``."""

    def __init__(self, status: int, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _json(data: Any, status: int = 200) -> web.Response:
    # discord.py parses JSON only when the content type is exactly "application/json" (no charset).
    return web.Response(
        status=status, body=json.dumps(data).encode(), headers={"Content-Type": "application/json"}
    )


@dataclass
class FakeAttachment:
    id: int
    filename: str
    content_type: str
    data: bytes
    url: str

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "filename": self.filename,
            "size": len(self.data),
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }


@dataclass
class FakeMessage:
    """A message as the fake stores it; ``deleted`` messages stay around for assertions."""

    id: int
    channel_id: int
    author_id: int
    content: str = ""
    components: list[dict[str, Any]] = field(default_factory=list)
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    flags: int = 0
    interaction_id: int | None = None
    timestamp: str = field(default_factory=_now)
    edited_timestamp: str | None = None
    deleted: bool = False
    forged: bool = False  # made up by forge_press; not listed among the channel's messages

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    def pressables(self) -> Iterator[dict[str, Any]]:
        """Every button / select in the message, however deeply nested (rows, containers, sections)."""
        stack = list(reversed(self.components))
        while stack:
            component = stack.pop()
            if component.get("type") in PRESSABLE:
                yield component
            children = list(component.get("components", []))
            if "accessory" in component:
                children.append(component["accessory"])
            stack.extend(reversed(children))

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in self.pressables() if "custom_id" in c]

    @property
    def labels(self) -> list[str]:
        return [c["label"] for c in self.pressables() if "label" in c]


@dataclass
class FakeResponse:
    """One thing the bot did to answer an interaction, snapshotted when it happened."""

    kind: str  # "callback", "followup", "edit" or "delete"
    type: int | None  # the callback type (4, 5, 6, 7, ...) for kind == "callback"
    message_id: int | None
    content: str
    flags: int
    components: list[dict[str, Any]]
    attachments: list[FakeAttachment]

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)


@dataclass
class FakeInteraction:
    id: int
    token: str
    type: int  # 2 application command, 3 message component
    user_id: int
    channel_id: int
    guild_id: int | None
    data: dict[str, Any]
    message_id: int | None = None  # the message a component sat on
    original_message_id: int | None = None  # what "@original" refers to once acknowledged
    acknowledged: bool = False
    responses: list[FakeResponse] = field(default_factory=list)


@dataclass
class _Session:
    id: str
    intents: int
    seq: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    conn: _Connection | None = None


class _Connection:
    """One gateway websocket; speaks plain JSON text, or zlib-stream when the client asks for it."""

    def __init__(self, ws: web.WebSocketResponse, zlib_stream: bool) -> None:
        self.ws = ws
        self._zlib = zlib.compressobj() if zlib_stream else None
        self._lock = asyncio.Lock()

    async def send(self, payload: dict[str, Any]) -> None:
        text = json.dumps(payload)
        async with self._lock:
            if self.ws.closed:
                return
            if self._zlib is None:
                await self.ws.send_str(text)
            else:
                await self.ws.send_bytes(
                    self._zlib.compress(text.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                )


class FakeDiscordUser:
    """A Discord user the test drives."""

    def __init__(self, fake: FakeDiscord, user_id: int, name: str) -> None:
        self.fake = fake
        self.id = user_id
        self.name = name
        self.dm_channel_id = fake._snowflake()
        self.dms_open = True
        self.locale = "en-US"  # the client's language, sent with every interaction (e.g. "de", "pt-BR")

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.name.title(),
            "avatar": None,
            "public_flags": 0,
        }

    def close_dms(self) -> None:
        """From now on the bot's messages to this user fail with 403 / 50007."""
        self.dms_open = False

    def open_dms(self) -> None:
        self.dms_open = True

    async def slash(
        self, name: str, options: dict[str, Any] | None = None, in_guild: bool = False
    ) -> FakeInteraction:
        """Run the registered slash command ``name`` in the DM with the bot or in the test guild.

        Attachment options take ``(filename, bytes, content_type)``.
        """
        return await self.fake._slash(self, name, options or {}, in_guild)

    async def press(
        self, message: FakeMessage | int, target: str, values: list[str] | None = None
    ) -> FakeInteraction:
        """Press the button (or pick ``values`` in the select) whose custom_id or label is ``target``
        (``consent:yes`` also finds ``consent:yes-<policy version>``)."""
        msg = self.fake.message(message) if isinstance(message, int) else message
        for component in msg.pressables():
            custom_id = component.get("custom_id") or ""
            if target in (custom_id, component.get("label")) or custom_id.startswith(target + "-"):
                break
        else:
            raise LookupError(
                f"no component {target!r} on message {msg.id}; it has {msg.labels or msg.custom_ids}"
            )
        if component.get("disabled"):
            raise LookupError(f"component {target!r} is disabled")
        if "custom_id" not in component:
            raise LookupError(f"component {target!r} is a link button; it opens {component.get('url')}")
        return await self.fake._component(self, msg, component["custom_id"], component["type"], values)

    async def forge_press(self, custom_id: str, message_id: int, component_type: int = 2) -> FakeInteraction:
        """Send a component interaction for any custom_id, as a stale or malicious client could.

        An unknown ``message_id`` gets a made-up bot message carrying that button.
        """
        msg = self.fake.messages.get(message_id)
        if msg is None:
            button = {"type": 2, "style": 1, "label": "?", "custom_id": custom_id}
            msg = FakeMessage(
                id=message_id,
                channel_id=self.dm_channel_id,
                author_id=self.fake.bot_user_id,
                components=[{"type": 1, "components": [button]}],
                forged=True,
            )
            self.fake.messages[message_id] = msg
        return await self.fake._component(self, msg, custom_id, component_type, None)

    async def send_dm(self, text: str = "", attachments: list[Attachment] | None = None) -> FakeMessage:
        """Write to the bot in DM (MESSAGE_CREATE with attachment urls served by the fake)."""
        return await self.fake._user_message(self, self.dm_channel_id, text, attachments or [])

    async def post_in_guild(self, text: str = "", attachments: list[Attachment] | None = None) -> FakeMessage:
        """Write in the test guild's text channel."""
        return await self.fake._user_message(self, self.fake.guild_channel_id, text, attachments or [])


class FakeDiscord:
    """REST under ``/api/v10`` and the gateway at ``/gateway``, on one 127.0.0.1 port."""

    def __init__(self, heartbeat_interval_ms: int = 41250) -> None:
        self._ids = itertools.count()
        self.token = "fake-bot-token-" + secrets.token_hex(8)
        self.application_id = self._snowflake()
        self.bot_user_id = self._snowflake()
        self.guild_id = self._snowflake()
        self.guild_channel_id = self._snowflake()
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.port = 0

        self.users: dict[int, FakeDiscordUser] = {}
        self.messages: dict[int, FakeMessage] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.commands: dict[str, dict[str, Any]] = {}
        self.guild_commands: dict[str, dict[str, Any]] = {}
        self.command_syncs = 0
        self.downloads: list[str] = []
        self.typing: list[int] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every HTTP request
        self.gateway_queries: list[dict[str, str]] = []  # query string of every gateway connection
        self.identifies = 0
        self.resumes = 0
        self.dropped_events: list[str] = []  # dispatches the client's intents did not ask for

        self._session: _Session | None = None
        self._backlog: list[tuple[str, dict[str, Any]]] = []  # events for a client not yet identified
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{attachment_id}/{filename}", self._download)
        r = app.router
        r.add_get(API + "/gateway", self._get_gateway)
        r.add_get(API + "/gateway/bot", self._get_gateway_bot)
        r.add_get(API + "/users/@me", self._get_me)
        r.add_get(API + "/users/{user}", self._get_user)
        r.add_get(API + "/oauth2/applications/@me", self._get_application)
        r.add_post(API + "/users/@me/channels", self._create_dm)
        for path, scope in (
            ("/applications/{app}/commands", "global"),
            ("/applications/{app}/guilds/{guild}/commands", "guild"),
        ):
            r.add_get(API + path, self._list_commands(scope))
            r.add_put(API + path, self._overwrite_commands(scope))
            r.add_post(API + path, self._upsert_command(scope))
        r.add_post(API + "/interactions/{interaction}/{token}/callback", self._callback)
        r.add_post(API + "/webhooks/{app}/{token}", self._followup)
        r.add_get(API + "/webhooks/{app}/{token}/messages/{message}", self._webhook_get)
        r.add_patch(API + "/webhooks/{app}/{token}/messages/{message}", self._webhook_edit)
        r.add_delete(API + "/webhooks/{app}/{token}/messages/{message}", self._webhook_delete)
        r.add_get(API + "/channels/{channel}", self._get_channel)
        r.add_post(API + "/channels/{channel}/typing", self._typing)
        r.add_post(API + "/channels/{channel}/messages", self._create_message)
        r.add_get(API + "/channels/{channel}/messages/{message}", self._get_message)
        r.add_patch(API + "/channels/{channel}/messages/{message}", self._edit_message)
        r.add_delete(API + "/channels/{channel}/messages/{message}", self._delete_message)
        r.add_route("*", "/{tail:.*}", self._not_found)

        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """What ``LIKENESS_DISCORD_API_URL`` holds to reach this fake."""
        return self.base_url + "/api"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    @property
    def connected(self) -> bool:
        """A client has identified (or resumed) and its websocket is open."""
        return self._session is not None and self._session.conn is not None

    # -- test-facing inspection ------------------------------------------------------------------

    def user(self, user_id: int, name: str = "alex") -> FakeDiscordUser:
        if user_id not in self.users:
            self.users[user_id] = FakeDiscordUser(self, user_id, name)
        return self.users[user_id]

    def message(self, message_id: int) -> FakeMessage:
        return self.messages[message_id]

    def channel_messages(self, channel_id: int, *, include_deleted: bool = False) -> list[FakeMessage]:
        """Bot-authored messages in a channel, oldest first (interaction responses included)."""
        return [
            m
            for m in self.messages.values()
            if m.channel_id == channel_id
            and m.author_id == self.bot_user_id
            and not m.forged
            and (include_deleted or not m.deleted)
        ]

    def dm_messages(self, user_id: int) -> list[FakeMessage]:
        """Live messages the bot shows in its DM with ``user_id`` (ephemeral ones carry ``ephemeral``)."""
        return self.channel_messages(self.user(user_id).dm_channel_id)

    def guild_messages(self) -> list[FakeMessage]:
        return self.channel_messages(self.guild_channel_id)

    @property
    def deleted_messages(self) -> list[FakeMessage]:
        return [m for m in self.messages.values() if m.deleted]

    def interaction_responses(self, interaction: FakeInteraction | int) -> list[FakeResponse]:
        """The callback, followups, edits and deletes the bot made for an interaction, in order."""
        key = interaction if isinstance(interaction, int) else interaction.id
        return list(self.interactions[key].responses)

    async def wait_for(self, predicate: Callable[[], T], timeout: float = 30.0) -> T:
        """Wait until ``predicate()`` is truthy and return its value.

        It is re-checked after every request and gateway event, and every 50 ms for predicates on the
        bot's own state.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    result = predicate()
                    if result:
                        return result
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), 0.05)
        except TimeoutError:
            raise TimeoutError(f"fake Discord: condition not met within {timeout} s") from None

    async def wait_until_connected(self, timeout: float = 30.0) -> None:
        await self.wait_for(lambda: self.connected, timeout)

    async def force_reconnect(self) -> None:
        """Send RECONNECT (op 7), as Discord does before moving a session; the client should RESUME."""
        if self._session is None or self._session.conn is None:
            raise RuntimeError("no client connected")
        await self._session.conn.send({"op": 7, "d": None, "s": None, "t": None})

    # -- internals: ids, payloads ------------------------------------------------------------------

    def _snowflake(self) -> int:
        return ((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) + next(self._ids) % (1 << 22)

    def _touch(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _bot_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.bot_user_id),
            "username": "likeness",
            "discriminator": "0",
            "global_name": None,
            "avatar": None,
            "bot": True,
            "verified": True,
            "flags": 0,
            "mfa_enabled": False,
        }

    def _author_payload(self, user_id: int) -> dict[str, Any]:
        return self._bot_payload() if user_id == self.bot_user_id else self.users[user_id].payload()

    def _dm_owner(self, channel_id: int) -> FakeDiscordUser | None:
        return next((u for u in self.users.values() if u.dm_channel_id == channel_id), None)

    def _channel_payload(self, channel_id: int) -> dict[str, Any]:
        if channel_id == self.guild_channel_id:
            return {
                "id": str(channel_id),
                "type": 0,
                "guild_id": str(self.guild_id),
                "name": "portraits",
                "position": 0,
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
                "topic": None,
                "last_message_id": None,
                "rate_limit_per_user": 0,
            }
        owner = self._dm_owner(channel_id)
        if owner is None:
            raise DiscordError(404, "Unknown Channel", 10003)
        return {"id": str(channel_id), "type": 1, "recipients": [owner.payload()], "last_message_id": None}

    def _member_payload(self, user: FakeDiscordUser | None) -> dict[str, Any]:
        member: dict[str, Any] = {
            "roles": [],
            "joined_at": "2025-01-01T00:00:00+00:00",
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "nick": None,
            "permissions": str((1 << 41) - 1),
        }
        if user is not None:
            member["user"] = user.payload()
        return member

    def _guild_payload(self) -> dict[str, Any]:
        channel = self._channel_payload(self.guild_channel_id)
        channel.pop("guild_id")
        bot_member = self._member_payload(None) | {"user": self._bot_payload()}
        return {
            "id": str(self.guild_id),
            "name": "Likeness test guild",
            "icon": None,
            "owner_id": str(next(iter(self.users), self.bot_user_id)),
            "unavailable": False,
            "member_count": 1 + len(self.users),
            "large": False,
            "features": [],
            "roles": [
                {
                    "id": str(self.guild_id),
                    "name": "@everyone",
                    "permissions": str((1 << 41) - 1),
                    "position": 0,
                    "color": 0,
                    "hoist": False,
                    "managed": False,
                    "mentionable": False,
                    "flags": 0,
                }
            ],
            "channels": [channel],
            "threads": [],
            "members": [bot_member],
            "emojis": [],
            "stickers": [],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "joined_at": "2025-01-01T00:00:00+00:00",
            "preferred_locale": "en-US",
            "mfa_level": 0,
            "verification_level": 0,
            "explicit_content_filter": 0,
            "default_message_notifications": 0,
            "premium_tier": 0,
            "nsfw_level": 0,
        }

    def _message_payload(self, msg: FakeMessage) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(msg.id),
            "channel_id": str(msg.channel_id),
            "author": self._author_payload(msg.author_id),
            "content": msg.content,
            "timestamp": msg.timestamp,
            "edited_timestamp": msg.edited_timestamp,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.payload() for a in msg.attachments],
            "embeds": msg.embeds,
            "components": msg.components,
            "pinned": False,
            "type": 0,
            "flags": msg.flags,
        }
        if msg.channel_id == self.guild_channel_id:
            payload["guild_id"] = str(self.guild_id)
        if msg.interaction_id is not None:
            interaction = self.interactions[msg.interaction_id]
            payload["interaction_metadata"] = {
                "id": str(interaction.id),
                "type": interaction.type,
                "user": self.users[interaction.user_id].payload(),
                "authorizing_integration_owners": {},
            }
        return payload

    def _store_attachment(
        self, filename: str, data: bytes, content_type: str | None = None
    ) -> FakeAttachment:
        attachment_id = self._snowflake()
        content_type = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        url = f"{self.base_url}/attachments/{attachment_id}/{filename}"
        attachment = FakeAttachment(attachment_id, filename, content_type, data, url)
        self.attachments[attachment_id] = attachment
        return attachment

    # -- internals: gateway ------------------------------------------------------------------------

    async def _dispatch(self, event: str, data: dict[str, Any]) -> None:
        session = self._session
        if session is None:
            self._backlog.append((event, data))
            return
        needed = {
            "MESSAGE_CREATE": INTENT_DIRECT_MESSAGES if "guild_id" not in data else INTENT_GUILD_MESSAGES,
            "GUILD_CREATE": INTENT_GUILDS,
        }.get(event, 0)
        if needed and not session.intents & needed:
            self.dropped_events.append(event)
            return
        if event == "MESSAGE_CREATE" and "guild_id" in data and not session.intents & INTENT_MESSAGE_CONTENT:
            # Without the privileged intent Discord blanks guild messages that do not mention the bot.
            data = data | {"content": "", "attachments": [], "embeds": [], "components": []}
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.log.append(payload)
        if session.conn is not None:
            await session.conn.send(payload)
        self._touch()

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.gateway_queries.append(dict(request.query))
        conn = _Connection(ws, zlib_stream=request.query.get("compress") == "zlib-stream")
        await conn.send(
            {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}, "s": None, "t": None}
        )
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                message = json.loads(frame.data)
                op, data = message.get("op"), message.get("d")
                if op == 1:
                    await conn.send({"op": 11, "d": None, "s": None, "t": None})
                elif op == 2:
                    await self._identify(conn, data)
                elif op == 6:
                    await self._resume(conn, data)
        finally:
            self._sockets.discard(ws)
            if self._session is not None and self._session.conn is conn:
                self._session.conn = None
            self._touch()
        return ws

    async def _identify(self, conn: _Connection, data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        self.identifies += 1
        self._session = _Session(id=secrets.token_hex(16), intents=int(data.get("intents", 0)), conn=conn)
        guilds = (
            [{"id": str(self.guild_id), "unavailable": True}] if self._session.intents & INTENT_GUILDS else []
        )
        ready = {
            "v": 10,
            "user": self._bot_payload(),
            "session_id": self._session.id,
            "resume_gateway_url": self.gateway_url,
            "application": {"id": str(self.application_id), "flags": 0},
            "guilds": guilds,
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "shard": [0, 1],
        }
        await self._dispatch("READY", ready)
        await self._dispatch("GUILD_CREATE", self._guild_payload())
        backlog, self._backlog = self._backlog, []
        for event, payload in backlog:
            await self._dispatch(event, payload)

    async def _resume(self, conn: _Connection, data: dict[str, Any]) -> None:
        session = self._session
        if session is None or data.get("session_id") != session.id or data.get("token") != self.token:
            await conn.send({"op": 9, "d": False, "s": None, "t": None})  # invalid session: identify again
            return
        self.resumes += 1
        session.conn = conn
        last_seen = data.get("seq") or 0
        for payload in session.log:
            if payload["s"] > last_seen:
                await conn.send(payload)
        await self._dispatch("RESUMED", {})

    # -- internals: what test users do -------------------------------------------------------------

    def _interaction_payload(
        self, interaction: FakeInteraction, message: FakeMessage | None
    ) -> dict[str, Any]:
        user = self.users[interaction.user_id]
        payload: dict[str, Any] = {
            "id": str(interaction.id),
            "application_id": str(self.application_id),
            "type": interaction.type,
            "data": interaction.data,
            "token": interaction.token,
            "version": 1,
            "channel_id": str(interaction.channel_id),
            "channel": self._channel_payload(interaction.channel_id),
            "locale": user.locale,
            "app_permissions": str((1 << 41) - 1),
            "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
            "authorizing_integration_owners": {"0": str(self.guild_id)} if interaction.guild_id else {},
            "context": 0 if interaction.guild_id else 1,
        }
        if interaction.guild_id:
            payload["guild_id"] = str(interaction.guild_id)
            payload["guild_locale"] = "en-US"
            payload["member"] = self._member_payload(user)
        else:
            payload["user"] = user.payload()
        if message is not None:
            payload["message"] = self._message_payload(message)
        return payload

    async def _start_interaction(
        self,
        user: FakeDiscordUser,
        type_: int,
        channel_id: int,
        data: dict[str, Any],
        message: FakeMessage | None,
    ) -> FakeInteraction:
        interaction = FakeInteraction(
            id=self._snowflake(),
            token=secrets.token_urlsafe(24),
            type=type_,
            user_id=user.id,
            channel_id=channel_id,
            guild_id=self.guild_id if channel_id == self.guild_channel_id else None,
            data=data,
            message_id=message.id if message else None,
        )
        self.interactions[interaction.id] = interaction
        await self._dispatch("INTERACTION_CREATE", self._interaction_payload(interaction, message))
        return interaction

    async def _slash(
        self, user: FakeDiscordUser, name: str, options: dict[str, Any], in_guild: bool
    ) -> FakeInteraction:
        scope = self.guild_commands if in_guild and name in self.guild_commands else self.commands
        if name not in scope:
            raise LookupError(f"slash command {name!r} was never synced (have {sorted(self.commands)})")
        command = scope[name]
        declared = {o["name"]: o for o in command.get("options", [])}
        data: dict[str, Any] = {"id": command["id"], "name": name, "type": 1, "options": []}
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        for key, value in options.items():
            if key not in declared:
                raise LookupError(f"/{name} has no option {key!r} (has {sorted(declared)})")
            option_type = declared[key]["type"]
            if option_type == 11:  # attachment: (filename, bytes, content type)
                attachment = self._store_attachment(*value)
                payload = attachment.payload()
                data.setdefault("resolved", {}).setdefault("attachments", {})[payload["id"]] = payload
                value = payload["id"]
            data["options"].append({"name": key, "type": option_type, "value": value})
        channel_id = self.guild_channel_id if in_guild else user.dm_channel_id
        return await self._start_interaction(user, 2, channel_id, data, None)

    async def _component(
        self,
        user: FakeDiscordUser,
        message: FakeMessage,
        custom_id: str,
        component_type: int,
        values: list[str] | None,
    ) -> FakeInteraction:
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if component_type != 2:
            data["values"] = values or []
        return await self._start_interaction(user, 3, message.channel_id, data, message)

    async def _user_message(
        self, user: FakeDiscordUser, channel_id: int, text: str, attachments: list[Attachment]
    ) -> FakeMessage:
        message = FakeMessage(
            id=self._snowflake(),
            channel_id=channel_id,
            author_id=user.id,
            content=text,
            attachments=[self._store_attachment(*a) for a in attachments],
        )
        self.messages[message.id] = message
        payload = self._message_payload(message)
        if channel_id == self.guild_channel_id:
            payload["member"] = self._member_payload(None)
        await self._dispatch("MESSAGE_CREATE", payload)
        return message

    # -- internals: REST ---------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        # Interaction callbacks and webhooks carry their token in the URL; the rest needs the bot token.
        needs_auth = request.path.startswith(API) and not request.path.startswith(
            (API + "/interactions/", API + "/webhooks/")
        )
        if request.match_info.handler == self._not_found:
            needs_auth = False  # Discord answers 404 for unknown routes, token or not
        try:
            if needs_auth and request.headers.get("Authorization") != f"Bot {self.token}":
                raise DiscordError(401, "401: Unauthorized", 0)
            return await handler(request)
        except DiscordError as error:
            return _json({"message": error.message, "code": error.code}, status=error.status)
        finally:
            self._touch()

    async def _not_found(self, request: web.Request) -> web.Response:
        raise DiscordError(404, "404: Not Found", 0)

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _get_me(self, request: web.Request) -> web.Response:
        return _json(self._bot_payload())

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self.users.get(int(request.match_info["user"]))
        if user is None:
            raise DiscordError(404, "Unknown User", 10013)
        return _json(user.payload())

    async def _get_application(self, request: web.Request) -> web.Response:
        owner = {"id": "1", "username": "owner", "discriminator": "0", "global_name": None, "avatar": None}
        return _json(
            {
                "id": str(self.application_id),
                "name": "Likeness",
                "description": "",
                "icon": None,
                "bot_public": False,
                "bot_require_code_grant": False,
                "owner": owner,
                "verify_key": "0" * 64,
                "flags": 0,
                "bot": self._bot_payload(),
            }
        )

    async def _create_dm(self, request: web.Request) -> web.Response:
        recipient = int((await request.json())["recipient_id"])
        if recipient not in self.users:
            raise DiscordError(400, "Invalid Recipient(s)", 50033)
        return _json(self._channel_payload(self.users[recipient].dm_channel_id))

    def _command_scope(self, scope: str, request: web.Request) -> dict[str, dict[str, Any]]:
        if int(request.match_info["app"]) != self.application_id:
            raise DiscordError(403, "Missing Access", 50001)
        if scope == "guild" and int(request.match_info["guild"]) != self.guild_id:
            raise DiscordError(403, "Missing Access", 50001)
        return self.guild_commands if scope == "guild" else self.commands

    def _registered(self, scope: str, command: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        stored = {
            "type": 1,
            "options": [],
            "default_member_permissions": None,
            "nsfw": False,
            "description": "",
            **command,
            "id": old["id"] if old else str(self._snowflake()),
            "application_id": str(self.application_id),
            "version": str(self._snowflake()),
        }
        if scope == "guild":
            stored["guild_id"] = str(self.guild_id)
        return stored

    def _list_commands(self, scope: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            return _json(list(self._command_scope(scope, request).values()))

        return handler

    def _overwrite_commands(self, scope: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            commands = self._command_scope(scope, request)
            new = {
                c["name"]: self._registered(scope, c, commands.get(c["name"])) for c in await request.json()
            }
            commands.clear()
            commands.update(new)
            self.command_syncs += 1
            return _json(list(commands.values()))

        return handler

    def _upsert_command(self, scope: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            commands = self._command_scope(scope, request)
            command = await request.json()
            commands[command["name"]] = self._registered(scope, command, commands.get(command["name"]))
            return _json(commands[command["name"]], status=201)

        return handler

    async def _read_body(self, request: web.Request) -> tuple[dict[str, Any], dict[int, FakeAttachment]]:
        """JSON, or multipart with ``payload_json`` and ``files[n]``: (payload, {n: stored attachment})."""
        if not request.content_type.startswith("multipart/"):
            return await request.json(), {}
        payload: dict[str, Any] = {}
        files: dict[int, FakeAttachment] = {}
        reader = await request.multipart()
        async for part in reader:
            if part.name == "payload_json":
                payload = json.loads(await part.text())  # type: ignore[union-attr]
            elif part.name and part.name.startswith("files["):
                index = int(part.name[len("files[") : -1])
                data = await part.read()  # type: ignore[union-attr]
                files[index] = self._store_attachment(part.filename or f"file{index}", bytes(data))
        return payload, files

    @staticmethod
    def _attachments(
        payload: dict[str, Any], files: dict[int, FakeAttachment], current: list[FakeAttachment]
    ) -> list[FakeAttachment]:
        """New attachment list: ``payload["attachments"]`` names kept ones by id and new ones by index."""
        if "attachments" not in payload:
            return [*current, *files.values()]
        kept = {a.id: a for a in current}
        result = []
        for entry in payload["attachments"] or []:
            key = int(entry["id"])
            attachment = files.get(key) or kept.get(key)
            if attachment is None:
                raise DiscordError(400, "Invalid Form Body: unknown attachment", 50035)
            result.append(attachment)
        return result

    def _new_message(
        self,
        channel_id: int,
        payload: dict[str, Any],
        files: dict[int, FakeAttachment],
        interaction_id: int | None,
    ) -> FakeMessage:
        message = FakeMessage(
            id=self._snowflake(),
            channel_id=channel_id,
            author_id=self.bot_user_id,
            content=payload.get("content") or "",
            components=payload.get("components") or [],
            embeds=payload.get("embeds") or [],
            attachments=self._attachments(payload, files, []),
            flags=int(payload.get("flags") or 0),
            interaction_id=interaction_id,
        )
        if not (message.content or message.embeds or message.attachments or message.components):
            raise DiscordError(400, "Cannot send an empty message", 50006)
        self.messages[message.id] = message
        return message

    def _apply_edit(
        self, message: FakeMessage, payload: dict[str, Any], files: dict[int, FakeAttachment]
    ) -> None:
        if message.deleted:
            raise DiscordError(404, "Unknown Message", 10008)
        if "content" in payload:
            message.content = payload["content"] or ""
        if "components" in payload:
            message.components = payload["components"] or []
        if "embeds" in payload:
            message.embeds = payload["embeds"] or []
        message.attachments = self._attachments(payload, files, message.attachments)
        message.flags &= ~LOADING
        message.edited_timestamp = _now()

    def _channel_id(self, request: web.Request) -> int:
        channel_id = int(request.match_info["channel"])
        self._channel_payload(channel_id)  # 404 for unknown channels
        return channel_id

    def _channel_message(self, request: web.Request) -> FakeMessage:
        channel_id = self._channel_id(request)
        message = self.messages.get(int(request.match_info["message"]))
        if message is None or message.channel_id != channel_id or message.deleted:
            raise DiscordError(404, "Unknown Message", 10008)
        return message

    async def _get_channel(self, request: web.Request) -> web.Response:
        return _json(self._channel_payload(int(request.match_info["channel"])))

    async def _typing(self, request: web.Request) -> web.Response:
        self.typing.append(self._channel_id(request))
        return web.Response(status=204)

    async def _create_message(self, request: web.Request) -> web.Response:
        channel_id = self._channel_id(request)
        owner = self._dm_owner(channel_id)
        if owner is not None and not owner.dms_open:
            raise DiscordError(403, "Cannot send messages to this user", 50007)
        payload, files = await self._read_body(request)
        return _json(self._message_payload(self._new_message(channel_id, payload, files, None)))

    async def _get_message(self, request: web.Request) -> web.Response:
        return _json(self._message_payload(self._channel_message(request)))

    async def _edit_message(self, request: web.Request) -> web.Response:
        message = self._channel_message(request)
        if message.author_id != self.bot_user_id:
            raise DiscordError(403, "Cannot edit a message authored by another user", 50005)
        payload, files = await self._read_body(request)
        self._apply_edit(message, payload, files)
        return _json(self._message_payload(message))

    async def _delete_message(self, request: web.Request) -> web.Response:
        message = self._channel_message(request)
        if message.author_id != self.bot_user_id and self._dm_owner(message.channel_id) is not None:
            raise DiscordError(403, "Cannot execute action on a DM channel", 50003)
        message.deleted = True
        return web.Response(status=204)

    async def _download(self, request: web.Request) -> web.Response:
        attachment = self.attachments.get(int(request.match_info["attachment_id"]))
        if attachment is None or attachment.filename != request.match_info["filename"]:
            raise DiscordError(404, "404: Not Found", 0)
        self.downloads.append(attachment.url)
        return web.Response(body=attachment.data, headers={"Content-Type": attachment.content_type})

    # -- internals: interaction responses ----------------------------------------------------------

    def _interaction(self, request: web.Request) -> FakeInteraction:
        interaction = self.interactions.get(int(request.match_info["interaction"]))
        if interaction is None or interaction.token != request.match_info["token"]:
            raise DiscordError(404, "Unknown interaction", 10062)
        return interaction

    def _webhook_interaction(self, request: web.Request) -> FakeInteraction:
        token = request.match_info["token"]
        interaction = next((i for i in self.interactions.values() if i.token == token), None)
        if int(request.match_info["app"]) != self.application_id or interaction is None:
            raise DiscordError(404, "Unknown Webhook", 10015)
        if not interaction.acknowledged:
            raise DiscordError(404, "Unknown Webhook", 10015)  # Discord wants the callback first
        return interaction

    def _webhook_message(self, interaction: FakeInteraction, request: web.Request) -> FakeMessage:
        key = request.match_info["message"]
        message_id = interaction.original_message_id if key == "@original" else int(key)
        message = self.messages.get(message_id or 0)
        if message is None or message.deleted:
            raise DiscordError(404, "Unknown Message", 10008)
        if key != "@original" and message.interaction_id != interaction.id:
            raise DiscordError(404, "Unknown Message", 10008)
        return message

    def _record(
        self, interaction: FakeInteraction, kind: str, type_: int | None, message: FakeMessage | None
    ) -> None:
        interaction.responses.append(
            FakeResponse(
                kind=kind,
                type=type_,
                message_id=message.id if message else None,
                content=message.content if message else "",
                flags=message.flags if message else 0,
                components=list(message.components) if message else [],
                attachments=list(message.attachments) if message else [],
            )
        )

    async def _callback(self, request: web.Request) -> web.Response:
        interaction = self._interaction(request)
        body, files = await self._read_body(request)
        if interaction.acknowledged:
            raise DiscordError(400, "Interaction has already been acknowledged.", 40060)
        type_, data = int(body["type"]), body.get("data") or {}
        source = self.messages.get(interaction.message_id or 0)
        message: FakeMessage | None = None
        if type_ == MESSAGE:
            message = self._new_message(interaction.channel_id, data, files, interaction.id)
        elif type_ == DEFERRED_MESSAGE:
            flags = LOADING | (int(data.get("flags") or 0) & EPHEMERAL)
            message = FakeMessage(
                id=self._snowflake(),
                channel_id=interaction.channel_id,
                author_id=self.bot_user_id,
                flags=flags,
                interaction_id=interaction.id,
            )
            self.messages[message.id] = message
        elif type_ in (DEFERRED_UPDATE, UPDATE_MESSAGE):
            if source is None:
                raise DiscordError(400, "Interaction has no message to update", 50035)
            message = source
            if type_ == UPDATE_MESSAGE:
                self._apply_edit(message, data, files)
        interaction.acknowledged = True
        interaction.original_message_id = message.id if message else None
        self._record(interaction, "callback", type_, message)
        answer: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_id": str(message.id) if message else None,
                "response_message_loading": type_ == DEFERRED_MESSAGE,
                "response_message_ephemeral": bool(message and message.ephemeral),
            },
            "resource": {"type": type_},
        }
        if message is not None:
            answer["resource"]["message"] = self._message_payload(message)
        return _json(answer)

    async def _followup(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        payload, files = await self._read_body(request)
        message = self._new_message(interaction.channel_id, payload, files, interaction.id)
        self._record(interaction, "followup", None, message)
        if request.query.get("wait") in ("true", "1", "True"):
            return _json(self._message_payload(message))
        return web.Response(status=204)

    async def _webhook_get(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        return _json(self._message_payload(self._webhook_message(interaction, request)))

    async def _webhook_edit(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message = self._webhook_message(interaction, request)
        payload, files = await self._read_body(request)
        self._apply_edit(message, payload, files)
        self._record(interaction, "edit", None, message)
        return _json(self._message_payload(message))

    async def _webhook_delete(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message = self._webhook_message(interaction, request)
        message.deleted = True
        self._record(interaction, "delete", None, message)
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[FakeDiscord]:
    """A started fake Discord for one test; discord.py's API root and gateway are restored afterwards
    (the bot points them at the fake)."""
    import discord
    from discord.gateway import DiscordWebSocket

    server = FakeDiscord()
    await server.start()
    saved = discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    try:
        yield server
    finally:
        discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved
        await server.stop()
