"""A real discord.py client against tests/fake_discord.py, over real HTTP and a real websocket."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.gateway import DiscordWebSocket

from bot.discord_connect import ApiGatewayMixin, configure_api_root, rest_base
from tests.fake_discord import FakeDiscord

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class ConsentView(discord.ui.View):
    """Persistent: survives restarts because the button has a fixed custom_id and no timeout."""

    def __init__(self, bot: TinyBot) -> None:
        super().__init__(timeout=None)
        self.bot = bot

    @discord.ui.button(label="I agree", custom_id="likeness:consent", style=discord.ButtonStyle.success)
    async def agree(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        self.bot.pressed.append((interaction.user.id, button.custom_id))
        await interaction.response.edit_message(content="Thanks, consent noted.", view=None)


class TinyBot(ApiGatewayMixin, discord.Client):
    """Just enough bot to exercise every route the Likeness adapter relies on."""

    def __init__(self, intents: discord.Intents) -> None:
        super().__init__(intents=intents, guild_ready_timeout=0.05)
        self.tree = app_commands.CommandTree(self)
        self.ready = asyncio.Event()
        self.pressed: list[tuple[int, str | None]] = []
        self.seen: list[discord.Message] = []
        self.downloaded: list[bytes] = []
        self.picked: list[list[str]] = []

        @self.tree.command(description="Say hello privately")
        async def hello(interaction: discord.Interaction, name: str) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            await interaction.followup.send(f"Hello {name}", ephemeral=True)

        @self.tree.command(description="Ask for consent in DM")
        async def start(interaction: discord.Interaction) -> None:
            await interaction.user.send("May I use your photos?", view=ConsentView(self))
            await interaction.response.send_message(
                "Check your DMs.", ephemeral=interaction.guild is not None
            )

        @self.tree.command(description="Upload a photo")
        async def upload(interaction: discord.Interaction, photo: discord.Attachment) -> None:
            await interaction.response.defer(thinking=True)
            data = await photo.read()
            thumb = discord.File(io.BytesIO(data[:16]), filename="thumb.png")
            await interaction.edit_original_response(
                content=f"{photo.filename}: {photo.size} bytes", attachments=[thumb]
            )
            style = discord.ui.Select(
                custom_id="likeness:style", options=[discord.SelectOption(label="oil", value="oil")]
            )

            async def picked(choice: discord.Interaction) -> None:
                self.picked.append(style.values)
                await choice.response.defer()
                await choice.delete_original_response()

            style.callback = picked
            await interaction.followup.send("Pick a style", view=discord.ui.View().add_item(style))

    async def setup_hook(self) -> None:
        self.add_view(ConsentView(self))
        await self.tree.sync()

    async def on_ready(self) -> None:
        self.ready.set()

    async def on_message(self, message: discord.Message) -> None:
        if message.author.id == self.user.id:  # type: ignore[union-attr]
            return
        self.seen.append(message)
        if message.guild is None and message.attachments:
            data = await message.attachments[0].read()
            self.downloaded.append(data)
            echo = discord.File(io.BytesIO(data[::-1]), filename="echo.bin")
            await message.channel.send(f"got {len(data)} bytes", file=echo)


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    saved = discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    configure_api_root(server.api_url)
    yield server
    discord.http.Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = saved
    await server.stop()


async def run_bot(fake: FakeDiscord, intents: discord.Intents) -> tuple[TinyBot, asyncio.Task[None]]:
    bot = TinyBot(intents)
    task = asyncio.create_task(bot.start(fake.token))
    await fake.wait_for(lambda: task.done() or fake.connected)
    if task.done():
        task.result()  # surface the startup error
    return bot, task


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[TinyBot]:
    intents = discord.Intents.default()
    intents.message_content = True
    client, task = await run_bot(fake, intents)
    yield client
    await client.close()
    await task  # a clean close ends start() without an exception


async def test_connects_to_the_gateway_the_api_names(fake: FakeDiscord, bot: TinyBot) -> None:
    await asyncio.wait_for(bot.ready.wait(), 10)
    assert ("GET", "/api/v10/gateway/bot") in fake.requests
    assert fake.gateway_queries == [{"v": "10", "encoding": "json", "compress": "zlib-stream"}]
    assert str(bot.ws.gateway) == fake.gateway_url  # resume_gateway_url from READY
    assert bot.user is not None and bot.user.id == fake.bot_user_id
    assert bot.application_id == fake.application_id
    assert fake.command_syncs == 1
    assert sorted(fake.commands) == ["hello", "start", "upload"]
    assert [o["name"] for o in fake.commands["hello"]["options"]] == ["name"]
    assert bot.get_guild(fake.guild_id) is not None


async def test_slash_command_deferred_ephemeral_then_followup(fake: FakeDiscord, bot: TinyBot) -> None:
    alex = fake.user(1001)
    interaction = await alex.slash("hello", {"name": "Sam"})
    responses = await fake.wait_for(
        lambda: len(fake.interaction_responses(interaction)) >= 2 and interaction.responses
    )
    callback, followup = responses
    assert (callback.kind, callback.type, callback.ephemeral) == ("callback", 5, True)
    assert (followup.kind, followup.content, followup.ephemeral) == ("followup", "Hello Sam", True)


async def test_attachment_option_edit_original_select_and_delete(fake: FakeDiscord, bot: TinyBot) -> None:
    alex = fake.user(1001)
    upload = await alex.slash("upload", {"photo": ("face.png", PNG, "image/png")})
    callback, edit, followup = await fake.wait_for(lambda: len(upload.responses) == 3 and upload.responses)
    assert (callback.type, callback.content, edit.kind) == (5, "", "edit")
    assert edit.message_id == callback.message_id and edit.content == f"face.png: {len(PNG)} bytes"
    assert [a.data for a in edit.attachments] == [PNG[:16]]
    assert len(fake.downloads) == 1
    menu = fake.message(followup.message_id)  # type: ignore[arg-type]
    assert menu.custom_ids == ["likeness:style"] and not menu.ephemeral

    pick = await alex.press(menu, "likeness:style", values=["oil"])
    await fake.wait_for(lambda: len(pick.responses) == 2)
    assert bot.picked == [["oil"]]
    assert [r.kind for r in pick.responses] == ["callback", "delete"]
    assert fake.deleted_messages == [menu]
    assert [m.id for m in fake.dm_messages(alex.id)] == [callback.message_id]


async def test_unknown_slash_command_is_refused_by_the_fake(fake: FakeDiscord, bot: TinyBot) -> None:
    with pytest.raises(LookupError, match="never synced"):
        await fake.user(1001).slash("nope")


async def test_dm_with_persistent_view_and_button_press(fake: FakeDiscord, bot: TinyBot) -> None:
    alex = fake.user(1001)
    start = await alex.slash("start", in_guild=True)
    await fake.wait_for(lambda: start.responses)
    dms = fake.dm_messages(alex.id)
    assert dms[0].content == "May I use your photos?"
    assert dms[0].custom_ids == ["likeness:consent"]
    reply = fake.guild_messages()[0]
    assert reply.content == "Check your DMs." and reply.ephemeral

    with pytest.raises(LookupError, match="no component"):
        await alex.press(dms[0], "I refuse")
    press = await alex.press(dms[0], "I agree")
    await fake.wait_for(lambda: press.responses)
    assert bot.pressed == [(alex.id, "likeness:consent")]
    assert press.responses[0].type == 7
    assert fake.message(dms[0].id).content == "Thanks, consent noted."
    assert fake.message(dms[0].id).components == []


async def test_persistent_view_answers_presses_on_any_message(fake: FakeDiscord, bot: TinyBot) -> None:
    """Why handlers must check state: a persistent custom_id matches presses from messages never sent."""
    press = await fake.user(1001).forge_press("likeness:consent", message_id=4242)
    await fake.wait_for(lambda: press.responses)
    assert bot.pressed == [(1001, "likeness:consent")]
    assert fake.dm_messages(1001) == []


async def test_dm_attachment_is_downloaded_and_a_file_sent_back(fake: FakeDiscord, bot: TinyBot) -> None:
    alex = fake.user(1001)
    sent = await alex.send_dm("my photo", attachments=[("face.png", PNG, "image/png")])
    reply = (await fake.wait_for(lambda: fake.dm_messages(alex.id)))[0]
    assert bot.downloaded == [PNG]
    assert fake.downloads == [sent.attachments[0].url]
    assert bot.seen[0].attachments[0].size == len(PNG)
    assert bot.seen[0].content == "my photo"
    assert reply.content == f"got {len(PNG)} bytes"
    assert [(a.filename, a.data) for a in reply.attachments] == [("echo.bin", PNG[::-1])]


async def test_guild_message_attachments_need_the_message_content_intent(fake: FakeDiscord) -> None:
    bot, task = await run_bot(fake, discord.Intents.default())  # no message_content
    try:
        alex = fake.user(1001)
        await alex.post_in_guild("look", attachments=[("face.png", PNG, "image/png")])
        await alex.send_dm("hi")
        await fake.wait_for(lambda: len(bot.seen) == 2)
        in_guild, in_dm = bot.seen
        assert in_guild.guild is not None and in_guild.guild.id == fake.guild_id
        assert (in_guild.content, in_guild.attachments) == ("", [])
        assert in_dm.content == "hi"
    finally:
        await bot.close()
        await task


async def test_guild_message_with_attachment(fake: FakeDiscord, bot: TinyBot) -> None:
    await fake.user(1001).post_in_guild("look", attachments=[("face.png", PNG, "image/png")])
    message = (await fake.wait_for(lambda: bot.seen))[0]
    assert isinstance(message.channel, discord.TextChannel) and message.channel.id == fake.guild_channel_id
    assert await message.attachments[0].read() == PNG


async def test_closed_dms_answer_403_cannot_send(fake: FakeDiscord, bot: TinyBot) -> None:
    alex = fake.user(1001)
    alex.close_dms()
    user = await bot.fetch_user(alex.id)
    with pytest.raises(discord.Forbidden) as raised:
        await user.send("hello?")
    assert raised.value.code == 50007
    assert fake.dm_messages(alex.id) == []


async def test_resumes_after_reconnect_request(fake: FakeDiscord, bot: TinyBot) -> None:
    await fake.force_reconnect()
    await fake.wait_for(lambda: fake.resumes == 1 and fake.connected)
    interaction = await fake.user(1001).slash("hello", {"name": "again"})
    await fake.wait_for(lambda: len(interaction.responses) >= 2)
    assert fake.identifies == 1
    assert interaction.responses[1].content == "Hello again"


async def test_bad_token_and_unknown_route(fake: FakeDiscord) -> None:
    client = discord.Client(intents=discord.Intents.default())
    with pytest.raises(discord.LoginFailure):
        await client.login("not-the-token")
    await client.close()
    async with aiohttp.ClientSession() as session, session.get(fake.api_url + "/v10/nowhere") as response:
        assert response.status == 404
        assert await response.json() == {"message": "404: Not Found", "code": 0}


def test_rest_base_rejects_versioned_or_bare_urls() -> None:
    assert rest_base("https://discord.com/api/") == "https://discord.com/api/v10"
    with pytest.raises(ValueError):
        rest_base("https://discord.com/api/v10")
    with pytest.raises(ValueError):
        rest_base("discord.com/api")
