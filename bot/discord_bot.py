"""Discord adapter: discord.py 2.x interactions and DMs → neutral events, neutral replies → REST calls.

Personal data stays in DMs. A slash command used in a server is acknowledged ephemerally and the
conversation continues in the user's DM; images posted in a server are never downloaded (by default the bot
does not even receive server messages). Buttons carry the conversation's own data as `custom_id` and are
handled statelessly in `on_interaction`, so they keep working after a restart; the conversation authorises
every press. Slash commands are synced only when their payload changed (a hash in the data dir), so restarts
do not spend Discord's daily command-update limit. discord.py retries 429s and 5xx answers itself.
The `[discord]` settings are read here (`DiscordSettings`); `bot.platforms` lists this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import discord
from discord import app_commands

from bot.discord_connect import ApiGatewayMixin, configure_api_root
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
from bot.flow import COMMANDS, Conversation
from bot.texts import DEFAULT_LANGUAGE, Texts
from engine.settings import Url

log = logging.getLogger(__name__)

MAX_CONTENT = 2000  # characters per message
MAX_FILES = 10  # attachments per message
MAX_ROW = 5  # buttons per action row
MAX_ROWS = 5  # action rows per message
MAX_LABEL = 80
DMS_CLOSED = 50007  # "Cannot send messages to this user"
SYNC_FILE = "discord-commands.sha"
CONNECT_TIMEOUT = 60.0


@dataclass(frozen=True)
class DiscordSettings:
    """The `[discord]` section (LIKENESS_DISCORD_*); config/default.toml documents each key."""

    token: str
    api_url: Url


SETTINGS = DiscordSettings


def frontend(settings: DiscordSettings, conversation: Conversation) -> DiscordFrontend | None:
    """The Discord front-end, or None when no token is set."""
    return DiscordFrontend(settings, conversation) if settings.token else None


def default_intents() -> discord.Intents:
    """Guilds (channel cache) and DMs only: server messages, and their images, never reach the bot."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.dm_messages = True
    return intents


def split_text(text: str, limit: int = MAX_CONTENT) -> list[str]:
    """Split at line breaks into pieces of at most `limit` characters (hard cut for one very long line)."""
    pieces: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            if current:
                pieces.append(current)
                current = ""
            pieces.append(line[:limit])
            line = line[limit:]
        if len(current) + len(line) > limit:
            pieces.append(current)
            current = ""
        current += line
    if current:
        pieces.append(current)
    return [piece.rstrip("\n") for piece in pieces if piece.strip()]


def views(buttons: tuple[tuple[Button, ...], ...]) -> list[discord.ui.View]:
    """The button rows as views of at most 5 rows of 5; the conversation's rows are kept where they fit.

    The views are only rendered: they are stopped, so discord.py does not keep them in memory; presses are
    handled by `custom_id` in `on_interaction`.
    """
    rows = [row[i : i + MAX_ROW] for row in buttons for i in range(0, len(row), MAX_ROW)]
    result = []
    for start in range(0, len(rows), MAX_ROWS):
        view = discord.ui.View(timeout=None)
        for index, row in enumerate(rows[start : start + MAX_ROWS]):
            for button in row:
                view.add_item(
                    discord.ui.Button(label=button.label[:MAX_LABEL], custom_id=button.data, row=index)
                )
        view.stop()
        result.append(view)
    return result


def attachments(reply: Reply) -> list[tuple[str, bytes]]:
    names = reply.image_names or tuple(f"portrait-{n + 1}.png" for n in range(len(reply.images)))
    clip = [reply.animation] if reply.animation else []  # Discord plays an MP4 attachment inline
    return [*reply.files, *zip(names, reply.images, strict=True), *clip]


def to_files(named: list[tuple[str, bytes]]) -> list[discord.File]:
    return [discord.File(io.BytesIO(data), filename=name) for name, data in named]


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def is_dms_closed(error: BaseException) -> bool:
    return isinstance(error, discord.Forbidden) and error.code == DMS_CLOSED


class DiscordMessenger:
    """The Messenger the conversation talks to, for Discord. `chat.chat_id` is a channel id (a DM)."""

    platform = "discord"
    message_lifetime = math.inf  # a bot may delete its own DM messages at any age

    def __init__(self, client: discord.Client, texts: Texts):
        self.client = client
        self.texts = texts  # speaks the language of the event being answered

    def channel(self, chat: Chat) -> discord.PartialMessageable:
        return self.client.get_partial_messageable(int(chat.chat_id))

    async def send(self, chat: Chat, reply: Reply, *, interaction: object | None = None) -> list[str]:
        """Text (split at 2000 characters), attachments (10 a message) and buttons (25 a message).

        Outside a DM, an answer to an interaction is only shown to the user who triggered it.
        """
        if isinstance(interaction, discord.Interaction) and (reply.ephemeral or not chat.private):
            for piece in split_text(reply.text) or ["…"]:
                await interaction.followup.send(piece, ephemeral=True)
            return []
        channel = self.channel(chat)
        texts = split_text(reply.text)
        files = list(batches(attachments(reply), MAX_FILES))
        button_views = views(reply.buttons)
        sent: list[discord.Message] = []
        for piece in texts[:-1]:
            sent.append(await channel.send(piece))
        first_files = files.pop(0) if files else []
        first_view = button_views.pop(0) if button_views else None
        if texts or first_files or first_view:
            options: dict[str, Any] = {}
            if first_files:
                options["files"] = to_files(first_files)
            if first_view:
                options["view"] = first_view
            content = texts[-1] if texts else ("⬆️" if not first_files else None)
            sent.append(await channel.send(content, **options))
        for batch in files:
            sent.append(await channel.send(files=to_files(batch)))
        for view in button_views:
            sent.append(await channel.send("⬆️", view=view))
        return [str(message.id) for message in sent]

    async def edit(self, chat: Chat, message_id: str, reply: Reply) -> None:
        rendered = views(reply.buttons)
        message = self.channel(chat).get_partial_message(int(message_id))
        await message.edit(content=reply.text[:MAX_CONTENT], view=rendered[0] if rendered else None)

    async def delete(self, chat: Chat, message_id: str) -> bool:
        try:
            await self.channel(chat).get_partial_message(int(message_id)).delete()
        except (discord.NotFound, discord.Forbidden):
            return False  # already gone, or not ours
        return True

    async def acknowledge(self, event: Event, text: str = "") -> None:
        """Presses are deferred on arrival (Discord wants an answer within 3 s); `text` follows ephemerally."""
        interaction = getattr(event, "interaction", None)
        if text and isinstance(interaction, discord.Interaction):
            await interaction.followup.send(text, ephemeral=True)

    def explain(self, error: Exception) -> str | None:
        """Closed DMs: how to open them (the bot handles photos only there)."""
        return self.texts.discord("dms_closed") if is_dms_closed(error) else None


def in_bot_dm(interaction: discord.Interaction) -> bool:
    """The interaction happened in the user's DM with the bot (not a server, not a group DM)."""
    if interaction.context.dm_channel:
        return True
    return interaction.guild_id is None and isinstance(interaction.channel, discord.DMChannel)


def dm_chat(channel_id: int, user_id: int, language: str = "") -> Chat:
    return Chat("discord", str(channel_id), str(user_id), True, language=language)


def locale_of(interaction: discord.Interaction) -> str:
    """The user's Discord client language ('es-ES', 'de'); '' if the interaction has none."""
    return str(getattr(interaction.locale, "value", interaction.locale or ""))


class DescriptionTranslator(app_commands.Translator):
    """Command and option descriptions in every language Discord offers that we have texts for; names stay
    English."""

    def __init__(self, texts: Texts):
        self.texts = texts

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContext,
    ) -> str | None:
        code = self.texts.resolve(locale.value)
        if code == DEFAULT_LANGUAGE:
            return None
        if context.location is app_commands.TranslationContextLocation.command_description:
            return self.texts[code].command(string.extras["command"])
        if context.location is app_commands.TranslationContextLocation.parameter_description:
            return self.texts[code].discord(string.extras["parameter"])
        return None


async def by_dm_user(interaction: discord.Interaction) -> bool:
    """The interaction's user is the user of the DM it happened in (not someone pressing in another's DM).

    The DM's recipient comes with the interaction where Discord sends it; otherwise the presser's own DM
    channel with the bot (cached by discord.py) must be this channel.
    """
    recipient = getattr(interaction.channel, "recipient", None)
    if recipient is not None:
        return recipient.id == interaction.user.id
    try:
        return (await interaction.user.create_dm()).id == interaction.channel_id
    except discord.HTTPException:
        return False  # cannot tell: treat the press as someone else's


def incoming(attachment: discord.Attachment) -> IncomingPhoto:
    """An attachment, not yet downloaded: the conversation reads it only after consent, in a DM."""
    return IncomingPhoto(size=attachment.size, download=attachment.read, as_file=True)


class LikenessClient(ApiGatewayMixin, discord.Client):
    """The gateway client; every event goes to the front-end."""

    def __init__(self, frontend: DiscordFrontend, intents: discord.Intents, **options: object) -> None:
        super().__init__(intents=intents, **options)
        self.frontend = frontend
        self.tree = app_commands.CommandTree(self)
        self.connected = asyncio.Event()

    async def setup_hook(self) -> None:
        await self.tree.set_translator(DescriptionTranslator(self.frontend.conversation.t))
        await self.frontend.sync_commands()

    async def on_connect(self) -> None:
        self.connected.set()

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        if interaction.type == discord.InteractionType.component:
            await self.frontend.on_press(interaction)

    async def on_message(self, message: discord.Message) -> None:
        if not message.author.bot:
            await self.frontend.on_message(message)


class DiscordFrontend:
    """Builds the client and the slash commands, and turns interactions and DMs into neutral events."""

    def __init__(
        self,
        settings: DiscordSettings,
        conversation: Conversation,
        *,
        intents: discord.Intents | None = None,
        guild_ready_timeout: float = 2.0,
    ):
        configure_api_root(settings.api_url)
        self.token = settings.token
        self.conversation = conversation
        self.dispatch = conversation.dispatch
        self.client = LikenessClient(
            self, intents or default_intents(), guild_ready_timeout=guild_ready_timeout
        )
        self.messenger = DiscordMessenger(self.client, conversation.t)
        self.sync_file: Path = conversation.engine.settings.data_dir / SYNC_FILE
        for name in COMMANDS:
            self.client.tree.add_command(self._slash_command(name))
        self._task: asyncio.Task | None = None

    # -- slash commands ----------------------------------------------------------------------------------
    def _slash_command(self, name: str) -> app_commands.Command:
        async def callback(interaction: discord.Interaction) -> None:
            await self.on_command(interaction, name)

        english = self.conversation.t.default.command(name)
        description = app_commands.locale_str(english, command=name)  # localised by DescriptionTranslator

        async def start_callback(interaction: discord.Interaction, code: str | None = None) -> None:
            await self.on_command(interaction, name, code or "")

        if name == "start":  # `/start code:<invite code>`
            english_code = self.conversation.t.default.discord("start_code")
            code = app_commands.locale_str(english_code, parameter="start_code")  # localised, as above
            callback = app_commands.describe(code=code)(start_callback)
        command = app_commands.Command(name=name, description=description, callback=callback)
        command = app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)(command)
        return app_commands.allowed_installs(guilds=True, users=True)(command)

    def commands_hash(self) -> str:
        """Of the commands and their descriptions in every language: a changed translation syncs again."""
        payload = [command.to_dict(self.client.tree) for command in self.client.tree.get_commands()]
        descriptions = {
            code: [language.command(name) for name in COMMANDS]
            for code, language in self.conversation.t.languages.items()
        }
        blob = json.dumps(
            {"application": self.client.application_id, "commands": payload, "descriptions": descriptions},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    async def sync_commands(self) -> None:
        """Register the commands with Discord once per change, not on every start (a daily limit applies)."""
        digest = self.commands_hash()
        if self.sync_file.exists() and self.sync_file.read_text().strip() == digest:
            return
        await self.client.tree.sync()
        self.sync_file.write_text(digest + "\n")
        log.info("discord slash commands synced")

    async def on_command(self, interaction: discord.Interaction, name: str, args: str = "") -> None:
        """Acknowledge at once (privately), then run the command in the user's DM."""
        await interaction.response.defer(ephemeral=True, thinking=True)

        async def answer(text: str) -> None:  # the private answer to the command, e.g. an apology
            await interaction.edit_original_response(content=text)

        # In the user's own DM with the bot, answer there; anywhere else, continue in that DM.
        in_dm = in_bot_dm(interaction) and await by_dm_user(interaction)
        try:
            channel_id = interaction.channel_id if in_dm else (await interaction.user.create_dm()).id
        except discord.HTTPException:
            log.warning("a discord DM channel could not be opened")
            here = Chat("discord", str(interaction.channel_id), str(interaction.user.id), False)
            await answer(self.conversation.t[await self.conversation.language_for(here)]("internal_error"))
            return
        chat = dm_chat(channel_id, interaction.user.id, locale_of(interaction))
        if not await self.dispatch(Command(chat, name, args), apologise=answer):
            return
        if in_dm:
            await interaction.delete_original_response()  # the answer is right below
        else:
            texts = self.conversation.t[await self.conversation.language_for(chat)]  # after any /language
            await interaction.edit_original_response(content=texts.discord("continue_in_dm"))

    # -- buttons -----------------------------------------------------------------------------------------
    async def on_press(self, interaction: discord.Interaction) -> None:
        """Any button, from any message and any time: its custom_id is the conversation's (untrusted) data."""
        await interaction.response.defer()
        data = (interaction.data or {}).get("custom_id", "")
        private = in_bot_dm(interaction)
        chat = Chat(
            "discord",
            str(interaction.channel_id),
            str(interaction.user.id),
            private,
            by_chat_user=not private or await by_dm_user(interaction),
            language=locale_of(interaction),
        )
        message_id = str(interaction.message.id) if interaction.message else None
        await self.dispatch(ButtonPress(chat, str(data), message_id, interaction=interaction))

    # -- messages ----------------------------------------------------------------------------------------
    async def on_message(self, message: discord.Message) -> None:
        """DMs: photos (all attachments of a message are one event) or text. Servers: never downloaded."""
        private = message.guild is None and isinstance(message.channel, discord.DMChannel)
        chat = Chat("discord", str(message.channel.id), str(message.author.id), private)
        if message.attachments:
            photos = tuple(incoming(attachment) for attachment in message.attachments)
            if not private:
                photos = tuple(IncomingPhoto(size=p.size, download=_refuse, as_file=True) for p in photos)
            await self.dispatch(PhotoMessage(chat, photos))
        elif private and message.content.startswith("/"):  # typed, e.g. `/ops` (not a slash command)
            name, _, args = message.content[1:].partition(" ")
            await self.dispatch(Command(chat, name.lower(), args.strip()))
        elif private:
            await self.dispatch(TextMessage(chat, message.content))

    # -- lifecycle ---------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while the gateway connection is up (for /healthz)."""
        ws = self.client.ws
        return not self.client.is_closed() and ws is not None and ws.open

    async def start(self) -> None:
        """Log in (syncing commands if they changed) and connect; returns once the gateway is identified."""
        self._task = asyncio.create_task(self.client.start(self.token))
        connected = asyncio.create_task(self.client.connected.wait())
        done, _ = await asyncio.wait(
            {self._task, connected}, timeout=CONNECT_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        if connected not in done:
            connected.cancel()
            if self._task in done:
                self._task.result()  # the login or connection error
            raise TimeoutError("could not connect to the Discord gateway")
        log.info("discord front-end connected")

    async def stop(self) -> None:
        await self.client.close()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task


async def _refuse() -> bytes:
    raise PermissionError("images posted in a server are never downloaded")
