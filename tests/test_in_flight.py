"""Executions in flight (``--llm-concurrency``), async bodies, and rate limits.

Each plugin test runs an inner pytest session serially and with ``-n 2`` (the ``mode``
fixture), and asserts on what message_log.db holds and on what the fake server saw in flight.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from fakellm import FakeLLM

NAMER = """
import asyncio
from pytest_llmexp import SimpleBot, experiment, metric

@metric
def words(text) -> int:
    return len(text.split())

@experiment(num_executions=8{extra})
{sync}def test_namer(llm_run):
    bot = SimpleBot("You name things.", model_name="m")
    reply = {call}
    llm_run.set_metadata("execution", llm_run.execution_index)
    words(reply.content)
"""


def namer(*, asynchronous: bool = False, extra: str = "") -> str:
    return NAMER.format(
        extra=extra,
        sync="async " if asynchronous else "",
        call='await bot.acall("name a cat")' if asynchronous else 'bot("name a cat")',
    )


def _runs(run) -> list:  # type: ignore[no-untyped-def]
    return run.db.rows(
        "select execution_index, status, run_data, "
        "(select count(*) from message_log m where m.run_id = r.id) as calls "
        "from experiment_runs r order by execution_index"
    )


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_executions_in_flight_stay_items_of_their_own(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM, mode: str, asynchronous: bool
) -> None:
    fake_llm.latency = 0.4
    pytester.makepyfile(test_namer=namer(asynchronous=asynchronous))
    run = run_session("--llm-concurrency", "4", "--junitxml", "junit.xml")
    run.result.assert_outcomes(passed=8)
    runs = _runs(run)
    assert [r["execution_index"] for r in runs] == list(range(8))
    assert {r["status"] for r in runs} == {"passed"} and {r["calls"] for r in runs} == {1}
    # Each run recorded its own execution, through its own llm_run.
    for row in runs:
        assert json.loads(row["run_data"])["metadata"] == {"execution": row["execution_index"]}
    # Four in flight per process: serially 4, under -n 2 up to 8 (flights of 4 per worker).
    assert 4 <= fake_llm.peak_in_flight <= (4 if mode == "serial" else 8)  # 8: one flight each
    # Every execution is a test case of its own, each reported once and in order.
    junit = (pytester.path / "junit.xml").read_text()
    assert junit.count("<testcase") == 8
    for n in range(8):
        assert junit.count(f'name="test_namer[exec-{n}]"') == 1


def test_k_1_is_one_at_a_time(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM, mode: str
) -> None:
    fake_llm.latency = 0.1
    pytester.makepyfile(test_namer=namer(asynchronous=True))
    run = run_session()
    run.result.assert_outcomes(passed=8)
    # One at a time in each process: under -n 2, two processes.
    assert 1 <= fake_llm.peak_in_flight <= (1 if mode == "serial" else 2)
    assert {r["calls"] for r in _runs(run)} == {1}


@pytest.mark.parametrize("mode", ["serial"])  # under -n 2 it needs --llm-concurrency
def test_a_declared_concurrency_with_a_function_scoped_fixture_is_refused(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM, mode: str
) -> None:
    source = namer(extra=", concurrency=4").replace("(llm_run)", "(llm_run, tmp_path)")
    pytester.makepyfile(test_namer=source)
    run = run_session("-x")
    run.result.assert_outcomes(failed=1)
    assert "function-scoped fixture(s) 'tmp_path'" in run.output
    assert fake_llm.requests == []
    (row,) = run.db.rows("select status, error_type, error_message from experiment_runs")
    assert (row["status"], row["error_type"]) == ("error", "ExperimentError")
    assert "'tmp_path'" in row["error_message"]


def test_the_option_runs_an_experiment_with_such_a_fixture_one_at_a_time(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM, mode: str
) -> None:
    fake_llm.latency = 0.1
    source = namer().replace("(llm_run)", "(llm_run, tmp_path)")
    pytester.makepyfile(test_namer=source)
    run = run_session("--llm-concurrency", "4")
    run.result.assert_outcomes(passed=8, warnings=1 if mode == "serial" else None)
    assert "executions run one at a time" in run.output
    # One at a time in each process (under -n 2 one flight may go to either worker, or both).
    assert fake_llm.peak_in_flight <= (1 if mode == "serial" else 2)
    assert run.db.count("experiment_runs", "status = 'passed'") == 8


def test_a_failure_with_x_stops_and_keeps_the_calls_in_flight(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM, mode: str
) -> None:
    fake_llm.latency = 0.3
    source = namer().replace(
        "    words(reply.content)",
        "    words(reply.content)\n    assert llm_run.execution_index != 0",
    )
    pytester.makepyfile(test_namer=source)
    run = run_session("--llm-concurrency", "4", "-x")
    outcomes = run.result.parseoutcomes()
    assert outcomes.get("failed") == 1
    reported = outcomes.get("passed", 0) + 1
    # Only what pytest reported is a run; the calls of the executions still in flight when
    # the session stopped are stored too, as calls outside any run.
    assert run.db.count("experiment_runs") == reported
    assert run.db.count("message_log") == len(fake_llm.requests)
    assert run.db.count("message_log", "run_id is null") == len(fake_llm.requests) - reported


def test_a_rate_limit_is_waited_out_by_the_whole_session(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM, mode: str
) -> None:
    fake_llm.admit_per_second = 2
    pytester.makepyfile(test_namer=namer())
    run = run_session("--llm-concurrency", "4", "--llm-max-retries", "0")
    run.result.assert_outcomes(passed=8)
    assert fake_llm.throttled >= 1
    # Waits are not retries, and not the endpoint's latency.
    runs = run.db.rows("select retries, latency_ms from message_log where error is null")
    assert len(runs) == 8 and {r["retries"] for r in runs} == {0}
    assert max(r["latency_ms"] for r in runs) < 900
    health = json.loads(run.db.one("select health from sessions"))
    assert health["rate_limited"] == fake_llm.throttled and health["rate_limit_wait_s"] > 0


def test_a_rate_limit_past_the_wait_budget_is_an_error(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    fake_llm.fail_next(429, times=50, headers={"retry-after": "2"})
    pytester.makepyfile(test_namer=namer(extra=", concurrency=2").replace("=8", "=2"))
    run = run_session("--llm-rate-limit-wait", "1", "--llm-max-retries", "0")
    run.result.assert_outcomes(failed=2)
    rows = run.db.rows("select status, error_type, error_message from experiment_runs")
    assert {(r["status"], r["error_type"]) for r in rows} == {("error", "RateLimitError")}
    assert all("--llm-rate-limit-wait 1)" in r["error_message"] for r in rows), rows


def test_rpm_paces_every_process_of_the_session(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    pytester.makepyfile(test_namer=namer())
    run = run_session("--llm-concurrency", "4", "--llm-rpm", "240")
    run.result.assert_outcomes(passed=8)
    times = sorted(fake_llm.times)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # 240 a minute: one request each 0.25 s, whichever process sends it.
    assert min(gaps) > 0.2, gaps


@pytest.mark.parametrize(
    ("mark", "options"),
    [
        ("@pytest.mark.anyio", ()),
        ("@pytest.mark.asyncio", ()),
        ("", ("-o", "asyncio_mode=auto")),  # pytest-asyncio claims every async test
    ],
    ids=["anyio", "asyncio", "asyncio-auto"],
)
def test_a_plugin_that_claims_an_async_test_owns_it(
    run_session,
    pytester: pytest.Pytester,
    fake_llm: FakeLLM,
    mode: str,
    mark: str,
    options: tuple[str, ...],
) -> None:
    fake_llm.latency = 0.1
    source = namer(asynchronous=True, extra=", concurrency=4").replace(
        "@experiment", f"import pytest\n\n{mark}\n@experiment"
    )
    pytester.makepyfile(test_namer=source)
    run = run_session(*options)
    run.result.assert_outcomes(passed=8)
    runs = _runs(run)
    assert {r["status"] for r in runs} == {"passed"} and {r["calls"] for r in runs} == {1}
    # It runs the body on its own loop, one execution at a time in each process.
    assert fake_llm.peak_in_flight <= (1 if mode == "serial" else 2)


# -- the rate-limit ledger, in milliseconds -----------------------------------------------------


def test_rpm_reservations_are_spaced_across_ledger_users(tmp_path: Path) -> None:
    from pytest_llmexp._run.process import RateLimits
    from pytest_llmexp._run.traffic import Traffic

    limits = RateLimits(ledger=tmp_path / "s.rate", rpm=600)
    one, two = Traffic(limits), Traffic(limits)  # two processes, one file
    waits = [t.admit("e", 0) for t in (one, two, one, two)]
    assert waits[0] == pytest.approx(0, abs=0.05)
    assert [round(b - a, 2) for a, b in itertools.pairwise(waits)] == [0.1, 0.1, 0.1]
    assert two.admit("other endpoint", 0) == pytest.approx(0, abs=0.05)


def test_a_pause_holds_every_ledger_user(tmp_path: Path) -> None:
    from pytest_llmexp._run.process import RateLimits
    from pytest_llmexp._run.traffic import Traffic

    limits = RateLimits(ledger=tmp_path / "s.rate")
    one, two = Traffic(limits), Traffic(limits)
    assert two.admit("e", 0) == 0
    assert one.pause("e", 2.0) == pytest.approx(2.0, abs=0.05)
    assert two.admit("e", 0) == pytest.approx(2.0, abs=0.1)
    assert one.pause("e", 0.5) == pytest.approx(2.0, abs=0.1)  # a shorter pause adds nothing
    assert two.totals().throttled == 2


def test_the_gate_halves_on_a_rate_limit_and_grows_back() -> None:
    from pytest_llmexp._run.traffic import _Gate

    gate = _Gate()
    with gate.slot(), gate.slot(), gate.slot(), gate.slot():
        gate.limited()
    assert gate.limit == 2
    gate.limited()  # within the same round trip: not halved again
    assert gate.limit == 2
    gate.answered()
    assert gate.limit == 3
