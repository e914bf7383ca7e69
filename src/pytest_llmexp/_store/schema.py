"""The database file: checked before SQLite opens it, created private to its owner, and
brought to this version's schema; a file that is not ours, or is from a newer version, is
refused.

A database that has exactly this version's migrations applied is recognised with one query,
without importing sqlite_utils, which would cost every session about 15 MB and 60 ms.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from ..errors import StoreError

__all__ = ["MIGRATION_SET", "SCHEMA", "check_file", "create_private", "migrate", "project_db"]

#: The migrations of ``migrations.py``, in order (a test pins them).
SCHEMA = (
    "m001_create_tables",
    "m002_add_fault_columns",
    "m003_add_verdict_tables",
    "m004_add_cache_tables",
    "m005_cluster_run_tables",
    "m006_normalize_run_data",
    "m007_add_seed_and_partial",
    "m008_add_captured_calls",
    "m009_add_variants_and_cost",
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


_SQLITE_HEADER = b"SQLite format 3\x00"


def check_file(path: Path) -> None:
    """Refuse a path that is a directory or a file that is not SQLite, before opening it."""
    if not path.exists():
        return
    if path.is_dir():
        raise StoreError(
            f"the experiment database path {str(path)!r} is a directory; "
            "give a file path with --llm-db"
        )
    if not path.is_file():
        # /dev/null, a pipe: SQLite would open it, and create its journal beside it.
        raise StoreError(
            f"the experiment database path {str(path)!r} is not a regular file (a device or "
            "a pipe); give a file path with --llm-db"
        )
    with path.open("rb") as fh:
        header = fh.read(len(_SQLITE_HEADER))
    if header and header != _SQLITE_HEADER:
        raise StoreError(
            f"{str(path)!r} exists and is not a SQLite database; it was left as it "
            "is: move it away or choose another path with --llm-db"
        )


def create_private(path: Path) -> None:
    """Create the database file readable by its owner only (SQLite gives its -wal and -shm
    files the same mode); an existing file is left as it is."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


# Where pytest looks for its configuration, in each directory from the current one upwards.
_CONFIG_FILES = ("pytest.ini", ".pytest.ini", "pyproject.toml", "tox.ini", "setup.cfg")


def _ini_db(path: Path) -> tuple[bool, str | None]:
    """Whether ``path`` is a pytest configuration file (as pytest decides), and its
    ``llm_db``."""
    import configparser
    import tomllib

    try:
        if path.name == "pyproject.toml":
            with path.open("rb") as fh:
                table = tomllib.load(fh).get("tool", {}).get("pytest", {}).get("ini_options")
            if table is None:
                return False, None
            value = table.get("llm_db")
            return True, None if value is None else str(value)
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(path, encoding="utf-8")
    except (OSError, ValueError, configparser.Error):
        return False, None
    section = {"tox.ini": "pytest", "setup.cfg": "tool:pytest"}.get(path.name, "pytest")
    if not parser.has_section(section):
        # pytest.ini is pytest's even without a [pytest] section.
        return path.name in ("pytest.ini", ".pytest.ini"), None
    return True, parser.get(section, "llm_db", fallback=None)


def project_db(start: Path, default: str) -> tuple[Path, str]:
    """The database a pytest session started in ``start`` would use, and why: the ``llm_db``
    of the first pytest configuration file found from ``start`` upwards, relative to its
    directory (the rootdir), else ``default`` there, else ``default`` in ``start``."""
    for directory in (start, *start.parents):
        for name in _CONFIG_FILES:
            candidate = directory / name
            if not candidate.is_file():
                continue
            found, value = _ini_db(candidate)
            if found:
                if value:
                    return directory / value.strip(), f"llm_db in {candidate}"
                return directory / default, f"the rootdir of {candidate}"
    return start / default, "the current directory"
