"""bot/telegram_safety.py against the fake Bot API over real HTTP, with a real python-telegram-bot
Application: an unparseable update is skipped (not refetched in a tight loop), updates without a user
are ignored cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from telegram import Update
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    ContextTypes,
    ExtBot,
    MessageHandler,
    TypeHandler,
    filters,
)

from bot.telegram_safety import Counters, TolerantBot, ignore_without_user
from tests.fake_faults import FaultyTelegram
from tests.test_logfilter import SECRET_ID, unparseable_poll

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def fake() -> AsyncIterator[FaultyTelegram]:
    async with FaultyTelegram() as fake:
        yield fake


async def running(fake: FaultyTelegram, bot_class: type[ExtBot]) -> Application:
    bot = bot_class(
        fake.token,
        base_url=fake.base_url + "/bot",
        base_file_url=fake.base_url + "/file/bot",
        rate_limiter=AIORateLimiter(max_retries=3),
    )
    app = ApplicationBuilder().bot(bot).concurrent_updates(True).build()
    app.add_handler(TypeHandler(object, ignore_without_user), group=-1)

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.effective_chat.send_message("echo")

    async def press(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.callback_query.answer("ok")

    app.add_handler(CallbackQueryHandler(press))
    app.add_handler(MessageHandler(filters.ALL, echo))
    await app.initialize()
    await app.start()
    await app.updater.start_polling(poll_interval=0.0, timeout=2)
    return app


async def stopped(app: Application) -> None:
    await app.updater.stop()
    await app.stop()
    await app.shutdown()


async def polls_in(fake: FaultyTelegram, seconds: float) -> int:
    before = len(fake.calls_to("getUpdates"))
    await asyncio.sleep(seconds)
    return len(fake.calls_to("getUpdates")) - before


async def test_plain_ptb_refetches_an_unparseable_update_in_a_tight_loop(fake: FaultyTelegram) -> None:
    """The control: the bug the issue describes, so the next test can fail."""
    library = logging.getLogger("telegram")
    level = library.level
    library.setLevel(logging.CRITICAL + 1)  # it logs the raw batch at CRITICAL on every refetch
    try:
        app = await running(fake, ExtBot)
        await fake.push_raw_update(unparseable_poll())
        user = fake.user(5)
        await user.send_text("hello")
        await asyncio.sleep(0.5)
        refetches = await polls_in(fake, 1.0)
        answered = fake.messages(5)
        with contextlib.suppress(TypeError):  # its shutdown re-fetches the batch once more, and fails
            await stopped(app)
    finally:
        library.setLevel(level)
    assert answered == []  # nobody is answered any more
    assert refetches > 20


async def test_an_unparseable_update_is_skipped_and_everyone_else_served(fake: FaultyTelegram) -> None:
    skipped = Counters.skipped_updates
    app = await running(fake, TolerantBot)
    try:
        await fake.push_raw_update(unparseable_poll())
        user = fake.user(6)
        await user.send_text("hello")
        await fake.wait_for_message(6, "echo", timeout=10)
        assert await polls_in(fake, 1.0) <= 6  # long polling, or paced by HELD_POLL_PAUSE: no tight loop
        assert fake.pending_updates() == 0 or await fake.wait_for(lambda f: f.pending_updates() == 0)
    finally:
        await stopped(app)
    assert Counters.skipped_updates == skipped + 1


def userless_updates(fake: FaultyTelegram) -> list[dict]:
    now = int(time.time())
    person = {"id": SECRET_ID, "is_bot": False, "first_name": "X"}
    channel = {"id": -1001, "type": "channel", "title": "News"}
    return [
        {"channel_post": {"message_id": 1, "date": now, "chat": channel, "text": "/start"}},
        {"edited_channel_post": {"message_id": 1, "date": now, "edit_date": now, "chat": channel, "text": "x"}},
        {"message": {"message_id": 2, "date": now, "chat": {"id": 7, "type": "private"}, "text": "no from"}},
        {
            "callback_query": {
                "id": "99",
                "from": person,
                "chat_instance": "c",
                "inline_message_id": "AAA",
                "data": "consent:yes",
            }
        },
        {
            "my_chat_member": {
                "chat": {"id": 7, "type": "private"},
                "from": person,
                "date": now,
                "old_chat_member": {"status": "member", "user": fake.bot_user},
                "new_chat_member": {"status": "kicked", "user": fake.bot_user, "until_date": 0},
            }
        },
        {"poll": {"id": "1", "question": "q", "options": [], "total_voter_count": 0, "is_closed": True,
                  "is_anonymous": True, "type": "regular", "allows_multiple_answers": False}},
    ]  # fmt: skip


async def test_updates_without_a_user_are_ignored_cleanly(
    fake: FaultyTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    ignored = Counters.ignored_updates
    app = await running(fake, TolerantBot)
    try:
        for update in userless_updates(fake):
            await fake.push_raw_update(update)
        user = fake.user(8)
        await user.send_text("after")
        await fake.wait_for_message(8, "echo", timeout=10)
    finally:
        await stopped(app)
    assert Counters.ignored_updates - ignored >= 5  # the inline press has a user but no chat
    assert fake.messages(-1001) == [] and fake.messages(7) == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- property-based: any update JSON --------------------------------------------------------------------

SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63), st.text(max_size=30), st.floats())
USERS = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(), st.text(max_size=5)), "is_bot": st.one_of(st.booleans(), SCALARS)},
    optional={"first_name": SCALARS, "username": SCALARS},
)
CHATS = st.fixed_dictionaries(
    {
        "id": st.one_of(st.integers(), st.text(max_size=5)),
        "type": st.sampled_from(["private", "group", "channel", "x"]),
    }
)
MESSAGES = st.fixed_dictionaries(
    {"message_id": st.one_of(st.integers(), SCALARS), "date": st.one_of(st.integers(0, 2**31), SCALARS),
     "chat": st.one_of(CHATS, SCALARS)},
    optional={"from": st.one_of(USERS, SCALARS), "text": SCALARS, "caption": SCALARS,
              "photo": st.lists(st.dictionaries(st.sampled_from(["file_id", "width", "file_size"]), SCALARS)),
              "media_group_id": SCALARS},
)  # fmt: skip
UPDATES = st.fixed_dictionaries(
    {"update_id": st.one_of(st.integers(0, 2**31), SCALARS)},
    optional={
        "message": st.one_of(MESSAGES, SCALARS),
        "edited_message": MESSAGES,
        "channel_post": MESSAGES,
        "callback_query": st.fixed_dictionaries(
            {"id": SCALARS, "from": st.one_of(USERS, SCALARS), "chat_instance": SCALARS},
            optional={"message": MESSAGES, "data": SCALARS, "inline_message_id": SCALARS},
        ),
    },
)
BOT = TolerantBot("123:abc")


@settings(max_examples=300, deadline=None)
@given(UPDATES)
def test_any_update_json_is_parsed_or_skipped_and_routed_without_error(raw: dict) -> None:
    parsed = BOT._parseable_or_stub(raw)
    update = Update.de_json(parsed, BOT)  # never raises after the check
    try:
        asyncio.run(ignore_without_user(update, None))  # type: ignore[arg-type]
        routed = True
    except ApplicationHandlerStop:
        routed = False
    if routed:  # only updates with a real user and chat reach the conversation
        assert update.effective_user is not None and update.effective_chat is not None
