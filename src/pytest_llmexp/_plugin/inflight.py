"""Executions in flight: the bodies of the next executions of an experiment run ahead, K at a
time in each process, while pytest still reports every execution as its own item.

pytest runs one item at a time, setup, call and teardown, and its reports come in that
order. So the items keep their order, and only the test bodies overlap: at the call of an
execution, the bodies of the executions that follow it (of the same test and case, the
ones this process will run next) are started too, up to K running at once; each later
item's call then takes its own body's outcome. A body that runs ahead uses the fixture
values of the execution whose call started it, which is sound only for fixtures wider than
function scope: pytest makes those once for all the executions anyway. A function-scoped
fixture (``tmp_path``, ``monkeypatch``, an autouse one of a conftest) gets a value per
execution at K = 1 and cannot at K > 1, so an experiment that uses one runs its executions
one at a time (``--llm-concurrency``), or is refused (its own ``concurrency=``), naming it.

Under pytest-xdist a worker knows only its next item, so the controller hands out the
executions in flights of 4 K (:func:`make_flight_scheduling`): a worker that gets the first
execution of a flight gets the rest of it, in order, and may run ahead within it.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import threading
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from .collect import EXEC_FIXTURE, case_id, execution_index
from .keys import ITEM_KEY, SETTINGS_KEY, WORKERINPUT_DIST

if TYPE_CHECKING:
    from .._run.flight import Runner
    from .relay import RunRelay, RunState

__all__ = ["FLIGHT_DIST_MODES", "InFlight", "flight_key", "make_flight_scheduling"]

#: Fixtures made per execution by the plugin itself: a body running ahead gets its own.
_OWN = frozenset({EXEC_FIXTURE, "llm_run"})
_WHOLE = 1 << 62
#: A flight is this many times K executions: while a worker reports the first ones, the next
#: ones run, and only a flight's last K wait on each other.
FLIGHT_FACTOR = 4
#: xdist modes that keep a flight's executions on one worker, in order (``load`` with
#: :func:`make_flight_scheduling`; the others hand out whole modules, or everything).
FLIGHT_DIST_MODES = ("no", "load", "loadscope", "loadfile", "each")


def flight_key(nodeid: str, size: int) -> str:
    """The flight of an execution's node id (executions of one test and case, ``size`` at a
    time), or the node id itself for any other test."""
    index = execution_index(nodeid)
    if index is None:
        return nodeid
    return f"{nodeid.split('[', 1)[0]}[{case_id(nodeid) or ''}]#{index // size}"


class _Ahead(NamedTuple):
    state: RunState
    future: concurrent.futures.Future[Any]


class InFlight:
    """Starts the bodies of upcoming executions; each item's call takes its body's outcome."""

    def __init__(self, relay: RunRelay, config: pytest.Config) -> None:
        from .._run.flight import Runner
        from .._run.recording import follow_threads

        # Runs in flight are not process-wide: threads their bodies start follow them.
        follow_threads()
        self.relay = relay
        self.settings = config.stash[SETTINGS_KEY]
        workerinput = getattr(config, "workerinput", None)
        self.dist = "no" if workerinput is None else str(workerinput.get(WORKERINPUT_DIST, "load"))
        self.runner: Runner = Runner()
        self._ahead: dict[str, _Ahead] = {}
        self._order: dict[str, int] = {}
        self._items: list[pytest.Item] = []
        #: Function-scoped fixtures set up for the item in setup now, by name.
        self._function_fixtures: dict[str, set[str]] = {}
        self._said: set[str] = set()
        #: Tests (node ids without parameters) that run one at a time for a fixture they use.
        self._alone: set[str] = set()
        #: The group (flight, or case) being run ahead, and the index of its next candidate.
        self._group = ""
        self._next = 0
        #: Bodies started here and not ended; bodies ended so far.
        self._running = 0
        self._ends = 0
        #: Notified whenever a body started ahead ends.
        self._ended = threading.Condition()

    # -- what may run ahead ------------------------------------------------------------

    def concurrency(self, item: pytest.Item) -> int:
        """The executions of ``item``'s experiment that may be in flight at once here."""
        info = item.stash.get(ITEM_KEY, None)
        if info is None:
            return 1
        k = self.settings.concurrency or info.concurrency or 1
        if k > 1 and (item.nodeid.split("[", 1)[0] in self._alone or _claimed(item)):
            return 1
        if k > 1 and self.dist not in FLIGHT_DIST_MODES:
            self._say(
                item,
                f"{info.name}: executions run one at a time under pytest-xdist's --dist "
                f"{self.dist}, which may move a test to another worker once it is queued; "
                f"use --dist load (the default of -n), loadscope, loadfile or each",
            )
            return 1
        if k > 1 and self.dist == "load" and self.settings.concurrency is None:
            self._say(
                item,
                f"{info.name}: concurrency={k} needs --llm-concurrency (or ini llm_concurrency) "
                "under pytest-xdist, so that the controller hands executions to workers in "
                "flights; its executions run one at a time",
            )
            return 1
        return k

    def _say(self, item: pytest.Item, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            item.warn(pytest.PytestWarning(f"pytest-llmexp: {message}"))

    def _next_candidate(self, item: pytest.Item, k: int) -> pytest.Item | None:
        """The next execution after ``item`` here, of the same test and case (and flight),
        whose body has not started: the one to start next, if any."""
        if not self._order:
            self._items = list(item.session.items)
            self._order = {it.nodeid: n for n, it in enumerate(self._items)}
        at = self._order.get(item.nodeid)
        if at is None:
            return None
        # Under --dist load a worker is sure only of the rest of the flight it was handed;
        # otherwise, of the executions of the same case that come next.
        size = FLIGHT_FACTOR * k if self.dist == "load" else _WHOLE
        group = flight_key(item.nodeid, size)
        if self._group != group or self._next < at + 1:
            self._group, self._next = group, at + 1
        while self._next < len(self._items):
            candidate = self._items[self._next]
            if flight_key(candidate.nodeid, size) != group:
                return None
            if candidate.nodeid not in self._ahead:
                return candidate
            self._next += 1
        return None

    # -- hooks -------------------------------------------------------------------------

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, Any, Any]:
        if fixturedef.scope == "function":
            names = self._function_fixtures.get(request.node.nodeid)
            if names is not None:
                names.add(fixturedef.argname)
        return (yield)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if ITEM_KEY in item.stash:
            self._function_fixtures[item.nodeid] = set()

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        item = pyfuncitem
        info = item.stash.get(ITEM_KEY, None)
        if info is None:
            return None
        __tracebackhide__ = True
        from .._run.flight import is_async

        if _claimed(item):
            return None  # pytest-asyncio or anyio runs it, on its own loop, one at a time
        function = item.obj
        asynchronous = is_async(function)
        k = self.concurrency(item)
        ahead = self._ahead.pop(item.nodeid, None)
        if ahead is None and k > 1:
            k = self._check_fixtures(item, k, info.concurrency is not None)
        if ahead is None and k == 1:
            if not asynchronous:
                return None  # pytest calls it, as it always did
            run = self.relay.state_of(item).run
            return _outcome(self.runner.submit(function, _arguments(item), run))
        if ahead is None:
            ahead = self._start(item, item)
        self._top_up(item, k)
        while not ahead.future.done():
            with self._ended:
                # Woken when any body ends, to start the next one in its place.
                self._ended.wait_for(_changed(self, self._ends, ahead.future))
            self._top_up(item, k)
        return _outcome(ahead.future)

    # -- the window --------------------------------------------------------------------

    def _check_fixtures(self, item: pytest.Item, k: int, declared: bool) -> int:
        params = getattr(getattr(item, "callspec", None), "params", {})
        own = self._function_fixtures.get(item.nodeid, set()) - _OWN - set(params)
        arguments = set(inspect.signature(item.obj).parameters)  # type: ignore[attr-defined]
        if "request" in arguments:
            own.add("request")
        if not own:
            return k
        info = item.stash[ITEM_KEY]
        names = ", ".join(repr(n) for n in sorted(own))
        why = (
            f"it uses the function-scoped fixture(s) {names}, which give each execution its own "
            f"value, and executions in flight would share one"
        )
        if declared and self.settings.concurrency is None:
            from ..errors import ExperimentError

            raise ExperimentError(
                f"@experiment(concurrency={info.concurrency}) on {item.name.split('[')[0]}: "
                f"{why}; make the fixture(s) module- or session-scoped, or drop concurrency="
            )
        self._say(item, f"{info.name}: executions run one at a time: {why}")
        self._alone.add(item.nodeid.split("[", 1)[0])
        return 1

    def _start(self, item: pytest.Item, template: pytest.Item) -> _Ahead:
        """Start ``item``'s body with the fixture values of ``template`` (set up now)."""
        state = self.relay.state_of(item) if item is template else self.relay.new_state(item)
        kwargs = _arguments(template)
        if EXEC_FIXTURE in kwargs:
            kwargs[EXEC_FIXTURE] = item.stash[ITEM_KEY].execution_index
        if "llm_run" in kwargs:
            kwargs["llm_run"] = state.run
        function = item.obj  # type: ignore[attr-defined]
        with self._ended:
            self._running += 1
        future = self.runner.submit(function, kwargs, state.run)
        future.add_done_callback(lambda _: self._body_ended(state))
        ahead = _Ahead(state, future)
        if item is not template:
            self._ahead[item.nodeid] = ahead
        return ahead

    def _top_up(self, item: pytest.Item, k: int) -> None:
        # An adaptive experiment's decisions come with its reports: its bodies run at most K
        # ahead of them, so that a decided case stops within K executions.
        adaptive = item.stash[ITEM_KEY].adaptive
        while self._running < k and not (adaptive and len(self._ahead) >= k):
            other = self._next_candidate(item, k)
            if other is None:
                return
            if self.relay.refuses_new_run() is not None or self.relay.decided(other):
                # The spend guard, the spool, or its case decided: it does not start here
                # (its own setup skips it).
                return
            self._start(other, item)

    def _body_ended(self, state: RunState) -> None:
        state.run.body_ended()
        with self._ended:
            self._running -= 1
            self._ends += 1
            self._ended.notify_all()

    def state_for(self, item: pytest.Item) -> RunState | None:
        """The run of ``item`` if its body was started ahead of it."""
        ahead = self._ahead.get(item.nodeid)
        return None if ahead is None else ahead.state

    def close(self) -> None:
        """The session ends: runs still in flight that pytest will not report (``-x``,
        ``--maxfail``, an interrupt) are not stored as runs; their calls are logged."""
        from .._run.recording import abandon

        # Their calls are bounded by the request timeout: wait that long for them, so that
        # what they cost is stored (a second Ctrl-C ends the wait).
        concurrent.futures.wait(
            [a.future for a in self._ahead.values()], timeout=self.settings.timeout
        )
        for ahead in self._ahead.values():
            abandon(ahead.state.run)
        self._ahead.clear()
        self.runner.close()


def _changed(
    inflight: InFlight, seen: int, future: concurrent.futures.Future[Any]
) -> Callable[[], bool]:
    """Whether a body ended since ``seen`` ends were counted, or ``future`` is done."""
    return lambda: inflight._ends != seen or future.done()


def _claimed(item: pytest.Item) -> bool:
    """Whether pytest-asyncio or anyio runs this test (its mark is on it; pytest-asyncio's
    auto mode marks every async test), on an event loop of its own: one at a time."""
    return any(item.get_closest_marker(name) is not None for name in ("asyncio", "anyio"))


def _arguments(item: pytest.Item) -> dict[str, Any]:
    """The test function's arguments, from the fixture values pytest set up for ``item``."""
    funcargs: dict[str, Any] = item.funcargs  # type: ignore[attr-defined]
    names = inspect.signature(item.obj).parameters  # type: ignore[attr-defined]
    return {name: funcargs[name] for name in names if name in funcargs}


def _outcome(future: concurrent.futures.Future[Any]) -> bool:
    __tracebackhide__ = True
    future.result()  # the body's own exception, raised again here for pytest to report
    return True


def make_flight_scheduling(config: pytest.Config, log: Any, size: int) -> Any:
    """pytest-xdist's load scheduling, with the executions of each experiment case handed
    out ``FLIGHT_FACTOR * size`` at a time (a flight), whole and in order, to one worker."""
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class _FlightScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return flight_key(nodeid, FLIGHT_FACTOR * size)

    return _FlightScheduling(config, log)
