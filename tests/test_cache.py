"""Record and replay: inner sessions against the fake server, then replay with no server.

"No server" is a base URL where nothing listens and no API key at all: a replay that reached
for the network would fail every run, and the fake server counts any request that came.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from conftest import Database, Run, api_key
from fakellm import FakeLLM, default_reply
from pytest_llmexp.cli import main as llmexp

CACHED = '''
import json
import pathlib

import pytest
from pydantic import BaseModel
from pytest_llmexp import SimpleBot, StructuredBot, experiment, metric, prompt

CONFIG = json.loads(pathlib.Path(__file__).with_name("config.json").read_text())

@prompt("user")
def ask(topic):
    """{template}"""

@prompt("user")
def rate(text):
    """Rate this name from 1 to 10: {{{{ text }}}}"""

class Verdict(BaseModel):
    score: int

@metric
def size(reply) -> int:
    text = reply.content
    return len(text) if CONFIG.get("measure", "chars") == "chars" else len(text.split())

@metric
def judged(reply) -> int:
    # An LLM judge: the metric calls a model itself.
    return StructuredBot(pydantic_model=Verdict, model_name="judge")(rate(reply.content)).score

@experiment(num_executions=2)
@pytest.mark.parametrize("topic", ["cat", "dog"])
def test_names(topic):
    bot = SimpleBot("You name things.", model_name="namer", temperature=0.7)
    reply = bot(ask(topic))
    size(reply)
    if CONFIG.get("judge"):
        judged(reply)
'''

TEMPLATE = "Name a {{ topic }}."


def setup(pytester: pytest.Pytester, template: str = TEMPLATE, **config: Any) -> None:
    pytester.makepyfile(test_cached=CACHED.format(template=template))
    (pytester.path / "config.json").write_text(json.dumps(config))


def numbered(server: FakeLLM) -> None:
    """Every generation differs (so repeats differ); a judge gets a valid verdict."""
    counter = itertools.count()

    def reply(request: dict[str, Any]) -> str:
        if request.get("response_format"):
            return default_reply(request)
        return f"Name number {next(counter)} for {request['messages'][-1]['content']}"

    server.responder = reply


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No API key, and an endpoint where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    monkeypatch.delenv("OPENAI_API_KEY")


def online(monkeypatch: pytest.MonkeyPatch, server: FakeLLM) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.setenv("OPENAI_API_KEY", api_key())


def last_session(db: Database) -> str:
    return str(db.one("SELECT id FROM sessions ORDER BY started_at DESC LIMIT 1"))


def generations(db: Database, session: str) -> dict[tuple[str, int], dict[str, Any]]:
    """The session's generator calls by (case, execution): reply, ids, and the size metric."""
    rows = db.rows(
        "SELECT r.case_id, r.execution_index, r.id AS run, r.replayed_from AS run_from, "
        "c.id, c.message_log, c.replayed_from, m.value AS size FROM message_log c "
        "JOIN experiment_runs r ON r.id = c.run_id JOIN experiments e ON e.id = r.experiment_id "
        "LEFT JOIN metrics m ON m.run_id = r.id AND m.name = 'size' "
        "WHERE e.session_id = ? AND c.model_name = 'namer'",
        session,
    )
    return {
        (r["case_id"], r["execution_index"]): {
            "reply": json.loads(r["message_log"])[-1]["content"],
            "id": r["id"],
            "run": r["run"],
            "run_from": r["run_from"],
            "from": r["replayed_from"],
            "size": r["size"],
        }
        for r in rows
    }


def judgements(db: Database, session: str) -> dict[tuple[str, int], float]:
    """The judge metric of each run of the session, by (case, execution)."""
    rows = db.rows(
        "SELECT r.case_id, r.execution_index, m.value FROM metrics m JOIN experiment_runs r "
        "ON r.id = m.run_id JOIN experiments e ON e.id = r.experiment_id "
        "WHERE e.session_id = ? AND m.name = 'judged'",
        session,
    )
    return {(r[0], r[1]): r[2] for r in rows}


def session_row(db: Database, session: str) -> dict[str, Any]:
    row = db.one(
        "SELECT cache_mode, cache_served, replay_of, status FROM sessions WHERE id = ?", session
    )
    return dict(row)


@pytest.fixture
def recorded(pytester: pytest.Pytester, run_session: Callable[..., Run], fake_llm: FakeLLM) -> Run:
    """A session of 2 cases x 2 executions, with an LLM judge, recorded with --llm-cache
    record: 8 calls."""
    setup(pytester, judge=True)
    numbered(fake_llm)
    first = run_session("--llm-cache", "record")
    first.result.assert_outcomes(passed=4)
    assert first.db is not None
    return first


def test_record_then_replay_with_the_server_gone(
    pytester: pytest.Pytester,
    run_session: Callable[..., Run],
    fake_llm: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,
    recorded: Run,
) -> None:
    first = recorded
    assert first.db is not None
    recorded_session = last_session(first.db)
    stored = generations(first.db, recorded_session)
    assert len(fake_llm.requests) == 8
    # Repeats are independent: every execution got its own reply.
    assert len({g["reply"] for g in stored.values()}) == 4
    assert first.db.count("llm_cache") == 8
    assert session_row(first.db, recorded_session)["cache_mode"] == "record"
    assert "llmexp cache: record: 0 call(s) served from the store, 8 made, 8 recorded" in (
        first.output
    )

    offline(monkeypatch)
    fake_llm.requests.clear()
    pytester.makeini("[pytest]\nllm_cache = replay\n")  # the ini key, this time
    second = run_session()
    second.result.assert_outcomes(passed=4)
    assert second.db is not None
    assert fake_llm.requests == []
    replayed_session = last_session(second.db)
    replayed = generations(second.db, replayed_session)
    assert {k: g["reply"] for k, g in replayed.items()} == {
        k: g["reply"] for k, g in stored.items()
    }
    assert {k: g["size"] for k, g in replayed.items()} == {k: g["size"] for k, g in stored.items()}
    # Execution 1 replays execution 1's reply, never execution 0's.
    assert {k: g["from"] for k, g in replayed.items()} == {k: g["id"] for k, g in stored.items()}
    # The judge's calls were replayed too: every call of the session came from the store.
    judged = judgements(second.db, replayed_session)
    assert len(judged) == 4 and judged == judgements(first.db, recorded_session)
    assert session_row(second.db, replayed_session) == {
        "cache_mode": "replay",
        "cache_served": 8,
        "replay_of": None,
        "status": "complete",
    }
    # Replayed calls cost nothing: the session's spend counts no call.
    health = json.loads(second.db.one("SELECT health FROM sessions WHERE id = ?", replayed_session))
    assert health.get("calls", 0) == 0, health

    # auto: a third execution per case is new, so it is called and recorded; the rest replay.
    online(monkeypatch, fake_llm)
    third = run_session("--llm-cache", "auto", "--llm-num-executions", "3")
    third.result.assert_outcomes(passed=6)
    assert third.db is not None
    assert sorted(r["model"] for r in fake_llm.requests) == ["judge", "judge", "namer", "namer"]
    auto_session = last_session(third.db)
    assert session_row(third.db, auto_session)["cache_served"] == 8
    new = {k: g for k, g in generations(third.db, auto_session).items() if g["from"] is None}
    assert sorted(new) == [("cat", 2), ("dog", 2)]
    assert third.db.count("llm_cache") == 12


def test_a_changed_prompt_is_a_miss_that_names_it(
    pytester: pytest.Pytester,
    run_session: Callable[..., Run],
    fake_llm: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,
    recorded: Run,
) -> None:
    offline(monkeypatch)
    fake_llm.requests.clear()

    setup(pytester, template="Name a {{ topic }}, please.")
    changed = run_session("--llm-cache", "replay")
    changed.result.assert_outcomes(failed=4)
    assert changed.db is not None and fake_llm.requests == []
    old, new = (
        r[0]
        for r in changed.db.rows("SELECT hash FROM prompts WHERE function_name = 'ask' ORDER BY id")
    )
    session = last_session(changed.db)
    runs = changed.db.rows(
        "SELECT r.status, r.error_type, r.error_message FROM experiment_runs r "
        "JOIN experiments e ON e.id = r.experiment_id WHERE e.session_id = ?",
        session,
    )
    assert {(r["status"], r["error_type"]) for r in runs} == {("error", "ReplayMiss")}
    for run in runs:
        assert f"prompt 'ask' changed from version {old[:8]} to {new[:8]}" in run["error_message"]
        assert "--llm-cache record" in run["error_message"]
    # A miss is not a call: nothing reached the endpoint and nothing was logged as a call.
    assert (
        changed.db.count(
            "message_log c JOIN experiment_runs r ON r.id = c.run_id JOIN experiments e "
            "ON e.id = r.experiment_id",
            "e.session_id = ?",
            session,
        )
        == 0
    )

    # An execution that was never recorded is named as such.
    setup(pytester)
    more = run_session("--llm-cache", "replay", "--llm-num-executions", "3")
    more.result.assert_outcomes(passed=4, failed=2)
    assert more.db is not None
    messages = {
        r[0]
        for r in more.db.rows(
            "SELECT error_message FROM experiment_runs WHERE error_type = 'ReplayMiss' "
            "AND execution_index = 2"
        )
    }
    assert len(messages) == 2
    for message in messages:
        assert "execution 2 was not recorded (recorded executions: 0-1)" in message


def test_rescoring_a_stored_session_measures_its_generations_again(
    pytester: pytest.Pytester,
    run_session: Callable[..., Run],
    fake_llm: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup(pytester, measure="chars")
    numbered(fake_llm)
    first = run_session()  # the cache is off: any stored session can be re-scored
    first.result.assert_outcomes(passed=4)
    assert first.db is not None
    stored_session = last_session(first.db)
    stored = generations(first.db, stored_session)
    assert all(g["size"] == len(g["reply"]) for g in stored.values())

    # The metric changes, and an LLM judge is added: its calls are not in the stored session,
    # and with the cache off they are made.
    fake_llm.requests.clear()
    setup(pytester, measure="words", judge=True)
    second = run_session("--llm-replay-from", stored_session[:8])
    second.result.assert_outcomes(passed=4)
    assert second.db is not None
    assert [r["model"] for r in fake_llm.requests] == ["judge"] * 4
    session = last_session(second.db)
    rescored = generations(second.db, session)
    assert {k: g["reply"] for k, g in rescored.items()} == {
        k: g["reply"] for k, g in stored.items()
    }
    assert {k: g["size"] for k, g in rescored.items()} == {
        k: len(g["reply"].split()) for k, g in stored.items()
    }
    assert {k: g["size"] for k, g in rescored.items()} != {k: g["size"] for k, g in stored.items()}
    # Each new run points back at the run it re-scored.
    assert {k: g["run_from"] for k, g in rescored.items()} == {
        k: g["run"] for k, g in stored.items()
    }
    assert session_row(second.db, session) == {
        "cache_mode": "off",
        "cache_served": 4,
        "replay_of": stored_session,
        "status": "complete",
    }
    assert f"llmexp re-scoring session {stored_session[:12]} (cache: off): 4 call(s) served" in (
        second.output
    )

    # With --llm-cache replay and no server, the judge's unrecorded calls are refused.
    offline(monkeypatch)
    fake_llm.requests.clear()
    third = run_session("--llm-replay-from", stored_session, "--llm-cache", "replay")
    third.result.assert_outcomes(failed=4)
    assert third.db is not None and fake_llm.requests == []
    errors = third.db.rows(
        "SELECT r.error_type, r.error_message FROM experiment_runs r JOIN experiments e "
        "ON e.id = r.experiment_id WHERE e.session_id = ?",
        last_session(third.db),
    )
    for row in errors:
        assert row["error_type"] == "ReplayMiss"
        assert row["error_message"].startswith(
            f"no recorded reply in session {stored_session} or the cache for this "
            "StructuredBot call (model 'judge'"
        )
        # The way out is the cache mode, not dropping the re-scoring.
        assert row["error_message"].endswith(
            "use --llm-cache auto to call only the judges' calls that are missing (a judge "
            "that changed since it was recorded), or --llm-cache off to call them all"
        )


def test_a_cassette_file_round_trips_through_export_and_import(
    pytester: pytest.Pytester,
    run_session: Callable[..., Run],
    fake_llm: FakeLLM,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    recorded: Run,
) -> None:
    assert recorded.db is not None
    generated = generations(recorded.db, last_session(recorded.db))
    recorded.db.close()

    cassette = pytester.path / "cassette.jsonl"
    db = str(pytester.path / "message_log.db")
    assert llmexp(["cache", "export", "--db", db, "-o", str(cassette)]) == 0
    text = cassette.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    assert len(entries) == 8 and {e["v"] for e in entries} == {1}
    assert sorted(e["model"] for e in entries) == ["judge"] * 4 + ["namer"] * 4
    generator = [e for e in entries if e["model"] == "namer"]
    assert {(e["case"], e["execution"]): e["reply"]["content"] for e in generator} == {
        k: g["reply"] for k, g in generated.items()
    }
    # Nothing key-like, and nothing of the machine it was recorded on.
    assert api_key() not in text and "sk-" not in text
    assert fake_llm.url.split("//")[1].split("/")[0] not in text

    fresh = str(pytester.path / "fresh.db")
    capsys.readouterr()
    assert llmexp(["cache", "import", str(cassette), "--db", fresh]) == 0
    assert llmexp(["--db", fresh, "cache", "import", str(cassette)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"imported 8 call(s) into {fresh}; 0 already there",
        f"imported 0 call(s) into {fresh}; 8 already there",
    ]

    offline(monkeypatch)
    fake_llm.requests.clear()
    replay = run_session("--llm-cache", "replay", "--llm-db", "fresh.db", db="fresh.db")
    replay.result.assert_outcomes(passed=4)
    assert replay.db is not None and fake_llm.requests == []
    replayed = generations(replay.db, last_session(replay.db))
    assert {k: g["reply"] for k, g in replayed.items()} == {
        k: g["reply"] for k, g in generated.items()
    }


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (
            ["--llm-cache", "replay-all"],
            "",
            "--llm-cache: expected one of off, record, replay, auto, got 'replay-all'",
        ),
        ([], "llm_cache = Record", "ini llm_cache: expected one of off, record, replay, auto"),
        (["--llm-replay-from", "last"], "", "--llm-replay-from: expected a session id"),
        (["--llm-replay-from", "abcd1234"], "", "--llm-replay-from abcd1234: no session"),
    ],
)
def test_bad_cache_options_are_usage_errors(
    pytester: pytest.Pytester,
    run_session: Callable[..., Run],
    args: list[str],
    ini: str,
    message: str,
) -> None:
    setup(pytester)
    if ini:
        pytester.makeini(f"[pytest]\n{ini}\n")
    run = run_session(*args)
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in run.output
    if run.db is not None:
        assert run.db.count("experiment_runs") == 0
