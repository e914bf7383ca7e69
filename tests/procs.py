"""Process checks for the server lifecycle tests (they read /proc, so Linux only)."""

from __future__ import annotations

from pathlib import Path

import pytest

linux_only = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="process checks read /proc (Linux)"
)


def alive(pid: int, argv_contains: bytes = b"") -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone) whose command line
    contains ``argv_contains``; the check guards against a reused pid."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z" and argv_contains in argv
