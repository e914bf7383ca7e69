"""The code's own ``openai`` calls, recorded, cached, replayed and paced like bot calls.

An application under test builds its own client (``OpenAI()`` at import, ``AsyncOpenAI``
inside a function) and never touches our bots. Every such client sends through an ``httpx``
transport: unless it was given one of its own, ``httpx.HTTPTransport`` (or
``AsyncHTTPTransport``), whose ``handle_request`` is httpx's documented transport API.
:func:`install` wraps that method on those two classes, of ``httpx`` (the ``openai`` 1.x and
2.x releases) and of ``httpx2`` (later releases), so clients made before it (at import) and
after it are seen alike, and no private function of ``openai`` is touched. It sees only what
the transport sees: a request to ``/chat/completions`` or ``/responses`` whose
``User-Agent`` names an ``openai`` client class (``OpenAI``, ``AsyncOpenAI``,
``AzureOpenAI``...); anything else passes as it is, and so do the bots' own requests.

One call of the client is one request, or several when the client retries: its
``x-stainless-retry-count`` header counts them, and the attempts of one call are made in
one thread or task, one after the other. A failed attempt is recorded at once and
withdrawn when the client retries it, so the call is one row with its retries, whatever
the client's ``max_retries``.

Headers are never read beyond those two, and never stored: the API key stays in them.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .._util.clock import utcnow
from .._util.ids import new_id
from .._util.jsontext import digest
from .._util.redact import display_url, redact
from ..errors import ReplayMiss
from . import cache, traffic
from .calls import backoff, is_own_request, retry_after
from .process import PROCESS
from .recording import clip_messages, current_run, record_call_in, withdraw_call

if TYPE_CHECKING:
    from .._store.records import BotRecord

__all__ = ["API_ROUTES", "install", "installed", "uninstall"]

#: The APIs captured, by the end of their path.
API_ROUTES = {"/chat/completions": "chat.completions", "/responses": "responses"}
#: The body fields that are the conversation, the model, or how the reply travels: the
#: rest are the call's parameters (what the cache key and the bot row hold).
_NOT_PARAMS = frozenset(
    {"messages", "input", "instructions", "model", "temperature", "stream", "stream_options"}
)
#: What openai names the error of each status (its APIStatusError subclasses).
_STATUS_ERRORS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
}
#: The most of an error reply's body read when the client closes it unread.
_ERROR_BODY = 64 * 1024

#: This thread's or task's last failed attempt, which the client may retry next.
_last_failed: ContextVar[_Exchange | None] = ContextVar("pytest_llmexp_last_failed", default=None)

_lock = threading.Lock()
#: The wrapped classes and their own methods, to put back: (class, name, original).
_patched: list[tuple[type, str, Any]] = []


def installed() -> bool:
    """Whether the transports are wrapped."""
    return bool(_patched)


def install() -> bool:
    """Wrap the transports of ``httpx`` and ``httpx2``, those that are installed; whether
    any is. Idempotent; capture follows ``PROCESS.settings.capture`` at each request."""
    import importlib.util

    with _lock:
        if _patched:
            return True
        for name in ("httpx", "httpx2"):
            if name not in sys.modules and importlib.util.find_spec(name) is None:
                continue
            module = __import__(name)
            sync_class, async_class = module.HTTPTransport, module.AsyncHTTPTransport
            sync_original = sync_class.__dict__["handle_request"]
            async_original = async_class.__dict__["handle_async_request"]
            sync_class.handle_request = _sync_wrapper(module, sync_original)
            async_class.handle_async_request = _async_wrapper(module, async_original)
            _patched.append((sync_class, "handle_request", sync_original))
            _patched.append((async_class, "handle_async_request", async_original))
        return bool(_patched)


def uninstall() -> None:
    """Put the transports' own methods back."""
    with _lock:
        while _patched:
            owner, name, original = _patched.pop()
            setattr(owner, name, original)


def _sync_wrapper(module: Any, original: Any) -> Any:
    def handle_request(self: Any, request: Any) -> Any:
        exchange = _begin(module, request)
        if exchange is None:
            return original(self, request)
        served = exchange.serve()
        if served is not None:
            return served
        refused = exchange.admit(time.sleep)
        if refused is not None:
            return refused
        try:
            response = original(self, request)
        except BaseException as exc:  # an interrupt too (Ctrl-C, pytest-timeout)
            exchange.failed(exc)
            raise
        response.stream = _sync_tee(module)(response.stream, exchange, response)
        return response

    handle_request.__wrapped__ = original  # type: ignore[attr-defined]
    return handle_request


def _async_wrapper(module: Any, original: Any) -> Any:
    async def handle_async_request(self: Any, request: Any) -> Any:
        exchange = _begin(module, request)
        if exchange is None:
            return await original(self, request)
        served = exchange.serve()
        if served is not None:
            return served
        waits: list[float] = []
        refused = exchange.admit(waits.append)
        if refused is not None:
            return refused
        if waits:
            import anyio

            await anyio.sleep(waits[0])
            exchange.sent = time.perf_counter()
        try:
            response = await original(self, request)
        except BaseException as exc:  # an interrupt too (Ctrl-C, pytest-timeout)
            exchange.failed(exc)
            raise
        response.stream = _async_tee(module)(response.stream, exchange, response)
        return response

    handle_async_request.__wrapped__ = original  # type: ignore[attr-defined]
    return handle_async_request


def _begin(module: Any, request: Any) -> _Exchange | None:
    """The captured call ``request`` is an attempt of, or ``None`` to let it pass."""
    if not PROCESS.settings.capture or is_own_request() or request.method != "POST":
        return None
    path = request.url.path.rstrip("/")
    api = next((a for route, a in API_ROUTES.items() if path.endswith(route)), None)
    # The client names itself: "OpenAI/Python 1.55.3", "AsyncOpenAI/...", "AzureOpenAI/...".
    client = request.headers.get("user-agent", "").partition("/")[0]
    if api is None or not client.endswith("OpenAI"):
        return None
    try:
        body = json.loads(request.content)
    except Exception:  # a streamed upload, or not JSON: not a call we can read
        return None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return None
    if current_run() is None and not PROCESS.settings.buffer_orphans:
        # A script's calls outside its Experiment's runs are its own business; under
        # pytest they are stored as calls outside any run, as a bot's are.
        return None
    return _Exchange(module, request, api, body, client)


class _Exchange:
    """One attempt of a captured call: its request as recorded, then its reply or error."""

    def __init__(
        self, module: Any, request: Any, api: str, body: dict[str, Any], client: str
    ) -> None:
        self.module = module
        self.request = request
        self.api = api
        self.stream = bool(body.get("stream"))
        self.model: str = body["model"]
        temperature = body.get("temperature")
        self.temperature = (
            float(temperature)
            if isinstance(temperature, int | float) and not isinstance(temperature, bool)
            else None
        )
        self.messages = _request_messages(api, body)
        self.params = {k: v for k, v in body.items() if k not in _NOT_PARAMS}
        self.where, self.limits_key = _base_url(request.url, api)
        self.run = current_run()
        self.timestamp = utcnow()
        self.id = new_id()
        self.recorded = False
        self.retries = 0
        self.plan: cache.Plan | None = None
        self.content: bytes = request.content
        self.bot = self._bot(client)
        self.tokens = 0
        self.sent = time.perf_counter()
        try:
            count = int(request.headers.get("x-stainless-retry-count", "0"))
        except ValueError:
            count = 0
        previous = _last_failed.get()
        _last_failed.set(None)
        if count > 0 and previous is not None and previous.content == self.content:
            # The client retries the call whose last attempt failed: one call, not two.
            withdraw_call(previous.run, previous.id)
            self.retries = count

    def _bot(self, client: str) -> BotRecord:
        from .._store.records import BotRecord

        schema = _response_schema(self.api, self.params)
        config: dict[str, Any] = {
            "class_name": client,
            "model_name": self.model,
            "temperature": self.temperature,
            "system_prompt": None,
            "response_schema": schema,
            "params": {"api": self.api, "base_url": self.where, **self.params},
            "kind": "client",
        }
        return BotRecord(hash=digest(config), system_prompt_hash=None, **config)

    # -- before sending ---------------------------------------------------------------

    def serve(self) -> Any:
        """The reply from the store, when the cache mode says so (or a replay miss, as an
        error reply the client does not retry); ``None``: send the request."""
        try:
            self.plan = cache.plan_call(
                self.bot,
                self.messages,
                [None] * len(self.messages),
                {"api": self.api, **self.params},
            )
        except ReplayMiss as exc:
            why = str(exc)
            # As for a bot, a miss is not a call: nothing is logged, and the run is an error.
            if self.run is not None:
                self.run.infrastructure_error("ReplayMiss", why)
            return self._error_reply(400, "replay_miss", f"pytest-llmexp: {why}")
        entry = self.plan.entry
        if entry is None:
            return None
        message = dict(entry.message)
        self._record(
            message,
            response_model=entry.response_model,
            prompt_tokens=entry.prompt_tokens,
            completion_tokens=entry.completion_tokens,
            finish_reason=entry.finish_reason,
            replayed_from=entry.message_log_id,
            sent=False,
        )
        self.plan.answered()
        body, kind = _replay_body(self.api, self.stream, self.model, message, entry)
        return self.module.Response(
            200, headers={"content-type": kind}, content=body, request=self.request
        )

    def admit(self, sleep: Any) -> Any:
        """Wait out the session's rate limits (``sleep(seconds)``), or an error reply when
        that would take longer than one call may wait; ``None``: go on."""
        flow = traffic.traffic()
        limits = flow.limits
        if limits.tpm is not None:
            self.tokens = traffic.estimate_tokens({"messages": self.messages, **self.params})
        ahead = flow.admit(self.limits_key, self.tokens)
        if ahead > limits.wait:
            message = (
                f"RateLimitError: {self.where} may be called again in {ahead:.1f} s (a rate "
                f"limit the session met, or --llm-rpm/--llm-tpm), past what one call waits "
                f"(--llm-rate-limit-wait {limits.wait:g}); not sent"
            )
            self._record(None, error=message, error_type="RateLimitError", sent=False)
            return self._error_reply(429, "rate_limit_exceeded", f"pytest-llmexp: {message}")
        if ahead > 0:
            sleep(ahead)
            flow.note_wait(ahead)
        self.sent = time.perf_counter()
        return None

    def _error_reply(self, status: int, code: str, message: str) -> Any:
        body = json.dumps({"error": {"message": message, "type": code, "code": code}})
        return self.module.Response(
            status,
            # The client must not retry it: asking again cannot change the answer.
            headers={"content-type": "application/json", "x-should-retry": "false"},
            content=body.encode(),
            request=self.request,
        )

    # -- after sending ---------------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        """The request raised (a timeout, a refused connection, an interrupt)."""
        if not isinstance(exc, Exception):
            kind = "Interrupted"
        elif isinstance(exc, self.module.TimeoutException):
            kind = "APITimeoutError"
        else:
            kind = "APIConnectionError"
        self._record(
            None, error=redact(f"{kind}: {type(exc).__name__}: {exc}")[:500], error_type=kind
        )
        _last_failed.set(self)

    def done(self, status: int, headers: Any, raw: bytes) -> None:
        """The reply has been read (or the client closed it): record what came back."""
        text = _decoded(self.module, status, headers, raw)
        flow = traffic.traffic()
        if status >= 400:
            rate = _rate_limit(status, headers)
            if rate is not None:
                flow.pause(self.limits_key, rate)
            kind = _STATUS_ERRORS.get(
                status, "InternalServerError" if status >= 500 else "APIStatusError"
            )
            self._record(
                None,
                error=redact(f"{kind}: Error code: {status} - {text[:500]}"),
                error_type=kind,
            )
            _last_failed.set(self)
            return
        try:
            reply = _read_reply(self.api, self.stream, text)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self._record(
                None,
                error=redact(
                    f"MalformedResponse: the endpoint's reply is not a {self.api} reply "
                    f"({type(exc).__name__}: {exc}); body starts {text[:200]!r}"
                ),
                error_type="MalformedResponse",
            )
            return
        if flow.limits.tpm is not None:
            used = (reply.prompt_tokens or 0) + (reply.completion_tokens or 0)
            flow.settle(self.limits_key, self.tokens, used or None)
        self._record(
            reply.message,
            response_model=reply.model,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            finish_reason=reply.finish_reason,
            error=reply.error,
            error_type="IncompleteStream" if reply.error else None,
            record=self.plan is not None and self.plan.record and reply.error is None,
        )
        if reply.error is None and self.plan is not None:
            self.plan.answered()

    def _record(self, reply: dict[str, Any] | None, *, sent: bool = True, **fields: Any) -> None:
        from .._store.records import CallRecord

        if self.recorded:
            return
        self.recorded = True
        messages = [*self.messages, reply] if reply is not None else self.messages
        stored, truncated = clip_messages(messages)
        fields.setdefault("response_model", None)
        fields.setdefault("prompt_tokens", None)
        fields.setdefault("completion_tokens", None)
        fields.setdefault("finish_reason", None)
        fields.setdefault("error", None)
        plan = self.plan
        record_call_in(
            self.run,
            self.bot,
            [],
            CallRecord(
                id=self.id,
                bot_hash=self.bot.hash,
                timestamp=self.timestamp,
                model_name=self.model,
                temperature=self.temperature,
                latency_ms=(time.perf_counter() - self.sent) * 1000 if sent else 0.0,
                messages=stored,
                truncated=truncated,
                retries=self.retries,
                cache_key=None if plan is None else plan.key,
                request=None if plan is None else plan.request,
                api=self.api,
                stream=self.stream,
                seed=self.params.get("seed") if type(self.params.get("seed")) is int else None,
                **fields,
            ),
        )


class _Kept:
    """What a reply's byte stream has handed the client so far, recorded once when it ends."""

    def __init__(self, inner: Any, exchange: _Exchange, response: Any) -> None:
        self.inner = inner
        self.exchange = exchange
        self.status: int = response.status_code
        self.headers = response.headers
        self.chunks: list[bytes] = []

    def keep(self, chunk: bytes) -> bool:
        """Keep ``chunk``; whether an unread error reply has been read far enough."""
        self.chunks.append(chunk)
        return sum(map(len, self.chunks)) > _ERROR_BODY

    def unread_error(self) -> bool:
        """The client closes an error reply it will retry unread: it is read here."""
        return self.status >= 400 and not self.exchange.recorded

    def done(self) -> None:
        if not self.exchange.recorded:
            self.exchange.done(self.status, self.headers, b"".join(self.chunks))


def _sync_tee(module: Any) -> type:
    """A byte stream that hands the client what it reads, and the whole to the exchange."""
    found = _TEES.get((module.__name__, False))
    if found is not None:
        return found

    class Tee(_Kept, module.SyncByteStream):  # type: ignore[misc]
        def __iter__(self) -> Iterator[bytes]:
            for chunk in self.inner:
                self.keep(chunk)
                yield chunk
            self.done()

        def close(self) -> None:
            try:
                if self.unread_error():
                    with contextlib.suppress(Exception):
                        for chunk in self.inner:
                            if self.keep(chunk):
                                break
            finally:
                self.done()
                self.inner.close()

    _TEES[(module.__name__, False)] = Tee
    return Tee


def _async_tee(module: Any) -> type:
    """The same for an async client."""
    found = _TEES.get((module.__name__, True))
    if found is not None:
        return found

    class AsyncTee(_Kept, module.AsyncByteStream):  # type: ignore[misc]
        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self.inner:
                self.keep(chunk)
                yield chunk
            self.done()

        async def aclose(self) -> None:
            try:
                if self.unread_error():
                    with contextlib.suppress(Exception):
                        async for chunk in self.inner:
                            if self.keep(chunk):
                                break
            finally:
                self.done()
                await self.inner.aclose()

    _TEES[(module.__name__, True)] = AsyncTee
    return AsyncTee


_TEES: dict[tuple[str, bool], type] = {}


def _base_url(url: Any, api: str) -> tuple[str, str]:
    """The endpoint's base URL as the bot row shows it (the bots' label for their endpoint:
    the embedded model's port changes every session), and as the rate limits know it (the
    bots' key for the same endpoint, so that one limit holds for both)."""
    text = display_url(str(url))
    route = next(r for r, a in API_ROUTES.items() if a == api)
    base = text[: -len(route)] if text.endswith(route) else text
    key = base.rstrip("/") + "/"  # as the client's base_url, which ends with "/"
    bots = PROCESS.settings.endpoint
    if bots.label and bots.base_url and display_url(bots.base_url).rstrip("/") == base:
        return bots.label, key
    return base, key


def _request_messages(api: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation a request sends, as chat messages: a responses request's
    ``instructions`` are its system message, and a text ``input`` its user message."""
    if api == "chat.completions":
        messages = body.get("messages")
        return [m if isinstance(m, dict) else {"content": m} for m in messages or []]
    found: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        found.append({"role": "system", "content": body["instructions"]})
    given = body.get("input")
    if isinstance(given, str):
        found.append({"role": "user", "content": given})
    elif isinstance(given, list):
        found += [i if isinstance(i, dict) else {"content": i} for i in given]
    return found


def _response_schema(api: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema the request asks the reply to follow, if any."""
    if api == "chat.completions":
        form = params.get("response_format")
        if isinstance(form, dict) and form.get("type") == "json_schema":
            schema = (form.get("json_schema") or {}).get("schema")
            return schema if isinstance(schema, dict) else None
        return None
    form = (
        (params.get("text") or {}).get("format") if isinstance(params.get("text"), dict) else None
    )
    if isinstance(form, dict) and form.get("type") == "json_schema":
        schema = form.get("schema")
        return schema if isinstance(schema, dict) else None
    return None


def _decoded(module: Any, status: int, headers: Any, raw: bytes) -> str:
    """The reply's text, its content encoding (gzip...) undone."""
    if headers.get("content-encoding", "identity") == "identity":
        return raw.decode("utf-8", "replace")  # most local servers: no response to build
    try:
        return str(module.Response(status, headers=headers, content=raw).text)
    except Exception:
        return raw.decode("utf-8", "replace")


def _rate_limit(status: int, headers: Any) -> float | None:
    """The pause a rate-limited reply asks of the session, or ``None``."""
    asked = retry_after(headers)
    if status == 429:
        return asked if asked is not None else backoff(0)
    if status == 503 and asked is not None:
        return asked
    return None


class _Reply:
    """What a captured call's reply says, as the conversation stores it."""

    def __init__(
        self,
        message: dict[str, Any],
        *,
        model: Any = None,
        usage: Any = None,
        finish_reason: Any = None,
        error: str | None = None,
        names: tuple[str, str] = ("prompt_tokens", "completion_tokens"),
    ) -> None:
        self.message = message
        self.model = model if isinstance(model, str) else None
        usage = usage if isinstance(usage, dict) else {}
        self.prompt_tokens = _count(usage.get(names[0]))
        self.completion_tokens = _count(usage.get(names[1]))
        self.finish_reason = finish_reason if isinstance(finish_reason, str) else None
        self.error = error


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _read_reply(api: str, stream: bool, text: str) -> _Reply:
    if api == "chat.completions":
        return _chat_stream(text) if stream else _chat(json.loads(text))
    return _responses_stream(text) if stream else _responses(json.loads(text))


def _chat(completion: dict[str, Any]) -> _Reply:
    choice = completion["choices"][0]
    message = {k: v for k, v in choice["message"].items() if v is not None or k == "content"}
    message.setdefault("role", "assistant")
    return _Reply(
        message,
        model=completion.get("model"),
        usage=completion.get("usage"),
        finish_reason=choice.get("finish_reason"),
    )


def _events(text: str) -> Iterator[dict[str, Any]]:
    """The JSON events of a server-sent event stream."""
    for block in text.replace("\r\n", "\n").split("\n\n"):
        data = "\n".join(
            line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")
        )
        if data and data != "[DONE]":
            yield json.loads(data)


def _chat_stream(text: str) -> _Reply:
    """A streamed chat completion, put together as the client does."""
    content: list[str] = []
    refusal: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    model = usage = finish = None
    for chunk in _events(text):
        model = chunk.get("model", model)
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            finish = choice.get("finish_reason") or finish
            delta = choice.get("delta") or {}
            content.append(delta.get("content") or "")
            refusal.append(delta.get("refusal") or "")
            for part in delta.get("tool_calls") or []:
                call = calls.setdefault(
                    part.get("index", 0),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                call["id"] = part.get("id") or call["id"]
                function = part.get("function") or {}
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(content) or None}
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    if any(refusal):
        message["refusal"] = "".join(refusal)
    return _Reply(
        message,
        model=model,
        usage=usage,
        finish_reason=finish,
        error=None if finish else "the stream ended before its finish reason (read in part)",
    )


def _responses(response: dict[str, Any]) -> _Reply:
    """A responses API reply: its text, refusals and function calls as one message."""
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in response.get("output") or []:
        if item.get("type") == "message":
            for part in item.get("content") or []:
                if part.get("type") == "output_text":
                    texts.append(part.get("text") or "")
                elif part.get("type") == "refusal":
                    refusals.append(part.get("refusal") or "")
        elif item.get("type") == "function_call":
            calls.append(
                {
                    "id": item.get("call_id"),
                    "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    if refusals:
        message["refusal"] = "".join(refusals)
    return _Reply(
        message,
        model=response.get("model"),
        usage=response.get("usage"),
        finish_reason=response.get("status"),
        names=("input_tokens", "output_tokens"),
    )


def _responses_stream(text: str) -> _Reply:
    deltas: list[str] = []
    for event in _events(text):
        if event.get("type") in ("response.completed", "response.incomplete", "response.failed"):
            return _responses(event["response"])
        if event.get("type") == "response.output_text.delta":
            deltas.append(event.get("delta") or "")
    return _Reply(
        {"role": "assistant", "content": "".join(deltas) or None},
        error="the stream ended before the response completed (read in part)",
    )


# -- replay ------------------------------------------------------------------------------


def _replay_body(
    api: str, stream: bool, model: str, message: dict[str, Any], entry: cache.Entry
) -> tuple[bytes, str]:
    """A recorded reply as the endpoint would send it: JSON, or a server-sent event stream."""
    model = entry.response_model or model
    prompt, completion = entry.prompt_tokens or 0, entry.completion_tokens or 0
    if api == "chat.completions":
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        base = {"id": f"chatcmpl-{entry.message_log_id}", "created": 0, "model": model}
        if not stream:
            choice = {"index": 0, "message": message, "finish_reason": entry.finish_reason}
            reply = {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
            return json.dumps(reply).encode(), "application/json"
        delta: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {"index": i, **call} for i, call in enumerate(message["tool_calls"])
            ]
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        chunk = {**base, "object": "chat.completion.chunk"}
        events = [
            {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
            {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": entry.finish_reason}]},
            {**chunk, "choices": [], "usage": usage},
        ]
        body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return body.encode(), "text/event-stream"
    response = _replay_response(model, message, entry, prompt, completion)
    if not stream:
        return json.dumps(response).encode(), "application/json"
    sse: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "response": {**response, "status": "in_progress", "output": []},
        }
    ]
    for index, item in enumerate(response["output"]):
        sse.append({"type": "response.output_item.added", "output_index": index, "item": item})
        if item["type"] == "message":
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            for part in item["content"]:
                sse.append({"type": "response.content_part.added", **where, "part": part})
                if part["type"] == "output_text":
                    sse.append(
                        {
                            "type": "response.output_text.delta",
                            **where,
                            "delta": part["text"],
                            "logprobs": [],
                        }
                    )
                    sse.append(
                        {
                            "type": "response.output_text.done",
                            **where,
                            "text": part["text"],
                            "logprobs": [],
                        }
                    )
                sse.append({"type": "response.content_part.done", **where, "part": part})
        sse.append({"type": "response.output_item.done", "output_index": index, "item": item})
    sse.append({"type": "response.completed", "response": response})
    body = "".join(
        f"event: {e['type']}\ndata: {json.dumps({**e, 'sequence_number': n})}\n\n"
        for n, e in enumerate(sse)
    )
    return body.encode(), "text/event-stream"


def _replay_response(
    model: str, message: dict[str, Any], entry: cache.Entry, prompt: int, completion: int
) -> dict[str, Any]:
    output: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    if message.get("content") is not None:
        parts.append({"type": "output_text", "text": message["content"], "annotations": []})
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        output.append(
            {
                "type": "message",
                "id": f"msg_{entry.message_log_id}",
                "role": "assistant",
                "status": "completed",
                "content": parts,
            }
        )
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(
            {
                "type": "function_call",
                "id": f"fc_{call.get('id')}",
                "call_id": call.get("id"),
                "name": function.get("name"),
                "arguments": function.get("arguments"),
                "status": "completed",
            }
        )
    return {
        "id": f"resp_{entry.message_log_id}",
        "object": "response",
        "created_at": 0,
        "status": entry.finish_reason or "completed",
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": prompt,
            "output_tokens": completion,
            "total_tokens": prompt + completion,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }
