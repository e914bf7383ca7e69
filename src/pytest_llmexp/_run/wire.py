"""The openai APIs' payloads as the store keeps them: a request as chat messages and
parameters, a reply (whole or streamed, chat completions or responses) as one assistant
message with its usage, and back again, a stored reply as the endpoint would send it.

Stdlib only, and no client: it reads and writes JSON, as the endpoint and the client do.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import Entry

__all__ = [
    "NOT_PARAMS",
    "Reply",
    "count_of",
    "error_name",
    "read_reply",
    "replay_body",
    "request_messages",
    "response_schema",
    "text_of",
]

#: The body fields that are the conversation, the model, or how the reply travels: the
#: rest are the call's parameters (what the cache key and the bot row hold).
NOT_PARAMS = frozenset(
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


def request_messages(api: str, body: dict[str, Any]) -> list[dict[str, Any]]:
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


def response_schema(api: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema the request asks the reply to follow, if any: chat's
    ``response_format.json_schema.schema``, or responses' ``text.format.schema``."""
    if api == "chat.completions":
        form = params.get("response_format")
        holder = form.get("json_schema") if isinstance(form, dict) else None
    else:
        text = params.get("text")
        form = holder = text.get("format") if isinstance(text, dict) else None
    if not isinstance(form, dict) or form.get("type") != "json_schema":
        return None
    schema = holder.get("schema") if isinstance(holder, dict) else None
    return schema if isinstance(schema, dict) else None


class Reply:
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
        self.model = text_of(model)
        usage = usage if isinstance(usage, dict) else {}
        self.prompt_tokens = count_of(usage.get(names[0]))
        self.completion_tokens = count_of(usage.get(names[1]))
        self.finish_reason = text_of(finish_reason)
        self.error = error


def count_of(value: Any) -> int | None:
    """A token count as the endpoint gave it; anything but a whole number is unknown."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def text_of(value: Any) -> str | None:
    """A text field as the endpoint gave it; anything but a string is unknown."""
    return value if isinstance(value, str) else None


def error_name(status: int) -> str:
    """The name the ``openai`` client gives the error of an HTTP status."""
    return _STATUS_ERRORS.get(status, "InternalServerError" if status >= 500 else "APIStatusError")


def read_reply(api: str, stream: bool, text: str) -> Reply:
    """A reply's text (JSON, or a server-sent event stream) as one message with its usage;
    a reply of another shape raises ``ValueError``, ``TypeError``, ``KeyError`` or
    ``AttributeError``."""
    if api == "chat.completions":
        return _chat_stream(text) if stream else _chat(json.loads(text))
    return _responses_stream(text) if stream else _responses(json.loads(text))


def _chat(completion: dict[str, Any]) -> Reply:
    choice = completion["choices"][0]
    message = {k: v for k, v in choice["message"].items() if v is not None or k == "content"}
    message.setdefault("role", "assistant")
    return Reply(
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


def _chat_stream(text: str) -> Reply:
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
    return Reply(
        message,
        model=model,
        usage=usage,
        finish_reason=finish,
        error=None if finish else "the stream ended before its finish reason (read in part)",
    )


def _responses(response: dict[str, Any]) -> Reply:
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
    return Reply(
        message,
        model=response.get("model"),
        usage=response.get("usage"),
        finish_reason=response.get("status"),
        names=("input_tokens", "output_tokens"),
    )


def _responses_stream(text: str) -> Reply:
    deltas: list[str] = []
    for event in _events(text):
        if event.get("type") in ("response.completed", "response.incomplete", "response.failed"):
            return _responses(event["response"])
        if event.get("type") == "response.output_text.delta":
            deltas.append(event.get("delta") or "")
    return Reply(
        {"role": "assistant", "content": "".join(deltas) or None},
        error="the stream ended before the response completed (read in part)",
    )


# -- replay ------------------------------------------------------------------------------


def replay_body(
    api: str, stream: bool, model: str, message: dict[str, Any], entry: Entry
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
    model: str, message: dict[str, Any], entry: Entry, prompt: int, completion: int
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
