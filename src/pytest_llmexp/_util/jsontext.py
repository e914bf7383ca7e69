"""JSON as the database's text columns store it, and canonical JSON with its digests: the
hash of a bot configuration, of a response schema, of a request, and a call's cache key."""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["cache_key", "canonical", "compact_json", "digest", "request_digest"]

#: JSON as the database's text columns store it: no spaces, text as it is. Made once:
#: ``json.dumps`` with options builds a new encoder at every call.
compact_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


#: Made once: ``json.dumps`` with options builds a new encoder at every call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(value: Any) -> str:
    """``value`` as canonical JSON: sorted keys, no spaces."""
    return _CANONICAL.encode(value)


def digest(value: Any) -> str:
    """The SHA-256 of ``value`` as canonical JSON: the hash of a bot configuration, of a
    response schema, of a request."""
    return hashlib.sha256(canonical(value).encode()).hexdigest()


def request_digest(
    model: str, temperature: float | None, messages: list[dict[str, Any]], request: dict[str, Any]
) -> str:
    """The digest of a request and where it was asked, but not how often: ``request`` is its
    stored description (see :func:`plan_call`). Which prompts rendered the messages is kept
    for explaining misses, and is not part of it."""
    keyed = {k: v for k, v in request.items() if k not in ("prompts", "occurrence")}
    return digest({"model": model, "temperature": temperature, "messages": messages, **keyed})


def cache_key(request: str, occurrence: int) -> str:
    """The key of the ``occurrence``-th identical ``request`` (its digest) of a run."""
    return hashlib.sha256(f"{request}:{occurrence}".encode()).hexdigest()
