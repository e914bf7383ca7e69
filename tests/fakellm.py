"""A fake OpenAI-compatible server on 127.0.0.1 (chat completions and responses), for tests.

It speaks real HTTP so that the real ``openai`` client is exercised. Replies are
deterministic: a JSON-schema request gets an instance generated from the schema, any other
request gets ``"Reply to: <last user message>"``. Tests can script replies (``responder``:
a text, or an assistant message with ``tool_calls``), inject errors (``fail_next``) and
latency, and read what was requested (``requests``). ``stream: true`` is answered with
server-sent events, as OpenAI sends them.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: A reply's text, or an assistant message (``content``, ``tool_calls``, ``refusal``).
Responder = Callable[[dict[str, Any]], str | dict[str, Any]]
# What OpenAI answers past a rate limit (with a Retry-After header).
RATE_LIMITED = (
    '{"error": {"message": "Rate limit reached", "type": "requests", '
    '"code": "rate_limit_exceeded"}}'
)
# What llama-cpp-python 0.3.36's server answers to response_format={"type": "json_schema"}.
LLAMA_CPP_REFUSAL = json.dumps(
    {
        "error": {
            "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', "
            "'response_format', 'type'), 'msg': \"Input should be 'text' or 'json_object'\", "
            "'input': 'json_schema'}",
            "type": "internal_server_error",
        }
    }
)


@dataclass
class Failure:
    status: int
    body: str = '{"error": {"message": "injected failure", "type": "server_error"}}'
    headers: dict[str, str] = field(default_factory=dict)


def instance_from_schema(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """A small value that validates against ``schema`` (the subset pydantic emits)."""
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return instance_from_schema(root["$defs"][name], root)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return instance_from_schema(options[0], root)
    kind = schema.get("type", "object")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: instance_from_schema(sub, root) for name, sub in props.items()}
    if kind == "array":
        return [instance_from_schema(schema.get("items", {}), root)]
    if kind == "string":
        text = "fake " + str(schema.get("title", "text")).lower()
        return text[: schema.get("maxLength", len(text))]
    if kind == "integer":
        return int(schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1))
    if kind == "number":
        return float(schema.get("minimum", 0.5))
    if kind == "boolean":
        return True
    return None


def default_reply(request: dict[str, Any]) -> str:
    fmt = request.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return json.dumps(instance_from_schema(fmt["json_schema"]["schema"]))
    if fmt.get("type") == "json_object" and "schema" in fmt:
        return json.dumps(instance_from_schema(fmt["schema"]))
    users = [m.get("content") for m in _messages(request) if m.get("role") == "user"]
    return f"Reply to: {users[-1] if users else ''}{MODEL_STYLES.get(request.get('model'), '')}"


#: Models whose replies differ from the default one, so that variants of a model sweep
#: differ: a larger model says more (more tokens, a longer name).
MODEL_STYLES = {"fake-large": " (answered at length, with care and in some detail)"}


def _messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat request's messages; a responses request's instructions and input as messages."""
    if "messages" in request:
        return list(request["messages"])
    messages = []
    if request.get("instructions"):
        messages.append({"role": "system", "content": request["instructions"]})
    given = request.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        messages += [m for m in given if isinstance(m, dict) and "role" in m]
    return messages


class FakeLLM:
    """The server's state: scripted replies, injected failures, recorded requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.responder: Responder = default_reply
        self.latency = 0.0
        #: Answer a json_schema response format as llama-cpp-python's server does: HTTP 500.
        self.refuse_json_schema = False
        #: The finish_reason of every reply ("length": cut at max_tokens).
        self.finish_reason = "stop"
        #: Seconds between the bytes of a reply's body (0: sent at once).
        self.trickle = 0.0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        #: Each request's path, with its query string.
        self.paths: list[str] = []
        #: When each request arrived (time.monotonic()).
        self.times: list[float] = []
        self._failures: deque[Failure] = deque()
        #: Requests being answered now, and the most there ever were at once.
        self.in_flight = 0
        self.peak_in_flight = 0
        #: Admit this many requests a second; answer the others 429 with Retry-After.
        self.admit_per_second: float | None = None
        self.retry_after = "1"
        #: Requests answered 429 because of admit_per_second.
        self.throttled = 0
        self._admitted: deque[float] = deque()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "the fake server is not running"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def reset(self) -> None:
        with self._lock:
            self.responder = default_reply
            self.latency = 0.0
            self.refuse_json_schema = False
            self.finish_reason = "stop"
            self.trickle = 0.0
            self.requests.clear()
            self.headers.clear()
            self.paths.clear()
            self.times.clear()
            self._failures.clear()
            self.in_flight = self.peak_in_flight = self.throttled = 0
            self.admit_per_second = None
            self.retry_after = "1"
            self._admitted.clear()

    def fail_next(self, status: int, times: int = 1, **kwargs: Any) -> None:
        """Answer the next ``times`` requests with HTTP ``status``."""
        with self._lock:
            self._failures.extend(Failure(status, **kwargs) for _ in range(times))

    def start(self) -> FakeLLM:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def _handle(
        self, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, dict[str, str]]:
        route = path.split("?")[0].rstrip("/")
        if not route.endswith(("/chat/completions", "/responses")):
            return 404, '{"error": {"message": "not found"}}', {}
        arrived = time.monotonic()
        request = json.loads(body)
        with self._lock:
            self.requests.append(request)
            self.headers.append(headers)
            self.paths.append(path)
            self.times.append(arrived)
            failure = self._failures.popleft() if self._failures else None
            responder, latency = self.responder, self.latency
            refuse = self.refuse_json_schema
            finish_reason = self.finish_reason
            if failure is None and self.admit_per_second is not None:
                while self._admitted and arrived - self._admitted[0] >= 1.0:
                    self._admitted.popleft()
                if len(self._admitted) >= self.admit_per_second:
                    self.throttled += 1
                    latency = 0.0  # refused at once
                    failure = Failure(
                        429, body=RATE_LIMITED, headers={"retry-after": self.retry_after}
                    )
                else:
                    self._admitted.append(arrived)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return self._answer(request, failure, responder, latency, refuse, finish_reason)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(
        self,
        request: dict[str, Any],
        failure: Failure | None,
        responder: Responder,
        latency: float,
        refuse: bool,
        finish_reason: str,
    ) -> tuple[int, str, dict[str, str]]:
        if latency:
            time.sleep(latency)
        if failure is not None:
            return failure.status, failure.body, failure.headers
        if refuse and (request.get("response_format") or {}).get("type") == "json_schema":
            return 500, LLAMA_CPP_REFUSAL, {}
        answer = responder(request)
        message = {"content": answer} if isinstance(answer, str) else dict(answer)
        content = message.get("content")
        words = len((content or "").split())
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in _messages(request))
        if message.get("tool_calls"):
            finish_reason = "tool_calls"
        if "messages" not in request:
            return _response_reply(request, message, prompt_words, words, len(self.requests))
        if request.get("stream"):
            return _chat_stream(request, message, prompt_words, words, finish_reason)
        reply = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", **message},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": words,
                "total_tokens": prompt_words + words,
            },
        }
        return 200, json.dumps(reply), {}


_SSE = {"content-type": "text/event-stream"}


def _events(events: list[Any]) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"


def _chat_stream(
    request: dict[str, Any], message: dict[str, Any], prompt: int, words: int, finish: str
) -> tuple[int, str, dict[str, str]]:
    """A chat completion as OpenAI streams it: the text word by word, tool calls in two
    pieces each, the finish reason, and the usage when ``stream_options`` asks for it."""
    base = {"id": "chatcmpl-stream", "object": "chat.completion.chunk", "created": 0}
    base["model"] = request["model"]

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return {**base, "choices": [choice]}

    events = [chunk({"role": "assistant", "content": ""})]
    text = message.get("content") or ""
    pieces = text.split(" ")
    events += [chunk({"content": p if i == 0 else " " + p}) for i, p in enumerate(pieces) if text]
    for index, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        half = len(arguments) // 2
        head = {"index": index, "id": call["id"], "type": "function"}
        head["function"] = {"name": call["function"]["name"], "arguments": arguments[:half]}
        events.append(chunk({"tool_calls": [head]}))
        tail = {"index": index, "function": {"arguments": arguments[half:]}}
        events.append(chunk({"tool_calls": [tail]}))
    events.append(chunk({}, finish))
    if (request.get("stream_options") or {}).get("include_usage"):
        usage = {"prompt_tokens": prompt, "completion_tokens": words}
        events.append({**base, "choices": [], "usage": {**usage, "total_tokens": prompt + words}})
    return 200, _events(events), _SSE


def _response_reply(
    request: dict[str, Any], message: dict[str, Any], prompt: int, words: int, number: int
) -> tuple[int, str, dict[str, str]]:
    """A responses API reply: a message output item, and a function call item per tool call."""
    output: list[dict[str, Any]] = []
    if message.get("content") is not None:
        part = {"type": "output_text", "text": message["content"], "annotations": []}
        output.append(
            {
                "type": "message",
                "id": f"msg_{number}",
                "role": "assistant",
                "status": "completed",
                "content": [part],
            }
        )
    for call in message.get("tool_calls") or []:
        output.append(
            {
                "type": "function_call",
                "id": f"fc_{call['id']}",
                "call_id": call["id"],
                "name": call["function"]["name"],
                "arguments": call["function"]["arguments"],
                "status": "completed",
            }
        )
    reply = {
        "id": f"resp_{number}",
        "object": "response",
        "created_at": 0,
        "status": "completed",
        "model": request["model"],
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": request.get("instructions"),
        "metadata": {},
        "temperature": None,
        "top_p": None,
        "usage": {
            "input_tokens": prompt,
            "output_tokens": words,
            "total_tokens": prompt + words,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }
    if not request.get("stream"):
        return 200, json.dumps(reply), {}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**reply, "status": "in_progress", "output": []}}
    ]
    for index, item in enumerate(output):
        if item["type"] != "message":
            events.append(
                {"type": "response.output_item.added", "output_index": index, "item": item}
            )
            events.append(
                {"type": "response.output_item.done", "output_index": index, "item": item}
            )
            continue
        where = {"item_id": item["id"], "output_index": index, "content_index": 0}
        empty = {"type": "output_text", "text": "", "annotations": []}
        events.append(
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item, "status": "in_progress", "content": []},
            }
        )
        events.append({"type": "response.content_part.added", **where, "part": empty})
        text = item["content"][0]["text"]
        events += [
            {
                "type": "response.output_text.delta",
                **where,
                "delta": w if i == 0 else " " + w,
                "logprobs": [],
            }
            for i, w in enumerate(text.split(" ") if text else [])
        ]
        events.append({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
        events.append({"type": "response.content_part.done", **where, "part": item["content"][0]})
        events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    events.append({"type": "response.completed", "response": reply})
    for number_, event in enumerate(events):
        event["sequence_number"] = number_
    body = "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
    return 200, body, _SSE


def _make_handler(state: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Without this, a reused connection stalls ~40 ms per request on delayed ACKs.
        disable_nagle_algorithm = True

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, text, extra = state._handle(self.path, headers, body)
            data = text.encode()
            self.send_response(status)
            if "content-type" not in extra:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            if not state.trickle:
                self.wfile.write(data)
                return
            try:  # one byte at a time, until the client gives up
                for byte in data:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(state.trickle)
            except OSError:
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
