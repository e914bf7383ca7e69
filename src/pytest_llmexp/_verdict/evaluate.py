"""Gates evaluated on what the database holds: an experiment's runs, cases and metric values.

Only evaluated runs (``passed`` / ``failed``) give values; errored runs are the error
budget's business and never count as passes. Executions of one case are repeats of it.
"""

from __future__ import annotations

import json
import math
import sqlite3
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .gates import RUNS, Gate, compare, parse_gate
from .stats import EVALUATED, adaptive_confidence, experiment_variants

__all__ = [
    "ExperimentData",
    "GateResult",
    "applicable_gates",
    "applies",
    "evaluate_gate",
    "load_experiment",
    "percentile",
    "unstable_metrics",
]


@dataclass(slots=True)
class Run:
    run_id: str
    case_id: str | None
    execution_index: int
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    variant: str | None = None


@dataclass(slots=True)
class ExperimentData:
    """One experiment of one session, as stored."""

    id: int
    session_id: str
    name: str
    num_executions: int
    runs: list[Run]
    #: Metric name to kind (bool, int, float), over all its stored values.
    kinds: dict[str, str]
    #: Gates declared on the experiment in code, in order.
    code_gates: list[str]
    #: Metric name to what its @metric declares (gates, min, max, better, judge).
    specs: dict[str, dict[str, Any]]
    #: The variants that ran, in the order declared (empty: the experiment has none).
    variants: list[str] = field(default_factory=list)
    #: The one variant this data holds (see :meth:`of_variant`).
    variant: str | None = None
    #: Its executions stopped once its verdicts were settled (``--llm-adaptive``): a mean
    #: over the experiment is the mean of its cases' means, whatever each case ran.
    adaptive: bool = False
    _ordered: list[Run] | None = field(default=None, repr=False, compare=False)

    def of_variant(self, variant: str) -> ExperimentData:
        """The same experiment with only the runs of ``variant``."""
        return ExperimentData(
            self.id,
            self.session_id,
            self.name,
            self.num_executions,
            [r for r in self.runs if r.variant == variant],
            self.kinds,
            self.code_gates,
            self.specs,
            variant=variant,
            adaptive=self.adaptive,
        )

    def metric_names(self) -> set[str]:
        """The metrics its runs recorded (all of the experiment's when it holds them all)."""
        if self.variant is None:
            return set(self.kinds)
        return {name for run in self.runs for name in run.metrics}

    @property
    def evaluated(self) -> list[Run]:
        return [r for r in self.runs if r.status in EVALUATED]

    def cases(self, metric: str) -> dict[str | None, list[float]]:
        """The metric's values over evaluated runs, by case, in execution order."""
        if self._ordered is None:
            self._ordered = sorted(
                self.evaluated, key=lambda r: (r.case_id or "", r.execution_index)
            )
        by_case: dict[str | None, list[float]] = {}
        for run in self._ordered:
            if metric == RUNS:
                value: float | None = 1.0 if run.status == "passed" else 0.0
            else:
                value = run.metrics.get(metric)
            if value is not None:
                by_case.setdefault(run.case_id, []).append(value)
        return by_case

    def missing_executions(self) -> int:
        """Executions of the cases that ran that are not stored (a partial session: one test
        run from an IDE, ``-k``, ``-x``)."""
        seen: dict[tuple[str | None, str | None], set[int]] = {}
        for run in self.runs:
            seen.setdefault((run.variant, run.case_id), set()).add(run.execution_index)
        return sum(self.num_executions - len(indexes) for indexes in seen.values())

    def better(self, metric: str, gates: Iterable[Gate]) -> str:
        """Which way the metric improves: as its ``@metric(better=...)`` says, else as the
        first of the experiment's ``gates`` on it says (``>=`` up, ``<=`` down), else up."""
        declared = self.specs.get(metric, {}).get("better")
        if declared:
            return str(declared)
        for gate in gates:
            if gate.metric == metric and gate.op != "==":
                return "higher" if gate.higher_is_better else "lower"
        return "higher"


def load_experiment(conn: sqlite3.Connection, experiment_id: int) -> ExperimentData:
    """Read one experiment's runs and metric values."""
    session_id, name, num_executions = conn.execute(
        "SELECT session_id, name, num_executions FROM experiments WHERE id = ?", (experiment_id,)
    ).fetchone()
    runs: dict[str, Run] = {}
    code_gates: list[str] = []
    specs: dict[str, dict[str, Any]] = {}
    for run_id, case, index, status, variant in conn.execute(
        "SELECT id, case_id, execution_index, status, variant FROM experiment_runs "
        # An execution's earlier attempts (a rerun plugin's) are not evaluated: its last is.
        "WHERE experiment_id = ? AND status != 'rerun' ORDER BY execution_index, started_at",
        (experiment_id,),
    ):
        runs[run_id] = Run(run_id, case, int(index), status, variant=variant)
    # What the runs declared is the same in most runs: SQLite reads it, Python merges each
    # distinct declaration once (in the order first stored).
    for gates, metric_specs in conn.execute(
        "SELECT json_extract(run_data, '$.gates'), json_extract(run_data, '$.metric_specs') "
        "FROM experiment_runs WHERE experiment_id = ? GROUP BY 1, 2 ORDER BY min(rowid)",
        (experiment_id,),
    ):
        for text in json.loads(gates or "[]"):
            if text not in code_gates:
                code_gates.append(text)
        for metric, spec in json.loads(metric_specs or "{}").items():
            merged = specs.setdefault(metric, {})
            judge = merged.get("judge", False) or spec.get("judge", False)
            merged.update(spec, judge=judge)
    kinds: dict[str, str] = {}
    for run_id, metric, value, kind in conn.execute(
        "SELECT m.run_id, m.name, m.value, m.kind FROM experiment_runs r "
        "JOIN metrics m ON m.run_id = r.id WHERE r.experiment_id = ? AND r.status != 'rerun'",
        (experiment_id,),
    ):
        runs[run_id].metrics[metric] = float(value)
        kinds[metric] = kind if kinds.get(metric, kind) == kind else "float"
    return ExperimentData(
        experiment_id,
        str(session_id),
        str(name),
        int(num_executions),
        list(runs.values()),
        kinds,
        code_gates,
        specs,
        experiment_variants(conn, experiment_id),
        adaptive=adaptive_confidence(conn, experiment_id) is not None,
    )


def applicable_gates(data: ExperimentData, ini: Iterable[Gate], cli: Iterable[Gate]) -> list[Gate]:
    """The experiment's gates, later sources replacing earlier ones with the same metric and
    statistic: ``@metric`` defaults, then ``@experiment``, then the ini file, then the
    command line. An unqualified ini or command-line gate applies where its metric exists."""
    chosen: dict[tuple[str, str], Gate] = {}
    for metric, spec in data.specs.items():
        for text in spec.get("gates", []):
            gate = parse_gate(text, source="metric", where=f"@metric on {metric!r}", metric=metric)
            chosen[gate.key] = gate.for_experiment(data.name)
    for text in data.code_gates:
        gate = parse_gate(text, source="code", where=f"@experiment {data.name!r}")
        chosen[gate.key] = gate.for_experiment(data.name)
    for gates in (ini, cli):
        for gate in gates:
            if applies(gate, data):
                chosen[gate.key] = gate.for_experiment(data.name)
    return list(chosen.values())


def applies(gate: Gate, data: ExperimentData) -> bool:
    """Whether an ini or command-line gate is about this experiment: it names it, or names no
    experiment and a metric it recorded (a gate naming its experiment applies even to a
    metric it did not record: that is the gate's error to report)."""
    if gate.experiment not in (None, data.name):
        return False
    return gate.experiment is not None or gate.metric == RUNS or gate.metric in data.kinds


@dataclass(slots=True)
class GateResult:
    """A gate as evaluated: ``passed``, ``failed``, or ``error`` (it could not be evaluated)."""

    gate: Gate
    verdict: str
    observed: float | None = None
    detail: str = ""
    #: The variant it judged (``None``: the experiment has none).
    variant: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def as_json(self) -> dict[str, Any]:
        g = self.gate
        return {
            "gate": str(g),
            "source": g.source,
            "metric": g.metric,
            "statistic": g.statistic,
            "op": g.op,
            "threshold": g.threshold,
            "observed": self.observed,
            "verdict": self.verdict,
            "detail": self.detail,
            "variant": self.variant,
        }


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks (as
    numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


class _Unevaluable(Exception):
    pass


def _statistic(base: str, values: list[float]) -> float:
    if not values:
        raise _Unevaluable("no evaluated run recorded it")
    if base in ("mean", "pass_rate"):
        return statistics.fmean(values)
    if base == "median":
        return statistics.median(values)
    if base == "min":
        return min(values)
    if base == "max":
        return max(values)
    if base == "std":
        if len(values) < 2:
            raise _Unevaluable("std needs at least 2 evaluated runs")
        return statistics.stdev(values)
    return percentile(values, float(base[1:]))


def _pass_k(cases: dict[str | None, list[float]], k: int, every: bool) -> float:
    """pass^k (every one of k executions passes) or pass@k (at least one does), averaged
    over cases, each estimated without bias from its n executions with c passes."""
    scores = []
    for case, values in cases.items():
        n, c = len(values), int(sum(values))
        if n < k:
            raise _Unevaluable(
                f"it needs at least {k} evaluated executions per case; case "
                f"{case or '(the only one)'!r} has {n}"
            )
        if every:
            scores.append(math.comb(c, k) / math.comb(n, k))
        else:
            scores.append(1 - math.comb(n - c, k) / math.comb(n, k))
    return statistics.fmean(scores)


def _observe(gate: Gate, data: ExperimentData) -> tuple[float, str]:
    """The observed value of the gate's statistic, and which case decided it."""
    cases = data.cases(gate.metric)
    if not cases:
        raise _Unevaluable("no evaluated run recorded it")
    stat = gate.statistic
    boolean = gate.metric == RUNS or data.kinds.get(gate.metric) == "bool"
    if ("pass" in stat) and not boolean:
        raise _Unevaluable(
            f"{stat} needs a bool metric (or '{RUNS}'); {gate.metric!r} is "
            f"{data.kinds.get(gate.metric)}: use mean, median or a percentile"
        )
    if stat.startswith(("pass^", "pass@")):
        return _pass_k(cases, int(stat[5:]), every=stat[4] == "^"), ""
    if not stat.startswith("each_case."):
        if data.adaptive and stat in ("mean", "pass_rate"):
            return statistics.fmean(statistics.fmean(v) for v in cases.values()), ""
        return _statistic(stat, [v for values in cases.values() for v in values]), ""
    per_case = {case: _statistic(gate.base, values) for case, values in cases.items()}
    failing = [c for c, v in per_case.items() if not compare(v, gate.op, gate.threshold)]
    pick = failing or list(per_case)
    worst = (min if gate.higher_is_better else max)(pick, key=lambda c: per_case[c])
    return per_case[worst], f"worst case {worst or '(the only one)'!r}"


def evaluate_gate(gate: Gate, data: ExperimentData) -> GateResult:
    """Evaluate one gate on one experiment."""
    if gate.metric != RUNS and gate.metric not in data.kinds:
        known = ", ".join(sorted(data.kinds)) or "none"
        return GateResult(
            gate,
            "error",
            detail=f"experiment {data.name!r} recorded no metric {gate.metric!r} (it recorded: "
            f"{known})",
            variant=data.variant,
        )
    try:
        observed, which = _observe(gate, data)
    except _Unevaluable as exc:
        return GateResult(gate, "error", detail=f"cannot be evaluated: {exc}", variant=data.variant)
    verdict = "passed" if compare(observed, gate.op, gate.threshold) else "failed"
    return GateResult(gate, verdict, observed, which, variant=data.variant)


def unstable_metrics(data: ExperimentData, gates: list[Gate]) -> list[dict[str, Any]]:
    """Cases whose executions fall on both sides of a gate's threshold, and the spread of LLM
    judge metrics across executions of the same case."""
    found: list[dict[str, Any]] = []
    by_cases: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for gate in gates:
        if gate.base == "std" or (gate.metric != RUNS and gate.metric not in data.kinds):
            continue
        cases = {c: v for c, v in data.cases(gate.metric).items() if len(v) > 1}
        straddling = tuple(
            sorted(
                (
                    c
                    for c, values in cases.items()
                    if len({compare(v, gate.op, gate.threshold) for v in values}) == 2
                ),
                key=lambda c: c or "",
            )
        )
        if not straddling:
            continue
        key = (gate.metric, tuple(c or "" for c in straddling))
        entry = by_cases.get(key)
        if entry is None:
            entry = by_cases[key] = {
                "metric": gate.metric,
                "kind": "threshold",
                "gates": [],
                "cases": list(straddling),
                "of_cases": len(cases),
            }
            found.append(entry)
        entry["gates"].append(str(gate))
    for metric, spec in sorted(data.specs.items()):
        if not spec.get("judge"):
            continue
        spreads = [statistics.stdev(v) for v in data.cases(metric).values() if len(v) > 1]
        if spreads and max(spreads) > 0:
            found.append(
                {
                    "metric": metric,
                    "kind": "judge",
                    "spread": statistics.fmean(spreads),
                    "of_cases": len(spreads),
                }
            )
    return found
