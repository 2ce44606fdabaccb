"""Platform faults for the fake Telegram server: what a real Bot API does on a bad day.

`FaultyTelegram` is a `FakeTelegram` whose answers can be made to fail, per method and in order:

- ``"429"``: Too Many Requests with ``retry_after`` (seconds);
- ``"5xx"``: a 500/502/503 answer, the call not performed;
- ``"timeout"``: the call *is performed*, then the answer is held for ``delay`` seconds (longer than the
  client waits): the classic source of duplicate sends;
- ``"reset"``: the connection is closed without an answer, before (``after_effect=False``) or after the
  call was performed;
- ``"stall"``: the call is held for ``delay`` seconds *before* it is performed, then answered 504 without
  being performed: a request still in flight (e.g. a large upload) when the client dies.

`down(seconds)` makes the whole API (long polling included) answer 502 for a while, as when the Bot API
or a reverse proxy in front of it restarts. `push_raw_update` queues an update exactly as given, e.g. one
an older self-hosted Bot API sends that python-telegram-bot cannot parse. Counters (`injected`,
`performed_during_fault`) let tests and benches check what really happened.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fake_telegram import ApiError, FakeTelegram

FAULT_KINDS = ("429", "5xx", "timeout", "reset", "stall")


@dataclass
class Fault:
    kind: str
    retry_after: int = 1
    status: int = 502
    delay: float = 5.0
    after_effect: bool = True


class FaultyTelegram(FakeTelegram):
    """A fake Bot API with injectable faults (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._faults: dict[str, list[Fault]] = {}
        self._down_until = 0.0
        self.injected: list[tuple[str, str]] = []  # (method, kind) of every fault answered
        self.performed_during_fault: list[str] = []  # methods performed although the client saw a fault
        self.max_calls_per_second = 0  # the highest number of non-polling calls seen in one second
        self._second = 0
        self._in_second = 0

    # ----------------------------------------------------------------------------- test-facing API

    def inject(self, method: str, kind: str, times: int = 1, **options: Any) -> None:
        """Answer the next ``times`` calls of ``method`` (case-insensitive, "*" for any) with a fault."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULT_KINDS}")
        self._faults.setdefault(method.lower(), []).extend([Fault(kind, **options)] * times)

    def down(self, seconds: float) -> None:
        """Every call answers 502 Bad Gateway for ``seconds`` from now."""
        self._down_until = time.monotonic() + seconds

    @property
    def is_down(self) -> bool:
        return time.monotonic() < self._down_until

    async def push_raw_update(self, update: dict[str, Any]) -> int:
        """Queue ``update`` as is (an ``update_id`` is added); returns the update id."""
        await self._enqueue(update)
        return self._updates[-1]["update_id"]

    # ----------------------------------------------------------------------------- HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        match = re.fullmatch(r"/bot([^/]+)/(\w+)", request.path)
        if match is None:
            return await super()._handle(request)
        method = match.group(2)
        self._count_rate(method)
        if self.is_down:
            self.injected.append((method, "down"))
            return ApiError(502, "Bad Gateway").response()
        fault = self._next_fault(method)
        if fault is None:
            return await super()._handle(request)
        self.injected.append((method, fault.kind))
        if fault.kind == "429":
            return ApiError(
                429, f"Too Many Requests: retry after {fault.retry_after}", {"retry_after": fault.retry_after}
            ).response()
        if fault.kind == "5xx":
            return ApiError(fault.status, f"{fault.status} error injected").response()
        if fault.kind == "reset" and not fault.after_effect:
            return self._reset(request)
        if fault.kind == "stall":
            await asyncio.sleep(fault.delay)
            return ApiError(504, "Gateway Timeout").response()
        await super()._handle(request)  # performed: the client will not learn it
        self.performed_during_fault.append(method)
        if fault.kind == "reset":
            return self._reset(request)
        await asyncio.sleep(fault.delay)
        return ApiError(504, "Gateway Timeout").response()

    def _next_fault(self, method: str) -> Fault | None:
        for key in (method.lower(), "*"):
            if queue := self._faults.get(key):
                return queue.pop(0)
        return None

    @staticmethod
    def _reset(request: web.Request) -> web.StreamResponse:
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("connection reset injected by the test")

    def _count_rate(self, method: str) -> None:
        if method.lower() == "getupdates":
            return
        second = int(time.monotonic())
        if second != self._second:
            self._second, self._in_second = second, 0
        self._in_second += 1
        self.max_calls_per_second = max(self.max_calls_per_second, self._in_second)
