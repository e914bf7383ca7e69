"""The names that cross the plugin's modules and processes, in one leaf module.

As pytest-xdist keeps its hook names in ``newhooks.py``: the ``config.stash`` and
``item.stash`` keys the plugin's objects are kept under, the keys of xdist's ``workerinput``
(controller to worker) and ``workeroutput`` (worker to controller), and the attributes runs
ride on in test reports. It imports nothing of the package at run time, so every module of
the plugin may import it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .collect import ExperimentItem
    from .localmodel import LocalModelPlugin
    from .relay import RunRelay, RunState
    from .settings import Settings
    from .writer import Writer

__all__ = [
    "BOTS_MODULE",
    "ENV_KEY",
    "ITEM_KEY",
    "LOCAL_KEY",
    "RELAY_KEY",
    "REPORT_PREFIX",
    "RUN_KEY",
    "SETTINGS_KEY",
    "STARTED_KEY",
    "WHO_KEY",
    "WORKERINPUT_DIST",
    "WORKERINPUT_ENDPOINT",
    "WORKERINPUT_SESSION",
    "WORKEROUTPUT_CALLS",
    "WORKEROUTPUT_CALLS_SPOOLED",
    "WORKEROUTPUT_SPOOL_LINES",
    "WORKEROUTPUT_USAGE_ERROR",
    "WRITER_KEY",
]

# config.stash
SETTINGS_KEY: pytest.StashKey[Settings] = pytest.StashKey()
RELAY_KEY: pytest.StashKey[RunRelay] = pytest.StashKey()
WRITER_KEY: pytest.StashKey[Writer] = pytest.StashKey()
LOCAL_KEY: pytest.StashKey[LocalModelPlugin] = pytest.StashKey()
#: This process's session id and worker name ("main" without xdist).
WHO_KEY = pytest.StashKey[tuple[str, str]]()
#: When the session started, as stored.
STARTED_KEY = pytest.StashKey[str]()
#: The environment variables the session set for the code's own clients, as they were.
ENV_KEY = pytest.StashKey[dict[str, "str | None"]]()

# item.stash
#: What ``@experiment`` made of an item: experiment, execution, case.
ITEM_KEY: pytest.StashKey[ExperimentItem] = pytest.StashKey()
#: The run of an item while it runs.
RUN_KEY: pytest.StashKey[RunState] = pytest.StashKey()

# xdist: controller -> worker
#: The session id, which names the workers' spool files.
WORKERINPUT_SESSION = "llmexp_session"
#: The controller's --dist mode (a worker's own option says "no").
WORKERINPUT_DIST = "llmexp_dist"
#: The embedded model's endpoint, started on the controller.
WORKERINPUT_ENDPOINT = "llmexp_endpoint"

# xdist: worker -> controller
WORKEROUTPUT_USAGE_ERROR = "llmexp_usage_error"
WORKEROUTPUT_CALLS = "llmexp_calls"
WORKEROUTPUT_CALLS_SPOOLED = "llmexp_calls_spooled"
WORKEROUTPUT_SPOOL_LINES = "llmexp_spool_lines"

#: Test reports carry ``llmexp_start``, ``llmexp_run``, ``llmexp_calls`` and
#: ``llmexp_spool_error`` (JSON text), the prefix and a spool line's kind.
REPORT_PREFIX = "llmexp_"

#: The bots' module: once a test imports it, calls can happen outside experiments.
BOTS_MODULE = "pytest_llmexp._run.bots"
