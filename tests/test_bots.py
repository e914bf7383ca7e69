"""Bots against the fake server, in-process, inside a run so every call is inspectable."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from pydantic import BaseModel, Field

from conftest import api_key, inside_run
from fakellm import FakeLLM
from pytest_llmexp import (
    BotError,
    LLMCallError,
    SimpleBot,
    StructuredBot,
    StructuredOutputError,
    TruncatedReply,
    prompt,
)
from pytest_llmexp._run import endpoint
from pytest_llmexp._run.recording import RunContext
from pytest_llmexp._util.redact import display_url, redact


@prompt("system")
def terse():
    """Answer in one word."""


class Verdict(BaseModel):
    score: int = Field(ge=1, le=10)
    reason: str


@pytest.fixture
def run(fake_llm: FakeLLM) -> Iterator[RunContext]:
    """A current run, and an endpoint with no retries so injected faults surface at once."""
    with inside_run("bots", timeout=5, max_retries=0) as context:
        yield context


def test_simple_bot_takes_strings_messages_and_lists(run: RunContext, fake_llm: FakeLLM) -> None:
    bot = SimpleBot(terse(), model_name="m1", temperature=0.2, max_tokens=20)
    assert bot("hi").content == "Reply to: hi"
    assert bot(terse(), "first", "second").content == "Reply to: second"
    assert bot(["a", "b"]).role == "assistant"
    first = fake_llm.requests[0]
    assert first["model"] == "m1" and first["temperature"] == 0.2 and first["max_tokens"] == 20
    assert first["messages"] == [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "hi"},
    ]
    record = run.finish("passed")
    assert len(record.calls) == 3 and len(record.bots) == 1
    assert record.bots[0].params["max_tokens"] == 20
    assert record.bots[0].system_prompt_hash == terse.hash
    assert [p.function_name for p in record.prompts] == ["terse"]
    assert record.calls[0].messages[-1] == {"role": "assistant", "content": "Reply to: hi"}
    # Nothing secret is recorded, and the client sent the key only in its header.
    assert api_key() not in record.model_dump_json()
    assert fake_llm.headers[0]["authorization"] == f"Bearer {api_key()}"


def test_structured_bot_returns_a_model(run: RunContext, fake_llm: FakeLLM) -> None:
    bot = StructuredBot(terse(), model_name="m", pydantic_model=Verdict)
    verdict = bot("judge this")
    assert isinstance(verdict, Verdict) and verdict.score == 1
    fmt = fake_llm.requests[0]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Verdict"
    assert fmt["json_schema"]["schema"] == Verdict.model_json_schema()


def test_invalid_reply_is_reasked_with_the_errors(run: RunContext, fake_llm: FakeLLM) -> None:
    replies = iter(['{"score": 0, "reason": "meh"}', '{"score": 7, "reason": "good"}'])
    fake_llm.responder = lambda request: next(replies)
    verdict = StructuredBot(model_name="m", pydantic_model=Verdict)("judge")
    assert verdict.score == 7
    second = fake_llm.requests[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": '{"score": 0, "reason": "meh"}'}
    assert "score: Input should be greater than or equal to 1" in second[-1]["content"]
    assert len(run.finish("passed").calls) == 2


def test_reply_that_never_validates_raises_with_the_last_reply(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    fake_llm.responder = lambda request: "not json at all"
    bot = StructuredBot(model_name="m", pydantic_model=Verdict, max_validation_retries=1)
    with pytest.raises(
        StructuredOutputError, match=r"did not validate against Verdict after 2"
    ) as info:
        bot("judge")
    assert info.value.raw_reply == "not json at all"
    assert info.value.attempts == 2
    assert info.value.error_type == "StructuredOutputError"
    assert len(fake_llm.requests) == 2


def test_http_errors_become_llm_call_errors_and_are_recorded(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    fake_llm.fail_next(
        500, body=json.dumps({"error": {"message": f"bad key {api_key()} rejected"}})
    )
    with pytest.raises(LLMCallError) as info:
        SimpleBot(model_name="m")("hi")
    assert info.value.error_type == "InternalServerError"
    assert api_key() not in str(info.value)
    assert "bad key sk-*** rejected" in str(info.value)
    call = run.finish("error").calls[0]
    assert call.error is not None and "InternalServerError" in call.error
    assert api_key() not in call.error
    assert call.retries == 0


def test_retries_are_counted(fake_llm: FakeLLM) -> None:
    # A 502 is retried (a 429, or a 503 that says when to come back, is waited out instead).
    fake_llm.fail_next(502, headers={"retry-after-ms": "1"})
    with inside_run("bots", timeout=5, max_retries=2) as context:
        assert SimpleBot(model_name="m")("hi").content == "Reply to: hi"
    assert context.finish("passed").calls[0].retries == 1


def test_timeout_is_explicit(fake_llm: FakeLLM) -> None:
    fake_llm.latency = 1.0
    with (
        inside_run("bots", timeout=0.2, max_retries=0),
        pytest.raises(LLMCallError) as info,
    ):
        SimpleBot(model_name="m")("hi")
    assert info.value.error_type == "APITimeoutError"
    # The message says what the timeout was and how to bound a reply that runs on.
    assert "--llm-timeout 0.2 s" in str(info.value)
    assert "max_tokens=N" in str(info.value)


@pytest.mark.parametrize("own", [False, True])
def test_a_reply_that_trickles_is_timed_out_as_a_whole(fake_llm: FakeLLM, own: bool) -> None:
    # About 250 bytes at 20 ms each: five seconds, each read well within the timeout.
    fake_llm.trickle = 0.02
    started = time.monotonic()
    with (
        inside_run("bots", timeout=5 if own else 0.5, max_retries=0),
        pytest.raises(LLMCallError) as info,
    ):
        SimpleBot(model_name="m", **({"timeout": 0.5} if own else {}))("hi")
    assert info.value.cause_type == "APITimeoutError"
    assert time.monotonic() - started < 2.5


def test_a_timeout_at_the_embedded_model_says_requests_queue(fake_llm: FakeLLM) -> None:
    fake_llm.latency = 1.0
    with (
        inside_run("bots", timeout=0.2, max_retries=0, max_tokens=64, fresh_seed=True),
        pytest.raises(LLMCallError) as info,
    ):
        SimpleBot(model_name="m")("hi")
    message = str(info.value)
    assert "one request at a time" in message and "raise --llm-timeout" in message
    # The reply was bounded already, so the hint does not ask for a bound.
    assert "max_tokens=N" not in message


def test_a_structured_reply_cut_at_max_tokens_is_truncated_and_not_re_asked(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    fake_llm.finish_reason = "length"
    fake_llm.responder = lambda request: '{"score": 3, "reason": "it was cut'
    bot = StructuredBot(pydantic_model=Verdict, model_name="m", max_tokens=60)
    with pytest.raises(TruncatedReply) as info:
        bot("judge")
    assert len(fake_llm.requests) == 1  # a re-ask would be cut again
    error = info.value
    assert error.error_type == "TruncatedReply" and error.max_tokens == 60
    assert "max_tokens=60" in str(error) and "finish_reason 'length'" in str(error)
    assert "the bot's own; raise it" in str(error)
    assert error.raw_reply.endswith("it was cut")
    call = run.finish("error").calls[0]
    assert call.finish_reason == "length" and call.error is None


def test_a_plain_reply_cut_at_the_bots_own_max_tokens_is_returned(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    fake_llm.finish_reason = "length"
    assert SimpleBot(model_name="m", max_tokens=5)("hi").content == "Reply to: hi"


def test_the_endpoints_default_max_tokens_is_sent_recorded_and_overridable(
    fake_llm: FakeLLM,
) -> None:
    with inside_run("bots", timeout=5, max_retries=0, max_tokens=64) as context:
        SimpleBot(model_name="m")("hi")
        SimpleBot(model_name="m", max_tokens=9)("hi")
        SimpleBot(model_name="m", max_completion_tokens=9)("hi")
        fake_llm.finish_reason = "length"
        # A cut the bot did not ask for is an error, naming the default and the way out.
        with pytest.raises(TruncatedReply, match="the embedded model's default bound"):
            SimpleBot(model_name="m")("hi")
    sent = [(r.get("max_tokens"), r.get("max_completion_tokens")) for r in fake_llm.requests]
    assert sent == [(64, None), (9, None), (None, 9), (64, None)]
    bots = {b.params.get("max_tokens") for b in context.finish("error").bots}
    assert bots == {64, 9, None}


def test_the_embedded_model_gets_a_fresh_seed_per_call_recorded_not_in_the_key(
    fake_llm: FakeLLM,
) -> None:
    with inside_run("bots", timeout=5, max_retries=0, fresh_seed=True) as seeded:
        SimpleBot(model_name="m", temperature=0.7)("hi")
        SimpleBot(model_name="m", temperature=0.7)("hi")
    with inside_run("bots", timeout=5, max_retries=0) as plain:
        SimpleBot(model_name="m", temperature=0.7)("hi")
        SimpleBot(model_name="m", temperature=0.7, seed=42)("hi")
    seeds = [r.get("seed") for r in fake_llm.requests]
    assert isinstance(seeds[0], int) and isinstance(seeds[1], int) and seeds[0] != seeds[1]
    assert seeds[2:] == [None, 42]
    calls = seeded.finish("passed").calls
    assert [c.seed for c in calls] == seeds[:2]
    plain_calls = plain.finish("passed").calls
    assert [c.seed for c in plain_calls] == [None, 42]
    # The seed is not part of the replay key: the same call, seeded or not, has one key.
    assert calls[0].cache_key == plain_calls[0].cache_key


def test_model_override_is_what_gets_called_and_recorded(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    endpoint.configure(endpoint.ClientSettings(timeout=5, max_retries=0, model="override"))
    SimpleBot(model_name="own")("hi")
    assert fake_llm.requests[0]["model"] == "override"
    record = run.finish("passed")
    assert record.bots[0].model_name == "override" and record.calls[0].model_name == "override"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: SimpleBot(model_name=""), r"model_name must be a non-empty string"),
        (
            lambda: SimpleBot(model_name="m", temperature=3),
            r"temperature must be a number from 0 to 2, got 3",
        ),
        (lambda: SimpleBot(model_name="m", temperature="hot"), r"got 'hot'"),
        (lambda: SimpleBot(model_name="m", stream=True), r"sets stream itself; remove stream="),
        (lambda: SimpleBot(model_name="m", messages=[]), r"sets messages itself"),
        (lambda: SimpleBot(model_name="m", seed=object()), r"must be JSON-serializable"),
        (
            lambda: SimpleBot(model_name="m", max_token=5),
            r"got 'max_token', which the openai client's chat.completions.create does not take "
            r"\(did you mean 'max_tokens'\?\); pass what an endpoint accepts beyond the API in "
            r"extra_body",
        ),
        (lambda: SimpleBot(model_name="m", zzz=1, top_k=2), r"got 'top_k', 'zzz', which"),
        (lambda: SimpleBot(42, model_name="m"), r"system prompt must be a string or a @prompt"),
        (
            lambda: StructuredBot(model_name="m", pydantic_model=dict),
            r"pydantic_model must be a pydantic BaseModel",
        ),
        (
            lambda: StructuredBot(
                model_name="m", pydantic_model=Verdict, max_validation_retries=-1
            ),
            r"max_validation_retries must be an int >= 0",
        ),
    ],
)
def test_bad_configuration_is_refused(build, message: str) -> None:
    with pytest.raises(BotError, match=message):
        build()


def test_request_options_travel_as_the_client_sends_them(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    bot = SimpleBot(
        model_name="m",
        extra_headers={"X-Team": "evals"},
        extra_query={"api-version": "2"},
        extra_body={"top_k": 3},
        timeout=7.5,
    )
    assert bot("hi").content == "Reply to: hi"
    assert fake_llm.headers[0]["x-team"] == "evals"
    assert fake_llm.paths[0] == "/v1/chat/completions?api-version=2"
    request = fake_llm.requests[0]
    assert request["top_k"] == 3
    assert not {"extra_headers", "extra_query", "extra_body", "timeout"} & request.keys()
    # The options are part of the bot's recorded configuration, as its other arguments are.
    assert run.finish("passed").bots[0].params["extra_body"] == {"top_k": 3}


def test_a_bots_own_timeout_overrides_the_endpoints(run: RunContext, fake_llm: FakeLLM) -> None:
    fake_llm.latency = 1.0
    with pytest.raises(LLMCallError) as info:
        SimpleBot(model_name="m", timeout=0.2)("hi")
    assert info.value.cause_type == "APITimeoutError"


def test_a_reply_without_usage_or_model_is_recorded_as_unknown(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    reply = {"choices": [{"message": {"content": "ok"}}], "usage": {"prompt_tokens": "7"}}
    fake_llm.fail_next(200, body=json.dumps(reply))
    assert SimpleBot(model_name="m")("hi").content == "ok"
    call = run.finish("passed").calls[0]
    assert (call.prompt_tokens, call.completion_tokens) == (None, None)
    assert (call.response_model, call.finish_reason, call.error) == (None, None, None)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("[]", "it is a JSON list, not an object"),
        ('{"choices": []}', "it has no choices"),
        ('{"choices": [{"message": null}]}', "its first choice has no message"),
        ('{"choices": [{"message": {"content": 3}}]}', "message content is int, not a string"),
        ("", "Expecting value"),
    ],
)
def test_a_reply_of_another_shape_is_a_malformed_response(
    run: RunContext, fake_llm: FakeLLM, body: str, why: str
) -> None:
    fake_llm.fail_next(200, body=body)
    with pytest.raises(LLMCallError, match="is not a chat completion") as info:
        SimpleBot(model_name="m")("hi")
    assert info.value.cause_type == "MalformedResponse"
    assert why in str(info.value) and f"body starts {body[:200]!r}" in str(info.value)
    assert run.finish("error").calls[0].error_type == "MalformedResponse"


def test_user_message_as_system_prompt_is_refused() -> None:
    @prompt("user")
    def question():
        """Why?"""

    with pytest.raises(BotError, match=r"system prompt has role 'user'"):
        SimpleBot(question(), model_name="m")


def test_bad_call_arguments(run: RunContext) -> None:
    bot = SimpleBot(model_name="m")
    with pytest.raises(BotError, match=r"called with no message"):
        bot()
    with pytest.raises(BotError, match=r"takes strings and messages .*got int: 3"):
        bot(3)


def test_no_model_anywhere_is_a_clear_error(run: RunContext) -> None:
    with pytest.raises(
        BotError, match=r"has no model: pass model_name=... or run with --llm-model"
    ):
        SimpleBot()("hi")


def test_no_key_and_no_endpoint_is_a_clear_error(
    run: RunContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(BotError, match=r"no API key and no endpoint: set OPENAI_API_KEY"):
        SimpleBot(model_name="m")("hi")


def test_endpoint_without_key_gets_a_placeholder(
    run: RunContext, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    assert SimpleBot(model_name="m")("hi").content == "Reply to: hi"
    assert fake_llm.headers[0]["authorization"] == "Bearer no-key-needed"


def test_display_url_strips_credentials() -> None:
    assert display_url("https://user:pw@host:8443/v1?key=abc#x") == "https://host:8443/v1"
    assert "openai default" in display_url(None)


def test_redact_masks_keys_and_url_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "plainsecretvalue")
    text = "key plainsecretvalue, other sk-proj-abcdefghijkl, url https://me:pw@host/v1"
    assert redact(text) == "key pla***, other sk-proj-a***, url https://***@host/v1"
