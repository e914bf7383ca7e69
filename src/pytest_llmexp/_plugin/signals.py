"""SIGTERM (a CI job cancelled) ends the session as Ctrl-C does: finished runs stored, the
session ``interrupted``, exit status 2."""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["SigtermAsInterrupt"]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")


class SigtermAsInterrupt:
    """Turns SIGTERM into ``KeyboardInterrupt`` while installed, unless someone else
    already handles SIGTERM."""

    def __init__(self) -> None:
        self._installed = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return  # the user's own handler wins
        signal.signal(signal.SIGTERM, _interrupt)
        self._installed = True

    def uninstall(self) -> None:
        if self._installed and signal.getsignal(signal.SIGTERM) is _interrupt:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._installed = False
