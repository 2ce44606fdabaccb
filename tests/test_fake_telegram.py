"""The fake Telegram server speaks python-telegram-bot's wire format.

A real PTB Application long-polls the fake over HTTP and runs a small echo bot; the tests act as users
and check what reached the "Telegram" side.
"""

import asyncio
import io

import aiohttp
import pytest
from PIL import Image
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, InputMediaPhoto, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest, InvalidToken, NetworkError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fake_telegram import DOWNLOAD_LIMIT, FakeTelegram

ALICE = 4242


def jpeg(width: int = 1000, height: int = 800, color: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, "JPEG")
    return out.getvalue()


# ------------------------------------------------------------------------------------------ echo bot


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet with an inline keyboard."""
    keyboard = InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton("Agree", callback_data="agree"),
                InlineKeyboardButton("Later", callback_data="later"),
            ]
        ]
    )
    await update.effective_message.reply_text("Welcome!", reply_markup=keyboard)


async def button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer the press and replace the keyboard with the choice."""
    query = update.callback_query
    context.bot_data.setdefault("callbacks", []).append(query.data)
    await query.answer("Thanks")
    await query.edit_message_text(f"You chose {query.data}")


async def photo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Download the largest size of a private photo and echo its size; point groups to the DM."""
    message = update.effective_message
    if update.effective_chat.type != "private":
        await message.reply_text("Send photos in a private chat, please.")
        return
    context.bot_data.setdefault("album", []).append(message.media_group_id)
    file = await message.photo[-1].get_file()
    data = await file.download_as_bytearray()
    await message.reply_text(f"photo of {len(data)} bytes")


async def document(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Try to fetch a document, reporting the server's refusal."""
    try:
        await update.effective_message.document.get_file()
    except BadRequest as error:
        await update.effective_message.reply_text(f"refused: {error.message}")


async def album(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Send two protected photos as a media group."""
    media = [
        InputMediaPhoto(jpeg(color=(0, 0, 255)), caption="first"),
        InputMediaPhoto(jpeg(color=(0, 255, 0))),
    ]
    await context.bot.send_media_group(update.effective_chat.id, media, protect_content=True)


async def send_doc(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Send a text document."""
    await update.effective_message.reply_document(b"hello file", filename="report.txt", caption="your report")


async def temporary(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Send a message, then delete it and the command that asked for it."""
    sent = await update.effective_message.reply_text("temporary")
    await sent.delete()
    await update.effective_message.delete()


async def commands(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Set the command menu and read it back."""
    await context.bot.set_my_commands([("start", "Begin"), ("forget", "Delete everything")])
    names = [command.command for command in await context.bot.get_my_commands()]
    await update.effective_message.reply_text("commands: " + ", ".join(names))


async def record_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Keep handler errors for the tests to inspect."""
    context.bot_data.setdefault("errors", []).append(context.error)


def build_app(fake: FakeTelegram) -> Application:
    app = (
        ApplicationBuilder()
        .token(fake.token)
        .base_url(fake.base_url + "/bot")
        .base_file_url(fake.base_url + "/file/bot")
        .rate_limiter(AIORateLimiter(max_retries=3))
        .build()
    )
    app.add_handler(CommandHandler("start", start))
    app.add_handler(CommandHandler("album", album))
    app.add_handler(CommandHandler("doc", send_doc))
    app.add_handler(CommandHandler("temp", temporary))
    app.add_handler(CommandHandler("commands", commands))
    app.add_handler(CallbackQueryHandler(button))
    app.add_handler(MessageHandler(filters.PHOTO, photo))
    app.add_handler(MessageHandler(filters.Document.ALL, document))
    app.add_error_handler(record_error)
    return app


@pytest.fixture
async def fake():
    async with FakeTelegram() as server:
        yield server


@pytest.fixture
async def app(fake: FakeTelegram):
    application = build_app(fake)
    await application.initialize()
    await application.start()
    await application.updater.start_polling(poll_interval=0, timeout=1)
    yield application
    await application.updater.stop()
    await application.stop()
    await application.shutdown()


# ------------------------------------------------------------------------------------------ tests


async def test_start_keyboard_press_answers_and_edits(fake: FakeTelegram, app: Application) -> None:
    alice = fake.user(ALICE)
    await alice.send_text("/start")
    welcome = await fake.wait_for_message(ALICE, "Welcome")
    assert welcome.button_texts == ["Agree", "Later"]

    query_id = await alice.press(welcome, "Agree")
    edited = await fake.wait_for_message(ALICE, "You chose agree")

    assert edited.message_id == welcome.message_id
    assert edited.edits[0]["text"] == "Welcome!"
    assert edited.reply_markup is None
    assert fake.answered_callbacks[0]["callback_query_id"] == query_id
    assert fake.answered_callbacks[0]["text"] == "Thanks"
    with pytest.raises(LookupError):
        await alice.press(edited, "Later")  # the keyboard is gone


async def test_photo_is_downloaded_at_full_size(fake: FakeTelegram, app: Application) -> None:
    image = jpeg(1000, 800)
    sent = await fake.user(ALICE).send_photo(image)

    await fake.wait_for_message(ALICE, f"photo of {len(image)} bytes")

    largest = sent.photo_sizes[-1]
    assert (largest["width"], largest["height"]) == (1000, 800)
    assert [size["width"] for size in sent.photo_sizes] == [90, 320, 800, 1000]
    assert fake.calls_to("getFile") == [{"file_id": largest["file_id"]}]
    assert fake.downloads == [fake.file(largest["file_id"]).file_path]
    assert not fake.downloads[0].startswith("http")


async def test_album_arrives_as_separate_updates(fake: FakeTelegram, app: Application) -> None:
    await fake.user(ALICE).send_album([jpeg(color=(i * 60, 0, 0)) for i in range(3)])

    await fake.wait_for(lambda f: len(f.messages(ALICE)) == 3)

    group_ids = app.bot_data["album"]
    assert len(group_ids) == 3
    assert len(set(group_ids)) == 1
    assert group_ids[0] is not None


async def test_media_group_upload_with_protect_content(fake: FakeTelegram, app: Application) -> None:
    await fake.user(ALICE).send_text("/album")

    await fake.wait_for(lambda f: len([m for m in f.messages(ALICE) if m.photo]) == 2)
    photos = [m for m in fake.messages(ALICE) if m.photo]

    assert [m.protect_content for m in photos] == [True, True]
    assert photos[0].media_group_id == photos[1].media_group_id is not None
    assert photos[0].caption == "first"
    assert photos[0].photo == jpeg(color=(0, 0, 255))
    assert photos[1].photo == jpeg(color=(0, 255, 0))


async def test_send_document(fake: FakeTelegram, app: Application) -> None:
    await fake.user(ALICE).send_text("/doc")

    sent = await fake.wait_for_message(ALICE, "your report")

    assert sent.document == b"hello file"
    assert sent.document_name == "report.txt"
    assert sent.mime_type == "text/plain"


async def test_delete_message_removes_bot_and_user_messages(fake: FakeTelegram, app: Application) -> None:
    command = await fake.user(ALICE).send_text("/temp")

    await fake.wait_for(lambda f: len(f.deleted) == 2)

    assert fake.messages(ALICE) == []
    assert fake.user_messages(ALICE) == []
    assert (ALICE, command.message_id) in fake.deleted
    assert fake.calls_to("sendMessage")[0]["text"] == "temporary"


async def test_set_and_get_my_commands(fake: FakeTelegram, app: Application) -> None:
    await fake.user(ALICE).send_text("/commands")

    await fake.wait_for_message(ALICE, "commands: start, forget")

    assert [c["command"] for c in fake.calls_to("setMyCommands")[0]["commands"]] == ["start", "forget"]


async def test_429_is_retried_by_aio_rate_limiter(fake: FakeTelegram, app: Application) -> None:
    fake.fail_next("sendMessage", times=1, status=429, retry_after=1)
    await fake.user(ALICE).send_text("/start")

    await fake.wait_for_message(ALICE, "Welcome")

    assert fake.rejected == [("sendMessage", 429)]
    assert len(fake.calls_to("sendMessage")) == 2


async def test_server_error_reaches_the_bot_as_network_error(fake: FakeTelegram, app: Application) -> None:
    fake.fail_next("sendMessage", times=1, status=502)
    alice = fake.user(ALICE)
    await alice.send_text("/start")
    errors = await fake.wait_for(lambda f: app.bot_data.get("errors"))
    assert isinstance(errors[0], NetworkError)
    assert fake.messages(ALICE) == []

    await alice.send_text("/start")
    await fake.wait_for_message(ALICE, "Welcome")


async def test_get_file_refuses_files_over_20_mb(fake: FakeTelegram, app: Application) -> None:
    await fake.user(ALICE).send_document(bytes(DOWNLOAD_LIMIT + 1), "huge.bin")

    await fake.wait_for_message(ALICE, "refused: File is too big")

    assert fake.downloads == []


async def test_group_photo_has_group_chat_type(fake: FakeTelegram, app: Application) -> None:
    friends = fake.group(-100, "Friends")
    await friends.send_photo(fake.user(ALICE), jpeg())

    await fake.wait_for_message(-100, "private chat")

    assert fake.calls_to("getFile") == []


async def test_forged_callback_reaches_the_bot(fake: FakeTelegram, app: Application) -> None:
    await fake.user(ALICE).forge_callback("delete:someone-else", message_id=999)

    await fake.wait_for(lambda f: app.bot_data.get("errors"))

    assert app.bot_data["callbacks"] == ["delete:someone-else"]
    assert app.bot_data["errors"][0].message == "Message to edit not found"


async def test_telegram_errors_a_careless_bot_meets(fake: FakeTelegram, app: Application) -> None:
    fake.user(ALICE)
    bot = app.bot
    sent = await bot.send_message(ALICE, "<b>bold</b> &amp; plain", parse_mode=ParseMode.HTML)
    assert fake.messages(ALICE)[0].text == "bold & plain"

    with pytest.raises(BadRequest, match="not modified"):
        await bot.edit_message_text("bold & plain", ALICE, sent.message_id)
    with pytest.raises(BadRequest, match="parse entities"):
        await bot.send_message(ALICE, "<b>unclosed", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match="parse entities"):
        await bot.send_message(ALICE, "Hello <3", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match="Chat not found"):
        await bot.send_message(777, "hello")
    assert fake.errors[-1] == ("sendMessage", 400, "Bad Request: chat not found")
    with pytest.raises(BadRequest, match="too long"):
        await bot.send_message(ALICE, "x" * 4097)
    with pytest.raises(BadRequest, match="Button_data_invalid"):
        await bot.send_message(
            ALICE,
            "hi",
            reply_markup=InlineKeyboardMarkup([[InlineKeyboardButton("b", callback_data="x" * 65)]]),
        )


async def test_wrong_token_and_unknown_method(fake: FakeTelegram) -> None:
    wrong = ApplicationBuilder().token("1:wrong").base_url(fake.base_url + "/bot").build()
    with pytest.raises(InvalidToken):
        async with wrong.bot:  # initialize() calls getMe
            pass

    async with aiohttp.ClientSession() as session:
        async with session.post(f"{fake.base_url}/bot{fake.token}/sendSticker", json={"chat_id": 1}) as resp:
            body = await resp.json()
        assert (resp.status, body["ok"], body["error_code"]) == (400, False, 400)

        fake.user(ALICE)
        payload = {"chat_id": ALICE, "text": "json body", "reply_markup": {"inline_keyboard": []}}
        async with session.post(f"{fake.base_url}/bot{fake.token}/sendMessage", json=payload) as resp:
            body = await resp.json()
        assert body["result"]["text"] == "json body"
        assert body["result"]["from"]["is_bot"] is True


async def test_get_updates_long_poll_returns_early_and_honours_offset(fake: FakeTelegram) -> None:
    url = f"{fake.base_url}/bot{fake.token}/getUpdates"
    alice = fake.user(ALICE)
    async with aiohttp.ClientSession() as session:
        # a 60 s long poll must come back as soon as an update arrives, well inside the 10 s deadline
        poll = asyncio.ensure_future(session.get(url, params={"timeout": "60"}))
        await fake.wait_for(lambda f: f.calls_to("getUpdates"))
        await alice.send_text("hello")
        async with asyncio.timeout(10), await poll as resp:
            first = (await resp.json())["result"]
        assert [u["message"]["text"] for u in first] == ["hello"]
        assert first[0]["message"]["chat"] == {"id": ALICE, "type": "private", "first_name": "Alex"}

        next_offset = first[-1]["update_id"] + 1
        async with session.get(url, params={"offset": str(next_offset), "timeout": "0"}) as resp:
            assert (await resp.json())["result"] == []
        assert fake.pending_updates() == 0


async def test_delete_webhook_can_drop_pending_updates(fake: FakeTelegram) -> None:
    await fake.user(ALICE).send_text("sent while the bot was down")
    assert fake.pending_updates() == 1
    bot = ApplicationBuilder().token(fake.token).base_url(fake.base_url + "/bot").build().bot
    async with bot:
        await bot.delete_webhook(drop_pending_updates=True)
        assert await bot.get_updates(timeout=0) == ()
    assert fake.pending_updates() == 0
