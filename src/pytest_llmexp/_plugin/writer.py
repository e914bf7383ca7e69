"""The one process that writes message_log.db: the xdist controller, or the only process."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from .._store.spool import (
    Reserve,
    SessionLock,
    remove_empty,
    remove_session_files,
    spool_dir,
    spool_name,
    spooled_sessions,
)
from .collect import is_execution_id
from .conclusion import Conclusion
from .intake import Intake
from .keys import (
    ITEM_KEY,
    RELAY_KEY,
    WORKERINPUT_DIST,
    WORKERINPUT_SESSION,
    WORKEROUTPUT_CALLS,
    WORKEROUTPUT_CALLS_SPOOLED,
    WORKEROUTPUT_SPOOL_LINES,
    WORKEROUTPUT_USAGE_ERROR,
)

if TYPE_CHECKING:
    from .._run.traffic import Totals
    from .._store.recovery import Ingested
    from .._store.store import Store
    from .._verdict.health import Health
    from .adaptive import AdaptiveController
    from .settings import Settings
    from .signals import SigtermAsInterrupt

__all__ = ["Writer", "XdistHooks"]


class Writer:
    """Begins the session when experiments are about to run, stores the finished runs that
    reports bring (in batches, see :mod:`.intake`), and at the end reconciles the spool and
    judges the session's health."""

    def __init__(
        self, config: pytest.Config, settings: Settings, started_at: str, session_id: str
    ) -> None:
        self.config = config
        self.settings = settings
        self.started_at = started_at
        self.session_id = session_id
        self.spool_dir = spool_dir(settings.db_path)
        self.lock = SessionLock(self.spool_dir, self.session_id)
        #: Room for the session's last writes when the disk fills up.
        self.reserve = Reserve(self.spool_dir / f"{session_id}.writer.reserve")
        #: The session was refused before it began (its message is printed): nothing to do.
        self.refused = False
        self.store: Store | None = None
        self.begun = False
        self.summaries: dict[str, dict[str, Any]] = {}
        self.health: Health | None = None
        #: A usage error an xdist worker found while collecting.
        self.usage_error: str | None = None
        #: Sessions killed earlier whose spools this session ingested.
        self.recovered: list[Ingested] = []
        self.intake = Intake(self._begun_store, self.session_id)
        self.intake.on_adaptive = self._decide
        #: Decides when adaptive experiments' cases stop (made with the first such run).
        self.adaptive: AdaptiveController | None = None
        #: Why decisions stopped being made (the decision file could not be written).
        self.adaptive_failure: str | None = None
        #: Installed when the session begins.
        self.sigterm: SigtermAsInterrupt | None = None
        self.conclusion = Conclusion(settings, self.session_id)
        #: The stored session whose generations this one replays (``--llm-replay-from``).
        self.replay_of: str | None = None
        self.cache_line: str | None = None
        #: The session's end (status, summaries) could not be stored.
        self.end_unstored = False
        #: Whether the session's row was marked interrupted when storage failed.
        self.marked = False
        #: Spool files that could not be deleted once stored (a read-only directory).
        self.left_behind: list[Path] = []
        #: Seconds the session's calls waited on rate limits, and the answers that were one.
        self.rate_totals: Totals | None = None

    def _decide(self, payload: str) -> None:
        """An arriving run of an adaptive experiment: decide what stops, for every process."""
        if self.adaptive_failure is not None:
            return
        if self.adaptive is None:
            from .._store.spool import Decisions
            from .adaptive import AdaptiveController

            self.adaptive = AdaptiveController(
                Decisions(self.settings.db_path, self.session_id),
                self.settings.ini_gates,
                self.settings.cli_gates,
            )
        try:
            self.adaptive.take(payload)
        except OSError as exc:
            # Nothing is stopped from here on: every execution runs, as without adaptivity.
            self.adaptive_failure = f"{self.adaptive.decisions.path}: {exc}"

    def _begun_store(self) -> Store:
        self.begin()
        return self._store()

    def _store(self) -> Store:
        if self.store is None:
            from .._store.store import Store
            from ..errors import StoreError

            try:
                self.store = Store(self.settings.db_path)
            except StoreError as exc:
                self._refuse(str(exc))
        return self.store

    def _refuse(
        self, message: str, returncode: pytest.ExitCode = pytest.ExitCode.USAGE_ERROR
    ) -> NoReturn:
        """End the session before it began: nothing is stored, nothing more is said."""
        self.refused = True
        if self.store is not None:
            self.store.close()
            self.store = None
        pytest.exit(f"pytest-llmexp: {message}", returncode=returncode)

    def begin(self) -> None:
        """Open the database, ingest dead sessions' spools, and insert this session's row."""
        if self.begun or self.settings.dry_run:
            return  # a dry run (--collect-only, --setup-plan...) stores nothing
        self.begun = True
        import sqlite3

        from .._run.endpoint import endpoint_label
        from .._store.recovery import recover
        from .signals import SigtermAsInterrupt

        # From here on a cancelled CI job (SIGTERM) ends the session as Ctrl-C does.
        self.sigterm = SigtermAsInterrupt()
        self.sigterm.install()
        store = self._store()
        try:
            self.lock.hold()
        except OSError as exc:
            self._refuse(
                f"cannot use the spool directory {str(self.spool_dir)!r} beside the database "
                f"({exc.strerror or exc}); runs are kept there until stored, so it must be a "
                "writable directory: remove what is in its place, or choose another path with "
                "--llm-db"
            )
        self.reserve.make()
        from .._store.cassette import check_replay_source, prepare_cassette
        from .._store.spool import cassette_path
        from .._verdict.verdicts import check_compare_target
        from ..errors import ExperimentError

        with store.reading() as conn:
            problem = check_compare_target(conn, self.settings.compare)
            if problem is None and self.settings.replay_from is not None:
                try:
                    self.replay_of = check_replay_source(conn, self.settings.replay_from)
                except ExperimentError as exc:
                    problem = str(exc)
        if problem is not None:
            self._refuse(problem)
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
            self._refuse(
                f"cannot write to {str(self.settings.db_path)!r}: {type(exc).__name__}: {exc}",
                pytest.ExitCode.INTERNAL_ERROR,
            )

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        if not self.config.pluginmanager.hasplugin("dsession") and any(
            ITEM_KEY in item.stash for item in session.items
        ):
            self.begin()

    def _reconcile(self) -> None:
        """Insert whatever the spool holds that the reports did not bring, then delete it."""
        from .._store.recovery import ingest

        intake = self.intake
        relay = self.config.stash.get(RELAY_KEY, None)
        if relay is not None:  # this process's own spool (without xdist, its only one)
            intake.spooled_lines[relay.worker] = relay.spool.lines
        files = spooled_sessions(self.spool_dir).get(self.session_id, [])
        skip = None
        if intake.reliable_counts:
            skip = {spool_name(self.session_id, w): n for w, n in intake.stored_lines.items()}
            stored = {
                spool_name(self.session_id, worker)
                for worker, lines in intake.spooled_lines.items()
                if intake.stored_lines.get(worker, 0) == lines
            }
            files = [path for path in files if path.name not in stored]
        result = ingest(self._store(), self.session_id, files, skip=skip)
        # Each of these lines was read whole from the spool, which is kept: not lost.
        intake.kept = len(result.errors)
        intake.write_errors += result.errors
        from .._run.traffic import read_totals
        from .._store.spool import rate_path

        # Read before the spool goes: what rate limits cost the session, all processes.
        self.rate_totals = read_totals(rate_path(self.settings.db_path, self.session_id))
        if not result.errors:
            self.left_behind = remove_session_files(self.spool_dir, self.session_id, keep_lock=True)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.refused:
            return
        if self.usage_error is not None:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        from .._run.recording import drain_orphans_json

        calls = drain_orphans_json()
        if self.settings.dry_run:
            return  # nothing ran (calls at import time included): nothing is stored
        if calls is not None:
            self.intake.write("calls", calls, spooled=None)
        intake = self.intake
        if intake.write_errors or intake.spool_errors or intake.not_started:
            # Storage failed: make room for what is left to write, and first of all say
            # that this session did not complete, in case nothing else can be written.
            self.reserve.release()
            if self.store is not None:
                self._mark_interrupted()
        intake.retry_pending()
        if not self.begun or self.store is None:
            self.conclusion.without_experiments(session)
            if not self.settings.dry_run:  # nothing ran: nothing to report
                self.conclusion.write_reports(session, None, self.summaries, None)
            return
        import sqlite3

        from .._store.cassette import cache_line
        from .._verdict.health import judge

        self._reconcile()
        # pytest counted every failed report (collection errors too); ours are executions.
        self.conclusion.other_failures = session.testsfailed - intake.failed_executions
        if intake.storage_failed:
            # Results that are not stored (or runs not started for lack of room) must not
            # let a CI job pass.
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        # Ctrl-C, SIGTERM, pytest.exit() or an internal error: the session did not complete.
        interrupted = intake.storage_failed or exitstatus not in (
            pytest.ExitCode.OK,
            pytest.ExitCode.TESTS_FAILED,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        )
        status = "interrupted" if interrupted else "complete"
        try:
            self.summaries = self.store.summaries(self.session_id)
            self.health = judge(self.store, self.session_id, self.summaries, self.settings)
            self.health.lost = intake.unstored
            if self.rate_totals is not None:
                self.health.rate_limit_wait_s = round(self.rate_totals.waited, 3)
                self.health.rate_limited = self.rate_totals.throttled
            if self.health.failed and session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
            self.conclusion.judge(
                session,
                self.store,
                self.health,
                tests_failed=exitstatus == pytest.ExitCode.TESTS_FAILED,
                interrupted=interrupted,
                lost=intake.unstored,
            )
            verdict = self.conclusion.verdict
            self.store.finish_session(
                self.session_id,
                status=status,
                exitstatus=int(session.exitstatus),
                health=self.health.as_json(),
                notes={
                    name: {"adaptive_note": v.adaptive_note}
                    for name, v in (verdict.experiments.items() if verdict else ())
                    if v.adaptive_note
                },
            )
            with self.store.reading() as conn:
                self.cache_line = cache_line(conn, self.session_id)
        except sqlite3.Error as exc:
            # The session's end and its summaries are results too.
            intake.write_errors.append(f"{type(exc).__name__}: {exc}")
            self.end_unstored = True
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
            self.reserve.release()
            self._mark_interrupted()
        self.conclusion.write_reports(session, status, self.summaries, self.health, self.store)

    def _mark_interrupted(self) -> None:
        """The session row says ``interrupted`` before anything else is tried."""
        import sqlite3

        assert self.store is not None
        try:
            self.store.mark_session(
                self.session_id, status="interrupted", exitstatus=pytest.ExitCode.INTERNAL_ERROR
            )
        except sqlite3.Error as exc:
            self.intake.write_errors.append(f"{type(exc).__name__}: {exc}")
            self.marked = False
        else:
            self.marked = True

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        from .terminal import write_session_end

        write_session_end(terminalreporter, self)

    def close(self) -> None:
        if self.sigterm is not None:
            self.sigterm.uninstall()
        # A spool kept for recovery needs no lock file: a session without one is dead.
        self.lock.release(remove=True)
        self.reserve.release()
        remove_empty(self.spool_dir)
        if self.store is not None:
            self.store.close()
            self.store = None


class XdistHooks:
    """Controller hooks that exist only when pytest-xdist is loaded."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[WORKERINPUT_SESSION] = self.writer.session_id
        node.workerinput[WORKERINPUT_DIST] = str(node.config.getoption("dist", "no"))

    @pytest.hookimpl(tryfirst=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        # With executions in flight, a worker may run ahead only within what it was handed:
        # load scheduling hands executions out in flights of K (see _plugin.inflight).
        concurrency = self.writer.settings.concurrency
        if concurrency is None or concurrency == 1 or config.getoption("dist") != "load":
            return None
        from .inflight import make_flight_scheduling

        return make_flight_scheduling(config, log, concurrency)

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        # Runs before any test is scheduled: the session row and lock exist before any run.
        if any(is_execution_id(nodeid) for nodeid in ids):
            self.writer.begin()

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", None) or {}
        if output.get("exitstatus") == pytest.ExitCode.INTERRUPTED:
            self.writer.intake.interrupted_workers.add(str(node.workerinput["workerid"]))
        if self.writer.usage_error is None:
            self.writer.usage_error = output.get(WORKEROUTPUT_USAGE_ERROR)
        lines = output.get(WORKEROUTPUT_SPOOL_LINES)
        if isinstance(lines, int):
            self.writer.intake.spooled_lines[str(node.workerinput["workerid"])] = lines
        calls = output.get(WORKEROUTPUT_CALLS)
        if calls is not None:
            spooled = (
                str(node.workerinput["workerid"])
                if output.get(WORKEROUTPUT_CALLS_SPOOLED)
                else None
            )
            self.writer.intake.write("calls", calls, spooled=spooled)
