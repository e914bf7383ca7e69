"""Reading message_log.db for people: sessions, experiments, prompt histories, an
experiment's runs with their metric values, one run's conversation with its prompts and
bots, and the rows of an export, as JSON-safe builtins (the ``llmexp`` command and the HTML
report format them).
"""

from __future__ import annotations

import json
import sqlite3
import statistics
from datetime import datetime
from typing import Any

from .._util.lookup import find_experiment, nearest
from .._verdict.cost import cheapest_passing
from .._verdict.stats import DECIDED, RUN_STATUSES, experiment_summary, interval
from ..errors import ExperimentError
from .trends import SESSION_STATUS, metric_values

__all__ = [
    "experiment_detail",
    "experiments",
    "export_rows",
    "in_order",
    "prompt_history",
    "run_detail",
    "runs",
    "sessions",
]


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
        "SELECT e.id, e.name, e.session_id, s.started_at, "
        f"{SESSION_STATUS}, e.num_executions, "
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
                # Means over several variants together say nothing: each has its own.
                "variants": list(summary.get("variants") or {}),
            }
        )
    return found


def experiment_detail(
    conn: sqlite3.Connection, experiment_id: int, variant: str | None = None
) -> dict[str, Any]:
    """One experiment: per-metric statistics with their interval, values, gates, the runs that
    did not pass with their reasons, and the stored comparison with a baseline; with
    variants, each variant's statistics, cost and gate verdict side by side, or those of
    ``variant`` alone."""
    name, session_id, executions, gate_passed, stored, comparison, started, status = conn.execute(
        "SELECT e.name, e.session_id, e.num_executions, e.gate_passed, e.summary, "
        f"e.comparison, s.started_at, {SESSION_STATUS} FROM experiments e "
        "JOIN sessions s ON s.id = e.session_id WHERE e.id = ?",
        (experiment_id,),
    ).fetchone()
    summary = _summary(conn, experiment_id, stored)
    variants: dict[str, Any] = summary.get("variants") or {}
    if variant is not None:
        if variant not in variants:
            raise ExperimentError(
                f"experiment {name!r} of session {session_id[:12]} has no variant {variant!r}; "
                f"its variants: {', '.join(variants) or 'none (it ran without variants)'}"
            )
        summary = {**summary, **variants[variant]}
        summary["errors"] = _errors(conn, experiment_id, variant)
        stored_comparison = json.loads(comparison) if comparison else {}
        found = stored_comparison.get("variants", {}).get(variant)
        comparison = json.dumps(found) if found else None
    values, _ = metric_values(conn, experiment_id, variant)
    for metric, stats in summary["metrics"].items():
        low, high = interval(values.get(metric, []), stats["kind"])
        stats.update(
            median=statistics.median(values[metric]) if values.get(metric) else None,
            ci_low=low,
            ci_high=high,
            values=values.get(metric, []),
        )
    gates = [
        dict(zip(("gate", "source", "observed", "verdict", "detail", "variant"), row, strict=True))
        for row in conn.execute(
            "SELECT gate, source, observed, verdict, detail, variant FROM gate_results "
            "WHERE experiment_id = ? AND (? IS NULL OR variant = ?) ORDER BY id",
            (experiment_id, variant, variant),
        )
    ]
    cases = conn.execute(
        "SELECT count(DISTINCT coalesce(case_id, '')) FROM experiment_runs WHERE experiment_id = ?",
        (experiment_id,),
    ).fetchone()[0]
    # Executions an adaptive experiment did not need are its summary's, not failures.
    not_passed = [r for r in runs(conn, experiment_id, passed=False) if r["error_type"] != DECIDED]
    extra: dict[str, Any] = {}
    if variant is not None:
        not_passed = [r for r in not_passed if r["variant"] == variant]
        gate_passed = None if not gates else all(g["verdict"] == "passed" for g in gates)
        extra["variant"] = variant
    elif variants:
        extra["variants"] = _variant_verdicts(variants, gates)
        extra["cheapest"] = _cheapest(extra["variants"], bool(gates))
        # Each variant was compared with the same variant of its baseline.
        by_variant = json.loads(comparison).get("variants", {}) if comparison else {}
        extra["variant_comparisons"] = by_variant
        comparison = None
    return {
        **extra,
        "id": experiment_id,
        "name": name,
        "session_id": session_id,
        "started_at": started,
        "session_status": status,
        "num_executions": executions,
        "cases": cases,
        "partial": summary.get("partial"),
        "runs": summary["runs"],
        "errors": summary["errors"],
        "metrics": summary["metrics"],
        "gate_passed": gate_passed if gate_passed is None else bool(gate_passed),
        "gates": gates,
        "not_passed": not_passed,
        "comparison": json.loads(comparison) if comparison else None,
        **({"cost": summary["cost"]} if summary.get("cost") else {}),
        **({"adaptive": summary["adaptive"]} if summary.get("adaptive") else {}),
        "adaptive_note": summary.get("adaptive_note"),
    }


def _errors(conn: sqlite3.Connection, experiment_id: int, variant: str) -> dict[str, int]:
    return {
        str(kind): int(count)
        for kind, count in conn.execute(
            "SELECT coalesce(error_type, status), count(*) FROM experiment_runs "
            "WHERE experiment_id = ? AND variant = ? AND status IN ('error', 'crashed') "
            "GROUP BY 1 ORDER BY 2 DESC, 1",
            (experiment_id, variant),
        )
    }


def _variant_verdicts(
    variants: dict[str, Any], gates: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each variant's statistics and cost with its gate verdict (``None``: no gate)."""
    verdicts = {}
    for name, data in variants.items():
        own = [g["verdict"] for g in gates if g["variant"] == name]
        verdicts[name] = {**data, "gate_passed": all(v == "passed" for v in own) if own else None}
    return verdicts


def _cheapest(variants: dict[str, dict[str, Any]], gated: bool) -> dict[str, Any]:
    """The variant with the lowest cost per run among those whose gates all pass."""
    name, note = cheapest_passing(
        (
            (name, data["gate_passed"], (data.get("cost") or {}).get("per_run"))
            for name, data in variants.items()
        ),
        gated,
    )
    return {"variant": name, "note": note}


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


def case_variant_means(
    conn: sqlite3.Connection, experiment_id: int
) -> dict[str, dict[str, dict[str, tuple[float, int]]]]:
    """Per case, per variant, each metric's mean and count over the evaluated runs."""
    found: dict[str, dict[str, dict[str, tuple[float, int]]]] = {}
    for case, variant, metric, mean, n in conn.execute(
        "SELECT coalesce(r.case_id, ''), r.variant, m.name, avg(m.value), count(*) "
        "FROM experiment_runs r JOIN metrics m ON m.run_id = r.id WHERE r.experiment_id = ? "
        "AND r.variant IS NOT NULL AND r.status IN ('passed', 'failed') "
        "GROUP BY 1, 2, 3 ORDER BY 1, 3",
        (experiment_id,),
    ):
        found.setdefault(case, {}).setdefault(variant, {})[metric] = (float(mean), int(n))
    return found


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
    table_order = (
        "coalesce(r.variant, ''), coalesce(r.case_id, ''), r.execution_index, r.started_at"
    )
    chosen, args = "", [experiment_id]
    if limit is not None:
        chosen = (
            " AND r.id IN (SELECT r.id FROM experiment_runs r WHERE r.experiment_id = ?"
            f"{status} ORDER BY r.status = 'passed', {table_order} LIMIT ?)"
        )
        args += [experiment_id, limit]
    found = conn.execute(
        "SELECT id, case_id, execution_index, status, duration_s, error_type, "
        f"error_message, variant FROM experiment_runs r WHERE r.experiment_id = ?{status}{chosen} "
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
            "variant": variant,
        }
        for run_id, case, index, status, duration, error_type, message, variant in found
    ]


def in_order(values: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """``values`` by name in ``order``, then any others."""
    return {name: values[name] for name in order if name in values} | values


def _calls(conn: sqlite3.Connection, run_id: str) -> list[dict[str, Any]]:
    calls = []
    for row in conn.execute(
        "SELECT c.id, b.class_name, c.model_name, c.temperature, c.message_log, "
        "c.prompt_tokens, c.completion_tokens, c.latency_ms, c.retries, c.error_type, c.error, "
        "c.replayed_from, b.kind, c.api, c.stream, c.judge FROM message_log c "
        "LEFT JOIN bots b ON b.id = c.bot_id WHERE c.run_id = ? ORDER BY c.timestamp, c.rowid",
        (run_id,),
    ):
        call_id, bot, model, temperature, log, prompt_tokens, completion_tokens = row[:7]
        latency, retries, error_type, error, replayed_from, kind, api, stream, judge = row[7:]
        if kind == "client":
            bot = f"{bot} (client, {api or 'chat.completions'}{', streamed' if stream else ''})"
        if judge:
            bot = f"{bot}, judge"
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
                "judge": bool(judge),
            }
        )
    return calls


def _bot(row: tuple[Any, ...]) -> dict[str, Any]:
    """A bot row as the views show it; ``label`` says what made the calls: a bot's class, or
    the code's own client with the API it called."""
    params = {k: v for k, v in json.loads(row[5] or "{}").items() if k != "base_url"}
    label = row[0]
    if row[6] == "client":
        label = f"{row[0]} (client, {params.pop('api', 'chat.completions')})"
    return {
        "class_name": row[0],
        "label": label,
        "kind": row[6],
        "model": row[1],
        "temperature": row[2],
        "system_prompt": row[3],
        "response_schema": json.loads(row[4]) if row[4] else None,
        "params": params,
    }


def run_detail(conn: sqlite3.Connection, run_id: str) -> dict[str, Any]:
    """One run: its place, outcome, conversation (every LLM call), prompts with their
    versions, bot configurations and metric values."""
    row = conn.execute(
        "SELECT r.id, e.name, e.session_id, r.case_id, r.execution_index, r.status, r.worker, "
        "r.started_at, r.duration_s, r.error_type, r.error_message, r.replayed_from, "
        "r.variant, r.cost FROM experiment_runs r JOIN experiments e "
        "ON e.id = r.experiment_id WHERE r.id = ?",
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
        "variant",
        "cost",
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
        _bot(b)
        for b in conn.execute(
            "SELECT b.class_name, b.model_name, b.temperature, b.system_prompt, "
            "b.response_schema, b.params, b.kind FROM run_bots rb JOIN bots b ON b.id = rb.bot_id "
            "WHERE rb.run_id = ? ORDER BY b.id",
            (run_id,),
        )
    ]
    detail["calls"] = _calls(conn, run_id)
    # A rerun plugin's attempts of the same execution, this one included.
    detail["attempts"] = [
        dict(zip(("id", "attempt", "status", "error_type"), a, strict=True))
        for a in conn.execute(
            "SELECT o.id, o.attempt, o.status, o.error_type FROM experiment_runs r "
            "JOIN experiment_runs o ON o.experiment_id = r.experiment_id AND "
            "o.execution_index = r.execution_index AND "
            "coalesce(o.case_id, '') = coalesce(r.case_id, '') AND "
            "coalesce(o.variant, '') = coalesce(r.variant, '') WHERE r.id = ? "
            "ORDER BY o.attempt",
            (run_id,),
        )
    ]
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
