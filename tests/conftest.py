"""Generic fixtures: a temporary data dir, a fake clock, an open store and a vault."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from engine.clock import FakeClock
from engine.db.sqlite import SqliteDatabase as Store
from engine.vault import Vault, new_master_key


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
def vault(data_dir: Path, master_key: bytes) -> Iterator[Vault]:
    vault = Vault(data_dir, master_key)
    yield vault
    vault.close()
