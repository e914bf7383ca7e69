"""The writer's intake: what test reports carry, stored in message_log.db in batches.

A run that is on disk in its spool is queued and inserted with the others of its batch in
one transaction: per-run commits cost more than the rest of a run's recording. A batch is
written when it holds ``BATCH_RUNS`` runs or when ``BATCH_SECONDS`` have passed since the
last one (so runs of slow calls are stored as they come), and at session end. A payload
that is in no spool (a crashed run, calls whose spooling failed) is inserted at once.

The queue holds the runs' JSON, and a batch's runs are parsed and made into rows (see
:mod:`.batch`) one after the other when it is written, not when each arrives: the same code
run 200 times in a row stays in the CPU's caches, where run once between two tests it
starts cold, which costs about twice as much; and one run's records at a time, freed at
once, never reach the garbage collector's oldest generation.

Nothing queued can be lost: if this process dies, the next session ingests the spool.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import pytest

from .._store.batch import Batch
from .adaptive import is_adaptive
from .collect import case_id, execution_index, is_execution_id
from .keys import REPORT_PREFIX

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable

    from .._store.records import Recording, RunRecord
    from .._store.spool import Kind
    from .._store.store import Store

__all__ = ["BATCH_RUNS", "BATCH_SECONDS", "LIVE_PATIENCE_MS", "Intake", "ReportHooks"]

BATCH_RUNS = 200
BATCH_SECONDS = 0.5
#: How long a batch written while runs go on waits for another program's lock on the file.
LIVE_PATIENCE_MS = 100
#: After a batch was put off for a lock, how long until the next try.
LOCKED_RETRY_SECONDS = 1.0


class Intake:
    """Takes the reports of a session's tests and stores what they carry."""

    def __init__(self, store: Callable[[], Store], session_id: str) -> None:
        #: Opens the database and begins the session on first use.
        self._open = store
        self.session_id = session_id
        self.write_errors: list[str] = []
        self.spool_errors: list[str] = []
        #: Results that could be stored neither from their report nor from the spool.
        self.lost = 0
        #: Results not stored but kept in the spool, for the next session or ``llmexp recover``.
        self.kept = 0
        #: Results that could not be spooled, and how many of them were stored from their
        #: reports (the others are lost).
        self.unspooled = 0
        self.unspooled_stored = 0
        #: Executions not started because their results could be kept nowhere.
        self.not_started = 0
        #: The test of each call that came after its run had ended (stored outside runs).
        self.late_calls: list[str] = []
        #: Failed reports of executions, counted as pytest's ``session.testsfailed`` counts.
        self.failed_executions = 0
        #: xdist workers that ended by KeyboardInterrupt.
        self.interrupted_workers: set[str] = set()
        #: Spool lines stored from reports, by worker: reconciling skips them unread.
        self.stored_lines: dict[str, int] = {}
        #: The lines each worker's spool holds, as the worker counted them when it ended: a
        #: spool whose lines were all stored from reports is not read at all.
        self.spooled_lines: dict[str, int] = {}
        self._queue: list[tuple[Kind, str, str]] = []
        self._flushed = time.monotonic()
        #: No batch is tried before this time (after one was put off for a lock).
        self._retry_at = 0.0
        #: Payloads in no spool whose insert failed, tried once more at session end.
        self._pending: list[tuple[Kind, str, bool]] = []
        #: Runs in progress under xdist (from their setup reports), by node id.
        self._started: dict[str, dict[str, Any]] = {}
        #: Experiment name and size by test function, from those reports.
        self._experiment_of: dict[str, tuple[str, int]] = {}
        #: Given each arriving run of an adaptive experiment (its JSON), to decide on.
        self.on_adaptive: Callable[[str], None] | None = None

    def take_report(self, report: pytest.TestReport) -> None:
        """Store what a test report carries: a finished run, calls outside runs, a crash."""
        if report.failed and not hasattr(report, "wasxfail") and is_execution_id(report.nodeid):
            self.failed_executions += 1
        start = getattr(report, f"{REPORT_PREFIX}start", None)
        if start is not None:
            info = self._started[report.nodeid] = json.loads(start)
            test = report.nodeid.split("[")[0]
            self._experiment_of[test] = (info["experiment"], info["num_executions"])
        if getattr(report, f"{REPORT_PREFIX}not_started", False):
            self.not_started += 1
            self._started.pop(report.nodeid, None)
        spool_error = getattr(report, f"{REPORT_PREFIX}spool_error", None)
        if spool_error is not None:
            self.spool_errors.append(spool_error)
        worker = worker_id(report)
        spooled = worker if spool_error is None else None
        run = getattr(report, f"{REPORT_PREFIX}run", None)
        if run is not None:
            self._started.pop(report.nodeid, None)
            if self.on_adaptive is not None and is_adaptive(run):
                self.on_adaptive(run)
            self.write("run", run, spooled=spooled, unspooled=spooled is None)
            # Stored: pytest keeps every report to the session's end, a run's JSON need not.
            del report.llmexp_run
        calls = getattr(report, f"{REPORT_PREFIX}calls", None)
        if calls is not None:
            self.write("calls", calls, spooled=spooled, unspooled=spooled is None)
            del report.llmexp_calls
        when: str = report.when or ""
        if when == "???" and report.failed and is_execution_id(report.nodeid):
            # pytest-xdist's report for the item a worker was running when it died; a worker
            # stopped by Ctrl-C did not crash: its run was interrupted, and is not a result.
            if worker in self.interrupted_workers:
                self._started.pop(report.nodeid, None)
            else:
                self.write("run", self._crashed_run(report, worker), spooled=None)

    def write(
        self, kind: Kind, payload: str, *, spooled: str | None, unspooled: bool = False
    ) -> None:
        """Store a run or calls outside runs. ``spooled`` names the worker whose spool holds
        the payload (it is queued), or is ``None`` (it is inserted now); ``unspooled``: it
        should have been spooled, and the spool could not be written."""
        if spooled is not None:
            self._queue.append((kind, payload, spooled))
            now = time.monotonic()
            if now >= self._retry_at and (
                len(self._queue) >= BATCH_RUNS or now - self._flushed > BATCH_SECONDS
            ):
                self.flush()
            return
        import sqlite3

        self.unspooled += unspooled
        self.flush()
        try:
            self._insert(kind, payload)
        except sqlite3.Error as exc:
            self._pending.append((kind, payload, unspooled))
            self.write_errors.append(f"{type(exc).__name__}: {exc}")
        else:
            self.unspooled_stored += unspooled

    def flush(self, *, final: bool = False) -> None:
        """Insert the queued payloads in one transaction; if it fails, each on its own.

        While runs go on, a database locked by another program does not hold up the session
        (under xdist, the controller that hands out the tests): the batch waits at most
        ``LIVE_PATIENCE_MS``, then stays queued (it is in the spool) for the next flush. The
        session's last flush (``final``) waits as long as any write does.
        """
        queue, self._queue = self._queue, []
        self._flushed = time.monotonic()
        if not queue:
            return
        import sqlite3

        store = self._open()
        batch, late = _batch(queue)
        try:
            if final:
                store.insert_batch(self.session_id, batch)
            else:
                with store.patience(LIVE_PATIENCE_MS):
                    store.insert_batch(self.session_id, batch)
        except sqlite3.Error as exc:
            if not final and _busy(exc):
                self._queue = queue + self._queue
                self._retry_at = time.monotonic() + LOCKED_RETRY_SECONDS
                return
            self.write_errors.append(f"{type(exc).__name__}: {exc}")
            for kind, payload, worker in queue:
                try:
                    self._insert(kind, payload)
                except sqlite3.Error as exc:
                    # Still in the spool: reconciling at session end tries it again.
                    self.write_errors.append(f"{type(exc).__name__}: {exc}")
                else:
                    self._count(worker)
            return
        self.late_calls += late
        for _, _, worker in queue:
            self._count(worker)

    def _count(self, worker: str) -> None:
        self.stored_lines[worker] = self.stored_lines.get(worker, 0) + 1

    def _insert(self, kind: Kind, payload: str) -> None:
        store = self._open()
        if kind == "run":
            store.insert_run(self.session_id, _run(payload))
        else:
            recording = _recording(payload)
            store.insert_recording(recording)
            self.late_calls += recording.late

    def retry_pending(self) -> None:
        """Insert the payloads in no spool whose insert failed; count those that fail again."""
        self.flush(final=True)
        if not self._pending:
            return
        import sqlite3

        pending, self._pending = self._pending, []
        for kind, payload, unspooled in pending:
            try:
                self._insert(kind, payload)
            except sqlite3.Error as exc:
                self.lost += 1
                self.write_errors.append(f"{type(exc).__name__}: {exc}")
            else:
                self.unspooled_stored += unspooled

    @property
    def unstored(self) -> int:
        """Results that are not in the database: kept in the spool, or lost."""
        return self.lost + self.kept

    @property
    def storage_failed(self) -> bool:
        """Whether results are missing from the database or runs were not started for it:
        the session's numbers are not a verdict."""
        return bool(self.unstored or self.not_started)

    @property
    def reliable_counts(self) -> bool:
        """Whether ``stored_lines`` may be trusted to skip spool lines: no spooling or insert
        failed, so each worker's spool starts with exactly the lines stored from reports."""
        return not (self.spool_errors or self.write_errors)

    def _crashed_run(self, report: pytest.TestReport, worker: str) -> str:
        from .._store.records import RunRecord
        from .._util.clock import utcnow
        from .._util.ids import new_id

        info = self._started.pop(report.nodeid, None)
        if info is None:
            # It died while setting up: named and sized as the test's other executions were.
            test = report.nodeid.split("[")[0]
            name, size = self._experiment_of.get(
                test, (test.rsplit("::", 1)[-1].removeprefix("test_"), 0)
            )
            index = execution_index(report.nodeid) or 0
            info = {
                "run_id": new_id(),
                "experiment": name,
                "num_executions": max(size, index + 1),
                "execution_index": index,
                "worker": worker,
                "nodeid": report.nodeid,
                "started_at": utcnow(),
                "case_id": case_id(report.nodeid),
            }
        record = RunRecord(
            **info,
            duration_s=0.0,
            status="crashed",
            error_type="WorkerCrashed",
            error_message=str(report.longrepr)[:4000],
        )
        return record.model_dump_json()


def _batch(queue: list[tuple[Kind, str, str]]) -> tuple[Batch, list[str]]:
    """The rows of queued payloads, and the tests of calls that came after their run."""
    batch = Batch()
    late: list[str] = []
    for kind, payload, _ in queue:
        if kind == "run":
            batch.add_run(_run(payload))
        else:
            recording = _recording(payload)
            late += recording.late
            batch.add_recording(recording)
    return batch, late


def _busy(exc: sqlite3.Error) -> bool:
    """Whether a write failed because another connection holds the database's lock."""
    # Set by SQLite itself; an exception raised by other code has no name.
    name = getattr(exc, "sqlite_errorname", None) or ""
    return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))


def _run(payload: str) -> RunRecord:
    from .._store.records import RunRecord

    return RunRecord.model_validate_json(payload)


def _recording(payload: str) -> Recording:
    from .._store.records import Recording

    return Recording.model_validate_json(payload)


def worker_id(report: pytest.TestReport) -> str:
    """The xdist worker a report came from; ``main`` without xdist (the spool's names)."""
    node: Any = getattr(report, "node", None)
    workerinput = getattr(node, "workerinput", None)
    if workerinput is None:
        return "main"
    return str(workerinput.get("workerid", "?"))


class ReportHooks:
    """The per-test hook, registered only where runs can arrive (see plugin.py), so that a
    session without experiments pays nothing per test."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.intake.take_report(report)
