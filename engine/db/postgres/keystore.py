"""The wrapped data keys in their own PostgreSQL database (`LIKENESS_KEYSTORE_URL`), never the main one.

Synchronous (psycopg), like the vault that uses it. After a key is destroyed or re-wrapped the table is
rewritten at once (`VACUUM FULL`): a plain VACUUM removes the dead tuple but may leave its bytes in the
page's free space, a rewrite leaves no copy in the table's files. The table is small (one short row per
user), so the rewrite is quick. What a WAL archive may still hold is a key *wrapped* by the master key
(see docs/architecture.md).
"""

from __future__ import annotations

import threading

import psycopg


class PostgresKeyTable:
    def __init__(self, url: str):
        self._lock = threading.Lock()
        self._db = psycopg.connect(url, autocommit=True)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS data_keys (owner TEXT PRIMARY KEY, wrapped BYTEA NOT NULL, "
            "key_id TEXT NOT NULL)"
        )

    def any_key_id(self) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT key_id FROM data_keys LIMIT 1").fetchone()
        return row[0] if row else None

    def get(self, owner: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT wrapped FROM data_keys WHERE owner=%s", (owner,)).fetchone()
        return bytes(row[0]) if row else None

    def insert(self, owner: str, wrapped: bytes, key_id: str) -> None:
        """Store a new key unless the owner has one already (another process may have been first)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO data_keys(owner, wrapped, key_id) VALUES (%s,%s,%s) ON CONFLICT (owner) DO NOTHING",
                (owner, wrapped, key_id),
            )

    def delete(self, owner: str) -> bool:
        """Delete the owner's key and rewrite the table, so no copy of it stays in the table's files."""
        with self._lock:
            deleted = self._db.execute("DELETE FROM data_keys WHERE owner=%s", (owner,)).rowcount
            self._db.execute("VACUUM FULL data_keys")
        return deleted > 0

    def all(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return [
                (owner, bytes(wrapped))
                for owner, wrapped in self._db.execute("SELECT owner, wrapped FROM data_keys")
            ]

    def replace_all(self, rows: list[tuple[str, bytes, str]]) -> None:
        """Re-wrapped keys (owner, wrapped, key id), all in one transaction; then the table is rewritten."""
        with self._lock:
            with self._db.transaction(), self._db.cursor() as cursor:
                cursor.executemany(
                    "UPDATE data_keys SET wrapped=%s, key_id=%s WHERE owner=%s",
                    [(w, k, o) for o, w, k in rows],
                )
            self._db.execute("VACUUM FULL data_keys")

    def close(self) -> None:
        with self._lock:
            self._db.close()
