"""Fault injection: crashes, signals, concurrent sessions and broken databases.

Each test runs an inner pytest session without xdist and with ``-n 2`` (the ``mode``
fixture), then asserts on what message_log.db holds and on the exit status. Every wait is
bounded.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from conftest import MODES, Database, api_key
from fakellm import FakeLLM

_SLOW = """
import time
from pytest_llmexp import SimpleBot, experiment, metric, prompt

@metric
def length(text) -> int:
    return len(text)

@prompt("user")
def greeting():
    \"\"\"hello\"\"\"

@experiment(num_executions=QUICK + 3)
def test_slow(llm_run):
    length(SimpleBot(model_name="m")(greeting()).content)
    if llm_run.execution_index >= QUICK:
        # Long enough to be killed while running, short enough to end a stray worker soon.
        for _ in range(100):
            time.sleep(0.05)

@experiment(num_executions=2)
def test_quick():
    length(SimpleBot(model_name="m")("hi").content)
"""


def slow(quick: int) -> str:
    """A test file: experiment "slow" of ``quick`` quick runs, then three of 5 s each; and
    experiment "quick", two quick runs."""
    return _SLOW.replace("QUICK", str(quick))


SLOW = slow(1)


class Spawned:
    """An inner pytest session in its own process group, for signals."""

    def __init__(self, directory: Path, args: list[str]) -> None:
        self.directory = directory
        self.log = directory / f"session-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
                cwd=directory,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def spooled(self) -> int:
        """Lines spooled so far, over every spool file."""
        spool = self.directory / "message_log.db-spool"
        if not spool.is_dir():
            return 0
        return sum(p.read_bytes().count(b"\n") for p in spool.glob("*.jsonl"))

    def wait_for_spooled(self, lines: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.spooled() < lines:
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, f"no {lines} spooled runs in {timeout} s"
            time.sleep(0.05)

    def wait(self, timeout: float = 90) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill_group(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def spawn(
    pytester: pytest.Pytester, fake_llm: FakeLLM, mode: str
) -> Iterator[Callable[..., Spawned]]:
    sessions: list[Spawned] = []

    def start(*args: str) -> Spawned:
        session = Spawned(pytester.path, [*MODES[mode], *args])
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.kill_group()
        assert api_key() not in session.output()


def sessions_by_status(db: Database) -> dict[str, int]:
    return dict(db.rows("SELECT status, count(*) FROM sessions GROUP BY status"))


def test_sigterm_ends_the_session_like_ctrl_c(spawn, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_slow=SLOW)
    session = spawn("--llm-experiment", "slow")
    session.wait_for_spooled(1)
    session.proc.send_signal(signal.SIGTERM)
    assert session.wait() == pytest.ExitCode.INTERRUPTED, session.output()
    db = Database(pytester.path / "message_log.db")
    assert tuple(db.one("SELECT status, exitstatus FROM sessions")) == ("interrupted", 2)
    runs = db.rows("SELECT execution_index, status FROM experiment_runs")
    assert 0 in {r["execution_index"] for r in runs}
    # Runs cut short are not results; nothing is recorded as crashed.
    assert {r["status"] for r in runs} == {"passed"}
    assert db.one("SELECT status FROM experiments") == "interrupted"
    assert not (pytester.path / "message_log.db-spool").exists()


def test_a_killed_session_is_recovered_by_the_next_one(
    spawn, pytester: pytest.Pytester, run_session
) -> None:
    # Three quick runs over at most two processes: one spools a run that names the bot and
    # prompt an earlier line of its spool defined.
    pytester.makepyfile(test_slow=slow(3))
    killed = spawn("--llm-experiment", "slow")
    killed.wait_for_spooled(3)
    killed.kill_group()
    spool = pytester.path / "message_log.db-spool"
    spooled = killed.spooled()
    assert spooled >= 3 and any(spool.glob("*.lock"))
    lines = [
        json.loads(line) for path in spool.glob("*.jsonl") for line in path.read_text().splitlines()
    ]
    assert any(line["record"].get("bot_refs") for line in lines)
    for path in spool.glob("*.jsonl"):
        assert api_key() not in path.read_text()

    run = run_session("--llm-experiment", "quick")
    run.result.assert_outcomes(passed=2)
    db = run.db
    assert db is not None
    assert sessions_by_status(db) == {"aborted": 1, "complete": 1}
    aborted = db.one("SELECT id FROM sessions WHERE status = 'aborted'")
    stored = db.count(
        "experiment_runs r JOIN experiments e ON e.id = r.experiment_id",
        "e.session_id = ?",
        aborted,
    )
    # Every spooled run is stored once, whether its report had arrived or not, with the
    # bot and prompt it used, defined in its own line or an earlier one.
    assert stored == spooled
    links = db.rows(
        "SELECT (SELECT count(*) FROM run_bots b WHERE b.run_id = r.id), "
        "(SELECT count(*) FROM run_prompts p WHERE p.run_id = r.id), "
        "(SELECT count(*) FROM message_log c WHERE c.run_id = r.id AND c.bot_id IS NOT NULL) "
        "FROM experiment_runs r JOIN experiments e ON e.id = r.experiment_id "
        "WHERE e.session_id = ?",
        aborted,
    )
    assert [tuple(row) for row in links] == [(1, 1, 1)] * stored
    assert db.one("SELECT status FROM experiments WHERE session_id = ?", aborted) == "aborted"
    assert not spool.exists()
    run.result.stdout.fnmatch_lines([f"recovered: session {aborted} had stopped *, marked aborted"])


WORKER_CRASH = """
import os
import pytest
from pytest_llmexp import SimpleBot, experiment

@pytest.fixture
def fixture(llm_run):
    if WHERE == "setup" and llm_run.execution_index == 1:
        os._exit(1)

@experiment(num_executions=4, name="crash")
def test_crash_with_another_name(llm_run, fixture):
    SimpleBot(model_name="m")("hello")
    if WHERE == "call" and llm_run.execution_index == 1:
        os._exit(1)
"""


@pytest.mark.parametrize("where", ["call", "setup"])
def test_a_process_that_dies_mid_run(
    run_session, pytester: pytest.Pytester, mode: str, where: str
) -> None:
    pytester.makepyfile(test_crash=WORKER_CRASH.replace("WHERE", repr(where)))
    run = run_session()
    db = run.db
    assert db is not None
    if mode == "xdist":
        # The worker died: its item is a crashed run, the session goes on without it.
        run.result.assert_outcomes(passed=3, failed=1)
        runs = dict(db.rows("SELECT execution_index, status FROM experiment_runs"))
        assert runs == {0: "passed", 1: "crashed", 2: "passed", 3: "passed"}
        crashed = db.one("SELECT * FROM experiment_runs WHERE status = 'crashed'")
        assert crashed["error_type"] == "WorkerCrashed"
        # Even a run that died while setting up is filed under its experiment's own name.
        assert tuple(db.one("SELECT name, num_executions FROM experiments")) == ("crash", 4)
        assert "crashed while running" in crashed["error_message"]
        assert db.one("SELECT status FROM sessions") == "complete"
        return
    # Without xdist the session itself died: what it finished is stored or spooled, and
    # `llmexp recover` stores it and marks the session aborted.
    assert run.result.ret == 1
    assert db.one("SELECT status FROM sessions") == "running"
    # Runs are inserted in batches: the finished run is in the database, or still only in
    # the spool, depending on when the last batch was written.
    stored = dict(db.rows("SELECT execution_index, status FROM experiment_runs"))
    assert stored in ({}, {0: "passed"})
    recover = subprocess.run(
        [str(Path(sys.executable).with_name("llmexp")), "recover"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert recover.returncode == 0, recover.stderr
    assert f"{1 - len(stored)} run(s) stored from its spool, marked aborted" in recover.stdout
    assert db.one("SELECT status FROM sessions") == "aborted"
    assert dict(db.rows("SELECT execution_index, status FROM experiment_runs")) == {0: "passed"}
    assert not (pytester.path / "message_log.db-spool").exists()


TWO_SESSIONS = """
from pytest_llmexp import SimpleBot, experiment, metric

@metric
def length(text) -> int:
    return len(text)

@experiment(num_executions=6)
def test_{name}():
    length(SimpleBot(model_name="m")("{name}").content)
"""


def test_two_sessions_on_one_database_at_once(spawn, pytester: pytest.Pytester) -> None:
    fake = pytester.path
    (fake / "test_first.py").write_text(TWO_SESSIONS.format(name="first"))
    (fake / "test_second.py").write_text(TWO_SESSIONS.format(name="second"))
    first = spawn("test_first.py")
    second = spawn("test_second.py")
    assert first.wait() == 0, first.output()
    assert second.wait() == 0, second.output()
    for session in (first, second):
        assert "locked" not in session.output()
    db = Database(pytester.path / "message_log.db")
    assert sessions_by_status(db) == {"complete": 2}
    rows = db.rows(
        "SELECT s.id, e.name, count(r.id) AS runs, sum(r.status = 'passed') AS passed "
        "FROM sessions s JOIN experiments e ON e.session_id = s.id "
        "JOIN experiment_runs r ON r.experiment_id = e.id GROUP BY s.id"
    )
    assert sorted((r["name"], r["runs"], r["passed"]) for r in rows) == [
        ("first", 6, 6),
        ("second", 6, 6),
    ]
    # No cross-talk: each run's call asked for its own experiment's message.
    for name in ("first", "second"):
        assert (
            db.count(
                "message_log c JOIN experiment_runs r ON r.id = c.run_id "
                "JOIN experiments e ON e.id = r.experiment_id",
                "e.name = ? AND c.message_log LIKE ?",
                name,
                f'%"content":"{name}"%',
            )
            == 6
        )
    assert not (pytester.path / "message_log.db-spool").exists()


@pytest.mark.parametrize("kind", ["not sqlite", "corrupt", "another program", "from the future"])
def test_a_database_that_cannot_be_used_is_refused_untouched(
    run_session, pytester: pytest.Pytester, kind: str
) -> None:
    path = pytester.path / "message_log.db"
    if kind == "not sqlite":
        path.write_text("my notes, not a database")
        expected = "exists and is not a SQLite database; it was left as it is"
    elif kind == "corrupt":
        path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
        expected = "is not a usable SQLite database"
    elif kind == "another program":
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        expected = "is a SQLite database of another program (tables invoices)"
    else:
        from pytest_llmexp._store.store import Store

        Store(path).close()
        with closing(sqlite3.connect(path)) as conn, conn:
            conn.execute(
                "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                "VALUES ('pytest_llmexp', 'm999_from_the_future', 'later')"
            )
        expected = "was written by a newer pytest-llmexp"
    before = path.read_bytes()
    pytester.makepyfile(test_slow=SLOW)
    run = run_session("--llm-experiment", "quick", db=None)
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert expected in run.output
    assert path.read_bytes() == before


def test_a_database_directory_that_cannot_be_created_is_a_clear_error(
    run_session, pytester: pytest.Pytester
) -> None:
    # Tests may run as root, which ignores permission bits: a file where the directory
    # should be fails for everyone.
    (pytester.path / "results").write_text("a file, not a directory")
    pytester.makepyfile(test_slow=SLOW)
    run = run_session("--llm-experiment", "quick", "--llm-db", "results/run.db", db=None)
    assert run.result.ret == pytest.ExitCode.USAGE_ERROR
    assert "cannot open the experiment database" in run.output
    assert "choose a writable path with --llm-db" in run.output


def test_the_database_and_spool_are_private(run_session, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_slow=SLOW)
    run = run_session("--llm-experiment", "quick")
    run.result.assert_outcomes(passed=2)
    assert run.db is not None
    assert (pytester.path / "message_log.db").stat().st_mode & 0o077 == 0
    assert run.db.count("experiment_runs") == 2
    assert not (pytester.path / "message_log.db-spool").exists()


def test_a_failed_live_insert_is_kept_in_the_spool_and_recovered(
    run_session, pytester: pytest.Pytester
) -> None:
    pytester.makeconftest(
        """
        import sqlite3
        from pytest_llmexp._store import store

        def broken_insert_batch(self, session_id, batch):
            raise sqlite3.OperationalError("disk I/O error (injected)")

        store.Store.insert_batch = broken_insert_batch
        """
    )
    pytester.makepyfile(test_slow=SLOW)
    run = run_session("--llm-experiment", "quick")
    assert run.result.ret == pytest.ExitCode.INTERNAL_ERROR
    run.result.stdout.fnmatch_lines(["ERROR: 2 result(s) could not be stored in *; they are kept*"])
    db = run.db
    assert db is not None
    assert db.count("experiment_runs") == 0
    assert json.loads(db.one("SELECT health FROM sessions"))["lost"] == 2
    assert len(list((pytester.path / "message_log.db-spool").glob("*.jsonl"))) >= 1
    (pytester.path / "conftest.py").unlink()
    again = run_session("--llm-experiment", "quick")
    again.result.assert_outcomes(passed=2)
    assert again.db is not None
    # The first session could not store its runs, so it says interrupted (its numbers were
    # no verdict) and keeps that status; its runs are stored now.
    assert sessions_by_status(again.db) == {"complete": 1, "interrupted": 1}
    assert again.db.count("experiment_runs") == 4
    assert not (pytester.path / "message_log.db-spool").exists()


def test_a_spool_whose_lines_were_all_stored_is_not_read_again(
    run_session, pytester: pytest.Pytester
) -> None:
    # Each process counts the lines it spools; the writer reads only a spool holding lines
    # it did not store. A stray spool of the session, which no process counted, is read.
    pytester.makeconftest(
        """
        import json
        from pathlib import Path

        import pytest
        from pytest_llmexp._store import recovery

        _iter_spool = recovery.iter_spool

        def logged(path, skip=0):
            with open("spool-reads.log", "a") as log:
                log.write(path.name + "\\n")
            return _iter_spool(path, skip)

        recovery.iter_spool = logged

        @pytest.hookimpl(tryfirst=True)
        def pytest_sessionfinish(session):
            if hasattr(session.config, "workerinput"):
                return
            spooled = sorted(Path("message_log.db-spool").glob("*.jsonl"))
            line = json.loads(spooled[0].read_text().splitlines()[0])
            line["record"]["run_id"] = "f" * 32
            session_id = spooled[0].name.split(".")[0]
            stray = Path("message_log.db-spool", f"{session_id}.stray.jsonl")
            stray.write_text(json.dumps(line) + "\\n")
        """
    )
    pytester.makepyfile(test_slow=SLOW)
    run = run_session("--llm-experiment", "quick")
    run.result.assert_outcomes(passed=2)
    assert run.db is not None
    assert run.db.count("experiment_runs") == 3
    assert run.db.count("experiment_runs", "id = ?", "f" * 32) == 1
    reads = (pytester.path / "spool-reads.log").read_text().split()
    assert [name.split(".", 1)[1] for name in reads] == ["stray.jsonl"]
    assert not (pytester.path / "message_log.db-spool").exists()


def test_runs_that_cannot_be_spooled_are_still_stored(
    run_session, pytester: pytest.Pytester
) -> None:
    pytester.makeconftest(
        """
        from pytest_llmexp._store import spool

        def full_disk(self, kind, payload):
            raise OSError(28, "No space left on device (injected)")

        spool.Spool.append = full_disk
        """
    )
    pytester.makepyfile(test_slow=SLOW)
    run = run_session("--llm-experiment", "quick")
    run.result.assert_outcomes(passed=2)
    assert run.result.ret == pytest.ExitCode.OK
    assert run.db is not None
    assert run.db.count("experiment_runs", "status = 'passed'") == 2
    run.result.stdout.fnmatch_lines(
        [
            "warning: 2 result(s) could not be spooled (last: *No space left on device "
            "(injected)); 2 of them were stored from their reports"
        ]
    )
