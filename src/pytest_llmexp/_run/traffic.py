"""Rate limits: one budget of requests and tokens a minute per endpoint for all the processes
of a session, and 429s waited out together instead of turned into errors.

The budget is a small ledger file next to the spool, locked with ``flock`` for each update,
as the spend guard's is. It keeps, per endpoint, the generic cell rate algorithm's
"theoretical arrival time" (GCRA, the leaky bucket as a meter): a request reserves the next
free slot, ``60 / rpm`` seconds after the last one, and sleeps until it, so the processes
are paced evenly without polling and without bursts an endpoint would refuse. Tokens are
reserved the same way (``60 / tpm`` seconds a token), estimated from the request's size and
corrected by the reply's usage. A 429 (or a 503 with ``Retry-After``) writes a pause to the
same ledger: every process of the session holds that endpoint's traffic until it is over.
The number of requests in flight in each process is lowered by half on a rate limit and
raised by one per answer again (additive increase, multiplicative decrease, as TCP does).

Why not pyrate-limiter: its SQLite bucket counts requests in a window and is polled by the
callers that find it full, while a reservation tells each caller exactly how long to sleep;
and the pause after a 429, the tokens corrected after the reply, and the time waited, which
the summary shows, would need a file of our own beside it anyway. Stdlib only.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .process import RateLimits as Limits

__all__ = [
    "Totals",
    "Traffic",
    "estimate_tokens",
    "read_totals",
    "reset_waited",
    "traffic",
    "waited",
]

#: Slots are spaced 1 % wider than the limit asks: requests leave their slot a few
#: milliseconds late or early, and an endpoint that counts them in a sliding window would
#: otherwise see N + 1 now and then, and pause the whole session for it.
_MARGIN = 1.01
#: The most requests in flight per process and endpoint that the gate lets through.
_OPEN = 1 << 20
_local = threading.local()


class Totals(NamedTuple):
    """What rate limits cost the session so far."""

    #: Seconds the calls of all processes spent waiting (paced, paused).
    waited: float = 0.0
    #: Answers that were a rate limit (429, 503 with Retry-After).
    throttled: int = 0


def estimate_tokens(request: dict[str, Any]) -> int:
    """A request's tokens before it is sent: its text at four characters a token, plus the
    longest reply it allows (``max_tokens``), corrected once the reply's usage is known."""
    text = json.dumps(request.get("messages", ""), ensure_ascii=False)
    reply = request.get("max_completion_tokens") or request.get("max_tokens") or 0
    return len(text) // 4 + (reply if isinstance(reply, int) else 0)


def waited() -> float:
    """Seconds the current thread's last call waited on rate limits."""
    return float(getattr(_local, "waited", 0.0))


def reset_waited() -> None:
    _local.waited = 0.0


def _note_wait(seconds: float) -> None:
    _local.waited = waited() + seconds


class _Gate:
    """This process's requests in flight to one endpoint, under a limit that halves on a
    rate limit and grows by one per answer."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.limit = float(_OPEN)
        self.in_flight = 0
        self._cut_at = 0.0

    @contextmanager
    def slot(self) -> Any:
        with self._cond:
            while self.in_flight >= max(1, int(self.limit)):
                self._cond.wait()
            self.in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify()

    def answered(self) -> None:
        if self.limit < _OPEN:
            with self._cond:
                self.limit = min(float(_OPEN), self.limit + 1)
                self._cond.notify_all()

    def limited(self) -> None:
        with self._cond:
            now = time.monotonic()
            if now - self._cut_at < 1.0:
                return  # the answers of one round trip: halved once, as TCP does per window
            self._cut_at = now
            self.limit = max(1.0, min(self.limit, self.in_flight) / 2)


class Traffic:
    """The rate limits of this process's calls, shared with the session's other processes."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._gates: dict[str, _Gate] = {}
        #: The ledger of a process that shares it with no other (a script).
        self._memory: dict[str, Any] = {}

    def gate(self, endpoint: str) -> _Gate:
        with self._lock:
            gate = self._gates.get(endpoint)
            if gate is None:
                gate = self._gates[endpoint] = _Gate()
            return gate

    def _update(self, change: Any) -> Any:
        """Apply ``change(state, now)`` to the ledger under its lock; what it returns."""
        path = self.limits.ledger
        if path is None:
            with self._lock:
                return change(self._memory, time.time())
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX)
            except ImportError:  # pragma: no cover - Windows
                pass
            raw = os.pread(fd, 1 << 20, 0)
            try:
                state = json.loads(raw) if raw else {}
            except ValueError:
                state = {}
            result = change(state, time.time())
            data = json.dumps(state).encode()
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
            return result
        finally:
            os.close(fd)

    def admit(self, endpoint: str, tokens: int) -> float:
        """Reserve this request's slot (and its tokens); the seconds to wait before sending."""
        limits = self.limits
        if limits.rpm is None and limits.tpm is None:
            # No budget: only a pause after a rate limit can hold the request.
            if limits.ledger is None and not self._memory:
                return 0.0
            if limits.ledger is not None and not limits.ledger.exists():
                return 0.0

        def reserve(state: dict[str, Any], now: float) -> float:
            entry = state.setdefault("endpoints", {}).setdefault(endpoint, {})
            start = max(now, float(entry.get("pause", 0.0)))
            if limits.rpm is not None:
                slot = max(start, float(entry.get("r", 0.0)))
                entry["r"] = slot + _MARGIN * 60.0 / limits.rpm
                start = slot
            if limits.tpm is not None:
                # The request may go once the tokens before it are paid for.
                slot = max(start, float(entry.get("t", 0.0)))
                entry["t"] = slot + tokens * 60.0 / limits.tpm
                start = slot
            return start - now

        return float(self._update(reserve))

    def settle(self, endpoint: str, estimated: int, used: int | None) -> None:
        """Correct the tokens reserved for a request by what the reply says it used."""
        if self.limits.tpm is None or used is None:
            return
        tpm = self.limits.tpm

        def correct(state: dict[str, Any], now: float) -> None:
            entry = state.setdefault("endpoints", {}).setdefault(endpoint, {})
            entry["t"] = max(now, float(entry.get("t", now)) + (used - estimated) * 60.0 / tpm)

        self._update(correct)

    def pause(self, endpoint: str, seconds: float) -> float:
        """The endpoint answered with a rate limit: hold its traffic in every process for
        ``seconds`` (or until a pause already set ends); the seconds left to wait."""

        def hold(state: dict[str, Any], now: float) -> float:
            entry = state.setdefault("endpoints", {}).setdefault(endpoint, {})
            until = max(float(entry.get("pause", 0.0)), now + seconds)
            entry["pause"] = until
            state["throttled"] = int(state.get("throttled", 0)) + 1
            return until - now

        return float(self._update(hold))

    def note_wait(self, seconds: float) -> None:
        """Count ``seconds`` spent waiting on rate limits, for the session's summary."""
        _note_wait(seconds)
        if seconds <= 0:
            return

        def add(state: dict[str, Any], now: float) -> None:
            state["waited"] = float(state.get("waited", 0.0)) + seconds

        self._update(add)

    def totals(self) -> Totals:
        """What rate limits cost the session so far (all its processes)."""
        path = self.limits.ledger
        if path is None:
            with self._lock:
                state = self._memory
                return Totals(float(state.get("waited", 0.0)), int(state.get("throttled", 0)))
        if not path.exists():
            return Totals()
        return read_totals(path)


def read_totals(path: Path) -> Totals:
    """The rate-limit totals kept in a session's ledger file."""
    try:
        state = json.loads(path.read_bytes() or b"{}")
    except (OSError, ValueError):
        return Totals()
    return Totals(float(state.get("waited", 0.0)), int(state.get("throttled", 0)))


def traffic() -> Traffic:
    """The process's traffic under its current rate limits, made on first call (and again
    once the endpoint or the limits change: see ``process._Process.install``)."""
    from .process import PROCESS

    with PROCESS.lock:
        current: Traffic | None = PROCESS.traffic
        if current is None:
            current = PROCESS.traffic = Traffic(PROCESS.settings.rate_limits)
        return current
