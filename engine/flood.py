"""Flood control per user: a token bucket (rate per minute, burst), held in memory.

An update takes a token. When none is left the user is told once (`WARN`) and then ignored (`DROP`)
until the bucket is full again, so a flood gets one answer, not one per update. Other users have their
own buckets and are never slowed down.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from engine.clock import Clock


class Verdict(Enum):
    OK = "ok"  # handle the update
    WARN = "warn"  # tell the user once that they are going too fast, handle nothing else
    DROP = "drop"  # ignore the update (download nothing)


@dataclass
class _Bucket:
    tokens: float
    at: float
    muted: bool = False


class FloodControl:
    MAX_TRACKED = 10_000  # beyond this, full buckets (idle users) are forgotten

    def __init__(self, per_minute: int, burst: int, clock: Clock):
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def _refill(self, bucket: _Bucket, now: float) -> None:
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now

    def check(self, user_id: str) -> Verdict:
        now = self.clock.now()
        bucket = self._buckets.get(user_id)
        if bucket is None:
            self._forget_idle(now)
            bucket = self._buckets[user_id] = _Bucket(self.burst, now)
        self._refill(bucket, now)
        if bucket.muted:
            if bucket.tokens < self.burst:
                return Verdict.DROP
            bucket.muted = False
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return Verdict.OK
        bucket.muted = True
        return Verdict.WARN

    def _forget_idle(self, now: float) -> None:
        if len(self._buckets) < self.MAX_TRACKED:
            return
        for user_id, bucket in list(self._buckets.items()):
            self._refill(bucket, now)
            if bucket.tokens >= self.burst:
                del self._buckets[user_id]
