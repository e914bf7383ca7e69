"""Reading a stored experiment's runs for people: the run table with metric values, one
run's conversation, prompts and bots, and the rows of an export, as JSON-safe builtins."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

__all__ = ["export_rows", "in_order", "run_detail", "runs"]


def runs(
    conn: sqlite3.Connection,
    experiment_id: int,
    *,
    passed: bool | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """The experiment's runs in case and execution order, each with its metric values; only
    the passed ones, or only the others, when ``passed`` says so. With ``limit``, at most that
    many, chosen in SQL: those that did not pass first, then the first that passed."""
    status = {None: "", True: " AND r.status = 'passed'", False: " AND r.status != 'passed'"}[
        passed
    ]
    table_order = "coalesce(r.case_id, ''), r.execution_index, r.started_at"
    chosen, args = "", [experiment_id]
    if limit is not None:
        chosen = (
            " AND r.id IN (SELECT r.id FROM experiment_runs r WHERE r.experiment_id = ?"
            f"{status} ORDER BY r.status = 'passed', {table_order} LIMIT ?)"
        )
        args += [experiment_id, limit]
    found = conn.execute(
        "SELECT id, case_id, execution_index, status, duration_s, error_type, "
        f"error_message FROM experiment_runs r WHERE r.experiment_id = ?{status}{chosen} "
        f"ORDER BY {table_order}",
        args,
    ).fetchall()
    # The metrics of those runs only: a report embeds a few hundred runs of many thousands.
    ids = json.dumps([row[0] for row in found])
    metrics: dict[str, dict[str, float | int]] = {}
    for run_id, metric, value, kind in conn.execute(
        "SELECT run_id, name, value, kind FROM metrics "
        "WHERE run_id IN (SELECT value FROM json_each(?))",
        (ids,),
    ):
        # As recorded: a bool metric is stored 1/0, an int one whole.
        metrics.setdefault(run_id, {})[metric] = value if kind == "float" else int(value)
    # The order the runs recorded their metrics in (the table is ordered by name).
    order = [
        name
        for (name,) in conn.execute(
            "SELECT m.name FROM (SELECT id FROM experiment_runs WHERE experiment_id = ? "
            "LIMIT 100) r JOIN metrics m ON m.run_id = r.id "
            "GROUP BY m.name ORDER BY min(m.position), m.name",
            (experiment_id,),
        )
    ]
    return [
        {
            "id": run_id,
            "case": case,
            "execution": index,
            "status": status,
            "duration_s": duration,
            "error_type": error_type,
            "error_message": message,
            "metrics": in_order(metrics.get(run_id, {}), order),
        }
        for run_id, case, index, status, duration, error_type, message in found
    ]


def in_order(values: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """``values`` by name in ``order``, then any others."""
    return {name: values[name] for name in order if name in values} | values


def _calls(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    calls = []
    for row in conn.execute(
        "SELECT c.id, b.class_name, c.model_name, c.temperature, c.message_log, "
        "c.prompt_tokens, c.completion_tokens, c.latency_ms, c.retries, c.error_type, c.error, "
        "c.replayed_from FROM message_log c LEFT JOIN bots b ON b.id = c.bot_id "
        "WHERE c.run_id = ? ORDER BY c.timestamp, c.rowid",
        (run_id,),
    ):
        call_id, bot, model, temperature, log, prompt_tokens, completion_tokens = row[:7]
        latency, retries, error_type, error, replayed_from = row[7:]
        calls.append(
            {
                "id": call_id,
                "bot": bot,
                "model": model,
                "temperature": temperature,
                "messages": json.loads(log) if log else [],
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "latency_ms": latency,
                "retries": retries,
                "error": f"{error_type}: {error}" if error else None,
                "replayed_from": replayed_from,
            }
        )
    return calls


def run_detail(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """One run: its place, outcome, conversation (every LLM call), prompts with their
    versions, bot configurations and metric values."""
    row = conn.execute(
        "SELECT r.id, e.name, e.session_id, r.case_id, r.execution_index, r.status, r.worker, "
        "r.started_at, r.duration_s, r.error_type, r.error_message, r.replayed_from "
        "FROM experiment_runs r JOIN experiments e ON e.id = r.experiment_id WHERE r.id = ?",
        (run_id,),
    ).fetchone()
    keys = (
        "id",
        "experiment",
        "session_id",
        "case",
        "execution",
        "status",
        "worker",
        "started_at",
        "duration_s",
        "error_type",
        "error_message",
        "replayed_from",
    )
    detail: dict[str, Any] = dict(zip(keys, row, strict=True))
    detail["metrics"] = {
        name: {"value": value, "kind": kind}
        for name, value, kind in conn.execute(
            "SELECT name, value, kind FROM metrics WHERE run_id = ? ORDER BY position", (run_id,)
        )
    }
    detail["prompts"] = [
        dict(zip(("name", "role", "version", "template"), p, strict=True))
        for p in conn.execute(
            "SELECT p.function_name, p.role, substr(p.hash, 1, 8), p.template FROM run_prompts rp "
            "JOIN prompts p ON p.id = rp.prompt_id WHERE rp.run_id = ? ORDER BY p.function_name",
            (run_id,),
        )
    ]
    detail["bots"] = [
        {
            "class_name": b[0],
            "model": b[1],
            "temperature": b[2],
            "system_prompt": b[3],
            "response_schema": json.loads(b[4]) if b[4] else None,
            "params": {k: v for k, v in json.loads(b[5] or "{}").items() if k != "base_url"},
        }
        for b in conn.execute(
            "SELECT b.class_name, b.model_name, b.temperature, b.system_prompt, "
            "b.response_schema, b.params FROM run_bots rb JOIN bots b ON b.id = rb.bot_id "
            "WHERE rb.run_id = ? ORDER BY b.id",
            (run_id,),
        )
    ]
    detail["calls"] = _calls(conn, run_id)
    return detail


def export_rows(conn: sqlite3.Connection, experiment_ids: list[int]) -> list[dict[str, Any]]:
    """One row per run of the experiments, with each metric as a column (``metric.NAME`` when
    a metric's name is taken by a fixed column)."""
    rows = []
    fixed = (
        "session_id",
        "started_at",
        "experiment",
        "run_id",
        "case",
        "execution",
        "status",
        "error_type",
        "duration_s",
    )
    names: list[str] = []
    for experiment_id in experiment_ids:
        name, session_id, started = conn.execute(
            "SELECT e.name, e.session_id, s.started_at FROM experiments e "
            "JOIN sessions s ON s.id = e.session_id WHERE e.id = ?",
            (experiment_id,),
        ).fetchone()
        for run in runs(conn, experiment_id):
            row = dict.fromkeys(fixed)
            row.update(
                session_id=session_id,
                started_at=started,
                experiment=name,
                run_id=run["id"],
                case=run["case"],
                execution=run["execution"],
                status=run["status"],
                error_type=run["error_type"],
                duration_s=run["duration_s"],
            )
            for metric, value in run["metrics"].items():
                column = f"metric.{metric}" if metric in fixed else metric
                names.append(column)
                row[column] = value
            rows.append(row)
    columns = list(fixed) + list(dict.fromkeys(names))
    return [{c: row.get(c) for c in columns} for row in rows]
