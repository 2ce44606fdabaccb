"""Running in public, at the engine's door: access modes, invite codes, quotas on rolling windows, one
unfinished style request, the queue limit, pause, blocks, flood control, the operators' audit log and the
metrics endpoint (scraped over real HTTP, parsed with prometheus-client's parser).

Real SQLite files and a real vault; a `FakeClock` moves time. Photo rows are seeded directly here (the
face checks have their own tests; the end-to-end tests upload real photos).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.clock import FakeClock
from engine.db import new_id
from engine.errors import Refused
from engine.facade import Engine, Verdict
from engine.runtime import serve_metrics
from engine.settings import SettingsError
from tests.tiny_settings import TINY_ENV, tiny_settings

DAY = 86400.0
OPERATOR = ("telegram", "900")


@pytest.fixture
async def open_engine(
    data_dir: Path, fake_clock: FakeClock, backend_env: dict[str, str]
) -> AsyncIterator[Callable]:
    """Opens engines on each storage backend (SQLite, PostgreSQL)."""
    engines: list[Engine] = []

    async def make(**env: str) -> Engine:
        env.setdefault("LIKENESS_ACCESS_OPERATORS", ":".join(OPERATOR))
        engine = await Engine.open(tiny_settings(data_dir, **backend_env, **env), fake_clock)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.close()


async def onboard(engine: Engine, platform_id: str, photos: int = 3) -> str:
    """A consented user with `photos` photo rows; returns the pseudonym."""
    user = engine.pseudonym("telegram", platform_id)
    await engine.give_consent(user, "telegram", {"chat_id": platform_id, "user_id": platform_id}, "v1", "ok")
    for _ in range(photos):
        await engine.tables.photos.add(new_id(), user, b"sealed", 512, 512)
    return user


async def finish_next(engine: Engine) -> None:
    """Claim the next job and record a (made-up) result for it, as a worker would."""
    job = await engine.queue.claim("test-worker")
    assert job is not None
    if job.kind == "train":
        assert await engine.record_adapter(job, b"lora", [0.5], "sks", [])
    elif job.kind == "video":
        adapter = await engine.adapter(job.user_id)
        assert await engine.record_clip(job, job.payload["preset"], b"mp4", adapter["id"])
    else:
        adapter = await engine.adapter(job.user_id)
        assert await engine.record_portraits(job, job.payload["preset"], [b"png"], adapter["id"])


async def refused(reason: str, call) -> Refused:
    with pytest.raises(Refused) as caught:
        await call
    assert caught.value.reason == reason
    return caught.value


# -- settings -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("LIKENESS_ACCESS_MODE", "closed", "open, invite or allowlist"),
        ("LIKENESS_ACCESS_ALLOW", "telegram 123", "telegram:123"),
        ("LIKENESS_ACCESS_OPERATORS", "myspace:1", "telegram:123"),
        ("LIKENESS_METRICS_ADDRESS", "9464", "host:port"),
        ("LIKENESS_ENGINE_MAX_QUEUED", "0", "at least 1"),
        ("LIKENESS_QUOTA_REQUESTS", "-1", "0 (no limit)"),
        ("LIKENESS_QUOTA_VIDEOS", "-1", "0 (no limit)"),
    ],
)
def test_bad_public_settings_fail_with_one_line(data_dir, name, value, problem):
    with pytest.raises(SettingsError) as caught:
        tiny_settings(data_dir, **{name: value})
    assert name in str(caught.value) and problem in str(caught.value)


# -- access ---------------------------------------------------------------------------------------------
async def test_allowlist_admits_only_listed_ids_and_keeps_them_as_pseudonyms(open_engine):
    engine = await open_engine(
        LIKENESS_ACCESS_MODE="allowlist", LIKENESS_ACCESS_ALLOW="telegram:1, discord:2"
    )
    await engine.require_access(engine.pseudonym("telegram", "1"))
    await engine.require_access(engine.pseudonym("discord", "2"))
    await engine.require_access(engine.pseudonym(*OPERATOR))  # operators are always admitted
    refusal = await refused("access", engine.require_access(engine.pseudonym("discord", "1")))
    assert refusal.detail == {"variant": "allowlist"}
    assert engine.settings.access.allow == "" and engine.settings.access.operators == ""
    with pytest.raises(Refused):  # no code admits anyone in allowlist mode
        await engine.redeem_invite(engine.pseudonym("telegram", "3"), "whatever-code")


async def test_invite_codes_have_uses_and_an_expiry_and_are_stored_hashed(open_engine, fake_clock, data_dir):
    engine = await open_engine(LIKENESS_ACCESS_MODE="invite")
    operator = engine.pseudonym(*OPERATOR)
    anna, ben, cleo, dora = (engine.pseudonym("telegram", str(n)) for n in (1, 2, 3, 4))
    assert (await refused("access", engine.require_access(anna))).detail == {"variant": "invite"}

    invite = await engine.create_invite(operator, uses=2, valid_for=DAY)
    assert await engine.redeem_invite(anna, invite.code) is True
    await engine.require_access(anna)
    assert await engine.redeem_invite(anna, invite.code) is False  # admitted already: no use taken
    assert await engine.redeem_invite(ben, f"  {invite.code} ") is True
    await refused("invite_invalid", engine.redeem_invite(cleo, invite.code))  # used up
    await refused("access", engine.require_access(cleo))
    await refused("invite_invalid", engine.redeem_invite(cleo, "not a code!"))

    later = await engine.create_invite(operator, uses=5, valid_for=DAY)
    fake_clock.advance(DAY + 1)
    await refused("invite_invalid", engine.redeem_invite(dora, later.code))  # expired
    with pytest.raises(PermissionError):
        await engine.create_invite(anna)

    # The code is never stored, and no row links a code to the users who redeemed it.
    rows = await engine.store.fetchall("SELECT * FROM invites")
    assert len(rows) == 1  # the used-up code was forgotten when the next one was made
    assert all(code not in str(dict(row)) for row in rows for code in (invite.code, later.code))
    assert {*dict(rows[0])} == {"id", "code_hash", "uses_left", "expires_at", "created_at"}
    admitted = await engine.store.fetchall("SELECT * FROM admissions")
    assert sorted(dict(row)["user_id"] for row in admitted) == sorted([anna, ben])
    assert {*dict(admitted[0])} == {"user_id", "admitted_at"}
    raw = b"".join(path.read_bytes() for path in data_dir.glob("likeness.sqlite3*"))
    assert invite.code.encode() not in raw and later.code.encode() not in raw


async def test_known_users_stay_admitted_when_invites_are_switched_on(open_engine):
    engine = await open_engine()
    user = await onboard(engine, "7")
    await engine.close()
    engine = await open_engine(LIKENESS_ACCESS_MODE="invite")
    await engine.require_access(user)


# -- quotas ---------------------------------------------------------------------------------------------
async def test_training_quota_is_a_rolling_window_and_cancelled_or_failed_jobs_give_units_back(
    open_engine, fake_clock
):
    engine = await open_engine(LIKENESS_ENGINE_MAX_ATTEMPTS="1")
    user = await onboard(engine, "1")
    first = await engine.start_training(user)
    await finish_next(engine)
    fake_clock.advance(DAY)

    cancelled = await engine.start_training(user)
    assert await engine.cancel_job(user, cancelled)
    await engine.start_training(user)
    job = await engine.queue.claim("w")
    assert await engine.record_failure(job, "RuntimeError: boom") == "failed"
    (allowance,) = [
        a for a in (await engine.status(user, "telegram", {"en": "v1"})).allowances if a.kind == "train"
    ]
    assert (allowance.used, allowance.left) == (1, 1)

    await engine.start_training(user)
    await finish_next(engine)
    jobs_before = await engine.store.fetchone("SELECT COUNT(*) AS n FROM jobs")
    refusal = await refused("quota", engine.start_training(user))
    first_job = await engine.queue.get(first)
    assert refusal.detail["renews_at"] == first_job.created_at + 30 * DAY
    assert refusal.detail["limit"] == 2 and refusal.detail["period"] == "30 days"
    assert await engine.store.fetchone("SELECT COUNT(*) AS n FROM jobs") == jobs_before  # no job created
    await refused("quota", engine.check_upload_allowed(user))  # photos would not be downloaded

    fake_clock.advance(29 * DAY + 1)  # the first training leaves the window
    await engine.check_upload_allowed(user)
    await engine.start_training(user)


async def test_one_unfinished_style_request_and_the_request_quota(open_engine, fake_clock):
    engine = await open_engine(LIKENESS_QUOTA_REQUESTS="2")
    user = await onboard(engine, "1")
    await engine.start_training(user)
    await finish_next(engine)
    preset = next(iter(engine.presets))

    await engine.request_portraits(user, preset)
    await refused("request_pending", engine.request_portraits(user, preset))
    status = await engine.status(user, "telegram", {"en": "v1"})
    assert [(a.kind, a.used) for a in status.allowances] == [("train", 1), ("generate", 1), ("video", 0)]
    await finish_next(engine)
    await engine.request_portraits(user, preset)
    await finish_next(engine)
    refusal = await refused("quota", engine.request_portraits(user, preset))
    assert refusal.detail["what"] == "style requests"
    fake_clock.advance(DAY)
    await engine.request_portraits(user, preset)


async def test_clips_have_their_own_quota_apart_from_style_requests(open_engine, fake_clock):
    engine = await open_engine(LIKENESS_QUOTA_VIDEOS="2", LIKENESS_QUOTA_REQUESTS="1")
    user = await onboard(engine, "1")
    await engine.start_training(user)
    await finish_next(engine)
    still = next(key for key, preset in engine.presets.items() if not preset.video)
    clip = next(key for key, preset in engine.presets.items() if preset.video)

    first = await engine.request_portraits(user, clip)
    await refused("request_pending", engine.request_portraits(user, still))  # one unfinished, clip or still
    await finish_next(engine)
    fake_clock.advance(60)
    await engine.request_portraits(user, clip)
    await finish_next(engine)
    jobs_before = await engine.store.fetchone("SELECT COUNT(*) AS n FROM jobs")
    refusal = await refused("quota", engine.request_portraits(user, clip))
    assert refusal.detail["kind"] == "video" and refusal.detail["what"] == "animated clips"
    assert refusal.detail["limit"] == 2 and refusal.detail["period"] == "1 day"
    assert refusal.detail["renews_at"] == (await engine.queue.get(first)).created_at + DAY
    assert await engine.store.fetchone("SELECT COUNT(*) AS n FROM jobs") == jobs_before  # nothing queued

    # Two clips used no style request, and the video quota does not hold still portraits back.
    await engine.request_portraits(user, still)
    await finish_next(engine)
    status = await engine.status(user, "telegram", {"en": "v1"})
    assert [(a.kind, a.used, a.left) for a in status.allowances] == [
        ("train", 1, 1),
        ("generate", 1, 0),
        ("video", 2, 0),
    ]
    await refused("quota", engine.request_portraits(user, still))  # its own limit of 1, used by the still
    fake_clock.advance(DAY - 59)  # the first clip leaves the window, the second not yet
    await engine.request_portraits(user, clip)


async def test_no_video_quota_is_shown_when_clips_are_off(open_engine):
    engine = await open_engine(LIKENESS_ENGINE_MOTION_ADAPTER="off")
    user = await onboard(engine, "1")
    status = await engine.status(user, "telegram", {"en": "v1"})
    assert [a.kind for a in status.allowances] == ["train", "generate"]


async def test_a_full_queue_refuses_new_work_with_a_measured_estimate(open_engine):
    engine = await open_engine(LIKENESS_ENGINE_MAX_QUEUED="2")
    users = [await onboard(engine, str(n)) for n in range(4)]
    await engine.start_training(users[0])
    await engine.queue.claim("w")  # running: until measured, a training takes the estimated prior
    await engine.start_training(users[1])
    await engine.start_training(users[2])
    refusal = await refused("busy", engine.start_training(users[3]))
    assert refusal.detail == {"minutes": max(1, math.ceil(engine.queue.priors["train"] / 60))}

    # Measured durations replace the default: 20 trainings of 2 minutes.
    for _ in range(20):
        await engine.store.execute(
            "INSERT INTO job_durations(kind, seconds, finished_at) VALUES ('train', 120, 0)"
        )
    assert (await refused("busy", engine.start_training(users[3]))).detail == {"minutes": 2}
    assert [job.state for job, _ in (await engine.status(users[2], "telegram", {"en": "v1"})).jobs] == [
        "queued"
    ]


# -- operators ------------------------------------------------------------------------------------------
async def test_pause_block_and_the_audit_log(open_engine):
    engine = await open_engine()
    operator = engine.pseudonym(*OPERATOR)
    user = await onboard(engine, "1")
    ref = (await engine.status(user, "telegram", {"en": "v1"})).support_ref
    assert len(ref) == 9 and ref[4] == "-" and user not in ref

    await engine.pause_intake(operator)
    await refused("paused", engine.start_training(user))
    assert (await engine.ops_overview(operator)).paused
    await engine.resume_intake(operator)

    assert await engine.block(operator, "no-such-thing") == "invalid"
    assert await engine.block(operator, "AAAA-AAAA") == "unknown"
    assert await engine.block(operator, ref.lower()) == "blocked"
    assert await engine.block(operator, ref) == "unchanged"
    refusal = await refused("blocked", engine.start_training(user))
    assert refusal.detail == {"ref": ref}
    await refused("blocked", engine.check_upload_allowed(user))
    await engine.forget(user)  # erasure is no way around a block
    user = await onboard(engine, "1")
    await refused("blocked", engine.start_training(user))
    assert await engine.unblock(operator, ref.replace("-", "")) == "unblocked"
    await engine.start_training(user)

    log = await engine.ops_log(operator)
    assert [entry.action for entry in log] == ["ops_unblock", "ops_block", "ops_resume", "ops_pause"]
    assert {entry.operator for entry in log} == {engine.support_reference(operator)}
    assert log[1].detail == {"ref": ref}
    with pytest.raises(PermissionError):
        await engine.ops_log(user)
    with pytest.raises(PermissionError):
        await engine.block(user, ref)


async def test_the_overview_is_numbers_only(open_engine):
    engine = await open_engine()
    operator = engine.pseudonym(*OPERATOR)
    user = await onboard(engine, "1")
    await engine.start_training(user)
    await finish_next(engine)
    overview = await engine.ops_overview(operator)
    assert overview.consented_users == 1 and overview.models == 1
    assert overview.queued == {"train": 0, "generate": 0} and overview.deadlines_overdue == 0
    assert overview.median_seconds["train"] == 0.0 and overview.median_seconds["generate"] is None
    assert overview.blob_bytes > 0 and overview.gpu_bytes is None and not overview.paused
    assert user not in repr(overview)


# -- flood control --------------------------------------------------------------------------------------
async def test_flood_control_answers_once_then_ignores_until_refilled(open_engine, fake_clock):
    engine = await open_engine(LIKENESS_ACCESS_FLOOD_PER_MINUTE="20", LIKENESS_ACCESS_FLOOD_BURST="10")
    flooder, other = engine.pseudonym("telegram", "1"), engine.pseudonym("telegram", "2")
    verdicts = [engine.admit_update(flooder) for _ in range(14)]
    assert verdicts == [Verdict.OK] * 10 + [Verdict.WARN] + [Verdict.DROP] * 3
    assert engine.admit_update(other) is Verdict.OK  # others are not slowed down
    fake_clock.advance(15)  # half refilled: still ignored
    assert engine.admit_update(flooder) is Verdict.DROP
    fake_clock.advance(30)  # full again
    assert [engine.admit_update(flooder) for _ in range(10)] == [Verdict.OK] * 10


# -- metrics --------------------------------------------------------------------------------------------
async def test_metrics_and_health_over_http_carry_no_personal_values(open_engine):
    engine = await open_engine(
        LIKENESS_METRICS_ADDRESS="127.0.0.1:0", LIKENESS_QUOTA_TRAININGS="1", LIKENESS_ACCESS_FLOOD_BURST="10"
    )
    user = await onboard(engine, "7310004242")
    await engine.start_training(user)
    await finish_next(engine)
    await refused("quota", engine.start_training(user))
    engine.note_update("telegram", "command")
    for _ in range(11):
        engine.admit_update(user)
    assert engine.check_size(10**9) is not None
    await engine.forget(await onboard(engine, "7310004343"))
    connected = {"ok": True}
    server = await serve_metrics(engine, lambda: connected["ok"])
    assert server is not None
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                text = await response.text()
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
            connected["ok"] = False
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 503
    finally:
        await server.stop()

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    names = {name for name, _ in samples}
    for expected in (
        "likeness_updates_total",
        "likeness_photos_total",
        "likeness_jobs_total",
        "likeness_job_seconds_bucket",
        "likeness_queue_depth",
        "likeness_deliveries_pending",
        "likeness_deletions_total",
        "likeness_deadlines_overdue",
        "likeness_refusals_total",
    ):
        assert expected in names, expected
    assert samples[("likeness_updates_total", (("kind", "command"), ("platform", "telegram")))] == 1
    assert samples[("likeness_jobs_total", (("kind", "train"), ("outcome", "done")))] == 1
    assert samples[("likeness_refusals_total", (("reason", "quota"),))] == 1
    assert samples[("likeness_refusals_total", (("reason", "flood"),))] == 1
    assert samples[("likeness_photos_total", (("outcome", "too_large"),))] == 1
    assert samples[("likeness_deadlines_overdue", ())] == 0
    assert samples[("likeness_deletions_total", (("artifact", "user"),))] == 1
    assert samples[("likeness_deletions_total", (("artifact", "photo"),))] == 3
    assert samples[("likeness_queue_depth", (("kind", "train"),))] == 0
    for personal in ("7310004242", "7310004343", user, engine.support_reference(user)):
        assert personal not in text


async def test_health_is_503_when_the_store_is_gone(open_engine):
    engine = await open_engine(LIKENESS_METRICS_ADDRESS="127.0.0.1:0")
    server = await serve_metrics(engine)
    store = engine.store

    class Gone:
        """A store whose connection is lost: every statement fails."""

        clock = store.clock
        sql = store.sql

        async def fetchone(self, *args):
            raise ConnectionError("the database went away")

    try:
        url = f"http://127.0.0.1:{server.port}/healthz"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as response:
                assert response.status == 200
            engine.tables.stats.db = Gone()
            async with http.get(url) as response:
                assert response.status == 503
    finally:
        engine.tables.stats.db = store
        await server.stop()


async def test_a_standalone_worker_serves_metrics_too(data_dir):
    """`python -m engine` with LIKENESS_METRICS_ADDRESS: /healthz and /metrics over real HTTP."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIKENESS_")},
        **TINY_ENV,
        "LIKENESS_DATA_DIR": str(data_dir),
        "LIKENESS_METRICS_ADDRESS": f"127.0.0.1:{port}",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(120):
            while True:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                assert worker.returncode is None, (await worker.stderr.read()).decode()[-2000:]
                await asyncio.sleep(0.2)
            async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                text = await response.text()
        names = {family.name for family in text_string_to_metric_families(text)}
        assert {"likeness_queue_depth", "likeness_deadlines_overdue", "likeness_jobs"} <= names
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), 120)
