"""The engine's exceptions that callers outside the engine handle: one refusal type, and start-up errors.

`Refused` is what the conversation turns into text: its `reason` is one of `REASONS`, and nothing else is
ever shown to a user as a reason. Everything else is a bug or an operator problem, logged, never shown.
"""

from __future__ import annotations

import errno
import sqlite3
from typing import Any, Literal, get_args

Reason = Literal[
    "not_enough_photos",  # training needs more photos: detail min_photos, count
    "already_training",  # a training job of this user is queued or running
    "no_model",  # a style was asked for before any model exists or is being trained
    "unknown_style",  # the preset is not offered (any more)
    "not_yours",  # the job (or message) named belongs to someone else, or does not exist
    "storage_full",  # the server's disk is full (or over quota): nothing was stored, try later
    "storage_busy",  # the database stayed locked by another process: nothing was stored, try again
    "access",  # not admitted (invite or allowlist mode): detail variant = the mode
    "invite_invalid",  # the invite code is unknown, used up or expired
    "blocked",  # an operator blocked this user's new work
    "paused",  # an operator paused new trainings and style requests
    "busy",  # the queue is full: detail minutes = a measured estimate of when there is room
    "quota",  # the user's allowance is used up: detail kind, limit, period, renews (timestamp)
    "request_pending",  # a style request of this user is still queued or running
    "flood",  # the user sends faster than flood control allows
]
REASONS: frozenset[str] = frozenset(get_args(Reason))


class Refused(Exception):
    """The engine will not do what was asked, for a reason the user can be told."""

    def __init__(self, reason: Reason, **detail: Any):
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(reason)
        self.reason: Reason = reason
        self.detail: dict[str, Any] = detail


def storage_refusal(error: BaseException) -> Refused | None:
    """The refusal for a storage fault the user can be told about (disk full, database locked), else None."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return Refused("storage_full")
    if isinstance(error, sqlite3.OperationalError) and any(
        word in str(error).lower() for word in ("database is locked", "database is busy", "disk is full")
    ):
        return Refused("storage_full") if "full" in str(error).lower() else Refused("storage_busy")
    return None


class StartupError(Exception):
    """Something the operator must fix before the service can start; `str()` is one line."""


class VaultError(Exception):
    """The vault cannot serve a request: a bad or missing master key, a corrupt blob, a shredded key."""
