"""This process's settings for runs and calls, in one object set up and torn down together.

Some settings are process-wide, because bots, the cache and the current run are reached
from the user's code, where no pytest config is at hand: which endpoint bots call, how
calls are recorded and replayed, the storage cap on a message's text, and where calls made
outside any run go, and whether the code's own client calls are captured. :func:`setup`
installs them all at once (the plugin does, in
``pytest_configure``) and :func:`teardown` puts the defaults back (``pytest_unconfigure``);
what the process learnt or opened under the old settings (the endpoints that refused
``json_schema``, the open cassette) goes with them. A script gets the defaults.

Stdlib only: the plugin imports this module in every pytest session.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from .._util.defaults import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_RATE_LIMIT_WAIT,
    DEFAULT_STORAGE_LIMIT,
    DEFAULT_TIMEOUT,
    CacheMode,
)

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "PROCESS",
    "CacheSettings",
    "ClientSettings",
    "ProcessSettings",
    "RateLimits",
    "StructuredOutput",
    "setup",
    "teardown",
    "update",
]

#: How ``StructuredBot`` asks for JSON: OpenAI's ``json_schema`` response format, or
#: ``json_object`` with the schema beside it (llama.cpp's server, older Ollama and vLLM).
StructuredOutput = Literal["json_schema", "json_object"]


class ClientSettings(NamedTuple):
    """Endpoint settings; ``None`` base_url means ``OPENAI_BASE_URL`` or OpenAI's own.

    A named tuple, not a dataclass: the plugin imports this module in every session,
    and a frozen, slotted dataclass takes several times as long to define."""

    base_url: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    #: The model every bot calls instead of its own (``--llm-model``).
    model: str | None = None
    #: Recorded instead of the URL, for a server on a port that changes every session.
    label: str | None = None
    #: The sha256 of the model's weights, when known (the embedded local model).
    model_sha256: str | None = None
    #: The structured-output format, when known in advance; else learnt per endpoint.
    structured_output: StructuredOutput | None = None
    #: The ``max_tokens`` of a bot that sets none (the embedded model's bound on a reply).
    max_tokens: int | None = None
    #: Send each call a fresh random ``seed`` (the embedded model's sampler otherwise starts
    #: from the same seed at every load, so sessions would repeat their samples).
    fresh_seed: bool = False
    #: The temperature every bot that is not a judge calls with (``--llm-temperature``).
    temperature: float | None = None
    #: The model judges call (bots called inside a ``@metric``): ``--llm-judge-model``.
    judge_model: str | None = None
    #: The endpoint serves one model whatever a request names (the embedded model): every
    #: bot calls it, judges included, and is recorded with its name.
    single_model: bool = False


class CacheSettings(NamedTuple):
    """How this process treats LLM calls: record, replay, or neither."""

    mode: CacheMode = "off"
    #: The session's cassette (written by the writer before any run starts).
    cassette: Path | None = None
    #: ``--llm-replay-from``: the session (id or prefix) whose generations are replayed.
    replay_of: str | None = None


class RateLimits(NamedTuple):
    """A session's rate limits, and the file its processes share them through (see
    :mod:`.traffic`); with no file, a 429 is still waited out, by this process alone."""

    ledger: Path | None = None
    rpm: int | None = None
    tpm: int | None = None
    #: The longest one call waits out rate limits, in seconds.
    wait: float = DEFAULT_RATE_LIMIT_WAIT


class ProcessSettings(NamedTuple):
    """Everything process-wide, as one value."""

    endpoint: ClientSettings = ClientSettings()
    cache: CacheSettings = CacheSettings()
    #: The longest message text stored (``--llm-max-stored-chars``).
    storage_limit: int = DEFAULT_STORAGE_LIMIT
    #: Calls made outside any run are kept until drained (under pytest they travel to the
    #: session's writer), instead of being written to the default database at once.
    buffer_orphans: bool = False
    rate_limits: RateLimits = RateLimits()
    #: Record the calls the code makes through its own ``openai`` client, where the
    #: transports are wrapped (see :mod:`.capture`); ``--llm-capture off`` turns it off.
    capture: bool = True
    #: US dollars per million tokens, by model (``llm_prices``; see :mod:`.._verdict.cost`).
    prices: Mapping[str, Any] = MappingProxyType({})


class _Closable(Protocol):
    def close(self) -> None: ...


class _Process:
    """The settings in force, and what the process learnt or opened under them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.settings = ProcessSettings()
        #: Endpoints that refused ``json_schema``: StructuredBot asks them with ``json_object``.
        self.json_object_endpoints: set[str | None] = set()
        #: The session's cassette, opened on the first call that looks a reply up.
        self.cassette: _Closable | None = None
        #: What this process knows of rate limits (see :mod:`.traffic`), made on first call.
        self.traffic: Any = None

    def install(self, new: ProcessSettings, *, endpoint: bool = True, cache: bool = True) -> None:
        """Make ``new`` the settings; forget what was learnt of the endpoint (and of its rate
        limits) and close the cassette, unless told that those parts did not change."""
        with self.lock:
            if endpoint or new.rate_limits != self.settings.rate_limits:
                # A pause or a budget learnt of one endpoint is not another's.
                self.traffic = None
            self.settings = new
            if endpoint:
                self.json_object_endpoints.clear()
            if cache and self.cassette is not None:
                self.cassette.close()
                self.cassette = None


#: The one instance: read ``PROCESS.settings``; change it only through the functions below.
PROCESS = _Process()


def setup(new: ProcessSettings) -> None:
    """Install ``new`` as this process's settings, all four at once."""
    PROCESS.install(new)


def teardown() -> None:
    """Put the defaults back, forgetting what was learnt and closing what was opened."""
    PROCESS.install(ProcessSettings())


def update(**changes: Any) -> None:
    """Replace some of the settings (``endpoint=``, ``cache=``, ...), keeping the others."""
    PROCESS.install(
        PROCESS.settings._replace(**changes),
        endpoint="endpoint" in changes,
        cache="cache" in changes,
    )
