"""Bringing message_log.db to this version's schema, refusing what is not ours.

A database that has exactly this version's migrations applied is recognised with one query,
without importing sqlite_utils, which would cost every session about 15 MB and 60 ms.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from ..errors import StoreError

__all__ = ["MIGRATION_SET", "SCHEMA", "migrate"]

#: The migrations of ``migrations.py``, in order (a test pins them).
SCHEMA = (
    "m001_create_tables",
    "m002_add_fault_columns",
    "m003_add_verdict_tables",
    "m004_add_cache_tables",
    "m005_cluster_run_tables",
    "m006_normalize_run_data",
)
MIGRATION_SET = "pytest_llmexp"


def is_current(conn: sqlite3.Connection) -> bool:
    """Whether the database has exactly this version's migrations applied."""
    try:
        rows = conn.execute(
            "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY rowid",
            [MIGRATION_SET],
        ).fetchall()
    except sqlite3.OperationalError:  # no migrations table: new, or another program's
        return False
    return tuple(name for (name,) in rows) == SCHEMA


def migrate(
    conn: sqlite3.Connection,
    path: Path,
    transaction: Callable[[], AbstractContextManager[sqlite3.Connection]],
) -> None:
    """Apply the pending migrations, or refuse another program's or a newer version's
    database, leaving it untouched."""
    if is_current(conn):
        return
    from sqlite_utils import Database

    from .migrations import migrations

    db = Database(conn, execute_plugins=False)
    with transaction():
        tables = set(db.table_names())
        applied = migrations.applied(db) if "_sqlite_migrations" in tables else []
        if tables and not applied:
            raise StoreError(
                f"{str(path)!r} is a SQLite database of another program (tables "
                f"{', '.join(sorted(tables)[:5])}); it was left as it is: choose another "
                "path with --llm-db"
            )
        known = {m.name for m in migrations._migrations}
        unknown = [m.name for m in applied if m.name not in known]
        if unknown:
            raise StoreError(
                f"{str(path)!r} was written by a newer pytest-llmexp (schema "
                f"migrations {', '.join(unknown)} are unknown to this version); upgrade "
                "pytest-llmexp, or choose another path with --llm-db"
            )
        if migrations.pending(db):
            migrations.apply(db)
