"""``Experiment`` outside pytest: the same rows, runs in a thread pool."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import Database
from fakellm import FakeLLM
from pytest_llmexp import Experiment, ExperimentError, SimpleBot, metric, prompt
from pytest_llmexp._run import recording
from pytest_llmexp._run.recording import current_run
from pytest_llmexp._util.clock import utcnow
from pytest_llmexp._util.ids import new_id


@prompt("user")
def greet(name):
    """Say hello to {{ name }}."""


@metric
def reply_words(text: str) -> int:
    return len(text.split())


def test_runs_are_stored_like_the_plugin_stores_them(tmp_path: Path, fake_llm: FakeLLM) -> None:
    db_path = tmp_path / "exp.db"
    bot = SimpleBot(model_name="m")

    def body() -> None:
        reply_words(bot(greet("Ada")).content)

    with Experiment("greeting", num_executions=5, max_workers=3, db=db_path) as exp:
        records = exp.run(body)
    assert [r.status for r in records] == ["passed"] * 5
    assert exp.summary() == {
        "reply_words": {"n": 5, "mean": 6.0, "std": 0.0, "min": 6.0, "max": 6.0}
    }
    assert exp.runs()["passed"] == 5
    db = Database(db_path)
    try:
        assert db.one("SELECT kind, status FROM sessions")[:] == ("experiment", "complete")
        assert db.one("SELECT name, num_executions FROM experiments")[:] == ("greeting", 5)
        assert sorted(r[0] for r in db.rows("SELECT execution_index FROM experiment_runs")) == [
            0,
            1,
            2,
            3,
            4,
        ]
        assert db.count("message_log", "run_id IS NOT NULL") == 5
        assert db.count("metrics") == 5
        assert db.count("run_prompts") == 5
    finally:
        db.close()


def test_runs_are_concurrent_and_kept_apart(tmp_path: Path) -> None:
    seen: dict[str, int] = {}
    active = 0
    peak = 0
    lock = threading.Lock()

    def body() -> None:
        nonlocal active, peak
        run = current_run()
        assert run is not None
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        reply_words("a b c " * run.execution_index)
        with lock:
            active -= 1
            seen[run.run_id] = run.execution_index

    with Experiment("threads", num_executions=8, max_workers=4, db=tmp_path / "t.db") as exp:
        records = exp.run(body)
    assert peak == 4
    assert len(seen) == 8
    # Each run holds only its own metric value.
    assert {r.execution_index: r.metrics[0].value for r in records} == {
        i: 3.0 * i for i in range(8)
    }


def test_ids_are_unique_within_a_process_and_after_a_fork() -> None:
    ids = [new_id() for _ in range(1000)]
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # Random from the first digit: the short ids the commands show tell them apart.
    assert len({i[:12] for i in ids}) == 1000
    # The user's code seeding the random module does not make ids repeat.
    state = random.getstate()
    try:
        random.seed(8)
        first = new_id()
        random.seed(8)
        assert new_id() != first
    finally:
        random.setstate(state)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids must not continue the parent's
        os.write(write, new_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert len(child) == 32
    assert child[:16] != new_id()[:16]


@pytest.mark.parametrize(
    "nanoseconds",
    [1_700_000_000_999_999_000, 1_700_000_001_000_001_000, 1_700_000_001_500_000_000, 0],
)
def test_timestamps_are_written_as_datetime_writes_them(
    monkeypatch: pytest.MonkeyPatch, nanoseconds: int
) -> None:
    # Successive instants across a second's boundary, as utcnow reuses the formatted second.
    monkeypatch.setattr(recording.time, "time_ns", lambda: nanoseconds)
    seconds, micros = divmod(nanoseconds // 1000, 1_000_000)
    expected = datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=micros)
    assert utcnow() == expected.isoformat(timespec="microseconds")


@metric
def verdict() -> str:
    return "good"


def test_failures_and_errors_are_classified(tmp_path: Path) -> None:
    def body() -> None:
        run = current_run()
        assert run is not None
        if run.execution_index == 0:
            raise AssertionError("bad output")
        if run.execution_index == 1:
            verdict()

    with Experiment("mixed", num_executions=3, db=tmp_path / "m.db") as exp:
        records = exp.run(body)
    by_index = {r.execution_index: r for r in records}
    assert (by_index[0].status, by_index[0].error_type) == ("failed", "AssertionError")
    assert (by_index[1].status, by_index[1].error_type) == ("error", "MetricError")
    assert "metric 'verdict' returned str" in (by_index[1].error_message or "")
    assert by_index[2].status == "passed"


def test_misuse_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ExperimentError, match=r"num_executions must be a positive int, got 0"):
        Experiment("x", num_executions=0)
    with pytest.raises(ExperimentError, match=r"max_workers must be a positive int or None"):
        Experiment("x", max_workers=0)
    with pytest.raises(ExperimentError, match=r"name must be a non-empty string"):
        Experiment(" ")
    exp = Experiment("x", db=tmp_path / "x.db")
    with pytest.raises(ExperimentError, match=r"needs the experiment open"):
        exp.run(lambda: None)
    with exp, pytest.raises(ExperimentError, match=r"takes a function, got int"):
        exp.run(3)  # type: ignore[arg-type]


def test_an_experiment_whose_runs_all_errored_raises_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    path = tmp_path / "e.db"
    with (
        pytest.raises(ExperimentError) as info,
        Experiment("keyless", num_executions=3, db=path) as exp,
    ):
        exp.run(lambda: SimpleBot(model_name="m")("hi"))
    # The summary says what happened rather than an empty {}.
    with pytest.raises(ExperimentError, match=r"measured nothing: no run was evaluated \(3 "):
        exp.summary()
    message = str(info.value)
    assert message.startswith(
        "Experiment('keyless'): all 3 run(s) errored, so nothing was measured; the first: "
        "BotError: no API key and no endpoint: set OPENAI_API_KEY"
    )
    assert "with LocalServer() as server: endpoint.configure(server.client_settings())" in message
    assert "llmexp run " in message
    db = Database(path)
    try:
        assert tuple(db.one("SELECT status, exitstatus FROM sessions")) == ("complete", 1)
        assert db.count("experiment_runs", "status = 'error'") == 3
    finally:
        db.close()
    # Some runs evaluated: no error, the runs are returned.
    with Experiment("mixed", num_executions=2, db=path) as exp:
        records = exp.run(lambda: current_run().execution_index or verdict())  # type: ignore[union-attr]
    assert sorted(r.status for r in records) == ["error", "passed"]


def test_an_exception_in_the_block_marks_the_session_interrupted(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), Experiment("x", db=tmp_path / "i.db") as exp:
        exp.run(lambda: None)
        raise KeyboardInterrupt
    db = Database(tmp_path / "i.db")
    try:
        assert db.one("SELECT status FROM sessions") == "interrupted"
        assert db.count("experiment_runs") == 1
    finally:
        db.close()


def test_a_script_logs_calls_outside_any_run(tmp_path: Path, fake_llm: FakeLLM) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "from pytest_llmexp import SimpleBot\n"
        "print(SimpleBot(model_name='m')('hello from a script').content)\n"
    )
    env = {**os.environ, "LLMEXP_DB": str(tmp_path / "log.db")}
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Reply to: hello from a script"
    db = Database(tmp_path / "log.db")
    try:
        row = db.one("SELECT run_id, model_name, message_log FROM message_log")
        assert row["run_id"] is None and row["model_name"] == "m"
        assert "hello from a script" in row["message_log"]
        assert db.count("bots") == 1
        assert db.count("sessions") == 0
    finally:
        db.close()
