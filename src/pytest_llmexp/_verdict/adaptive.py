"""Adaptive executions: whether a gate's verdict is settled while runs still arrive.

Each supported gate is two tests by betting (Waudby-Smith and Ramdas, "Estimating means of
bounded random variables by betting", JRSS-B 2024): one of "the mean is at most the
threshold", one of "it is at least the threshold", each a gambler's wealth that grows only
when the data speak against its hypothesis. The wealth of a true hypothesis is a
nonnegative supermartingale, so by Ville's inequality it ever reaches ``1 / alpha`` with
probability at most ``alpha``: it may be watched after every run, and a verdict taken the
first time a wealth gets there is wrong with probability at most ``alpha``
(``1 - confidence``). A fixed-n interval tested again after every run has no such bound.

- ``mean`` / ``pass_rate`` over the experiment is the mean over its cases of each case's
  mean. It is tested in rounds: a round is each case's next value, all bet at one stake
  chosen before the round, and the wealth is looked at only when a round is complete. The
  product of a round's factors has expectation at most 1 when the mean over cases is on the
  hypothesis's side (the factors are independent, and their geometric mean is at most their
  arithmetic mean), so the wealth looked at round by round is a supermartingale still.
- ``pass^k``: a round is each case's next block of ``k`` executions, worth 1 when all ``k``
  passed: its expectation is the mean over cases of each case's pass rate to the ``k``.
- ``each_case.mean`` / ``each_case.pass_rate``: each case has its own tests. The gate holds
  when every case is decided to hold (wrong with probability at most ``alpha``: a case that
  truly fails would have to be decided holding). It fails as soon as one case is decided to
  fail, a test made at ``alpha / 2 / cases`` so that any of the cases is wrongly decided
  failing with probability at most ``alpha / 2``; or as soon as the mean over cases is
  decided to be on the failing side (then some case is), a test in rounds at ``alpha / 2``.

Values are scaled to [0, 1] by the metric's bounds (a bool metric and ``runs`` are 0 or 1;
another needs ``@metric(min=..., max=...)``). Other statistics, ``==`` and unbounded metrics
cannot be decided early: their experiment runs all its executions, and says why.

Stdlib only: the simulation in ``bench/`` runs this same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .gates import RUNS, Gate
from .stats import EVALUATED

__all__ = ["SUPPORTED", "Monitor", "Stop", "unsupported"]

#: The statistics a gate may have to be decided early.
SUPPORTED = ("mean", "pass_rate", "each_case.mean", "each_case.pass_rate", "pass^k")
#: The largest part of what a bet may lose that one bet stakes (the ``c`` of the paper):
#: below 1, so that one value can never take all the wealth.
STAKE = 0.75


class Wealth:
    """A test by betting of ``mean <= m`` (``up``: betting the mean is above) or of
    ``mean >= m``, on values in [0, 1]. ``rejected`` once the hypothesis is refuted."""

    __slots__ = ("_log_target", "_n", "_sq", "_total", "log_wealth", "m", "rejected", "up")

    def __init__(self, m: float, up: bool, alpha: float) -> None:
        self.m = m
        self.up = up
        self.log_wealth = 0.0
        self._log_target = math.log(1 / alpha)
        self._n = 0
        self._total = 0.0
        self._sq = 0.0
        # Thresholds at the bounds: a hypothesis that no data can refute, or that one value
        # refutes for certain ("at least 1": one value below 1).
        self.rejected = (m < 0) if up else (m > 1)

    def stake(self) -> float:
        """The next bet, from the values so far only (it must be predictable): the
        approximate growth-rate adaptive plug-in of the paper (aGRAPA), capped."""
        if not 0 < self.m < 1:
            return 0.0
        mean = (0.5 + self._total) / (self._n + 1)
        variance = (0.25 + self._sq) / (self._n + 1)
        gap = mean - self.m if self.up else self.m - mean
        if gap <= 0:
            return 0.0
        limit = STAKE / self.m if self.up else STAKE / (1 - self.m)
        return min(gap / (variance + gap * gap), limit)

    def add(self, value: float, stake: float) -> None:
        """One value, bet on at ``stake`` (chosen before it was seen)."""
        if self.rejected:
            return
        m = self.m
        if m <= 0 or m >= 1:
            # "at most 0" is refuted by any value above 0, "at least 1" by any below 1; "at
            # most 1" and "at least 0" by none.
            self.rejected = (m <= 0 and value > 0) if self.up else (m >= 1 and value < 1)
        else:
            gain = value - m if self.up else m - value
            self.log_wealth += math.log1p(stake * gain)
            self.rejected = self.log_wealth >= self._log_target
        mean = (0.5 + self._total) / (self._n + 1)
        self._n += 1
        self._total += value
        self._sq += (value - mean) ** 2


class _Pair:
    """The two tests of one gate on one stream of values: which way it is settled."""

    __slots__ = ("above", "below", "higher")

    def __init__(self, m: float, higher: bool, alpha_hold: float, alpha_fail: float) -> None:
        # A gate ">= m" holds once "mean <= m" is refuted, and fails once "mean >= m" is.
        self.higher = higher
        self.above = Wealth(m, True, alpha_hold if higher else alpha_fail)
        self.below = Wealth(m, False, alpha_fail if higher else alpha_hold)

    def add(self, values: list[float]) -> None:
        """One value, or one round of values bet at one stake."""
        up, down = self.above.stake(), self.below.stake()
        for value in values:
            self.above.add(value, up)
            self.below.add(value, down)

    @property
    def verdict(self) -> str | None:
        """``holds``, ``fails``, or ``None`` while it is not settled."""
        if self.above.rejected:
            return "holds" if self.higher else "fails"
        if self.below.rejected:
            return "fails" if self.higher else "holds"
        return None


def unsupported(gate: Gate, kind: str | None, spec: dict[str, Any]) -> str | None:
    """Why a gate cannot be decided early, or ``None`` if it can."""
    stat = gate.statistic
    if gate.op == "==":
        return f"{gate}: '==' cannot be decided early"
    if stat not in SUPPORTED[:4] and not stat.startswith("pass^"):
        return (
            f"{gate}: {stat} cannot be decided early (only mean, pass_rate, each_case.mean, "
            "each_case.pass_rate and pass^k can)"
        )
    if _bounds(gate.metric, kind, spec) is None:
        return (
            f"{gate}: the metric {gate.metric!r} has no bounds; declare them with "
            "@metric(min=..., max=...) (a bool metric needs none)"
        )
    return None


def _bounds(metric: str, kind: str | None, spec: dict[str, Any]) -> tuple[float, float] | None:
    if metric == RUNS or kind == "bool":
        return 0.0, 1.0
    low, high = spec.get("min"), spec.get("max")
    if low is None or high is None or not high > low:
        return None
    return float(low), float(high)


@dataclass(slots=True)
class _Tracker:
    """One gate of one variant: its tests, fed each case's values in the order they came."""

    gate: Gate
    low: float
    high: float
    cases: int
    alpha: float
    values: dict[str | None, list[float]] = field(default_factory=dict)
    rounds: int = 0
    #: The tests of a gate on the mean over cases (mean, pass_rate, pass^k).
    pooled: _Pair | None = None
    #: An each_case gate: each case's tests, and the test that the mean over cases is on
    #: the failing side (then some case is too: the gate fails).
    per_case: dict[str | None, _Pair] = field(default_factory=dict)
    any_fails: Wealth | None = None
    #: What makes an each_case gate fail: a case decided failing, or the mean over cases.
    failing: str | None = None

    def __post_init__(self) -> None:
        m = self.scaled(self.gate.threshold)
        higher = self.gate.higher_is_better
        if not self.gate.statistic.startswith("each_case."):
            self.pooled = _Pair(m, higher, self.alpha, self.alpha)
        else:
            # Wrongly failing has two ways, each given half of alpha (see the module).
            self.any_fails = Wealth(m, not higher, self.alpha / 2)

    def scaled(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low)

    @property
    def block(self) -> int:
        stat = self.gate.statistic
        return int(stat[5:]) if stat.startswith("pass^") else 1

    def add(self, case: str | None, value: float) -> None:
        scaled = min(max(self.scaled(value), 0.0), 1.0)
        self.values.setdefault(case, []).append(scaled)
        if self.pooled is None:
            pair = self.per_case.get(case)
            if pair is None:
                pair = self.per_case[case] = _Pair(
                    self.scaled(self.gate.threshold),
                    self.gate.higher_is_better,
                    self.alpha,
                    self.alpha / 2 / self.cases,
                )
            if pair.verdict is None:
                pair.add([scaled])
                if pair.verdict == "fails" and self.failing is None:
                    self.failing = f"case {case or '(the only one)'!r}"
        # Complete rounds: each case's next value (or block of k), in case order.
        k = self.block
        while len(self.values) >= self.cases and all(
            len(v) >= (self.rounds + 1) * k for v in self.values.values()
        ):
            start = self.rounds * k
            rounds = [
                float(all(x == 1.0 for x in v[start : start + k])) if k > 1 else v[start]
                for _, v in sorted(self.values.items(), key=lambda kv: kv[0] or "")
            ]
            self.rounds += 1
            if self.pooled is not None:
                if self.pooled.verdict is None:
                    self.pooled.add(rounds)
            elif self.any_fails is not None and not self.any_fails.rejected:
                stake = self.any_fails.stake()
                for x in rounds:
                    self.any_fails.add(x, stake)
                if self.any_fails.rejected and self.failing is None:
                    self.failing = "the mean over cases"

    @property
    def verdict(self) -> str | None:
        """The gate's verdict once settled for every case."""
        if self.pooled is not None:
            return self.pooled.verdict
        if self.failing is not None:
            return "fails"
        if len(self.per_case) >= self.cases and all(
            p.verdict == "holds" for p in self.per_case.values()
        ):
            return "holds"
        return None

    def settled(self, case: str | None) -> str | None:
        """What settles this gate for ``case`` (a phrase), or ``None``: more of its
        executions could still change the verdict."""
        verdict = self.verdict
        if verdict == "fails" and self.pooled is None:
            return f"{self.gate} fails ({self.failing})"
        if verdict is not None:
            return f"{self.gate} {verdict}"
        if self.pooled is None:
            pair = self.per_case.get(case)
            if pair is not None and pair.verdict == "holds":
                return f"{self.gate} holds for this case"
        return None


@dataclass(slots=True)
class Stop:
    """A case whose further executions can change no verdict."""

    variant: str | None
    case: str | None
    #: Its executions stored when it was decided.
    after: int
    reason: str


class Monitor:
    """The decisions of one experiment (one variant of it), fed each stored run.

    ``gates`` are the experiment's gates; a gate on a metric the runs have not recorded yet
    is tracked from its first value. ``cases`` is how many cases the session runs (every case
    must have a value before any is stopped: a round needs them all).
    """

    def __init__(
        self,
        gates: list[Gate],
        *,
        cases: int,
        num_executions: int,
        confidence: float,
        variant: str | None = None,
    ) -> None:
        self.gates = gates
        self.cases = max(cases, 1)
        self.num_executions = num_executions
        self.confidence = confidence
        self.variant = variant
        self.alpha = 1 - confidence
        self._trackers: dict[Gate, _Tracker] = {}
        self._unsupported: str | None = None
        self.executions: dict[str | None, int] = {}
        self.stopped: dict[str | None, Stop] = {}

    @property
    def why_all(self) -> str | None:
        """Why the experiment runs all its executions (``None``: it may stop early)."""
        if self._unsupported is not None:
            return self._unsupported
        return None if self.gates else "it has no gate to decide"

    def add(
        self,
        case: str | None,
        status: str,
        metrics: dict[str, float],
        kinds: dict[str, str],
        specs: dict[str, dict[str, Any]],
    ) -> list[Stop]:
        """One stored run of ``case`` (its status, metric values, their kinds and
        ``@metric`` declarations); the cases it newly stops."""
        self.executions[case] = self.executions.get(case, 0) + (status != "skipped")
        if self.why_all is not None or status not in EVALUATED:
            return []
        for gate in self.gates:
            tracker = self._trackers.get(gate)
            value = 1.0 if status == "passed" else 0.0
            if gate.metric != RUNS:
                if gate.metric not in metrics:
                    continue
                value = metrics[gate.metric]
            if tracker is None:
                spec = specs.get(gate.metric, {})
                kind = kinds.get(gate.metric)
                why = unsupported(gate, kind, spec)
                if why is not None:
                    self._unsupported = why
                    return []
                bounds = _bounds(gate.metric, kind, spec)
                assert bounds is not None
                tracker = self._trackers[gate] = _Tracker(
                    gate, bounds[0], bounds[1], self.cases, self.alpha
                )
            tracker.add(case, value)
        return self._stops()

    def _stops(self) -> list[Stop]:
        if len(self.executions) < self.cases or any(g not in self._trackers for g in self.gates):
            return []  # a gate not seen yet, or a case not run yet, could change everything
        found = []
        for case, count in self.executions.items():
            if case in self.stopped or count >= self.num_executions:
                continue
            phrases = []
            for gate in self.gates:
                phrase = self._trackers[gate].settled(case)
                if phrase is None:
                    break
                phrases.append(phrase)
            else:
                stop = Stop(self.variant, case, count, self._reason(count, phrases))
                self.stopped[case] = stop
                found.append(stop)
        return found

    def _reason(self, count: int, phrases: list[str]) -> str:
        percent = f"{self.confidence * 100:g} %"
        return (
            f"decided after {count} of {self.num_executions} executions: "
            f"{', '.join(phrases)} with {percent} confidence"
        )

    def verdicts(self) -> dict[str, str]:
        """Each gate decided so far, and its verdict."""
        return {
            str(gate): verdict
            for gate, tracker in self._trackers.items()
            if (verdict := tracker.verdict) is not None
        }
