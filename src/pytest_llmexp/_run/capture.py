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

Headers are never read beyond those two, and never stored: the API key stays in them. What
the requests and replies say is read, and a stored reply written back, by :mod:`.wire`.
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
from .calls import is_own_request, rate_limit_pause
from .process import PROCESS
from .recording import clip_messages, current_run, in_metric, record_call_in, withdraw_call
from .wire import NOT_PARAMS, error_name, read_reply, replay_body, request_messages, response_schema

if TYPE_CHECKING:
    from .._store.records import BotRecord

__all__ = ["API_ROUTES", "install", "installed", "uninstall"]

#: The APIs captured, by the end of their path.
API_ROUTES = {"/chat/completions": "chat.completions", "/responses": "responses"}
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
    tee = _sync_tee(module)

    def handle_request(self: Any, request: Any) -> Any:
        exchange = _begin(module, request)
        if exchange is None:
            return original(self, request)
        answer, wait = exchange.prepare()
        if answer is not None:
            return answer
        if wait:
            time.sleep(wait)
        exchange.sending(wait)
        try:
            response = original(self, exchange.request)
        except BaseException as exc:  # an interrupt too (Ctrl-C, pytest-timeout)
            exchange.failed(exc)
            raise
        response.stream = tee(response.stream, exchange, response)
        return response

    return handle_request


def _async_wrapper(module: Any, original: Any) -> Any:
    tee = _async_tee(module)

    async def handle_async_request(self: Any, request: Any) -> Any:
        exchange = _begin(module, request)
        if exchange is None:
            return await original(self, request)
        answer, wait = exchange.prepare()
        if answer is not None:
            return answer
        if wait:
            import anyio

            await anyio.sleep(wait)
        exchange.sending(wait)
        try:
            response = await original(self, exchange.request)
        except BaseException as exc:  # an interrupt too (Ctrl-C, pytest-timeout)
            exchange.failed(exc)
            raise
        response.stream = tee(response.stream, exchange, response)
        return response

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
    run = current_run()
    if run is None and not PROCESS.settings.buffer_orphans:
        # A script's calls outside its Experiment's runs are its own business; under
        # pytest they are stored as calls outside any run, as a bot's are.
        return None
    judge = in_metric()
    if run is not None and run.overrides and not judge:
        request, body = _in_variant(module, request, body, run.overrides)
    return _Exchange(module, request, api, body, client, judge)


def _in_variant(
    module: Any, request: Any, body: dict[str, Any], overrides: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """The request as the run's variant of the command line sends it: a model sweep
    (``--llm-model A --llm-model B``) measures the code's own client calls too, so they
    call the variant's model (and temperature), as bots do. Judges keep theirs."""
    changed = {**body, **{k: v for k, v in overrides.items() if k in ("model", "temperature")}}
    if changed == body:
        return request, body
    headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
    content = json.dumps(changed).encode()
    rebuilt = module.Request(
        request.method, request.url, headers=headers, content=content, extensions=request.extensions
    )
    return rebuilt, changed


class _Exchange:
    """One attempt of a captured call: its request as recorded, then its reply or error."""

    def __init__(
        self,
        module: Any,
        request: Any,
        api: str,
        body: dict[str, Any],
        client: str,
        judge: bool = False,
    ) -> None:
        self.module = module
        self.request = request
        #: Made inside a ``@metric`` function: a judge's call.
        self.judge = judge
        self.api = api
        self.stream = bool(body.get("stream"))
        self.model: str = body["model"]
        temperature = body.get("temperature")
        self.temperature = (
            float(temperature)
            if isinstance(temperature, int | float) and not isinstance(temperature, bool)
            else None
        )
        self.messages = request_messages(api, body)
        self.params = {k: v for k, v in body.items() if k not in NOT_PARAMS}
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

        schema = response_schema(self.api, self.params)
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

    def prepare(self) -> tuple[Any, float]:
        """Before sending: a reply for the client instead of sending (from the store, or a
        refusal), else how long to wait out the session's rate limits first."""
        served = self._serve()
        return (served, 0.0) if served is not None else self._admit()

    def sending(self, waited: float) -> None:
        """The request goes now, after ``waited`` seconds on rate limits."""
        if waited:
            traffic.traffic().note_wait(waited)
        self.sent = time.perf_counter()

    def _serve(self) -> Any:
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
        body, kind = replay_body(self.api, self.stream, self.model, message, entry)
        return self.module.Response(
            200, headers={"content-type": kind}, content=body, request=self.request
        )

    def _admit(self) -> tuple[Any, float]:
        """How long to wait out the session's rate limits, or an error reply when that would
        take longer than one call may wait."""
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
            return self._error_reply(429, "rate_limit_exceeded", f"pytest-llmexp: {message}"), 0.0
        return None, max(0.0, ahead)

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
            rate = rate_limit_pause(status, headers, 0)
            if rate is not None:
                flow.pause(self.limits_key, rate)
            kind = error_name(status)
            self._record(
                None,
                error=redact(f"{kind}: Error code: {status} - {text[:500]}"),
                error_type=kind,
            )
            _last_failed.set(self)
            return
        try:
            reply = read_reply(self.api, self.stream, text)
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
                judge=self.judge,
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

    return Tee


def _async_tee(module: Any) -> type:
    """The same for an async client."""

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

    return AsyncTee


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


def _decoded(module: Any, status: int, headers: Any, raw: bytes) -> str:
    """The reply's text, its content encoding (gzip...) undone."""
    if headers.get("content-encoding", "identity") == "identity":
        return raw.decode("utf-8", "replace")  # most local servers: no response to build
    try:
        return str(module.Response(status, headers=headers, content=raw).text)
    except Exception:
        return raw.decode("utf-8", "replace")
