"""Ids of sessions, runs and calls: random 32-hex-digit strings, cheap to make."""

from __future__ import annotations

import os
import random

__all__ = ["new_id"]

_ids = random.Random(os.urandom(32))


# A forked child draws a new seed, so that it cannot repeat its parent's ids.
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_id() -> str:
    """A new random id of 32 hex digits, as ``uuid.uuid4().hex``, from a generator of this
    module's own seeded from the OS once per process (``uuid4`` reads the OS's random source,
    a system call, for every id; the ``random`` module's generator may be seeded by the
    user's code). Ids are random from their first digit, so short prefixes tell them apart."""
    return f"{_ids.getrandbits(128):032x}"
