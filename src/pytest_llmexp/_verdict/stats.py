"""Statistics of an experiment, computed from what the database holds."""

from __future__ import annotations

import json
import math
import sqlite3
from typing import Any

__all__ = [
    "DECIDED",
    "EVALUATED",
    "RUN_STATUSES",
    "adaptive_confidence",
    "adaptive_summary",
    "cost_summary",
    "experiment_summary",
    "experiment_variants",
    "interval",
    "interval_from",
    "metric_moments",
    "session_spend",
]

RUN_STATUSES = ("passed", "failed", "error", "skipped", "crashed", "rerun")
#: Run statuses whose metrics count in aggregates: the run was evaluated.
EVALUATED = ("passed", "failed")
#: The error type of an adaptive execution skipped because its case was decided.
DECIDED = "AdaptiveStop"


def experiment_summary(conn: sqlite3.Connection, experiment_id: int) -> dict[str, Any]:
    """Runs by status, errored runs by type, and per metric n, mean, sample std, min and max
    over the evaluated runs."""
    runs = dict.fromkeys(RUN_STATUSES, 0)
    for status, count in conn.execute(
        "SELECT status, count(*) FROM experiment_runs WHERE experiment_id = ? GROUP BY status",
        (experiment_id,),
    ):
        runs[status] = count
    errors = {
        str(kind): int(count)
        for kind, count in conn.execute(
            "SELECT coalesce(error_type, status), count(*) FROM experiment_runs "
            "WHERE experiment_id = ? AND status IN ('error', 'crashed') "
            "GROUP BY 1 ORDER BY 2 DESC, 1",
            (experiment_id,),
        )
    }
    metrics = metric_moments(conn, experiment_id)
    summary: dict[str, Any] = {"runs": runs, "errors": errors, "metrics": metrics}
    cost = cost_summary(conn, experiment_id)
    if cost["priced_runs"]:
        summary["cost"] = cost
    adaptive = adaptive_summary(conn, experiment_id)
    if adaptive is not None:
        summary["adaptive"] = adaptive
    variants = experiment_variants(conn, experiment_id)
    if variants:
        summary["variants"] = {}
        for variant in variants:
            counts = dict.fromkeys(RUN_STATUSES, 0)
            for status, count in conn.execute(
                "SELECT status, count(*) FROM experiment_runs WHERE experiment_id = ? AND "
                "variant = ? GROUP BY status",
                (experiment_id, variant),
            ):
                counts[status] = count
            entry: dict[str, Any] = {
                "runs": counts,
                "metrics": metric_moments(conn, experiment_id, variant),
            }
            cost = cost_summary(conn, experiment_id, variant)
            if cost["priced_runs"]:
                entry["cost"] = cost
            summary["variants"][variant] = entry
    return summary


def adaptive_summary(conn: sqlite3.Connection, experiment_id: int) -> dict[str, Any] | None:
    """An adaptive experiment's executions: how many ran and were not needed, the LLM calls
    that saved (at the calls per run of those that ran), and per case what ran and why it
    stopped; ``None`` for an experiment that is not adaptive."""
    confidence = adaptive_confidence(conn, experiment_id)
    if confidence is None:
        return None
    cases = []
    for variant, case, ran, stopped, reason in conn.execute(
        "SELECT variant, case_id, sum(status NOT IN ('skipped', 'rerun')), "
        "sum(error_type IS ?), max(CASE WHEN error_type IS ? THEN error_message END) "
        "FROM experiment_runs WHERE experiment_id = ? GROUP BY variant, case_id "
        "ORDER BY min(rowid)",
        (DECIDED, DECIDED, experiment_id),
    ):
        cases.append(
            {
                "variant": variant,
                "case": case,
                "executions": int(ran),
                "not_needed": int(stopped),
                "stopped": reason,
            }
        )
    ran = sum(c["executions"] for c in cases)
    not_needed = sum(c["not_needed"] for c in cases)
    (calls,) = conn.execute(
        "SELECT count(c.id) FROM message_log c JOIN experiment_runs r ON r.id = c.run_id "
        "WHERE r.experiment_id = ? AND r.status NOT IN ('skipped', 'rerun')",
        (experiment_id,),
    ).fetchone()
    return {
        "confidence": confidence,
        "executions": ran,
        "not_needed": not_needed,
        "calls_saved": round(not_needed * calls / ran) if ran else 0,
        "cases": cases,
    }


def adaptive_confidence(conn: sqlite3.Connection, experiment_id: int) -> float | None:
    """The confidence an adaptive experiment decided at; ``None`` for one that is not."""
    row = conn.execute(
        "SELECT json_extract(run_data, '$.adaptive.confidence') FROM experiment_runs "
        "WHERE experiment_id = ? AND json_extract(run_data, '$.adaptive') IS NOT NULL LIMIT 1",
        (experiment_id,),
    ).fetchone()
    return None if row is None else float(row[0])


def experiment_variants(conn: sqlite3.Connection, experiment_id: int) -> list[str]:
    """The experiment's variants in the order declared (those that ran), else as stored."""
    declared: list[str] = []
    for (text,) in conn.execute(
        "SELECT DISTINCT json_extract(run_data, '$.variants') FROM experiment_runs "
        "WHERE experiment_id = ? AND variant IS NOT NULL",
        (experiment_id,),
    ):
        for variant in json.loads(text or "[]"):
            if variant not in declared:
                declared.append(variant)
    ran = [
        str(v)
        for (v,) in conn.execute(
            "SELECT variant FROM experiment_runs WHERE experiment_id = ? AND variant IS NOT "
            "NULL GROUP BY variant ORDER BY min(rowid)",
            (experiment_id,),
        )
    ]
    return [v for v in declared if v in ran] + [v for v in ran if v not in declared]


def cost_summary(
    conn: sqlite3.Connection, experiment_id: int, variant: str | None = None
) -> dict[str, Any]:
    """What the experiment's runs (of one variant) cost: in all, per evaluated run, the
    judges' calls apart, and how many evaluated runs have no known cost ("no price")."""
    statuses = ", ".join("?" * len(EVALUATED))
    where = "experiment_id = ? AND status != 'rerun'" + (" AND variant = ?" if variant else "")
    params: tuple[Any, ...] = (experiment_id, variant) if variant else (experiment_id,)
    priced, total, per_run, judges, unpriced = conn.execute(
        # A skipped run (the spend guard, an adaptive stop) cost nothing: it is not a run
        # that was priced.
        "SELECT count(CASE WHEN status != 'skipped' THEN cost END), sum(cost), "
        f"avg(CASE WHEN status IN ({statuses}) THEN cost END), "
        f"sum(judge_cost), sum(status IN ({statuses}) AND cost IS NULL) "
        f"FROM experiment_runs WHERE {where}",
        (*EVALUATED, *EVALUATED, *params),
    ).fetchone()
    return {
        "priced_runs": int(priced or 0),
        "total": total,
        "per_run": per_run,
        "judges": judges,
        "unpriced_runs": int(unpriced or 0),
    }


def metric_moments(
    conn: sqlite3.Connection, experiment_id: int, variant: str | None = None
) -> dict[str, dict[str, Any]]:
    """Per metric over the experiment's evaluated runs (of one variant): kind, n, mean,
    sample std, min and max, by name, in one pass of SQL over the values: an experiment's
    values never reach Python. The sums are taken around one of each metric's own values, so
    that the variance keeps its precision when the mean is large next to the spread."""
    statuses = ", ".join("?" * len(EVALUATED))
    evaluated = (
        f"FROM experiment_runs r JOIN metrics m ON m.run_id = r.id "
        f"WHERE r.experiment_id = ? AND r.status IN ({statuses})"
        + (" AND r.variant = ?" if variant else "")
    )
    params = (experiment_id, *EVALUATED, *((variant,) if variant else ()))
    shifts: dict[str, float] = {}
    for name, value in conn.execute(f"SELECT m.name, m.value {evaluated} LIMIT 100", params):
        shifts.setdefault(name, value)
    cases = " ".join("WHEN ? THEN ?" for _ in shifts)
    shift = f"(CASE m.name {cases} ELSE 0.0 END)" if shifts else "0.0"
    shift_params = [x for pair in shifts.items() for x in pair]
    moments = {}
    for name, kind, n, total, squares, low, high in conn.execute(
        f"SELECT name, max(kind), count(*), sum(d), sum(d * d), min(value), max(value) FROM "
        f"(SELECT m.name, m.kind, m.value, m.value - {shift} AS d {evaluated}) "
        "GROUP BY name ORDER BY name",
        (*shift_params, *params),
    ):
        centre = shifts.get(name, 0.0)
        sum_squares = max(squares - total * total / n, 0.0)
        moments[name] = {
            "kind": kind,
            "n": n,
            "mean": centre + total / n,
            "std": math.sqrt(sum_squares / (n - 1)) if n > 1 else None,
            "min": low,
            "max": high,
        }
    return moments


def session_spend(conn: sqlite3.Connection, session_id: str) -> tuple[int, int, int]:
    """A session's LLM calls in runs that reached the endpoint (replayed calls cost nothing),
    their tokens (prompt + completion), and the runs the spend guard skipped."""
    calls, tokens = conn.execute(
        "SELECT count(c.id), coalesce(sum(c.prompt_tokens), 0) + "
        "coalesce(sum(c.completion_tokens), 0) FROM message_log c "
        "JOIN experiment_runs r ON r.id = c.run_id "
        "JOIN experiments e ON e.id = r.experiment_id "
        "WHERE e.session_id = ? AND c.replayed_from IS NULL",
        (session_id,),
    ).fetchone()
    skipped = conn.execute(
        "SELECT count(*) FROM experiment_runs r JOIN experiments e ON e.id = r.experiment_id "
        "WHERE e.session_id = ? AND r.error_type = 'SpendLimit'",
        (session_id,),
    ).fetchone()[0]
    return int(calls), int(tokens), int(skipped)


# Student's t at 97.5% for 1..30 degrees of freedom: a 95% two-sided interval of a mean.
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def interval(values: list[float], kind: str = "float") -> tuple[float | None, float | None]:
    """The 95% interval of the mean of ``values``: Wilson's score interval for a bool metric
    (a proportion, kept within [0, 1]), else Student's t; None with fewer than two values."""
    n = len(values)
    if n < 2:
        return None, None
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return interval_from(n, mean, std, kind)


def interval_from(
    n: int, mean: float, std: float | None, kind: str = "float"
) -> tuple[float | None, float | None]:
    """:func:`interval` from a sample's size, mean and standard deviation."""
    if n < 2 or std is None:
        return None, None
    if kind == "bool":
        z = 1.959964
        p = mean
        center = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        # Rounded: at p = 0 or 1 the bound is 0 or 1 exactly, not 1e-17 away from it.
        return max(0.0, round(center - half, 12)), min(1.0, round(center + half, 12))
    df = n - 1
    if df <= len(_T975):
        t = _T975[df - 1]
    else:  # Cornish-Fisher's expansion: within 0.0005 of t beyond 30 degrees of freedom
        z = 1.959964
        t = z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
    half = t * std / math.sqrt(n)
    return mean - half, mean + half
