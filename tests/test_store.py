"""message_log.db: the schema, migrations, refusals, and idempotent inserts."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import definitions
from pytest_llmexp import StoreError
from pytest_llmexp._run.recording import RunContext
from pytest_llmexp._store.store import Store

#: The columns ARCHITECTURE.md promises; columns may be added, none removed or renamed.
SCHEMA = {
    "sessions": {
        "id",
        "started_at",
        "finished_at",
        "status",
        "exitstatus",
        "argv",
        "versions",
        "git_sha",
        "health",
        "cache_mode",
        "replay_of",
        "cache_served",
    },
    "experiments": {
        "id",
        "session_id",
        "name",
        "num_executions",
        "status",
        "gate_passed",
        "summary",
        "comparison",
        "partial",
    },
    "experiment_runs": {
        "id",
        "experiment_id",
        "execution_index",
        "attempt",
        "worker",
        "status",
        "error_type",
        "error_message",
        "started_at",
        "duration_s",
        "retries",
        "run_data",
        "case_id",
        "replayed_from",
        "variant",
        "cost",
        "judge_cost",
    },
    "prompts": {"id", "hash", "function_name", "role", "template", "previous_version_id"},
    "gate_results": {
        "experiment_id",
        "gate",
        "source",
        "metric",
        "statistic",
        "op",
        "threshold",
        "observed",
        "verdict",
        "detail",
        "variant",
    },
    "bots": {
        "id",
        "hash",
        "class_name",
        "model_name",
        "temperature",
        "system_prompt",
        "response_schema",
        "params",
        "kind",
    },
    "message_log": {
        "id",
        "run_id",
        "bot_id",
        "timestamp",
        "model_name",
        "temperature",
        "message_log",
        "prompt_tokens",
        "completion_tokens",
        "latency_ms",
        "retries",
        "error",
        "error_type",
        "truncated",
        "cache_key",
        "request",
        "replayed_from",
        "seed",
        "api",
        "stream",
        "judge",
    },
    "llm_cache": {"key", "message_log_id", "recorded_at"},
    "metrics": {"run_id", "name", "value", "kind", "position"},
    "run_prompts": {"run_id", "prompt_id"},
    "run_bots": {"run_id", "bot_id"},
}


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def test_a_new_database_has_every_table_and_column(tmp_path: Path) -> None:
    path = tmp_path / "message_log.db"
    Store(path).close()
    for table, expected in SCHEMA.items():
        assert expected <= columns(path, table), table
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        applied = [r[0] for r in conn.execute("SELECT name FROM _sqlite_migrations")]
    assert applied == [
        "m001_create_tables",
        "m002_add_fault_columns",
        "m003_add_verdict_tables",
        "m004_add_cache_tables",
        "m005_cluster_run_tables",
        "m006_normalize_run_data",
        "m007_add_seed_and_partial",
        "m008_add_captured_calls",
        "m009_add_variants_and_cost",
    ]


def test_reopening_applies_nothing_twice(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    Store(path).close()
    Store(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0] == 9


#: A session with one experiment and its one run, as rows of the first tables.
ONE_RUN = (
    "INSERT INTO sessions (id, kind, started_at, status) VALUES ('s', 'pytest', 't', 'x')",
    "INSERT INTO experiments (id, session_id, name, num_executions, status) "
    "VALUES (1, 's', 'e', 1, 'x')",
    "INSERT INTO experiment_runs (id, experiment_id, execution_index, status, "
    "started_at, run_data) VALUES ('r1', 1, 0, 'passed', 't', '{}')",
)


def test_the_per_run_tables_are_clustered_and_keep_their_rows(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from pytest_llmexp._store.migrations import migrations

    path = tmp_path / "message_log.db"
    with sqlite3.connect(path) as conn:
        migrations.apply(Database(conn), stop_before="m005_cluster_run_tables")
        for statement in (
            *ONE_RUN,
            "INSERT INTO prompts (id, hash, function_name, module, role, template, created_at) "
            "VALUES (7, 'h', 'f', 'm', 'user', 't', 't')",
            "INSERT INTO bots (id, hash, class_name, model_name, params, created_at) "
            "VALUES (9, 'h', 'SimpleBot', 'm', '{}', 't')",
        ):
            conn.execute(statement)
        conn.execute("INSERT INTO metrics VALUES ('r1', 'length', 3.0, 'int')")
        conn.execute("INSERT INTO run_prompts VALUES ('r1', 7)")
        conn.execute("INSERT INTO run_bots VALUES ('r1', 9)")
    Store(path).close()
    with sqlite3.connect(path) as conn:
        metrics = conn.execute("SELECT run_id, name, value, kind FROM metrics").fetchall()
        assert metrics == [("r1", "length", 3.0, "int")]
        assert conn.execute("SELECT * FROM run_prompts").fetchall() == [("r1", 7)]
        assert conn.execute("SELECT * FROM run_bots").fetchall() == [("r1", 9)]
        for table in ("metrics", "run_prompts", "run_bots"):
            sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", [table]).fetchone()
            assert sql[0].endswith("WITHOUT ROWID"), sql
        # No separate index for their primary keys any more.
        assert not conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name IN "
            "('metrics', 'run_prompts', 'run_bots')"
        ).fetchall()


def test_run_data_loses_what_tables_hold_and_metrics_keep_their_order(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from pytest_llmexp._store.migrations import migrations

    path = tmp_path / "message_log.db"
    run_data = (
        '{"prompts": ["p"], "bots": ["b"], "message_log_ids": ["c"], '
        '"metrics": {"zeta": 1.0, "alpha": 2.0, "mid": 3.0}, "metadata": {"seed": 7}, '
        '"gates": ["zeta:mean>0"], "metric_specs": {"zeta": {"min": 0}}}'
    )
    with sqlite3.connect(path) as conn:
        migrations.apply(Database(conn), stop_before="m006_normalize_run_data")
        conn.execute(
            "INSERT INTO sessions (id, kind, started_at, status) VALUES ('s', 'p', 't', 'x')"
        )
        conn.execute(
            "INSERT INTO experiments (id, session_id, name, num_executions, status) "
            "VALUES (1, 's', 'e', 2, 'x')"
        )
        conn.executemany(
            "INSERT INTO experiment_runs (id, experiment_id, execution_index, status, "
            "started_at, run_data) VALUES (?, 1, ?, 'passed', 't', ?)",
            [("r1", 0, run_data), ("r2", 1, "{}")],
        )
        conn.executemany(
            "INSERT INTO metrics VALUES (?, ?, ?, 'float')",
            [("r1", "alpha", 2.0), ("r1", "mid", 3.0), ("r1", "zeta", 1.0), ("r2", "x", 0.5)],
        )
    Store(path).close()
    with sqlite3.connect(path) as conn:
        positions = conn.execute("SELECT run_id, name, position FROM metrics ORDER BY 1, 3")
        assert positions.fetchall() == [
            ("r1", "zeta", 0),
            ("r1", "alpha", 1),
            ("r1", "mid", 2),
            ("r2", "x", 0),  # a run_data without metrics: position 0
        ]
        stored = conn.execute("SELECT run_data FROM experiment_runs WHERE id = 'r1'").fetchone()
    assert json.loads(stored[0]) == {
        "metadata": {"seed": 7},
        "gates": ["zeta:mean>0"],
        "metric_specs": {"zeta": {"min": 0}},
    }


def test_calls_stored_before_captured_calls_existed_are_bot_calls(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from pytest_llmexp._store.migrations import migrations

    path = tmp_path / "message_log.db"
    with sqlite3.connect(path) as conn:
        migrations.apply(Database(conn), stop_before="m008_add_captured_calls")
        conn.execute(
            "INSERT INTO bots (id, hash, class_name, model_name, params, created_at) "
            "VALUES (1, 'h', 'SimpleBot', 'm', '{}', 't')"
        )
        conn.execute(
            "INSERT INTO message_log (id, bot_id, timestamp, model_name, message_log) "
            "VALUES ('c', 1, 't', 'm', '[]')"
        )
    Store(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT kind FROM bots").fetchall() == [("bot",)]
        assert conn.execute("SELECT api, stream FROM message_log").fetchall() == [(None, 0)]


def test_runs_calls_and_gate_results_stored_before_variants_have_none(tmp_path: Path) -> None:
    from sqlite_utils import Database

    from pytest_llmexp._store.migrations import migrations

    path = tmp_path / "message_log.db"
    with sqlite3.connect(path) as conn:
        migrations.apply(Database(conn), stop_before="m009_add_variants_and_cost")
        for statement in (
            *ONE_RUN,
            "INSERT INTO bots (id, hash, class_name, model_name, params, created_at) "
            "VALUES (1, 'h', 'SimpleBot', 'm', '{}', 't')",
            "INSERT INTO message_log (id, bot_id, timestamp, model_name, message_log) "
            "VALUES ('c', 1, 't', 'm', '[]')",
            "INSERT INTO gate_results (experiment_id, gate, source, metric, statistic, op, "
            "threshold, verdict) VALUES (1, 'runs: mean >= 1', 'code', 'runs', 'mean', '>=', 1, "
            "'passed')",
        ):
            conn.execute(statement)
    Store(path).close()
    with sqlite3.connect(path) as conn:
        runs = conn.execute("SELECT variant, cost, judge_cost FROM experiment_runs").fetchall()
        assert runs == [(None, None, None)]
        assert conn.execute("SELECT judge FROM message_log").fetchall() == [(0,)]
        assert conn.execute("SELECT variant FROM gate_results").fetchall() == [(None,)]


def test_the_fast_schema_check_knows_every_migration(tmp_path: Path) -> None:
    from pytest_llmexp._store import schema
    from pytest_llmexp._store.migrations import MIGRATION_SET, migrations

    assert tuple(m.name for m in migrations._migrations) == schema.SCHEMA
    assert schema.MIGRATION_SET == MIGRATION_SET
    path = tmp_path / "message_log.db"
    Store(path).close()
    # Reopening a current database does not import sqlite_utils (a fresh interpreter).
    code = (
        "import sys; from pytest_llmexp._store.store import Store; "
        f"Store({str(path)!r}).close(); print('sqlite_utils' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_database_from_a_newer_version_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "message_log.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
            "VALUES ('pytest_llmexp', 'm999_from_the_future', 'later')"
        )
    before = path.read_bytes()
    with pytest.raises(
        StoreError, match=r"written by a newer pytest-llmexp .*m999_from_the_future"
    ):
        Store(path)
    assert path.read_bytes() == before


def test_files_that_are_not_databases_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_text("hello")
    with pytest.raises(StoreError, match=r"exists and is not a SQLite database; it was left"):
        Store(text)
    assert text.read_text() == "hello"
    with pytest.raises(StoreError, match=r"is a directory"):
        Store(tmp_path)
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    with pytest.raises(StoreError, match=r"is not a usable SQLite database"):
        Store(corrupt)


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"cannot open the experiment database"):
        Store(blocker / "sub" / "db.sqlite")


def test_inserting_a_run_twice_stores_it_once(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        session = store.begin_session(kind="test", argv=[])
        run = RunContext("e", num_executions=2, execution_index=0, worker="main").finish("passed")
        assert store.insert_run(session, run) is True
        assert store.insert_run(session, run) is False
        summary = store.summaries(session)["e"]
        assert summary["runs"]["passed"] == 1
        store.finish_session(session, status="complete", exitstatus=0)
        row = store.conn.execute("SELECT status, exitstatus, finished_at FROM sessions").fetchone()
        assert row[0] == "complete" and row[1] == 0 and row[2]
    finally:
        store.close()


def test_a_batch_of_runs_skips_those_already_stored(tmp_path: Path) -> None:
    from pytest_llmexp._store.records import MetricRecord

    def run(index: int, *names: str):  # -> RunRecord
        context = RunContext("e", num_executions=3, execution_index=index, worker="main")
        for name in names:
            context.add_metric(MetricRecord(name=name, value=index, kind="int"))
        return context.finish("passed")

    store = Store(tmp_path / "db.sqlite")
    try:
        session = store.begin_session(kind="test", argv=[])
        first, second, third = run(0, "b", "a"), run(1, "a"), run(2)
        assert store.insert_runs(session, [first]) == 1
        # Already stored, new, repeated within the batch, and a run without metrics.
        assert store.insert_runs(session, [first, second, second, third]) == 2
        assert store.insert_runs(session, []) == 0
        rows = store.conn.execute(
            "SELECT r.execution_index, m.name, m.position FROM experiment_runs r "
            "LEFT JOIN metrics m ON m.run_id = r.id ORDER BY 1, 3"
        ).fetchall()
        assert rows == [(0, "b", 0), (0, "a", 1), (1, "a", 0), (2, None, None)]
    finally:
        store.close()


def _recorded_call(call_id: str, bot: Any, *, cache_key: str | None = None) -> Any:
    from pytest_llmexp._store.records import CallRecord

    return CallRecord(
        id=call_id,
        bot_hash=bot.hash,
        timestamp="2026-01-01T00:00:00+00:00",
        model_name="m",
        response_model="m",
        temperature=None,
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        prompt_tokens=1,
        completion_tokens=1,
        latency_ms=1.0,
        retries=1,
        finish_reason="stop",
        error=None,
        cache_key=cache_key,
        request={"params": {}, "prompts": [["greet", "p" * 8]]},
        record=cache_key is not None,
    )


def _run_record(index: int, *, cache_key: str | None = None, carried: bool = True) -> Any:
    """A run with one prompt, one bot, one call and one metric; ``carried``: the run carries
    the definitions, else it names them, as a relay's later runs do."""
    from pytest_llmexp._store.records import MetricRecord, RunRecord

    prompt, bot = definitions()
    used: dict[str, Any] = (
        {"prompts": [prompt], "bots": [bot]}
        if carried
        else {"prompt_refs": [("m", "greet", prompt.hash)], "bot_refs": [bot.hash]}
    )
    return RunRecord(
        run_id=f"run{index}",
        experiment="e",
        num_executions=3,
        execution_index=index,
        nodeid=None,
        worker="main",
        started_at="2026-01-01T00:00:00+00:00",
        duration_s=0.1,
        status="passed",
        calls=[_recorded_call(f"call{index}", bot, cache_key=cache_key)],
        metrics=[MetricRecord(name="n", value=index, kind="int")],
        **used,
    )


def _links(store: Store) -> list[tuple[str, str, str, str]]:
    """Per run: its call's bot, its linked bot and its linked prompt."""
    return store.conn.execute(
        "SELECT r.id, cb.hash, rb.hash, p.function_name FROM experiment_runs r "
        "JOIN message_log c ON c.run_id = r.id JOIN bots cb ON cb.id = c.bot_id "
        "JOIN run_bots l ON l.run_id = r.id JOIN bots rb ON rb.id = l.bot_id "
        "JOIN run_prompts rp ON rp.run_id = r.id JOIN prompts p ON p.id = rp.prompt_id "
        "ORDER BY r.id"
    ).fetchall()


def test_a_run_names_the_definitions_an_earlier_record_carried(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    store = Store(path)
    try:
        session = store.begin_session(kind="test", argv=[])
        # In one batch: the run that carries them, then one that names them.
        assert store.insert_runs(session, [_run_record(0), _run_record(1, carried=False)]) == 2
    finally:
        store.close()
    # A new writer knows them from the database alone (a recovered spool, a new batch).
    store = Store(path)
    try:
        assert store.insert_run(session, _run_record(2, carried=False))
        assert _links(store) == [(f"run{i}", "b" * 8, "b" * 8, "greet") for i in range(3)]
    finally:
        store.close()


def test_a_run_naming_an_unknown_definition_is_not_stored(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite")
    try:
        session = store.begin_session(kind="test", argv=[])
        with pytest.raises(
            sqlite3.IntegrityError, match=r"run run0 uses prompt 'greet' version pp"
        ):
            store.insert_run(session, _run_record(0, carried=False))
        assert store.conn.execute("SELECT count(*) FROM experiment_runs").fetchone() == (0,)
        # A prompt defined, the bot not: the bot is named.
        run = _run_record(1, carried=False).model_copy(
            update={"prompts": [definitions()[0]], "prompt_refs": []}
        )
        with pytest.raises(sqlite3.IntegrityError, match=r"run run1 uses bot bbbb"):
            store.insert_run(session, run)
        assert store.conn.execute("SELECT count(*) FROM experiment_runs").fetchone() == (0,)
    finally:
        store.close()


def test_a_batch_names_ids_by_their_keys_and_skips_stored_runs(tmp_path: Path) -> None:
    from pytest_llmexp._store.batch import Batch
    from pytest_llmexp._store.records import Recording

    _, bot = definitions()
    run = _run_record

    store = Store(tmp_path / "db.sqlite")
    try:
        session = store.begin_session(kind="test", argv=[])
        assert store.insert_runs(session, [run(0, cache_key="k0")]) == 1
        batch = Batch()
        # Stored already (its newer cache entry must not be written), new, new again, and
        # calls outside any run.
        batch.add_run(run(0, cache_key="k1"))
        batch.add_run(run(1))
        batch.add_run(run(1))
        batch.add_recording(Recording(bots=[bot], calls=[_recorded_call("outside", bot)]))
        assert len(batch) == 2 and len(batch.calls) == 3
        assert store.insert_batch(session, batch) == 1
        conn = store.conn
        assert conn.execute("SELECT count(*) FROM experiment_runs").fetchone() == (2,)
        assert conn.execute(
            "SELECT m.id, m.run_id, b.hash, m.retries, m.message_log FROM message_log m "
            "JOIN bots b ON b.id = m.bot_id ORDER BY m.id"
        ).fetchall() == [
            (
                "call0",
                "run0",
                bot.hash,
                1,
                '[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]',
            ),
            (
                "call1",
                "run1",
                bot.hash,
                1,
                '[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]',
            ),
            (
                "outside",
                None,
                bot.hash,
                1,
                '[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]',
            ),
        ]
        assert conn.execute("SELECT key, message_log_id FROM llm_cache").fetchall() == [
            ("k0", "call0")
        ]
        assert conn.execute(
            "SELECT r.id, e.name, r.retries FROM experiment_runs r JOIN experiments e "
            "ON e.id = r.experiment_id ORDER BY r.id"
        ).fetchall() == [("run0", "e", 1), ("run1", "e", 1)]
        assert conn.execute(
            "SELECT rp.run_id, p.function_name FROM run_prompts rp JOIN prompts p "
            "ON p.id = rp.prompt_id ORDER BY 1"
        ).fetchall() == [("run0", "greet"), ("run1", "greet")]
        assert conn.execute("SELECT run_id, value FROM metrics ORDER BY 1").fetchall() == [
            ("run0", 0.0),
            ("run1", 1.0),
        ]
    finally:
        store.close()


def test_statistics_use_the_sample_std_and_skip_unevaluated_runs(tmp_path: Path) -> None:
    from pytest_llmexp._run.metrics import to_metric_record

    store = Store(tmp_path / "db.sqlite")
    try:
        session = store.begin_session(kind="test", argv=[])
        for index, (value, status) in enumerate(
            [(2, "passed"), (4, "failed"), (6, "passed"), (100, "error")]
        ):
            context = RunContext("e", num_executions=4, execution_index=index, worker="main")
            context.add_metric(to_metric_record("score", value))
            store.insert_run(session, context.finish(status))
        stats = store.summaries(session)["e"]["metrics"]["score"]
    finally:
        store.close()
    assert stats == {"kind": "int", "n": 3, "mean": 4.0, "std": 2.0, "min": 2.0, "max": 6.0}


def _git(where: Path, *args: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(where),
        "GIT_AUTHOR_NAME": "pytest-llmexp tests",
        "GIT_AUTHOR_EMAIL": "tests@pytest-llmexp.invalid",
        "GIT_COMMITTER_NAME": "pytest-llmexp tests",
        "GIT_COMMITTER_EMAIL": "tests@pytest-llmexp.invalid",
    }
    done = subprocess.run(
        ["git", *args], cwd=where, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command to compare with")
def test_the_git_commit_is_read_from_the_files_as_git_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llmexp._store.provenance import _ASK_GIT, _head_from_files, git_sha

    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_CEILING_DIRECTORIES", "GIT_COMMON_DIR"):
        monkeypatch.delenv(name, raising=False)
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    _git(repo, "init", "-q", "-b", "main")
    assert _head_from_files(repo) is None  # no commit yet, as `git rev-parse HEAD` fails
    (repo / "f").write_text("1")
    _git(repo, "add", "f")
    _git(repo, "commit", "-q", "-m", "one")
    first = _git(repo, "rev-parse", "HEAD")
    assert _head_from_files(repo / "sub") == first  # a loose ref, from a subdirectory
    _git(repo, "pack-refs", "--all")
    assert _head_from_files(repo) == first  # a packed ref
    (repo / "f").write_text("2")
    _git(repo, "commit", "-q", "-am", "two")
    second = _git(repo, "rev-parse", "HEAD")
    assert second != first and _head_from_files(repo) == second
    _git(repo, "checkout", "-q", "--detach", first)
    assert _head_from_files(repo) == first  # a detached HEAD
    _git(repo, "worktree", "add", "-q", str(tmp_path / "linked"), "main")
    assert _head_from_files(tmp_path / "linked") == second  # a linked worktree
    outside = tmp_path / "outside"
    outside.mkdir()
    assert _head_from_files(outside) is None
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    # Where the environment tells git where to look, git itself is asked.
    assert _head_from_files(outside) is _ASK_GIT
    assert git_sha(str(outside)) == first
