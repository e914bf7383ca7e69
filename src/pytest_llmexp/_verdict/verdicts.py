"""The session's verdict: every experiment's gates, its comparison with a baseline, unstable
metrics, and which run failures a passing pass-rate gate tolerates."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ExperimentError
from .cost import cheapest_passing
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
    #: The variant this verdict is of; an experiment with variants has one verdict each.
    variant: str | None = None
    variants: list[ExperimentVerdict] = field(default_factory=list)
    #: Whether its gates decide the exit status (``--llm-gate-variant`` names others).
    gating: bool = True
    #: A variant compared with the first: per metric, as a baseline comparison's are.
    versus_first: list[dict[str, Any]] | None = None
    #: What its runs cost (see :func:`.stats.cost_summary`), if any has a price.
    cost: dict[str, Any] | None = None
    #: The cheapest variant whose gates all pass, and what the summary says of it.
    cheapest: str | None = None
    cheapest_note: str | None = None
    #: Adaptive, yet no execution could be skipped: why (a gate that cannot be decided early).
    adaptive_note: str | None = None

    @property
    def regressed(self) -> list[str]:
        metrics = (self.comparison or {}).get("metrics", [])
        own = [m["metric"] for m in metrics if m["verdict"] == "regressed"]
        return own + [
            f"{name} [{v.variant}]" for v in self.variants if v.gating for name in v.regressed
        ]

    def as_json(self) -> dict[str, Any]:
        data = self._as_json()
        if self.variants:
            data["variants"] = {v.variant: v._as_json() for v in self.variants}
            data["cheapest_passing_variant"] = self.cheapest
            data["cheapest_note"] = self.cheapest_note
        return data

    def _as_json(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "gating": self.gating,
            "versus_first": self.versus_first,
            "cost": self.cost,
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
            "adaptive_note": self.adaptive_note,
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
    verdict.adaptive_note = _adaptive_note(data, gates)
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


def _adaptive_note(data: ExperimentData, gates: list[Gate]) -> str | None:
    """Why an adaptive experiment runs every execution, if it must."""
    if not data.adaptive:
        return None
    if not gates:
        return "every execution runs: it has no gate to decide"
    from .adaptive import unsupported

    for gate in gates:
        why = unsupported(gate, data.kinds.get(gate.metric), data.specs.get(gate.metric, {}))
        if why is not None:
            return f"every execution runs: {why}"
    return None


def _judge_variants(
    conn: sqlite3.Connection,
    data: ExperimentData,
    gates: list[Gate],
    not_evaluable: str | None,
    gate_variants: tuple[str, ...],
) -> ExperimentVerdict:
    """An experiment with variants: each judged on its own runs, compared with the first,
    and the whole passing when every variant that gates passes."""
    from .compare import compare_variants
    from .stats import cost_summary

    verdict = ExperimentVerdict(
        data.name, data.id, data.num_executions, len({r.case_id for r in data.runs})
    )
    verdict.failing_runs = sum(r.status in ("failed", "error", "crashed") for r in data.runs)
    verdict.adaptive_note = _adaptive_note(data, gates)
    reference: ExperimentData | None = None
    for variant in data.variants:
        part = data.of_variant(variant)
        judged = _judge_experiment(part, gates, not_evaluable)
        judged.variant = variant
        judged.gating = not gate_variants or variant in gate_variants
        cost = cost_summary(conn, data.id, variant)
        judged.cost = cost if cost["priced_runs"] or cost["unpriced_runs"] else None
        if reference is None:
            reference = part
        else:
            judged.versus_first = compare_variants(reference, part, gates)
        for entry in judged.unstable:
            entry["variant"] = variant
        verdict.variants.append(judged)
        verdict.gates += judged.gates
        verdict.unstable += judged.unstable
    gating = [v for v in verdict.variants if v.gating]
    verdict.not_evaluated = next((v.not_evaluated for v in gating if v.not_evaluated), None)
    if any(v.gate_passed is False for v in gating):
        verdict.gate_passed = False
    elif gating and all(v.gate_passed for v in gating):
        verdict.gate_passed = True
    failing = [v for v in gating if v.failing_runs]
    verdict.tolerated = bool(failing) and all(v.tolerated for v in failing)
    cost = cost_summary(conn, data.id)
    verdict.cost = cost if cost["priced_runs"] else None
    verdict.cheapest, verdict.cheapest_note = _cheapest(verdict.variants, bool(gates))
    return verdict


def _cheapest(variants: list[ExperimentVerdict], gated: bool) -> tuple[str | None, str]:
    """The cheapest variant whose gates all pass (by cost per run), and what to say of it."""
    return cheapest_passing(
        ((v.variant or "", v.gate_passed, v.cost["per_run"] if v.cost else None) for v in variants),
        gated,
    )


def judge_session(
    conn: sqlite3.Connection,
    session_id: str,
    *,
    ini_gates: tuple[Gate, ...],
    cli_gates: tuple[Gate, ...],
    compare: str | None,
    fail_on_regression: bool,
    not_evaluable: str | None,
    gate_variants: tuple[str, ...] = (),
) -> SessionVerdict:
    """Judge every experiment of the session from what the database holds.

    ``not_evaluable`` says why no gate may pass (an interrupted session, the error budget
    exceeded); ``compare`` is ``"last"`` or a session id (prefix).
    """
    from .._util.lookup import resolve_session
    from .compare import compare_experiments, find_baseline
    from .stats import cost_summary

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
        if data.variants:
            result = _judge_variants(conn, data, applicable, not_evaluable, gate_variants)
        else:
            result = _judge_experiment(data, applicable, not_evaluable)
            cost = cost_summary(conn, data.id)
            result.cost = cost if cost["priced_runs"] or cost["unpriced_runs"] else None
        if compare is not None:
            baseline = find_baseline(conn, data.name, session_id, baseline_session)
            if baseline is None:
                result.no_comparison = (
                    f"session {baseline_session[:12]} has no experiment {data.name!r}"
                    if baseline_session
                    else f"no earlier complete session of {data.name!r} in the database"
                )
            elif not data.variants:
                result.comparison = compare_experiments(conn, baseline, data, applicable)
            else:
                _compare_each_variant(conn, baseline, data, applicable, result)
        verdict.experiments[data.name] = result
    variants_ran = {v for data in experiments for v in data.variants}
    for variant in gate_variants:
        if variant not in variants_ran:
            verdict.unmatched.append(
                f"--llm-gate-variant {variant}: no experiment of this session ran that variant "
                f"(variants that ran: {', '.join(sorted(variants_ran)) or 'none'})"
            )
    return verdict


def _compare_each_variant(
    conn: sqlite3.Connection,
    baseline: int,
    data: ExperimentData,
    gates: list[Gate],
    result: ExperimentVerdict,
) -> None:
    """Each variant compared with the same variant of the baseline."""
    from .compare import compare_experiments

    held = {
        str(v)
        for (v,) in conn.execute(
            "SELECT DISTINCT variant FROM experiment_runs WHERE experiment_id = ? AND variant "
            "IS NOT NULL",
            (baseline,),
        )
    }
    for part in result.variants:
        assert part.variant is not None
        if part.variant not in held:
            part.no_comparison = f"the baseline did not run the variant {part.variant}"
            continue
        part.comparison = compare_experiments(
            conn, baseline, data.of_variant(part.variant), gates, part.variant
        )


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
                "threshold, observed, verdict, detail, variant) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        experiment.experiment_id,
                        *(g.as_json()[k] for k in _GATE_COLUMNS),
                        g.verdict,
                        g.detail or None,
                        g.variant,
                    )
                    for g in experiment.gates
                ],
            )
            conn.execute(
                "UPDATE experiments SET gate_passed = ?, comparison = ? WHERE id = ?",
                (
                    None if experiment.gate_passed is None else int(experiment.gate_passed),
                    _stored_comparison(experiment),
                    experiment.experiment_id,
                ),
            )


def _stored_comparison(experiment: ExperimentVerdict) -> str | None:
    """``experiments.comparison``: the baseline comparison, or each variant's by variant."""
    if experiment.variants:
        by_variant = {v.variant: v.comparison for v in experiment.variants if v.comparison}
        return json.dumps({"variants": by_variant}) if by_variant else None
    return None if experiment.comparison is None else json.dumps(experiment.comparison)
