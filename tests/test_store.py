"""The database and its repositories on every backend: migrations, total erasure of one user, what is
left where a copy of the storage can read it, transactions across tasks; SQLite's own settings."""

from __future__ import annotations

import asyncio

import pytest

from engine.clock import FakeClock
from engine.db import USER_TABLES, Database, Tables
from engine.db.sqlite import SqliteDatabase as Store
from tests.storage_backends import Backend

ALICE, BOB = "a" * 32, "b" * 32


def marker(user_id: str) -> str:
    return f"SECRET-MARKER-{user_id[:4]}"


async def insert_everywhere(backend: Backend, db: Database, user_id: str) -> None:
    """One row for the user in every USER_TABLES table, every column filled, text carrying a marker."""
    for table in reversed(USER_TABLES):  # users first: the others reference it
        names, values = [], []
        for name, kind in await backend.columns(db, table):
            names.append(name)
            if name == "user_id" or (table == "users" and name == "id"):
                values.append(user_id)
            elif kind == "text":
                values.append(f"{marker(user_id)}-{table}-{name}")
            elif kind == "bytes":
                values.append(marker(user_id).encode())
            else:
                values.append(1)
        await db.execute(
            f"INSERT INTO {table}({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", values
        )


async def count(db: Database, table: str, user_id: str) -> int:
    column = "id" if table == "users" else "user_id"
    row = await db.fetchone(f"SELECT COUNT(*) AS n FROM {table} WHERE {column}=?", (user_id,))
    return row["n"]


# -- schema -----------------------------------------------------------------------------------------------


async def test_migrations_run_once(backend: Backend, db: Database) -> None:
    migrations = len(backend.migrations.MIGRATIONS)
    assert await backend.schema_version(db) == migrations
    tables = await backend.tables(db)
    assert set(USER_TABLES) <= set(tables)
    assert await db.migrate() == migrations  # again: nothing to do (a re-run CREATE would fail)

    reopened = await backend.open_db()
    assert await backend.tables(reopened) == tables
    assert await backend.schema_version(reopened) == migrations
    await reopened.close()


async def test_new_migration_applies_on_open(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    await (await backend.open_db()).close()
    migrations = backend.migrations.MIGRATIONS
    monkeypatch.setattr(backend.migrations, "MIGRATIONS", [*migrations, "CREATE TABLE extra (x TEXT)"])
    for _ in range(2):  # the second open finds nothing to do
        db = await backend.open_db()
        assert await backend.schema_version(db) == len(migrations) + 1
        assert "extra" in await backend.tables(db)
        await db.close()


async def test_failed_migration_changes_nothing(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    migrations = backend.migrations.MIGRATIONS
    broken = "CREATE TABLE half_done (x TEXT); CREATE TABLE broken ("
    monkeypatch.setattr(backend.migrations, "MIGRATIONS", [*migrations, broken])
    with pytest.raises(backend.error):
        await backend.open_db()
    monkeypatch.setattr(backend.migrations, "MIGRATIONS", migrations)
    db = await backend.open_db()
    assert await backend.schema_version(db) == len(migrations)
    assert "half_done" not in await backend.tables(db)
    await db.close()


async def test_pragmas(store: Store) -> None:
    # SQLite-only: these PRAGMAs are the embedded database's own settings; PostgreSQL has no equivalent.
    assert (await store.fetchone("PRAGMA journal_mode"))[0] == "wal"
    assert (await store.fetchone("PRAGMA secure_delete"))[0] == 1
    assert (await store.fetchone("PRAGMA busy_timeout"))[0] == 10000
    assert (await store.fetchone("PRAGMA foreign_keys"))[0] == 1


async def test_user_tables_cover_every_table_with_a_user(backend: Backend, db: Database) -> None:
    """A table that gains a user_id column must be added to USER_TABLES, or erasure would miss it."""
    with_users = {"users"}
    for table in await backend.tables(db):
        if any(name == "user_id" for name, _ in await backend.columns(db, table)):
            with_users.add(table)
    assert with_users == set(USER_TABLES)


# -- users and erasure ------------------------------------------------------------------------------------


async def test_ensure_user(db: Database, fake_clock: FakeClock) -> None:
    assert await Tables(db).users.ensure(ALICE, "telegram", b"sealed-chat") is True
    fake_clock.advance(60)
    assert await Tables(db).users.ensure(ALICE, "telegram", None) is False
    user = await Tables(db).users.get(ALICE)
    assert user["chat"] == b"sealed-chat"  # None keeps the known address
    assert user["last_active_at"] == user["created_at"] + 60
    assert await Tables(db).users.get(BOB) is None


async def test_erase_user_deletes_every_row_of_that_user_only(backend: Backend, db: Database) -> None:
    for user in (ALICE, BOB):
        await insert_everywhere(backend, db, user)
    for table in USER_TABLES:
        assert await count(db, table, ALICE) == 1

    counts = await Tables(db).users.erase(ALICE)

    assert counts == dict.fromkeys(USER_TABLES, 1)
    for table in USER_TABLES:
        assert await count(db, table, ALICE) == 0, table
        assert await count(db, table, BOB) == 1, table
    assert await Tables(db).users.erase(ALICE) == dict.fromkeys(USER_TABLES, 0)  # idempotent


async def test_erased_rows_are_overwritten_in_storage(backend: Backend, db: Database) -> None:
    """SQLite: the database file and its WAL no longer hold the rows (secure_delete, checkpoint);
    PostgreSQL: no live row does (see `readable_rows`)."""
    for user in (ALICE, BOB):
        await insert_everywhere(backend, db, user)
    assert marker(ALICE).encode() in await backend.readable_rows(db)  # the scan below can fail

    await Tables(db).users.erase(ALICE)  # compacts itself

    content = await backend.readable_rows(db)
    assert marker(ALICE).encode() not in content
    assert marker(BOB).encode() in content


# -- transactions -----------------------------------------------------------------------------------------


async def test_concurrent_transactions_and_statements_interleave_safely(
    backend: Backend, db: Database
) -> None:
    await db.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
    await db.execute("CREATE TABLE log (i INTEGER NOT NULL)")
    await db.execute("INSERT INTO counter VALUES (0)")

    async def increment() -> None:
        async with db.transaction():
            row = await db.fetchone(backend.locking("SELECT n FROM counter"))
            await asyncio.sleep(0)  # let every other task try to run a statement now
            await db.execute("UPDATE counter SET n=?", (row["n"] + 1,))

    async def append(i: int) -> None:
        await db.execute("INSERT INTO log VALUES (?)", (i,))

    tasks = [increment() for _ in range(25)] + [append(i) for i in range(25)]
    await asyncio.gather(*tasks)

    assert (await db.fetchone("SELECT n FROM counter"))["n"] == 25  # no lost update
    assert (await db.fetchone("SELECT COUNT(*) FROM log"))[0] == 25


async def test_rollback_does_not_take_another_tasks_statement(db: Database) -> None:
    await db.execute("CREATE TABLE log (what TEXT NOT NULL)")
    inside = asyncio.Event()

    async def failing_transaction() -> None:
        async with db.transaction():
            await db.execute("INSERT INTO log VALUES ('rolled back')")
            inside.set()
            for _ in range(10):
                await asyncio.sleep(0)
            raise RuntimeError("boom")

    async def bystander() -> None:
        await inside.wait()
        await db.execute("INSERT INTO log VALUES ('kept')")

    results = await asyncio.gather(failing_transaction(), bystander(), return_exceptions=True)
    assert isinstance(results[0], RuntimeError)
    rows = await db.fetchall("SELECT what FROM log")
    assert [row["what"] for row in rows] == ["kept"]


async def test_nested_transaction_joins_the_outer_one(db: Database) -> None:
    await db.execute("CREATE TABLE log (what TEXT NOT NULL)")
    with pytest.raises(RuntimeError):
        async with db.transaction():
            async with db.transaction():
                await db.execute("INSERT INTO log VALUES ('inner')")
            raise RuntimeError("outer fails")
    assert await db.fetchall("SELECT * FROM log") == []
    async with db.transaction():
        await db.execute("INSERT INTO log VALUES ('after')")
    assert len(await db.fetchall("SELECT * FROM log")) == 1


async def test_audit_records_what_not_whom(db: Database, fake_clock: FakeClock) -> None:
    await Tables(db).audit.add("erase", photos=3, adapters=1)
    row = await db.fetchone("SELECT * FROM audit")
    assert (row["at"], row["action"], row["detail"]) == (
        fake_clock.now(),
        "erase",
        '{"adapters": 1, "photos": 3}',
    )
