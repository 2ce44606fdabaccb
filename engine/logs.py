"""Log hygiene: no personal data leaves the process through a log line, whoever wrote it.

Our own modules log numbers and codes only. Libraries do not: python-telegram-bot logs a whole raw
update (`%r`) when it cannot parse one, with user ids, names and usernames; httpx logs URLs carrying the
bot token; an exception's message can quote a caption or a file name. `PersonalDataFilter` sits on the
root handlers (so it sees every propagated record) and

- for records of libraries' loggers, replaces every argument that is not a number with `[redacted]`
  (the message template, written by the library's authors, stays readable);
- for every record, renders an attached exception as its frames and type name only: the exception's
  message, which may carry data, is dropped.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

OWN_LOGGERS = ("bot", "engine", "bench", "tests", "__main__")
REDACTED = "[redacted]"


def _own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


def _safe_arg(value: Any) -> Any:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else REDACTED


def scrub_exception(exc_info: Any) -> str:
    """An exception as 'Traceback ... TypeName' without its message (nor its causes' messages)."""
    _, error, tb = exc_info
    lines = ["Traceback (most recent call last):\n", *traceback.format_tb(tb)]
    chain = error.__cause__ or error.__context__ if error is not None else None
    name = type(error).__qualname__ if error is not None else "Exception"
    if chain is not None:
        name += f" (from {type(chain).__qualname__})"
    return "".join(lines) + name


class PersonalDataFilter(logging.Filter):
    """Rewrites records in place so that formatting them cannot reveal personal data."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _own(record.name):
            record.msg = _template(record)
            record.args = _scrub_args(record.args)
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = scrub_exception(record.exc_info)
            record.exc_info = None
        elif record.exc_text and not _own(record.name):
            record.exc_text = REDACTED
        return True


def _template(record: logging.LogRecord) -> str:
    msg = record.msg
    if isinstance(msg, str):
        return msg
    return type(msg).__name__  # an object logged as the message: never its repr


def _scrub_args(args: Any) -> Any:
    if not args:
        return args
    if isinstance(args, dict):
        return {key: _safe_arg(value) for key, value in args.items()}
    return tuple(_safe_arg(value) for value in args)


def install(handlers: list[logging.Handler] | None = None) -> PersonalDataFilter:
    """Put one filter on each of the root logger's handlers (idempotent); returns it."""
    root = logging.getLogger()
    for handler in root.handlers if handlers is None else handlers:
        if not any(isinstance(f, PersonalDataFilter) for f in handler.filters):
            handler.addFilter(PersonalDataFilter())
    found = [f for h in root.handlers for f in h.filters if isinstance(f, PersonalDataFilter)]
    return found[0] if found else PersonalDataFilter()
