"""Gates, tolerated failures, comparisons and CI reports: inner sessions, then the database.

The inner experiment reads its scripted metric values (by case and execution) from
``config.json``, so that each session can make a gate pass or fail on purpose.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import pytest

from conftest import Run
from fakellm import FakeLLM

SCORED = '''
import json
import pathlib

import pytest
from pytest_llmexp import SimpleBot, experiment, metric, prompt

CONFIG = json.loads(pathlib.Path(__file__).with_name("config.json").read_text())

@prompt("user")
def ask(topic):
    """{template}"""

@metric(gate=CONFIG.get("metric_gate", ()), **CONFIG.get("bounds", {{}}))
def score(value) -> float:
    return value

@metric
def ok(value) -> bool:
    return value >= 5

@metric
def unused(value) -> int:
    # Defined and never recorded: a gate on it is an error of the session's verdict.
    return value

@metric
def judge(value) -> int:
    # An LLM judge: the metric itself calls a model.
    SimpleBot(model_name="judge-model")(f"rate {{value}}")
    return int(value) % 3

@experiment(num_executions=CONFIG["n"], gates=CONFIG.get("gates", []))
@pytest.mark.parametrize("case", sorted(CONFIG["values"]))
def test_naming(case, llm_run):
    bot = SimpleBot(model_name="namer", temperature=CONFIG.get("temperature", 0.7))
    assert bot(ask(case)).content.startswith("Reply to:")
    value = CONFIG["values"][case][llm_run.execution_index]
    if value == CONFIG.get("error_on"):
        ask()  # a PromptError (no topic): the run errors
    score(value)
    ok(value)
    judge(value)
    assert value != CONFIG.get("fail_on")

def test_other():
    assert not CONFIG.get("other_fails")
'''

TEMPLATE = "Name a {{ topic }}."


def setup(pytester: pytest.Pytester, template: str = TEMPLATE, **config: Any) -> None:
    pytester.makepyfile(test_scored=SCORED.format(template=template))
    (pytester.path / "config.json").write_text(json.dumps(config))


def gates_of(run: Run, session: str | None = None) -> dict[str, tuple[str, float | None, str]]:
    """The last (or the given) session's gate results: gate -> (verdict, observed, source)."""
    assert run.db is not None
    session = session or run.db.one("SELECT id FROM sessions ORDER BY started_at DESC LIMIT 1")
    rows = run.db.rows(
        "SELECT g.gate, g.verdict, g.observed, g.source FROM gate_results g "
        "JOIN experiments e ON e.id = g.experiment_id WHERE e.session_id = ?",
        session,
    )
    return {r["gate"]: (r["verdict"], r["observed"], r["source"]) for r in rows}


def collection_failed(run: Run) -> bool:
    """The session failed collecting (once, or once per xdist worker) and ran nothing."""
    outcomes = run.result.parseoutcomes()
    return run.result.ret != 0 and outcomes.get("errors", 0) >= 1 and "passed" not in outcomes


def last_experiment(run: Run) -> Any:
    assert run.db is not None
    return run.db.one(
        "SELECT e.* FROM experiments e JOIN sessions s ON s.id = e.session_id "
        "ORDER BY s.started_at DESC LIMIT 1"
    )


GATED: dict[str, Any] = {
    "n": 4,
    "values": {"a": [5, 6, 7, 8], "b": [6, 6, 7, 9]},
    "gates": ["score: each_case.mean >= 5", "ok: pass^2 >= 0.5"],
    "metric_gate": "mean >= 5",
}


def test_gates_decide_the_exit_status(
    run_session: Callable[..., Run], pytester: pytest.Pytester
) -> None:
    setup(pytester, **GATED)
    run = run_session("--llm-experiment", "naming")
    run.result.assert_outcomes(passed=8)
    assert run.result.ret == 0
    assert gates_of(run) == {
        "score: mean >= 5": ("passed", 6.75, "metric"),
        "score: each_case.mean >= 5": ("passed", 6.5, "code"),
        "ok: pass^2 >= 0.5": ("passed", 1.0, "code"),
    }
    assert last_experiment(run)["gate_passed"] == 1
    assert run.db is not None
    cases = run.db.rows("SELECT case_id, count(*) AS n FROM experiment_runs GROUP BY case_id")
    assert [(r["case_id"], r["n"]) for r in cases] == [("a", 4), ("b", 4)]

    # The command line wins over the ini file, which wins over code: every test passes, and
    # the session fails on a gate.
    pytester.makeini("[pytest]\nllm_gates =\n    score: median >= 100\n    ok: pass_rate >= 0.5\n")
    run = run_session("--llm-gate", "naming.score: mean >= 7", "--llm-gate", "score: median >= 6.5")
    run.result.assert_outcomes(passed=9)
    assert run.result.ret == 1
    assert gates_of(run) == {
        "score: mean >= 7": ("failed", 6.75, "cli"),
        "score: each_case.mean >= 5": ("passed", 6.5, "code"),
        "ok: pass^2 >= 0.5": ("passed", 1.0, "code"),
        "score: median >= 6.5": ("passed", 6.5, "cli"),
        "ok: pass_rate >= 0.5": ("passed", 1.0, "ini"),
    }
    assert last_experiment(run)["gate_passed"] == 0
    run.result.stdout.fnmatch_lines(
        [
            "*gate FAILED score: mean >= 7 (cli): observed 6.75",
            "LLM verdict: FAILED: naming: gate score: mean >= 7 failed (observed 6.75)",
        ]
    )


def test_failures_a_pass_rate_gate_tolerates(
    run_session: Callable[..., Run], pytester: pytest.Pytester
) -> None:
    tolerant = {"n": 4, "values": {"a": [5, 2, 7, 8], "b": [6] * 4}, "fail_on": 2}
    setup(pytester, **tolerant, gates=["pass_rate >= 0.8"])
    run = run_session()
    run.result.assert_outcomes(passed=8, failed=1)
    assert run.result.ret == 0
    assert gates_of(run) == {"runs: pass_rate >= 0.8": ("passed", 0.875, "code")}
    run.result.stdout.fnmatch_lines(["*1 failing run(s) tolerated*"])

    # A run that errored is within the error budget's tolerance, and not a pass.
    setup(
        pytester,
        n=4,
        values={"a": [5, 2, 7, 8], "b": [6, 6, 6, 3]},
        fail_on=2,
        error_on=3,
        gates=["pass_rate >= 0.8"],
    )
    run = run_session("--llm-error-budget", "0.2")
    run.result.assert_outcomes(passed=7, failed=2)
    assert run.result.ret == 0
    assert gates_of(run) == {"runs: pass_rate >= 0.8": ("passed", pytest.approx(6 / 7), "code")}
    assert run.db is not None
    assert run.db.count("experiment_runs", "status = 'error'") == 1

    # Another test failed: not the gate's to tolerate.
    setup(pytester, **tolerant, gates=["pass_rate >= 0.8"], other_fails=True)
    assert run_session().result.ret == 1
    # No gate on runs: the failed run fails the session, as any failed test does.
    setup(pytester, **tolerant, gates=["score: mean >= 1"])
    run = run_session()
    assert run.result.ret == 1
    assert gates_of(run) == {"score: mean >= 1": ("passed", 5.75, "code")}
    # The gate on runs fails: so does the session.
    setup(pytester, **tolerant, gates=["pass_rate >= 0.9"])
    run = run_session()
    assert run.result.ret == 1
    assert gates_of(run) == {"runs: pass_rate >= 0.9": ("failed", 0.875, "code")}
    assert last_experiment(run)["gate_passed"] == 0


def test_gates_that_cannot_be_evaluated_fail_clearly(
    run_session: Callable[..., Run], pytester: pytest.Pytester
) -> None:
    setup(pytester, n=1, values={"a": [5]}, gates=["score: std <= 1", "ok: pass^2 >= 0.5"])
    # A metric no @metric defines is refused before any call (test_first_hour.py); these
    # are defined, and recorded by no run.
    run = run_session("--llm-gate", "naming.unused: mean > 1", "--llm-gate", "unused: max > 1")
    run.result.assert_outcomes(passed=2)
    assert run.result.ret == 1
    assert run.db is not None
    rows = run.db.rows("SELECT gate, source, verdict, observed, detail FROM gate_results")
    assert {r["gate"]: (r["source"], r["verdict"], r["observed"], r["detail"]) for r in rows} == {
        "score: std <= 1": (
            "code",
            "error",
            None,
            "cannot be evaluated: std needs at least 2 evaluated runs",
        ),
        "ok: pass^2 >= 0.5": (
            "code",
            "error",
            None,
            "cannot be evaluated: it needs at least 2 evaluated executions per case; case 'a' "
            "has 1",
        ),
        "unused: mean > 1": (
            "cli",
            "error",
            None,
            "experiment 'naming' recorded no metric 'unused' (it recorded: judge, ok, score)",
        ),
    }
    assert last_experiment(run)["gate_passed"] == 0
    # A gate that applies to nothing has no experiment to be stored with: the terminal says it.
    run.result.stdout.fnmatch_lines(
        [
            "ERROR: gate 'unused: max > 1' (cli) applies to nothing that ran: no experiment of "
            "this session recorded 'unused' (experiments that ran: naming)",
        ]
    )


def test_gate_errors_in_code_and_options(
    run_session: Callable[..., Run], pytester: pytest.Pytester
) -> None:
    setup(pytester, n=1, values={"a": [5]}, gates=["score: mean >>= 1"])
    run = run_session()
    assert collection_failed(run)
    run.result.stdout.fnmatch_lines(
        ["*@experiment on test_naming: gate 'score: mean >>= 1' does not parse*"]
    )
    setup(pytester, n=1, values={"a": [5]}, metric_gate="score: mean >= 1")
    run = run_session()
    assert collection_failed(run)
    run.result.stdout.fnmatch_lines(["*@metric on 'score': gate 'score: mean >= 1' names*"])
    setup(pytester, n=1, values={"a": [5]})
    for option, message in [
        (("--llm-gate", "score: p200 > 1"), "*--llm-gate: gate 'score: p200 > 1': a percentile*"),
        (("--llm-compare", "test_scored.py"), "*it is a path: write --llm-compare=SESSION_ID*"),
        (("--llm-report-md", "."), "*--llm-report-md: expected a file path, got '.'*"),
        (("--llm-compare=0123abcd",), "*--llm-compare 0123abcd: no session with this id*"),
    ]:
        run = run_session(*option)
        assert run.result.ret == 4, option
        assert message.strip("*") in run.output, option
    assert run.db is not None
    assert run.db.count("experiment_runs") == 0


def test_partial_and_untrustworthy_sessions_are_not_gated(
    run_session: Callable[..., Run], pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    setup(pytester, **GATED)
    # One execution, as an IDE runs it: nothing to gate, nothing failed.
    run = run_session("--llm-gate", "naming.score: mean >= 100", "-k", "a-exec-0")
    run.result.assert_outcomes(passed=1)
    assert run.result.ret == 0
    assert gates_of(run) == {}
    assert last_experiment(run)["gate_passed"] is None
    run.result.stdout.fnmatch_lines(["*gates not evaluated: 3 execution(s) of the cases*"])
    # A report that cannot be written (its directory would be a file) fails the session.
    run = run_session("-k", "a-exec-0", "--llm-report-json", "config.json/report.json")
    assert run.result.ret == 3
    run.result.stdout.fnmatch_lines(["ERROR: cannot write the report: *config.json*"])
    # Every run errored: over the error budget, the gates are not a verdict.
    fake_llm.fail_next(400, times=1000)
    run = run_session("--llm-experiment", "naming")
    assert run.result.ret == 1
    assert gates_of(run) == {}
    assert last_experiment(run)["gate_passed"] is None
    run.result.stdout.fnmatch_lines(
        ["*gates not evaluated: more runs errored than the error budget allows"]
    )


def test_per_run_bounds_fail_the_run_readably(
    run_session: Callable[..., Run], pytester: pytest.Pytester
) -> None:
    setup(pytester, n=3, values={"a": [3, 5, 9]}, bounds={"min": 4, "max": 8})
    run = run_session("--llm-experiment", "naming")
    run.result.assert_outcomes(passed=1, failed=2)
    assert run.db is not None
    rows = run.db.rows(
        "SELECT r.status, r.error_type, r.error_message, m.value FROM experiment_runs r "
        "JOIN metrics m ON m.run_id = r.id AND m.name = 'score' ORDER BY r.execution_index"
    )
    assert [tuple(r) for r in rows] == [
        (
            "failed",
            "MetricBoundFailure",
            "metric 'score' = 3 is below its minimum 4 (@metric(min=4))",
            3.0,
        ),
        ("passed", None, None, 5.0),
        (
            "failed",
            "MetricBoundFailure",
            "metric 'score' = 9 is above its maximum 8 (@metric(max=8))",
            9.0,
        ),
    ]
    run.result.stdout.fnmatch_lines(["E*MetricBoundFailure: metric 'score' = 9 is above its*"])
    # The plugin's own frames are hidden: the failure points at the user's line.
    assert "def __call__" not in run.output


BASELINE: dict[str, Any] = {"n": 2, "values": {"a": [5, 6], "b": [7, 8], "c": [6, 6]}}
WORSE: dict[str, Any] = {
    "n": 2,
    "values": {"a": [3, 4], "b": [5, 6], "c": [4, 4]},
    "temperature": 0.2,
}


def test_a_regression_is_caught_with_the_prompt_diff(
    run_session: Callable[..., Run], pytester: pytest.Pytester
) -> None:
    setup(pytester, **BASELINE)
    first = run_session("--llm-experiment", "naming", "--llm-compare")
    assert first.result.ret == 0
    first.result.stdout.fnmatch_lines(["*no comparison: no earlier complete session of 'naming'*"])
    assert first.db is not None
    baseline = first.db.one("SELECT id FROM sessions")
    # A later partial session (one execution, from an IDE) is not a baseline.
    assert run_session("--llm-experiment", "naming", "-k", "a-exec-0").result.ret == 0

    setup(pytester, template="Name one {{ topic }}, briefly.", **WORSE)
    run = run_session(
        "--llm-experiment",
        "naming",
        "--llm-fail-on-regression",
        "--llm-report-json",
        "out/report.json",
        "--llm-report-md",
        "out/summary.md",
        "--junitxml",
        "junit.xml",
    )
    run.result.assert_outcomes(passed=6)
    assert run.result.ret == 1
    comparison = json.loads(last_experiment(run)["comparison"])
    assert comparison["baseline_session"] == baseline
    metrics = {m["metric"]: m for m in comparison["metrics"]}
    # Hand-computed: case means a 5.5 -> 3.5, b 7.5 -> 5.5, c 6 -> 4; every case moved by -2.
    assert metrics["score"] == {
        "metric": "score",
        "better": "higher",
        "unit": "cases (paired)",
        "n_baseline": 3,
        "n_current": 3,
        "baseline_mean": pytest.approx(19 / 3),
        "current_mean": pytest.approx(13 / 3),
        "diff": pytest.approx(-2.0),
        "ci_low": pytest.approx(-2.0),
        "ci_high": pytest.approx(-2.0),
        "verdict": "regressed",
        "metric_changed": False,
    }
    # ok: per case 1 -> 0, 1 -> 1 (5 and 6 pass), 1 -> 0: differences -1, 0, -1. A resample
    # is all zeros 1 time in 27 (3.7%, more than 2.5%), so the interval is [-1, 0]: no clear
    # change.
    assert (metrics["ok"]["diff"], metrics["ok"]["ci_low"], metrics["ok"]["ci_high"]) == (
        pytest.approx(-2 / 3),
        -1.0,
        0.0,
    )
    assert metrics["ok"]["verdict"] == "no clear change"
    [prompt] = comparison["prompts"]
    assert prompt["prompt"] == "ask"
    assert "-Name a {{ topic }}.\n+Name one {{ topic }}, briefly.\n" in prompt["diff"]
    assert {c["setting"]: (c["from"], c["to"]) for c in comparison["bots"]} == {
        "temperature": (["0.7"], ["0.2"])
    }
    run.result.stdout.fnmatch_lines(
        [
            "*compared with session*",
            "*score*6.333*4.333*-2*[-2, -2]*regressed (higher is better, over cases (paired))",
            "*prompt ask changed*",
            "*-Name a {{ topic }}.",
            "*+Name one {{ topic }}, briefly.",
            "*bot temperature changed: 0.7 -> 0.2",
            "LLM verdict: FAILED: naming.score regressed",
        ]
    )

    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert report["format"] == "pytest-llmexp-report/1"
    assert report["verdict"] == {"passed": False, "reasons": ["naming.score regressed"]}
    assert report["session"]["status"] == "complete"
    assert report["session"]["exitstatus"] == 1
    [experiment] = report["experiments"]
    assert experiment["name"] == "naming"
    assert (experiment["num_executions"], experiment["cases"]) == (2, 3)
    assert experiment["runs"]["passed"] == 6
    assert experiment["metrics"]["score"]["mean"] == pytest.approx(13 / 3)
    assert experiment["comparison"] == comparison
    judge = [u for u in experiment["unstable"] if u["kind"] == "judge"]
    assert judge and judge[0]["metric"] == "judge"

    markdown = (pytester.path / "out" / "summary.md").read_text()
    assert markdown.startswith("## LLM experiments: FAILED\n\n- naming.score regressed\n")
    assert "| score | 6.333 | 4.333 | -2 | [-2, -2] | 3 / 3 | regressed |" in markdown
    assert "```diff\n--- ask" in markdown
    assert "+Name one {{ topic }}, briefly." in markdown

    cases = ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")
    properties = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in cases
    }
    assert properties["test_naming[a-exec-1]"]["llmexp.metric.score"] == "4"
    assert properties["test_naming[a-exec-1]"]["llmexp.metric.ok"] == "0"
    assert properties["test_naming[a-exec-1]"]["llmexp.case"] == "a"
    assert run.db is not None
    run_ids = {r[0] for r in run.db.rows("SELECT id FROM experiment_runs")}
    assert properties["test_naming[c-exec-0]"]["llmexp.run_id"] in run_ids

    # An explicit baseline, although a later session exists; without --llm-fail-on-regression
    # a regression is reported and the session passes.
    run = run_session("--llm-experiment", "naming", f"--llm-compare={baseline[:8]}")
    assert run.result.ret == 0
    comparison = json.loads(last_experiment(run)["comparison"])
    assert comparison["baseline_session"] == baseline
    assert {m["metric"]: m["verdict"] for m in comparison["metrics"]}["score"] == "regressed"
