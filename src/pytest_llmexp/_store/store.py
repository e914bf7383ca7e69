"""message_log.db: opening, migrating, and writing sessions, runs, calls and metrics.

Only one process writes a session's rows (the pytest controller, or the process running an
``Experiment``). Every write is one ``BEGIN IMMEDIATE`` transaction; runs are inserted with
``INSERT OR IGNORE`` on their id, so inserting the same run twice is harmless.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util.clock import utcnow
from .._util.defaults import DEFAULT_DB
from .._util.ids import new_id
from .._util.jsontext import compact_json as _json
from .._util.redact import redact
from .._verdict.stats import DECIDED, experiment_summary, session_spend
from ..errors import StoreError
from .batch import DefinitionIds
from .provenance import environment_versions, git_sha
from .schema import check_file, create_private, migrate

if TYPE_CHECKING:
    from .batch import Batch
    from .records import Recording, RunRecord

__all__ = ["DEFAULT_DB", "Store", "default_store", "environment_versions", "git_sha"]


#: How long a write waits for another writer's lock (another session on the same file).
_BUSY_MS = 30_000


def _writable(path: Path) -> bool:
    """Whether this process may write the database and create files beside it."""
    return os.access(path.parent, os.W_OK | os.X_OK) and (
        not path.exists() or os.access(path, os.W_OK)
    )


class Store:
    """A connection to message_log.db, migrated to the current schema."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._experiment_ids: dict[tuple[str, str], int] = {}
        #: How deep the open write transaction is nested (0: none).
        self._depth = 0
        check_file(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            create_private(self.path)
            self.conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            self.ids = DefinitionIds(self.conn)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the experiment database {str(self.path)!r}: {exc}; choose a "
                "writable path with --llm-db (ini: llm_db)"
            ) from None
        try:
            self.conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            self.conn.execute("PRAGMA foreign_keys = ON")
            # Checked before anything is written, the journal mode included.
            migrate(self.conn, self.path, self.transaction)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            if not _writable(self.path):
                raise StoreError(
                    f"cannot write to the experiment database {str(self.path)!r}: it or its "
                    "directory is read-only (SQLite also writes its -wal and -shm files beside "
                    "it); make them writable or choose another path with --llm-db"
                ) from None
            raise StoreError(
                f"{str(self.path)!r} is not a usable SQLite database ({exc}); it was left as it "
                "is: move it away or choose another path with --llm-db"
            ) from None
        except BaseException:
            self.conn.close()
            raise

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` write transaction; caches are dropped if it rolls back.
        Inside another, it is part of that one (the writer inserts runs in batches)."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.conn
                finally:
                    self._depth -= 1
                return
            self.conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                self.ids.clear()
                self._experiment_ids.clear()
                raise
            finally:
                self._depth = 0
            self.conn.execute("COMMIT")

    @contextmanager
    def patience(self, milliseconds: int) -> Iterator[None]:
        """Wait at most ``milliseconds`` for another writer's lock inside the block (then
        ``sqlite3.OperationalError``: database is locked), instead of the usual 30 s."""
        with self._lock:
            self.conn.execute(f"PRAGMA busy_timeout = {int(milliseconds)}")
            try:
                yield
            finally:
                self.conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads outside any write transaction."""
        with self._lock:
            yield self.conn

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # -- sessions and experiments ---------------------------------------------------------

    def begin_session(
        self,
        *,
        kind: str,
        started_at: str | None = None,
        argv: list[str] | None = None,
        rootdir: str | None = None,
        endpoint: str | None = None,
        session_id: str | None = None,
        status: str = "running",
        cache_mode: str | None = None,
        replay_of: str | None = None,
    ) -> str:
        """Insert a session row (``running`` unless told otherwise) and return its id."""
        session_id = session_id or new_id()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO sessions (id, kind, started_at, status, argv, versions, git_sha, "
                "endpoint, rootdir, cache_mode, replay_of) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    kind,
                    started_at or utcnow(),
                    status,
                    _json([redact(a) for a in (argv if argv is not None else sys.argv)]),
                    _json(environment_versions()),
                    git_sha(rootdir or os.getcwd()),
                    endpoint,
                    rootdir,
                    cache_mode,
                    replay_of,
                ),
            )
        return session_id

    def finish_session(
        self,
        session_id: str,
        *,
        status: str,
        exitstatus: int | None,
        health: dict[str, Any] | None = None,
        notes: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Mark the session and its experiments finished, with their summaries (and what
        ``notes`` adds to an experiment's: the verdict's remarks on it)."""
        with self.transaction() as conn:
            from .._verdict.compare import used

            for experiment_id, name in self._experiments(session_id):
                summary = experiment_summary(conn, experiment_id)
                summary.update((notes or {}).get(name, {}))
                summary["used"] = used(conn, experiment_id)
                shortfall = _shortfall(conn, experiment_id)
                if shortfall is not None:
                    summary["partial"] = shortfall
                conn.execute(
                    "UPDATE experiments SET status = ?, summary = ?, partial = ? WHERE id = ?",
                    (status, _json(summary), int(shortfall is not None), experiment_id),
                )
            conn.execute(
                "UPDATE sessions SET status = ?, exitstatus = ?, finished_at = ?, health = ?, "
                "cache_served = (SELECT count(*) FROM message_log c JOIN experiment_runs r ON "
                "r.id = c.run_id JOIN experiments e ON e.id = r.experiment_id WHERE "
                "e.session_id = sessions.id AND c.replayed_from IS NOT NULL) WHERE id = ?",
                (status, exitstatus, utcnow(), _json(health) if health else None, session_id),
            )

    def mark_session(self, session_id: str, *, status: str, exitstatus: int | None) -> None:
        """Set a session's status alone: one small write, tried first when storage fails."""
        with self.transaction() as conn:
            conn.execute(
                "UPDATE sessions SET status = ?, exitstatus = ?, finished_at = ? WHERE id = ?",
                (status, exitstatus, utcnow(), session_id),
            )

    def session_status(self, session_id: str) -> str | None:
        """The stored status of a session, or ``None`` if it has no row."""
        with self._lock:
            row = self.conn.execute(
                "SELECT status FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def _experiments(self, session_id: str) -> list[tuple[int, str]]:
        rows = self.conn.execute(
            "SELECT id, name FROM experiments WHERE session_id = ? ORDER BY id", (session_id,)
        )
        return [(int(r[0]), str(r[1])) for r in rows]

    def _experiment_id(self, session_id: str, name: str, num_executions: int) -> int:
        key = (session_id, name)
        cached = self._experiment_ids.get(key)
        if cached is not None:
            return cached
        self.conn.execute(
            "INSERT OR IGNORE INTO experiments (session_id, name, num_executions, status) "
            "VALUES (?, ?, ?, 'running')",
            (session_id, name, num_executions),
        )
        row = self.conn.execute(
            "SELECT id FROM experiments WHERE session_id = ? AND name = ?", (session_id, name)
        ).fetchone()
        self._experiment_ids[key] = int(row[0])
        return int(row[0])

    # -- runs -------------------------------------------------------------------------------

    def insert_run(self, session_id: str, run: RunRecord) -> bool:
        """Insert a finished run with everything it used; ``False`` if it was already there."""
        return self.insert_runs(session_id, [run]) == 1

    def insert_runs(self, session_id: str, runs: list[RunRecord]) -> int:
        """Insert finished runs with everything they used; the number inserted (a run
        already stored is skipped)."""
        from .batch import Batch

        batch = Batch()
        for run in runs:
            batch.add_run(run)
        return self.insert_batch(session_id, batch)

    def insert_recording(self, recording: Recording) -> None:
        """Insert calls made outside any run, with the bots and prompts they used."""
        from .batch import Batch

        batch = Batch()
        batch.add_recording(recording)
        self.insert_batch("", batch)  # no runs: no session to name

    def insert_batch(self, session_id: str, batch: Batch) -> int:
        """Insert a batch's rows in one transaction, one statement per table; the number of
        its runs inserted (a run already stored is skipped, with its rows)."""
        with self.transaction() as conn:
            ids = batch.run_ids
            stored: set[str] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                stored.update(
                    row[0]
                    for row in conn.execute(
                        "SELECT id FROM experiment_runs "
                        f"WHERE id IN ({', '.join('?' * len(chunk))})",
                        chunk,
                    )
                )
            batch = batch.without(stored)
            conn.executemany(
                "INSERT INTO experiment_runs (id, experiment_id, execution_index, worker, "
                "nodeid, status, error_type, error_message, started_at, duration_s, retries, "
                "run_data, case_id, replayed_from, attempt, variant, cost, judge_cost) "
                f"VALUES ({', '.join('?' * 18)})",
                [(r[0], self._experiment_id(session_id, r[1], r[2]), *r[3:]) for r in batch.runs],
            )
            # A later attempt (a rerun plugin's) supersedes the earlier ones of its execution:
            # they stay, as 'rerun', and only the last attempt is evaluated.
            conn.executemany(
                "UPDATE experiment_runs SET status = 'rerun' WHERE experiment_id = ? AND "
                "execution_index = ? AND coalesce(case_id, '') = coalesce(?, '') AND "
                "coalesce(variant, '') = coalesce(?, '') AND attempt < ? AND status != 'rerun'",
                [
                    (self._experiment_id(session_id, r[1], r[2]), r[3], r[13], r[16], r[15])
                    for r in batch.runs
                    if r[15] > 1
                ],
            )
            known = self.ids
            prompt_ids = {key: known.prompt(p) for key, p in batch.prompts.items()}
            bot_ids = {key: known.bot(b) for key, b in batch.bots.items()}
            # What runs name without defining it, an earlier record defined.
            for link in batch.run_prompts:
                if link[1:] not in prompt_ids:
                    prompt_ids[link[1:]] = known.named(link[0], link[1:])
            for run_id, bot in [*batch.run_bots, *((c[1], c[2]) for c in batch.calls)]:
                if bot not in bot_ids:
                    bot_ids[bot] = known.named(run_id, bot)
            conn.executemany(
                "INSERT OR IGNORE INTO run_prompts (run_id, prompt_id) VALUES (?, ?)",
                [(r[0], prompt_ids[r[1:]]) for r in batch.run_prompts],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO run_bots (run_id, bot_id) VALUES (?, ?)",
                [(run_id, bot_ids[bot]) for run_id, bot in batch.run_bots],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO message_log (id, run_id, bot_id, timestamp, model_name, "
                "response_model, temperature, message_log, prompt_tokens, completion_tokens, "
                "latency_ms, retries, finish_reason, error, error_type, truncated, cache_key, "
                "request, replayed_from, seed, api, stream, judge) "
                f"VALUES ({', '.join('?' * 23)})",
                [(*r[:2], bot_ids[r[2]], *r[3:]) for r in batch.calls],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO llm_cache (key, message_log_id, recorded_at) "
                "VALUES (?, ?, ?)",
                [r[1:] for r in batch.cached],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO metrics (run_id, name, value, kind, position) "
                "VALUES (?, ?, ?, ?, ?)",
                batch.metrics,
            )
        return len(batch)

    # -- reading ----------------------------------------------------------------------------

    def spend(self, session_id: str) -> tuple[int, int, int]:
        """The session's calls, tokens, and runs skipped by the spend guard."""
        with self._lock:
            return session_spend(self.conn, session_id)

    def summaries(self, session_id: str) -> dict[str, dict[str, Any]]:
        """Per experiment of the session: run counts by status and per-metric statistics."""
        with self._lock:
            return {
                name: experiment_summary(self.conn, eid)
                for eid, name in self._experiments(session_id)
            }


def _shortfall(conn: sqlite3.Connection, experiment_id: int) -> dict[str, int] | None:
    """The runs an experiment ran and planned, if some case ran fewer executions than the
    code declares (one execution from an IDE, -k, -x, a lower --llm-num-executions, runs
    skipped); ``None`` when every case it ran ran fully."""
    declared, planned = conn.execute(
        "SELECT max(json_extract(r.run_data, '$.declared_executions')), e.num_executions "
        "FROM experiments e JOIN experiment_runs r ON r.experiment_id = e.id WHERE e.id = ?",
        (experiment_id,),
    ).fetchone()
    planned = max(int(planned or 0), int(declared or 0))
    counts = [
        int(ran)
        for _case, ran in conn.execute(
            "SELECT coalesce(variant, '') || ':' || coalesce(case_id, ''), count(DISTINCT CASE "
            "WHEN status != 'skipped' OR error_type IS ? THEN execution_index END) "
            "FROM experiment_runs "
            "WHERE experiment_id = ? GROUP BY 1",
            (DECIDED, experiment_id),
        )
    ]
    if all(ran >= planned for ran in counts):  # adaptive stops count: they were not needed
        return None
    return {"runs": sum(counts), "planned": planned * len(counts)}


_default_stores: dict[str, Store] = {}
_default_lock = threading.Lock()


def default_store() -> Store:
    """The store that calls outside pytest and outside any ``Experiment`` are logged to.

    ``LLMEXP_DB`` names it; the default is ``message_log.db`` in the working directory.
    """
    path = os.path.abspath(os.environ.get("LLMEXP_DB") or DEFAULT_DB)
    with _default_lock:
        store = _default_stores.get(path)
        if store is None:
            store = _default_stores[path] = Store(path)
        return store
