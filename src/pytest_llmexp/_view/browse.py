"""Reading message_log.db for people: sessions, experiments and prompt histories, as
JSON-safe builtins (the ``llmexp`` command and the HTML report format them); the runs and
their conversations are :mod:`.runview`'s."""

from __future__ import annotations

import json
import sqlite3
import statistics
from datetime import datetime
from typing import Any

from .._util.lookup import find_experiment, nearest
from .._verdict.stats import RUN_STATUSES, experiment_summary, interval
from ..errors import ExperimentError
from .runview import runs
from .trends import metric_values

__all__ = ["experiment_detail", "experiments", "prompt_history", "sessions"]


def _duration(started: str | None, finished: str | None) -> float | None:
    if not started or not finished:
        return None
    return (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()


def _gate_state(values: list[Any]) -> str | None:
    """One verdict over experiments' ``gate_passed``: failed, passed, or None (none gated)."""
    judged = [v for v in values if v is not None]
    if not judged:
        return None
    return "passed" if all(judged) else "failed"


def sessions(conn: sqlite3.Connection, limit: int = 20) -> list[dict[str, Any]]:
    """The most recent sessions, newest first."""
    found = []
    for row in conn.execute(
        "SELECT id, kind, started_at, finished_at, status, exitstatus, cache_mode, health "
        "FROM sessions ORDER BY started_at DESC LIMIT ?",
        (limit,),
    ):
        session_id, kind, started, finished, status, exitstatus, cache_mode, health = row
        names, gated = [], []
        counts = dict.fromkeys(RUN_STATUSES, 0)
        for name, gate_passed in conn.execute(
            "SELECT name, gate_passed FROM experiments WHERE session_id = ? ORDER BY id",
            (session_id,),
        ):
            names.append(name)
            gated.append(gate_passed)
        for status_, count in conn.execute(
            "SELECT r.status, count(*) FROM experiment_runs r JOIN experiments e "
            "ON e.id = r.experiment_id WHERE e.session_id = ? GROUP BY r.status",
            (session_id,),
        ):
            counts[status_] = count
        found.append(
            {
                "id": session_id,
                "kind": kind,
                "started_at": started,
                "duration_s": _duration(started, finished),
                "status": status,
                "exitstatus": exitstatus,
                "experiments": names,
                "runs": counts,
                "gates": _gate_state(gated),
                "cache_mode": cache_mode,
                "calls": json.loads(health).get("calls") if health else None,
            }
        )
    return found


def _summary(conn: sqlite3.Connection, experiment_id: int, stored: str | None) -> dict[str, Any]:
    # A running or killed session's experiments have no stored summary yet.
    return json.loads(stored) if stored else experiment_summary(conn, experiment_id)


def experiments(
    conn: sqlite3.Connection, name: str | None = None, limit: int = 20
) -> list[dict[str, Any]]:
    """Experiments of the most recent sessions (of one name, if given), newest first."""
    if name is not None:
        find_experiment(conn, name)  # an unknown name is an error with suggestions
    rows = conn.execute(
        "SELECT e.id, e.name, e.session_id, s.started_at, s.status, e.num_executions, "
        "e.gate_passed, e.summary FROM experiments e JOIN sessions s ON s.id = e.session_id "
        "WHERE ? IS NULL OR e.name = ? ORDER BY s.started_at DESC, e.id DESC LIMIT ?",
        (name, name, limit),
    ).fetchall()
    found = []
    for experiment_id, name_, session_id, started, status, executions, gate_passed, stored in rows:
        summary = _summary(conn, experiment_id, stored)
        found.append(
            {
                "id": experiment_id,
                "name": name_,
                "session_id": session_id,
                "started_at": started,
                "session_status": status,
                "num_executions": executions,
                "runs": summary["runs"],
                "gates": None if gate_passed is None else ("passed" if gate_passed else "failed"),
                "means": {m: s["mean"] for m, s in summary["metrics"].items()},
            }
        )
    return found


def experiment_detail(conn: sqlite3.Connection, experiment_id: int) -> dict[str, Any]:
    """One experiment: per-metric statistics with their interval, values, gates, the runs that
    did not pass with their reasons, and the stored comparison with a baseline."""
    name, session_id, executions, gate_passed, stored, comparison, started, status = conn.execute(
        "SELECT e.name, e.session_id, e.num_executions, e.gate_passed, e.summary, "
        "e.comparison, s.started_at, s.status FROM experiments e "
        "JOIN sessions s ON s.id = e.session_id WHERE e.id = ?",
        (experiment_id,),
    ).fetchone()
    summary = _summary(conn, experiment_id, stored)
    values, _ = metric_values(conn, experiment_id)
    for metric, stats in summary["metrics"].items():
        low, high = interval(values.get(metric, []), stats["kind"])
        stats.update(
            median=statistics.median(values[metric]) if values.get(metric) else None,
            ci_low=low,
            ci_high=high,
            values=values.get(metric, []),
        )
    gates = [
        dict(zip(("gate", "source", "observed", "verdict", "detail"), row, strict=True))
        for row in conn.execute(
            "SELECT gate, source, observed, verdict, detail FROM gate_results "
            "WHERE experiment_id = ? ORDER BY id",
            (experiment_id,),
        )
    ]
    cases = conn.execute(
        "SELECT count(DISTINCT coalesce(case_id, '')) FROM experiment_runs WHERE experiment_id = ?",
        (experiment_id,),
    ).fetchone()[0]
    return {
        "id": experiment_id,
        "name": name,
        "session_id": session_id,
        "started_at": started,
        "session_status": status,
        "num_executions": executions,
        "cases": cases,
        "runs": summary["runs"],
        "errors": summary["errors"],
        "metrics": summary["metrics"],
        "gate_passed": gate_passed if gate_passed is None else bool(gate_passed),
        "gates": gates,
        "not_passed": runs(conn, experiment_id, passed=False),
        "comparison": json.loads(comparison) if comparison else None,
    }


def prompt_history(
    conn: sqlite3.Connection, name: str | None = None, *, dates: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Each prompt function's versions, oldest first, with in how many runs each was used
    and, with ``dates``, when first and last (which reads every run that used it)."""
    if name is not None:
        known = [str(r[0]) for r in conn.execute("SELECT DISTINCT function_name FROM prompts")]
        if name not in known:
            close = nearest(name, known)
            hint = f"did you mean {', '.join(close)}?" if close else "no prompt is stored yet"
            raise ExperimentError(f"no prompt {name!r} in the database; {hint}")
    history: dict[str, list[dict[str, Any]]] = {}
    usage = (
        "SELECT rp.prompt_id, count(*) AS runs, min(r.started_at) AS first, "
        "max(r.started_at) AS last FROM run_prompts rp JOIN experiment_runs r "
        "ON r.id = rp.run_id GROUP BY rp.prompt_id"
        if dates
        else "SELECT prompt_id, count(*) AS runs, NULL AS first, NULL AS last FROM run_prompts "
        "GROUP BY prompt_id"
    )
    for row in conn.execute(
        f"""
        SELECT p.function_name, p.module, p.role, p.hash, p.template, p.created_at,
               coalesce(u.runs, 0), u.first, u.last
        FROM prompts p LEFT JOIN ({usage}) u ON u.prompt_id = p.id
        WHERE ? IS NULL OR p.function_name = ?
        ORDER BY p.function_name, p.created_at, p.id
        """,
        (name, name),
    ):
        function, module, role, digest, template, created, used, first, last = row
        history.setdefault(function, []).append(
            {
                "version": digest[:8],
                "hash": digest,
                "module": module,
                "role": role,
                "template": template,
                "created_at": created,
                "runs": used,
                "first_used": first,
                "last_used": last,
            }
        )
    return history
