"""Checks on the database file before SQLite opens it, and its private creation."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import StoreError

__all__ = ["check_file", "create_private"]

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
