"""Job queue, on every storage backend: per-user order, fairness between users, leases, retries, cancellation, ETAs."""

from __future__ import annotations

import asyncio

import pytest

from engine.clock import FakeClock
from engine.db import USER_TABLES, Database, Tables
from engine.queue import DEFAULT_DURATIONS, Job, JobQueue, QueuePosition
from tests.storage_backends import Backend

LEASE = 60.0
BACKOFF = 10.0
ALICE, BOB, CAROL, DAVE = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)


@pytest.fixture
async def queue(db: Database) -> JobQueue:
    """A queue on each storage backend, with four users."""
    for user in (ALICE, BOB, CAROL, DAVE):
        await Tables(db).users.ensure(user, "telegram", None)
    return JobQueue(db, lease_seconds=LEASE, max_attempts=3, backoff_seconds=BACKOFF)


async def claim(queue: JobQueue, worker: str = "w1") -> Job:
    job = await queue.claim(worker)
    assert job is not None
    return job


async def state(queue: JobQueue, job_id: str) -> str:
    job = await queue.get(job_id)
    assert job is not None
    return job.state


async def test_enqueue_claim_finish(queue: JobQueue) -> None:
    job_id = await queue.enqueue(ALICE, "train", {"steps": 10})
    queued = await queue.get(job_id)
    assert queued is not None
    assert (queued.state, queued.attempts, queued.payload) == ("queued", 0, {"steps": 10})

    job = await claim(queue)
    assert (job.id, job.state, job.attempts, job.kind) == (job_id, "running", 1, "train")
    assert await queue.heartbeat(job, 0.5, "training")
    assert (await queue.get(job_id)).stage == "training"
    assert await queue.is_current(job)
    assert await queue.finish(job)

    done = await queue.get(job_id)
    assert (done.state, done.progress, done.stage) == ("done", 1.0, "done")
    assert await queue.finish(job) is False  # only once
    assert await queue.claim("w1") is None
    assert await queue.active_jobs(ALICE) == []


async def test_one_running_job_per_user_in_queue_order(queue: JobQueue) -> None:
    train = await queue.enqueue(ALICE, "train")
    generate = await queue.enqueue(ALICE, "generate")
    assert [job.id for job in await queue.active_jobs(ALICE)] == [train, generate]

    first = await claim(queue)
    assert first.id == train
    assert await queue.claim("w2") is None  # generation waits for the training, even with a free worker
    assert await queue.finish(first)
    assert (await claim(queue, "w2")).id == generate


async def test_a_retried_job_keeps_its_place(queue: JobQueue, fake_clock: FakeClock) -> None:
    train = await queue.enqueue(ALICE, "train")
    await queue.enqueue(ALICE, "generate")
    job = await claim(queue)
    assert await queue.fail(job, "out of memory") == "queued"
    assert await queue.claim("w1") is None  # the generation does not overtake the training's backoff
    fake_clock.advance(BACKOFF + 1)
    again = await claim(queue)
    assert (again.id, again.attempts) == (train, 2)


async def test_fair_between_users(queue: JobQueue, fake_clock: FakeClock) -> None:
    for _ in range(5):
        await queue.enqueue(ALICE, "generate")
    fake_clock.advance(1)
    await queue.enqueue(BOB, "generate")

    served = []
    while (job := await queue.claim("w1")) is not None:
        served.append(job.user_id)
        fake_clock.advance(1)
        assert await queue.finish(job)
    assert served == [ALICE, BOB, ALICE, ALICE, ALICE, ALICE]


async def test_round_robin_over_three_users(queue: JobQueue, fake_clock: FakeClock) -> None:
    for user, jobs in ((ALICE, 3), (BOB, 2), (CAROL, 1)):
        for _ in range(jobs):
            await queue.enqueue(user, "generate")
    served = []
    while (job := await queue.claim("w1")) is not None:
        served.append(job.user_id)
        fake_clock.advance(1)
        await queue.finish(job)
    assert served == [ALICE, BOB, CAROL, ALICE, BOB, ALICE]


async def test_expired_lease_is_taken_over(queue: JobQueue, fake_clock: FakeClock) -> None:
    job_id = await queue.enqueue(ALICE, "train")
    stale = await claim(queue, "w1")

    fake_clock.advance(LEASE - 1)
    assert await queue.heartbeat(stale, 0.2, "training")  # renews the lease
    fake_clock.advance(LEASE - 1)
    assert await queue.claim("w2") is None  # renewed: still w1's

    fake_clock.advance(2)
    current = await claim(queue, "w2")
    assert (current.id, current.attempts) == (job_id, 2)

    assert await queue.heartbeat(stale, 0.9, "late") is False
    assert await queue.is_current(stale) is False
    assert await queue.finish(stale) is False
    await queue.fail(stale, "late failure")
    await queue.release(stale)
    still = await queue.get(job_id)
    assert (still.state, still.attempts, still.error) == (
        "running",
        2,
        None,
    )  # the stale worker changed nothing

    assert await queue.is_current(current)
    assert await queue.heartbeat(current, 0.5, "training")
    assert await queue.finish(current)


async def test_a_takeover_waits_for_the_results_being_written(
    backend: Backend, db: Database, queue: JobQueue, fake_clock: FakeClock
) -> None:
    """Results written in a transaction that checked `is_current` are the owner's: a worker in another
    process taking over the expired lease meanwhile does not get the job before they are committed."""
    await queue.enqueue(ALICE, "train")
    stale = await claim(queue, "w1")
    fake_clock.advance(LEASE + 1)  # the lease expired: another worker may take the job over
    elsewhere = await backend.open_db(fake_clock)
    other = JobQueue(elsewhere, lease_seconds=LEASE, max_attempts=3, backoff_seconds=BACKOFF)
    events: list[str] = []

    async def take_over() -> None:
        events.append("taken over" if await other.claim("w2") else "skipped")

    try:
        async with db.transaction():
            assert await queue.is_current(stale)
            racing = asyncio.create_task(take_over())
            await asyncio.sleep(0.5)  # time enough for the other worker's claim
            events.append("results written")
        await asyncio.wait_for(racing, 30)
    finally:
        await elsewhere.close()
    assert "taken over" not in events[: events.index("results written")], events


async def test_an_erase_waits_for_the_results_being_written(
    backend: Backend, db: Database, queue: JobQueue, fake_clock: FakeClock
) -> None:
    """/forget in another process while a worker commits a job's results: the erase sees them and deletes
    them too (no row is left, no foreign key stops the erase), or the results are not written at all."""
    await queue.enqueue(ALICE, "train")
    job = await claim(queue, "w1")
    await queue.enqueue(ALICE, "generate")
    elsewhere = await backend.open_db(fake_clock)
    try:
        async with db.transaction():
            assert await queue.is_current(job)
            erase = asyncio.create_task(Tables(elsewhere).users.erase(ALICE))
            await asyncio.sleep(0.5)  # time enough for the erase to run as far as it can
            await Tables(db).outputs.add("output-1", ALICE, job.id, "headshot", 0)
            await Tables(db).deliveries.add(ALICE, job.id, "portraits")
            assert await queue.finish(job)
        counts = await asyncio.wait_for(erase, 30)
    finally:
        await elsewhere.close()
    assert counts["users"] == 1
    leftovers = {
        t: await db.fetchall(f"SELECT * FROM {t} WHERE user_id=?", (ALICE,)) for t in USER_TABLES[:-1]
    }
    assert not any(leftovers.values()), leftovers


async def test_too_many_lost_leases_fail_the_job(queue: JobQueue, fake_clock: FakeClock) -> None:
    doomed = await queue.enqueue(ALICE, "train")
    following = await queue.enqueue(ALICE, "generate")
    for attempt in (1, 2, 3):
        job = await claim(queue)
        assert (job.id, job.attempts) == (doomed, attempt)
        fake_clock.advance(LEASE + 1)

    job = await claim(queue)  # marks the abandoned job failed and moves on to the next one
    assert job.id == following
    failed = await queue.get(doomed)
    assert failed is not None
    assert (failed.state, failed.attempts) == ("failed", 3)
    assert failed.error


async def test_fail_retries_with_backoff_then_gives_up(queue: JobQueue, fake_clock: FakeClock) -> None:
    job_id = await queue.enqueue(ALICE, "train")
    for attempt, delay in ((1, BACKOFF), (2, 2 * BACKOFF)):
        job = await claim(queue)
        assert job.attempts == attempt
        assert await queue.fail(job, "transient") == "queued"
        queued = await queue.get(job_id)
        assert (queued.state, queued.error) == ("queued", "transient")
        fake_clock.advance(delay - 1)
        assert await queue.claim("w1") is None  # not before the backoff is over
        fake_clock.advance(2)

    job = await claim(queue)
    assert job.attempts == 3
    assert await queue.fail(job, "transient") == "failed"  # the last attempt
    assert await state(queue, job_id) == "failed"
    assert await queue.claim("w1") is None


async def test_fail_without_retry(queue: JobQueue) -> None:
    job_id = await queue.enqueue(ALICE, "train")
    job = await claim(queue)
    assert await queue.fail(job, "no face found", retry=False) == "failed"
    failed = await queue.get(job_id)
    assert (failed.state, failed.error) == ("failed", "no face found")
    assert await queue.claim("w1") is None


async def test_release_does_not_count_an_attempt(queue: JobQueue) -> None:
    job_id = await queue.enqueue(ALICE, "train")
    job = await claim(queue)
    await queue.release(job)
    released = await queue.get(job_id)
    assert (released.state, released.attempts) == ("queued", 0)
    assert await queue.heartbeat(job, 0.5, "training") is False
    again = await claim(queue, "w2")
    assert (again.id, again.attempts) == (job_id, 1)


async def test_cancel_user(queue: JobQueue) -> None:
    running_id = await queue.enqueue(ALICE, "train")
    queued_id = await queue.enqueue(ALICE, "generate")
    other_id = await queue.enqueue(BOB, "generate")
    running = await claim(queue)
    assert running.id == running_id

    assert await queue.cancel_user(ALICE) == 2
    assert await state(queue, running_id) == "cancelled"
    assert await state(queue, queued_id) == "cancelled"
    assert await queue.heartbeat(running, 0.5, "training") is False  # the worker notices and stops
    assert await queue.is_current(running) is False
    assert await queue.finish(running) is False
    assert await state(queue, running_id) == "cancelled"

    assert await state(queue, other_id) == "queued"
    assert (await claim(queue)).id == other_id


async def test_cancel_is_authorised_by_owner(queue: JobQueue) -> None:
    job_id = await queue.enqueue(ALICE, "generate")
    assert await queue.cancel(job_id, BOB) is False
    assert await state(queue, job_id) == "queued"
    assert await queue.cancel(job_id, ALICE) is True
    assert await queue.cancel(job_id, ALICE) is False
    assert await state(queue, job_id) == "cancelled"


async def test_position_and_eta_use_measured_durations(queue: JobQueue, fake_clock: FakeClock) -> None:
    train, generate = DEFAULT_DURATIONS["train"], DEFAULT_DURATIONS["generate"]
    await queue.enqueue(ALICE, "train")
    await queue.enqueue(BOB, "generate")
    carol = await queue.get(await queue.enqueue(CAROL, "generate"))
    position = await queue.position(carol)
    assert (position.ahead, position.eta_seconds) == (2, train + 2 * generate)

    job = await claim(queue)  # Alice's training takes 100 s
    fake_clock.advance(100)
    assert await queue.finish(job)
    job = await claim(queue)  # Bob's generation takes 30 s
    fake_clock.advance(30)
    assert await queue.finish(job)
    assert await queue.mean_duration("train") == 100
    assert await queue.mean_duration("generate") == 30

    position = await queue.position(carol)
    assert (position.ahead, position.eta_seconds) == (0, 30)
    dave = await queue.get(await queue.enqueue(DAVE, "train"))
    assert (await queue.position(dave)).eta_seconds == 30 + 100

    running = await claim(queue)
    assert running.id == carol.id
    assert await queue.heartbeat(running, 0.5, "generating")  # half done: half its duration is left
    position = await queue.position(dave)
    assert (position.ahead, position.eta_seconds) == (1, 15 + 100)


async def test_concurrent_claims_never_share_a_job(queue: JobQueue) -> None:
    ids = {await queue.enqueue(user, "generate") for user in (ALICE, BOB, CAROL)}
    await queue.enqueue(ALICE, "generate")  # waits behind Alice's first job
    claimed = await asyncio.gather(*(queue.claim(f"w{i}") for i in range(6)))
    jobs = [job for job in claimed if job is not None]
    assert sorted(job.id for job in jobs) == sorted(ids)
    assert all(job.attempts == 1 for job in jobs)


async def test_an_eta_built_on_priors_says_it_is_an_estimate(queue: JobQueue, fake_clock: FakeClock) -> None:
    alice = await queue.get(await queue.enqueue(ALICE, "train"))
    assert (await queue.position(alice)).estimated
    job = await claim(queue)
    fake_clock.advance(7)
    assert await queue.finish(job)
    bob = await queue.get(await queue.enqueue(BOB, "train"))
    assert (await queue.position(bob)) == QueuePosition(ahead=0, eta_seconds=7, estimated=False)
    carol = await queue.get(await queue.enqueue(CAROL, "generate"))  # no generation measured yet
    assert (await queue.position(carol)).estimated
