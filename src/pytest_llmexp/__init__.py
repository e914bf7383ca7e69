"""pytest-llmexp: LLM experiments as pytest tests, every run recorded in message_log.db.

The public names are imported on first use, so that loading the pytest plugin (which
imports this package) stays cheap in sessions that run no experiment.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
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
)

if TYPE_CHECKING:
    from .bots import SimpleBot, StructuredBot
    from .collect import experiment
    from .experiment import Experiment
    from .llama import LocalServer
    from .metrics import metric
    from .prompts import Message, prompt
    from .recording import RunContext

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
    "experiment",
    "metric",
    "prompt",
]

_WHERE = {
    "SimpleBot": "bots",
    "StructuredBot": "bots",
    "experiment": "collect",
    "Experiment": "experiment",
    "LocalServer": "llama",
    "metric": "metrics",
    "Message": "prompts",
    "prompt": "prompts",
    "RunContext": "recording",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_llmexp' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
