"""What a new user meets in the first hour: errors in their own code named as such, what
the model said shown with a failure, partial sessions, metric code that changed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fakellm import FakeLLM
from pytest_llmexp._view.textview import reason
from pytest_llmexp._view.trends import trend
from pytest_llmexp.cli import main

USER_BUGS = """
from pytest_llmexp import SimpleBot, experiment, metric, prompt

@prompt("user")
def ask(topic):
    '''Name a {{ topic }}.'''

@metric
def word(reply) -> str:
    return reply.content

@experiment(num_executions=2)
def test_bad_metric():
    word(SimpleBot(model_name="m")("hi"))

@experiment(num_executions=2)
def test_missing_argument():
    SimpleBot(model_name="m")(ask())

@experiment(num_executions=2)
def test_assertion():
    reply = SimpleBot(model_name="m")(ask(topic="ship"))
    assert len(reply.content) < 5, f"the name is too long: {reply.content!r}"
"""


def test_errors_in_the_users_code_are_not_infrastructure_and_failures_show_the_run(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    pytester.makepyfile(test_bugs=USER_BUGS)
    run = run_session()
    run.result.assert_outcomes(failed=6)
    db = run.db
    assert db is not None
    health = json.loads(db.one("SELECT health FROM sessions"))
    assert (health["errored"], health["over_budget"], health["errors"]) == (0, False, {})
    assert health["code_errors"] == {"MetricError": 2, "PromptError": 2}
    assert "ERROR: infrastructure" not in run.output
    run.result.stdout.fnmatch_lines(
        ["ERROR: 4 run(s) errored in the test's own code: 2 * 2 *. Fix the test*"]
    )
    # The assertion's own message is stored whole, first.
    failed = db.rows(
        "SELECT id, error_type, error_message FROM experiment_runs WHERE status = 'failed'"
    )
    assert len(failed) == 2
    for row in failed:
        assert row["error_type"] == "AssertionError"
        assert row["error_message"].startswith("the name is too long: 'Reply to: Name a ship.'")
        assert reason(row["error_type"], row["error_message"]) == (
            "AssertionError: the name is too long: 'Reply to: Name a ship.' [...]"
        )
    # Each failure report shows its run: the id, the command, what was asked and replied.
    for row in failed:
        run.result.stdout.fnmatch_lines(
            [
                "*- LLM run -*",
                f"run {row['id']} (all of it: llmexp run {row['id'][:12]})",
                "call 1: m, finish_reason stop",
                "  user: Name a ship.",
                "  reply: Reply to: Name a ship.",
            ]
        )
    run.result.stdout.fnmatch_lines(["*- LLM run -*", "run *", "call 1: m, *", "  user: hi"])
    # The failures point at the test's lines, not at the plugin's frames and locals.
    assert "src/pytest_llmexp" not in run.output and "site-packages/pytest_llmexp" not in run.output
    assert "value = 'Reply to: hi'" not in run.output


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables fit the terminal; these tests read whole cells."""
    monkeypatch.setenv("COLUMNS", "200")


def llmexp(path: Any, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["--db", str(path), *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


THREE = """
from pytest_llmexp import SimpleBot, experiment, metric

@metric
def length(text) -> int:
    return len(text.split())

@experiment(num_executions=3)
def test_three():
    length(SimpleBot(model_name="m")("a b c").content)
"""


def test_partial_sessions_are_marked_shown_and_never_the_default_baseline(
    run_session,
    pytester: pytest.Pytester,
    fake_llm: FakeLLM,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytester.makepyfile(test_three=THREE)
    run_session().result.assert_outcomes(passed=3)
    run_session("--llm-num-executions", "1").result.assert_outcomes(passed=1)
    run_session("test_three.py::test_three[exec-1]").result.assert_outcomes(passed=1)
    run = run_session("--llm-compare", "last")
    run.result.assert_outcomes(passed=3)
    db = run.db
    assert db is not None
    sessions = [r["id"] for r in db.rows("SELECT id FROM sessions ORDER BY started_at")]
    partial = db.rows(
        "SELECT e.partial, e.summary FROM experiments e JOIN sessions s "
        "ON s.id = e.session_id ORDER BY s.started_at"
    )
    assert [r["partial"] for r in partial] == [0, 1, 1, 0]
    assert [json.loads(r["summary"]).get("partial") for r in partial] == [
        None,
        {"runs": 1, "planned": 3},
        {"runs": 1, "planned": 3},
        None,
    ]
    # The smoke run and the single execution are not the baseline: the full session is.
    comparison = json.loads(
        db.one("SELECT comparison FROM experiments WHERE session_id = ?", sessions[-1])
    )
    assert comparison["baseline_session"] == sessions[0]
    assert (comparison["metrics"][0]["n_baseline"], comparison["metrics"][0]["n_current"]) == (
        3,
        3,
    )
    run.result.stdout.fnmatch_lines(["*metric *n (base/cur)*", "*length *3/3 *"])
    listing = llmexp(db.path, capsys, "experiments")
    assert listing.count("complete, partial") == 2
    shown = llmexp(db.path, capsys, "show", "three", "--session", sessions[2][:12])
    assert "(complete, partial)" in shown
    assert "1 case(s) x 3 execution(s), partial: 1 of 3 planned runs ran" in shown
    statuses = [p["session_status"] for p in trend(db.conn, "three")]
    assert statuses == ["complete", "complete, partial", "complete, partial", "complete"]


def test_a_metric_whose_code_changed_is_named_in_every_comparison(
    run_session,
    pytester: pytest.Pytester,
    fake_llm: FakeLLM,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytester.makepyfile(test_three=THREE)
    run_session().result.assert_outcomes(passed=3)
    # The same generations, another ruler: characters instead of words.
    pytester.makepyfile(test_three=THREE.replace("len(text.split())", "len(text)"))
    run = run_session("--llm-compare", "last")
    run.result.assert_outcomes(passed=3)
    db = run.db
    assert db is not None
    codes = {
        json.loads(r)["metric_specs"]["length"]["code"]
        for (r,) in db.rows("SELECT run_data FROM experiment_runs")
    }
    assert len(codes) == 2
    sessions = [r["id"] for r in db.rows("SELECT id FROM sessions ORDER BY started_at")]
    comparison = json.loads(
        db.one("SELECT comparison FROM experiments WHERE session_id = ?", sessions[-1])
    )
    assert comparison["metric_changes"] == ["length"]
    assert comparison["metrics"][0]["metric_changed"] is True
    assert comparison["metrics"][0]["verdict"] == "improved"
    run.result.stdout.fnmatch_lines(
        [
            "*length *improved (higher is better, over runs, metric changed)",
            "*metric changed: length*",
        ]
    )
    compared = llmexp(db.path, capsys, "compare", sessions[0][:12], sessions[1][:12])
    assert "improved (metric changed)" in compared
    assert "metric changed: length (its code differs from the baseline's" in compared
    assert "metric changed: length" in trend(db.conn, "three")[-1]["changes"]
    # An unchanged metric is not flagged.
    run = run_session("--llm-compare", "last")
    again = json.loads(
        run.db.one(
            "SELECT comparison FROM experiments e JOIN sessions s ON s.id = e.session_id "
            "ORDER BY s.started_at DESC LIMIT 1"
        )
    )
    assert again["metric_changes"] == []


def test_a_gate_that_names_nothing_is_refused_before_any_call(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    pytester.makepyfile(test_three=THREE)
    result = run_session("--llm-gate", "three.lenght: mean >= 1").result
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert fake_llm.requests == []
    assert (
        "--llm-gate 'three.lenght: mean >= 1': no metric named 'lenght' is defined by a "
        "@metric; did you mean 'length'? known: length" in result.stdout.str() + result.stderr.str()
    )
    result = run_session("--llm-gate", "thre.length: mean >= 1").result
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "no experiment named 'thre' was collected; did you mean 'three'?" in (
        result.stdout.str() + result.stderr.str()
    )
    result = run_session("--llm-gate", "length >= 0.8").result
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --llm-gate: gate 'length >= 0.8': unknown statistic 'length'; *; did you "
            "mean 'length: mean >= 0.8'?"
        ]
    )
    assert fake_llm.requests == []


def test_llmexp_gate_with_no_gate_is_not_a_failed_verdict(
    run_session, pytester: pytest.Pytester, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makepyfile(test_three=THREE)
    run = run_session()
    assert run.db is not None
    code = main(["--db", str(run.db.path), "gate", "last"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "has no gate to evaluate: declare gates in code" in err
    assert "FAILED" not in out + err
