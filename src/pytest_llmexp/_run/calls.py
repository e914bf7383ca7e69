"""One chat completion request, with explicit retries that are counted and recorded.

The ``openai`` client is built with ``max_retries=0``: this module retries instead, so every
call's retries are known exactly, failed calls included. A retry waits the endpoint's
``Retry-After`` (or ``retry-after-ms``) when it gives one, else an exponential backoff with
jitter. A rate limit (a 429, or a 503 with ``Retry-After``) is not a retry: it is waited out
by every process of the session (see :mod:`.traffic`), up to ``--llm-rate-limit-wait``.

The request goes through the client's documented ``post`` (its base URL, credentials,
headers, timeout and typed errors) rather than ``chat.completions.create``, and the reply is
read as JSON rather than as the client's response models. ``create`` runs its arguments
through a type-directed transform that leaves chat completion parameters as they are (none
is aliased or reformatted) yet costs about 0.5 ms for a request with a JSON schema: a fifth
of a whole structured call against a local endpoint. The bot needs four fields of the reply,
not the models' construction.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from difflib import get_close_matches
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from .._util.redact import display_url, redact
from ..errors import BotError
from .wire import count_of, text_of

if TYPE_CHECKING:
    import openai

__all__ = [
    "BACKOFF_BASE",
    "MAX_RETRY_AFTER",
    "CallFailed",
    "Reply",
    "backoff",
    "check_arguments",
    "is_own_request",
    "own_request",
    "rate_limit_pause",
    "request_completion",
    "retry_after",
]

RETRYABLE_STATUS = frozenset({408, 409, 429})
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
#: The longest ``Retry-After`` waited for. An endpoint that asks for longer (a spent daily
#: quota, say) fails the call at once rather than stalling the session.
MAX_RETRY_AFTER = 60.0
#: What reading a reply of another shape raises (``json.loads`` and :func:`_reply`).
_MALFORMED = (ValueError, TypeError)
#: The arguments of ``chat.completions.create`` that are request options, not body fields,
#: and the names ``post`` takes them by.
_OPTIONS = {
    "extra_headers": "headers",
    "extra_query": "params",
    "extra_body": "extra_json",
    "timeout": "timeout",
}


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


#: Set while a bot sends its own request: the bot records it, and the capture of the code's
#: own client calls (:mod:`.capture`) lets it pass.
_own: ContextVar[bool] = ContextVar("pytest_llmexp_own_request", default=False)


@contextmanager
def own_request() -> Iterator[None]:
    """Inside, requests are a bot's own, which it records itself."""
    token = _own.set(True)
    try:
        yield
    finally:
        _own.reset(token)


def is_own_request() -> bool:
    """Whether the request being sent is a bot's own."""
    return _own.get()


#: What a bot sets itself: the conversation, the model, the response format, one reply.
_RESERVED = frozenset({"messages", "model", "stream", "response_format", "n"})
_accepted: frozenset[str] | None = None


def _accepted_arguments() -> frozenset[str]:
    """The arguments ``chat.completions.create`` of the installed ``openai`` takes."""
    global _accepted
    if _accepted is None:
        import inspect

        from openai.resources.chat import Completions

        _accepted = frozenset(inspect.signature(Completions.create).parameters) - {"self"}
    return _accepted


def check_arguments(bot: str, arguments: Mapping[str, Any]) -> None:
    """Refuse completion ``arguments`` that ``bot`` sets itself, or that the client's
    ``chat.completions.create`` does not take (its own check, made when the bot is built
    rather than at each call)."""
    reserved = sorted(arguments.keys() & _RESERVED)
    if reserved:
        raise BotError(
            f"{bot} sets {', '.join(reserved)} itself; remove "
            f"{', '.join(k + '=' for k in reserved)} from its arguments"
        )
    accepted = _accepted_arguments()
    unknown = sorted(arguments.keys() - accepted)
    if unknown:
        hints = [get_close_matches(k, accepted, n=1) for k in unknown]
        raise BotError(
            f"{bot} got {', '.join(repr(k) for k in unknown)}, which the openai client's "
            "chat.completions.create does not take"
            + "".join(f" (did you mean {h[0]!r}?)" for h in hints if h)
            + "; pass what an endpoint accepts beyond the API in extra_body={...}"
        )


def request_completion(client: openai.OpenAI, max_retries: int, **request: Any) -> Reply:
    """Send a chat completion request, retrying what is worth retrying up to ``max_retries``.

    ``request`` holds what ``chat.completions.create`` would take: body fields, and the
    request options named in ``_OPTIONS``.
    """
    import openai

    # The client's RequestOptions, a TypedDict of its private types module.
    options: Any = {}
    for name in _OPTIONS.keys() & request.keys():
        options[_OPTIONS[name]] = request.pop(name)
    from .traffic import estimate_tokens, reset_waited, traffic

    flow = traffic()
    limits = flow.limits
    where = display_url(str(client.base_url))
    tokens = estimate_tokens(request) if limits.tpm is not None else 0
    gate = flow.gate(where)
    reset_waited()
    budget = limits.wait
    retries = throttled = 0
    while True:
        ahead = flow.admit(where, tokens)
        if ahead > budget:
            raise CallFailed(
                "RateLimitError",
                f"RateLimitError: {where} may be called again in {ahead:.1f} s (a rate limit "
                f"the session met, or --llm-rpm/--llm-tpm), past what one call waits "
                f"(--llm-rate-limit-wait {limits.wait:g}); not sent",
                retries=retries,
                status_code=429,
            )
        if ahead > 0:
            time.sleep(ahead)
            flow.note_wait(ahead)
            budget -= ahead
        try:
            with gate.slot(), own_request():
                text = client.post("/chat/completions", body=request, options=options, cast_to=str)
        except openai.OpenAIError as exc:
            limited = _rate_limited(exc, throttled)
            if limited is not None:
                throttled += 1
                # A rate limit is waited out by every process of the session, and is not
                # a retry; past the budget, the call fails as it always did.
                gate.limited()
                left = flow.pause(where, limited)
                if left <= budget:
                    time.sleep(left)
                    flow.note_wait(left)
                    budget -= left
                    continue
                message = redact(f"{type(exc).__name__}: {exc}") + (
                    f" (rate limited: waited {limits.wait - budget:.1f} s; {left:.1f} s more "
                    f"would pass --llm-rate-limit-wait {limits.wait:g})"
                )
                raise CallFailed(
                    type(exc).__name__,
                    message,
                    retries=retries,
                    status_code=getattr(exc, "status_code", None),
                ) from None
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
        gate.answered()
        try:
            reply = _reply(json.loads(text), retries)
        except _MALFORMED as exc:
            start = redact(text[:200])
            raise CallFailed(
                "MalformedResponse",
                f"MalformedResponse: the endpoint's reply is not a chat completion "
                f"({type(exc).__name__}: {redact(str(exc))[:200]}); body starts {start!r}",
                retries=retries,
            ) from None
        if limits.tpm is not None:
            used = (reply.prompt_tokens or 0) + (reply.completion_tokens or 0)
            flow.settle(where, tokens, used or None)
        return reply


def backoff(tries: int) -> float:
    """An exponential backoff after ``tries`` earlier waits, with jitter."""
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2**tries) * (1 - 0.25 * random.random()))


def _rate_limited(exc: Exception, times: int) -> float | None:
    """The seconds to pause for a rate limit, or ``None`` if ``exc`` is not one."""
    import openai

    if not isinstance(exc, openai.APIStatusError):
        return None
    return rate_limit_pause(exc.status_code, exc.response.headers, times)


def rate_limit_pause(status: int, headers: Any, times: int) -> float | None:
    """The seconds to pause for a rate-limited reply (a 429, or a 503 that says when to come
    back), after ``times`` earlier pauses of the call, or ``None`` if it is not one."""
    asked = retry_after(headers)
    if status == 429:
        return asked if asked is not None else backoff(times)
    if status == 503 and asked is not None:
        return asked
    return None


def _reply(completion: Any, retries: int) -> Reply:
    """The fields a bot records of a chat completion (decoded JSON); a reply of another
    shape raises one of ``_MALFORMED``."""
    if not isinstance(completion, dict):
        raise TypeError(f"it is a JSON {type(completion).__name__}, not an object")
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ValueError("it has no choices")
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise ValueError("its first choice has no message")
    content = choice["message"].get("content")
    if content is not None and not isinstance(content, str):
        raise TypeError(f"message content is {type(content).__name__}, not a string")
    usage = completion.get("usage")
    if not isinstance(usage, dict):
        usage = {}
    return Reply(
        content=content,
        model=text_of(completion.get("model")),
        prompt_tokens=count_of(usage.get("prompt_tokens")),
        completion_tokens=count_of(usage.get("completion_tokens")),
        finish_reason=text_of(choice.get("finish_reason")),
        retries=retries,
    )


def _retry_wait(exc: Exception, retries: int) -> tuple[float | None, str | None]:
    """How long to wait before retrying ``exc`` (``None``: do not retry), and why not."""
    import openai

    wait = backoff(retries)
    if isinstance(exc, openai.APIConnectionError):  # timeouts included
        return wait, None
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
        return wait, None
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
