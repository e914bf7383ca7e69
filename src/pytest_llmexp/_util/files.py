"""Files the project writes beside the database: readable by their owner only, like it."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_private"]


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (creating its directory), readable by the owner only: a
    report holds prompts, replies and metric values, as the database does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        if hasattr(os, "fchmod"):  # a file that existed keeps its mode otherwise
            os.fchmod(fh.fileno(), 0o600)
        fh.write(text)
