"""The session's verdict: every experiment's gates, its comparison with a baseline, unstable
metrics, and which run failures a passing pass-rate gate tolerates."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ExperimentError
from .evaluate import (
    ExperimentData,
    GateResult,
    applicable_gates,
    applies,
    evaluate_gate,
    load_experiment,
    unstable_metrics,
)
from .gates import RUNS, Gate

if TYPE_CHECKING:
    from .._store.store import Store

__all__ = [
    "ExperimentVerdict",
    "SessionVerdict",
    "check_compare_target",
    "judge_session",
    "save_verdict",
]


@dataclass
class ExperimentVerdict:
    """Stored as ``experiments.gate_passed``, ``gate_results`` and ``experiments.comparison``."""

    name: str
    experiment_id: int
    num_executions: int = 0
    cases: int = 0
    gates: list[GateResult] = field(default_factory=list)
    #: ``None``: not evaluated (no gates, a partial or interrupted session).
    gate_passed: bool | None = None
    #: Why the gates were not evaluated.
    not_evaluated: str | None = None
    #: Runs that failed or errored, and whether a passing gate on runs tolerates them.
    failing_runs: int = 0
    tolerated: bool = False
    comparison: dict[str, Any] | None = None
    #: Why there is no comparison, when one was asked for.
    no_comparison: str | None = None
    unstable: list[dict[str, Any]] = field(default_factory=list)

    @property
    def regressed(self) -> list[str]:
        metrics = (self.comparison or {}).get("metrics", [])
        return [m["metric"] for m in metrics if m["verdict"] == "regressed"]

    def as_json(self) -> dict[str, Any]:
        return {
            "num_executions": self.num_executions,
            "cases": self.cases,
            "gates": [g.as_json() for g in self.gates],
            "gate_passed": self.gate_passed,
            "gates_not_evaluated": self.not_evaluated,
            "failing_runs": self.failing_runs,
            "failures_tolerated": self.tolerated,
            "comparison": self.comparison,
            "no_comparison": self.no_comparison,
            "unstable": self.unstable,
        }


@dataclass
class SessionVerdict:
    experiments: dict[str, ExperimentVerdict] = field(default_factory=dict)
    #: Gates that apply to nothing that ran (from the command line: an error).
    unmatched: list[str] = field(default_factory=list)
    #: Gates from the ini file that apply to nothing that ran (a note).
    unused: list[str] = field(default_factory=list)
    fail_on_regression: bool = False

    @property
    def gates_failed(self) -> bool:
        return bool(self.unmatched) or any(
            v.gate_passed is False for v in self.experiments.values()
        )

    @property
    def regressions(self) -> list[str]:
        return [f"{n}.{m}" for n, v in self.experiments.items() for m in v.regressed]

    @property
    def failed(self) -> bool:
        return self.gates_failed or (self.fail_on_regression and bool(self.regressions))

    def tolerates_failures(self) -> bool:
        """Whether every experiment with failed or errored runs tolerates them."""
        return all(v.tolerated for v in self.experiments.values() if v.failing_runs)


def _judge_experiment(
    data: ExperimentData, gates: list[Gate], not_evaluable: str | None
) -> ExperimentVerdict:
    verdict = ExperimentVerdict(
        data.name, data.id, data.num_executions, len({r.case_id for r in data.runs})
    )
    verdict.failing_runs = sum(r.status in ("failed", "error", "crashed") for r in data.runs)
    verdict.unstable = unstable_metrics(data, gates)
    missing = data.missing_executions()
    if not_evaluable is None and missing:
        not_evaluable = (
            f"{missing} execution(s) of the cases that ran are missing (a partial session, "
            "e.g. one test from an IDE, -k or -x)"
        )
    if not gates:
        return verdict
    if not_evaluable is not None:
        verdict.not_evaluated = not_evaluable
        return verdict
    verdict.gates = [evaluate_gate(gate, data) for gate in gates]
    verdict.gate_passed = all(result.passed for result in verdict.gates)
    verdict.tolerated = verdict.gate_passed and any(
        result.gate.metric == RUNS for result in verdict.gates
    )
    return verdict


def judge_session(
    conn: sqlite3.Connection,
    session_id: str,
    *,
    ini_gates: tuple[Gate, ...],
    cli_gates: tuple[Gate, ...],
    compare: str | None,
    fail_on_regression: bool,
    not_evaluable: str | None,
) -> SessionVerdict:
    """Judge every experiment of the session from what the database holds.

    ``not_evaluable`` says why no gate may pass (an interrupted session, the error budget
    exceeded); ``compare`` is ``"last"`` or a session id (prefix).
    """
    from .._util.lookup import resolve_session
    from .compare import compare_experiments, find_baseline

    verdict = SessionVerdict(fail_on_regression=fail_on_regression)
    experiments = [
        load_experiment(conn, int(row[0]))
        for row in conn.execute(
            "SELECT id FROM experiments WHERE session_id = ? ORDER BY id", (session_id,)
        )
    ]
    ran = ", ".join(d.name for d in experiments) or "none"
    for gates, into in ((cli_gates, verdict.unmatched), (ini_gates, verdict.unused)):
        for gate in gates:
            if not any(applies(gate, data) for data in experiments):
                into.append(
                    f"gate {gate.text!r} ({gate.source}) applies to nothing that ran: no "
                    f"experiment{' ' + repr(gate.experiment) if gate.experiment else ''} of this "
                    f"session recorded {gate.metric!r} (experiments that ran: {ran})"
                )
    baseline_session = None
    if compare not in (None, "last"):
        baseline_session = resolve_session(conn, compare)
    for data in experiments:
        applicable = applicable_gates(data, ini_gates, cli_gates)
        result = _judge_experiment(data, applicable, not_evaluable)
        if compare is not None:
            baseline = find_baseline(conn, data.name, session_id, baseline_session)
            if baseline is None:
                result.no_comparison = (
                    f"session {baseline_session[:12]} has no experiment {data.name!r}"
                    if baseline_session
                    else f"no earlier complete session of {data.name!r} in the database"
                )
            else:
                result.comparison = compare_experiments(conn, baseline, data, applicable)
        verdict.experiments[data.name] = result
    return verdict


def check_compare_target(conn: sqlite3.Connection, compare: str | None) -> str | None:
    """An error message if ``--llm-compare SESSION_ID`` names no stored session."""
    from .._util.lookup import resolve_session

    if compare in (None, "last"):
        return None
    try:
        resolve_session(conn, compare)
    except ExperimentError as exc:
        return str(exc)
    return None


_GATE_COLUMNS = ("gate", "source", "metric", "statistic", "op", "threshold", "observed")


def save_verdict(store: Store, verdict: SessionVerdict) -> None:
    """Store each experiment's gate results, gate verdict and comparison."""
    with store.transaction() as conn:
        for experiment in verdict.experiments.values():
            conn.execute(
                "DELETE FROM gate_results WHERE experiment_id = ?", (experiment.experiment_id,)
            )
            conn.executemany(
                "INSERT INTO gate_results (experiment_id, gate, source, metric, statistic, op, "
                "threshold, observed, verdict, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        experiment.experiment_id,
                        *(g.as_json()[k] for k in _GATE_COLUMNS),
                        g.verdict,
                        g.detail or None,
                    )
                    for g in experiment.gates
                ],
            )
            conn.execute(
                "UPDATE experiments SET gate_passed = ?, comparison = ? WHERE id = ?",
                (
                    None if experiment.gate_passed is None else int(experiment.gate_passed),
                    None if experiment.comparison is None else json.dumps(experiment.comparison),
                    experiment.experiment_id,
                ),
            )
