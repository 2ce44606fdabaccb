"""Queue throughput with several workers: jobs per second through claim -> heartbeat -> finish (a no-op
model), on SQLite and on PostgreSQL, and the p99 time from enqueue to claim.

    python bench/scale.py                      # SQLite in a temp dir + a throw-away PostgreSQL cluster
    python bench/scale.py --jobs 400 --workers 1,2,4
    python bench/scale.py --postgres-url postgresql://user@host/db   # an existing (empty) database

Each worker is its own connection (SQLite: its own aiosqlite connection to one WAL file; PostgreSQL: its
own pool), as separate worker processes would be. Prints human lines; the LAST line is one JSON object
with jobs/s per backend and worker count and the ratio to one worker on SQLite in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.clock import Clock  # noqa: E402
from engine.db import Database, Tables  # noqa: E402
from engine.db.sqlite import SqliteDatabase  # noqa: E402
from engine.queue import JobQueue  # noqa: E402


async def open_backend(backend: str, url: str, folder: Path) -> Database:
    if backend == "sqlite":
        return await SqliteDatabase.open(folder / "likeness.sqlite3", Clock())
    from engine.db.postgres.connection import PostgresDatabase

    return await PostgresDatabase.open(url, Clock())


async def run(backend: str, url: str, workers: int, jobs: int, users: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="likeness-scale-"))
    producer = await open_backend(backend, url, folder)
    queue = JobQueue(producer, lease_seconds=60, max_attempts=3)
    names = [f"{n:032x}" for n in range(users)]
    for name in names:
        await Tables(producer).users.ensure(name, "telegram", None)
    enqueued: dict[str, float] = {}
    waits: list[float] = []
    for index in range(jobs):
        job_id = await queue.enqueue(names[index % users], "generate", {})
        enqueued[job_id] = time.perf_counter()
    connections = [await open_backend(backend, url, folder) for _ in range(workers)]
    done = 0

    async def work(db: Database, name: str) -> None:
        nonlocal done
        own = JobQueue(db, lease_seconds=60, max_attempts=3)
        while done < jobs:
            job = await own.claim(name)
            if job is None:
                await asyncio.sleep(0.001)
                continue
            waits.append(time.perf_counter() - enqueued[job.id])
            await own.heartbeat(job, 0.5, "working")
            await own.finish(job)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(work(db, f"w{n}") for n, db in enumerate(connections)))
    seconds = time.perf_counter() - started
    for db in [producer, *connections]:
        await db.close()
    waits.sort()
    return {
        "jobs_per_second": jobs / seconds,
        "p99_enqueue_to_claim_s": waits[int(0.99 * (len(waits) - 1))],
        "median_enqueue_to_claim_s": statistics.median(waits),
    }


async def main_async(args: argparse.Namespace) -> dict:
    counts = [int(n) for n in args.workers.split(",")]
    results: dict[str, dict[str, dict[str, float]]] = {}
    backends = ["sqlite", "postgres"]
    server = None
    url = args.postgres_url
    if not url:
        from tests.postgres_server import running_server

        server = running_server()
        pg = server.__enter__()
    try:
        for backend in backends:
            results[backend] = {}
            for workers in counts:
                if backend == "postgres" and not args.postgres_url:
                    url = pg.url(pg.new_database())
                numbers = await run(backend, url, workers, args.jobs, args.users)
                results[backend][str(workers)] = numbers
                print(
                    f"{backend:8} {workers} worker(s): {numbers['jobs_per_second']:8.1f} jobs/s, "
                    f"p99 enqueue->claim {numbers['p99_enqueue_to_claim_s'] * 1000:8.1f} ms"
                )
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    baseline = results["sqlite"][str(counts[0])]["jobs_per_second"]
    for backend in backends:
        for numbers in results[backend].values():
            numbers["ratio_to_sqlite_1_worker"] = numbers["jobs_per_second"] / baseline
    return {"jobs": args.jobs, "users": args.users, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--postgres-url", default="")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
