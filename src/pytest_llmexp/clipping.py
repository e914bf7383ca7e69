"""The storage cap on a message's text (``--llm-max-stored-chars``)."""

from __future__ import annotations

from typing import Any

from .validation import DEFAULT_STORAGE_LIMIT

__all__ = ["clip_messages", "set_storage_limit"]


_storage_limit = DEFAULT_STORAGE_LIMIT


def set_storage_limit(chars: int) -> None:
    """Cap the stored length of each message's text (``--llm-max-stored-chars``)."""
    global _storage_limit
    _storage_limit = chars


def clip_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    """``messages`` with each text cut at the storage limit, and whether any was cut."""
    clipped: list[dict[str, Any]] = []
    cut = False
    for message in messages:
        content = message.get("content")
        if isinstance(content, str) and len(content) > _storage_limit:
            message = {**message, "content": content[:_storage_limit]}
            cut = True
        clipped.append(message)
    return clipped, cut
