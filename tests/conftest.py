"""Generic fixtures: a temporary data dir, a fake clock, an open store and a vault, and both storage
backends (SQLite, PostgreSQL) for the suites that must hold on each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from engine.clock import FakeClock
from engine.db import Database
from engine.db.sqlite import SqliteDatabase as Store
from engine.vault import Vault, new_master_key
from tests.postgres_server import PostgresServer, running_server
from tests.storage_backends import Backend, PostgresBackend, SqliteBackend


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty data dir (database, key store and blobs live here)."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def store(data_dir: Path, fake_clock: FakeClock) -> AsyncIterator[Store]:
    store = await Store.open(data_dir / "likeness.sqlite3", fake_clock)
    yield store
    await store.close()


@pytest.fixture
def master_key() -> bytes:
    return new_master_key()


@pytest.fixture
def vault(data_dir: Path, master_key: bytes, backend: Backend) -> Iterator[Vault]:
    """A vault with local blobs and its key store on each backend."""
    vault = Vault(data_dir, master_key, key_table=backend.key_table())
    yield vault
    vault.close()


# -- both storage backends --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL cluster for the whole run (started on first use)."""
    with running_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each storage backend in turn: its main database and key store (see tests/storage_backends.py).
    SQLite's files go to the `data_dir` path, created only when used."""
    if request.param == "sqlite":
        return SqliteBackend(tmp_path / "data")
    return PostgresBackend(request.getfixturevalue("postgres_server"))


@pytest.fixture
async def db(backend: Backend, fake_clock: FakeClock) -> AsyncIterator[Database]:
    """An empty, migrated database on each backend."""
    database = await backend.open_db(fake_clock)
    yield database
    await database.close()


@pytest.fixture
def backend_env(backend: Backend) -> dict[str, str]:
    """`LIKENESS_*` settings that put rows and keys on each backend (empty: the embedded default)."""
    return backend.env()


@pytest.fixture
def on_every_backend(backend_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`pytestmark = pytest.mark.usefixtures("on_every_backend")` runs a module's whole-product tests on
    SQLite and on PostgreSQL (through `tests.retention_fixtures.make_settings`)."""
    from tests import retention_fixtures

    monkeypatch.setattr(retention_fixtures, "BACKEND_ENV", backend_env)


# -- S3-compatible object storage ------------------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's standalone S3 server on 127.0.0.1, with credentials from the standard AWS variables."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import secrets

    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL_S3": s3_server,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    name = f"likeness-{secrets.token_hex(4)}"
    client = boto3.client("s3")
    client.create_bucket(Bucket=name)
    client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name
