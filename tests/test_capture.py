"""The code's own openai client calls: captured into the run that made them.

The unit tests call the real ``openai`` client against the fake server in this process,
with the transports wrapped; the inner sessions test an "application" with its own
clients (made at import, sync and async, threads and tasks, streaming) end to end, with
and without ``-n 2``, and read what the database holds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from conftest import Database, Run, api_key, inside_run
from fakellm import FakeLLM
from pytest_llmexp.cli import main as llmexp

#: The responses API came with openai 1.66; the oldest release we support predates it.
needs_responses = pytest.mark.skipif(
    not hasattr(openai.OpenAI, "responses"),
    reason=f"openai {openai.__version__} has no responses API (it came in 1.66)",
)
TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "weather", "arguments": json.dumps({"city": "Paris"})},
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def captured() -> Iterator[None]:
    """The transports wrapped for this test, and put back after it."""
    from pytest_llmexp._run import capture

    assert not capture.installed(), "the outer session has no experiment: nothing is wrapped"
    assert capture.install()
    yield
    capture.uninstall()


def client(fake_llm: FakeLLM, **options: Any) -> openai.OpenAI:
    options.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=fake_llm.url, api_key=api_key(), **options)


def aclient(fake_llm: FakeLLM, **options: Any) -> openai.AsyncOpenAI:
    options.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=fake_llm.url, api_key=api_key(), **options)


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def bot_of(run: Any, call: Any) -> Any:
    """The bot record of a run's call."""
    record = run.finish("passed")
    return next(b for b in record.bots if b.hash == call.bot_hash)


# -- in this process ---------------------------------------------------------------------


def test_a_client_made_before_the_wrapping_is_recorded_in_the_run(
    fake_llm: FakeLLM,
) -> None:
    from pytest_llmexp._run import capture

    made_at_import = client(fake_llm)
    capture.install()
    try:
        with inside_run() as run:
            reply = made_at_import.chat.completions.create(
                model="app-model", messages=user("hello there"), temperature=0.3, max_tokens=20
            )
    finally:
        capture.uninstall()
    assert reply.choices[0].message.content == "Reply to: hello there"
    [call] = run.calls()
    assert call.messages == [
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "Reply to: hello there"},
    ]
    assert (call.model_name, call.response_model, call.temperature) == ("app-model",) * 2 + (0.3,)
    assert (call.prompt_tokens, call.completion_tokens) == (2, 4)
    assert (call.finish_reason, call.error, call.retries) == ("stop", None, 0)
    assert (call.api, call.stream) == ("chat.completions", False)
    assert call.latency_ms > 0
    bot = bot_of(run, call)
    assert (bot.kind, bot.class_name, bot.model_name) == ("client", "OpenAI", "app-model")
    assert bot.params == {
        "api": "chat.completions",
        "base_url": fake_llm.url,
        "max_tokens": 20,
    }
    # The wrapping is gone: the same client is no longer seen.
    with inside_run() as after:
        made_at_import.chat.completions.create(model="app-model", messages=user("again"))
    assert after.calls() == []


def test_a_streamed_reply_is_put_together_as_the_client_does(
    fake_llm: FakeLLM, captured: None
) -> None:
    app = client(fake_llm)
    with inside_run() as run:
        chunks = app.chat.completions.create(
            model="m", messages=user("a b c"), stream=True, stream_options={"include_usage": True}
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        fake_llm.responder = lambda request: {"content": None, "tool_calls": [TOOL_CALL]}
        with app.chat.completions.create(
            model="m", messages=user("weather?"), tools=TOOLS, stream=True
        ) as stream:
            for _ in stream:
                pass
    first, second = run.calls()
    assert text == "Reply to: a b c"
    assert first.messages[-1] == {"role": "assistant", "content": "Reply to: a b c"}
    assert (first.stream, first.prompt_tokens, first.completion_tokens) == (True, 3, 5)
    assert first.finish_reason == "stop"
    assert second.messages[-1] == {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}
    assert (second.finish_reason, second.error) == ("tool_calls", None)


def test_a_tool_call_and_the_tool_message_sent_back_are_both_stored(
    fake_llm: FakeLLM, captured: None
) -> None:
    app = client(fake_llm)
    fake_llm.responder = lambda request: {"content": None, "tool_calls": [TOOL_CALL]}
    with inside_run() as run:
        asked = app.chat.completions.create(model="m", messages=user("weather?"), tools=TOOLS)
        fake_llm.responder = lambda request: "Sunny in Paris."
        called = asked.choices[0].message.tool_calls
        assert called is not None
        app.chat.completions.create(
            model="m",
            tools=TOOLS,
            messages=[
                *user("weather?"),
                asked.choices[0].message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": called[0].id, "content": "22 C, sunny"},
            ],
        )
    first, second = run.calls()
    assert first.messages[-1]["tool_calls"] == [TOOL_CALL]
    assert first.finish_reason == "tool_calls"
    assert [m["role"] for m in second.messages] == ["user", "assistant", "tool", "assistant"]
    assert second.messages[1]["tool_calls"][0]["function"]["name"] == "weather"
    assert second.messages[2] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "22 C, sunny",
    }
    assert second.messages[3]["content"] == "Sunny in Paris."


@needs_responses
def test_responses_are_recorded_streamed_or_not(fake_llm: FakeLLM, captured: None) -> None:
    app = client(fake_llm)
    with inside_run() as run:
        whole = app.responses.create(model="m", input="say hi", instructions="Be brief.")
        with app.responses.stream(model="m", input="say bye") as stream:
            for _ in stream:
                pass
            streamed = stream.get_final_response()
        fake_llm.responder = lambda request: {"content": None, "tool_calls": [TOOL_CALL]}
        app.responses.create(model="m", input="weather?")
    assert (whole.output_text, streamed.output_text) == ("Reply to: say hi", "Reply to: say bye")
    first, second, third = run.calls()
    assert first.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "say hi"},
        {"role": "assistant", "content": "Reply to: say hi"},
    ]
    assert (first.api, first.stream, first.finish_reason) == ("responses", False, "completed")
    assert (first.prompt_tokens, first.completion_tokens) == (4, 4)
    assert second.stream and second.messages[-1]["content"] == "Reply to: say bye"
    assert second.completion_tokens == 4
    assert third.messages[-1] == {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]}


def test_async_tasks_and_threads_each_record_into_their_own_run(
    fake_llm: FakeLLM, captured: None
) -> None:
    from pytest_llmexp._run.recording import RunContext, activate

    sync_app = client(fake_llm)

    def execution(index: int, runs: list[Any]) -> None:
        run = RunContext("app", num_executions=2, execution_index=index, worker="main")
        runs.append(run)

        async def gathered() -> None:
            app = aclient(fake_llm)
            async with app:
                await asyncio.gather(
                    *(
                        app.chat.completions.create(model="m", messages=user(f"{index}-{n}"))
                        for n in range(3)
                    )
                )

        with activate(run):
            asyncio.run(gathered())
            sync_app.chat.completions.create(model="m", messages=user(f"{index}-sync"))

    runs: list[Any] = []
    threads = [threading.Thread(target=execution, args=(i, runs)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for run in runs:
        asked = sorted(c.messages[0]["content"] for c in run.calls())
        index = run.execution_index
        assert asked == [f"{index}-0", f"{index}-1", f"{index}-2", f"{index}-sync"]
        classes = sorted(bot_of(run, c).class_name for c in run.calls())
        assert classes == ["AsyncOpenAI"] * 3 + ["OpenAI"]


def test_a_retried_call_is_one_call_with_its_retries(fake_llm: FakeLLM, captured: None) -> None:
    app = client(fake_llm, max_retries=2)
    fake_llm.fail_next(500, headers={"retry-after-ms": "10"})
    with inside_run() as run:
        app.chat.completions.create(model="m", messages=user("again"))
    [call] = run.calls()
    assert (call.retries, call.error, call.messages[-1]["content"]) == (1, None, "Reply to: again")
    assert len(fake_llm.requests) == 2

    fake_llm.fail_next(500, times=3, headers={"retry-after-ms": "10"})
    with inside_run() as failing, pytest.raises(openai.InternalServerError):
        app.chat.completions.create(model="m", messages=user("never"))
    [call] = failing.calls()
    assert (call.retries, call.error_type) == (2, "InternalServerError")
    assert call.error is not None and call.error.startswith(
        "InternalServerError: Error code: 500 - "
    )
    assert "injected failure" in call.error
    assert call.messages == user("never")


@pytest.mark.parametrize(
    ("status", "error_type"),
    [(429, "RateLimitError"), (401, "AuthenticationError"), (400, "BadRequestError")],
)
def test_failed_calls_are_classified_as_the_client_names_them(
    fake_llm: FakeLLM, captured: None, status: int, error_type: str
) -> None:
    from pytest_llmexp._run.outcome import classify_exception

    fake_llm.fail_next(status)
    with inside_run() as run, pytest.raises(openai.APIStatusError) as raised:
        client(fake_llm).chat.completions.create(model="m", messages=user("x"))
    assert type(raised.value).__name__ == error_type
    [call] = run.calls()
    assert (call.error_type, call.retries) == (error_type, 0)
    # The run could not be evaluated: an error, as when a bot's call fails.
    assert classify_exception(raised.value)[:2] == ("error", error_type)


def test_a_timeout_is_an_api_timeout_error(fake_llm: FakeLLM, captured: None) -> None:
    fake_llm.latency = 1.0
    with inside_run() as run, pytest.raises(openai.APITimeoutError):
        client(fake_llm, timeout=0.2).chat.completions.create(model="m", messages=user("slow"))
    [call] = run.calls()
    assert call.error_type == "APITimeoutError"
    assert call.messages == user("slow")


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs signal.setitimer (POSIX)")
def test_an_interrupted_call_is_recorded_as_interrupted(fake_llm: FakeLLM, captured: None) -> None:
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt("interrupted mid-request")

    fake_llm.latency = 2.0
    before = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)
    try:
        with inside_run() as run, pytest.raises(KeyboardInterrupt):
            client(fake_llm).chat.completions.create(model="m", messages=user("slow"))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)
    [call] = run.calls()
    assert call.error_type == "Interrupted"
    assert call.error is not None and "interrupted mid-request" in call.error


def test_a_rate_limited_call_pauses_the_endpoint_for_every_call(
    fake_llm: FakeLLM, captured: None
) -> None:
    from pytest_llmexp._run import endpoint, traffic
    from pytest_llmexp._util.redact import display_url

    fake_llm.fail_next(429, headers={"retry-after": "3"})
    with inside_run(base_url=fake_llm.url), pytest.raises(openai.RateLimitError):
        client(fake_llm).chat.completions.create(model="m", messages=user("x"))
    # A bot's next call (or another captured one) to that endpoint waits the pause out.
    bots = endpoint.get_client()
    ahead = traffic.traffic().admit(display_url(str(bots.base_url)), 0)
    assert 2.5 < ahead <= 3.0


def test_only_the_openai_clients_own_requests_are_captured(
    fake_llm: FakeLLM, captured: None
) -> None:
    from pytest_llmexp import SimpleBot
    from pytest_llmexp._run import capture, process

    # The client's HTTP library (httpx, or httpx2 for later openai releases), used directly.
    http = sys.modules[capture._patched[0][0].__module__.partition(".")[0]].Client
    with inside_run(base_url=fake_llm.url) as run:
        SimpleBot(model_name="bot-model")("from a bot")
        # The same request by another program: not an openai client call.
        with http() as other:
            other.post(f"{fake_llm.url}/chat/completions", json={"model": "m", "messages": []})
    [call] = run.calls()
    assert call.model_name == "bot-model" and bot_of(run, call).kind == "bot"

    process.update(capture=False)
    try:
        with inside_run() as off:
            client(fake_llm).chat.completions.create(model="m", messages=user("x"))
    finally:
        process.update(capture=True)
    assert off.calls() == []


def test_a_client_given_its_own_http_client_is_captured(fake_llm: FakeLLM, captured: None) -> None:
    # The documented way to tune the client's HTTP (proxies, limits): still httpx's transport.
    own = openai.OpenAI(
        base_url=fake_llm.url,
        api_key=api_key(),
        max_retries=0,
        http_client=openai.DefaultHttpxClient(follow_redirects=False),
    )
    with inside_run() as run:
        own.chat.completions.create(model="m", messages=user("own http client"))
    [call] = run.calls()
    assert call.messages[0]["content"] == "own http client"


def test_the_storage_cap_applies_to_captured_messages(fake_llm: FakeLLM, captured: None) -> None:
    from pytest_llmexp._run import process

    process.update(storage_limit=10)
    try:
        with inside_run() as run:
            client(fake_llm).chat.completions.create(
                model="m",
                messages=[
                    {"role": "user", "content": "x" * 50},
                    {"role": "user", "content": [{"type": "text", "text": "y" * 50}]},
                ],
            )
    finally:
        process.update(storage_limit=process.ProcessSettings().storage_limit)
    [call] = run.calls()
    assert call.truncated
    assert call.messages[0]["content"] == "x" * 10
    assert call.messages[1]["content"] == [{"type": "text", "text": "y" * 10}]


# -- inner sessions ----------------------------------------------------------------------

APP = '''
"""A small summariser: its own clients, made as an application makes them."""
import asyncio
import json
import pathlib

import openai

CONFIG = json.loads(pathlib.Path(__file__).with_name("config.json").read_text())
client = openai.OpenAI(max_retries=CONFIG.get("retries", 0))  # at import


def summarise(text):
    reply = client.chat.completions.create(
        model="summariser",
        messages=[{"role": "system", "content": CONFIG.get("system", "Summarise.")},
                  {"role": "user", "content": text}],
        temperature=0.2,
    )
    return reply.choices[0].message.content


def summarise_streamed(text):
    chunks = client.chat.completions.create(
        model="summariser", messages=[{"role": "user", "content": text}], stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def summarise_all(texts):
    async with openai.AsyncOpenAI(max_retries=0) as aclient:
        replies = await asyncio.gather(*(
            aclient.chat.completions.create(
                model="summariser", messages=[{"role": "user", "content": t}]
            )
            for t in texts
        ))
    return [r.choices[0].message.content for r in replies]
'''

EXPERIMENT = """
import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from pytest_llmexp import experiment, metric

import app


@metric
def words(text) -> int:
    return len(text.split())


@experiment(num_executions=3)
def test_app():
    one = app.summarise("the first text")
    streamed = app.summarise_streamed("a streamed text")
    many = asyncio.run(app.summarise_all(["text a", "text b"]))
    in_thread = []
    worker = threading.Thread(target=lambda: in_thread.append(app.summarise("in a thread")))
    worker.start()
    worker.join()
    with ThreadPoolExecutor(2) as pool:
        pooled = pool.submit(app.summarise, "in a pool").result()
    words(" ".join([one, streamed, *many, *in_thread, pooled]))
"""


def application(pytester: pytest.Pytester, **config: Any) -> None:
    pytester.makepyfile(app=APP, test_app=EXPERIMENT)
    (pytester.path / "config.json").write_text(json.dumps(config))


def calls_by_run(db: Database) -> dict[str, list[tuple[Any, ...]]]:
    found: dict[str, list[tuple[Any, ...]]] = {}
    for row in db.rows(
        "SELECT c.run_id, b.class_name, b.kind, c.api, c.stream, c.message_log FROM "
        "message_log c JOIN bots b ON b.id = c.bot_id ORDER BY c.timestamp"
    ):
        asked = json.loads(row["message_log"])[-2]["content"]
        found.setdefault(row["run_id"], []).append(
            (row["class_name"], row["kind"], row["api"], row["stream"], asked)
        )
    return {run: sorted(calls, key=str) for run, calls in found.items()}


EXPECTED = sorted(
    [
        ("OpenAI", "client", "chat.completions", 0, "the first text"),
        ("OpenAI", "client", "chat.completions", 1, "a streamed text"),
        ("AsyncOpenAI", "client", "chat.completions", 0, "text a"),
        ("AsyncOpenAI", "client", "chat.completions", 0, "text b"),
        ("OpenAI", "client", "chat.completions", 0, "in a thread"),
        ("OpenAI", "client", "chat.completions", 0, "in a pool"),
    ],
    key=str,
)


def no_key_anywhere(root: Path) -> None:
    """No file the session left holds the API key (the database, reports, spool)."""
    for path in root.rglob("*"):
        if path.is_file():
            assert api_key().encode() not in path.read_bytes(), path


@pytest.mark.parametrize("concurrency", ["1", "3"])
def test_an_application_is_recorded_run_by_run(
    pytester: pytest.Pytester,
    run_session: Callable[..., Run],
    fake_llm: FakeLLM,
    concurrency: str,
) -> None:
    application(pytester)
    run = run_session(
        "--llm-concurrency",
        concurrency,
        "--llm-report-json",
        "verdict.json",
        "--llm-report",
        "report.html",
    )
    run.result.assert_outcomes(passed=3)
    assert run.db is not None
    runs = [r[0] for r in run.db.rows("SELECT id FROM experiment_runs WHERE status = 'passed'")]
    assert len(runs) == 3
    assert calls_by_run(run.db) == {r: EXPECTED for r in runs}  # no call outside a run
    assert len(fake_llm.requests) == 18
    # A client call's bot row says what made it; it is linked to its runs as bots are.
    assert run.db.count("bots", "kind = 'client' AND class_name IN ('OpenAI', 'AsyncOpenAI')") >= 2
    assert run.db.count("run_bots") == 3 * run.db.count("bots")
    no_key_anywhere(pytester.path)


WEATHER = f"""
import openai
from pytest_llmexp import experiment

TOOLS = {TOOLS!r}

@experiment(num_executions=1)
def test_weather():
    client = openai.OpenAI(max_retries=0)
    messages = [{{"role": "user", "content": "weather in Paris?"}}]
    asked = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    call = asked.choices[0].message.tool_calls[0]
    messages += [
        asked.choices[0].message.model_dump(exclude_none=True),
        {{"role": "tool", "tool_call_id": call.id, "content": "22 C"}},
    ]
    final = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert final.choices[0].message.content == "Sunny, 22 C."
"""


def weather(pytester: pytest.Pytester, fake_llm: FakeLLM) -> None:
    """An experiment whose model asks for a tool, then answers with its result."""
    pytester.makepyfile(test_tools=WEATHER)
    replies = iter([{"content": None, "tool_calls": [TOOL_CALL]}, "Sunny, 22 C."])
    fake_llm.responder = lambda request: next(replies)


def test_llmexp_run_shows_a_captured_conversation_and_its_tool_calls(
    pytester: pytest.Pytester,
    run_session: Callable[..., Run],
    fake_llm: FakeLLM,
    capsys: pytest.CaptureFixture[str],
) -> None:
    weather(pytester, fake_llm)
    run = run_session()
    run.result.assert_outcomes(passed=1)
    assert run.db is not None
    run_id = run.db.one("SELECT id FROM experiment_runs")
    capsys.readouterr()
    assert llmexp(["run", run_id[:12], "--db", str(run.db.path)]) == 0
    shown = capsys.readouterr().out
    assert "OpenAI (client, chat.completions) model=m" in shown
    assert "calls weather(" in shown and '"city": "Paris"' in shown
    assert "[tool call_1]" in shown and "22 C" in shown
    assert "Sunny, 22 C." in shown


def test_a_cassette_of_tool_calls_replays_in_another_database(
    pytester: pytest.Pytester,
    run_session: Callable[..., Run],
    fake_llm: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    weather(pytester, fake_llm)
    first = run_session("--llm-cache", "record")
    first.result.assert_outcomes(passed=1)
    assert first.db is not None
    cassette = pytester.path / "weather.jsonl"
    assert llmexp(["cache", "export", "--db", str(first.db.path), "-o", str(cassette)]) == 0
    lines = [json.loads(line) for line in cassette.read_text().splitlines()]
    assert [(line["kind"], line["reply"].get("tool_calls")) for line in lines] == [
        ("client", [TOOL_CALL]),
        ("client", None),
    ]
    fresh = pytester.path / "fresh.db"
    assert llmexp(["cache", "import", str(cassette), "--db", str(fresh)]) == 0

    offline(monkeypatch)
    fake_llm.requests.clear()
    second = run_session("--llm-db", "fresh.db", "--llm-cache", "replay", db="fresh.db")
    second.result.assert_outcomes(passed=1)
    assert second.db is not None and fake_llm.requests == []
    replies = second.db.rows(
        "SELECT message_log FROM message_log WHERE replayed_from IS NOT NULL ORDER BY timestamp"
    )
    assert [json.loads(r[0])[-1].get("tool_calls") for r in replies] == [[TOOL_CALL], None]


def test_a_failed_call_makes_its_run_an_error(
    pytester: pytest.Pytester, run_session: Callable[..., Run], fake_llm: FakeLLM
) -> None:
    application(pytester, retries=1)
    fake_llm.fail_next(500, times=100, headers={"retry-after-ms": "10"})
    run = run_session("--llm-num-executions", "2")
    run.result.assert_outcomes(failed=2)
    assert run.db is not None
    runs = run.db.rows("SELECT status, error_type FROM experiment_runs")
    assert {tuple(r) for r in runs} == {("error", "InternalServerError")}
    calls = run.db.rows("SELECT retries, error_type, run_id FROM message_log")
    # The first call of each run failed after its one retry: one row each, not two.
    assert [(c["retries"], c["error_type"]) for c in calls] == [(1, "InternalServerError")] * 2
    assert all(c["run_id"] is not None for c in calls)


def test_refused_credentials_stop_the_session(
    pytester: pytest.Pytester, run_session: Callable[..., Run], fake_llm: FakeLLM
) -> None:
    application(pytester)
    fake_llm.fail_next(401, times=100)
    run = run_session("--llm-num-executions", "6")
    assert run.db is not None
    runs = run.db.rows("SELECT status, error_type FROM experiment_runs")
    # The first run of each process meets the refusal; the session stops there.
    assert 1 <= len(runs) <= 2
    assert {tuple(r) for r in runs} == {("error", "AuthenticationError")}
    assert "refused the credentials (401 AuthenticationError); stopping the session" in run.output


def test_the_spend_guard_counts_captured_calls(
    pytester: pytest.Pytester, run_session: Callable[..., Run], fake_llm: FakeLLM, mode: str
) -> None:
    application(pytester)  # 6 calls a run
    run = run_session("--llm-max-calls", "7", "--llm-num-executions", "6")
    assert run.db is not None
    passed = run.db.count("experiment_runs", "status = 'passed'")
    # The cap is reached by the second run; runs going then finish, one per process.
    assert 2 <= passed <= (2 if mode == "serial" else 3)
    skipped = run.db.rows("SELECT error_type FROM experiment_runs WHERE status = 'skipped'")
    assert {r[0] for r in skipped} == {"SpendLimit"} and len(skipped) == 6 - passed
    assert run.db.count("message_log") == 6 * passed


def test_the_sessions_endpoint_is_lent_to_the_codes_own_clients(
    pytester: pytest.Pytester,
    run_session: Callable[..., Run],
    fake_llm: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No key and no OPENAI_BASE_URL: the application's client, made at import, needs both.
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    application(pytester)
    run = run_session("--llm-base-url", fake_llm.url, "--llm-num-executions", "1")
    run.result.assert_outcomes(passed=1)
    assert run.db is not None and run.db.count("message_log") == 6
    assert len(fake_llm.requests) == 6
    # The placeholder key went to the endpoint, as a bot's would.
    assert {h["authorization"] for h in fake_llm.headers} == {"Bearer no-key-needed"}


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint where nothing listens (the key stays: the application's client needs
    one to be built)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")


def test_record_then_replay_with_the_endpoint_gone(
    pytester: pytest.Pytester,
    run_session: Callable[..., Run],
    fake_llm: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    application(pytester)
    first = run_session("--llm-cache", "record")
    first.result.assert_outcomes(passed=3)
    assert first.db is not None and first.db.count("llm_cache") == 18

    offline(monkeypatch)
    fake_llm.requests.clear()
    second = run_session("--llm-cache", "replay")
    second.result.assert_outcomes(passed=3)
    assert second.db is not None and fake_llm.requests == []
    session = second.db.one("SELECT id FROM sessions ORDER BY started_at DESC LIMIT 1")
    replayed = second.db.rows(
        "SELECT c.replayed_from, c.stream, c.message_log FROM message_log c JOIN "
        "experiment_runs r ON r.id = c.run_id JOIN experiments e ON e.id = r.experiment_id "
        "WHERE e.session_id = ?",
        session,
    )
    assert len(replayed) == 18 and all(r["replayed_from"] for r in replayed)
    metrics = second.db.rows("SELECT value FROM metrics JOIN experiment_runs ON id = run_id")
    assert len(metrics) == 6 and len({m[0] for m in metrics}) == 1

    # The application's system prompt changed: a miss, which says what differed.
    (pytester.path / "config.json").write_text(json.dumps({"system": "Summarise briefly."}))
    changed = run_session("--llm-cache", "replay", "--llm-num-executions", "1")
    changed.result.assert_outcomes(failed=1)
    assert changed.db is not None and fake_llm.requests == []
    status, kind, message = changed.db.one(
        "SELECT status, error_type, error_message FROM experiment_runs "
        "ORDER BY started_at DESC LIMIT 1"
    )
    assert (status, kind) == ("error", "ReplayMiss")
    assert "message 0 (system) was 'Summarise.', now 'Summarise briefly.'" in message
    assert "for this OpenAI call (model 'summariser', experiment 'app'" in message


def test_rescoring_serves_the_stored_generations_of_the_codes_own_calls(
    pytester: pytest.Pytester,
    run_session: Callable[..., Run],
    fake_llm: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    application(pytester)
    first = run_session("--llm-num-executions", "2")
    first.result.assert_outcomes(passed=2)
    assert first.db is not None
    stored = first.db.one("SELECT id FROM sessions")
    originals = {r[0] for r in first.db.rows("SELECT id FROM experiment_runs")}
    offline(monkeypatch)
    fake_llm.requests.clear()
    again = run_session("--llm-replay-from", stored[:8], "--llm-num-executions", "2")
    again.result.assert_outcomes(passed=2)
    assert again.db is not None and fake_llm.requests == []
    runs = again.db.rows(
        "SELECT r.replayed_from FROM experiment_runs r JOIN experiments e "
        "ON e.id = r.experiment_id WHERE e.session_id != ?",
        stored,
    )
    assert {r[0] for r in runs} == originals


OUTSIDE = """
import pytest
import app

@pytest.fixture(scope="session")
def warmed():
    return app.summarise("from a session fixture")

def test_plain(warmed):
    assert app.summarise("from a plain test")
"""


def test_calls_outside_any_run_are_stored_with_no_run(
    pytester: pytest.Pytester, run_session: Callable[..., Run], fake_llm: FakeLLM
) -> None:
    application(pytester)
    pytester.makepyfile(test_outside=OUTSIDE)
    run = run_session("--llm-num-executions", "1")
    run.result.assert_outcomes(passed=2)
    assert run.db is not None
    outside = run.db.rows(
        "SELECT json_extract(message_log, '$[#-2].content') FROM message_log "
        "WHERE run_id IS NULL ORDER BY timestamp"
    )
    assert [r[0] for r in outside] == ["from a session fixture", "from a plain test"]
    assert run.db.count("message_log", "run_id IS NOT NULL") == 6


def test_capture_can_be_turned_off(
    pytester: pytest.Pytester, run_session: Callable[..., Run], fake_llm: FakeLLM
) -> None:
    application(pytester)
    pytester.makeini("[pytest]\nllm_capture = off\n")
    run = run_session("--llm-num-executions", "1")
    run.result.assert_outcomes(passed=1)
    assert run.db is not None and run.db.count("message_log") == 0
    assert len(fake_llm.requests) == 6

    bad = run_session("--llm-capture", "sometimes")
    assert bad.result.ret == pytest.ExitCode.USAGE_ERROR
    bad.result.stderr.fnmatch_lines(["*--llm-capture: expected on or off, got 'sometimes'*"])


@pytest.mark.skipif(
    "LLMEXP_OPENAI_VERSION" not in os.environ,
    reason="only CI's second run of this file, on the oldest openai we support, names it",
)
def test_the_run_on_the_oldest_client_runs_the_oldest_client() -> None:
    assert openai.__version__ == os.environ["LLMEXP_OPENAI_VERSION"]


@pytest.mark.local
def test_the_worked_example_runs_on_the_embedded_model(
    local_session: Callable[..., Run], pytester: pytest.Pytester
) -> None:
    examples = Path(__file__).parent.parent / "examples"
    for name in ("summariser.py", "test_summariser.py"):
        pytester.path.joinpath(name).write_text(examples.joinpath(name).read_text())
    run = local_session()
    run.result.assert_outcomes(passed=3)
    assert run.db is not None
    rows = run.db.rows(
        "SELECT c.run_id, b.class_name, b.kind, c.error FROM message_log c "
        "JOIN bots b ON b.id = c.bot_id"
    )
    # Each run: the sync client's call, and the async client's gathered call; no bot.
    assert len(rows) == 6 and {r["kind"] for r in rows} == {"client"}
    assert all(r["error"] is None for r in rows)
    by_run: dict[str, list[str]] = {}
    for row in rows:
        by_run.setdefault(row["run_id"], []).append(row["class_name"])
    assert sorted(map(sorted, by_run.values())) == [["AsyncOpenAI", "OpenAI"]] * 3
    assert run.db.count("metrics", "name = 'answered' AND value = 1") == 3
