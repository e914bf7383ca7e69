"""The one process that writes message_log.db: the xdist controller, or the only process."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Literal

import pytest

from .summary import write_summary

if TYPE_CHECKING:
    from .settings import Settings
    from .store import Store

__all__ = ["Writer", "XdistHooks"]


class Writer:
    """Stores each finished run as its report arrives, and the session's end."""

    def __init__(self, config: pytest.Config, settings: Settings, started_at: str) -> None:
        self.config = config
        self.settings = settings
        self.started_at = started_at
        self.store: Store | None = None
        self.session_id: str | None = None
        self.summaries: dict[str, dict[str, Any]] = {}
        #: A usage error an xdist worker found while collecting.
        self.usage_error: str | None = None
        #: Payloads whose insert failed, tried once more at session end.
        self._pending: list[tuple[Literal["run", "calls"], str]] = []
        self._write_errors: list[str] = []
        self._lost = 0

    def _store(self) -> Store:
        if self.store is None:
            from .errors import StoreError
            from .store import Store

            try:
                self.store = Store(self.settings.db_path)
            except StoreError as exc:
                pytest.exit(f"pytest-llmexp: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
        return self.store

    def _session_id(self) -> str:
        if self.session_id is None:
            from .endpoint import endpoint_label

            self.session_id = self._store().begin_session(
                kind="pytest",
                started_at=self.started_at,
                argv=list(self.config.invocation_params.args),
                rootdir=str(self.config.rootpath),
                endpoint=endpoint_label(),
            )
        return self.session_id

    def write(self, kind: Literal["run", "calls"], payload: str) -> None:
        """Store a run or calls outside runs; a failed insert is retried at session end."""
        try:
            self._insert(kind, payload)
        except sqlite3.Error as exc:
            self._pending.append((kind, payload))
            self._write_errors.append(f"{type(exc).__name__}: {exc}")

    def _insert(self, kind: Literal["run", "calls"], payload: str) -> None:
        from .records import Recording, RunRecord

        if kind == "run":
            self._store().insert_run(self._session_id(), RunRecord.model_validate_json(payload))
        else:
            self._store().insert_recording(Recording.model_validate_json(payload))

    def _retry_pending(self) -> None:
        pending, self._pending = self._pending, []
        for kind, payload in pending:
            try:
                self._insert(kind, payload)
            except sqlite3.Error as exc:
                self._lost += 1
                self._write_errors.append(f"{type(exc).__name__}: {exc}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        run = getattr(report, "llmexp_run", None)
        if run is not None:
            self.write("run", run)
        calls = getattr(report, "llmexp_calls", None)
        if calls is not None:
            self.write("calls", calls)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.usage_error is not None:
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
        from .relay import drain_orphans_json

        calls = drain_orphans_json()
        if calls is not None:
            self.write("calls", calls)
        self._retry_pending()
        if self._lost:
            # Results that are not stored must not let a CI job pass.
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        if self.session_id is None or self.store is None:
            return
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        try:
            self.store.finish_session(
                self.session_id,
                status="interrupted" if interrupted else "complete",
                exitstatus=int(session.exitstatus),
            )
            self.summaries = self.store.summaries(self.session_id)
        except sqlite3.Error as exc:
            # The session's end and its summaries are results too.
            self._lost += 1
            self._write_errors.append(f"{type(exc).__name__}: {exc}")
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.usage_error is not None:
            terminalreporter.write_line(f"ERROR: {self.usage_error}", red=True, bold=True)
        if self.session_id is not None and self.summaries:
            write_summary(
                terminalreporter, self.summaries, str(self.settings.db_path), self.session_id
            )
        if self._write_errors:
            where = self.settings.db_path
            if self._lost:
                line = f"ERROR: {self._lost} result(s) could not be stored in {where}"
            else:
                line = f"warning: writes to {where} failed and succeeded when retried"
            terminalreporter.write_line(
                f"{line} ({len(self._write_errors)} failure(s); last: {self._write_errors[-1]})",
                red=bool(self._lost),
                yellow=not self._lost,
            )

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


class XdistHooks:
    """Controller hooks that exist only when pytest-xdist is loaded."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        output = getattr(node, "workeroutput", None) or {}
        if self.writer.usage_error is None:
            self.writer.usage_error = output.get("llmexp_usage_error")
        calls = output.get("llmexp_calls")
        if calls is not None:
            self.writer.write("calls", calls)
