"""The engine boundary: the bot holds no SQL and reaches no engine internals; all SQL lives in engine/db/.

`lint-imports` (contracts in pyproject.toml) checks the import graph; these tests check the text, so a
string of SQL or a dynamic import cannot slip past it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SQL = re.compile(r"\b(SELECT\s+\S|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|PRAGMA\s)")
INTERNALS = re.compile(r"engine\.(store|db|queue|vault|retention|worker|ml|intake)\b")


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", python_files("bot"), ids=lambda p: p.name)
def test_the_bot_holds_no_sql_and_no_engine_internals(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert not SQL.search(text), f"SQL in {path.name}"
    assert not INTERNALS.search(text), f"engine internals named in {path.name}"


def test_sql_lives_only_in_the_backend_folders() -> None:
    outside = [
        path.relative_to(ROOT)
        for path in python_files("engine")
        if SQL.search(path.read_text(encoding="utf-8"))
        and "db" not in path.relative_to(ROOT).parts
        and path.name != "vault.py"  # the key store: its own small SQLite file (see docs/architecture.md)
    ]
    assert outside == []


def test_the_patterns_catch_what_they_are_for() -> None:
    """The checks above are only worth something if they match real offences."""
    assert SQL.search('await db.fetchone("SELECT id FROM users WHERE id=?")')
    assert SQL.search("INSERT OR IGNORE INTO users")
    assert INTERNALS.search("from engine.queue import JobQueue")
    assert not SQL.search("Select a style below")


def test_every_backend_names_the_same_statements() -> None:
    """A statement added for one backend only would fail at run time on the other."""
    from engine.db.postgres import queries as postgres
    from engine.db.sqlite import queries as sqlite

    def names(module: object) -> set[str]:
        return {name for name in vars(module) if name.isupper()}

    assert names(sqlite) <= names(postgres)
    assert names(postgres) - names(sqlite) <= {"NOTIFY_JOBS"}  # PostgreSQL's wake-up, a no-op elsewhere
