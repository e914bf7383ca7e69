"""The end of a session: gates and comparisons judged, the exit status they decide, and the
JSON and Markdown reports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .._store.store import Store
    from .._verdict.health import Health
    from .._verdict.verdicts import SessionVerdict
    from .settings import Settings

__all__ = ["Conclusion"]


class Conclusion:
    """The session's verdict, kept by the writer (on the controller)."""

    def __init__(self, settings: Settings, session_id: str) -> None:
        self.settings = settings
        self.session_id = session_id
        self.verdict: SessionVerdict | None = None
        #: Why the session's verdict is not a pass (empty: it passed).
        self.reasons: list[str] = []
        #: Failed tests and collectors that are not experiment runs.
        self.other_failures = 0
        #: Failing runs did not fail the session: passing gates on runs tolerated them.
        self.tolerated = False
        self.report_error: str | None = None
        #: Where the HTML report went, or why none was written.
        self.report_note: str | None = None
        #: Under GitHub Actions: the ``::error`` workflow commands to print, and why the job
        #: summary was not written, if it was not.
        self.annotations: list[str] = []
        self.github_note: str | None = None

    def judge(
        self,
        session: pytest.Session,
        store: Store,
        health: Health,
        *,
        tests_failed: bool,
        interrupted: bool,
        lost: int,
    ) -> None:
        """Evaluate gates and comparisons, store them, and let them decide the exit status.

        ``tests_failed``: pytest's own outcome was "tests failed".
        """
        from .._verdict.verdicts import judge_session, save_verdict
        from .reports import failure_reasons

        not_evaluable = None
        if interrupted:
            not_evaluable = "the session was interrupted"
        elif health.over_budget:
            not_evaluable = "more runs errored than the error budget allows"
        import sqlite3

        settings = self.settings
        try:
            with store.reading() as conn:
                verdict = judge_session(
                    conn,
                    self.session_id,
                    ini_gates=settings.ini_gates,
                    cli_gates=settings.cli_gates,
                    compare=settings.compare,
                    fail_on_regression=settings.fail_on_regression,
                    not_evaluable=not_evaluable,
                    gate_variants=settings.gate_variants,
                )
            save_verdict(store, verdict)
        except sqlite3.Error:
            raise  # the writer's: results that cannot be stored
        except Exception as exc:
            # The runs are stored and the session must still be closed; an unknown verdict
            # must not let a CI job pass.
            self.reasons = [f"the verdict could not be computed: {type(exc).__name__}: {exc}"]
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
            return
        self.verdict = verdict
        if verdict.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        elif (
            tests_failed
            and session.exitstatus == pytest.ExitCode.TESTS_FAILED
            and not verdict.failed
            and not health.failed
            and not self.other_failures
            and verdict.tolerates_failures()
        ):
            # Every failing test is a run of an experiment whose passing gates on runs
            # tolerate it: the gates are the verdict.
            session.exitstatus = pytest.ExitCode.OK
            self.tolerated = True
        self.reasons = failure_reasons(
            verdict,
            health,
            interrupted=interrupted,
            lost=lost,
            untolerated_failures=tests_failed and not self.tolerated,
        )

    def without_experiments(self, session: pytest.Session) -> None:
        """No experiment ran: a gate from the command line gates nothing, which fails
        (unless nothing was meant to run: --collect-only, --setup-plan...)."""
        if self.settings.cli_gates and not self.settings.dry_run:
            from .._verdict.verdicts import SessionVerdict

            self.verdict = SessionVerdict(
                unmatched=[
                    f"gate {g.text!r} (cli): no experiment ran" for g in self.settings.cli_gates
                ]
            )
            self.reasons = list(self.verdict.unmatched)
            if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def write_reports(
        self,
        session: pytest.Session,
        status: str | None,
        summaries: dict[str, dict[str, Any]],
        health: Health | None,
        store: Store | None = None,
    ) -> None:
        """Write the JSON, Markdown and HTML reports asked for; one that cannot be written
        fails the session, as a CI job would otherwise publish nothing and pass."""
        settings = self.settings
        if settings.report_html is not None:
            if store is not None and status is not None:
                self._write_html(session, store, settings.report_html)
            else:
                self.report_note = (
                    f"no experiment ran: no HTML report was written to {settings.report_html}"
                )
        from .github import on_github

        github = on_github(settings.github) and status is not None
        if settings.report_json is None and settings.report_md is None and not github:
            return
        from .._verdict.verdicts import SessionVerdict
        from .reports import build_report, to_json, to_markdown, write_report

        report = build_report(
            session={
                "id": self.session_id if status is not None else None,
                "status": status,
                "exitstatus": int(session.exitstatus),
                "database": str(settings.db_path),
                "health": None if health is None else health.as_json(),
            },
            summaries=summaries,
            verdict=self.verdict or SessionVerdict(),
            reasons=self.reasons,
        )
        try:
            if settings.report_json is not None:
                write_report(settings.report_json, to_json(report))
            if settings.report_md is not None:
                write_report(settings.report_md, to_markdown(report))
        except OSError as exc:
            self.report_error = f"cannot write the report: {exc}"
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        if github:
            from .github import append_job_summary, error_commands

            self.github_note = append_job_summary(to_markdown(report))
            self.annotations = error_commands(self.verdict or SessionVerdict())

    def _write_html(self, session: pytest.Session, store: Store, path: Path) -> None:
        from .._view.htmlreport import build_html
        from .reports import write_report

        try:
            with store.reading() as conn:
                html = build_html(conn, session=self.session_id, database=store.path.name)
            write_report(path, html)
            self.report_note = f"HTML report: {path}"
        except OSError as exc:
            self.report_error = f"cannot write the HTML report: {exc}"
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
        except Exception as exc:
            # The session is stored; the report is not, and a CI job must not pass without it.
            self.report_error = f"the HTML report could not be built: {type(exc).__name__}: {exc}"
            session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
