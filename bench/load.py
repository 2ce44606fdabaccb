"""Load: N simulated users through consent, upload, status and styles, against the fake Telegram server,
side by side with a minimal python-telegram-bot echo bot under the same rate limiter, in the same run.

    python bench/load.py              # 100 users
    python bench/load.py --users 20

Both bots long-poll the fake over real HTTP on 127.0.0.1. The fake enforces Telegram's flood limits
(about 30 messages/s per bot, about 1 message/s per chat with a short burst) and answers 429 above them;
the bot must stay within them (429s: 0). Reported per bot: updates/s, p50/p99 latency from the moment
the update was fetched to the bot's first answer (a message in that chat; for a button press, the
answer to its callback query), p50/p99 of callback-query answers alone (answerCallbackQuery is not
rate-limited by Telegram and must not wait behind queued messages), 429s, peak RSS, and the load
average during the run (the machine is shared). The figures are the ratios to the echo bot.

The rate limiter is the bot's own (`bot.telegram_limits.FloodLimiter`); a third run, the echo bot under
python-telegram-bot's stock `AIORateLimiter`, is the control that shows why (it gets 429s at full load).
The LAST line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiohttp import web  # noqa: E402
from telegram import Update  # noqa: E402
from telegram.ext import (  # noqa: E402
    AIORateLimiter,
    ApplicationBuilder,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bot.telegram_limits import FloodLimiter  # noqa: E402
from tests import faces_data as fd  # noqa: E402
from tests.fake_telegram import ApiError, FakeTelegram, FakeUser  # noqa: E402
from tests.tiny_settings import tiny_settings  # noqa: E402

SENDING = {"sendmessage", "sendphoto", "senddocument", "sendmediagroup", "editmessagetext", "copymessage"}
GLOBAL_PER_SECOND = 30
CHAT_BURST, CHAT_PER_SECOND = 3, 1.0


class LoadTelegram(FakeTelegram):
    """The fake with Telegram's flood limits and answer-latency bookkeeping."""

    def __init__(self) -> None:
        super().__init__()
        self.flood_429 = 0
        self.flood_429_chat = 0  # of which refused by the per-chat limit (the rest: the per-bot limit)
        self.sent_per_chat: dict[int, int] = defaultdict(int)
        self._bot: tuple[float, float] = (GLOBAL_PER_SECOND, time.monotonic())
        self._chat_tokens: dict[int, tuple[float, float]] = {}
        # chat -> (fetch time, is a photo) of the user's messages awaiting an answer
        self.fetched_at: dict[int, deque[tuple[float, bool]]] = defaultdict(deque)
        self.photo_latencies: list[float] = []
        self.latencies: list[float] = []
        self.callback_latencies: list[float] = []
        self._query_fetched: dict[str, float] = {}
        self.updates_fetched = 0

    async def _handle_api(self, request: web.Request, token: str, method: str) -> web.Response:
        name = method.lower()
        if name in SENDING:
            chat_id = await self._chat_of(request)
            refused = self._admit(chat_id)
            if refused:
                self.flood_429 += 1
                self.flood_429_chat += refused == "chat"
                return ApiError(429, "Too Many Requests: retry after 1", {"retry_after": 1}).response()
            self.sent_per_chat[chat_id] += 1
        response = await super()._handle_api(request, token, method)
        return response

    async def _chat_of(self, request: web.Request) -> int:
        if request.content_type == "application/json":
            return int((await request.json()).get("chat_id", 0))
        return int((await request.post()).get("chat_id", 0))  # form or multipart (uploads)

    def _admit(self, chat_id: int) -> str | None:
        """Token buckets: 30/s per bot (burst 30), 1/s per chat (burst 3); a refused call costs nothing.
        Returns what refused the call ("bot" or "chat"), None when admitted."""
        now = time.monotonic()
        bot_tokens = min(GLOBAL_PER_SECOND, self._bot[0] + (now - self._bot[1]) * GLOBAL_PER_SECOND)
        chat = self._chat_tokens.get(chat_id, (CHAT_BURST, now))
        chat_tokens = min(CHAT_BURST, chat[0] + (now - chat[1]) * CHAT_PER_SECOND)
        if bot_tokens < 1 or (chat_id and chat_tokens < 1):
            return "bot" if bot_tokens < 1 else "chat"
        self._bot = (bot_tokens - 1, now)
        if chat_id:
            self._chat_tokens[chat_id] = (chat_tokens - 1, now)
        return None

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        updates = await super()._get_updates(params)
        now = time.monotonic()
        for update in updates:
            if update.get("_seen"):
                continue
            update["_seen"] = True  # a refetch of the same update is not a new one
            self.updates_fetched += 1
            if "callback_query" in update:  # its first answer is the answer to the query
                self._query_fetched[update["callback_query"]["id"]] = now
            else:
                message = update.get("message", {})
                photo = "photo" in message or "document" in message
                self.fetched_at[message.get("chat", {}).get("id", 0)].append((now, photo))
        return [{k: v for k, v in u.items() if k != "_seen"} for u in updates]

    async def _answer_callback_query(self, params: dict[str, Any]) -> bool:
        fetched = self._query_fetched.pop(str(params.get("callback_query_id")), None)
        if fetched is not None:
            self.callback_latencies.append(time.monotonic() - fetched)
            self.latencies.append(self.callback_latencies[-1])
        return await super()._answer_callback_query(params)

    def _bot_message(self, chat: dict[str, Any], params: dict[str, Any], **content: Any) -> Any:
        waiting = self.fetched_at.get(chat["id"])
        if waiting:
            fetched, photo = waiting.popleft()
            self.latencies.append(time.monotonic() - fetched)
            if photo:
                self.photo_latencies.append(self.latencies[-1])
        return super()._bot_message(chat, params, **content)


async def likeness_user(fake: LoadTelegram, user: FakeUser, photo: bytes) -> None:
    await user.send_text("/start")
    consent = await fake.wait_for_message(user.id, "Do you agree?", timeout=120)
    await user.press(consent, "consent:yes")
    await fake.wait_for_message(user.id, "Thank you!", timeout=120)
    await user.send_photo(photo)
    await fake.wait_for_message(user.id, "Photo 1", timeout=180)
    await user.send_text("/status")
    await fake.wait_for(lambda f: len(f.messages(user.id)) >= 4, timeout=120)
    await user.send_text("/styles")
    await fake.wait_for(lambda f: len(f.messages(user.id)) >= 5, timeout=120)


async def echo_user(fake: LoadTelegram, user: FakeUser, photo: bytes) -> None:
    """The same five updates; the echo bot answers each with one message (a press: an answer + one)."""
    await user.send_text("/start")
    first = await fake.wait_for(lambda f: f.messages(user.id)[:1], timeout=120)
    await user.press(first[0], "press")
    await fake.wait_for(lambda f: len(f.messages(user.id)) >= 2, timeout=120)
    await user.send_photo(photo)
    await fake.wait_for(lambda f: len(f.messages(user.id)) >= 3, timeout=120)
    for count, text in ((4, "/status"), (5, "/styles")):
        await user.send_text(text)
        await fake.wait_for(lambda f, c=count: len(f.messages(user.id)) >= c, timeout=120)


async def run_echo(fake: LoadTelegram, limiter: Any) -> Any:
    from telegram import InlineKeyboardButton, InlineKeyboardMarkup

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        markup = InlineKeyboardMarkup([[InlineKeyboardButton("press", callback_data="press")]])
        await update.effective_chat.send_message("echo", reply_markup=markup)

    async def press(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.callback_query.answer()
        await update.effective_chat.send_message("pressed")

    app = (
        ApplicationBuilder()
        .token(fake.token)
        .base_url(fake.base_url + "/bot")
        .base_file_url(fake.base_url + "/file/bot")
        .rate_limiter(limiter)
        .concurrent_updates(True)
        .build()
    )
    app.add_handler(CallbackQueryHandler(press))
    app.add_handler(MessageHandler(filters.ALL, echo))
    await app.initialize()
    await app.start()
    await app.updater.start_polling(poll_interval=0.0, timeout=10)

    async def stop() -> None:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()

    return stop


async def run_likeness(fake: LoadTelegram, work: Path) -> Any:
    from bot.app import App

    app = await App.create(
        tiny_settings(work, LIKENESS_TELEGRAM_TOKEN=fake.token, LIKENESS_TELEGRAM_API_URL=fake.base_url),
        with_worker=False,
    )
    await app.start()
    return app.stop


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def measure(kind: str, users: int, work: Path) -> dict[str, float]:
    fake = LoadTelegram()
    await fake.start()
    photo = fd.encode(fd.astronaut(), "JPEG", quality=85)
    if kind == "likeness":
        stop = await run_likeness(fake, work / kind)
    else:
        stop = await run_echo(fake, FloodLimiter() if kind == "echo" else AIORateLimiter(max_retries=3))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    script = likeness_user if kind == "likeness" else echo_user
    started = time.monotonic()
    load = [os.getloadavg()[0]]
    try:
        await asyncio.gather(*(script(fake, fake.user(50_000 + n), photo) for n in range(users)))
        elapsed = time.monotonic() - started
        load.append(os.getloadavg()[0])
    finally:
        await stop()
        await fake.stop()
    return {
        "updates": fake.updates_fetched,
        "updates_per_second": round(fake.updates_fetched / elapsed, 2),
        "p50_ms": round(1000 * percentile(fake.latencies, 50), 1),
        "p99_ms": round(1000 * percentile(fake.latencies, 99), 1),
        "photo_p50_ms": round(1000 * percentile(fake.photo_latencies, 50), 1),
        "photo_p99_ms": round(1000 * percentile(fake.photo_latencies, 99), 1),
        "callbacks": len(fake.callback_latencies),
        "callback_p50_ms": round(1000 * percentile(fake.callback_latencies, 50), 1),
        "callback_p99_ms": round(1000 * percentile(fake.callback_latencies, 99), 1),
        "flood_429": fake.flood_429,
        "flood_429_per_chat": fake.flood_429_chat,
        "most_sends_in_one_chat": max(fake.sent_per_chat.values(), default=0),
        "peak_rss_mb": round(max(rss_before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024, 1),
        "seconds": round(elapsed, 1),
        "load_average": round(statistics.mean(load), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="likeness-load-"))
    stock = asyncio.run(measure("echo-stock", args.users, work))
    print("echo, stock AIORateLimiter", stock, flush=True)
    echo = asyncio.run(measure("echo", args.users, work))
    print("echo    ", echo, flush=True)
    likeness = asyncio.run(measure("likeness", args.users, work))
    print("likeness", likeness, flush=True)
    result = {
        "users": args.users,
        "echo_stock_limiter": stock,
        "echo": echo,
        "likeness": likeness,
        "throughput_ratio": round(likeness["updates_per_second"] / echo["updates_per_second"], 3),
        "p50_ratio": round(likeness["p50_ms"] / max(echo["p50_ms"], 0.1), 2),
        "p99_ratio": round(likeness["p99_ms"] / max(echo["p99_ms"], 0.1), 2),
    }
    print(json.dumps(result))
    return 1 if likeness["flood_429"] else 0


if __name__ == "__main__":
    sys.exit(main())
