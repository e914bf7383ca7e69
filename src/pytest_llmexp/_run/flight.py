"""Bodies of runs off the calling thread: sync ones on threads (kept for the next body),
async ones as tasks of one event loop per process; each in its own run's context.

The plugin keeps several executions in flight with it (``--llm-concurrency``); an async test
body runs here at any concurrency, so that no other plugin is needed for it. Stdlib only.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import queue
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .recording import activate

if TYPE_CHECKING:
    from .recording import RunContext

__all__ = ["Runner", "is_async"]


def is_async(function: Callable[..., Any]) -> bool:
    """Whether calling ``function`` makes a coroutine (``async def``)."""
    return inspect.iscoroutinefunction(function)


class Runner:
    """Starts bodies and hands back a future of each one's outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Bodies waiting for a thread, and the threads waiting for a body.
        self._tasks: queue.SimpleQueue[tuple[contextvars.Context, Callable[[], None]] | None]
        self._tasks = queue.SimpleQueue()
        self._idle = 0

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                # A daemon: an interrupted session does not wait for the bodies still going.
                threading.Thread(target=loop.run_forever, name="llmexp-loop", daemon=True).start()
                self._loop = loop
            return self._loop

    def submit(
        self, function: Callable[..., Any], kwargs: dict[str, Any], run: RunContext
    ) -> Future[Any]:
        """Start ``function(**kwargs)`` as the body of ``run``."""
        if is_async(function):
            return asyncio.run_coroutine_threadsafe(
                _in_run(function(**kwargs), run), self._event_loop()
            )
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        context = contextvars.copy_context()

        def body() -> None:
            try:
                with activate(run):
                    result = function(**kwargs)
            except BaseException as exc:  # handed over whole, as pytest would have seen it
                future.set_exception(exc)
            else:
                future.set_result(result)

        with self._lock:
            if self._idle:
                self._idle -= 1
            else:
                # A daemon: an interrupted session does not wait for the bodies still going.
                threading.Thread(target=self._work, name="llmexp-run", daemon=True).start()
        self._tasks.put((context, body))
        return future

    def _work(self) -> None:
        """A thread that runs bodies one after the other, kept for the next one."""
        while True:
            task = self._tasks.get()
            if task is None:
                return
            context, body = task
            context.run(body)
            with self._lock:
                self._idle += 1

    def close(self) -> None:
        """Stop the event loop (its tasks still pending are dropped with it) and the idle
        threads."""
        with self._lock:
            loop, self._loop = self._loop, None
            threads, self._idle = self._idle, 0
        for _ in range(threads):
            self._tasks.put(None)
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)


async def _in_run(coroutine: Coroutine[Any, Any, Any], run: RunContext) -> Any:
    # A task runs in a copy of the context: the run is current for this body alone.
    with activate(run):
        return await coroutine
