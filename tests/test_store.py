"""The SQLite database and its repositories: migrations, pragmas, total erasure of one user, secure deletion, transactions across tasks."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

import engine.db.sqlite.migrations as store_module
from engine.clock import FakeClock
from engine.db import USER_TABLES, Tables
from engine.db.sqlite import SqliteDatabase as Store
from engine.db.sqlite.migrations import MIGRATIONS

ALICE, BOB = "a" * 32, "b" * 32


def marker(user_id: str) -> str:
    return f"SECRET-MARKER-{user_id[:4]}"


async def columns(store: Store, table: str) -> list[tuple[str, str]]:
    return [(row["name"], row["type"]) for row in await store.fetchall(f"PRAGMA table_info({table})")]


async def insert_everywhere(store: Store, user_id: str) -> None:
    """One row for the user in every USER_TABLES table, every column filled, text carrying a marker."""
    for table in reversed(USER_TABLES):  # users first: the others reference it
        names, values = [], []
        for name, kind in await columns(store, table):
            names.append(name)
            if name == "user_id" or (table == "users" and name == "id"):
                values.append(user_id)
            elif kind == "TEXT":
                values.append(f"{marker(user_id)}-{table}-{name}")
            elif kind == "BLOB":
                values.append(marker(user_id).encode())
            else:
                values.append(1)
        await store.execute(
            f"INSERT INTO {table}({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values
        )


async def count(store: Store, table: str, user_id: str) -> int:
    column = "id" if table == "users" else "user_id"
    row = await store.fetchone(f"SELECT COUNT(*) FROM {table} WHERE {column}=?", (user_id,))
    return row[0]


# -- schema -----------------------------------------------------------------------------------------------


async def table_names(store: Store) -> list[str]:
    rows = await store.fetchall("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
    return [row["name"] for row in rows]


async def test_migrations_run_once(data_dir: Path, fake_clock: FakeClock) -> None:
    store = await Store.open(data_dir / "likeness.sqlite3", fake_clock)
    assert (await store.fetchone("PRAGMA user_version"))[0] == len(MIGRATIONS)
    tables = await table_names(store)
    assert set(USER_TABLES) <= set(tables)
    assert await store.migrate() == len(MIGRATIONS)  # again: nothing to do (a re-run CREATE would fail)
    await store.close()

    reopened = await Store.open(data_dir / "likeness.sqlite3", fake_clock)
    assert await table_names(reopened) == tables
    assert (await reopened.fetchone("PRAGMA user_version"))[0] == len(MIGRATIONS)
    await reopened.close()


async def test_new_migration_applies_on_open(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    await (await Store.open(data_dir / "likeness.sqlite3")).close()
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, "CREATE TABLE extra (x TEXT)"])
    for _ in range(2):  # the second open finds nothing to do
        store = await Store.open(data_dir / "likeness.sqlite3")
        assert (await store.fetchone("PRAGMA user_version"))[0] == len(MIGRATIONS) + 1
        assert "extra" in await table_names(store)
        await store.close()


async def test_failed_migration_changes_nothing(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = "CREATE TABLE half_done (x TEXT); CREATE TABLE broken ("
    monkeypatch.setattr(store_module, "MIGRATIONS", [*MIGRATIONS, broken])
    with pytest.raises(sqlite3.OperationalError):
        await Store.open(data_dir / "likeness.sqlite3")
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    store = await Store.open(data_dir / "likeness.sqlite3")
    assert (await store.fetchone("PRAGMA user_version"))[0] == len(MIGRATIONS)
    assert "half_done" not in await table_names(store)
    await store.close()


async def test_pragmas(store: Store) -> None:
    assert (await store.fetchone("PRAGMA journal_mode"))[0] == "wal"
    assert (await store.fetchone("PRAGMA secure_delete"))[0] == 1
    assert (await store.fetchone("PRAGMA busy_timeout"))[0] == 10000
    assert (await store.fetchone("PRAGMA foreign_keys"))[0] == 1


async def test_user_tables_cover_every_table_with_a_user(store: Store) -> None:
    """A table that gains a user_id column must be added to USER_TABLES, or erasure would miss it."""
    with_users = {"users"}
    for table in await table_names(store):
        if any(name == "user_id" for name, _ in await columns(store, table)):
            with_users.add(table)
    assert with_users == set(USER_TABLES)


# -- users and erasure ------------------------------------------------------------------------------------


async def test_ensure_user(store: Store, fake_clock: FakeClock) -> None:
    assert await Tables(store).users.ensure(ALICE, "telegram", b"sealed-chat") is True
    fake_clock.advance(60)
    assert await Tables(store).users.ensure(ALICE, "telegram", None) is False
    user = await Tables(store).users.get(ALICE)
    assert user["chat"] == b"sealed-chat"  # None keeps the known address
    assert user["last_active_at"] == user["created_at"] + 60
    assert await Tables(store).users.get(BOB) is None


async def test_erase_user_deletes_every_row_of_that_user_only(store: Store) -> None:
    for user in (ALICE, BOB):
        await insert_everywhere(store, user)
    for table in USER_TABLES:
        assert await count(store, table, ALICE) == 1

    counts = await Tables(store).users.erase(ALICE)

    assert counts == dict.fromkeys(USER_TABLES, 1)
    for table in USER_TABLES:
        assert await count(store, table, ALICE) == 0, table
        assert await count(store, table, BOB) == 1, table
    assert await Tables(store).users.erase(ALICE) == dict.fromkeys(USER_TABLES, 0)  # idempotent


async def test_erased_rows_are_overwritten_on_disk(data_dir: Path, store: Store) -> None:
    database, wal = data_dir / "likeness.sqlite3", data_dir / "likeness.sqlite3-wal"
    for user in (ALICE, BOB):
        await insert_everywhere(store, user)
    await store.compact()
    assert marker(ALICE).encode() in database.read_bytes()  # the scan below can fail

    await Tables(store).users.erase(ALICE)  # checkpoints itself

    assert not wal.exists() or wal.stat().st_size == 0
    content = database.read_bytes()
    assert marker(ALICE).encode() not in content
    assert marker(BOB).encode() in content


# -- transactions -----------------------------------------------------------------------------------------


async def test_concurrent_transactions_and_statements_interleave_safely(store: Store) -> None:
    await store.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
    await store.execute("CREATE TABLE log (i INTEGER NOT NULL)")
    await store.execute("INSERT INTO counter VALUES (0)")

    async def increment() -> None:
        async with store.transaction():
            row = await store.fetchone("SELECT n FROM counter")
            await asyncio.sleep(0)  # let every other task try to run a statement now
            await store.execute("UPDATE counter SET n=?", (row["n"] + 1,))

    async def append(i: int) -> None:
        await store.execute("INSERT INTO log VALUES (?)", (i,))

    tasks = [increment() for _ in range(25)] + [append(i) for i in range(25)]
    await asyncio.gather(*tasks)

    assert (await store.fetchone("SELECT n FROM counter"))["n"] == 25  # no lost update
    assert (await store.fetchone("SELECT COUNT(*) FROM log"))[0] == 25


async def test_rollback_does_not_take_another_tasks_statement(store: Store) -> None:
    await store.execute("CREATE TABLE log (what TEXT NOT NULL)")
    inside = asyncio.Event()

    async def failing_transaction() -> None:
        async with store.transaction():
            await store.execute("INSERT INTO log VALUES ('rolled back')")
            inside.set()
            for _ in range(10):
                await asyncio.sleep(0)
            raise RuntimeError("boom")

    async def bystander() -> None:
        await inside.wait()
        await store.execute("INSERT INTO log VALUES ('kept')")

    results = await asyncio.gather(failing_transaction(), bystander(), return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    rows = await store.fetchall("SELECT what FROM log")
    assert [row["what"] for row in rows] == ["kept"]


async def test_nested_transaction_joins_the_outer_one(store: Store) -> None:
    await store.execute("CREATE TABLE log (what TEXT NOT NULL)")
    with pytest.raises(RuntimeError):
        async with store.transaction():
            async with store.transaction():
                await store.execute("INSERT INTO log VALUES ('inner')")
            raise RuntimeError("outer fails")
    assert await store.fetchall("SELECT * FROM log") == []
    async with store.transaction():
        await store.execute("INSERT INTO log VALUES ('after')")
    assert len(await store.fetchall("SELECT * FROM log")) == 1


async def test_audit_records_what_not_whom(store: Store, fake_clock: FakeClock) -> None:
    await Tables(store).audit.add("erase", photos=3, adapters=1)
    row = await store.fetchone("SELECT * FROM audit")
    assert (row["at"], row["action"], row["detail"]) == (
        fake_clock.now(),
        "erase",
        '{"adapters": 1, "photos": 3}',
    )
