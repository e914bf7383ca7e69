"""Spool files beside message_log.db: what each process finished, on disk before it is sent.

In ``<database>-spool/`` (created owner-only when a session first needs it):

- ``<session>.lock``: every process of a running session holds a shared ``flock`` on it; a
  session whose lock nobody holds is dead, and its spool may be ingested.
- ``<session>.<worker>.jsonl``: one line per finished run (or batch of calls made outside
  runs), appended by the process that ran it with one ``write`` call.
- ``<session>.spend``: the session's LLM calls and tokens so far, for the spend guard.
- ``<session>.decided``: the cases of adaptive experiments that run no more executions.
- ``<session>.<worker>.reserve``: space set aside (see :class:`Reserve`) so that when the
  disk fills up, the run that found it full is still spooled and the session still ends.

Without ``fcntl`` (Windows) nothing is locked, and no session is ever taken for dead.

A line is in the kernel once ``write`` returns, so it survives the death of the process that
wrote it (a crash, SIGKILL, a cancelled CI job), which is what the spool is for. It is not
fsynced: that would cost more than the rest of a run's recording put together, and it would
only protect against the machine itself going down, which the database, in WAL mode with
``synchronous = NORMAL``, does not promise either.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "RESERVE_BYTES",
    "Decisions",
    "Reserve",
    "SessionLock",
    "SpendLedger",
    "Spool",
    "SpoolLine",
    "cassette_path",
    "iter_spool",
    "rate_path",
    "remove_empty",
    "remove_session_files",
    "spool_dir",
    "spool_name",
    "spooled_sessions",
]

Kind = Literal["run", "calls"]
SpoolLine = tuple[Kind, dict[str, Any]]
_SUFFIXES = (".lock", ".jsonl", ".spend", ".cassette", ".reserve", ".rate", ".decided")
#: Space set aside per process: a few runs' lines, or a session's last writes.
RESERVE_BYTES = 64 * 1024
#: The errors of a write that found no room: a full disk, a file-size limit, a quota.
_NO_ROOM = (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))


def spool_dir(db_path: Path) -> Path:
    """The spool directory of a database (like SQLite's own ``-wal`` beside it)."""
    return db_path.with_name(db_path.name + "-spool")


def rate_path(db_path: Path, session_id: str) -> Path:
    """The session's rate-limit ledger (see :mod:`.._run.traffic`), deleted with its spool."""
    return spool_dir(db_path) / f"{session_id}.rate"


def cassette_path(db_path: Path, session_id: str) -> Path:
    """The session's cassette: what it may replay (see :mod:`.cache`), deleted with its spool."""
    return spool_dir(db_path) / f"{session_id}.cassette"


def _open(path: Path, flags: int) -> int:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(path, flags | os.O_CREAT, 0o600)


class SessionLock:
    """The lock that says a session is alive."""

    def __init__(self, directory: Path, session_id: str) -> None:
        self.path = directory / f"{session_id}.lock"
        self._fd: int | None = None

    def hold(self) -> None:
        """Hold the lock shared, as one of the session's processes (idempotent)."""
        if self._fd is None:
            self._fd = self._lock(exclusive=False, wait=True)

    def take_over(self) -> bool:
        """Hold the lock exclusively if no process of the session is alive."""
        if self._fd is None:
            self._fd = self._lock(exclusive=True, wait=False)
        return self._fd is not None

    def _lock(self, *, exclusive: bool, wait: bool) -> int | None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return None if exclusive else _open(self.path, os.O_RDWR)
        mode = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
        while True:
            fd = _open(self.path, os.O_RDWR)
            try:
                fcntl.flock(fd, mode)
            except BlockingIOError:
                os.close(fd)
                return None
            # A recovering process may have removed the file between our open and our lock:
            # a lock on an unlinked file protects nothing, so lock the file that is there now.
            try:
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def release(self, *, remove: bool = False) -> None:
        if self._fd is None:
            return
        if remove:
            # A directory that became read-only keeps the file: a lock nobody holds is a dead
            # session's, which the next session handles as such.
            with suppress(OSError):
                self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


class Reserve:
    """Disk space set aside in a file of its own, given back when a write finds no room.

    A full disk fails every write at once: the spool line of the run that found it full,
    and the session's last update of the database. Deleting the reserve makes room for
    them. A file-size limit (``ulimit -f``) is per file: there the spool goes on in a new
    file instead (see :meth:`Spool.append`).
    """

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = path
        self.size = size
        self.held = False
        self._made = False

    def make(self) -> None:
        """Set the space aside, once: space given back is not taken again. Without room
        for it, there is none to give back later."""
        if self._made:
            return
        self._made = True
        try:
            fd = _open(self.path, os.O_WRONLY)
        except OSError:
            return
        try:
            allocate = getattr(os, "posix_fallocate", None)
            if allocate is not None:
                allocate(fd, 0, self.size)
            else:  # pragma: no cover - macOS, Windows
                os.write(fd, bytes(self.size))
            self.held = True
        except OSError:
            with suppress(OSError):
                self.path.unlink()
        finally:
            os.close(fd)

    def release(self) -> bool:
        """Give the space back; whether there was any."""
        held, self.held = self.held, False
        if held:
            with suppress(OSError):
                self.path.unlink()
        return held


def spool_name(session_id: str, worker: str) -> str:
    """The name of the spool file of one process (``main`` or an xdist worker) of a session."""
    return f"{session_id}.{worker}.jsonl"


class Spool:
    """One process's spool file for one session, opened on the first append.

    A line is written whole or not at all: a write cut short by a full disk is taken back,
    so the next line does not run into its remains. The first append that finds no room
    uses the process's reserve (or, past a file-size limit, a new file) to keep its line,
    and sets :attr:`failure`: from then on no new run should start, as its result could
    not be kept.
    """

    def __init__(self, db_path: Path, session_id: str, worker: str) -> None:
        directory = spool_dir(db_path)
        self.path = directory / spool_name(session_id, worker)
        self.lock = SessionLock(directory, session_id)
        self.reserve = Reserve(directory / f"{session_id}.{worker}.reserve")
        self._fd: int | None = None
        self._size = 0
        #: The lines appended so far.
        self.lines = 0
        #: Why this spool can no longer be relied on (set by the first failed append).
        self.failure: str | None = None

    def append(self, kind: Kind, payload: str) -> None:
        """Append one record (a JSON object); raises ``OSError`` if it could not be kept."""
        line = f'{{"kind":"{kind}","record":{payload}}}\n'.encode()
        error: OSError | None = None
        # Without room: free the reserve (a full disk), then go on in a new file (a limit
        # on a file's size); a write cut short may be either.
        for remedy in (None, self.reserve.release, self._roll):
            if remedy is not None and not remedy():
                continue
            try:
                self._append(line)
            except OSError as exc:
                if self.failure is None:
                    self.failure = f"{self.path}: {exc}"
                if exc.errno not in _NO_ROOM:
                    raise
                error = exc
                continue
            self.lines += 1
            return
        assert error is not None
        raise error

    def _append(self, line: bytes) -> None:
        if self._fd is None:
            self.lock.hold()
            self._fd = _open(self.path, os.O_WRONLY | os.O_APPEND)
            self._size = os.fstat(self._fd).st_size
            self.reserve.make()
        try:
            # One write per line: appends of concurrent lines never interleave.
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(errno.EFBIG, f"short write ({written} of {len(line)} bytes)")
        except OSError:
            with suppress(OSError):  # take back what was written of the line
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(line)

    def _roll(self) -> bool:
        """Go on in a second file of this process (once); whether it is new."""
        if self._fd is None or ".more." in self.path.name:
            return False
        os.close(self._fd)
        self._fd = None
        # Same session and worker: recovery reads every .jsonl file of the session.
        self.path = self.path.with_name(self.path.name.replace(".jsonl", ".more.jsonl"))
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.reserve.release()
        self.lock.release()


class SpendLedger:
    """The session's LLM calls, tokens and cost so far, shared by its processes through a
    file."""

    def __init__(self, db_path: Path, session_id: str) -> None:
        self.path = spool_dir(db_path) / f"{session_id}.spend"

    def _update(self, calls: int, tokens: int, cost: float) -> tuple[int, int, float]:
        fd = _open(self.path, os.O_RDWR)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - Windows
                pass
            text = os.pread(fd, 128, 0).decode() or "0 0 0"
            fields = text.split()
            total_calls, total_tokens = int(fields[0]), int(fields[1])
            total_cost = float(fields[2]) if len(fields) > 2 else 0.0
            if calls or tokens or cost:
                total_calls += calls
                total_tokens += tokens
                total_cost += cost
                data = f"{total_calls} {total_tokens} {total_cost!r}".encode()
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
            return total_calls, total_tokens, total_cost
        finally:
            os.close(fd)

    def add(self, calls: int, tokens: int, cost: float = 0.0) -> tuple[int, int, float]:
        """Count ``calls``, ``tokens`` and ``cost`` (US dollars) more; the new totals."""
        return self._update(calls, tokens, cost)

    def totals(self) -> tuple[int, int, float]:
        """Calls, tokens and cost counted so far."""
        return self._update(0, 0, 0.0)


def spooled_sessions(directory: Path) -> dict[str, list[Path]]:
    """The files in a spool directory, by session id."""
    sessions: dict[str, list[Path]] = {}
    if not directory.is_dir():
        return sessions
    for path in sorted(directory.iterdir()):
        if path.suffix in _SUFFIXES:
            sessions.setdefault(path.name.split(".", 1)[0], []).append(path)
    return sessions


def iter_spool(path: Path, skip: int = 0) -> Iterator[SpoolLine | None]:
    """The records of a spool file one at a time, after its first ``skip`` lines (unparsed);
    ``None`` for a line that cannot be read (a process killed in the middle of a write leaves
    at most its last line cut short)."""
    for number, raw in enumerate(_lines(path)):
        if number < skip:
            continue
        try:
            entry = json.loads(raw)
            kind, record = entry["kind"], entry["record"]
        except (ValueError, KeyError, TypeError):
            yield None
            continue
        yield (kind, record) if kind in ("run", "calls") and isinstance(record, dict) else None


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                yield raw


def remove_session_files(
    directory: Path, session_id: str, *, keep_lock: bool = False
) -> list[Path]:
    """Delete a session's spool files, and the directory once it is empty; the files that
    could not be deleted (a directory that became read-only keeps them: what they hold is
    stored, and storing it again changes nothing)."""
    kept = []
    for path in spooled_sessions(directory).get(session_id, []):
        if not (keep_lock and path.suffix == ".lock"):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                kept.append(path)
    remove_empty(directory)
    return kept


def remove_empty(directory: Path) -> None:
    """Remove the spool directory if no session has files in it."""
    with suppress(OSError):  # absent, or other sessions' files are there
        directory.rmdir()


class Decisions:
    """The cases of adaptive experiments that run no more executions, and why: appended by
    the writer's process as it decides, read by every process before it starts a run (see
    :mod:`.._plugin.adaptive`). One JSON line per case, each written whole by one append."""

    def __init__(self, db_path: Path, session_id: str) -> None:
        self.path = spool_dir(db_path) / f"{session_id}.decided"
        self._read = 0
        self._stopped: dict[tuple[str, str | None, str | None], str] = {}

    def add(self, experiment: str, variant: str | None, case: str | None, reason: str) -> None:
        line = json.dumps({"e": experiment, "v": variant, "c": case, "r": reason}) + "\n"
        fd = _open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def stopped(self, experiment: str, variant: str | None, case: str | None) -> str | None:
        """Why this case runs no more executions, or ``None``."""
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return None
        if size > self._read:
            with open(self.path, "rb") as file:
                file.seek(self._read)
                data = file.read(size - self._read)
            end = data.rfind(b"\n") + 1  # a line being written is read next time
            for line in data[:end].splitlines():
                with suppress(ValueError, KeyError, TypeError):  # not ours: run, as without
                    entry = json.loads(line)
                    self._stopped[(entry["e"], entry["v"], entry["c"])] = str(entry["r"])
            self._read += end
        return self._stopped.get((experiment, variant, case))
