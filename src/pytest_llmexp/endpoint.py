"""Which OpenAI-compatible endpoint bots talk to, and the shared ``openai`` client.

This module does not import ``openai`` at import time: the plugin configures it in every
pytest session, and the client is built on the first call only.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from .errors import BotError

if TYPE_CHECKING:
    import openai

__all__ = [
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "ClientSettings",
    "configure",
    "display_url",
    "get_client",
    "redact",
    "resolved_base_url",
    "settings",
]

DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 2
# Endpoints such as llama.cpp, Ollama or vLLM take any key; the openai client insists on one.
_PLACEHOLDER_KEY = "no-key-needed"
_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]+")
_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s]+@")


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Endpoint settings; ``None`` base_url means ``OPENAI_BASE_URL`` or OpenAI's own."""

    base_url: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    model: str | None = None


_settings = ClientSettings()
_clients: dict[tuple[str | None, str, float, int], openai.OpenAI] = {}
_lock = threading.Lock()


def configure(new: ClientSettings) -> None:
    """Set the endpoint settings for this process (the plugin does this per session)."""
    global _settings
    _settings = new


def settings() -> ClientSettings:
    """The endpoint settings in force."""
    return _settings


def resolved_base_url(current: ClientSettings | None = None) -> str | None:
    """The base URL bots use: the setting, else ``OPENAI_BASE_URL``, else ``None`` (OpenAI)."""
    current = current or _settings
    return current.base_url or os.environ.get("OPENAI_BASE_URL") or None


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
        "no API key and no endpoint: set OPENAI_API_KEY to call OpenAI, or point "
        "--llm-base-url (or OPENAI_BASE_URL) at an OpenAI-compatible server that needs none"
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
                max_retries=current.max_retries,
            )
            _clients[cache_key] = client
        return client


def redact(text: str) -> str:
    """``text`` with the API key, anything key-shaped and URL credentials masked."""
    key = os.environ.get("OPENAI_API_KEY")
    if key and len(key) >= 8:
        text = text.replace(key, key[:3] + "***")
    text = _URL_CREDENTIALS.sub(r"\1***@", text)
    return _KEY_PATTERN.sub(r"\1***", text)
