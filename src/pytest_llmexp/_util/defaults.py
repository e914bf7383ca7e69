"""Checks and defaults shared by the pytest plugin and ``Experiment`` (stdlib only)."""

from __future__ import annotations

from typing import Literal

from ..errors import ExperimentError

__all__ = [
    "CACHE_MODES",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_DB",
    "DEFAULT_ERROR_BUDGET",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_RATE_LIMIT_WAIT",
    "DEFAULT_STORAGE_LIMIT",
    "DEFAULT_TIMEOUT",
    "MAX_CONCURRENCY",
    "MAX_EXECUTIONS",
    "CacheMode",
    "check_concurrency",
    "check_experiment_name",
    "check_num_executions",
]

# The defaults live here, in a module the plugin imports anyway, so that validating the
# options of a session without experiments imports nothing else.
#: The share of runs that may error (infrastructure) before the session fails.
DEFAULT_ERROR_BUDGET = 0.1
DEFAULT_DB = "message_log.db"
#: How sure an early verdict of adaptive executions must be (``--llm-adaptive-confidence``).
DEFAULT_CONFIDENCE = 0.95
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 2
#: The longest one call waits out rate limits (429s, 503s with Retry-After), in seconds.
DEFAULT_RATE_LIMIT_WAIT = 300.0
#: The most executions in flight at once in one process: each holds a thread (or a task)
#: and a connection; beyond this, add processes (``-n``).
MAX_CONCURRENCY = 1024
#: The longest message text stored; longer texts are cut and the call flagged ``truncated``.
DEFAULT_STORAGE_LIMIT = 100_000
#: ``--llm-cache`` modes.
CacheMode = Literal["off", "record", "replay", "auto"]
CACHE_MODES: tuple[CacheMode, ...] = ("off", "record", "replay", "auto")


#: The most executions of one experiment (per case): each is a pytest item, and a million
#: items take gigabytes before the first runs.
MAX_EXECUTIONS = 100_000


def check_num_executions(value: object, where: str) -> int:
    """``value`` if it is a positive int, else an error naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExperimentError(
            f"{where}: num_executions must be a positive int, got {value!r}; e.g. num_executions=10"
        )
    if value > MAX_EXECUTIONS:
        raise ExperimentError(
            f"{where}: num_executions={value} is more than {MAX_EXECUTIONS:,}, the most one "
            "experiment runs (each execution is a pytest item held in memory); split the work "
            "into cases or sessions"
        )
    return value


def check_concurrency(value: object, where: str) -> int:
    """``value`` if it is a usable number of executions in flight, else an error."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise ExperimentError(
            f"{where}: concurrency must be a whole number from 1 to {MAX_CONCURRENCY}, got "
            f"{value!r}; e.g. concurrency=16"
        )
    return value


def check_experiment_name(value: object, where: str) -> str:
    """``value`` if it is a usable experiment name, else an error naming ``where``."""
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ExperimentError(
            f"{where}: name must be a non-empty string without surrounding spaces, got {value!r}"
        )
    return value
