"""Exceptions raised by pytest-llmexp.

Hierarchy::

    LLMExpError                  base of everything raised here; a run that raises one is `error`
    ├── PromptError              a prompt template that does not render (missing variable, ...)
    ├── MetricError              a metric that broke the scalar contract or was called twice
    ├── GateError                a gate that does not parse
    ├── BotError                 a bot used wrongly (no model, bad messages)
    ├── LLMCallError             the endpoint failed (timeout, HTTP error, bad body)
    │   ├── StructuredOutputError  the reply never validated against the pydantic model
    │   └── TruncatedReply         the reply was cut at max_tokens (finish_reason "length")
    ├── ReplayMiss               a call the cache mode must replay has no recorded reply
    ├── ExperimentError          misuse of an experiment or the current run
    ├── LocalModelError          the embedded local model is missing or its server did not start
    └── StoreError               message_log.db cannot be opened, migrated or written

    AssertionError
    └── MetricBoundFailure       a run's metric value is outside its @metric(min=, max=):
                                 the run is `failed` (a verdict), not `error`
"""

from __future__ import annotations

__all__ = [
    "BotError",
    "ExperimentError",
    "GateError",
    "LLMCallError",
    "LLMExpError",
    "LocalModelError",
    "MetricBoundFailure",
    "MetricError",
    "PromptError",
    "ReplayMiss",
    "StoreError",
    "StructuredOutputError",
    "TruncatedReply",
]


class LLMExpError(Exception):
    """Base class of every error pytest-llmexp raises."""

    #: Stored as ``experiment_runs.error_type``; subclasses may refine it per instance.
    @property
    def error_type(self) -> str:
        return type(self).__name__


class PromptError(LLMExpError):
    """A prompt template could not be rendered."""

    def __init__(self, message: str, *, prompt_name: str) -> None:
        super().__init__(message)
        self.prompt_name = prompt_name


class MetricError(LLMExpError):
    """A metric function broke the metric contract."""

    def __init__(self, message: str, *, metric_name: str) -> None:
        super().__init__(message)
        self.metric_name = metric_name


class GateError(LLMExpError):
    """A gate (``gates=``, ``@metric(gate=...)``, ``--llm-gate``, ``llm_gates``) does not parse."""


class MetricBoundFailure(AssertionError):
    """A metric's value in one run is outside the bounds its ``@metric`` declares."""

    def __init__(self, message: str, *, metric_name: str, value: float) -> None:
        super().__init__(message)
        self.metric_name = metric_name
        self.value = value


class BotError(LLMExpError):
    """A bot was configured or called wrongly."""


class LLMCallError(LLMExpError):
    """The LLM endpoint failed; ``cause_type`` names the underlying client error."""

    def __init__(
        self, message: str, *, cause_type: str, retries: int = 0, status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.cause_type = cause_type
        self.retries = retries
        #: The HTTP status of the endpoint's error response, if there was one.
        self.status_code = status_code

    @property
    def error_type(self) -> str:
        return self.cause_type


class StructuredOutputError(LLMCallError):
    """The reply did not validate against the bot's pydantic model after every re-ask."""

    def __init__(self, message: str, *, raw_reply: str, attempts: int) -> None:
        super().__init__(message, cause_type="StructuredOutputError")
        self.raw_reply = raw_reply
        self.attempts = attempts


class TruncatedReply(LLMCallError):
    """The model stopped at ``max_tokens`` (``finish_reason`` ``length``): the reply is cut,
    so a structured reply is not re-asked, it would be cut again."""

    def __init__(self, message: str, *, raw_reply: str, max_tokens: int | None) -> None:
        super().__init__(message, cause_type="TruncatedReply")
        self.raw_reply = raw_reply
        #: The bound the reply hit, when the request set one.
        self.max_tokens = max_tokens


class ReplayMiss(LLMExpError):
    """A call that must be served from the store (``--llm-cache replay``, or a generation
    under ``--llm-replay-from``) has no recorded reply; the message says what differed from
    the nearest recorded call."""


class ExperimentError(LLMExpError):
    """An experiment or the current run was used wrongly."""


class LocalModelError(LLMExpError):
    """The embedded local model is not installed, or its llama.cpp server did not come up."""


class StoreError(LLMExpError):
    """message_log.db could not be opened, migrated or written."""
