"""Black-box tests of the plugin: an inner pytest session, then what message_log.db holds.

Every test here runs twice, without xdist and with ``-n 2`` (the ``mode`` fixture).
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from conftest import Run
from fakellm import FakeLLM

NAMING = '''
from pydantic import BaseModel, Field
from pytest_llmexp import StructuredBot, SimpleBot, experiment, metric, prompt

@prompt("system")
def jdbot_sysprompt(type_of_manager):
    """You are an {{ type_of_manager }}."""

@prompt("user")
def jdbot_user_message(job_description):
    """Give me a name for a job that follows this description: {{ job_description }}."""

class JobDescription(BaseModel):
    name: str = Field(..., description="A job name.")
    description: str = Field(..., description="A job description.")

@metric
def name_length(response) -> int:
    return len(response.name)

@metric
def has_name(response) -> bool:
    return bool(response.name)

@metric
def ratio(response) -> float:
    return len(response.name) / 4

@experiment(num_executions=3)
def test_name_generator():
    bot = StructuredBot(jdbot_sysprompt("data science manager"),
                        model_name="gpt-4o", pydantic_model=JobDescription, temperature=0.7)
    response = bot(jdbot_user_message("someone who builds full stack AI apps"))
    name_length(response)
    has_name(response)
    ratio(response)

def test_not_an_experiment():
    assert True
'''


def test_runs_prompts_bots_calls_and_metrics_are_stored(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    pytester.makepyfile(test_naming=NAMING)
    run: Run = run_session()
    run.result.assert_outcomes(passed=4)
    db = run.db
    assert db is not None

    session = db.one("SELECT * FROM sessions")
    assert session["status"] == "complete"
    assert session["exitstatus"] == 0
    assert session["kind"] == "pytest"
    assert session["endpoint"] == fake_llm.url
    assert json.loads(session["versions"])["pytest-llmexp"]
    experiment = db.one("SELECT * FROM experiments")
    assert (experiment["name"], experiment["num_executions"]) == ("name_generator", 3)
    assert experiment["status"] == "complete"

    runs = db.rows("SELECT * FROM experiment_runs ORDER BY execution_index")
    assert [r["execution_index"] for r in runs] == [0, 1, 2]
    assert {r["status"] for r in runs} == {"passed"}
    assert len({r["id"] for r in runs}) == 3
    assert all(r["nodeid"].endswith(f"[exec-{r['execution_index']}]") for r in runs)

    # Metrics: one row per run and metric, bool stored as 1/0 with its kind.
    assert db.count("metrics") == 9
    kinds = dict(db.rows("SELECT DISTINCT name, kind FROM metrics"))
    assert kinds == {"name_length": "int", "has_name": "bool", "ratio": "float"}
    assert {r[0] for r in db.rows("SELECT value FROM metrics WHERE name = 'has_name'")} == {1.0}
    name = json.loads(
        fake_llm.responder(
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "schema": {"properties": {"name": {"type": "string", "title": "Name"}}}
                    },
                },
                "messages": [],
            }
        )
    )["name"]
    lengths = {r[0] for r in db.rows("SELECT value FROM metrics WHERE name = 'name_length'")}
    assert lengths == {float(len(name))}

    # Prompts: two versions, linked to every run.
    prompts = db.rows("SELECT * FROM prompts ORDER BY function_name")
    assert [(p["function_name"], p["role"]) for p in prompts] == [
        ("jdbot_sysprompt", "system"),
        ("jdbot_user_message", "user"),
    ]
    assert prompts[0]["template"] == "You are an {{ type_of_manager }}."
    assert db.count("run_prompts") == 6

    # One bot configuration, as called.
    bot = db.one("SELECT * FROM bots")
    assert (bot["class_name"], bot["model_name"], bot["temperature"]) == (
        "StructuredBot",
        "gpt-4o",
        0.7,
    )
    assert bot["system_prompt"] == "You are an data science manager."
    assert json.loads(bot["response_schema"])["title"] == "JobDescription"
    assert json.loads(bot["params"])["base_url"] == fake_llm.url
    assert db.count("run_bots") == 3

    # One call per run, with the whole conversation and token usage.
    calls = db.rows("SELECT * FROM message_log ORDER BY timestamp")
    assert len(calls) == 3
    assert {c["run_id"] for c in calls} == {r["id"] for r in runs}
    messages = json.loads(calls[0]["message_log"])
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert "full stack AI apps" in messages[1]["content"]
    assert calls[0]["prompt_tokens"] > 0 and calls[0]["completion_tokens"] > 0
    assert calls[0]["retries"] == 0 and calls[0]["error"] is None
    # Metrics in the order the run recorded them; run_data keeps only what no table holds.
    recorded = db.rows("SELECT name FROM metrics WHERE run_id = ? ORDER BY position", runs[0]["id"])
    assert [r[0] for r in recorded] == ["name_length", "has_name", "ratio"]
    # run_data keeps, per metric, the version of its code (a hash of its source).
    run_data = json.loads(runs[0]["run_data"])
    codes = {name: spec.pop("code") for name, spec in run_data["metric_specs"].items()}
    assert run_data == {"metadata": {}, "gates": [], "metric_specs": {key: {} for key in codes}}
    assert set(codes) == {"name_length", "has_name", "ratio"}
    assert all(re.fullmatch(r"[0-9a-f]{16}", code) for code in codes.values())
    assert len(set(codes.values())) == 3

    # The stored summary is what the terminal shows.
    summary = json.loads(experiment["summary"])
    assert summary["runs"]["passed"] == 3
    assert summary["metrics"]["has_name"]["mean"] == 1.0
    assert summary["metrics"]["name_length"]["std"] == 0.0
    run.result.stdout.fnmatch_lines(
        [
            "*= LLM experiments =*",
            "name_generator: 3 runs (3 passed, 0 failed, 0 errors)",
            "*metric*n*mean*std*min*max",
            "*has_name*3*1*0*1*1",
            f"database: {db.path} (session {session['id']})",
        ]
    )
    assert len(fake_llm.requests) == 3
    assert fake_llm.requests[0]["response_format"]["type"] == "json_schema"


PROMPT_V = '''
from pytest_llmexp import SimpleBot, experiment, prompt

@prompt("user")
def ask(topic):
    """{template}"""

@experiment(num_executions=2)
def test_versions():
    SimpleBot(model_name="m")(ask("tea"))
'''


def test_prompt_versions_are_hashed_and_linked(run_session, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_v=PROMPT_V.replace("{template}", "Tell me about {{ topic }}."))
    run_session().result.assert_outcomes(passed=2)
    run_session().result.assert_outcomes(passed=2)
    pytester.makepyfile(test_v=PROMPT_V.replace("{template}", "Explain {{ topic }} briefly."))
    db = run_session().db
    assert db is not None
    rows = db.rows("SELECT * FROM prompts ORDER BY id")
    # Same template in two sessions: one version. Edited template: a new version linked back.
    assert len(rows) == 2
    assert rows[0]["hash"] != rows[1]["hash"]
    assert rows[1]["previous_version_id"] == rows[0]["id"]
    assert rows[0]["previous_version_id"] is None
    assert db.count("sessions", "status = 'complete'") == 3
    last = db.one("SELECT id FROM sessions ORDER BY started_at DESC LIMIT 1")
    linked = db.rows(
        "SELECT DISTINCT p.template FROM run_prompts rp JOIN prompts p ON p.id = rp.prompt_id "
        "JOIN experiment_runs r ON r.id = rp.run_id JOIN experiments e ON e.id = r.experiment_id "
        "WHERE e.session_id = ?",
        last,
    )
    assert [r[0] for r in linked] == ["Explain {{ topic }} briefly."]


STATUSES = """
import pytest
from pytest_llmexp import SimpleBot, experiment, metric

@metric
def words(text) -> int:
    return len(text.split())

@metric
def bad(text):
    return "not a number"

@experiment(num_executions=2)
def test_asserts():
    reply = SimpleBot(model_name="m")("hello")
    words(reply.content)
    assert len(reply.content) > 1000, "reply too short"

@experiment(num_executions=1)
def test_contract():
    bad("x")

@experiment(num_executions=1)
def test_skips():
    pytest.skip(reason="not today")

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

@experiment(num_executions=1)
def test_setup_error(broken):
    pass
"""


def test_run_status_follows_the_outcome(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    fake_llm.responder = lambda request: "three word reply"
    pytester.makepyfile(test_statuses=STATUSES)
    run = run_session()
    run.result.assert_outcomes(passed=0, failed=3, skipped=1, errors=1)
    db = run.db
    assert db is not None
    by_experiment = {
        row["name"]: row
        for row in db.rows(
            "SELECT e.name, r.status, r.error_type, r.error_message, r.run_data "
            "FROM experiment_runs r JOIN experiments e ON e.id = r.experiment_id"
        )
    }
    assert by_experiment["asserts"]["status"] == "failed"
    assert by_experiment["asserts"]["error_type"] == "AssertionError"
    assert "reply too short" in by_experiment["asserts"]["error_message"]
    # A failed run keeps its metrics and its conversation.
    assert db.count("metrics", "name = 'words' AND value = 3") == 2
    assert db.count("message_log", "run_id IS NOT NULL") == 2
    assert by_experiment["contract"]["status"] == "error"
    assert by_experiment["contract"]["error_type"] == "MetricError"
    assert "metric 'bad' returned str" in by_experiment["contract"]["error_message"]
    assert by_experiment["skips"]["status"] == "skipped"
    assert by_experiment["skips"]["error_message"] == "Skipped: not today"
    assert by_experiment["setup_error"]["status"] == "error"
    assert by_experiment["setup_error"]["error_type"] == "RuntimeError"
    summary = json.loads(db.one("SELECT summary FROM experiments WHERE name = 'asserts'"))
    assert summary["runs"]["failed"] == 2
    # Failed runs were evaluated: their metrics count.
    assert summary["metrics"]["words"]["n"] == 2


def test_llm_errors_make_the_run_an_error(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    pytester.makepyfile(
        test_down="""
        from pytest_llmexp import SimpleBot, experiment, metric

        @metric
        def length(text) -> int:
            return len(text)

        @experiment(num_executions=2)
        def test_down():
            reply = SimpleBot(model_name="m")("hello")
            length(reply.content)
        """
    )
    fake_llm.fail_next(503, times=1)
    run = run_session("--llm-max-retries", "0")
    run.result.assert_outcomes(passed=1, failed=1)
    db = run.db
    assert db is not None
    rows = db.rows("SELECT status, error_type, error_message FROM experiment_runs ORDER BY status")
    assert [r["status"] for r in rows] == ["error", "passed"]
    assert rows[0]["error_type"] == "InternalServerError"
    assert "503" in rows[0]["error_message"]
    failed_call = db.one("SELECT error FROM message_log WHERE error IS NOT NULL")
    assert "InternalServerError" in failed_call
    # An errored run was not evaluated: the summary counts it, the metric ignores it.
    summary = json.loads(db.one("SELECT summary FROM experiments"))
    assert summary["runs"] == {
        "passed": 1,
        "failed": 0,
        "error": 1,
        "skipped": 0,
        "crashed": 0,
        "rerun": 0,
    }
    assert summary["metrics"]["length"]["n"] == 1
    run.result.stdout.fnmatch_lines(["down: 2 runs (1 passed, 0 failed, 1 errors)"])


TWO = """
import pytest
from pytest_llmexp import SimpleBot, experiment

@experiment(num_executions=2)
def test_alpha():
    SimpleBot(model_name="m")("a")

@pytest.mark.experiment(num_executions=3, name="beta")
def test_second():
    SimpleBot(model_name="m")("b")

def test_plain():
    pass
"""


def deselected(mode: str, count: int) -> int:
    """pytest-xdist does not report deselected items in its summary line."""
    return count if mode == "serial" else 0


def test_llm_experiment_selects_by_name(run_session, pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_two=TWO)
    run = run_session("--llm-experiment", "beta")
    run.result.assert_outcomes(passed=3, deselected=deselected(mode, 3))
    db = run.db
    assert db is not None
    assert [r[0] for r in db.rows("SELECT name FROM experiments")] == ["beta"]
    assert db.count("experiment_runs") == 3


def test_llm_experiment_unknown_name_is_a_usage_error(
    run_session, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(test_two=TWO)
    run = run_session("--llm-experiment", "gamma")
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    message = "--llm-experiment gamma: no such experiment; known experiments: alpha, beta"
    assert run.output.count(message) == 1
    assert run.db is None


def test_marker_selection_and_executions_override(
    run_session, pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyfile(test_two=TWO)
    run = run_session("-m", "experiment", "--llm-num-executions", "4")
    run.result.assert_outcomes(passed=8, deselected=deselected(mode, 1))
    db = run.db
    assert db is not None
    rows = db.rows("SELECT name, num_executions FROM experiments ORDER BY name")
    assert [tuple(r) for r in rows] == [("alpha", 4), ("beta", 4)]
    assert db.count("experiment_runs") == 8
    run = run_session("-m", "not experiment")
    run.result.assert_outcomes(passed=1, deselected=deselected(mode, 5))


def test_llm_model_overrides_every_bot(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM, mode: str
) -> None:
    pytester.makepyfile(test_two=TWO)
    run = run_session("--llm-experiment", "alpha", "--llm-model", "other-model")
    run.result.assert_outcomes(passed=2, deselected=deselected(mode, 4))
    db = run.db
    assert db is not None
    assert db.one("SELECT DISTINCT model_name FROM bots") == "other-model"
    assert db.one("SELECT DISTINCT model_name FROM message_log") == "other-model"
    assert {r["model"] for r in fake_llm.requests} == {"other-model"}
    run.result.stdout.fnmatch_lines(["llmexp: endpoint *, model override other-model, database *"])


def test_one_execution_by_node_id(run_session, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_two=TWO)
    run = run_session("test_two.py::test_second[exec-2]")
    run.result.assert_outcomes(passed=1)
    db = run.db
    assert db is not None
    row = db.one("SELECT execution_index, nodeid FROM experiment_runs")
    assert tuple(row) == (2, "test_two.py::test_second[exec-2]")


FIXTURES = '''
import pytest
from pytest_llmexp import SimpleBot, experiment, prompt

@prompt("system")
def persona():
    """You are terse."""

@pytest.fixture(scope="session")
def bot():
    return SimpleBot(persona(), model_name="shared")

@experiment(num_executions=3)
def test_shared(bot, llm_run):
    llm_run.set_metadata("index_seen", llm_run.execution_index)
    assert llm_run.experiment == "shared"
    bot("go")

def test_outside(bot):
    bot("outside")
'''


def test_a_session_without_experiments_still_stores_its_calls(
    run_session, pytester: pytest.Pytester
) -> None:
    # No experiment, and the bots imported only inside a test: the plugin set nothing up
    # during collection, yet the call is stored when the session ends.
    pytester.makepyfile(
        """
        def test_plain():
            from pytest_llmexp import SimpleBot

            SimpleBot(model_name="gpt-4o-mini")("lazily")

        def test_other():
            pass
        """
    )
    run = run_session()
    run.result.assert_outcomes(passed=2)
    assert run.db is not None
    assert run.db.count("experiment_runs") == 0
    stored = run.db.one("SELECT message_log FROM message_log WHERE run_id IS NULL")
    assert [m["content"] for m in json.loads(stored)] == ["lazily", "Reply to: lazily"]


def test_a_session_without_experiments_creates_no_database(
    run_session, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n")
    run = run_session()
    run.result.assert_outcomes(passed=1)
    assert run.db is None
    assert not (pytester.path / "message_log.db-spool").exists()


def test_session_scoped_bot_is_recorded_on_each_run(run_session, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fixtures=FIXTURES)
    run = run_session()
    run.result.assert_outcomes(passed=4)
    db = run.db
    assert db is not None
    assert db.count("bots") == 1
    assert db.count("run_bots") == 3
    # The system prompt was rendered once, outside the runs, yet each run used it.
    assert db.count("run_prompts") == 3
    assert db.count("message_log", "run_id IS NOT NULL") == 3
    # A call outside any experiment is logged with no run.
    orphan = db.one("SELECT message_log FROM message_log WHERE run_id IS NULL")
    assert [m["content"] for m in json.loads(orphan)] == [
        "You are terse.",
        "outside",
        "Reply to: outside",
    ]
    metadata = sorted(
        (r["execution_index"], json.loads(r["run_data"])["metadata"])
        for r in db.rows("SELECT execution_index, run_data FROM experiment_runs")
    )
    assert metadata == [(i, {"index_seen": i}) for i in range(3)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--llm-timeout", "abc"], "--llm-timeout: expected a positive number of seconds*'abc'"),
        (["--llm-timeout", "0"], "--llm-timeout: expected a positive number of seconds*'0'"),
        (["--llm-max-retries", "-1"], "--llm-max-retries: expected a whole number >= 0*'-1'"),
        (["--llm-num-executions", "0"], "--llm-num-executions: expected a whole number from*'0'"),
        (["--llm-base-url", "ftp://x"], "--llm-base-url: expected an http:// or https:// URL*"),
        (["--llm-error-budget", "1.5"], "--llm-error-budget: expected a share of runs from 0*"),
        (["--llm-max-calls", "0"], "--llm-max-calls: expected a positive whole number*'0'"),
        (["--llm-max-tokens", "many"], "--llm-max-tokens: expected a positive whole*'many'"),
        (["--llm-max-stored-chars", "-5"], "--llm-max-stored-chars: expected a positive*'-5'"),
    ],
)
def test_bad_options_are_usage_errors(
    run_session, pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    pytester.makepyfile(test_two=TWO)
    result = run_session(*args).result
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert not (pytester.path / "message_log.db").exists()


def test_ini_values_are_validated_and_overridden(
    run_session, pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyfile(test_two=TWO)
    pytester.makeini("[pytest]\nllm_timeout = soon\nllm_model = from-ini\n")
    result = run_session().result
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini llm_timeout: expected a positive number*'soon'"])
    run = run_session("--llm-timeout", "5", "--llm-experiment", "alpha")
    run.result.assert_outcomes(passed=2, deselected=deselected(mode, 4))
    assert run.db is not None
    assert run.db.one("SELECT DISTINCT model_name FROM bots") == "from-ini"
    assert json.loads(run.db.one("SELECT DISTINCT params FROM bots"))["timeout"] == 5.0
    run = run_session("--llm-timeout", "5", "--llm-model", "from-cli", "--llm-experiment", "alpha")
    run.result.assert_outcomes(passed=2, deselected=deselected(mode, 4))
    assert run.db is not None
    models = {r[0] for r in run.db.rows("SELECT model_name FROM bots")}
    assert models == {"from-ini", "from-cli"}


@pytest.mark.parametrize(
    ("decorator", "message"),
    [
        ("@experiment(num_executions=0)", "num_executions must be a positive int, got 0"),
        ("@experiment(num_executions='3')", "num_executions must be a positive int, got '3'"),
        ("@experiment(num_executions=True)", "num_executions must be a positive int, got True"),
        ("@experiment(num_exec=3)", "unknown argument(s) num_exec; it takes num_executions, name"),
        ("@pytest.mark.experiment(-2)", "num_executions must be a positive int, got -2"),
        ("@experiment(name='')", "name must be a non-empty string"),
    ],
)
def test_bad_experiment_arguments_are_collection_errors(
    run_session, pytester: pytest.Pytester, decorator: str, message: str
) -> None:
    pytester.makepyfile(
        test_bad=f"""
        import pytest
        from pytest_llmexp import experiment

        {decorator}
        def test_gen():
            pass

        def test_fine():
            pass
        """
    )
    result = run_session().result
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([f"*@experiment on test_gen: {message}*"])
    assert not (pytester.path / "message_log.db").exists()


def test_duplicate_experiment_names_are_refused(run_session, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_a="from pytest_llmexp import experiment\n@experiment\ndef test_gen(): pass\n",
        test_b="import pytest\n@pytest.mark.experiment(name='gen')\ndef test_x(): pass\n",
    )
    run = run_session()
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert (
        "experiment name 'gen' is used by test_a.py::test_gen and test_b.py::test_x" in run.output
    )
    assert run.db is None


def test_sessions_without_experiments_leave_no_database(
    run_session, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(test_plain="def test_one():\n    pass\n")
    run_session().result.assert_outcomes(passed=1)
    assert not (pytester.path / "message_log.db").exists()


def test_llm_db_option_and_ini(run_session, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_two=TWO)
    run = run_session("--llm-experiment", "alpha", "--llm-db", "out/runs.db", db="out/runs.db")
    assert run.db is not None and run.db.count("experiment_runs") == 2
    pytester.makeini("[pytest]\nllm_db = ini.db\n")
    run = run_session("--llm-experiment", "alpha", db="ini.db")
    assert run.db is not None and run.db.count("experiment_runs") == 2


def test_database_that_is_not_sqlite_is_left_alone(run_session, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_two=TWO)
    (pytester.path / "message_log.db").write_text("my notes, not a database\n")
    run = run_session("--llm-experiment", "alpha", db=None)
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert "exists and is not a SQLite database; it was left as it is" in run.output
    assert (pytester.path / "message_log.db").read_text() == "my notes, not a database\n"


def test_help_lists_the_options_in_one_group(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("--help", timeout=60)
    text = textwrap.dedent(result.stdout.str())
    group = text[text.index("LLM experiments:") :]
    for option in (
        "--llm-experiment",
        "--llm-db",
        "--llm-num-executions",
        "--llm-model",
        "--llm-base-url",
        "--llm-timeout",
        "--llm-max-retries",
    ):
        assert option in group
    for ini in ("llm_db", "llm_model", "llm_base_url", "llm_timeout", "llm_max_retries"):
        assert f"  {ini} " in text
    fixtures = pytester.runpytest_subprocess("--fixtures", timeout=60).stdout.str()
    assert "llm_run" in fixtures and "The current experiment run" in fixtures


def test_the_example_experiment(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM, mode: str
) -> None:
    example = Path(__file__).parent.parent / "examples" / "test_name_generator.py"
    pytester.makepyfile(test_name_generator=example.read_text())
    args = ["--llm-experiment", "name_generator"] + (["-n", "4"] if mode == "xdist" else [])
    # The example's own command line: -n 4 replaces the fixture's -n 2.
    run = run_session(*args)
    run.result.assert_outcomes(passed=10)
    db = run.db
    assert db is not None
    assert db.count("experiment_runs", "status = 'passed'") == 10
    assert db.count("metrics", "name = 'coolness' AND value BETWEEN 1 AND 10") == 10
    assert db.count("metrics", "name = 'name_length'") == 10
    # Generator and judge: two bots, two calls per run, four prompts.
    assert db.count("bots") == 2
    assert db.count("message_log", "run_id IS NOT NULL") == 20
    assert db.count("prompts") == 4
    assert db.count("run_prompts") == 40
    run.result.stdout.fnmatch_lines(["name_generator: 10 runs (10 passed, 0 failed, 0 errors)"])
    if mode == "xdist":
        assert len({r[0] for r in db.rows("SELECT worker FROM experiment_runs")}) > 1


def test_ctrl_c_marks_the_session_interrupted_and_keeps_finished_runs(
    run_session, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        test_stop="""
        import time
        from pytest_llmexp import SimpleBot, experiment

        @experiment(num_executions=3)
        def test_stop(llm_run):
            SimpleBot(model_name="m")("hi")
            if llm_run.execution_index == 1:
                time.sleep(0.5)  # under xdist, lets execution 0 finish on the other worker
                raise KeyboardInterrupt
        """
    )
    run = run_session()
    assert run.result.ret == pytest.ExitCode.INTERRUPTED
    db = run.db
    assert db is not None
    session = db.one("SELECT status, exitstatus FROM sessions")
    assert tuple(session) == ("interrupted", 2)
    runs = db.rows("SELECT execution_index, status FROM experiment_runs")
    indices = {r["execution_index"] for r in runs}
    assert 0 in indices and 1 not in indices
    assert {r["status"] for r in runs} <= {"passed"}
    assert db.one("SELECT status FROM experiments") == "interrupted"


def test_calls_from_threads_the_test_starts_belong_to_its_run(
    run_session, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        test_threads="""
        import threading
        from concurrent.futures import ThreadPoolExecutor
        from pytest_llmexp import SimpleBot, experiment, metric

        @metric
        def answers(n) -> int:
            return n

        @experiment(num_executions=2)
        def test_threads():
            bot = SimpleBot(model_name="m")
            with ThreadPoolExecutor(3) as pool:
                replies = list(pool.map(bot, ["a", "b", "c"]))
            thread = threading.Thread(target=answers, args=(len(replies),))
            thread.start()
            thread.join()
        """
    )
    run = run_session()
    run.result.assert_outcomes(passed=2)
    db = run.db
    assert db is not None
    per_run = db.rows(
        "SELECT r.id, count(c.id) AS calls FROM experiment_runs r "
        "LEFT JOIN message_log c ON c.run_id = r.id GROUP BY r.id"
    )
    assert [row["calls"] for row in per_run] == [3, 3]
    assert db.count("message_log", "run_id IS NULL") == 0
    assert db.count("metrics", "name = 'answers' AND value = 3") == 2


def test_a_run_that_carries_a_key_is_stored_masked(run_session, pytester: pytest.Pytester) -> None:
    # A key in a run's metadata is masked in the JSON the run travels as, which is stored.
    pytester.makepyfile(
        """
        import os
        from pytest_llmexp import experiment

        @experiment(num_executions=2)
        def test_leaky(llm_run):
            llm_run.set_metadata("key", os.environ["OPENAI_API_KEY"])
            llm_run.set_metadata("other", "sk-abcdefghijklmnopqrstuvwx")
        """
    )
    run = run_session()
    run.result.assert_outcomes(passed=2)
    assert run.db is not None  # the runner checks the key is nowhere in the database
    stored = [
        json.loads(r[0])["metadata"] for r in run.db.rows("SELECT run_data FROM experiment_runs")
    ]
    assert len(stored) == 2
    for metadata in stored:
        assert metadata["key"].endswith("***") and metadata["other"] == "sk-abcdef***"


def test_credentials_on_the_command_line_are_not_stored(
    run_session, pytester: pytest.Pytester, fake_llm: FakeLLM
) -> None:
    pytester.makepyfile(test_two=TWO)
    url = fake_llm.url.replace("http://", "http://user:hunter2pass@")
    run = run_session("--llm-experiment", "alpha", "--llm-base-url", url)
    run.result.assert_outcomes(passed=2)
    assert run.db is not None
    assert "hunter2pass" not in run.db.dump()
    assert json.loads(run.db.one("SELECT argv FROM sessions"))[-1] == url.replace(
        "user:hunter2pass@", "***@"
    )
    assert "hunter2pass" not in run.output


FLAKY_STORE = """
import sqlite3
from pytest_llmexp._store import store

_insert_batch = store.Store.insert_batch
failures = {"left": FAILURES}

def flaky_insert_batch(self, session_id, batch):
    if failures["left"]:
        failures["left"] -= 1
        raise sqlite3.OperationalError("disk I/O error (injected)")
    return _insert_batch(self, session_id, batch)

store.Store.insert_batch = flaky_insert_batch
"""


def test_a_failed_insert_is_retried_at_session_end(run_session, pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FLAKY_STORE.replace("FAILURES", "1"))
    pytester.makepyfile(test_two=TWO)
    run = run_session("--llm-experiment", "beta")
    run.result.assert_outcomes(passed=3)
    assert run.result.ret == pytest.ExitCode.OK
    assert run.db is not None
    assert run.db.count("experiment_runs") == 3
    assert run.db.one("SELECT status FROM sessions") == "complete"
    summary = json.loads(run.db.one("SELECT summary FROM experiments"))
    assert summary["runs"]["passed"] == 3
    run.result.stdout.fnmatch_lines(
        [
            "warning: 1 write(s) to * failed and succeeded when retried (last: "
            "OperationalError: disk I/O error (injected))"
        ]
    )


def test_results_that_cannot_be_stored_fail_the_session(
    run_session, pytester: pytest.Pytester
) -> None:
    pytester.makeconftest(FLAKY_STORE.replace("FAILURES", "10**9"))
    pytester.makepyfile(test_two=TWO)
    run = run_session("--llm-experiment", "beta")
    run.result.assert_outcomes(passed=3)
    assert run.result.ret == pytest.ExitCode.INTERNAL_ERROR
    assert run.db is not None
    assert run.db.count("experiment_runs") == 0
    # Its numbers are no verdict: the session is interrupted, and its runs kept in the spool.
    assert tuple(run.db.one("SELECT status, exitstatus FROM sessions")) == ("interrupted", 3)
    assert run.output.count("ERROR: 3 result(s) could not be stored in") == 1
    assert "they are kept in" in run.output


def test_a_session_end_that_cannot_be_stored_fails_the_session(
    run_session, pytester: pytest.Pytester
) -> None:
    pytester.makeconftest(
        """
        import sqlite3
        from pytest_llmexp._store import store

        def broken_finish(self, session_id, **kwargs):
            raise sqlite3.OperationalError("database or disk is full (injected)")

        store.Store.finish_session = broken_finish
        """
    )
    pytester.makepyfile(test_two=TWO)
    run = run_session("--llm-experiment", "alpha")
    run.result.assert_outcomes(passed=2)
    assert run.result.ret == pytest.ExitCode.INTERNAL_ERROR
    assert run.db is not None
    assert run.db.count("experiment_runs") == 2
    # Never left running: the one small write that marks it interrupted still went through.
    assert run.db.one("SELECT status FROM sessions") == "interrupted"
    assert "succeeded when retried" not in run.output
    assert (
        run.output.count(
            "ERROR: the session's end (its summaries and health) could not be stored; its row says "
            "interrupted"
        )
        == 1
    )


def test_a_session_without_experiments_loads_nothing_heavy(
    run_session, pytester: pytest.Pytester, mode: str
) -> None:
    # The plugin loads into every session of its environment: without experiments, neither
    # the LLM client, the database, nor the verdict machinery may be imported.
    pytester.makeconftest(
        """
        import json, os, sys

        def pytest_unconfigure(config):
            name = getattr(config, "workerinput", {}).get("workerid", "main")
            with open(f"modules-{name}.json", "w") as out:
                json.dump(sorted(sys.modules), out)
        """
    )
    pytester.makepyfile("def test_plain():\n    assert True\n")
    run = run_session()
    run.result.assert_outcomes(passed=1)
    heavy = {"openai", "jinja2", "sqlite_utils", "pydantic", "httpx"}
    heavy |= {
        f"pytest_llmexp.{m}"
        for m in ("store", "bots", "prompts", "gates", "evaluate", "verdicts", "compare", "reports")
    }
    files = list(pytester.path.glob("modules-*.json"))
    assert len(files) == (3 if mode == "xdist" else 1)  # the controller and its two workers
    for file in files:
        assert heavy.isdisjoint(json.loads(file.read_text())), file.name


def test_pytest_does_not_rewrite_the_plugins_modules(
    run_session, pytester: pytest.Pytester, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pytest rewrites the asserts of every module of a plugin's distribution, and where it
    # cannot cache the result (PYTHONDONTWRITEBYTECODE) it compiles them again in every
    # session. Only the package itself is loaded before it can take itself off pytest's list.
    pytester.makeconftest(
        """
        import json, sys

        def pytest_unconfigure(config):
            name = getattr(config, "workerinput", {}).get("workerid", "main")
            loaders = {
                module: type(sys.modules[module].__loader__).__name__
                for module in list(sys.modules)
                if module.split(".")[0] in ("pytest_llmexp", "conftest")
            }
            with open(f"loaders-{name}.json", "w") as out:
                json.dump(loaders, out)
        """
    )
    pytester.makepyfile(test_naming=NAMING)
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    run = run_session()
    run.result.assert_outcomes(passed=4)
    files = list(pytester.path.glob("loaders-*.json"))
    assert len(files) == (3 if mode == "xdist" else 1)
    for file in files:
        loaders = json.loads(file.read_text())
        # The hook is at work in this session, and pytest marked the package for it.
        assert loaders["conftest"] == "AssertionRewritingHook", file.name
        assert loaders["pytest_llmexp"] == "AssertionRewritingHook", file.name
        ours = {m: loader for m, loader in loaders.items() if m.startswith("pytest_llmexp.")}
        assert {"pytest_llmexp.plugin", "pytest_llmexp._plugin.settings"} <= set(ours), file.name
        if file.name != "loaders-main.json" or mode == "serial":  # where the runs ran
            assert "pytest_llmexp._run.bots" in ours, file.name
        assert set(ours.values()) == {"SourceFileLoader"}, file.name


def test_only_our_names_leave_pytests_rewrite_list(monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_llmexp

    class Hook:
        def __init__(self, marked: object) -> None:
            self._must_rewrite = marked
            self._marked_for_rewrite_cache = {"pytest_llmexp._run.bots": True, "other": True}

    ours = Hook({"pytest_llmexp", "pytest_llmexp.plugin", "pytest_llmexp_other", "other"})
    theirs, renamed = Hook({"other"}), Hook(("x",))
    monkeypatch.setattr("sys.meta_path", [object(), renamed, theirs, ours])
    pytest_llmexp._skip_assertion_rewriting()
    assert ours._must_rewrite == {"pytest_llmexp_other", "other"}
    assert ours._marked_for_rewrite_cache == {}
    assert theirs._must_rewrite == {"other"}
    assert theirs._marked_for_rewrite_cache == {"pytest_llmexp._run.bots": True, "other": True}
    assert renamed._must_rewrite == ("x",)
