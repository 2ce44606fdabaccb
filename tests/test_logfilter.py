"""No log line from any library carries an update's personal fields (engine.logs, installed by
engine.runtime.setup_logging), tested with a real python-telegram-bot parse failure over HTTP."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from telegram import Bot

from engine import logs
from tests.fake_faults import FaultyTelegram

SECRET_NAME = "Zoë-Secret-Name"
SECRET_USERNAME = "secret_handle_4711"
SECRET_ID = 987654321


def unparseable_poll() -> dict:
    """A poll as an older self-hosted Bot API sends it: options without `voter_count`."""
    return {
        "message": {
            "message_id": 7,
            "date": 1_700_000_000,
            "chat": {"id": SECRET_ID, "type": "private", "first_name": SECRET_NAME},
            "from": {
                "id": SECRET_ID,
                "is_bot": False,
                "first_name": SECRET_NAME,
                "username": SECRET_USERNAME,
            },
            "poll": {
                "id": "1",
                "question": "Which?",
                "options": [{"text": "a"}, {"text": "b"}],
                "total_voter_count": 0,
                "is_closed": False,
                "is_anonymous": True,
                "type": "regular",
                "allows_multiple_answers": False,
            },
        }
    }


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """A root handler with the filter installed, as setup_logging does, capturing every level."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    logs.install([handler])
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def assert_no_personal_data(text: str) -> None:
    for secret in (SECRET_NAME, SECRET_USERNAME, str(SECRET_ID)):
        assert secret not in text


async def test_a_ptb_parse_failure_logs_no_personal_fields(captured: io.StringIO) -> None:
    async with FaultyTelegram() as fake:
        await fake.push_raw_update(unparseable_poll())
        bot = Bot(fake.token, base_url=fake.base_url + "/bot", base_file_url=fake.base_url + "/file/bot")
        async with bot:
            with pytest.raises(TypeError):
                await bot.get_updates(timeout=0)
    text = captured.getvalue()
    assert "Error while parsing updates" in text  # the library's own line is still there, readable
    assert "[redacted]" in text
    assert "Traceback" in text and "TypeError" in text  # frames and type name survive
    assert_no_personal_data(text)


def test_without_the_filter_the_same_record_would_leak() -> None:
    """The control: the record PTB writes does carry the fields, so the test above can fail."""
    record = logging.LogRecord(
        "telegram.Bot", logging.CRITICAL, __file__, 1, "Received data was %r", (unparseable_poll(),), None
    )
    assert SECRET_USERNAME in record.getMessage()
    logs.PersonalDataFilter().filter(record)
    assert_no_personal_data(record.getMessage())


def test_numbers_stay_and_exception_messages_go(captured: io.StringIO) -> None:
    log = logging.getLogger("httpx")
    log.warning("retry %d of %s after %.1f s", 3, f"https://api/bot{SECRET_ID}:tok/getMe", 1.5)
    try:
        raise ValueError(f"caption {SECRET_NAME}")
    except ValueError:
        logging.getLogger("engine.worker").exception("job %s failed", "abc")
    text = captured.getvalue()
    assert "retry 3 of [redacted] after 1.5 s" in text
    assert "job abc failed" in text  # our own modules log codes, kept
    assert "ValueError" in text
    assert_no_personal_data(text)


def test_setup_logging_installs_the_filter() -> None:
    from engine.runtime import setup_logging

    root = logging.getLogger()
    before = list(root.handlers)
    handler = logging.StreamHandler(io.StringIO())
    root.handlers = [handler]
    try:
        setup_logging("WARNING")
        assert any(isinstance(f, logs.PersonalDataFilter) for f in handler.filters)
    finally:
        root.handlers = before
