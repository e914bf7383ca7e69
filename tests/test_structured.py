"""Structured output across endpoints: json_schema, the json_object fallback, schema rewrites."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import BaseModel, Field

from conftest import inside_run
from fakellm import FakeLLM
from pytest_llmexp import LLMCallError, StructuredBot
from pytest_llmexp._run import endpoint
from pytest_llmexp._run.recording import RunContext
from pytest_llmexp._run.structured import enumerate_int_ranges, refuses_json_schema


class Verdict(BaseModel):
    score: int = Field(ge=1, le=10)
    reason: str = Field(max_length=40)


class Label(BaseModel):
    label: str


@pytest.fixture
def run(fake_llm: FakeLLM) -> Iterator[RunContext]:
    with inside_run("structured", timeout=5, max_retries=0) as context:
        yield context


def formats(fake_llm: FakeLLM) -> list[str]:
    return [r["response_format"]["type"] for r in fake_llm.requests]


def test_endpoint_refusing_json_schema_is_asked_with_json_object_from_then_on(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    fake_llm.refuse_json_schema = True
    bot = StructuredBot(model_name="m", pydantic_model=Verdict)
    assert bot("first").score == 1
    assert bot("second").score == 1
    # Another bot on the same endpoint does not ask with json_schema again either.
    assert StructuredBot(model_name="m", pydantic_model=Label)("third").label
    assert formats(fake_llm) == ["json_schema", "json_object", "json_object", "json_object"]
    sent = fake_llm.requests[1]["response_format"]["schema"]
    assert sent["properties"]["score"]["enum"] == list(range(1, 11))
    assert sent["properties"]["reason"] == Verdict.model_json_schema()["properties"]["reason"]
    # The refused call is recorded as the failed call it was; the run goes on.
    calls = run.finish("passed").calls
    assert len(calls) == 4
    assert calls[0].error is not None and "json_object" in calls[0].error
    assert [c.error for c in calls[1:]] == [None, None, None]


def test_other_server_errors_are_errors_and_keep_json_schema(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    fake_llm.fail_next(500)
    bot = StructuredBot(model_name="m", pydantic_model=Verdict)
    with pytest.raises(LLMCallError, match="injected failure") as info:
        bot("first")
    assert info.value.status_code == 500
    assert bot("second").score == 1
    assert formats(fake_llm) == ["json_schema", "json_schema"]


def test_what_an_endpoint_refused_is_forgotten_when_settings_change(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    fake_llm.refuse_json_schema = True
    bot = StructuredBot(model_name="m", pydantic_model=Label)
    bot("first")
    endpoint.configure(endpoint.ClientSettings(timeout=5, max_retries=0))
    fake_llm.refuse_json_schema = False
    bot("second")
    assert formats(fake_llm) == ["json_schema", "json_object", "json_schema"]


def test_an_endpoint_known_to_take_json_object_is_never_asked_json_schema(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    endpoint.configure(endpoint.ClientSettings(max_retries=0, structured_output="json_object"))
    assert StructuredBot(model_name="m", pydantic_model=Verdict)("x").score == 1
    assert formats(fake_llm) == ["json_object"]


def test_a_local_model_is_recorded_by_file_and_sha256(run: RunContext, fake_llm: FakeLLM) -> None:
    sha = "ab" * 32
    endpoint.configure(
        endpoint.ClientSettings(
            model="weights.gguf", label="local llama.cpp server", model_sha256=sha
        )
    )
    StructuredBot(model_name="gpt-4o-mini", pydantic_model=Label)("x")
    assert fake_llm.requests[0]["model"] == "weights.gguf"
    record = run.finish("passed")
    bot = record.bots[0]
    assert bot.model_name == "weights.gguf"
    assert bot.params["base_url"] == "local llama.cpp server"
    assert bot.params["model_sha256"] == sha
    assert record.calls[0].model_name == "weights.gguf"


@pytest.mark.parametrize(
    ("node", "enum"),
    [
        ({"type": "integer", "minimum": 1, "maximum": 10}, list(range(1, 11))),
        ({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 4}, [1, 2, 3]),
        ({"type": "integer", "minimum": 0.5, "maximum": 2.5}, [1, 2]),
        ({"type": "integer", "minimum": 1, "exclusiveMinimum": 2, "maximum": 4}, [3, 4]),
        ({"type": "integer", "minimum": -2, "maximum": -2}, [-2]),
    ],
)
def test_small_integer_ranges_are_also_given_as_enums(node: dict, enum: list[int]) -> None:
    assert enumerate_int_ranges(node) == {**node, "enum": enum}


@pytest.mark.parametrize(
    "node",
    [
        {"type": "integer", "minimum": 1},  # unbounded above
        {"type": "integer", "minimum": 0, "maximum": 10_000},  # too many values
        {"type": "integer", "minimum": 5, "maximum": 1},  # empty
        {"type": "integer", "minimum": 1, "maximum": 3, "enum": [2]},  # already one
        {"type": "number", "minimum": 1, "maximum": 3},  # not integers
    ],
)
def test_other_nodes_are_left_alone(node: dict) -> None:
    assert enumerate_int_ranges(node) == node


def test_ranges_are_found_anywhere_in_the_schema() -> None:
    class Inner(BaseModel):
        stars: int = Field(ge=1, le=5)

    class Outer(BaseModel):
        items: list[Inner]
        maybe: int | None = Field(default=None, ge=0, le=2)

    schema = Outer.model_json_schema()
    rewritten = enumerate_int_ranges(schema)
    assert rewritten["$defs"]["Inner"]["properties"]["stars"]["enum"] == [1, 2, 3, 4, 5]
    options = rewritten["properties"]["maybe"]["anyOf"]
    assert {"type": "integer", "minimum": 0, "maximum": 2, "enum": [0, 1, 2]} in options
    assert schema == Outer.model_json_schema(), "the input schema is not modified"


@pytest.mark.parametrize(
    ("status", "message", "refused"),
    [
        (500, "Input should be 'text' or 'json_object'", True),
        (400, "Invalid parameter: response_format", True),
        (422, "json_schema is not supported", True),
        (500, "injected failure", False),
        (401, "response_format", False),
        (None, "json_schema", False),
    ],
)
def test_what_counts_as_refusing_json_schema(
    status: int | None, message: str, refused: bool
) -> None:
    assert refuses_json_schema(status, message) is refused


def test_raw_control_characters_in_strings_are_read_as_themselves(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    fake_llm.responder = lambda request: '{"score": 3, "reason": "line one\nline\ttwo"}'
    verdict = StructuredBot(model_name="m", pydantic_model=Verdict)("x")
    assert verdict.reason == "line one\nline\ttwo"
    assert len(fake_llm.requests) == 1, "no re-ask"


def test_json_that_does_not_parse_at_all_is_still_reasked(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    replies = iter(['{"score": 3, "reason": "cut', '{"score": 3, "reason": "whole"}'])
    fake_llm.responder = lambda request: next(replies)
    assert StructuredBot(model_name="m", pydantic_model=Verdict)("x").reason == "whole"
    assert "Invalid JSON" in fake_llm.requests[1]["messages"][-1]["content"]
