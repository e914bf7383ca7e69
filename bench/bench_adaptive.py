"""Benchmark 8, adaptive executions (``--llm-adaptive``), by simulation: no LLM, no pytest.

Each scenario is an experiment of CASES cases x EXECUTIONS executions whose metric values
are drawn from known distributions. The same draws are judged twice through the plugin's
own code: fixed (every execution runs) and adaptive (executions handed out round by round,
as ``--llm-adaptive`` orders them, each one fed to ``_verdict.adaptive.Monitor`` and the
cases it stops run no more). Both verdicts come from ``_verdict.evaluate.evaluate_gate`` on
what ran, and are checked against the truth (the gate on the true means).

    python bench/bench_adaptive.py [--experiments N] [--confidence C] [--seed S]

Printed per scenario: how often each design's verdict is wrong, how often an early stop
was wrong (a gate decided the wrong way), and the executions adaptive ran against the fixed
design's. The criteria (wrong early stops at most 1 - confidence in every scenario; in the
clear ones, wrong verdicts at most 1 - confidence and at least 50 % fewer executions) are
checked at the end; the exit status is 1 if one is not met.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from pytest_llmexp._verdict.adaptive import Monitor
from pytest_llmexp._verdict.evaluate import ExperimentData, Run, evaluate_gate
from pytest_llmexp._verdict.gates import RUNS, compare, parse_gate

Draw = Callable[[random.Random, int], float]


def bernoulli(p: float) -> Draw:
    return lambda rng, _case: float(rng.random() < p)


def per_case(rates: list[float]) -> Draw:
    return lambda rng, case: float(rng.random() < rates[case % len(rates)])


def likert(weights: list[float]) -> Draw:
    """A score 1..5 drawn with these weights."""
    return lambda rng, _case: float(rng.choices(range(1, 6), weights)[0])


@dataclass
class Scenario:
    name: str
    gate: str
    draw: Draw
    #: The gate's statistic on the true distribution.
    truth: float
    clear: bool
    kind: str = "bool"
    bounds: tuple[float, float] | None = None
    cases: int = 50
    executions: int = 20


def _likert_mean(weights: list[float]) -> float:
    return sum(w * s for w, s in zip(weights, range(1, 6), strict=True)) / sum(weights)


GOOD, POOR = [1, 1, 2, 6, 10], [4, 6, 6, 3, 1]
SCENARIOS = [
    Scenario("pass rate 0.95, gate >= 0.8", "pass_rate >= 0.8", bernoulli(0.95), 0.95, True),
    Scenario("pass rate 0.3, gate >= 0.8", "pass_rate >= 0.8", bernoulli(0.3), 0.3, True),
    Scenario("pass rate 0.85, gate >= 0.8", "pass_rate >= 0.8", bernoulli(0.85), 0.85, False),
    Scenario("pass rate 0.8, gate >= 0.8", "pass_rate >= 0.8", bernoulli(0.8), 0.8, False),
    Scenario("pass rate 0.75, gate >= 0.8", "pass_rate >= 0.8", bernoulli(0.75), 0.75, False),
    Scenario(
        "half 1.0, half 0.64, gate >= 0.8",
        "pass_rate >= 0.8",
        per_case([1.0, 0.64]),
        0.82,
        False,
    ),
    Scenario(
        "each case 0.95, each_case >= 0.8",
        "each_case.pass_rate >= 0.8",
        bernoulli(0.95),
        0.95,
        False,
    ),
    Scenario(
        "each case 0.3, each_case >= 0.8",
        "each_case.pass_rate >= 0.8",
        bernoulli(0.3),
        0.3,
        False,
    ),
    Scenario(
        "one case 0.3 of 50 at 0.95, each_case",
        "each_case.pass_rate >= 0.8",
        per_case([0.3] + [0.95] * 49),
        0.3,
        False,
    ),
    Scenario("pass rate 0.95, pass^3 >= 0.7", "pass^3 >= 0.7", bernoulli(0.95), 0.95**3, False),
    Scenario(
        f"score 1-5 mean {_likert_mean(GOOD):.2f}, mean >= 3.5",
        "score: mean >= 3.5",
        likert(GOOD),
        _likert_mean(GOOD),
        False,
        "int",
        (1, 5),
    ),
    Scenario(
        f"score 1-5 mean {_likert_mean(POOR):.2f}, mean >= 3.5",
        "score: mean >= 3.5",
        likert(POOR),
        _likert_mean(POOR),
        False,
        "int",
        (1, 5),
    ),
]


def _outcome(metric: str, value: float) -> tuple[str, dict[str, float]]:
    """A run's status and metric values, for a value of ``metric`` (of ``runs``: 1 passed)."""
    if metric == RUNS:
        return ("passed" if value else "failed"), {}
    return "passed", {metric: value}


def _data(values: dict[int, list[float]], metric: str, kind: str, adaptive: bool) -> ExperimentData:
    runs = [
        Run(f"{case}-{index}", f"c{case}", index, *_outcome(metric, value))
        for case, case_values in values.items()
        for index, value in enumerate(case_values)
    ]
    kinds = {metric: kind} if metric != RUNS else {}
    return ExperimentData(1, "s", "sim", 20, runs, kinds, [], {}, adaptive=adaptive)


def simulate(s: Scenario, experiments: int, confidence: float, seed: int) -> dict[str, float]:
    gate = parse_gate(s.gate, source="cli", where="bench")
    truth = compare(s.truth, gate.op, gate.threshold)
    specs = {gate.metric: {"min": s.bounds[0], "max": s.bounds[1]}} if s.bounds else {}
    kinds = {gate.metric: s.kind}
    wrong_fixed = wrong_adaptive = wrong_early = ran = 0
    for number in range(experiments):
        rng = random.Random(seed * 1_000_003 + number)
        draws = [[s.draw(rng, case) for _ in range(s.executions)] for case in range(s.cases)]
        fixed = evaluate_gate(gate, _data(dict(enumerate(draws)), gate.metric, s.kind, False))
        wrong_fixed += fixed.passed != truth
        monitor = Monitor([gate], cases=s.cases, num_executions=s.executions, confidence=confidence)
        kept: dict[int, list[float]] = {case: [] for case in range(s.cases)}
        for index in range(s.executions):
            for case in range(s.cases):
                if f"c{case}" in monitor.stopped:
                    continue
                value = draws[case][index]
                kept[case].append(value)
                monitor.add(f"c{case}", *_outcome(gate.metric, value), kinds, specs)
        ran += sum(len(v) for v in kept.values())
        adaptive = evaluate_gate(gate, _data(kept, gate.metric, s.kind, True))
        wrong_adaptive += adaptive.passed != truth
        decided = monitor.verdicts().get(str(gate))
        wrong_early += decided is not None and (decided == "holds") != truth
    total = experiments * s.cases * s.executions
    return {
        "wrong_fixed": wrong_fixed / experiments,
        "wrong_adaptive": wrong_adaptive / experiments,
        "wrong_early": wrong_early / experiments,
        "ran": ran / total,
    }


def _arg(name: str, default: str) -> str:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main() -> int:
    experiments = int(_arg("--experiments", "1000"))
    confidence = float(_arg("--confidence", "0.95"))
    seed = int(_arg("--seed", "1"))
    alpha = 1 - confidence
    print(
        f"{experiments} simulated experiments per scenario, 50 cases x 20 executions, "
        f"confidence {confidence:g}\n"
    )
    header = (
        "| scenario | gate | truth | wrong, fixed | wrong, adaptive | wrong early stops "
        "| executions run | saved |"
    )
    print(header)
    print("|" + "---|" * 8)
    failures = []
    started = time.perf_counter()
    for s in SCENARIOS:
        r = simulate(s, experiments, confidence, seed)
        gate = parse_gate(s.gate, source="cli", where="bench")
        truth = "holds" if compare(s.truth, gate.op, gate.threshold) else "fails"
        print(
            f"| {s.name} | `{s.gate}` | {truth} | {r['wrong_fixed']:.1%} | "
            f"{r['wrong_adaptive']:.1%} | {r['wrong_early']:.1%} | {r['ran']:.1%} | "
            f"{1 - r['ran']:.0%} |",
            flush=True,
        )
        if r["wrong_early"] > alpha:
            failures.append(f"{s.name}: wrong early stops {r['wrong_early']:.1%} > {alpha:.0%}")
        if s.clear and r["wrong_adaptive"] > alpha:
            failures.append(f"{s.name}: wrong verdicts {r['wrong_adaptive']:.1%} > {alpha:.0%}")
        if s.clear and r["ran"] > 0.5:
            failures.append(f"{s.name}: ran {r['ran']:.0%} of the executions, more than 50 %")
    print(f"\n{time.perf_counter() - started:.0f} s")
    for failure in failures:
        print(f"NOT MET: {failure}")
    if not failures:
        print(
            f"met: wrong early stops <= {alpha:.0%} everywhere; clear scenarios wrong <= "
            f"{alpha:.0%} with at least 50 % fewer executions"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
