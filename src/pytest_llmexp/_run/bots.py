"""``SimpleBot`` and ``StructuredBot``: chat completions through the official ``openai`` client.

Bots are stateless: every call sends the system prompt plus the messages it is given, so
repeated executions of an experiment stay independent.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .._store.records import BotRecord, CallRecord, PromptRecord
from .._util.clock import utcnow
from .._util.defaults import MAX_CONCURRENCY
from .._util.ids import new_id
from .._util.jsontext import canonical, digest
from .._util.redact import display_url, redact
from ..errors import BotError, LLMCallError, StructuredOutputError, TruncatedReply
from . import cache, endpoint, traffic
from .calls import CallFailed, check_arguments, request_completion
from .prompts import Message, MessageInput, MessageLike, to_messages
from .recording import clip_messages, current_run, in_metric, record_call
from .structured import (
    enumerate_int_ranges,
    json_schema,
    refuses_json_schema,
    schema_name,
    validate_reply,
)

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["SimpleBot", "StructuredBot"]

#: The completion arguments that bound a reply's length.
_LENGTH_ARGUMENTS = frozenset({"max_tokens", "max_completion_tokens"})
#: Bot records by configuration, shared by the bots of a process (see ``_shared_record``).
_SHARED_RECORDS: dict[tuple[Any, ...], tuple[object, BotRecord]] = {}
_MAX_SHARED = 1024

ModelT = TypeVar("ModelT", bound="BaseModel")


class _Bot:
    """What both bots share: configuration, recording, and one chat completion call."""

    def __init__(
        self,
        system_prompt: MessageLike | None,
        model_name: str | None,
        temperature: float | None,
        completion_kwargs: dict[str, Any],
    ) -> None:
        name = type(self).__name__
        if isinstance(system_prompt, str):
            system_prompt = Message(role="system", content=system_prompt)
        elif isinstance(system_prompt, Message):
            if system_prompt.role != "system":
                raise BotError(
                    f"{name}'s system prompt has role {system_prompt.role!r}; make it with "
                    '@prompt("system"), or pass the message when calling the bot instead'
                )
        elif system_prompt is not None:
            raise BotError(
                f"{name}'s system prompt must be a string or a @prompt('system') message, got "
                f"{type(system_prompt).__name__}"
            )
        if model_name is not None and (not isinstance(model_name, str) or not model_name):
            raise BotError(f"{name}: model_name must be a non-empty string, got {model_name!r}")
        if temperature is not None and (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):
            raise BotError(f"{name}: temperature must be a number from 0 to 2, got {temperature!r}")
        if completion_kwargs:
            check_arguments(name, completion_kwargs)
            try:
                canonical(completion_kwargs)
            except (TypeError, ValueError) as exc:
                raise BotError(
                    f"{name}: completion arguments must be JSON-serializable to be recorded: {exc}"
                ) from None
        self.system_prompt: Message | None = system_prompt
        self.model_name = model_name
        self.temperature = None if temperature is None else float(temperature)
        self.completion_kwargs = dict(completion_kwargs)
        self._records: dict[tuple[Any, ...], BotRecord] = {}

    def _response_schema(self) -> dict[str, Any] | None:
        return None

    def _extra_params(self) -> dict[str, Any]:
        return {}

    def _default_max_tokens(self, current: endpoint.ClientSettings) -> int | None:
        """The endpoint's bound on a reply, if this bot sets none of its own."""
        if current.max_tokens is None or self.completion_kwargs.keys() & _LENGTH_ARGUMENTS:
            return None
        return current.max_tokens

    def _model(self) -> str:
        return self._chosen()[0]

    def _chosen(self) -> tuple[str, float | None]:
        """The model and temperature this bot calls now.

        A bot called inside a ``@metric`` is a judge, the ruler and not what is measured:
        it keeps its own model (or ``--llm-judge-model``) and temperature in every variant.
        Any other bot calls its run's variant (``--llm-model A --llm-model B``), else
        ``--llm-model`` and ``--llm-temperature``, else its own. An endpoint that serves one
        model (the embedded one) is called with it by every bot.
        """
        current = endpoint.settings()
        judge = in_metric()
        run = None if judge else current_run()
        overrides = run.overrides if run is not None else {}
        if current.single_model:
            model = current.model
        elif judge:
            model = current.judge_model or self.model_name or current.model
        else:
            model = overrides.get("model") or current.model or self.model_name
        temperature = self.temperature
        if not judge:
            chosen = overrides.get("temperature", current.temperature)
            if chosen is not None:
                temperature = float(chosen)
        if not model:
            if judge:
                raise BotError(
                    f"{type(self).__name__} is called inside a @metric (a judge), and judges "
                    "keep their own model: pass model_name=... to it, or run with "
                    "--llm-judge-model NAME (ini: llm_judge_model)"
                )
            raise BotError(
                f"{type(self).__name__} has no model: pass model_name=... or run with "
                "--llm-model NAME (ini: llm_model)"
            )
        return model, temperature

    def bot_record(self) -> BotRecord:
        """This bot's configuration as it is called now (with any ``--llm-model`` override)."""
        current = endpoint.settings()
        model, temperature = self._chosen()
        base_url = endpoint.endpoint_label(current)
        key = (
            model,
            base_url,
            current.timeout,
            current.max_retries,
            current.model_sha256,
            self._default_max_tokens(current),
            temperature,
        )
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = self._shared_record(key)
        return record

    def _shared_record(self, endpoint_key: tuple[Any, ...]) -> BotRecord:
        """The record of this configuration, made once per process: tests often build the
        same bot in every run, and hashing its schema costs more than the rest of a call's
        recording."""
        schema = self._response_schema()
        system = self.system_prompt
        try:
            kwargs = canonical(self.completion_kwargs) if self.completion_kwargs else ""
        except (TypeError, ValueError):  # not JSON: not shared
            return self._make_record(endpoint_key[0], endpoint_key[1], endpoint_key[-1])
        key = (
            type(self).__name__,
            system.content if system else None,
            system.prompt.hash if system and system.prompt else None,
            id(schema),
            tuple(self._extra_params().items()),  # our own scalars: hashable as they are
            kwargs,
            endpoint_key,
        )
        found = _SHARED_RECORDS.get(key)
        # The schema itself is kept with the record, so its id cannot be reused meanwhile.
        if found is not None and found[0] is schema:
            return found[1]
        record = self._make_record(endpoint_key[0], endpoint_key[1], endpoint_key[-1])
        if len(_SHARED_RECORDS) >= _MAX_SHARED:
            _SHARED_RECORDS.clear()
        _SHARED_RECORDS[key] = (schema, record)
        return record

    def _make_record(self, model: str, base_url: str, temperature: float | None) -> BotRecord:
        current = endpoint.settings()
        params: dict[str, Any] = {
            "base_url": base_url,
            "timeout": current.timeout,
            "max_retries": current.max_retries,
            **self._extra_params(),
            **self.completion_kwargs,
        }
        if current.model_sha256:
            params["model_sha256"] = current.model_sha256
        default_max_tokens = self._default_max_tokens(current)
        if default_max_tokens is not None:
            params["max_tokens"] = default_max_tokens
        system = self.system_prompt
        config: dict[str, Any] = {
            "class_name": type(self).__name__,
            "model_name": model,
            "temperature": temperature,
            "system_prompt": system.content if system else None,
            "response_schema": self._response_schema(),
            "params": params,
        }
        return BotRecord(
            hash=digest(config),
            system_prompt_hash=system.prompt.hash if system and system.prompt else None,
            **config,
        )

    def _complete(self, conversation: list[Message], *, cut_ok: bool, **extra: Any) -> str:
        """Send one chat completion request, record it, and return the reply's text.

        A reply cut at ``max_tokens`` raises :class:`TruncatedReply`, unless ``cut_ok`` (a
        plain-text bot whose own ``max_tokens`` asked for the cut).
        """
        __tracebackhide__ = True  # the user's test line, not our internals (nor their locals)
        bot = self.bot_record()
        current = endpoint.settings()
        messages = [self.system_prompt, *conversation] if self.system_prompt else conversation
        payload = [m.to_dict() for m in messages]
        prompts: list[PromptRecord] = [m.prompt for m in messages if m.prompt is not None]
        request: dict[str, Any] = dict(self.completion_kwargs)
        if bot.temperature is not None:
            request["temperature"] = bot.temperature
        default_max_tokens = self._default_max_tokens(current)
        if default_max_tokens is not None:
            request["max_tokens"] = default_max_tokens
        seed = request.get("seed")
        if current.fresh_seed and seed is None:
            # Not part of the cache key (built from the bot's own arguments): replay is
            # unaffected, and the recorded seed reproduces this one call on purpose.
            seed = request["seed"] = random.getrandbits(31)
        request.update(extra)
        timestamp = utcnow()
        traffic.reset_waited()
        started = time.perf_counter()
        tags = [[m.prompt.function_name, m.prompt.hash] if m.prompt else None for m in messages]
        plan = cache.plan_call(bot, payload, tags, self.completion_kwargs)

        def record(messages: list[dict[str, Any]], *, sent: bool = True, **fields: Any) -> None:
            stored, truncated = clip_messages(messages)
            record_call(
                bot,
                prompts,
                CallRecord(
                    id=new_id(),
                    bot_hash=bot.hash,
                    timestamp=timestamp,
                    model_name=bot.model_name,
                    temperature=bot.temperature,
                    judge=in_metric(),
                    # The request's own time: waits on rate limits are not the endpoint's.
                    latency_ms=(time.perf_counter() - started - traffic.waited()) * 1000,
                    messages=stored,
                    truncated=truncated,
                    cache_key=plan.key,
                    request=plan.request,
                    # A reply served from the store was drawn with the recorded call's seed.
                    seed=seed if sent and type(seed) is int else None,
                    **fields,
                ),
            )

        if plan.entry is not None:
            served = plan.entry
            record(
                [*payload, {"role": "assistant", "content": served.content}],
                response_model=served.response_model,
                prompt_tokens=served.prompt_tokens,
                completion_tokens=served.completion_tokens,
                retries=0,
                finish_reason=served.finish_reason,
                error=None,
                replayed_from=served.message_log_id,
                sent=False,
            )
            plan.answered()
            self._check_cut(bot, served.content, served.finish_reason, request, cut_ok)
            return served.content
        client = endpoint.get_client()
        try:
            reply = request_completion(
                client,
                endpoint.settings().max_retries,
                model=bot.model_name,
                messages=payload,
                **request,
            )
        except CallFailed as failure:
            record(
                payload,
                response_model=None,
                prompt_tokens=None,
                completion_tokens=None,
                retries=failure.retries,
                finish_reason=None,
                error=failure.message,
                error_type=failure.error_type,
            )
            raise LLMCallError(
                f"{type(self).__name__} call to model {bot.model_name!r} at "
                f"{display_url(endpoint.resolved_base_url())} failed after "
                f"{failure.retries} retries: {failure.message}"
                + (_timeout_hint(current, request) if failure.error_type == _TIMEOUT else ""),
                cause_type=failure.error_type,
                retries=failure.retries,
                status_code=failure.status_code,
            ) from None
        except BaseException as exc:
            # Interrupted mid-call (pytest-timeout's signal, Ctrl-C): the request was sent,
            # and what became of it is part of the run.
            record(
                payload,
                response_model=None,
                prompt_tokens=None,
                completion_tokens=None,
                retries=0,
                finish_reason=None,
                error=redact(f"interrupted: {type(exc).__name__}: {exc}".splitlines()[0])[:500],
                error_type="Interrupted",
            )
            raise
        content = reply.content
        record(
            [*payload, {"role": "assistant", "content": content}],
            response_model=reply.model,
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=reply.completion_tokens,
            retries=reply.retries,
            finish_reason=reply.finish_reason,
            error=None if content is not None else "the reply has no message content",
            error_type=None if content is not None else "EmptyReply",
            record=plan.record,
        )
        if content is None:
            raise LLMCallError(
                f"{type(self).__name__}: model {bot.model_name!r} replied with no message "
                f"content (finish_reason={reply.finish_reason!r})",
                cause_type="EmptyReply",
            )
        plan.answered()
        self._check_cut(bot, content, reply.finish_reason, request, cut_ok)
        return content

    def _check_cut(
        self,
        bot: BotRecord,
        content: str,
        finish_reason: str | None,
        request: dict[str, Any],
        cut_ok: bool,
    ) -> None:
        """Raise :class:`TruncatedReply` for a reply the model stopped at ``max_tokens``."""
        __tracebackhide__ = True
        if finish_reason != "length" or cut_ok:
            return
        bound = request.get("max_tokens", request.get("max_completion_tokens"))
        name = type(self).__name__
        where = (
            "the embedded model's default bound; pass max_tokens=N to the bot to change it"
            if self._default_max_tokens(endpoint.settings()) is not None
            else "the bot's own; raise it"
        )
        raise TruncatedReply(
            f"{name}: model {bot.model_name!r} stopped at max_tokens={bound} "
            f"(finish_reason 'length'), so its reply is cut and was not re-asked "
            f"(max_tokens={bound} is {where}, or ask for a shorter reply, e.g. max_length "
            f"on the schema's strings). The reply ends {redact(content[-120:])!r}",
            raw_reply=content,
            max_tokens=bound if isinstance(bound, int) else None,
        )


_TIMEOUT = "APITimeoutError"


def _timeout_hint(current: endpoint.ClientSettings, request: dict[str, Any]) -> str:
    """Why a request times out, and how to bound it."""
    bound = request.get("max_tokens", request.get("max_completion_tokens"))
    hint = (
        f" (the endpoint did not finish a reply within --llm-timeout {current.timeout:g} s: "
        "the model may still have been generating"
    )
    if bound is None:
        hint += "; bound its replies with max_tokens=N on the bot, or max_length on the "
        hint += "schema's strings"
    if current.fresh_seed:
        hint += (
            "; the embedded model answers one request at a time, so under -n N requests "
            "queue: raise --llm-timeout, or run fewer workers"
        )
    return hint + ")"


async def _off_loop(function: Callable[..., Any], *args: Any) -> Any:
    """``function(*args)`` on a thread of the bots' pool, awaited: the event loop goes on
    meanwhile, and the call is recorded in the awaiting task's run."""
    global _pool
    import asyncio
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    with _pool_lock:
        if _pool is None:
            # One thread per call in flight: a call waits on the network, not the CPU.
            _pool = ThreadPoolExecutor(MAX_CONCURRENCY, thread_name_prefix="llmexp-acall")
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_pool, context.run, function, *args)


_pool: Any = None
_pool_lock = threading.Lock()


class SimpleBot(_Bot):
    """A chat bot: ``bot("question")`` returns the assistant's reply as a :class:`Message`."""

    def __init__(
        self,
        system_prompt: MessageLike | None = None,
        model_name: str | None = None,
        temperature: float | None = None,
        **completion_kwargs: Any,
    ) -> None:
        super().__init__(system_prompt, model_name, temperature, completion_kwargs)

    def __call__(self, *messages: MessageInput) -> Message:
        __tracebackhide__ = True
        conversation = to_messages(messages, type(self).__name__)
        # A bound the bot sets itself asks for the cut; the endpoint's default does not.
        cut_ok = bool(self.completion_kwargs.keys() & _LENGTH_ARGUMENTS)
        return Message(role="assistant", content=self._complete(conversation, cut_ok=cut_ok))

    async def acall(self, *messages: MessageInput) -> Message:
        """``await bot.acall("question")``: the same call as ``bot("question")``, recorded the
        same way, for an ``async def`` test; the event loop goes on while it waits."""
        __tracebackhide__ = True
        reply: Message = await _off_loop(self.__call__, *messages)
        return reply


class StructuredBot(_Bot, Generic[ModelT]):
    """A bot whose replies are instances of ``pydantic_model`` (JSON schema structured output).

    A reply that does not validate is re-asked, with the validation errors, up to
    ``max_validation_retries`` times; then :class:`StructuredOutputError` carries the last reply.
    """

    def __init__(
        self,
        system_prompt: MessageLike | None = None,
        *,
        pydantic_model: type[ModelT],
        model_name: str | None = None,
        temperature: float | None = None,
        max_validation_retries: int = 2,
        **completion_kwargs: Any,
    ) -> None:
        from pydantic import BaseModel

        if not (isinstance(pydantic_model, type) and issubclass(pydantic_model, BaseModel)):
            raise BotError(
                f"StructuredBot: pydantic_model must be a pydantic BaseModel subclass, got "
                f"{pydantic_model!r}"
            )
        if (
            isinstance(max_validation_retries, bool)
            or not isinstance(max_validation_retries, int)
            or max_validation_retries < 0
        ):
            raise BotError(
                "StructuredBot: max_validation_retries must be an int >= 0, got "
                f"{max_validation_retries!r}"
            )
        self.pydantic_model = pydantic_model
        self.max_validation_retries = max_validation_retries
        self._schema = json_schema(pydantic_model)
        self._grammar_schema: dict[str, Any] | None = None
        super().__init__(system_prompt, model_name, temperature, completion_kwargs)

    def _response_schema(self) -> dict[str, Any]:
        return self._schema

    def _extra_params(self) -> dict[str, Any]:
        return {"max_validation_retries": self.max_validation_retries}

    def _response_format(self, kind: endpoint.StructuredOutput) -> dict[str, Any]:
        if kind == "json_object":
            if self._grammar_schema is None:
                self._grammar_schema = enumerate_int_ranges(self._schema)
            return {"type": "json_object", "schema": self._grammar_schema}
        return {
            "type": "json_schema",
            "json_schema": {"name": schema_name(self.pydantic_model), "schema": self._schema},
        }

    def _complete_json(self, conversation: list[Message]) -> str:
        """One completion in the endpoint's structured-output format.

        An endpoint that refuses ``json_schema`` is asked again with ``json_object`` plus the
        schema, and remembered, so later calls in this process go straight to ``json_object``.
        """
        __tracebackhide__ = True
        kind = endpoint.structured_output()
        try:
            return self._complete(
                conversation, cut_ok=False, response_format=self._response_format(kind)
            )
        except LLMCallError as exc:
            if kind != "json_schema" or not refuses_json_schema(exc.status_code, str(exc)):
                raise
        endpoint.remember_json_object()
        return self._complete(
            conversation, cut_ok=False, response_format=self._response_format("json_object")
        )

    def __call__(self, *messages: MessageInput) -> ModelT:
        __tracebackhide__ = True
        from pydantic import ValidationError

        conversation = to_messages(messages, type(self).__name__)
        attempts = 1 + self.max_validation_retries
        for attempt in range(1, attempts + 1):
            text = self._complete_json(conversation)
            try:
                return validate_reply(self.pydantic_model, text)
            except ValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}"
                    for e in exc.errors(include_url=False)
                )
                if attempt == attempts:
                    raise StructuredOutputError(
                        f"StructuredBot: the reply of model {self._model()!r} did not validate "
                        f"against {self.pydantic_model.__name__} after {attempts} attempt(s): "
                        f"{problems}. Last reply: {redact(text[:300])!r}",
                        raw_reply=text,
                        attempts=attempts,
                    ) from None
                conversation = [
                    *conversation,
                    Message(role="assistant", content=text),
                    Message(
                        role="user",
                        content=(
                            f"That reply does not match the JSON schema ({problems}). Reply "
                            "again with only a JSON object that matches the schema."
                        ),
                    ),
                ]
        raise AssertionError("unreachable")  # pragma: no cover

    async def acall(self, *messages: MessageInput) -> ModelT:
        """``await bot.acall(...)``: the same call as ``bot(...)``, recorded the same way,
        for an ``async def`` test; the event loop goes on while it waits."""
        __tracebackhide__ = True
        reply: ModelT = await _off_loop(self.__call__, *messages)
        return reply
