"""Unit tests of the gate grammar, the statistics gates use, and the bootstrap comparison."""

from __future__ import annotations

import importlib
import math
from typing import Any

import numpy as np
import pytest

from pytest_llmexp import GateError, MetricError, metric
from pytest_llmexp._plugin.collect import case_id
from pytest_llmexp._verdict.compare import bootstrap_difference, unified_diff
from pytest_llmexp._verdict.evaluate import (
    ExperimentData,
    Run,
    applicable_gates,
    evaluate_gate,
    percentile,
    unstable_metrics,
)
from pytest_llmexp._verdict.gates import parse_gate


def cli(text: str) -> Any:
    return parse_gate(text, source="cli", where="--llm-gate")


@pytest.mark.parametrize(
    ("text", "experiment", "metric_name", "statistic", "op", "threshold"),
    [
        ("name_length: mean >= 5", None, "name_length", "mean", ">=", 5.0),
        ("pass_rate>=0.9", None, "runs", "pass_rate", ">=", 0.9),
        ("name_generator.llm_judge: p10 >= 3", "name_generator", "llm_judge", "p10", ">=", 3),
        ("a.b.score: each_case.median < -1.5e1", "a.b", "score", "each_case.median", "<", -15),
        ("ok: pass^3 == 1", None, "ok", "pass^3", "==", 1.0),
        ("ok: pass@2 > 0.5", None, "ok", "pass@2", ">", 0.5),
        ("x: p100 <= 7", None, "x", "p100", "<=", 7.0),
        ("x: each_case.std <= 2", None, "x", "each_case.std", "<=", 2.0),
    ],
)
def test_grammar(
    text: str, experiment: str | None, metric_name: str, statistic: str, op: str, threshold: float
) -> None:
    gate = cli(text)
    assert (gate.experiment, gate.metric, gate.statistic, gate.op, gate.threshold) == (
        experiment,
        metric_name,
        statistic,
        op,
        threshold,
    )
    assert gate.text == text.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name_length mean >= 5", "does not parse"),
        ("name_length: mean", "does not parse"),
        ("name_length: mean => 5", "does not parse"),
        ("name_length: mean >= five", "'five' is not a number"),
        ("name_length: mean >= nan", "finite number"),
        ("name_length: mean >= inf", "finite number"),
        ("name_length: average >= 5", "unknown statistic 'average'"),
        ("name_length: p101 >= 5", "p0 to p100"),
        ("ok: pass^0 >= 0.5", "k must be at least 1"),
        ("ok: each_case.pass^2 >= 0.5", "already per case"),
        ("name length: mean >= 5", "is not a metric name"),
        (".score: mean >= 5", "experiment name before '.' is empty"),
        ("import os: mean >= 1", "is not a metric name"),
        ("__import__('os').system('x'): mean > 1", "is not a metric name"),
        ("", "does not parse"),
    ],
)
def test_parse_errors_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(GateError, match=message.replace("^", r"\^")) as info:
        cli(text)
    assert str(info.value).startswith("--llm-gate: ")


def test_gate_contexts() -> None:
    # On a metric, the gate is about that metric and names no subject.
    gate = parse_gate("mean >= 5", source="metric", where="@metric", metric="length")
    assert gate.metric == "length"
    with pytest.raises(GateError, match="write 'mean >= 5'"):
        parse_gate("other: mean >= 5", source="metric", where="@metric", metric="length")
    # On an experiment, no experiment prefix; no subject means the runs' outcomes.
    assert parse_gate("pass_rate >= 0.9", source="code", where="x").metric == "runs"
    with pytest.raises(GateError, match="write 'score'"):
        parse_gate("exp.score: mean >= 5", source="code", where="x")
    with pytest.raises(GateError, match="a gate is a string"):
        parse_gate(5, source="code", where="x")


def test_metric_options_are_checked() -> None:
    @metric(gate="mean >= 5", min=0, max=10, better="higher")
    def length(text: str) -> int:
        return len(text)

    assert length.spec.gates == ["mean >= 5"]
    assert (length.spec.min, length.spec.max) == (0.0, 10.0)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"gate": "score: mean >= 5"}, GateError, "a @metric gate is about its own metric"),
        ({"gate": 5}, GateError, "gates must be a list of strings"),
        ({"min": "3"}, MetricError, "min= must be a finite number, got '3'"),
        ({"max": math.nan}, MetricError, "max= must be a finite number"),
        ({"min": 5, "max": 1}, MetricError, "min=5 is above max=1"),
        ({"better": "up"}, MetricError, "better= must be 'higher' or 'lower', got 'up'"),
        ({"threshold": 1}, MetricError, "unknown option"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            metric(**options)(lambda: 1)

    def runs() -> int:
        return 1

    with pytest.raises(MetricError, match="'runs' is reserved"):
        metric(runs)


@pytest.mark.parametrize(
    ("nodeid", "expected"),
    [
        ("t.py::test_a[exec-3]", None),
        ("t.py::test_a[x-exec-0]", "x"),
        ("t.py::test_a[x-1-exec-12]", "x-1"),
        ("t.py::test_a[exec-1-y]", "y"),
        ("t.py::test_a[a-exec-2-b]", "a-b"),
        ("dir[1]/t.py::test_a[exec-0]", None),
        ("t.py::test_a", None),
    ],
)
def test_case_id(nodeid: str, expected: str | None) -> None:
    assert case_id(nodeid) == expected


def data(
    values: dict[str | None, list[float | None]],
    kind: str = "int",
    statuses: dict[tuple[str | None, int], str] | None = None,
    **extra: Any,
) -> ExperimentData:
    """An experiment whose metric ``m`` has ``values`` by case (``None``: not recorded)."""
    runs = []
    for case, case_values in values.items():
        for index, value in enumerate(case_values):
            status = (statuses or {}).get((case, index), "passed")
            metrics = {} if value is None else {"m": float(value)}
            runs.append(Run(f"{case}-{index}", case, index, status, metrics))
    size = max(len(v) for v in values.values())
    defaults: dict[str, Any] = {"code_gates": [], "specs": {}}
    defaults.update(extra)
    return ExperimentData(1, "s", "e", size, runs, {"m": kind}, **defaults)


def observed(gate: str, experiment: ExperimentData) -> tuple[str, float | None, str]:
    result = evaluate_gate(cli(gate), experiment)
    return result.verdict, result.observed, result.detail


def test_statistics_match_numpy() -> None:
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    for q in (0, 10, 25, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    experiment = data({None: values})
    assert observed("m: mean >= 3", experiment)[:2] == ("passed", pytest.approx(np.mean(values)))
    assert observed("m: std < 2", experiment)[:2] == (
        "failed",
        pytest.approx(np.std(values, ddof=1)),
    )
    assert observed("m: median > 3", experiment)[1] == pytest.approx(np.median(values))
    assert observed("m: p10 >= 1", experiment)[1] == pytest.approx(np.percentile(values, 10))
    assert observed("m: min >= 1", experiment)[:2] == ("passed", 1.0)
    assert observed("m: max < 9", experiment)[:2] == ("failed", 9.0)


def test_per_case_statistics() -> None:
    experiment = data({"a": [5, 6, 7], "b": [2, 9, 4]})
    # The observed value of a per-case gate is the case that fails it, or the worst one.
    assert observed("m: each_case.mean >= 5", experiment) == ("passed", 5.0, "worst case 'b'")
    assert observed("m: each_case.min >= 3", experiment) == ("failed", 2.0, "worst case 'b'")
    assert observed("m: each_case.max <= 8", experiment) == ("failed", 9.0, "worst case 'b'")


def test_pass_k_by_hand() -> None:
    # Case a: 4 of 4 pass; case b: 2 of 4 pass.
    experiment = data({"a": [1, 1, 1, 1], "b": [1, 0, 0, 1]}, kind="bool")
    # pass^2: a 1, b C(2,2)/C(4,2) = 1/6; pass@2: a 1, b 1 - C(2,2)/C(4,2) = 5/6.
    assert observed("m: pass^2 >= 0.5", experiment)[1] == pytest.approx((1 + 1 / 6) / 2)
    assert observed("m: pass@2 >= 0.5", experiment)[1] == pytest.approx((1 + 5 / 6) / 2)
    assert observed("m: pass^1 >= 0.5", experiment)[1] == pytest.approx(0.75)
    assert observed("m: pass_rate >= 0.8", experiment)[:2] == ("failed", 0.75)
    verdict, value, detail = observed("m: pass^5 >= 0.5", experiment)
    assert (verdict, value) == ("error", None)
    assert "at least 5 evaluated executions per case; case 'a' has 4" in detail


def test_runs_outcomes_and_errors_never_pass() -> None:
    statuses = {(None, 1): "failed", (None, 2): "error", (None, 3): "crashed"}
    experiment = data({None: [1, 1, None, None, 1]}, statuses=statuses)
    # Evaluated runs only: 2 of 3 passed; the errored and crashed runs are not passes.
    assert observed("pass_rate >= 0.6", experiment)[:2] == ("passed", pytest.approx(2 / 3))
    assert observed("m: mean >= 1", experiment)[:2] == ("passed", 1.0)


@pytest.mark.parametrize(
    ("gate", "message"),
    [
        ("other: mean >= 1", "recorded no metric 'other' (it recorded: m)"),
        ("m: pass_rate >= 0.5", "pass_rate needs a bool metric"),
        ("m: std < 1", "std needs at least 2 evaluated runs"),
    ],
)
def test_gates_that_cannot_be_evaluated(gate: str, message: str) -> None:
    verdict, value, detail = observed(gate, data({None: [3]}))
    assert (verdict, value) == ("error", None)
    assert message in detail


def test_no_evaluated_run_is_an_error() -> None:
    experiment = data({None: [None, None]}, statuses={(None, 0): "error", (None, 1): "error"})
    assert observed("m: mean >= 1", experiment) == (
        "error",
        None,
        "cannot be evaluated: no evaluated run recorded it",
    )


def test_command_line_wins_over_ini_over_code() -> None:
    experiment = data(
        {None: [5]},
        code_gates=["m: mean >= 1", "m: max <= 9"],
        specs={"m": {"gates": ["mean >= 0", "min >= 0"]}},
    )
    ini = [parse_gate("m: mean >= 2", source="ini", where="ini"), cli("other.m: min >= 3")]
    gates = applicable_gates(experiment, ini, [cli("e.m: mean >= 3"), cli("q: mean > 1")])
    assert sorted((g.statistic, g.threshold, g.source) for g in gates) == [
        ("max", 9, "code"),
        ("mean", 3, "cli"),
        ("min", 0, "metric"),
    ]


def test_unstable_cases_and_judges() -> None:
    experiment = data({"a": [5, 6], "b": [2, 7], "c": [1, 1]}, specs={"m": {"judge": True}})
    found = unstable_metrics(experiment, [cli("m: mean >= 5"), cli("m: each_case.mean >= 5")])
    assert found[0] == {
        "metric": "m",
        "kind": "threshold",
        "gates": ["m: mean >= 5", "m: each_case.mean >= 5"],
        "cases": ["b"],
        "of_cases": 3,
    }
    spread = np.mean([np.std(v, ddof=1) for v in ([5, 6], [2, 7], [1, 1])])
    assert found[1]["kind"] == "judge"
    assert found[1]["spread"] == pytest.approx(spread)


def test_bootstrap_by_hand() -> None:
    # A constant shift: every resample differs by exactly 2.
    assert bootstrap_difference([5, 5, 5], [7, 7, 7, 7]) == (2.0, 2.0, 2.0)
    # Two paired cases with differences -3 and -1: a resampled mean is -3, -2 or -1, each of
    # -3 and -1 a quarter of the time, so the 2.5th and 97.5th percentiles are -3 and -1.
    assert bootstrap_difference([6, 4], [3, 3], paired=True) == (-2.0, -3.0, -1.0)
    # The same seed gives the same interval; the interval holds the difference.
    rng = np.random.default_rng(1)
    base, cur = list(rng.normal(5, 1, 30)), list(rng.normal(6, 1, 30))
    first = bootstrap_difference(base, cur)
    assert first == bootstrap_difference(base, cur)
    diff, low, high = first
    assert low < diff < high
    assert diff == pytest.approx(np.mean(cur) - np.mean(base))
    # Close to the textbook interval for a difference of two means.
    se = math.sqrt(np.var(base, ddof=1) / 30 + np.var(cur, ddof=1) / 30)
    assert low == pytest.approx(diff - 1.96 * se, abs=0.15)
    assert high == pytest.approx(diff + 1.96 * se, abs=0.15)


@pytest.mark.parametrize("paired", [False, True])
def test_large_samples_get_the_normal_interval_the_bootstrap_converges_to(
    monkeypatch: pytest.MonkeyPatch, paired: bool
) -> None:
    from pytest_llmexp._verdict import compare

    rng = np.random.default_rng(2)
    base, cur = list(rng.exponential(2, 600)), list(rng.exponential(2.3, 600))
    assert len(base) + len(cur) > compare.NORMAL_ABOVE
    diff, low, high = bootstrap_difference(base, cur, paired=paired)
    monkeypatch.setattr(compare, "NORMAL_ABOVE", 10**9)
    boot = bootstrap_difference(base, cur, paired=paired, resamples=4000)
    assert diff == boot[0]
    # Within the Monte Carlo error of 4,000 resamples: 3% of the interval's width.
    width = boot[2] - boot[1]
    assert low == pytest.approx(boot[1], abs=0.03 * width)
    assert high == pytest.approx(boot[2], abs=0.03 * width)


def test_unified_diff_ends_lines() -> None:
    assert unified_diff("Name a {{ x }}.", "Name a {{ x }}, briefly.", "a", "b") == (
        "--- a\n+++ b\n@@ -1 +1 @@\n-Name a {{ x }}.\n+Name a {{ x }}, briefly.\n"
    )


def test_a_verdict_that_cannot_be_computed_fails_the_session(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from types import SimpleNamespace

    from pytest_llmexp._plugin.conclusion import Conclusion
    from pytest_llmexp._plugin.settings import Settings
    from pytest_llmexp._plugin.terminal import conclusion_lines
    from pytest_llmexp._store.store import Store
    from pytest_llmexp._verdict.health import Health

    # The module the conclusion imports (an in-process pytester run elsewhere may have
    # dropped it from sys.modules, leaving the package attribute pointing at an old copy).
    verdicts = importlib.import_module("pytest_llmexp._verdict.verdicts")

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a stored gate from another version")

    monkeypatch.setattr(verdicts, "judge_session", broken)
    settings = Settings((), tmp_path / "db", None, None, None, 1.0, 0)
    conclusion = Conclusion(settings, "s1")
    session: Any = SimpleNamespace(exitstatus=pytest.ExitCode.OK)
    store = Store(tmp_path / "db")
    try:
        conclusion.judge(session, store, Health(), tests_failed=False, interrupted=False, lost=0)
    finally:
        store.close()
    assert session.exitstatus == pytest.ExitCode.INTERNAL_ERROR
    assert conclusion_lines(conclusion) == [
        (
            "ERROR: the verdict could not be computed: ValueError: a stored gate from another "
            "version",
            "red",
        )
    ]
