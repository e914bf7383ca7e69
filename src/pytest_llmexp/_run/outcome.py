"""How a run ends: the status, error type and message an exception that ended it gives.

Stdlib only, and known without importing ``openai``: the relay and ``Experiment`` ask it
only when a run raised.
"""

from __future__ import annotations

import re
import sys

from ..errors import LLMExpError

__all__ = ["classify_exception"]


def classify_exception(exc: BaseException) -> tuple[str, str, str]:
    """The run status, error type and message for an exception that ended a run.

    An assertion (or any exception from the user's own code) is a ``failed`` run: the
    experiment gave a verdict. An exception of ours, including wrapped LLM client errors,
    is an ``error``: the run could not be evaluated.
    """
    if isinstance(exc, LLMExpError):
        return "error", exc.error_type, str(exc)
    message = str(exc)
    if _is_client_error(exc):
        # The code's own openai client failed (a timeout, a 429, refused credentials): as
        # with a bot's call, the run could not be evaluated.
        return "error", type(exc).__name__, message
    if type(exc).__name__ == "Failed" and _TIMED_OUT.match(message):
        # pytest-timeout (signal method) ends the test with pytest.fail(): the run did not
        # finish, which says nothing of its quality.
        return "error", "Timeout", message
    return "failed", type(exc).__name__, message


def _is_client_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``openai`` client error (``openai.APIError`` and its kin),
    known without importing ``openai``."""
    module = sys.modules.get("openai")
    return module is not None and isinstance(exc, module.APIError)


#: How pytest-timeout words the failure it raises: "Timeout (>2.0s) from pytest-timeout."
_TIMED_OUT = re.compile(r"Timeout \(>[0-9.]+s\) from pytest-timeout")
