"""The current run: what prompts, bots, calls and metrics it used.

A run is held in a ``ContextVar`` so that concurrent runs in one process (``Experiment`` runs
them in a thread pool) are kept apart. Under pytest, one test runs at a time per process, so
the plugin also makes the run *process-wide*: threads the test starts itself (which do not
inherit context variables) still record into it.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .._util.clock import utcnow
from .._util.ids import new_id
from ..errors import ExperimentError, MetricError
from .process import PROCESS

if TYPE_CHECKING:
    # Imported lazily below: the plugin imports this module in every pytest session.
    from .._store.records import (
        BotRecord,
        CallRecord,
        MetricRecord,
        MetricSpec,
        PromptRecord,
        Recording,
        RunRecord,
    )

__all__ = [
    "RunContext",
    "abandon",
    "activate",
    "clip_messages",
    "current_run",
    "drain_orphans",
    "drain_orphans_json",
    "follow_threads",
    "in_metric",
    "measuring",
    "record_call",
    "record_call_in",
    "record_prompt",
    "stop_following_threads",
    "withdraw_call",
]


class _Collected:
    """Prompts, bots and calls gathered under a lock, deduplicated by identity."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._prompts: dict[tuple[str, str, str], PromptRecord] = {}
        self._bots: dict[str, BotRecord] = {}
        self._calls: list[CallRecord] = []

    def add_prompt(self, prompt: PromptRecord) -> None:
        with self._lock:
            self._prompts.setdefault(prompt.key, prompt)

    def _add(self, bot: BotRecord, prompts: list[PromptRecord], call: CallRecord | None) -> None:
        self._bots.setdefault(bot.hash, bot)
        for prompt in prompts:
            self._prompts.setdefault(prompt.key, prompt)
        if call is not None:
            self._calls.append(call)

    def withdraw(self, call_id: str) -> bool:
        """Take back a call (a failed attempt its client then retried); whether it was here."""
        with self._lock:
            for index, call in enumerate(self._calls):
                if call.id == call_id:
                    del self._calls[index]
                    return True
            return False


class RunContext(_Collected):
    """One execution of an experiment while it runs."""

    def __init__(
        self,
        experiment: str,
        *,
        num_executions: int,
        execution_index: int,
        worker: str,
        nodeid: str | None = None,
        case_id: str | None = None,
        gates: tuple[str, ...] = (),
        declared_executions: int | None = None,
        attempt: int = 1,
        variant: str | None = None,
        variants: tuple[str, ...] = (),
        overrides: dict[str, Any] | None = None,
        adaptive: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.run_id = new_id()
        self.experiment = experiment
        self.num_executions = num_executions
        self.execution_index = execution_index
        self.worker = worker
        self.nodeid = nodeid
        #: The parametrize case this run repeats (``None``: the experiment has one case).
        self.case_id = case_id
        #: The variant this run belongs to (``model=gpt-4o``), and its experiment's variants.
        self.variant = variant
        self.variants = list(variants)
        #: What the variant changes in every bot that is not a judge (``model``,
        #: ``temperature``), for a variant of the command line (``--llm-model A --llm-model B``).
        self.overrides: dict[str, Any] = dict(overrides or {})
        self.gates = list(gates)
        #: The executions the code declares, when the session runs another number.
        self.declared_executions = declared_executions
        #: Which attempt of its execution this is (a rerun plugin runs a failed one again).
        self.attempt = attempt
        #: Its experiment's executions stop once settled: how many cases a round has, and
        #: how sure a decision must be (``None``: not adaptive).
        self.adaptive = adaptive
        self.started_at = utcnow()
        self._t0 = time.perf_counter()
        self._metrics: dict[str, MetricRecord] = {}
        self._metadata: dict[str, Any] = {}
        self._metric_specs: dict[str, MetricSpec] = {}
        self._occurrences: dict[str, int] = {}
        #: The stored run whose generations this run replays (``--llm-replay-from``).
        self.replayed_from: str | None = None
        #: Frozen into its record: a call that comes now is not part of it.
        self.finished = False
        #: When the body ended, if it ran ahead of its report (``--llm-concurrency``).
        self._t_end: float | None = None
        #: A failure of ours the run met that its code may have caught (a replay miss of a
        #: captured client call): the run could not be evaluated, whatever its code did.
        self.infrastructure: tuple[str, str] | None = None

    def infrastructure_error(self, error_type: str, message: str) -> None:
        """Note a failure that makes the run an ``error`` even if its code went on (the
        first one is kept)."""
        with self._lock:
            if self.infrastructure is None:
                self.infrastructure = (error_type, message)

    def body_ended(self) -> None:
        """Note that the test body ended: the run's duration stops here, not at its report."""
        self._t_end = time.perf_counter()

    def add_call(
        self, bot: BotRecord, prompts: list[PromptRecord], call: CallRecord | None
    ) -> bool:
        """Add a call unless the run has finished; whether it was added."""
        with self._lock:
            if self.finished:
                return False
            self._add(bot, prompts, call)
            return True

    def occurrence(self, request: str) -> int:
        """How many identical requests (same ``request`` digest) this run got a reply to."""
        with self._lock:
            return self._occurrences.get(request, 0)

    def answered(self, request: str) -> None:
        """Count a reply to ``request``: a failed call (then retried) does not count."""
        with self._lock:
            self._occurrences[request] = self._occurrences.get(request, 0) + 1

    def add_metric(self, metric: MetricRecord, spec: MetricSpec | None = None) -> None:
        __tracebackhide__ = True  # the user's line, not ours (nor our locals)
        with self._lock:
            if metric.name in self._metrics:
                raise MetricError(
                    f"metric {metric.name!r} was called twice in run {self.execution_index} of "
                    f"experiment {self.experiment!r} (values {self._metrics[metric.name].value!r} "
                    f"and {metric.value!r}); a metric gives one value per run: compute it once, "
                    "or define a second metric with another name",
                    metric_name=metric.name,
                )
            self._metrics[metric.name] = metric
            if spec is not None and spec != type(spec)():
                self._metric_specs[metric.name] = spec

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the metadata attached so far."""
        with self._lock:
            return dict(self._metadata)

    def set_metadata(self, key: str, value: Any) -> None:
        """Attach ``key: value`` to the run; ``value`` must be JSON-serializable."""
        __tracebackhide__ = True
        if not isinstance(key, str) or not key:
            raise ExperimentError(f"run metadata keys must be non-empty strings, got {key!r}")
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ExperimentError(
                f"run metadata {key!r} must be JSON-serializable (str, int, float, bool, None, "
                f"lists and dicts of those), got {type(value).__name__}: {exc}"
            ) from None
        with self._lock:
            self._metadata[key] = json.loads(text)

    def call_count(self) -> int:
        """How many LLM calls the run has made so far."""
        with self._lock:
            return len(self._calls)

    def calls(self, *, live: bool = False) -> list[CallRecord]:
        """The run's LLM calls so far; ``live``: only those that reached the endpoint, not
        those served from the cache."""
        with self._lock:
            return [c for c in self._calls if not (live and c.replayed_from)]

    def start_json(self) -> str:
        """What the writer needs to record this run if its process dies before it ends."""
        return json.dumps(
            {
                "run_id": self.run_id,
                "experiment": self.experiment,
                "num_executions": self.num_executions,
                "execution_index": self.execution_index,
                "worker": self.worker,
                "nodeid": self.nodeid,
                "started_at": self.started_at,
                "case_id": self.case_id,
                "variant": self.variant,
            }
        )

    def finish(
        self,
        status: str,
        error_type: str | None = None,
        error_message: str | None = None,
        *,
        defined: set[Any] | None = None,
    ) -> RunRecord:
        """Freeze the run into the record that is sent to the writer. Prompts (by
        ``(module, function_name, hash)``) and bots (by hash) in ``defined`` are named in
        ``prompt_refs`` and ``bot_refs`` instead of being carried."""
        from .._store.records import RunRecord
        from .._verdict.cost import run_costs

        defined = defined or set()
        with self._lock:
            self.finished = True
            cost, judge_cost = run_costs(PROCESS.settings.prices, self._calls)
            return RunRecord(
                run_id=self.run_id,
                experiment=self.experiment,
                num_executions=self.num_executions,
                execution_index=self.execution_index,
                nodeid=self.nodeid,
                worker=self.worker,
                started_at=self.started_at,
                duration_s=(self._t_end or time.perf_counter()) - self._t0,
                status=status,  # type: ignore[arg-type]
                error_type=error_type,
                error_message=error_message,
                prompts=[p for k, p in self._prompts.items() if k not in defined],
                bots=[b for k, b in self._bots.items() if k not in defined],
                prompt_refs=[k for k in self._prompts if k in defined],
                bot_refs=[k for k in self._bots if k in defined],
                calls=list(self._calls),
                metrics=list(self._metrics.values()),
                metadata=dict(self._metadata),
                case_id=self.case_id,
                variant=self.variant,
                variants=self.variants,
                cost=cost,
                judge_cost=judge_cost,
                gates=self.gates,
                declared_executions=self.declared_executions,
                attempt=self.attempt,
                adaptive=self.adaptive,
                metric_specs=dict(self._metric_specs),
                replayed_from=self.replayed_from,
            )


class _OrphanLog(_Collected):
    """Calls made outside any run; they are logged to ``message_log`` with no run."""

    def __init__(self) -> None:
        super().__init__()
        self._late: list[str] = []

    def add_call(
        self,
        bot: BotRecord,
        prompts: list[PromptRecord],
        call: CallRecord | None,
        late: str | None = None,
    ) -> None:
        """Add a call; ``late`` names the test whose run it came after."""
        with self._lock:
            self._add(bot, prompts, call)
            if late is not None and call is not None:
                self._late.append(late)

    def drain(self) -> Recording | None:
        with self._lock:
            if not self._calls:
                return None
            from .._store.records import Recording

            recording = Recording(
                prompts=list(self._prompts.values()),
                bots=list(self._bots.values()),
                calls=list(self._calls),
                late=list(self._late),
            )
            self._prompts.clear()
            self._bots.clear()
            self._calls.clear()
            self._late.clear()
            return recording


_current: ContextVar[RunContext | None] = ContextVar("pytest_llmexp_run", default=None)
_measuring: ContextVar[bool] = ContextVar("pytest_llmexp_measuring", default=False)
_process_run: RunContext | None = None
_orphans = _OrphanLog()


def _write_orphans(recording: Recording) -> None:
    """Write calls made outside any run straight to the default store (outside pytest)."""
    from .._store.store import default_store

    default_store().insert_recording(recording)


def abandon(run: RunContext) -> None:
    """Log the calls of a run that pytest will never report (the session stopped while it was
    in flight) outside any run, with its test; calls it makes later go there too."""
    from .._store.records import Recording

    record = run.finish("skipped")
    recording = Recording(prompts=record.prompts, bots=record.bots, calls=record.calls)
    for call in recording.calls:
        _orphans.add_call(
            next((b for b in recording.bots if b.hash == call.bot_hash), recording.bots[0]),
            recording.prompts,
            call,
            _label(run),
        )


def drain_orphans() -> Recording | None:
    """Take the buffered calls made outside any run, if there are any."""
    return _orphans.drain()


def drain_orphans_json() -> str | None:
    """Calls made outside any run since the last drain, as JSON, if there were any."""
    from .._util.redact import redact

    recording = _orphans.drain()
    return None if recording is None else redact(recording.model_dump_json())


def current_run() -> RunContext | None:
    """The run the calling code belongs to, or ``None`` outside any run."""
    return _current.get() or _process_run


def switch(run: RunContext) -> None:
    """Make ``run`` current in place of the one :func:`activate` made current (a rerun
    plugin's next attempt of the same test); ``activate`` still restores what was before."""
    global _process_run
    _current.set(run)
    if _process_run is not None:
        _process_run = run


#: Threads started during a process-wide run and still alive after it, with its test.
_outlived: weakref.WeakKeyDictionary[threading.Thread, str] = weakref.WeakKeyDictionary()


def _label(run: RunContext) -> str:
    return run.nodeid or run.experiment


@contextmanager
def activate(run: RunContext, *, process_wide: bool = False) -> Iterator[RunContext]:
    """Make ``run`` the current run for this context (and, if asked, this process)."""
    global _process_run
    token = _current.set(run)
    before = set(threading.enumerate()) if process_wide else set()
    if process_wide:
        _process_run = run
    try:
        yield run
    finally:
        _current.reset(token)
        if process_wide:
            _process_run = None
            for thread in threading.enumerate():
                if thread not in before:
                    _outlived[thread] = _label(run)


#: Thread.start and ThreadPoolExecutor.submit as they were, while :func:`follow_threads` is on.
_unfollowed: tuple[Any, Any] | None = None


def follow_threads() -> None:
    """From now on, a thread started inside a run, and a task submitted to a thread pool
    inside a run, run in that run's context, so their calls are the run's.

    With several runs in flight in one process no run can be process-wide, and a new thread
    starts with an empty context (before Python 3.14's ``thread_inherit_context``): this
    gives threads and pool tasks the context of the code that started them, as
    ``asyncio.to_thread`` does. A thread started outside any run is left as it is."""
    global _unfollowed
    import contextvars
    import functools
    from concurrent.futures import ThreadPoolExecutor

    with _follow_lock:
        if _unfollowed is not None:
            return
        start, submit = threading.Thread.start, ThreadPoolExecutor.submit

        def follow_start(self: threading.Thread) -> None:
            if _current.get() is not None:
                self.run = functools.partial(contextvars.copy_context().run, self.run)  # type: ignore[method-assign]
            start(self)

        def follow_submit(self: Any, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            if _current.get() is not None:
                return submit(self, contextvars.copy_context().run, fn, *args, **kwargs)
            return submit(self, fn, *args, **kwargs)

        threading.Thread.start = follow_start  # type: ignore[method-assign]
        ThreadPoolExecutor.submit = follow_submit  # type: ignore[method-assign]
        _unfollowed = (start, submit)


def stop_following_threads() -> None:
    """Put ``Thread.start`` and ``ThreadPoolExecutor.submit`` back."""
    global _unfollowed
    from concurrent.futures import ThreadPoolExecutor

    with _follow_lock:
        if _unfollowed is not None:
            threading.Thread.start, ThreadPoolExecutor.submit = _unfollowed  # type: ignore[method-assign]
            _unfollowed = None


_follow_lock = threading.Lock()


class measuring:
    """``with measuring():`` marks the code inside as a metric function: its LLM calls are a
    judge's. (A class, not a generator: it is entered at every metric call.)"""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _measuring.set(True)

    def __exit__(self, *exc_info: object) -> None:
        _measuring.reset(self._token)


def in_metric() -> bool:
    """Whether the calling code runs inside a ``@metric`` function."""
    return _measuring.get()


def record_prompt(prompt: PromptRecord) -> None:
    """Note that the current run rendered ``prompt`` (outside a run it is kept with calls)."""
    run = current_run()
    if run is not None:
        run.add_prompt(prompt)


def record_call(bot: BotRecord, prompts: list[PromptRecord], call: CallRecord | None) -> None:
    """Add an LLM call, with the bot and prompts it used, to the current run or the log.

    A call that comes after its run ended (from a thread the test started and did not wait
    for) is logged outside any run, with the test it came from, for a warning.
    """
    record_call_in(current_run(), bot, prompts, call)


def record_call_in(
    run: RunContext | None, bot: BotRecord, prompts: list[PromptRecord], call: CallRecord | None
) -> None:
    """Add an LLM call to ``run`` (the run current when the call was made), or to the log of
    calls outside runs when there is none or it has ended."""
    if run is not None and run.add_call(bot, prompts, call):
        return
    late = _label(run) if run is not None else _outlived.get(threading.current_thread())
    _orphans.add_call(bot, prompts, call, late)
    if not PROCESS.settings.buffer_orphans:
        recording = _orphans.drain()
        if recording is not None:
            _write_orphans(recording)


def withdraw_call(run: RunContext | None, call_id: str) -> None:
    """Take back a call recorded in ``run`` (or outside runs), if it is still held."""
    if run is None or not run.withdraw(call_id):
        _orphans.withdraw(call_id)


def clip_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """``messages`` with each text cut at the storage limit, and whether any was cut."""
    limit = PROCESS.settings.storage_limit
    clipped: list[dict[str, Any]] = []
    cut = False
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and len(content) > limit:
            message = {**message, "content": content[:limit]}
            cut = True
        elif isinstance(content, list):
            # Parts (a captured call's text and images): each text and data URL is cut.
            parts = [_clip_part(part, limit) for part in content]
            if any(new is not old for new, old in zip(parts, content, strict=True)):
                message = {**message, "content": parts}
                cut = True
        clipped.append(message)
    return clipped, cut


def _clip_part(part: Any, limit: int) -> Any:
    if not isinstance(part, dict):
        return part
    for field in ("text", "image_url", "file_data"):
        value = part.get(field)
        if isinstance(value, dict) and isinstance(value.get("url"), str):
            if len(value["url"]) > limit:
                return {**part, field: {**value, "url": value["url"][:limit]}}
        elif isinstance(value, str) and len(value) > limit:
            return {**part, field: value[:limit]}
    return part
