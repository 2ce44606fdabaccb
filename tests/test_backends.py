"""Beyond one machine: the repositories, the key store and the blob store on every backend — PostgreSQL
(a throw-away cluster) and S3-compatible object storage (moto's server, a versioned bucket) — and the
settings that refuse an unsafe layout."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from engine.db import USER_TABLES, Database, Tables
from engine.errors import VaultError
from engine.facade import Engine
from engine.settings import SettingsError
from engine.vault import KeyMissing, Vault, new_master_key
from tests.tiny_settings import tiny_settings

ALICE, BOB = "a" * 32, "b" * 32
ROOT = Path(__file__).resolve().parent.parent


# -- repositories on both databases ----------------------------------------------------------------------
async def fill(tables: Tables, user: str) -> None:
    await tables.users.ensure(user, "telegram", b"sealed")
    await tables.consents.give(user, "v1", "en", "adult")
    await tables.photos.add(f"p{user[:4]}", user, b"fp", 64, 64)
    await tables.adapters.add(f"ad{user[:4]}", user, "sks", [0.5, 0.25])
    await tables.outputs.add(f"o{user[:4]}", user, f"j{user[:4]}", "headshot", 0)
    await tables.deliveries.add(user, f"j{user[:4]}", "portraits")
    await tables.messages.add(user, "m1", "result", f"j{user[:4]}")
    await tables.deadlines.set(user, "photo", f"p{user[:4]}", 10.0)


async def test_erase_removes_every_row_of_one_user_on_every_backend(db: Database) -> None:
    tables = Tables(db)
    await fill(tables, ALICE)
    await fill(tables, BOB)
    counts = await tables.users.erase(ALICE)
    assert counts["users"] == counts["photos"] == counts["consents"] == 1
    assert set(counts) == set(USER_TABLES)
    assert await tables.users.get(ALICE) is None
    assert await tables.photos.count(ALICE) == 0
    assert await tables.photos.count(BOB) == 1
    assert all(rows == [] for rows in (await tables.users.export(ALICE)).values())
    assert (await tables.users.export(BOB))["adapters"][0]["losses"] == "[0.5, 0.25]"


async def test_a_transaction_rolls_back_as_a_whole_on_every_backend(db: Database) -> None:
    tables = Tables(db)
    with pytest.raises(RuntimeError):
        async with db.transaction():
            await tables.users.ensure(ALICE, "telegram", None)
            raise RuntimeError("boom")
    assert await tables.users.get(ALICE) is None


async def test_deadline_runs_are_exclusive_across_connections(postgres_server) -> None:
    from engine.db.postgres.connection import PostgresDatabase

    url = postgres_server.url(postgres_server.new_database())
    first, second = await PostgresDatabase.open(url), await PostgresDatabase.open(url)
    try:
        async with first.exclusive("retention") as mine:
            assert mine
            async with second.exclusive("retention") as theirs:
                assert not theirs  # another process is running the sweep: skip this round
        async with second.exclusive("retention") as now_mine:
            assert now_mine
    finally:
        await first.close()
        await second.close()


async def test_an_idle_worker_is_woken_by_a_job_queued_elsewhere(postgres_server) -> None:
    from engine.db.postgres.connection import PostgresDatabase
    from engine.queue import JobQueue

    url = postgres_server.url(postgres_server.new_database())
    worker_side, bot_side = await PostgresDatabase.open(url), await PostgresDatabase.open(url)
    try:
        await Tables(bot_side).users.ensure(ALICE, "telegram", None)
        await worker_side.wait_for_jobs(0.01)  # start listening
        waiting = asyncio.create_task(worker_side.wait_for_jobs(120))
        await asyncio.sleep(0.2)
        await JobQueue(bot_side, 60, 3).enqueue(ALICE, "train")
        await asyncio.wait_for(waiting, 30)  # well before the 120 s poll: the NOTIFY woke it
    finally:
        await worker_side.close()
        await bot_side.close()


# -- the key store on PostgreSQL -------------------------------------------------------------------------
def dead_key_tuples(server, database: str) -> int:
    server.psql("SELECT pg_stat_force_next_flush()", database)
    return int(server.psql("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname='data_keys'", database))


def test_postgres_key_store_creates_shreds_and_vacuums(postgres_server, tmp_path) -> None:
    """PostgreSQL's own bookkeeping shows no dead tuple of a shredded key (tests/test_vault.py checks, on
    both backends, that its bytes are gone from the key store's files, and master-key rotation)."""
    from engine.db.postgres.keystore import PostgresKeyTable

    database = postgres_server.new_database()
    master = new_master_key()
    vault = Vault(tmp_path, master, key_table=PostgresKeyTable(postgres_server.url(database)))
    vault.put(ALICE, "photo", "p1", b"alice's face")
    assert vault.get(ALICE, "photo", "p1") == b"alice's face"
    assert vault.keys.has_key(ALICE)
    vault.erase_owner(ALICE)
    assert not vault.keys.has_key(ALICE)
    with pytest.raises(KeyMissing):
        vault.keys.data_key(ALICE)
    assert dead_key_tuples(postgres_server, database) == 0  # vacuumed at once: no dead tuple of the key
    vault.close()


# -- blobs in S3-compatible storage ----------------------------------------------------------------------
def all_versions(bucket: str) -> list[str]:
    import boto3

    page = boto3.client("s3").list_object_versions(Bucket=bucket)
    return [entry["Key"] for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]]


def test_blobs_in_a_versioned_bucket_are_ciphertext_under_the_prefix_and_leave_no_version(bucket, tmp_path):
    import boto3

    from engine.blobs import S3Blobs

    vault = Vault(tmp_path, new_master_key(), blobs=S3Blobs(f"s3://{bucket}/likeness/prod"))
    vault.put(ALICE, "photo", "p1", b"ALICE-FACE" * 100)
    vault.put(ALICE, "photo", "p1", b"ALICE-FACE-AGAIN" * 100)  # a second version of the same object
    vault.put(ALICE, "output", "o1", b"portrait")
    vault.put(BOB, "photo", "p1", b"BOB-FACE")
    assert vault.get(ALICE, "photo", "p1") == b"ALICE-FACE-AGAIN" * 100
    keys = all_versions(bucket)
    assert keys and all(key.startswith("likeness/prod/") for key in keys)
    stored = boto3.client("s3").get_object(Bucket=bucket, Key=f"likeness/prod/{ALICE}/p1.bin")["Body"].read()
    assert b"ALICE-FACE" not in stored  # only ciphertext leaves the machine

    assert vault.delete(ALICE, "o1")
    with pytest.raises(FileNotFoundError):
        vault.get(ALICE, "output", "o1")
    assert vault.erase_owner(ALICE) >= 1
    assert [key for key in all_versions(bucket) if ALICE in key] == []  # every version and marker gone
    assert vault.get(BOB, "photo", "p1") == b"BOB-FACE"
    assert not list(tmp_path.rglob("*.bin"))  # nothing in the local folder
    vault.close()


def test_blob_ids_cannot_escape_the_prefix(bucket, tmp_path):
    from engine.blobs import S3Blobs

    vault = Vault(tmp_path, new_master_key(), blobs=S3Blobs(f"s3://{bucket}/p"))
    with pytest.raises(VaultError):
        vault.put(ALICE, "photo", "../x", b"data")
    vault.close()


async def test_with_postgres_and_s3_nothing_lands_in_the_data_dir(postgres_server, bucket, tmp_path) -> None:
    from engine.vault import encode_master_key

    settings = tiny_settings(
        tmp_path / "data",
        LIKENESS_DATABASE_URL=postgres_server.url(postgres_server.new_database()),
        LIKENESS_KEYSTORE_URL=postgres_server.url(postgres_server.new_database()),
        LIKENESS_BLOBS_URL=f"s3://{bucket}/deploy",
        LIKENESS_MASTER_KEY=encode_master_key(new_master_key()),
    )
    engine = await Engine.open(settings)
    try:
        user = engine.pseudonym("telegram", 4242)
        await engine.give_consent(user, "telegram", {"chat_id": "1", "user_id": "4242"}, "v1", "adult")
        await asyncio.to_thread(engine.vault.put, user, "photo", "p1", b"face")
        assert await engine.consent(user)
    finally:
        await engine.close()
    leftovers = (
        [p for p in (tmp_path / "data").rglob("*") if p.is_file()] if (tmp_path / "data").exists() else []
    )
    assert leftovers == []


# -- settings that must refuse to start -----------------------------------------------------------------
def test_the_key_store_must_be_another_database(tmp_path) -> None:
    url = "postgresql://likeness@db.internal:5432/likeness"
    with pytest.raises(SettingsError, match="LIKENESS_KEYSTORE_URL"):
        tiny_settings(
            tmp_path, LIKENESS_DATABASE_URL=url, LIKENESS_KEYSTORE_URL=url.replace("likeness@", "other@")
        )
    with pytest.raises(SettingsError, match="LIKENESS_KEYSTORE_URL"):
        tiny_settings(tmp_path, LIKENESS_DATABASE_URL=url)
    ok = tiny_settings(tmp_path, LIKENESS_DATABASE_URL=url, LIKENESS_KEYSTORE_URL=url + "_keys")
    assert ok.keystore_url.endswith("_keys")


@pytest.mark.parametrize("program", ["bot", "engine"])
def test_bot_and_worker_refuse_a_shared_key_store_with_one_line(program: str, tmp_path) -> None:
    url = "postgresql://likeness@127.0.0.1:1/likeness"
    env = {
        "PATH": "/usr/bin:/bin",
        "LIKENESS_DATA_DIR": str(tmp_path),
        "LIKENESS_DATABASE_URL": url,
        "LIKENESS_KEYSTORE_URL": url,
    }
    result = subprocess.run(
        [sys.executable, "-m", program],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no traceback
    assert "LIKENESS_KEYSTORE_URL" in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LIKENESS_BLOBS_URL", "https://bucket"),
        ("LIKENESS_DATABASE_URL", "mysql://x/y"),
        ("LIKENESS_ENGINE_KINDS", "train,paint"),
    ],
)
def test_malformed_scale_out_settings_name_the_setting(name: str, value: str, tmp_path) -> None:
    with pytest.raises(SettingsError, match=name):
        tiny_settings(tmp_path, **{name: value})


async def test_processes_starting_at_once_migrate_once(postgres_server, tmp_path) -> None:
    """Several processes opening a new database together (advisory lock on PostgreSQL, the version read
    inside the write transaction on SQLite): every one starts, the schema is applied once."""
    from engine.db.postgres.connection import PostgresDatabase
    from engine.db.sqlite import SqliteDatabase

    url = postgres_server.url(postgres_server.new_database())
    for opener in (lambda: PostgresDatabase.open(url), lambda: SqliteDatabase.open(tmp_path / "new.sqlite3")):
        databases = await asyncio.gather(*(opener() for _ in range(4)))
        for database in databases:
            assert await Tables(database).users.get(ALICE) is None  # the schema is there
        await Tables(databases[0]).users.ensure(ALICE, "telegram", None)
        assert await Tables(databases[-1]).users.get(ALICE) is not None
        for database in databases:
            await database.close()
    from engine.db.postgres.migrations import MIGRATIONS

    count = postgres_server.psql("SELECT COUNT(*) FROM schema_version", url.rsplit("/", 1)[1])
    assert count == str(len(MIGRATIONS))  # one row per migration: each applied once
