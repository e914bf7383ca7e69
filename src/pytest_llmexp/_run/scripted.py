"""``Experiment``: the same recording as the pytest plugin, from a script or a notebook."""

from __future__ import annotations

import contextvars
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

from .._store.records import RunRecord
from .._store.store import Store
from .._util.defaults import (
    DEFAULT_DB,
    DEFAULT_RATE_LIMIT_WAIT,
    check_experiment_name,
    check_num_executions,
)
from ..errors import ExperimentError
from . import endpoint, process
from .outcome import classify_exception
from .process import PROCESS, RateLimits
from .recording import RunContext, activate

__all__ = ["Experiment"]


class Experiment:
    """Run a function ``num_executions`` times, each call one recorded run.

    A ``with`` block runs once, so the body is a function::

        with Experiment("name_generator", num_executions=10) as exp:
            exp.run(generate_and_score)
        print(exp.summary())
    """

    def __init__(
        self,
        name: str,
        num_executions: int = 1,
        max_workers: int | None = None,
        db: str | os.PathLike[str] | None = None,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        rate_limit_wait: float | None = None,
    ) -> None:
        self.name = check_experiment_name(name, "Experiment")
        self.num_executions = check_num_executions(num_executions, f"Experiment({name!r})")
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1
        ):
            raise ExperimentError(
                f"Experiment({name!r}): max_workers must be a positive int or None, "
                f"got {max_workers!r}"
            )
        self.max_workers = max_workers or min(num_executions, 16)
        for option, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ExperimentError(
                    f"Experiment({name!r}): {option} must be a positive int or None, got {value!r}"
                )
        if rate_limit_wait is not None and (
            isinstance(rate_limit_wait, bool)
            or not isinstance(rate_limit_wait, (int, float))
            or not 0 <= rate_limit_wait < float("inf")
        ):
            raise ExperimentError(
                f"Experiment({name!r}): rate_limit_wait must be a number of seconds >= 0, "
                f"got {rate_limit_wait!r}"
            )
        #: Rate limits of its runs' calls, shared by its threads (see ``--llm-rpm``).
        self.rate_limits = RateLimits(
            rpm=rpm,
            tpm=tpm,
            wait=DEFAULT_RATE_LIMIT_WAIT if rate_limit_wait is None else float(rate_limit_wait),
        )
        self.db_path = os.path.abspath(db or os.environ.get("LLMEXP_DB") or DEFAULT_DB)
        self.session_id: str | None = None
        self._store: Store | None = None
        self._next_index = 0
        self._index_lock = threading.Lock()
        self._final_summary: dict[str, Any] | None = None
        self._failed = False

    def __enter__(self) -> Experiment:
        if self._store is not None:
            raise ExperimentError(f"Experiment({self.name!r}) is already running")
        self._store = Store(self.db_path)
        self.session_id = self._store.begin_session(
            kind="experiment",
            argv=list(sys.argv),
            rootdir=os.getcwd(),
            endpoint=endpoint.endpoint_label(),
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        store, self._store = self._store, None
        if store is None or self.session_id is None:
            return
        try:
            # Every run errored: the session ran to its end and measured nothing (exit 1).
            if self._failed:
                status, exitstatus = "complete", 1
            else:
                status, exitstatus = ("complete", 0) if exc_type is None else ("interrupted", 2)
            store.finish_session(self.session_id, status=status, exitstatus=exitstatus)
            self._final_summary = store.summaries(self.session_id).get(self.name)
        finally:
            store.close()

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[RunRecord]:
        """Call ``fn(*args, **kwargs)`` ``num_executions`` times in a thread pool."""
        store, session_id = self._store, self.session_id
        if store is None or session_id is None:
            raise ExperimentError(
                f"Experiment({self.name!r}).run() needs the experiment open: "
                "`with Experiment(...) as exp: exp.run(fn)`"
            )
        if not callable(fn):
            raise ExperimentError(
                f"Experiment({self.name!r}).run() takes a function, got {type(fn).__name__}"
            )
        if PROCESS.settings.capture:
            from .capture import install

            # The function's own openai client calls are recorded in its runs.
            install()
        with self._index_lock:
            first = self._next_index
            self._next_index += self.num_executions

        def one(index: int) -> RunRecord:
            run = RunContext(
                self.name,
                num_executions=self.num_executions,
                execution_index=index,
                worker=threading.current_thread().name,
            )
            with activate(run):
                try:
                    fn(*args, **kwargs)
                except Exception as exc:
                    status, kind, message = classify_exception(exc)
                    if run.infrastructure is not None:
                        status, (kind, message) = "error", run.infrastructure
                    record = run.finish(status, kind, message)
                else:
                    if run.infrastructure is not None:
                        record = run.finish("error", *run.infrastructure)
                    else:
                        record = run.finish("passed")
            store.insert_run(session_id, record)
            return record

        indices = range(first, first + self.num_executions)
        before = PROCESS.settings.rate_limits
        process.update(rate_limits=self.rate_limits)
        try:
            with ThreadPoolExecutor(self.max_workers, thread_name_prefix="llmexp") as pool:
                futures = [pool.submit(contextvars.copy_context().run, one, i) for i in indices]
                records = [f.result() for f in futures]
        finally:
            process.update(rate_limits=before)
        errored = [r for r in records if r.status == "error"]
        if len(errored) == len(records):
            self._failed = True
            first_error = errored[0]
            raise ExperimentError(
                f"Experiment({self.name!r}): all {len(records)} run(s) errored, so nothing was "
                f"measured; the first: {first_error.error_type}: {first_error.error_message} "
                f"(llmexp run {first_error.run_id[:12]} shows it)"
            )
        return records

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per metric: n, mean, std, min, max over the runs that were evaluated."""
        if self._store is not None and self.session_id is not None:
            summary = self._store.summaries(self.session_id).get(self.name)
        else:
            summary = self._final_summary
        if summary is None:
            return {}
        runs = summary["runs"]
        if sum(runs.values()) and not runs.get("passed") and not runs.get("failed"):
            # No run was evaluated: an empty summary would read as "no metric".
            errors = ", ".join(f"{n} {kind}" for kind, n in summary["errors"].items())
            raise ExperimentError(
                f"Experiment({self.name!r}) measured nothing: no run was evaluated "
                f"({errors or 'every run was skipped'}); `llmexp show {self.name}` lists why"
            )
        return {
            name: {k: v for k, v in stats.items() if k != "kind"}
            for name, stats in summary["metrics"].items()
        }

    def runs(self) -> dict[str, int]:
        """How many runs ended in each status."""
        if self._store is not None and self.session_id is not None:
            summary = self._store.summaries(self.session_id).get(self.name)
        else:
            summary = self._final_summary
        return dict(summary["runs"]) if summary else {}
