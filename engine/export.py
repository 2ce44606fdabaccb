"""The /mydata summary made readable: a UTC date beside every epoch value, stored JSON lists as lists."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

# Columns the database keeps as JSON text; the export shows them as what they are.
JSON_COLUMNS = frozenset({"losses"})
# Durations in seconds that get a readable form too.
SECONDS_KEYS = frozenset({"model_retention_seconds"})


def utc(epoch: float) -> str:
    """`2026-11-29 23:39:20 UTC`."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def readable(value: Any) -> Any:
    """`value` with `<name>_at` epochs followed by `<name>_at_utc`, and JSON text columns decoded."""
    if isinstance(value, list):
        return [readable(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in JSON_COLUMNS and isinstance(item, str):
            with contextlib.suppress(ValueError):  # not JSON after all: shown as stored
                item = json.loads(item)
        out[key] = readable(item)
        if key.endswith("_at") and isinstance(item, int | float) and not isinstance(item, bool):
            out[f"{key}_utc"] = utc(item)
        if key in SECONDS_KEYS and isinstance(item, int | float):
            out[f"{key.removesuffix('_seconds')}_days"] = round(item / 86400, 2)
    return out
