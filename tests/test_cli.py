"""The ``llmexp`` commands on a database made by real pytest sessions (``history.py``): each
answer is checked against what the database holds."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import Database
from history import MARKUP, SECRET, History
from pytest_llmexp.cli import main


@pytest.fixture(autouse=True)
def _wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables fit the terminal; these tests read whole cells."""
    monkeypatch.setenv("COLUMNS", "200")


@pytest.fixture(scope="module")
def db(history: History) -> Database:
    return Database(history.path)


def llmexp(
    history: History, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    code = main(["--db", str(history.path), *args])
    out, err = capsys.readouterr()
    return code, out, err


def as_json(history: History, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    code, out, err = llmexp(history, capsys, *args, "--json")
    assert code == 0, err
    return json.loads(out)


def latest_namer(db: Database) -> int:
    return int(
        db.one(
            "SELECT e.id FROM experiments e JOIN sessions s ON s.id = e.session_id "
            "WHERE e.name = 'namer' ORDER BY s.started_at DESC LIMIT 1"
        )
    )


def test_sessions_lists_every_session_newest_first(history: History, db: Database, capsys) -> None:
    found = as_json(history, capsys, "sessions")
    assert [s["id"] for s in found] == history.sessions[::-1]
    for session in found:
        runs = db.rows(
            "SELECT r.status, count(*) FROM experiment_runs r JOIN experiments e "
            "ON e.id = r.experiment_id WHERE e.session_id = ? GROUP BY r.status",
            session["id"],
        )
        assert {k: v for k, v in session["runs"].items() if v} == {r[0]: r[1] for r in runs}
        status = db.one("SELECT status FROM sessions WHERE id = ?", session["id"])
        assert session["status"] == status
    assert found[0]["status"] == "interrupted"
    code, out, _ = llmexp(history, capsys, "sessions", "-n", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["SESSION", "STARTED", "(UTC)"]
    assert [line.split()[0] for line in lines[1:]] == [s[:12] for s in history.sessions[::-1][:2]]


def test_experiments_show_metric_means_from_the_database(
    history: History, db: Database, capsys
) -> None:
    found = as_json(history, capsys, "experiments", "namer")
    assert len(found) == 3 and {e["name"] for e in found} == {"namer"}
    for experiment in found:
        means = db.rows(
            "SELECT m.name, avg(m.value) FROM metrics m JOIN experiment_runs r ON r.id = m.run_id "
            "WHERE r.experiment_id = ? AND r.status IN ('passed', 'failed') GROUP BY m.name",
            experiment["id"],
        )
        assert experiment["means"] == pytest.approx({r[0]: r[1] for r in means})
        assert experiment["gates"] == "passed"
    every = as_json(history, capsys, "experiments")
    assert [e["name"] for e in every] == ["halted", "namer", "namer", "namer"]


def test_show_gives_statistics_gates_and_failing_runs(
    history: History, db: Database, capsys
) -> None:
    detail = as_json(history, capsys, "show", "namer")
    experiment_id = latest_namer(db)
    assert detail["id"] == experiment_id
    words = [
        r[0]
        for r in db.rows(
            "SELECT m.value FROM metrics m JOIN experiment_runs r ON r.id = m.run_id "
            "WHERE r.experiment_id = ? AND m.name = 'words'",
            experiment_id,
        )
    ]
    stats = detail["metrics"]["words"]
    assert stats["n"] == len(words)
    assert stats["mean"] == pytest.approx(statistics.fmean(words))
    assert stats["median"] == pytest.approx(statistics.median(words))
    assert stats["ci_low"] < stats["mean"] < stats["ci_high"]
    short = detail["metrics"]["short"]
    assert 0 <= short["ci_low"] <= short["mean"] <= short["ci_high"] <= 1  # Wilson, for a bool
    stored = db.rows(
        "SELECT gate, verdict, observed FROM gate_results WHERE experiment_id = ?", experiment_id
    )
    assert [(g["gate"], g["verdict"], g["observed"]) for g in detail["gates"]] == [
        tuple(r) for r in stored
    ]
    failed = db.rows(
        "SELECT id, error_type FROM experiment_runs WHERE experiment_id = ? AND status = 'failed'",
        experiment_id,
    )
    assert failed
    assert {(r["id"], r["error_type"]) for r in detail["not_passed"]} == {tuple(r) for r in failed}
    code, out, _ = llmexp(history, capsys, "show", "namer")
    assert code == 0
    assert "gates: passed" in out
    assert "RuntimeError: ninja names are not allowed" in out
    for run_id, _ in failed:
        assert run_id[:12] in out


def test_tables_fit_a_narrow_terminal(
    history: History, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    for command in (["show", "namer"], ["runs", "namer"], ["experiments"], ["sessions"]):
        code, out, _ = llmexp(history, capsys, *command)
        assert code == 0
        tables = [line for line in out.splitlines() if not line.startswith(("namer:", "runs:"))]
        assert max(len(line) for line in tables) <= 80, (command, out)
    assert "…" in out


def test_show_of_an_earlier_session(history: History, db: Database, capsys) -> None:
    first = history.sessions[0]
    detail = as_json(history, capsys, "show", "namer", "--session", first[:8])
    assert detail["session_id"] == first


def test_runs_filter_by_status(history: History, db: Database, capsys) -> None:
    experiment_id = latest_namer(db)
    every = as_json(history, capsys, "runs", "namer")
    assert len(every) == db.count("experiment_runs", "experiment_id = ?", experiment_id)
    failed = as_json(history, capsys, "runs", "namer", "--status", "failed")
    assert failed and {r["status"] for r in failed} == {"failed"}
    assert len(failed) == db.count(
        "experiment_runs", "experiment_id = ? AND status = 'failed'", experiment_id
    )
    passed = next(r for r in every if r["status"] == "passed")
    values = db.rows("SELECT name, value FROM metrics WHERE run_id = ?", passed["id"])
    assert passed["metrics"] == {r[0]: r[1] for r in values}


def test_run_shows_the_conversation_prompts_and_bots(
    history: History, db: Database, capsys
) -> None:
    run_id = db.one(
        "SELECT run_id FROM message_log WHERE message_log LIKE ? LIMIT 1", f"%{MARKUP[:8]}%"
    )
    detail = as_json(history, capsys, "run", run_id[:10])
    assert detail["id"] == run_id
    stored = [
        json.loads(r[0])
        for r in db.rows(
            "SELECT message_log FROM message_log WHERE run_id = ? ORDER BY timestamp", run_id
        )
    ]
    assert [c["messages"] for c in detail["calls"]] == stored
    assert detail["calls"][0]["messages"][-1]["content"] == MARKUP
    hashes = {
        r[0][:8]
        for r in db.rows(
            "SELECT p.hash FROM run_prompts rp JOIN prompts p ON p.id = rp.prompt_id "
            "WHERE rp.run_id = ?",
            run_id,
        )
    }
    assert {p["version"] for p in detail["prompts"]} == hashes
    assert {b["model"] for b in detail["bots"]} == {"gen-model", "judge-model"}
    assert all("base_url" not in b["params"] for b in detail["bots"])
    code, out, _ = llmexp(history, capsys, "run", run_id)
    assert code == 0
    assert MARKUP in out and "[assistant]" in out
    assert "namer_system (system) version" in out


def test_key_shaped_text_a_model_said_is_masked(
    history: History, db: Database, capsys, tmp_path: Path
) -> None:
    masked = SECRET[:9] + "***"
    assert SECRET not in db.dump()
    run_id = db.one(
        "SELECT run_id FROM message_log WHERE message_log LIKE ? LIMIT 1", f"%{masked}%"
    )
    for args in (("run", run_id), ("run", run_id, "--json")):
        code, out, _ = llmexp(history, capsys, *args)
        assert code == 0
        assert SECRET not in out and masked in out
    target = tmp_path / "report.html"
    assert main(["--db", str(history.path), "report", "-o", str(target)]) == 0
    html = target.read_text()
    assert SECRET not in html and masked in html


def test_prompts_history_and_diff(history: History, db: Database, capsys) -> None:
    found = as_json(history, capsys, "prompts")
    assert set(found) == {"namer_system", "namer_user", "rate_user"}
    versions = found["namer_system"]
    assert [v["template"] for v in versions] == ["You name jobs.", "You name jobs. Keep it short."]
    assert versions[0]["runs"] == db.one(
        "SELECT count(*) FROM run_prompts rp JOIN prompts p ON p.id = rp.prompt_id "
        "WHERE p.hash = ?",
        versions[0]["hash"],
    )
    code, out, _ = llmexp(history, capsys, "prompts", "namer_system", "--diff")
    assert code == 0
    assert "-You name jobs.\n+You name jobs. Keep it short." in out
    old, new = versions[0]["version"], versions[1]["version"]
    code, out, _ = llmexp(history, capsys, "prompts", "namer_system", "--diff", new[:5], old)
    assert f"--- namer_system {new}" in out and "+You name jobs.\n" in out
    code, _, err = llmexp(history, capsys, "prompts", "namer_user", "--diff")
    assert code == 2 and "has one version only" in err
    code, _, err = llmexp(history, capsys, "prompts", "namer_system", "--diff", "ffff")
    assert code == 2 and f"'ffff' is not a version of it (versions: {old}, {new})" in err
    code, _, err = llmexp(history, capsys, "prompts", "namer_sys")
    assert code == 2 and "did you mean namer_system" in err


def test_compare_two_stored_sessions(history: History, db: Database, capsys) -> None:
    first, second = history.sessions[0], history.sessions[1]
    result = as_json(history, capsys, "compare", first[:8], second[:8])
    comparison = result["experiments"]["namer"]

    def mean_of_case_means(session: str, metric: str) -> float:
        # Both sessions ran the same cases: the comparison's unit is the case.
        rows = db.rows(
            "SELECT avg(m.value) FROM metrics m JOIN experiment_runs r ON r.id = m.run_id "
            "JOIN experiments e ON e.id = r.experiment_id WHERE e.session_id = ? AND m.name = ? "
            "AND r.status IN ('passed', 'failed') GROUP BY r.case_id",
            session,
            metric,
        )
        return statistics.fmean(r[0] for r in rows)

    for metric in comparison["metrics"]:
        name = metric["metric"]
        assert metric["unit"] == "cases (paired)"
        assert metric["diff"] == pytest.approx(
            mean_of_case_means(second, name) - mean_of_case_means(first, name)
        )
    assert [c["prompt"] for c in comparison["prompts"]] == ["namer_system"]
    code, out, _ = llmexp(history, capsys, "compare", first, second)
    assert code == 0 and "prompt namer_system changed" in out and "+You name jobs. Keep" in out
    code, _, err = llmexp(history, capsys, "compare", first, history.sessions[3])
    assert code == 2 and "no experiment in common" in err


@pytest.mark.parametrize("kind", ["csv", "jsonl", "json"])
def test_export_one_row_per_run_with_metric_columns(
    history: History, db: Database, capsys, kind: str
) -> None:
    code, out, _ = llmexp(history, capsys, "export", "namer", "--format", kind)
    assert code == 0
    if kind == "csv":
        rows: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(out)))
    elif kind == "jsonl":
        rows = [json.loads(line) for line in out.splitlines()]
    else:
        rows = json.loads(out)
    experiment_id = latest_namer(db)
    assert len(rows) == db.count("experiment_runs", "experiment_id = ?", experiment_id)
    assert list(rows[0])[-3:] == ["words", "short", "coolness"]
    for row in rows:
        stored = dict(db.rows("SELECT name, value FROM metrics WHERE run_id = ?", row["run_id"]))
        for metric in ("words", "short", "coolness"):
            value = row[metric]
            if value in ("", None):
                assert metric not in stored and row["status"] == "failed"
            else:
                assert float(value) == stored[metric]


def test_export_every_session_to_a_file(
    history: History, db: Database, capsys, tmp_path: Path
) -> None:
    target = tmp_path / "runs.csv"
    code, _, err = llmexp(history, capsys, "export", "namer", "--all-sessions", "-o", str(target))
    assert code == 0 and "wrote 18 run(s) of namer" in err
    rows = list(csv.DictReader(target.open()))
    assert len({r["session_id"] for r in rows}) == 3
    assert len(rows) == db.count(
        "experiment_runs r JOIN experiments e ON e.id = r.experiment_id", "e.name = 'namer'"
    )


def test_gate_evaluates_a_stored_session(history: History, db: Database, capsys) -> None:
    latest_namer_session = history.sessions[2]
    code, out, _ = llmexp(history, capsys, "gate", latest_namer_session[:8])
    assert code == 0, out
    # The gates from code, and the one the session was run with (--llm-gate), as stored.
    assert "LLM verdict: passed (3 gate(s))" in out
    data = as_json(history, capsys, "gate", latest_namer_session)
    stored = db.one(
        "SELECT g.observed FROM gate_results g JOIN experiments e ON e.id = g.experiment_id "
        "WHERE e.session_id = ? AND g.source = 'cli'",
        latest_namer_session,
    )
    cli = [g for g in data["experiments"]["namer"]["gates"] if g["source"] == "cli"]
    assert [(g["metric"], g["observed"], g["verdict"]) for g in cli] == [
        ("coolness", stored, "passed")
    ]
    mean = db.one(
        "SELECT avg(m.value) FROM metrics m JOIN experiment_runs r ON r.id = m.run_id "
        "WHERE r.experiment_id = ? AND m.name = 'coolness'",
        latest_namer(db),
    )
    strict = f"namer.coolness: mean >= {mean + 0.5:.3f}"
    code, out, _ = llmexp(history, capsys, "gate", latest_namer_session, "--gate", strict, "--json")
    assert code == 1
    data = json.loads(out)
    assert not data["passed"]
    gate = next(g for g in data["experiments"]["namer"]["gates"] if g["metric"] == "coolness")
    assert gate["observed"] == pytest.approx(mean) and gate["verdict"] == "failed"
    code, out, _ = llmexp(history, capsys, "gate", latest_namer_session, "--gate", strict)
    assert code == 1 and f"ERROR: namer: gate {strict} failed" in out
    # A stored session is only read: the gates it stored are unchanged.
    assert db.count("gate_results", "gate = ?", strict) == 0


def test_gate_refuses_an_interrupted_session(history: History, capsys) -> None:
    code, _, err = llmexp(history, capsys, "gate", "last")
    assert code == 2
    assert f"session {history.sessions[3][:12]} is interrupted" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "nmaer"), "no experiment 'nmaer' in the database; did you mean namer?"),
        (("runs", "namer", "--session", "ffff0000"), "no session with this id"),
        (("run", "0000000000"), "RUN_ID 0000000000: no run with this id in the database"),
        (("run", "%"), "RUN_ID '%': not a run id"),
        (("gate", "zz"), "no session with this id in the database (the most recent: "),
        (("gate", "last", "--gate", "namer.words: mean <= x"), "'x' is not a number"),
        (("prompts", "--diff"), "--diff compares two versions of one prompt: name it"),
        (("export", "halted", "--session", "first"), "no session with this id"),
        (("export", "namer", "--session", "last", "--all-sessions"), "leave out --session"),
        (("compare", "last", "last", "--experiment", "namer"), "did not run in both sessions"),
    ],
)
def test_errors_name_the_problem(
    history: History, capsys, args: tuple[str, ...], message: str
) -> None:
    code, _, err = llmexp(history, capsys, *args)
    assert code == 2
    assert message in err


def test_an_unknown_session_suggests_the_nearest_ids(history: History, capsys) -> None:
    # Ids are random: end the prefix with two digits no session has there.
    taken = {s[10:12] for s in history.sessions}
    wanted = history.sessions[1][:10] + next(
        f"{n:02x}" for n in range(256) if f"{n:02x}" not in taken
    )
    code, _, err = llmexp(history, capsys, "gate", wanted)
    assert code == 2 and f"(nearest: {history.sessions[1][:12]}" in err


@pytest.mark.parametrize(
    ("config", "text", "where"),
    [
        ("pytest.ini", "[pytest]\nllm_db = results/exp.db\n", "results/exp.db"),
        ("pyproject.toml", "[tool.pytest.ini_options]\naddopts = '-q'\n", "message_log.db"),
        ("setup.cfg", "[tool:pytest]\nllm_db = exp.db\n", "exp.db"),
    ],
)
def test_without_db_the_database_is_the_one_pytest_uses_here(
    history: History,
    tmp_path: Path,
    capsys,
    monkeypatch: pytest.MonkeyPatch,
    config: str,
    text: str,
    where: str,
) -> None:
    monkeypatch.delenv("LLMEXP_DB", raising=False)
    (tmp_path / config).write_text(text)
    inside = tmp_path / "tests" / "unit"
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)
    code = main(["sessions"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"no database at {tmp_path / where} (from " in err
    (tmp_path / where).parent.mkdir(exist_ok=True)
    shutil.copy(history.path, tmp_path / where)
    assert main(["sessions", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    monkeypatch.setenv("LLMEXP_DB", str(history.path))
    (tmp_path / where).unlink()
    assert main(["sessions", "--json"]) == 0


def test_a_missing_database(tmp_path: Path, capsys) -> None:
    code = main(["sessions", "--db", str(tmp_path / "none.db")])
    assert code == 2
    assert f"no database at {tmp_path / 'none.db'}" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


def test_a_database_from_a_newer_version_is_refused_untouched(
    history: History, tmp_path: Path, capsys
) -> None:
    newer = tmp_path / "newer.db"
    shutil.copy(history.path, newer)
    with sqlite3.connect(newer) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
            "VALUES ('pytest_llmexp', 'm999_from_the_future', 'later')"
        )
    conn.close()
    before = newer.read_bytes()
    code = main(["--db", str(newer), "sessions"])
    err = capsys.readouterr().err
    assert code == 2
    assert "written by a newer pytest-llmexp" in err and "--db" in err and "--llm-db" not in err
    assert newer.read_bytes() == before


def test_bad_arguments_are_usage_errors(history: History, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--db", str(history.path), "sessions", "-n", "0"])
    assert exited.value.code == 2
    assert "expected a whole number of 1 or more, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--db", str(history.path), "export", "namer", "--format", "xlsx"])
    assert "invalid choice: 'xlsx'" in capsys.readouterr().err


def test_the_console_script_runs(history: History) -> None:
    script = Path(sys.executable).with_name("llmexp")
    result = subprocess.run(
        [str(script), "--db", str(history.path), "experiments", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert {e["name"] for e in json.loads(result.stdout)} == {"namer", "halted"}
