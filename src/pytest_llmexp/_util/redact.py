"""What may be printed or stored: API keys, key-shaped text and URL credentials masked."""

from __future__ import annotations

import functools
import os
import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["display_url", "redact"]

_KEY_PATTERN = re.compile(r"\b(sk-[A-Za-z0-9_\-]{6})[A-Za-z0-9_\-]+")


_URL_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s]+@")


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


def redact(text: str) -> str:
    """``text`` with the API key, anything key-shaped and URL credentials masked."""
    key = os.environ.get("OPENAI_API_KEY")
    if key and len(key) >= 8:
        text = text.replace(key, key[:3] + "***")
    # The substring tests spare the patterns' scan of texts that cannot match (most texts).
    if "://" in text and "@" in text:
        text = _URL_CREDENTIALS.sub(r"\1***@", text)
    return _KEY_PATTERN.sub(r"\1***", text) if "sk-" in text else text
