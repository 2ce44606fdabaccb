"""Per-user allowances over rolling windows: trainings, style requests (still portraits) and animated clips.

Units in use are the user's jobs of a kind created within the window, except cancelled and failed ones:
a cancelled or failed job gives its unit back without any bookkeeping of its own. A unit renews when the
oldest counted job leaves the window. A clip (job kind `video`) uses a unit of the video allowance only,
not one of the style requests: the two are separate, so clips never eat into still portraits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from engine.db import Tables
from engine.errors import Refused
from engine.settings import QuotaSettings, format_duration

WHAT = {"train": "trainings", "generate": "style requests", "video": "animated clips"}


@dataclass(frozen=True)
class Allowance:
    kind: str  # train | generate | video
    limit: int
    period: float  # seconds
    used: int
    renews_at: float | None  # when the next unit comes back (None: nothing in use)

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)


def utc_text(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


class Quotas:
    def __init__(self, settings: QuotaSettings, tables: Tables, video: bool = True):
        """`video`: whether clips are offered at all (no video allowance is shown when they are not)."""
        self.tables = tables
        self.limits = {
            "train": (settings.trainings, float(settings.trainings_period)),
            "generate": (settings.requests, float(settings.requests_period)),
        }
        if video:
            self.limits["video"] = (settings.videos, float(settings.videos_period))

    async def allowance(self, user_id: str, kind: str) -> Allowance | None:
        """What the user has of one kind, or None when it is unlimited (or not offered)."""
        limit, period = self.limits.get(kind, (0, 0.0))
        if limit <= 0:
            return None
        now = self.tables.db.clock.now()
        uses = await self.tables.usage.since(user_id, kind, now - period)
        return Allowance(kind, limit, period, len(uses), uses[0] + period if uses else None)

    async def allowances(self, user_id: str) -> list[Allowance]:
        found = [await self.allowance(user_id, kind) for kind in self.limits]
        return [allowance for allowance in found if allowance is not None]

    async def require(self, user_id: str, kind: str) -> None:
        """Raise `Refused("quota")` (with the renewal time) when no unit of `kind` is left."""
        allowance = await self.allowance(user_id, kind)
        if allowance is None or allowance.left > 0:
            return
        renews_at = allowance.renews_at or self.tables.db.clock.now()
        raise Refused(
            "quota",
            kind=kind,
            what=WHAT[kind],
            limit=allowance.limit,
            period=format_duration(allowance.period),
            period_seconds=allowance.period,
            renews_at=renews_at,
            renews=utc_text(renews_at),
        )
