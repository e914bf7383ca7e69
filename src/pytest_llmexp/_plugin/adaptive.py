"""Adaptive executions across processes: the writer's process decides, every process obeys.

The process that stores the runs (the xdist controller, or the only process) feeds each
run of an adaptive experiment, as it arrives, to that experiment's
:class:`~.._verdict.adaptive.Monitor` (one per variant), and appends the cases it stops to
the session's decision file. Every process reads that file before it starts an execution
(as it asks the spend guard), so a decided case stops everywhere within one run per worker;
runs already going finish and are stored.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._store.spool import Decisions
    from .._verdict.adaptive import Monitor
    from .._verdict.gates import Gate

__all__ = ["AdaptiveController", "is_adaptive"]

#: How an adaptive run's JSON begins its ``adaptive`` field (a run of another experiment
#: has ``"adaptive":null``): the runs of other experiments are not parsed.
_MARK = '"adaptive":{'


def is_adaptive(payload: str) -> bool:
    """Whether a run's JSON is of an adaptive experiment."""
    return _MARK in payload


class _Experiment:
    """What the runs of one experiment declared so far: gates in code, metric kinds and
    ``@metric`` declarations (a metric's arrive with its first value)."""

    def __init__(self, name: str, num_executions: int) -> None:
        self.name = name
        self.num_executions = num_executions
        self.code_gates: list[str] = []
        self.kinds: dict[str, str] = {}
        self.specs: dict[str, dict[str, Any]] = {}
        self.monitors: dict[str | None, Monitor] = {}

    def learn(self, run: dict[str, Any]) -> bool:
        """Take what a run declares; whether it declared anything new."""
        new = False
        for text in run.get("gates") or []:
            if text not in self.code_gates:
                self.code_gates.append(text)
                new = True
        for metric in run.get("metrics") or []:
            if metric["name"] not in self.kinds:
                self.kinds[metric["name"]] = metric["kind"]
                new = True
        for name, spec in (run.get("metric_specs") or {}).items():
            if name not in self.specs:
                self.specs[name] = spec
                new = True
        return new


class AdaptiveController:
    """The writer's decisions: each arriving run of an adaptive experiment goes to its
    monitor, and the cases it stops go to the decision file."""

    def __init__(
        self, decisions: Decisions, ini_gates: tuple[Gate, ...], cli_gates: tuple[Gate, ...]
    ) -> None:
        self.decisions = decisions
        self.ini_gates = ini_gates
        self.cli_gates = cli_gates
        self.experiments: dict[str, _Experiment] = {}

    def take(self, payload: str) -> None:
        """One stored run's JSON."""
        run = json.loads(payload)
        adaptive = run.get("adaptive")
        if not adaptive:
            return
        experiment = self.experiments.get(run["experiment"])
        if experiment is None:
            experiment = self.experiments[run["experiment"]] = _Experiment(
                run["experiment"], int(run["num_executions"])
            )
        changed = experiment.learn(run)
        variant = run.get("variant")
        monitor = experiment.monitors.get(variant)
        if monitor is None:
            from .._verdict.adaptive import Monitor

            monitor = experiment.monitors[variant] = Monitor(
                self._gates(experiment),
                cases=int(adaptive["cases"]),
                num_executions=experiment.num_executions,
                confidence=float(adaptive["confidence"]),
                variant=variant,
            )
        elif changed:
            monitor.gates = self._gates(experiment)
        metrics = {m["name"]: float(m["value"]) for m in run.get("metrics") or []}
        stops = monitor.add(
            run.get("case_id"), run["status"], metrics, experiment.kinds, experiment.specs
        )
        for stop in stops:
            self.decisions.add(experiment.name, stop.variant, stop.case, stop.reason)

    def _gates(self, experiment: _Experiment) -> list[Gate]:
        """The experiment's gates as the verdict will apply them, from what it declared."""
        from .._verdict.evaluate import ExperimentData, applicable_gates

        data = ExperimentData(
            0,
            "",
            experiment.name,
            experiment.num_executions,
            [],
            experiment.kinds,
            experiment.code_gates,
            experiment.specs,
        )
        return applicable_gates(data, self.ini_gates, self.cli_gates)
