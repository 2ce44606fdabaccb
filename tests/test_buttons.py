"""Buttons: the one codec for their data, the route table, and presses that must change nothing."""

import pytest

from bot.buttons import MAX_DATA_BYTES, Pressed, Route, decode, encode
from bot.events import ButtonPress, Chat, Reply
from bot.telegram_bot import TelegramMessenger
from tests.retention_fixtures import Harness, make_settings


@pytest.mark.parametrize(
    "route, arg, data",
    [
        (Route.TRAIN, "", "train"),
        (Route.CONSENT, "yes", "consent:yes"),
        (Route.CANCEL, "0123456789abcdef01234567", "cancel:0123456789abcdef01234567"),
        (Route.SETTING, "model_now", "set:model_now"),
        (Route.STYLE, "anime-2", "style:anime-2"),
    ],
)
def test_data_round_trips(route: Route, arg: str, data: str) -> None:
    assert encode(route, arg) == data
    assert decode(data) == Pressed(route, arg)


@pytest.mark.parametrize(
    "data",
    [
        "",
        "bogus:123",  # no such route
        "train:",  # an empty argument is not "no argument"
        "cancel:a:b",
        "cancel:../../etc",
        "cancel: 1",
        "Cancel:1",
        "cancel:ä",
        "cancel:1\n",
        "style:" + "a" * 60,  # longer than 64 bytes
        "x" * 1000,
    ],
)
def test_malformed_data_is_refused(data: str) -> None:
    assert decode(data) is None


def test_encode_refuses_what_it_could_not_read_back() -> None:
    with pytest.raises(ValueError):
        encode(Route.STYLE, "a" * (MAX_DATA_BYTES))
    with pytest.raises(ValueError):
        encode(Route.CANCEL, "with:colon")


def test_protect_content_is_telegrams_setting_and_only_for_portraits() -> None:
    on, off = TelegramMessenger(None, protect_content=True), TelegramMessenger(None, protect_content=False)
    assert on.protect(Reply("portraits", protect=True))
    assert not on.protect(Reply("a plain message"))
    assert not off.protect(Reply("portraits", protect=True))


async def test_every_button_shown_is_routed_and_accepted(tmp_path) -> None:
    bot = await Harness.open(make_settings(tmp_path))
    try:
        conversation = bot.app.conversation
        buttons = conversation.buttons
        shown = [
            *buttons.consent(),
            *buttons.train(),
            *buttons.cancel("0123456789abcdef01234567"),
            *buttons.styles(),
            *buttons.another_style(),
            *buttons.forget(),
            *buttons.settings(["model_now", "model_day", "model_week", "messages_off", "messages_day"]),
            *buttons.languages(),
        ]
        pressed = [decode(button.data) for row in shown for button in row]
        assert None not in pressed
        assert {p.route for p in pressed} == set(Route)  # every route has a button, and the reverse
        assert all(conversation._routes[p.route].accepts(p.arg) for p in pressed)
    finally:
        await bot.close()


async def test_a_malformed_press_expires_and_changes_nothing(tmp_path) -> None:
    bot = await Harness.open(make_settings(tmp_path))
    try:
        alice = bot.user("1001")
        await bot.onboard(alice)  # a well-formed "train" would start a job now
        before = await bot.rows(alice)
        for data in ("bogus:123", "styles:x", "train:1", "train:", "cancel:", "style:nope", "set:forever"):
            assert (await bot.press(alice, data)).text == "That button has expired.", data
        assert await bot.rows(alice) == before
    finally:
        await bot.close()


async def test_a_press_in_someone_elses_private_chat_only_gets_a_short_answer(tmp_path) -> None:
    bot = await Harness.open(make_settings(tmp_path))
    try:
        owner, presser = bot.user("1001"), bot.user("1002")
        await bot.onboard(owner)
        await bot.onboard(presser)  # the presser could train: consent and photos
        rows = {user.id: await bot.rows(user) for user in (owner, presser)}
        sent = len(bot.recorder.sent)
        # the presser's press on a message in the owner's chat (adapters set by_chat_user)
        chat = Chat(owner.chat.platform, owner.chat.chat_id, presser.platform_id, True, by_chat_user=False)
        for data in ("train", "forget:yes", "consent:no", "set:model_now"):
            await bot.app.conversation.handle(ButtonPress(chat, data))
        assert bot.recorder.acks[-4:] == ["That button is not for you."] * 4
        assert len(bot.recorder.sent) == sent  # nothing written to any chat
        assert {user.id: await bot.rows(user) for user in (owner, presser)} == rows
        assert await bot.count("jobs", owner) == await bot.count("jobs", presser) == 0
    finally:
        await bot.close()
