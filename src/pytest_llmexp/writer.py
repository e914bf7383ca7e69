"""The one process that writes message_log.db: the xdist controller, or the only process."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any, Literal

import pytest

from .collect import ITEM_KEY, case_id, execution_index, is_execution_id
from .conclusion import Conclusion
from .spool import SessionLock, remove_empty, remove_session_files, spool_dir, spooled_sessions

if TYPE_CHECKING:
    from .health import Health
    from .recovery import Ingested
    from .settings import Settings
    from .signals import SigtermAsInterrupt
    from .store import Store

__all__ = ["ReportHooks", "Writer", "XdistHooks"]


class Writer:
    """Begins the session when experiments are about to run, stores each finished run as its
    report arrives, and at the end reconciles the spool and judges the session's health."""

    def __init__(self, config: pytest.Config, settings: Settings, started_at: str) -> None:
        self.config = config
        self.settings = settings
        self.started_at = started_at
        #: Known before the database is opened: workers name their spool files with it.
        self.session_id = uuid.uuid4().hex
        self.spool_dir = spool_dir(settings.db_path)
        self.lock = SessionLock(self.spool_dir, self.session_id)
        self.store: Store | None = None
        self.begun = False
        self.summaries: dict[str, dict[str, Any]] = {}
        self.health: Health | None = None
        #: A usage error an xdist worker found while collecting.
        self.usage_error: str | None = None
        #: Sessions killed earlier whose spools this session ingested.
        self.recovered: list[Ingested] = []
        #: Payloads whose insert failed, tried once more at session end.
        self._pending: list[tuple[Literal["run", "calls"], str]] = []
        self._write_errors: list[str] = []
        self._spool_errors: list[str] = []
        self._lost = 0
        #: Runs in progress under xdist (from their setup reports), by node id.
        self._started: dict[str, dict[str, Any]] = {}
        #: Experiment name and size by test function, from those reports.
        self._experiment_of: dict[str, tuple[str, int]] = {}
        #: Runs stored from their reports: reconciling the spool skips them.
        self._stored: set[str] = set()
        self._spool_kept = False
        #: Failed reports of executions, counted as pytest's ``session.testsfailed`` counts.
        self._failed_executions = 0
        #: xdist workers that ended by KeyboardInterrupt.
        self.interrupted_workers: set[str] = set()
        #: Installed when the session begins.
        self.sigterm: SigtermAsInterrupt | None = None
        self.conclusion = Conclusion(settings, self.session_id)
        #: The stored session whose generations this one replays (``--llm-replay-from``).
        self.replay_of: str | None = None
        self.cache_line: str | None = None

    def _store(self) -> Store:
        if self.store is None:
            from .errors import StoreError
            from .store import Store

            try:
                self.store = Store(self.settings.db_path)
            except StoreError as exc:
                pytest.exit(f"pytest-llmexp: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        return self.store

    def begin(self) -> None:
        """Open the database, ingest dead sessions' spools, and insert this session's row."""
        if self.begun:
            return
        self.begun = True
        import sqlite3

        from .endpoint import endpoint_label
        from .recovery import recover
        from .signals import SigtermAsInterrupt

        # From here on a cancelled CI job (SIGTERM) ends the session as Ctrl-C does.
        self.sigterm = SigtermAsInterrupt()
        self.sigterm.install()
        store = self._store()
        try:
            self.lock.hold()
        except OSError as exc:
            pytest.exit(
                f"pytest-llmexp: cannot create the spool directory {str(self.spool_dir)!r} "
                f"beside the database ({exc}); choose a writable path with --llm-db",
                returncode=pytest.ExitCode.USAGE_ERROR,
            )
        from .cachedb import check_replay_source, prepare_cassette
        from .errors import ExperimentError
        from .spool import cassette_path
        from .verdicts import check_compare_target

        with store.reading() as conn:
            problem = check_compare_target(conn, self.settings.compare)
            if problem is None and self.settings.replay_from is not None:
                try:
                    self.replay_of = check_replay_source(conn, self.settings.replay_from)
                except ExperimentError as exc:
                    problem = str(exc)
        if problem is not None:
            store.close()
            self.store = None
            pytest.exit(f"pytest-llmexp: {problem}", returncode=pytest.ExitCode.USAGE_ERROR)
        try:
            self.recovered = recover(store, self.spool_dir, own_session=self.session_id)
            # After recovery, so that what a killed session recorded can be replayed.
            cassette = cassette_path(self.settings.db_path, self.session_id)
            prepare_cassette(store, cassette, self.settings.cache, self.replay_of)
            store.begin_session(
                kind="pytest",
                session_id=self.session_id,
                started_at=self.started_at,
                argv=list(self.config.invocation_params.args),
                rootdir=str(self.config.rootpath),
                endpoint=endpoint_label(),
                cache_mode=self.settings.cache,
                replay_of=self.replay_of,
            )
        except sqlite3.Error as exc:
            pytest.exit(
                f"pytest-llmexp: cannot write to {str(self.settings.db_path)!r}: "
                f"{type(exc).__name__}: {exc}",
                returncode=pytest.ExitCode.INTERNAL_ERROR,
            )

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        if not self.config.pluginmanager.hasplugin("dsession") and any(
            ITEM_KEY in item.stash for item in session.items
        ):
            self.begin()

    def write(self, kind: Literal["run", "calls"], payload: str, *, spooled: bool) -> None:
        """Store a run or calls outside runs. A failed insert is tried again at session end:
        from the spool if it was spooled, else from memory."""
        import sqlite3

        try:
            self._insert(kind, payload)
        except sqlite3.Error as exc:
            if not spooled:
                self._pending.append((kind, payload))
            self._write_errors.append(f"{type(exc).__name__}: {exc}")

    def _insert(self, kind: Literal["run", "calls"], payload: str) -> None:
        from .records import Recording, RunRecord

        self.begin()
        if kind == "run":
            run = RunRecord.model_validate_json(payload)
            self._store().insert_run(self.session_id, run)
            self._stored.add(run.run_id)
        else:
            self._store().insert_recording(Recording.model_validate_json(payload))

    def _retry_pending(self) -> None:
        if not self._pending:
            return
        import sqlite3

        pending, self._pending = self._pending, []
        for kind, payload in pending:
            try:
                self._insert(kind, payload)
            except sqlite3.Error as exc:
                self._lost += 1
                self._write_errors.append(f"{type(exc).__name__}: {exc}")

    def take_report(self, report: pytest.TestReport) -> None:
        """Store what a test report carries: a finished run, calls outside runs, a crash."""
        if report.failed and not hasattr(report, "wasxfail") and is_execution_id(report.nodeid):
            self._failed_executions += 1
        start = getattr(report, "llmexp_start", None)
        if start is not None:
            info = self._started[report.nodeid] = json.loads(start)
            test = report.nodeid.split("[")[0]
            self._experiment_of[test] = (info["experiment"], info["num_executions"])
        spool_error = getattr(report, "llmexp_spool_error", None)
        if spool_error is not None:
            self._spool_errors.append(spool_error)
        run = getattr(report, "llmexp_run", None)
        if run is not None:
            self._started.pop(report.nodeid, None)
            self.write("run", run, spooled=spool_error is None)
        calls = getattr(report, "llmexp_calls", None)
        if calls is not None:
            self.write("calls", calls, spooled=spool_error is None)
        when: str = report.when or ""
        if when == "???" and report.failed and is_execution_id(report.nodeid):
            # pytest-xdist's report for the item a worker was running when it died; a worker
            # stopped by Ctrl-C did not crash: its run was interrupted, and is not a result.
            if _worker_id(report) in self.interrupted_workers:
                self._started.pop(report.nodeid, None)
            else:
                self.write("run", self._crashed_run(report), spooled=False)

    def _crashed_run(self, report: pytest.TestReport) -> str:
        from .recording import utcnow
        from .records import RunRecord

        info = self._started.pop(report.nodeid, None)
        if info is None:
            # It died while setting up: named and sized as the test's other executions were.
            test = report.nodeid.split("[")[0]
            name, size = self._experiment_of.get(
                test, (test.rsplit("::", 1)[-1].removeprefix("test_"), 0)
            )
            index = execution_index(report.nodeid) or 0
            info = {
                "run_id": uuid.uuid4().hex,
                "experiment": name,
                "num_executions": max(size, index + 1),
                "execution_index": index,
                "worker": _worker_id(report),
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

    def _reconcile(self) -> None:
        """Insert whatever the spool holds that the reports did not bring, then delete it."""
        from .recovery import ingest

        files = spooled_sessions(self.spool_dir).get(self.session_id, [])
        result = ingest(self._store(), self.session_id, files, stored=self._stored)
        self._lost += len(result.errors)
        self._write_errors += result.errors
        self._spool_kept = bool(result.errors)
        if not result.errors:
            remove_session_files(self.spool_dir, self.session_id, keep_lock=True)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.usage_error is not None:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        from .recording import drain_orphans_json

        calls = drain_orphans_json()
        if calls is not None:
            self.write("calls", calls, spooled=False)
        self._retry_pending()
        if not self.begun or self.store is None:
            self.conclusion.without_experiments(session)
            self.conclusion.write_reports(session, None, self.summaries, None)
            return
        import sqlite3

        from .cachedb import cache_line
        from .health import judge

        self._reconcile()
        # pytest counted every failed report (collection errors too); ours are executions.
        self.conclusion.other_failures = session.testsfailed - self._failed_executions
        if self._lost:
            # Results that are not stored must not let a CI job pass.
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        # Ctrl-C, SIGTERM, pytest.exit() or an internal error: the session did not complete.
        interrupted = exitstatus not in (
            pytest.ExitCode.OK,
            pytest.ExitCode.TESTS_FAILED,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        )
        status = "interrupted" if interrupted else "complete"
        try:
            self.summaries = self.store.summaries(self.session_id)
            self.health = judge(self.store, self.session_id, self.summaries, self.settings)
            self.health.lost = self._lost
            if self.health.failed and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            self.conclusion.judge(
                session,
                self.store,
                self.health,
                tests_failed=exitstatus == pytest.ExitCode.TESTS_FAILED,
                interrupted=interrupted,
                lost=self._lost,
            )
            self.store.finish_session(
                self.session_id,
                status=status,
                exitstatus=int(session.exitstatus),
                health=self.health.as_json(),
            )
            with self.store.reading() as conn:
                self.cache_line = cache_line(conn, self.session_id)
        except sqlite3.Error as exc:
            # The session's end and its summaries are results too.
            self._lost += 1
            self._write_errors.append(f"{type(exc).__name__}: {exc}")
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        self.conclusion.write_reports(session, status, self.summaries, self.health, self.store)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.usage_error is not None:
            terminalreporter.write_line(f"ERROR: {self.usage_error}", red=True, bold=True)
        if self.begun:
            self._session_lines(terminalreporter)
        for line, color in self.conclusion.terminal_lines():
            terminalreporter.write_line(line, **({color: True} if color else {}))
        self._error_lines(terminalreporter)

    def _session_lines(self, terminalreporter: pytest.TerminalReporter) -> None:
        from .health import problem_lines, recovery_lines
        from .summary import write_summary

        for line in recovery_lines(self.recovered):
            terminalreporter.write_line(line, yellow=True)
        if self.summaries:
            write_summary(
                terminalreporter,
                self.summaries,
                str(self.settings.db_path),
                self.session_id,
                self.conclusion.verdict,
            )
        if self.cache_line is not None:
            terminalreporter.write_line(self.cache_line)
        for line, red in problem_lines(self.health):
            terminalreporter.write_line(line, red=red, yellow=not red, bold=red)

    def _error_lines(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self._spool_errors:
            terminalreporter.write_line(
                f"warning: {len(self._spool_errors)} run(s) could not be spooled (last: "
                f"{self._spool_errors[-1]}); they were stored from their reports",
                yellow=True,
            )
        if self._write_errors:
            where = self.settings.db_path
            if self._lost:
                line = f"ERROR: {self._lost} result(s) could not be stored in {where}"
                if self._spool_kept:
                    line += (
                        f"; they are kept in {self.spool_dir} and will be stored by the next "
                        "session or by `llmexp recover`"
                    )
            else:
                line = f"warning: writes to {where} failed and succeeded when retried"
            terminalreporter.write_line(
                f"{line} ({len(self._write_errors)} failure(s); last: {self._write_errors[-1]})",
                red=bool(self._lost),
                yellow=not self._lost,
            )

    def close(self) -> None:
        if self.sigterm is not None:
            self.sigterm.uninstall()
        # A spool kept for recovery needs no lock file: a session without one is dead.
        self.lock.release(remove=True)
        remove_empty(self.spool_dir)
        if self.store is not None:
            self.store.close()
            self.store = None


def _worker_id(report: pytest.TestReport) -> str:
    node: Any = getattr(report, "node", None)
    workerinput = getattr(node, "workerinput", None) or {}
    return str(workerinput.get("workerid", "?"))


class ReportHooks:
    """The writer's per-test hook, registered only where runs can arrive (see plugin.py), so
    that a session without experiments pays nothing per test."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.writer.take_report(report)


class XdistHooks:
    """Controller hooks that exist only when pytest-xdist is loaded."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["llmexp_session"] = self.writer.session_id

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # Runs before any test is scheduled: the session row and lock exist before any run.
        if any(is_execution_id(nodeid) for nodeid in ids):
            self.writer.begin()

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", None) or {}
        if output.get("exitstatus") == pytest.ExitCode.INTERRUPTED:
            self.writer.interrupted_workers.add(str(node.workerinput["workerid"]))
        if self.writer.usage_error is None:
            self.writer.usage_error = output.get("llmexp_usage_error")
        calls = output.get("llmexp_calls")
        if calls is not None:
            self.writer.write("calls", calls, spooled=bool(output.get("llmexp_calls_spooled")))
