"""The time as the database stores it: ISO 8601 in UTC, with microseconds."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["utcnow"]

#: The last second formatted by :func:`utcnow`, and its text up to the fraction.
_second: tuple[int, str] = (-1, "")


def utcnow() -> str:
    """The current time as an ISO 8601 string in UTC, as
    ``datetime.now(UTC).isoformat(timespec="microseconds")`` gives it, at a third of the cost
    (the date and time of day are formatted once per second)."""
    global _second
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    second = _second
    if second[0] != seconds:
        text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        second = _second = (seconds, text)
    return f"{second[1]}{micros:06d}+00:00"
