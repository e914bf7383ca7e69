"""On every process that runs tests: one run per experiment item, attached to its report.

The finished run is appended to this process's spool file, then rides on the
teardown report as JSON (``report.llmexp_run``); pytest-xdist ships reports to the
controller, where the writer stores them. Calls made outside any run ride the same way
(``report.llmexp_calls``).
"""

from __future__ import annotations

import sys
from collections.abc import Generator
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import pytest

from .._run.recording import drain_orphans_json
from .keys import (
    ITEM_KEY,
    REPORT_PREFIX,
    RUN_KEY,
    SETTINGS_KEY,
    WORKEROUTPUT_CALLS,
    WORKEROUTPUT_CALLS_SPOOLED,
    WORKEROUTPUT_SPOOL_LINES,
    WORKEROUTPUT_USAGE_ERROR,
)

if TYPE_CHECKING:
    from .._run.recording import RunContext
    from .._run.spend import SpendGuard
    from .._store.records import RunRecord
    from .._store.spool import Decisions, Kind, Spool
    from .inflight import InFlight

__all__ = ["NOT_STARTED", "RunRelay", "RunState", "run_section"]

_SEVERITY = {"passed": 0, "skipped": 1, "failed": 2, "error": 3}
_MAX_MESSAGE = 4000
_AUTH = (401, 403)
#: The skip kind of an execution not started because its result could be kept nowhere.
NOT_STARTED = "StorageFull"


class RunState:
    """A run while its item goes through setup, call and teardown."""

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.status = "passed"
        self.error_type: str | None = None
        self.error_message: str | None = None
        #: Why the plugin itself skipped the run (``SpendLimit``).
        self.skip_kind: str | None = None
        #: Its body started before its item, with an earlier execution (runs in flight).
        self.ahead = False

    def note(self, report: pytest.TestReport, call: pytest.CallInfo[None]) -> None:
        """Fold one phase's outcome into the run's status; the most severe one wins."""
        if report.passed:
            return
        from .._run.outcome import classify_exception
        from .._util.redact import redact

        excinfo = call.excinfo
        if report.skipped:
            if hasattr(report, "wasxfail"):
                status, kind, message = "failed", "xfail", str(report.wasxfail)
            else:
                longrepr = report.longrepr
                reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
                status, kind, message = "skipped", "Skipped", reason
        elif excinfo is None:
            status, kind, message = "failed", "Failed", str(report.longrepr)
        elif report.when == "call":
            status, kind, message = classify_exception(excinfo.value)
        else:
            # A fixture that fails to set up or tear down: the run could not be evaluated.
            status, kind, message = "error", excinfo.typename, str(excinfo.value)
        if status == "skipped" and self.skip_kind is not None:
            kind = self.skip_kind
        if _SEVERITY[status] > _SEVERITY[self.status]:
            self.status, self.error_type = status, kind
            self.error_message = redact(message)[:_MAX_MESSAGE]


def _infrastructure(report: pytest.TestReport, state: RunState) -> None:
    """A run that met a failure of ours its code may have caught (a replay miss of a
    captured call) is an error, and its test fails with that failure's message."""
    from .._util.redact import redact

    assert state.run.infrastructure is not None
    kind, message = state.run.infrastructure
    state.status, state.error_type = "error", kind
    state.error_message = redact(message)[:_MAX_MESSAGE]
    if report.passed:
        report.outcome = "failed"
        report.longrepr = f"pytest-llmexp: {kind}: {message}"


#: What the failure report shows of each call: lines and characters of a message.
_SHOWN_LINES = 4
_SHOWN_CHARS = 400


def _shown(text: str) -> str:
    """``text`` cut to a few lines, indented under its label."""
    lines = text.strip().splitlines() or [""]
    shown = "\n      ".join(lines[:_SHOWN_LINES])
    cut = len(lines) > _SHOWN_LINES or len(shown) > _SHOWN_CHARS
    return shown[:_SHOWN_CHARS] + (" [...]" if cut else "")


def run_section(run: RunContext) -> str:
    """The failure report's "LLM run" section: the run id, and each call's last user message
    and reply, cut to a few lines, with the command that shows them whole."""
    from .._util.redact import redact

    lines = [f"run {run.run_id} (all of it: llmexp run {run.run_id[:12]})"]
    calls = run.calls()
    if not calls:
        lines.append("no LLM call was made")
    for number, call in enumerate(calls, 1):
        users = [m for m in call.messages if m.get("role") == "user"]
        user = str(users[-1].get("content") or "") if users else ""
        last = call.messages[-1] if call.messages else {}
        if call.error is not None:
            reply = f"(failed) {call.error}"
        elif last.get("role") == "assistant":
            reply = str(last.get("content") or "")
        else:
            reply = "(no reply)"
        how = f"finish_reason {call.finish_reason}" if call.finish_reason else "no finish_reason"
        if call.replayed_from:
            how += ", replayed"
        lines += [
            f"call {number}: {call.model_name}, {how}",
            f"  user: {redact(_shown(user))}",
            f"  reply: {redact(_shown(reply))}",
        ]
    return "\n".join(lines)


def _new_state(item: pytest.Item, worker: str) -> RunState:
    """The run of an experiment item's current attempt."""
    from .._run.recording import RunContext

    info = item.stash[ITEM_KEY]
    run = RunContext(
        info.name,
        num_executions=info.num_executions,
        execution_index=info.execution_index,
        worker=worker,
        nodeid=item.nodeid,
        case_id=info.case_id,
        gates=info.gates,
        declared_executions=info.declared_executions,
        variant=info.variant,
        variants=info.variants,
        overrides=info.overrides,
        adaptive=_adaptive(item) if info.adaptive else None,
        # pytest-rerunfailures counts the attempts of a test on the item.
        attempt=max(int(getattr(item, "execution_count", 1) or 1), 1),
    )
    return RunState(run)


def _adaptive(item: pytest.Item) -> dict[str, Any]:
    """What an adaptive execution's run carries for the controller's decisions."""
    return {
        "cases": item.stash[ITEM_KEY].cases,
        "confidence": item.config.stash[SETTINGS_KEY].adaptive_confidence,
    }


def _mask(report: pytest.TestReport) -> None:
    """Mask keys in what pytest prints and writes (JUnit XML) of a failed or skipped
    execution, as they are masked in the database: the user's own exception may hold one.
    The report keeps pytest's own form unless something had to be masked."""
    from .._util.redact import redact

    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        path, line, reason = longrepr
        report.longrepr = (path, line, redact(reason))
    elif longrepr is not None and not report.passed:
        text = str(longrepr)
        masked = redact(text)
        if masked != text:
            report.longrepr = masked
    report.sections = [(title, redact(content)) for title, content in report.sections]


class RunRelay:
    """Creates the run of each experiment item, spools it, and hands it over on the report."""

    def __init__(self, worker: str, spool: Spool, spend: SpendGuard | None) -> None:
        self.worker = worker
        self.spool = spool
        self.spend = spend
        #: A usage error found during collection on an xdist worker, for the controller.
        self.usage_error: str | None = None
        self._stopping = False
        #: Executions in flight (``--llm-concurrency``, async bodies), when any can be.
        self.inflight: InFlight | None = None
        #: Prompt keys and bot hashes whose definitions a spooled run of this process carried.
        self._defined: set[tuple[str, str, str] | str] = set()
        #: The cases of adaptive experiments decided so far (when this process runs any).
        self.decisions: Decisions | None = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, Any, Any]:
        info = item.stash.get(ITEM_KEY, None)
        if info is None:
            return (yield)
        from .._run.recording import activate

        ahead = None if self.inflight is None else self.inflight.state_for(item)
        state = item.stash[RUN_KEY] = ahead or _new_state(item, self.worker)
        # One run at a time: threads the test starts record into it too. With runs in
        # flight, each run is found through its own context only.
        alone = self.inflight is None or self.inflight.concurrency(item) == 1
        try:
            with activate(state.run, process_wide=alone):
                return (yield)
        finally:
            del item.stash[RUN_KEY]

    def state_of(self, item: pytest.Item) -> RunState:
        """The run of the item going through its protocol now."""
        return item.stash[RUN_KEY]

    def new_state(self, item: pytest.Item) -> RunState:
        """A run for an execution whose body starts ahead of its item."""
        state = _new_state(item, self.worker)
        state.ahead = True
        return state

    def refuses_new_run(self) -> str | None:
        """Why no run may start now (the spool cannot be written, a spend cap), or ``None``."""
        if self.spool.failure is not None:
            return self.spool.failure
        return None if self.spend is None else self.spend.reached()

    def decided(self, item: pytest.Item) -> str | None:
        """Why an adaptive execution need not run (its case is decided), or ``None``."""
        if self.decisions is None:
            return None
        info = item.stash[ITEM_KEY]
        if not info.adaptive:
            return None
        return self.decisions.stopped(info.name, info.variant, info.case_id)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        state = item.stash.get(RUN_KEY, None)
        if state is None:
            return
        if state.run.finished:
            # A rerun plugin (pytest-rerunfailures) runs the test again: a new attempt is a
            # new run, with its own calls and metrics.
            from .._run.recording import switch

            state = item.stash[RUN_KEY] = _new_state(item, self.worker)
            switch(state.run)
        if state.ahead:
            return  # its body started with an earlier execution's call: it is going
        if self.spool.failure is not None:
            # Its result could be kept nowhere: it is not started (and not recorded).
            state.skip_kind = NOT_STARTED
            pytest.skip(
                f"pytest-llmexp: not started: the spool cannot be written "
                f"({self.spool.failure}); a run's result would be kept nowhere"
            )
        reason = self.decided(item)
        if reason is not None:
            from .._verdict.stats import DECIDED

            state.skip_kind = DECIDED
            pytest.skip(reason)
        if self.spend is None:
            return
        reason = self.spend.reached()
        if reason is not None:
            state.skip_kind = "SpendLimit"
            pytest.skip(reason)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        state = item.stash.get(RUN_KEY, None)
        if state is not None:
            if report.when == "call" and state.run.infrastructure is not None:
                _infrastructure(report, state)
            state.note(report, call)
            if not report.passed or report.sections:
                _mask(report)
            if report.when == "setup" and self.worker != "main":
                # Lets the xdist controller record a run whose worker dies mid-run.
                report.llmexp_start = state.run.start_json()  # type: ignore[attr-defined]
            elif report.when == "call":
                self._stop_on_auth_error(item, call)
                if report.failed:
                    report.sections.append(("LLM run", run_section(state.run)))
            elif report.when == "teardown":
                if state.skip_kind == NOT_STARTED:
                    report.llmexp_not_started = True  # type: ignore[attr-defined]
                else:
                    junit = bool(getattr(item.config.option, "xmlpath", None))
                    self._hand_over_run(report, state, junit)
                if self.spend is not None:
                    self.spend.add_run(state.run)
        if report.when == "teardown":
            orphans = drain_orphans_json()
            if orphans is not None:
                self._hand_over(report, "calls", orphans)
        return report

    def _hand_over_run(self, report: pytest.TestReport, state: RunState, junit: bool) -> None:
        from .._util.redact import redact

        # Each prompt and bot definition travels once per process, with the first run that
        # uses it; later runs name it. Most runs repeat the same few, and the definitions
        # were 40% of each run's JSON, spooled, sent and parsed again for every run.
        record = state.run.finish(
            state.status, state.error_type, state.error_message, defined=self._defined
        )
        if junit:
            self._properties(report, record)
        if self._hand_over(report, "run", redact(record.model_dump_json())):
            # Only a spooled definition may be named later: the spool alone must be enough
            # to store the runs of a process that dies.
            self._defined.update(p.key for p in record.prompts)
            self._defined.update(b.hash for b in record.bots)

    @staticmethod
    def _properties(report: pytest.TestReport, record: RunRecord) -> None:
        """Shown by --junitxml as <property> elements of the test case, for CI dashboards;
        only then attached, as pytest keeps every report until the session ends."""
        properties: list[tuple[str, object]] = [("llmexp.run_id", record.run_id)]
        if record.case_id is not None:
            properties.append(("llmexp.case", record.case_id))
        if record.variant is not None:
            properties.append(("llmexp.variant", record.variant))
        properties += [
            (f"llmexp.metric.{m.name}", m.value if m.kind == "float" else int(m.value))
            for m in record.metrics
        ]
        report.user_properties = [*report.user_properties, *properties]

    def _hand_over(self, report: pytest.TestReport, kind: Kind, payload: str) -> bool:
        """Spool the record, then attach it to the report for the writer; whether it was
        spooled."""
        spooled = True
        try:
            self.spool.append(kind, payload)
        except OSError as exc:
            report.llmexp_spool_error = f"{self.spool.path}: {exc}"  # type: ignore[attr-defined]
            spooled = False
        setattr(report, f"{REPORT_PREFIX}{kind}", payload)
        return spooled

    def _stop_on_auth_error(self, item: pytest.Item, call: pytest.CallInfo[None]) -> None:
        if call.excinfo is None or self._stopping:
            return
        from ..errors import LLMCallError

        exc = call.excinfo.value
        client = sys.modules.get("openai")
        # A bot's call, or the code's own openai client (a captured call), refused.
        if not isinstance(exc, LLMCallError) and not (
            client is not None and isinstance(exc, client.APIStatusError)
        ):
            return
        if getattr(exc, "status_code", None) not in _AUTH:
            return
        from .._run.endpoint import endpoint_label

        self._stopping = True
        # pytest's own fail-fast path (as -x): this process stops, and under xdist the
        # controller stops the other workers too.
        item.session.shouldfail = (
            f"pytest-llmexp: {endpoint_label()} refused the credentials "
            f"({exc.status_code} {getattr(exc, 'error_type', type(exc).__name__)}); stopping "
            "the session instead of failing "
            "every run: check OPENAI_API_KEY and --llm-base-url"
        )

    def finish(self, session: pytest.Session) -> None:
        """Called from the plugin's ``pytest_sessionfinish``, registered or not."""
        if self.inflight is not None:
            self.inflight.close()
        # On an xdist worker, calls made after the last test (session fixture teardown)
        # travel in workeroutput, which the controller reads when the worker goes down.
        workeroutput = getattr(session.config, "workeroutput", None)
        if workeroutput is not None:
            if self.usage_error is not None:
                workeroutput[WORKEROUTPUT_USAGE_ERROR] = self.usage_error
            orphans = drain_orphans_json()
            if orphans is not None:
                with suppress(OSError):  # it still travels in workeroutput
                    self.spool.append("calls", orphans)
                    workeroutput[WORKEROUTPUT_CALLS_SPOOLED] = True
                workeroutput[WORKEROUTPUT_CALLS] = orphans
            workeroutput[WORKEROUTPUT_SPOOL_LINES] = self.spool.lines
        self.spool.close()
