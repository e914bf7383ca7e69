"""What a new user meets in the first hour: errors in their own code named as such, what
the model said shown with a failure, partial sessions, metric code that changed."""

from __future__ import annotations

import json

import pytest

from fakellm import FakeLLM
from pytest_llmexp._view.textview import reason

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
