"""One chat completion request, with explicit retries that are counted and recorded.

The ``openai`` client is built with ``max_retries=0``: this module retries instead, so every
call's retries are known exactly, failed calls included. A retry waits the endpoint's
``Retry-After`` (or ``retry-after-ms``) when it gives one, else an exponential backoff with
jitter.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from .endpoint import redact

if TYPE_CHECKING:
    import openai

__all__ = [
    "BACKOFF_BASE",
    "MAX_RETRY_AFTER",
    "CallFailed",
    "Reply",
    "request_completion",
    "retry_after",
]

RETRYABLE_STATUS = frozenset({408, 409, 429})
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
#: The longest ``Retry-After`` waited for. An endpoint that asks for longer (a spent daily
#: quota, say) fails the call at once rather than stalling the session.
MAX_RETRY_AFTER = 60.0
_MALFORMED = (ValueError, TypeError, AttributeError, KeyError, IndexError)


@dataclass(frozen=True, slots=True)
class Reply:
    """What a successful request returned."""

    content: str | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    retries: int


class CallFailed(Exception):
    """A request that failed for good; the message is redacted."""

    def __init__(
        self, error_type: str, message: str, *, retries: int, status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.retries = retries
        self.status_code = status_code


def request_completion(client: openai.OpenAI, max_retries: int, **request: Any) -> Reply:
    """Send a chat completion request, retrying what is worth retrying up to ``max_retries``."""
    import openai

    retries = 0
    while True:
        try:
            raw = client.chat.completions.with_raw_response.create(**request)
        except openai.OpenAIError as exc:
            wait, why_not = _retry_wait(exc, retries)
            status = getattr(exc, "status_code", None)
            if wait is None or retries >= max_retries:
                message = redact(f"{type(exc).__name__}: {exc}") + (why_not or "")
                raise CallFailed(
                    type(exc).__name__, message, retries=retries, status_code=status
                ) from None
            time.sleep(wait)
            retries += 1
            continue
        try:
            return _reply(raw.parse(), retries)
        except _MALFORMED as exc:
            body = redact(raw.http_response.text[:200])
            raise CallFailed(
                "MalformedResponse",
                f"MalformedResponse: the endpoint's reply is not a chat completion "
                f"({type(exc).__name__}: {redact(str(exc))[:200]}); body starts {body!r}",
                retries=retries,
                status_code=raw.http_response.status_code,
            ) from None


def _reply(completion: Any, retries: int) -> Reply:
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise ValueError("it has no choices")
    choice = choices[0]
    content = choice.message.content
    if content is not None and not isinstance(content, str):
        raise TypeError(f"message content is {type(content).__name__}, not a string")
    usage = completion.usage
    return Reply(
        content=content,
        model=completion.model,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        finish_reason=choice.finish_reason,
        retries=retries,
    )


def _retry_wait(exc: Exception, retries: int) -> tuple[float | None, str | None]:
    """How long to wait before retrying ``exc`` (``None``: do not retry), and why not."""
    import openai

    backoff = min(BACKOFF_CAP, BACKOFF_BASE * 2**retries) * (1 - 0.25 * random.random())
    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return backoff, None
    if not isinstance(exc, openai.APIStatusError):
        return None, None
    headers = exc.response.headers
    should = headers.get("x-should-retry")
    if should == "false" or (
        should != "true" and exc.status_code not in RETRYABLE_STATUS and exc.status_code < 500
    ):
        return None, None
    asked = retry_after(headers)
    if asked is None:
        return backoff, None
    if asked > MAX_RETRY_AFTER:
        return None, (
            f" (the endpoint asked to retry after {asked:g} s, longer than the "
            f"{MAX_RETRY_AFTER:g} s this waits; not retried)"
        )
    # At least what the endpoint asked for, plus a little jitter so workers spread out.
    return asked * (1 + 0.1 * random.random()), None


def retry_after(headers: Any) -> float | None:
    """Seconds asked for by ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
