"""LLM faults and bad input: what the run, the session and the database say about each.

Each test runs an inner session without xdist and with ``-n 2`` (the ``mode`` fixture); the
session runner also checks that the API key is in neither the database nor the output.
"""

from __future__ import annotations

import json

import pytest

from conftest import api_key
from fakellm import FakeLLM

ONE_CALL = """
from pytest_llmexp import SimpleBot, experiment, metric

@metric
def length(text) -> int:
    return len(text)

@experiment(num_executions=N)
def test_calls():
    length(SimpleBot(model_name="m")("hello").content)
"""


def one_call(executions: int) -> str:
    return ONE_CALL.replace("N", str(executions))


def health(run) -> dict:
    return json.loads(run.db.one("SELECT health FROM sessions"))


@pytest.mark.parametrize(
    ("status", "headers", "wait", "retries"),
    [
        # A rate limit is waited out, not retried: no retry is recorded.
        (429, {"retry-after-ms": "400"}, 0.4, 0),
        (429, {"Retry-After": "1"}, 1.0, 0),
        (503, {"Retry-After": "1"}, 1.0, 0),
        (503, {}, 0.0, 1),
    ],
    ids=["429-retry-after-ms", "429-retry-after", "503-retry-after", "503"],
)
def test_a_failure_then_success_is_one_recorded_retry(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM, status, headers, wait, retries
) -> None:
    fake_llm.fail_next(status, headers=headers)
    pytester.makepyfile(test_calls=one_call(1))
    run = run_session()
    run.result.assert_outcomes(passed=1)
    db = run.db
    assert db is not None
    call = db.one("SELECT retries, error, error_type FROM message_log")
    assert tuple(call) == (retries, None, None)
    assert db.one("SELECT retries FROM experiment_runs") == retries
    assert len(fake_llm.times) == 2
    # The endpoint's Retry-After is a floor; without one, backoff waits less than a second.
    gap = fake_llm.times[1] - fake_llm.times[0]
    assert gap >= wait
    if not wait:
        assert gap < 1.0


def test_a_storm_of_429s_errors_every_run_and_fails_the_error_budget(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    # 429s for longer than a call waits out rate limits: each run errors, with no retry.
    fake_llm.fail_next(429, times=1000, headers={"retry-after-ms": "200"})
    pytester.makepyfile(test_calls=one_call(4))
    run = run_session("--llm-max-retries", "2", "--llm-rate-limit-wait", "0.5")
    run.result.assert_outcomes(failed=4)
    db = run.db
    assert db is not None
    runs = db.rows("SELECT status, error_type, retries FROM experiment_runs")
    assert [tuple(r) for r in runs] == [("error", "RateLimitError", 0)] * 4
    assert db.count("message_log", "error_type = 'RateLimitError' AND retries = 0") == 4
    messages = [r["error_message"] for r in db.rows("SELECT error_message FROM experiment_runs")]
    assert all("would pass --llm-rate-limit-wait 0.5" in m for m in messages), messages
    assert db.count("metrics") == 0
    state = health(run)
    assert (state["errored"], state["over_budget"], state["errors"]) == (
        4,
        True,
        {"RateLimitError": 4},
    )
    summary = json.loads(db.one("SELECT summary FROM experiments"))
    assert summary["errors"] == {"RateLimitError": 4}
    run.result.stdout.fnmatch_lines(
        [
            "calls: 4 runs (0 passed, 0 failed, 4 errors)",
            "  errored (not in the metrics): 4 RateLimitError",
            "ERROR: infrastructure: 4 of 4 runs errored (100%, error budget 10%): "
            "4 RateLimitError.*",
        ]
    )


@pytest.mark.parametrize("budget", ["0.1", "0.5"])
def test_the_error_budget_is_configurable(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM, budget: str
) -> None:
    fake_llm.fail_next(500, times=1)
    pytester.makepyfile(test_calls=one_call(4))
    run = run_session("--llm-max-retries", "0", "--llm-error-budget", budget)
    run.result.assert_outcomes(passed=3, failed=1)
    state = health(run)
    assert (state["errored"], state["error_share"], state["error_budget"]) == (
        1,
        0.25,
        float(budget),
    )
    assert state["over_budget"] is (budget == "0.1")
    # Metrics are aggregated over the evaluated runs only.
    summary = json.loads(run.db.one("SELECT summary FROM experiments"))
    assert summary["metrics"]["length"]["n"] == 3
    if budget == "0.1":
        run.result.stdout.fnmatch_lines(["ERROR: infrastructure: 1 of 4 runs errored (25%*"])
    else:
        run.result.stdout.fnmatch_lines(
            ["errored runs: 1 InternalServerError (25%, within the error budget of 50%)*"]
        )


def test_a_request_that_hangs_times_out_and_is_retried(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    fake_llm.latency = 3.0
    pytester.makepyfile(test_calls=one_call(1))
    run = run_session("--llm-timeout", "0.3", "--llm-max-retries", "1")
    run.result.assert_outcomes(failed=1)
    db = run.db
    assert db is not None
    row = db.one("SELECT status, error_type, retries, duration_s FROM experiment_runs")
    assert tuple(row)[:3] == ("error", "APITimeoutError", 1)
    assert row["duration_s"] < 2.5
    assert "timed out" in db.one("SELECT error FROM message_log")


@pytest.mark.parametrize(
    "body", ["{this is not json", '{"unexpected": "shape"}'], ids=["not-json", "not-a-completion"]
)
def test_a_malformed_reply_is_a_typed_error(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM, body: str
) -> None:
    fake_llm.fail_next(200, body=body)
    pytester.makepyfile(test_calls=one_call(1))
    run = run_session()
    run.result.assert_outcomes(failed=1)
    db = run.db
    assert db is not None
    row = db.one("SELECT status, error_type, error_message FROM experiment_runs")
    assert (row["status"], row["error_type"]) == ("error", "MalformedResponse")
    assert "is not a chat completion" in row["error_message"]
    assert db.one("SELECT error_type FROM message_log") == "MalformedResponse"


def test_refused_credentials_stop_the_session_early(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    # The endpoint echoes the key back, as some do; -l would print every frame's locals.
    echo = json.dumps({"error": {"message": f"Incorrect API key provided: {api_key()}"}})
    fake_llm.fail_next(401, times=1000, body=echo)
    pytester.makepyfile(test_calls=one_call(20))
    run = run_session("-l")
    assert run.result.ret != pytest.ExitCode.OK
    db = run.db
    assert db is not None
    runs = db.rows("SELECT status, error_type FROM experiment_runs")
    # One failed run per process at most, not twenty.
    assert 1 <= len(runs) <= 2
    assert {tuple(r) for r in runs} == {("error", "AuthenticationError")}
    assert len(fake_llm.requests) == len(runs)
    assert run.output.count("ERROR: the endpoint refused the credentials") == 1
    assert "stopping the session instead of failing every run" in run.output


def test_the_spend_guard_skips_the_remaining_runs(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM, mode: str
) -> None:
    pytester.makepyfile(test_calls=one_call(8))
    run = run_session("--llm-max-calls", "3")
    db = run.db
    assert db is not None
    passed = db.count("experiment_runs", "status = 'passed'")
    # Runs already going when the cap is reached finish: one per process at most.
    assert 3 <= passed <= (3 if mode == "serial" else 4)
    skipped = db.rows(
        "SELECT error_type, error_message FROM experiment_runs WHERE status = 'skipped'"
    )
    assert len(skipped) == 8 - passed
    assert {r["error_type"] for r in skipped} == {"SpendLimit"}
    assert all("the cap is 3 (--llm-max-calls)" in r["error_message"] for r in skipped)
    run.result.assert_outcomes(passed=passed, skipped=8 - passed)
    state = health(run)
    assert (state["calls"], state["max_calls"], state["spend_skipped"]) == (passed, 3, 8 - passed)
    run.result.stdout.fnmatch_lines(
        [f"spend guard: {8 - passed} run(s) skipped after the session used {passed} of 3 calls"]
    )


BAD_INPUT = '''
from pytest_llmexp import SimpleBot, experiment, prompt

@prompt("user")
def sneaky(x):
    """{{ x.__class__.__mro__[1].__subclasses__() }}"""

@prompt("user")
def echo(value):
    """Say {{ value }}"""

@experiment(num_executions=1)
def test_injection():
    SimpleBot(model_name="m")(sneaky("text"))

@experiment(num_executions=1)
def test_values_are_not_templates():
    SimpleBot(model_name="m")(echo("{{ 7 * 7 }} {% raw %}"))

@experiment(num_executions=2)
def test_metadata(llm_run):
    SimpleBot(model_name="m")("hi")
    llm_run.set_metadata("ok", {"n": 1})
    if llm_run.execution_index == 1:
        llm_run.set_metadata("bad", object())

@experiment(num_executions=1)
def test_huge():
    reply = SimpleBot(model_name="m")("x" * 500)
    assert len(reply.content) == 510  # the test gets it all; the database keeps the cap
'''


def test_bad_input_is_an_error_in_its_run_only(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    pytester.makepyfile(test_bad=BAD_INPUT)
    run = run_session("--llm-max-stored-chars", "100")
    run.result.assert_outcomes(passed=3, failed=2)
    db = run.db
    assert db is not None
    runs = {
        (r["name"], r["execution_index"]): r
        for r in db.rows(
            "SELECT e.name, r.* FROM experiment_runs r JOIN experiments e ON e.id = r.experiment_id"
        )
    }
    injection = runs[("injection", 0)]
    assert (injection["status"], injection["error_type"]) == ("error", "PromptError")
    assert "SecurityError" in injection["error_message"]
    # A value is inserted as text, never rendered as a template itself.
    assert any(
        r["messages"][-1]["content"] == "Say {{ 7 * 7 }} {% raw %}" for r in fake_llm.requests
    )
    assert runs[("values_are_not_templates", 0)]["status"] == "passed"
    bad = runs[("metadata", 1)]
    assert (bad["status"], bad["error_type"]) == ("error", "ExperimentError")
    assert "must be JSON-serializable" in bad["error_message"]
    assert json.loads(runs[("metadata", 0)]["run_data"])["metadata"] == {"ok": {"n": 1}}
    huge = db.one(
        "SELECT c.message_log, c.truncated FROM message_log c "
        "JOIN experiment_runs r ON r.id = c.run_id WHERE r.id = ?",
        runs[("huge", 0)]["id"],
    )
    assert huge["truncated"] == 1
    stored = json.loads(huge["message_log"])
    assert [len(m["content"]) for m in stored] == [100, 100]
    assert db.count("message_log", "truncated = 0") == 3
