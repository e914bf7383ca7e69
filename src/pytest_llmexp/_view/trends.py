"""A metric's values in one experiment, and the trend of its mean across sessions with
what changed between them (prompt versions, bot settings)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .._verdict.stats import EVALUATED, interval_from, metric_moments

#: A session's status as the views show it (``s`` the session, ``e`` the experiment), marked
#: when a complete session ran only part of the experiment's executions.
SESSION_STATUS = (
    "s.status || CASE WHEN e.partial AND s.status = 'complete' THEN ', partial' ELSE '' END"
)

__all__ = ["SESSION_STATUS", "metric_values", "trend"]


def metric_values(
    conn: sqlite3.Connection, experiment_id: int, variant: str | None = None
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Each metric's values over the evaluated runs (of one variant), and its kind."""
    values: dict[str, list[float]] = {}
    kinds: dict[str, str] = {}
    placeholders = ", ".join("?" * len(EVALUATED))
    only = " AND r.variant = ?" if variant is not None else ""
    for metric, value, kind in conn.execute(
        f"SELECT m.name, m.value, m.kind FROM metrics m JOIN experiment_runs r ON r.id = m.run_id "
        f"WHERE r.experiment_id = ? AND r.status IN ({placeholders}){only} "
        "ORDER BY m.name, r.case_id, r.execution_index",
        (experiment_id, *EVALUATED, *(() if variant is None else (variant,))),
    ):
        values.setdefault(str(metric), []).append(float(value))
        kinds[metric] = kind if kinds.get(metric, kind) == kind else "float"
    return values, kinds


def _values(values: list[str]) -> str:
    return ", ".join(values) or "-"


def trend(
    conn: sqlite3.Connection, name: str, limit: int = 20, until: str | None = None
) -> list[dict[str, Any]]:
    """Experiment ``name`` over its most recent sessions (up to session ``until``), oldest
    first: per metric the mean of evaluated runs with its 95% interval, and what changed
    since the previous session (prompt versions, bot settings)."""
    from .._verdict.compare import bot_changes, metric_changes, prompt_changes

    rows = conn.execute(
        f"SELECT e.id, e.session_id, s.started_at, {SESSION_STATUS}, e.summary "
        "FROM experiments e "
        "JOIN sessions s ON s.id = e.session_id WHERE e.name = ? AND (? IS NULL OR "
        "s.started_at <= (SELECT started_at FROM sessions WHERE id = ?)) "
        "ORDER BY s.started_at DESC, e.id DESC LIMIT ?",
        (name, until, until, limit + 1),
    ).fetchall()[::-1]
    points = []
    prompts_seen: dict[int, Any] = {}
    bots_seen: dict[int, Any] = {}
    metrics_seen: dict[int, Any] = {}
    for position, (experiment_id, session_id, started, status, summary) in enumerate(rows):
        point: dict[str, Any] = {
            "experiment_id": experiment_id,
            "session_id": session_id,
            "started_at": started,
            "session_status": status,
            "metrics": {},
            "changes": [],
        }
        # A finished session stored its statistics; one still running is computed.
        stored = json.loads(summary)["metrics"] if summary else None
        for metric, m in (stored or metric_moments(conn, experiment_id)).items():
            low, high = interval_from(m["n"], m["mean"], m["std"], m["kind"])
            point["metrics"][metric] = {
                "n": m["n"],
                "mean": m["mean"],
                "ci_low": low,
                "ci_high": high,
            }
        if position:
            previous = rows[position - 1][0]
            point["changes"] = (
                [
                    f"prompt {c['prompt']} {_values(c['from'])} -> {_values(c['to'])}"
                    for c in prompt_changes(conn, previous, experiment_id, prompts_seen)
                ]
                + [
                    f"bot {c['setting']} changed"
                    if c["setting"] == "system_prompt"
                    else f"bot {c['setting']} {_values(c['from'])} -> {_values(c['to'])}"
                    for c in bot_changes(conn, previous, experiment_id, bots_seen)
                ]
                + [
                    f"metric changed: {name}"
                    for name in metric_changes(conn, previous, experiment_id, metrics_seen)
                ]
            )
        points.append(point)
    # The extra oldest session only tells what changed at the first one shown.
    return points[1:] if len(points) > limit else points
