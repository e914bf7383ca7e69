"""Putting spooled runs into message_log.db: a session's own at its end, dead sessions' later."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .spool import (
    SessionLock,
    SpoolLine,
    iter_spool,
    remove_empty,
    remove_session_files,
    spooled_sessions,
)

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Ingested", "ingest", "recover"]


@dataclass
class Ingested:
    """What ingesting one session's spool did."""

    session_id: str
    #: Runs that were not in the database yet.
    runs: int = 0
    #: Runs that were (the usual case: the report arrived and was stored).
    duplicates: int = 0
    calls: int = 0
    unreadable: int = 0
    #: Write errors; a spool with any is kept for a later attempt.
    errors: list[str] = field(default_factory=list)
    #: The session was still ``running`` in the database, and is now ``aborted``.
    aborted: bool = False


def _insert(store: Store, session_id: str, kind: str, record: dict[str, object]) -> bool:
    from .records import Recording, RunRecord

    if kind == "run":
        return store.insert_run(session_id, RunRecord.model_validate(record))
    store.insert_recording(Recording.model_validate(record))
    return True


def ingest(
    store: Store,
    session_id: str,
    files: list[Path],
    *,
    skip: Mapping[str, int] | None = None,
) -> Ingested:
    """Insert every spooled record of ``files`` into ``session_id`` (idempotent), reading one
    line at a time. ``skip`` gives, by file name, how many first lines are known to be in the
    database already: they are not read again."""
    result = Ingested(session_id)
    for path in files:
        if path.suffix != ".jsonl":
            continue
        skipped = (skip or {}).get(path.name, 0)
        result.duplicates += skipped
        for line in iter_spool(path, skipped):
            if line is None:
                result.unreadable += 1
            else:
                _ingest_line(store, session_id, line, result)
    return result


def _ingest_line(store: Store, session_id: str, line: SpoolLine, result: Ingested) -> None:
    from pydantic import ValidationError

    kind, record = line
    try:
        inserted = _insert(store, session_id, kind, record)
    except ValidationError:
        result.unreadable += 1
        return
    except sqlite3.Error as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}")
        return
    if kind == "calls":
        result.calls += 1
    elif inserted:
        result.runs += 1
    else:
        result.duplicates += 1


def recover(store: Store, directory: Path, *, own_session: str | None = None) -> list[Ingested]:
    """Ingest the spools of sessions whose processes are all gone, and mark them ``aborted``.

    A session that still holds its lock (another pytest process on the same database) is
    never touched; ``own_session`` is skipped.
    """
    results: list[Ingested] = []
    for session_id, files in spooled_sessions(directory).items():
        if session_id == own_session:
            continue
        lock = SessionLock(directory, session_id)
        if not lock.take_over():
            continue
        done = False
        try:
            result = _recover_one(store, session_id, files)
            if not result.errors:
                remove_session_files(directory, session_id, keep_lock=True)
                done = True
        finally:
            lock.release(remove=done)
        results.append(result)
    remove_empty(directory)
    return results


def _recover_one(store: Store, session_id: str, files: list[Path]) -> Ingested:
    status = store.session_status(session_id)
    spooled = [path for path in files if path.suffix == ".jsonl"]
    if status is None:
        if not spooled:
            # It died before it stored or spooled anything: there is nothing to record.
            return Ingested(session_id)
        store.begin_session(kind="pytest", session_id=session_id, argv=[])
        status = "running"
    result = ingest(store, session_id, spooled)
    if status == "running" and not result.errors:
        store.finish_session(session_id, status="aborted", exitstatus=None)
        result.aborted = True
    return result
