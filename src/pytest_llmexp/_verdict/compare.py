"""An experiment compared with a baseline session: per metric the difference of means with a
bootstrap confidence interval, and what changed between the two (prompts, bot settings,
metric code)."""

from __future__ import annotations

import difflib
import json
import math
import random
import sqlite3
import statistics
from collections.abc import Callable
from typing import Any

from .evaluate import ExperimentData, load_experiment, percentile
from .gates import Gate
from .stats import EVALUATED

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "bootstrap_difference",
    "compare_experiments",
    "compare_variants",
    "find_baseline",
    "metric_changes",
    "unified_diff",
    "used",
]

BOOTSTRAP_RESAMPLES = 2000
#: Above this many units (runs or cases, both sides together), the interval is the normal
#: approximation of the bootstrap's.
NORMAL_ABOVE = 1000
#: Fixed, so that the same two sessions always give the same interval.
BOOTSTRAP_SEED = 0
_BOT_FIELDS = ("class_name", "model_name", "temperature", "system_prompt", "response_schema")


def find_baseline(
    conn: sqlite3.Connection, name: str, session_id: str, wanted: str | None
) -> int | None:
    """The experiment ``name`` of the baseline session: ``wanted`` if given (a resolved
    session id), else the last complete session before this one that ran all of its
    executions and evaluated some."""
    evaluated = ", ".join(f"'{s}'" for s in EVALUATED)
    if wanted is not None:
        row = conn.execute(
            "SELECT id FROM experiments WHERE session_id = ? AND name = ?", (wanted, name)
        ).fetchone()
        return None if row is None else int(row[0])
    # Not a partial session (one execution from an IDE, -k, a lower --llm-num-executions):
    # e.partial says so; the count of executions per case covers rows stored before it.
    row = conn.execute(
        f"""
        SELECT e.id FROM experiments e JOIN sessions s ON s.id = e.session_id
        JOIN experiment_runs r ON r.experiment_id = e.id
        WHERE e.name = ? AND s.status = 'complete' AND s.id != ? AND e.partial = 0
          AND s.started_at <= (SELECT started_at FROM sessions WHERE id = ?)
        GROUP BY e.id
        HAVING sum(r.status IN ({evaluated})) > 0
           AND count(DISTINCT coalesce(r.variant, '') || '|' || coalesce(r.case_id, '') || ':'
                     || r.execution_index)
               = e.num_executions
                 * count(DISTINCT coalesce(r.variant, '') || '|' || coalesce(r.case_id, ''))
        ORDER BY max(s.started_at) DESC LIMIT 1
        """,
        (name, session_id, session_id),
    ).fetchone()
    return None if row is None else int(row[0])


def bootstrap_difference(
    baseline: list[float],
    current: list[float],
    *,
    paired: bool = False,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float, float]:
    """The difference of means (current - baseline) and its 95% percentile-bootstrap interval.

    ``paired``: the lists are per-case values of the same cases in the same order; cases are
    resampled together. Otherwise each side is resampled on its own.
    """
    diff = statistics.fmean(current) - statistics.fmean(baseline)
    if len(baseline) + len(current) > NORMAL_ABOVE:
        # Resampling costs resamples x n; with this many units the bootstrap distribution
        # of a difference of means is the normal one it converges to, which costs nothing.
        half = 1.959964 * _standard_error(baseline, current, paired=paired)
        return diff, diff - half, diff + half
    rng = random.Random(seed)
    diffs = []
    if paired:
        deltas = [c - b for b, c in zip(baseline, current, strict=True)]
        for _ in range(resamples):
            diffs.append(statistics.fmean(rng.choices(deltas, k=len(deltas))))
    else:
        for _ in range(resamples):
            cur = statistics.fmean(rng.choices(current, k=len(current)))
            base = statistics.fmean(rng.choices(baseline, k=len(baseline)))
            diffs.append(cur - base)
    return diff, percentile(diffs, 2.5), percentile(diffs, 97.5)


def _standard_error(baseline: list[float], current: list[float], *, paired: bool) -> float:
    """The standard error of the difference of means, with the plug-in (ddof 0) variances
    that the bootstrap resamples from."""
    if paired:
        deltas = [c - b for b, c in zip(baseline, current, strict=True)]
        return math.sqrt(_pvariance(deltas) / len(deltas))
    return math.sqrt(_pvariance(baseline) / len(baseline) + _pvariance(current) / len(current))


def _pvariance(values: list[float]) -> float:
    mean = math.fsum(values) / len(values)
    return math.fsum((v - mean) ** 2 for v in values) / len(values)


def _units(
    base: ExperimentData, cur: ExperimentData, metric: str
) -> tuple[str, list[float], list[float], bool]:
    """What the bootstrap resamples: case means when both sides have several cases (paired
    when they are the same cases), else runs."""
    base_cases, cur_cases = base.cases(metric), cur.cases(metric)
    if len(base_cases) > 1 and len(cur_cases) > 1:
        if set(base_cases) == set(cur_cases):
            order = sorted(base_cases, key=lambda c: c or "")
            return (
                "cases (paired)",
                [statistics.fmean(base_cases[c]) for c in order],
                [statistics.fmean(cur_cases[c]) for c in order],
                True,
            )
        return (
            "cases",
            [statistics.fmean(v) for v in base_cases.values()],
            [statistics.fmean(v) for v in cur_cases.values()],
            False,
        )
    flat = [v for values in base_cases.values() for v in values]
    return "runs", flat, [v for values in cur_cases.values() for v in values], False


def _compare_metric(
    base: ExperimentData, cur: ExperimentData, metric: str, gates: list[Gate]
) -> dict[str, Any]:
    unit, before, after, paired = _units(base, cur, metric)
    result: dict[str, Any] = {
        "metric": metric,
        "better": cur.better(metric, gates),
        "unit": unit,
        "n_baseline": len(before),
        "n_current": len(after),
        "baseline_mean": statistics.fmean(before) if before else None,
        "current_mean": statistics.fmean(after) if after else None,
        "diff": None,
        "ci_low": None,
        "ci_high": None,
    }
    if len(before) < 2 or len(after) < 2:
        result["verdict"] = "not enough data"
        return result
    diff, low, high = bootstrap_difference(before, after, paired=paired)
    result.update(diff=diff, ci_low=low, ci_high=high)
    if low > 0 or high < 0:
        up = diff > 0
        result["verdict"] = "improved" if up == (result["better"] == "higher") else "regressed"
    else:
        result["verdict"] = "no clear change"
    return result


def unified_diff(before: str, after: str, from_label: str, to_label: str) -> str:
    """A unified diff of two texts, one line per line, ending with a newline."""
    lines = difflib.unified_diff(
        before.splitlines(), after.splitlines(), from_label, to_label, lineterm=""
    )
    return "".join(line + "\n" for line in lines)


def used(conn: sqlite3.Connection, experiment_id: int) -> dict[str, Any]:
    """The prompt versions and bot settings an experiment's runs used, as stored with its
    summary when its session ends: a trend over many sessions then reads no run."""
    return {
        "prompts": _read_prompts(conn, experiment_id),
        "bots": {k: sorted(v) for k, v in _read_bot_values(conn, experiment_id).items()},
        "metrics": {k: sorted(v) for k, v in _read_metric_codes(conn, experiment_id).items()},
    }


def _read_metric_codes(conn: sqlite3.Connection, experiment_id: int) -> dict[str, set[str]]:
    """Per metric: the versions of its code the runs recorded with."""
    rows = conn.execute(
        "SELECT DISTINCT s.key, json_extract(s.value, '$.code') FROM experiment_runs r, "
        "json_each(r.run_data, '$.metric_specs') s WHERE r.experiment_id = ?",
        (experiment_id,),
    )
    found: dict[str, set[str]] = {}
    for name, code in rows:
        if code is not None:
            found.setdefault(str(name), set()).add(str(code))
    return found


def _metric_codes(conn: sqlite3.Connection, experiment_id: int) -> dict[str, set[str]]:
    stored = _stored_use(conn, experiment_id)
    if stored is not None and "metrics" in stored:
        return {k: set(v) for k, v in stored["metrics"].items()}
    return _read_metric_codes(conn, experiment_id)


def metric_changes(
    conn: sqlite3.Connection, base_id: int, cur_id: int, seen: dict[int, Any] | None = None
) -> list[str]:
    """The metrics whose code differs between two experiments (both recorded a version):
    a change in the ruler, not in what it measures (``seen``: as for :func:`prompt_changes`)."""
    before, after = _both_sides(conn, base_id, cur_id, seen, _metric_codes)
    return sorted(
        name for name in set(before) & set(after) if before[name] and before[name] != after[name]
    )


def _both_sides(
    conn: sqlite3.Connection,
    base_id: int,
    cur_id: int,
    seen: dict[int, Any] | None,
    read: Callable[[sqlite3.Connection, int], Any],
) -> tuple[Any, Any]:
    """What ``read`` gives of both experiments, each read once into ``seen`` when given."""
    seen = {} if seen is None else seen
    for eid in (base_id, cur_id):
        if eid not in seen:
            seen[eid] = read(conn, eid)
    return seen[base_id], seen[cur_id]


def _stored_use(conn: sqlite3.Connection, experiment_id: int) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT json_extract(summary, '$.used') FROM experiments WHERE id = ?", (experiment_id,)
    ).fetchone()
    return json.loads(row[0]) if row and row[0] else None


def _prompts(conn: sqlite3.Connection, experiment_id: int) -> dict[str, list[tuple[str, str]]]:
    stored = _stored_use(conn, experiment_id)
    if stored is not None:
        return {k: [(h, t) for h, t in v] for k, v in stored["prompts"].items()}
    return _read_prompts(conn, experiment_id)


def _bot_values(conn: sqlite3.Connection, experiment_id: int) -> dict[str, set[str]]:
    stored = _stored_use(conn, experiment_id)
    if stored is not None:
        return {k: set(v) for k, v in stored["bots"].items()}
    return _read_bot_values(conn, experiment_id)


def _read_prompts(conn: sqlite3.Connection, experiment_id: int) -> dict[str, list[tuple[str, str]]]:
    """Per prompt function: (hash, template) versions used, the most used first."""
    rows = conn.execute(
        """
        SELECT p.module || '.' || p.function_name, p.hash, p.template, count(*) AS uses
        FROM run_prompts rp JOIN prompts p ON p.id = rp.prompt_id
        JOIN experiment_runs r ON r.id = rp.run_id
        WHERE r.experiment_id = ? GROUP BY p.id ORDER BY uses DESC, p.id DESC
        """,
        (experiment_id,),
    )
    found: dict[str, list[tuple[str, str]]] = {}
    for name, digest, template, _ in rows:
        found.setdefault(str(name), []).append((str(digest), str(template)))
    return found


def prompt_changes(
    conn: sqlite3.Connection, base_id: int, cur_id: int, seen: dict[int, Any] | None = None
) -> list[dict[str, Any]]:
    """What changed in the prompts between two experiments; ``seen`` keeps what was read of
    each experiment, for a caller that walks a series of them."""
    before, after = _both_sides(conn, base_id, cur_id, seen, _prompts)
    changes = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name, []), after.get(name, [])
        if {h for h, _ in old} == {h for h, _ in new}:
            continue
        short = name.rsplit(".", 1)[-1]
        change: dict[str, Any] = {
            "prompt": short,
            "module": name.rsplit(".", 1)[0],
            "from": [h[:8] for h, _ in old],
            "to": [h[:8] for h, _ in new],
        }
        if old and new:
            change["diff"] = unified_diff(
                old[0][1],
                new[0][1],
                f"{short} {old[0][0][:8]} (baseline)",
                f"{short} {new[0][0][:8]} (current)",
            )
        changes.append(change)
    return changes


def _read_bot_values(conn: sqlite3.Connection, experiment_id: int) -> dict[str, set[str]]:
    rows = conn.execute(
        f"""
        SELECT DISTINCT {", ".join("b." + f for f in _BOT_FIELDS)}, b.params
        FROM run_bots rb JOIN bots b ON b.id = rb.bot_id
        JOIN experiment_runs r ON r.id = rb.run_id WHERE r.experiment_id = ?
        """,
        (experiment_id,),
    )
    values: dict[str, set[str]] = {}
    for row in rows:
        params = json.loads(row[-1] or "{}")
        params.pop("model_sha256", None)
        fields = dict(zip(_BOT_FIELDS, row[:-1], strict=True))
        for key, value in {**fields, **{f"params.{k}": v for k, v in params.items()}}.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            values.setdefault(key, set()).add(text)
    return values


def bot_changes(
    conn: sqlite3.Connection, base_id: int, cur_id: int, seen: dict[int, Any] | None = None
) -> list[dict[str, Any]]:
    """What changed in the bots' settings between two experiments (``seen``: as for
    :func:`prompt_changes`)."""
    before, after = _both_sides(conn, base_id, cur_id, seen, _bot_values)
    changes = []
    for key in sorted(set(before) | set(after)):
        # Values both sides share (another bot's, unchanged) are left out.
        was, now = before.get(key, set()), after.get(key, set())
        old, new = sorted(was - now), sorted(now - was)
        if not old and not new:
            continue
        change: dict[str, Any] = {"setting": key, "from": old, "to": new}
        if key == "system_prompt" and len(old) == 1 and len(new) == 1:
            change["diff"] = unified_diff(
                old[0], new[0], "system prompt (baseline)", "system prompt (current)"
            )
        changes.append(change)
    return changes


def compare_variants(
    reference: ExperimentData, other: ExperimentData, gates: list[Gate]
) -> list[dict[str, Any]]:
    """Each metric of two variants of one session compared, ``other`` minus ``reference``:
    paired over cases when both ran the same several cases, else over runs."""
    metrics = sorted(set(reference.metric_names()) & set(other.metric_names()))
    return [_compare_metric(reference, other, m, gates) for m in metrics]


def compare_experiments(
    conn: sqlite3.Connection,
    baseline_id: int,
    current: ExperimentData,
    gates: list[Gate],
    variant: str | None = None,
) -> dict[str, Any]:
    """The comparison of ``current`` with the stored experiment ``baseline_id`` (its runs of
    the same ``variant``, if given); ``gates`` (the current experiment's) tell which way each
    metric improves."""
    base = load_experiment(conn, baseline_id)
    if variant is not None:
        base = base.of_variant(variant)
    started, status, partial = conn.execute(
        "SELECT s.started_at, s.status, e.partial FROM sessions s JOIN experiments e "
        "ON e.session_id = s.id WHERE e.id = ?",
        (baseline_id,),
    ).fetchone()
    if partial:
        status += ", partial"
    metrics = sorted(set(base.metric_names()) & set(current.metric_names()))
    changed = metric_changes(conn, baseline_id, current.id)
    compared = [_compare_metric(base, current, m, gates) for m in metrics]
    for entry in compared:
        entry["metric_changed"] = entry["metric"] in changed
    sides = (("the baseline", base), ("this session", current))
    adaptive = [side for side, data in sides if data.adaptive]
    return {
        "adaptive": (
            f"{' and '.join(adaptive)} stopped cases once their verdicts were settled "
            "(adaptive): compared on the executions that ran"
            if adaptive
            else None
        ),
        "baseline_session": base.session_id,
        "baseline_started_at": started,
        "baseline_status": status,
        "metrics": compared,
        "metric_changes": changed,
        "only_in_baseline": sorted(set(base.metric_names()) - set(current.metric_names())),
        "only_in_current": sorted(set(current.metric_names()) - set(base.metric_names())),
        "prompts": prompt_changes(conn, baseline_id, current.id),
        "bots": bot_changes(conn, baseline_id, current.id),
    }
