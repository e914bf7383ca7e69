"""Explicit retries: which failures are retried, how long each retry waits, what is counted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from email.utils import formatdate

import pytest

from conftest import inside_run
from fakellm import FakeLLM
from pytest_llmexp import LLMCallError, SimpleBot
from pytest_llmexp._run import endpoint
from pytest_llmexp._run.calls import MAX_RETRY_AFTER, retry_after
from pytest_llmexp._run.recording import RunContext


@pytest.fixture
def run(fake_llm: FakeLLM) -> Iterator[RunContext]:
    """A current run, and an endpoint that retries twice."""
    with inside_run("calls", timeout=5, max_retries=2) as context:
        yield context


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "nonsense", "retry-after": "3"}, 3.0),
        ({"retry-after": "-4"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_headers(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after(headers) == seconds


def test_retry_after_as_an_http_date() -> None:
    asked = retry_after({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert asked is not None and 28 <= asked <= 31


def test_a_retry_after_longer_than_the_cap_fails_at_once(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    fake_llm.fail_next(502, headers={"retry-after": "3600"})
    started = time.monotonic()
    with pytest.raises(LLMCallError) as info:
        SimpleBot(model_name="m")("hi")
    assert time.monotonic() - started < 5
    assert info.value.error_type == "InternalServerError" and info.value.retries == 0
    assert f"asked to retry after 3600 s, longer than the {MAX_RETRY_AFTER:g} s" in str(info.value)
    assert len(fake_llm.requests) == 1


def test_a_rate_limit_is_waited_out_not_retried(run: RunContext, fake_llm: FakeLLM) -> None:
    fake_llm.fail_next(429, times=2, headers={"retry-after-ms": "100"})
    fake_llm.fail_next(503, headers={"retry-after-ms": "100"})
    assert SimpleBot(model_name="m")("hi").content == "Reply to: hi"
    (call,) = run.finish("passed").calls
    assert len(fake_llm.requests) == 4 and call.retries == 0
    # The waits were not the endpoint's: the latency is the last request's own.
    assert call.latency_ms is not None and call.latency_ms < 250


def test_a_rate_limit_past_the_wait_fails_at_once_and_holds_later_calls(
    run: RunContext, fake_llm: FakeLLM
) -> None:
    fake_llm.fail_next(429, headers={"retry-after": "3600"})
    started = time.monotonic()
    with pytest.raises(LLMCallError) as info:
        SimpleBot(model_name="m")("hi")
    assert info.value.error_type == "RateLimitError" and info.value.retries == 0
    assert "3600.0 s more would pass --llm-rate-limit-wait 300" in str(info.value)
    # The endpoint said when it may be called again: no call of the process goes before.
    with pytest.raises(LLMCallError) as later:
        SimpleBot(model_name="m")("again")
    assert "may be called again in" in str(later.value) and "not sent" in str(later.value)
    assert len(fake_llm.requests) == 1 and time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("status", "headers", "requests"),
    [
        (400, {}, 1),  # a bad request stays bad
        (404, {}, 1),
        (400, {"x-should-retry": "true"}, 3),  # the endpoint says otherwise
        (503, {"x-should-retry": "false"}, 1),
        (409, {"retry-after-ms": "1"}, 3),
        (502, {"retry-after-ms": "1"}, 3),
    ],
)
def test_what_is_retried(
    run: RunContext, fake_llm: FakeLLM, status: int, headers: dict[str, str], requests: int
) -> None:
    fake_llm.fail_next(status, times=5, headers=headers)
    with pytest.raises(LLMCallError) as info:
        SimpleBot(model_name="m")("hi")
    assert len(fake_llm.requests) == requests
    assert info.value.retries == requests - 1
    call = run.finish("error").calls[0]
    assert (call.retries, call.error_type) == (requests - 1, info.value.error_type)


def test_a_connection_refused_is_retried_and_typed(run: RunContext) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        endpoint.configure(
            endpoint.ClientSettings(
                base_url=f"http://127.0.0.1:{port}/v1", timeout=5, max_retries=1
            )
        )
        with pytest.raises(LLMCallError) as info:
            SimpleBot(model_name="m")("hi")
    assert (info.value.error_type, info.value.retries) == ("APIConnectionError", 1)
