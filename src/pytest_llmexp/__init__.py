"""pytest-llmexp: LLM experiments as pytest tests, every run recorded in message_log.db.

The public names are imported on first use, so that loading the pytest plugin (which
imports this package) stays cheap in sessions that run no experiment.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any


def _skip_assertion_rewriting() -> None:
    """Take this package off pytest's list of modules whose asserts it rewrites on import.

    pytest rewrites every module of a plugin's distribution, and caches the result beside
    the source. Where it cannot write that cache (``PYTHONDONTWRITEBYTECODE``, a read-only
    install) it parses and compiles each of them again in every session, instead of loading
    the bytecode that was compiled at install time. Our modules have no assert worth a rich
    message. The list is private to pytest: if it is not where it is looked for, pytest
    rewrites as before.
    """
    for finder in sys.meta_path:
        marked = getattr(finder, "_must_rewrite", None)
        if not isinstance(marked, set):
            continue
        ours = {name for name in marked if name == __name__ or name.startswith(f"{__name__}.")}
        if ours:
            marked -= ours
            cache = getattr(finder, "_marked_for_rewrite_cache", None)
            if isinstance(cache, dict):
                cache.clear()


# First, so that the modules this package imports load as bytecode.
_skip_assertion_rewriting()

from .errors import (  # noqa: E402
    BotError,
    ExperimentError,
    GateError,
    LLMCallError,
    LLMExpError,
    LocalModelError,
    MetricBoundFailure,
    MetricError,
    PromptError,
    ReplayMiss,
    StoreError,
    StructuredOutputError,
    TruncatedReply,
)

if TYPE_CHECKING:
    from . import endpoint
    from ._local.server import LocalServer
    from ._plugin.collect import experiment
    from ._run.bots import SimpleBot, StructuredBot
    from ._run.metrics import metric
    from ._run.prompts import Message, prompt
    from ._run.recording import RunContext
    from ._run.scripted import Experiment

__all__ = [
    "BotError",
    "Experiment",
    "ExperimentError",
    "GateError",
    "LLMCallError",
    "LLMExpError",
    "LocalModelError",
    "LocalServer",
    "Message",
    "MetricBoundFailure",
    "MetricError",
    "PromptError",
    "ReplayMiss",
    "RunContext",
    "SimpleBot",
    "StoreError",
    "StructuredBot",
    "StructuredOutputError",
    "TruncatedReply",
    "endpoint",
    "experiment",
    "metric",
    "prompt",
]

#: Where each lazily loaded public name lives. None of them names a module of this
#: package: importing a submodule binds its name on the package, which would shadow the
#: public name of the same spelling (``experiment`` the decorator, not a module).
_WHERE = {
    "SimpleBot": "._run.bots",
    "StructuredBot": "._run.bots",
    "experiment": "._plugin.collect",
    "Experiment": "._run.scripted",
    "LocalServer": "._local.server",
    "metric": "._run.metrics",
    "Message": "._run.prompts",
    "prompt": "._run.prompts",
    "RunContext": "._run.recording",
}


def __getattr__(name: str) -> Any:
    if name == "endpoint":
        return importlib.import_module(".endpoint", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_llmexp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
