"""Spool files, session locks, recovery and the spend ledger, without pytest sessions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import definitions
from pytest_llmexp._run.recording import RunContext
from pytest_llmexp._store.recovery import recover
from pytest_llmexp._store.spool import SessionLock, SpendLedger, Spool, iter_spool, spool_dir
from pytest_llmexp._store.store import Store


def run_json(index: int) -> str:
    context = RunContext("e", num_executions=3, execution_index=index, worker="gw0")
    return context.finish("passed").model_dump_json()


@pytest.fixture
def store(tmp_path: Path):
    store = Store(tmp_path / "message_log.db")
    yield store
    store.close()


def test_lines_are_appended_privately_and_read_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "message_log.db", "s1", "gw0")
    spool.append("run", run_json(0))
    spool.append("calls", '{"prompts":[],"bots":[],"calls":[]}')
    spool.close()
    assert spool.path == tmp_path / "message_log.db-spool" / "s1.gw0.jsonl"
    assert spool.path.stat().st_mode & 0o077 == 0
    assert spool.path.parent.stat().st_mode & 0o077 == 0
    lines = list(iter_spool(spool.path))
    assert [line[0] for line in lines if line is not None] == ["run", "calls"]
    assert lines[0] is not None and lines[0][1]["execution_index"] == 0
    # Lines known to be stored are skipped unread.
    assert [line[0] for line in iter_spool(spool.path, skip=1) if line is not None] == ["calls"]


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "db", "s1", "main")
    spool.append("run", run_json(0))
    spool.close()
    with spool.path.open("ab") as fh:
        fh.write(run_json(1)[:40].encode())
    lines = list(iter_spool(spool.path))
    assert len(lines) == 2 and lines[0] is not None and lines[1] is None


def test_a_held_lock_cannot_be_taken_over(tmp_path: Path) -> None:
    holder = SessionLock(tmp_path, "s1")
    holder.hold()
    # flock locks belong to open files: another process, as another session would be.
    probe = (
        "import sys; from pathlib import Path; from pytest_llmexp._store.spool import SessionLock; "
        "sys.exit(0 if SessionLock(Path(sys.argv[1]), 's1').take_over() else 7)"
    )
    taken = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], timeout=60, check=False)
    assert taken.returncode == 7
    holder.release()
    taken = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], timeout=60, check=False)
    assert taken.returncode == 0


def test_recovery_ingests_dead_sessions_only_once(store: Store, tmp_path: Path) -> None:
    db_path = tmp_path / "message_log.db"
    directory = spool_dir(db_path)
    dead = store.begin_session(kind="pytest", argv=[])
    spool = Spool(db_path, dead, "gw0")
    for index in range(3):
        spool.append("run", run_json(index))
    store.insert_run(
        dead, RunContext("x", num_executions=1, execution_index=0, worker="gw0").finish("passed")
    )
    # While its process holds the lock, the session is alive and untouched.
    lock_holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from pytest_llmexp._store.spool import SessionLock; "
            f"SessionLock(Path(sys.argv[1]), {dead!r}).hold(); print('held', flush=True); "
            "sys.stdin.read()",
            str(directory),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert lock_holder.stdout is not None and lock_holder.stdout.readline() == "held\n"
        spool.close()
        assert recover(store, directory) == []
        assert store.session_status(dead) == "running"
    finally:
        lock_holder.communicate("", timeout=30)
    [result] = recover(store, directory)
    assert (result.runs, result.duplicates, result.aborted) == (3, 0, True)
    assert store.session_status(dead) == "aborted"
    assert not directory.exists()
    assert recover(store, directory) == []
    count = store.conn.execute("SELECT count(*) FROM experiment_runs").fetchone()[0]
    assert count == 4


def test_a_session_that_died_before_anything_leaves_nothing(store: Store, tmp_path: Path) -> None:
    directory = spool_dir(tmp_path / "message_log.db")
    lock = SessionLock(directory, "never-began")
    assert lock.take_over()
    lock.release()  # as a killed process leaves it: the file, unlocked
    assert lock.path.exists()
    [result] = recover(store, directory)
    assert (result.runs, result.aborted) == (0, False)
    assert store.session_status("never-began") is None
    assert not directory.exists()


def test_the_spend_ledger_adds_up_across_processes(tmp_path: Path) -> None:
    ledger = SpendLedger(tmp_path / "db", "s1")
    assert ledger.totals() == (0, 0, 0.0)
    assert ledger.add(2, 30, 0.5) == (2, 30, 0.5)
    script = (
        "import sys; from pathlib import Path; from pytest_llmexp._store.spool import SpendLedger; "
        "[SpendLedger(Path(sys.argv[1]), 's1').add(1, 10, 0.25) for _ in range(50)]"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "db")]) for _ in range(3)
    ]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    assert ledger.totals() == (152, 1530, 38.0)
    assert os.stat(ledger.path).st_mode & 0o077 == 0


def test_the_spend_guard_names_the_cap_that_was_reached(tmp_path: Path) -> None:
    from pytest_llmexp._run.spend import SpendGuard

    guard = SpendGuard(tmp_path / "db", "s1", max_calls=None, max_tokens=100)
    assert guard.reached() is None
    guard.ledger.add(3, 99)
    assert guard.reached() is None
    guard.ledger.add(1, 1)
    assert guard.reached() == (
        "spend guard: the session used 100 tokens, the cap is 100 (--llm-max-tokens)"
    )
    cost = SpendGuard(tmp_path / "db", "s2", max_calls=None, max_tokens=None, max_cost=0.5)
    cost.ledger.add(1, 10, 0.25)
    assert cost.reached() is None
    cost.ledger.add(1, 10, 0.25)
    assert cost.reached() == (
        "spend guard: the session's calls cost $0.5000, the cap is $0.5 (--llm-max-cost)"
    )


def test_a_definition_is_named_only_once_a_spooled_line_carried_it(tmp_path: Path) -> None:
    import json
    from types import SimpleNamespace

    from pytest_llmexp._plugin.relay import RunRelay, RunState

    prompt, bot = definitions()
    db = tmp_path / "message_log.db"
    spool = Spool(db, "s1", "main")
    relay = RunRelay("main", spool, None)

    def hand_over(index: int) -> dict:
        run = RunContext("e", num_executions=3, execution_index=index, worker="main")
        run.add_call(bot, [prompt], None)
        report = SimpleNamespace()
        relay._hand_over_run(report, RunState(run), junit=False)  # type: ignore[arg-type]
        spooled = not hasattr(report, "llmexp_spool_error")
        return {"spooled": spooled, **json.loads(report.llmexp_run)}

    spool_dir(db).write_text("")  # a file where the spool directory goes: spooling fails
    first = hand_over(0)
    spool_dir(db).unlink()
    second, third = hand_over(1), hand_over(2)
    spool.close()
    # The first run rode on its report alone, so the next one carries the definitions again.
    assert not first["spooled"] and second["spooled"]
    for run in (first, second):
        assert ([p["hash"] for p in run["prompts"]], [b["hash"] for b in run["bots"]]) == (
            [prompt.hash],
            [bot.hash],
        )
        assert run["prompt_refs"] == run["bot_refs"] == []
    assert third["prompts"] == third["bots"] == []
    assert third["prompt_refs"] == [["m", "greet", prompt.hash]]
    assert third["bot_refs"] == [bot.hash]
    lines = list(iter_spool(spool.path))
    assert [line[1]["execution_index"] for line in lines if line] == [1, 2]


def test_a_write_cut_short_is_taken_back_and_the_reserve_makes_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llmexp._store import spool as spool_module

    spool = Spool(tmp_path / "message_log.db", "s1", "main")
    spool.append("run", run_json(0))
    reserve = spool.reserve.path
    assert reserve.stat().st_size == spool_module.RESERVE_BYTES
    real_write = os.write
    cut = []

    def full_disk(fd: int, data: bytes) -> int:
        if reserve.exists():  # the disk is full until the reserve is given back
            cut.append(len(data))
            return real_write(fd, data[: len(data) // 2])
        return real_write(fd, data)

    monkeypatch.setattr(spool_module.os, "write", full_disk)
    spool.append("run", run_json(1))
    monkeypatch.undo()
    spool.close()
    assert cut and not reserve.exists()
    assert spool.failure is not None and "short write" in spool.failure
    # The half-written line was taken back: both lines read whole.
    lines = list(iter_spool(spool.path))
    assert [line[1]["execution_index"] for line in lines if line] == [0, 1]
    assert None not in lines


def test_past_a_file_size_limit_the_spool_goes_on_in_a_second_file(tmp_path: Path) -> None:
    script = f"""
import resource, sys
sys.path[:0] = {sys.path!r}
resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))
from pytest_llmexp._store.spool import Spool
spool = Spool(__import__("pathlib").Path({str(tmp_path / "message_log.db")!r}), "s1", "main")
written = 0
try:
    for _ in range(100):
        spool.append("run", '{{"pad": "' + "x" * 1000 + '"}}')
        written += 1
except OSError as exc:
    print("stopped", exc.errno)
print(written, spool.failure is not None)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    stopped, counts = result.stdout.splitlines()
    written = int(counts.split()[0])
    assert counts.split()[1] == "True" and stopped == "stopped 27"  # EFBIG, after the roll
    files = sorted(spool_dir(tmp_path / "message_log.db").glob("*.jsonl"))
    assert [f.name for f in files] == ["s1.main.jsonl", "s1.main.more.jsonl"]
    lines = [line for path in files for line in iter_spool(path)]
    assert len(lines) == written > 27 and None not in lines


def test_a_spool_file_that_cannot_be_created_for_lack_of_room_uses_the_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from pytest_llmexp._store import spool as spool_module

    spool = Spool(tmp_path / "message_log.db", "s1", "main")
    spool.reserve.make()
    assert spool.reserve.held
    real_open = spool_module._open

    def full_disk(path: Path, flags: int) -> int:
        if path.suffix == ".jsonl" and spool.reserve.path.exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags)

    monkeypatch.setattr(spool_module, "_open", full_disk)
    spool.append("run", run_json(0))
    # The room the reserve gave back was used for the line, not set aside again.
    assert not spool.reserve.path.exists() and spool.failure is not None
    spool.close()
    assert [line[1]["execution_index"] for line in iter_spool(spool.path) if line] == [0]
