"""The wrapped data keys in their own SQLite file (`keys/keys.sqlite3`), apart from the main database.

No WAL here: with `secure_delete` and a rollback journal a shredded key is overwritten in place, and a
VACUUM after each shred or rotation leaves no free page holding it. Thread-safe; every call is short.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path


class SqliteKeyTable:
    def __init__(self, path: Path):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=DELETE")
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS data_keys (owner TEXT PRIMARY KEY, wrapped BLOB NOT NULL, "
            "key_id TEXT NOT NULL)"
        )

    def any_key_id(self) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT key_id FROM data_keys LIMIT 1").fetchone()
        return row[0] if row else None

    def get(self, owner: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT wrapped FROM data_keys WHERE owner=?", (owner,)).fetchone()
        return row[0] if row else None

    def insert(self, owner: str, wrapped: bytes, key_id: str) -> None:
        """Store a new key unless the owner has one already (another process may have been first)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO data_keys(owner, wrapped, key_id) VALUES (?,?,?) ON CONFLICT(owner) DO NOTHING",
                (owner, wrapped, key_id),
            )

    def delete(self, owner: str) -> bool:
        """Delete the owner's key and leave no copy of it in the file."""
        with self._lock:
            deleted = self._db.execute("DELETE FROM data_keys WHERE owner=?", (owner,)).rowcount
            self._db.execute("VACUUM")
        return deleted > 0

    def all(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return [
                (owner, wrapped)
                for owner, wrapped in self._db.execute("SELECT owner, wrapped FROM data_keys")
            ]

    def replace_all(self, rows: list[tuple[str, bytes, str]]) -> None:
        """Re-wrapped keys (owner, wrapped, key id), all in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "UPDATE data_keys SET wrapped=?, key_id=? WHERE owner=?", [(w, k, o) for o, w, k in rows]
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("VACUUM")

    def close(self) -> None:
        with self._lock:
            self._db.close()
