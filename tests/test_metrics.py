from __future__ import annotations

import math
from fractions import Fraction

import pytest
from pydantic import BaseModel

from pytest_llmexp import MetricError, metric
from pytest_llmexp._run.metrics import to_metric_record
from pytest_llmexp._run.recording import RunContext, activate


class Score(BaseModel):
    score: int
    reason: str


class TwoScores(BaseModel):
    a: float
    b: float


@pytest.mark.parametrize(
    ("value", "expected", "kind"),
    [
        (True, 1.0, "bool"),
        (False, 0.0, "bool"),
        (7, 7.0, "int"),
        (-2, -2.0, "int"),
        (0.25, 0.25, "float"),
        (Fraction(1, 4), 0.25, "float"),
        (2**53, 2.0**53, "int"),
        (-(2**53), -(2.0**53), "int"),
    ],
)
def test_scalars_are_accepted(value: object, expected: float, kind: str) -> None:
    record = to_metric_record("m", value)
    assert (record.value, record.kind) == (expected, kind)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "abc",
            r"metric 'm' returned str \('abc'\); return a bool, an int or a finite float, "
            r"e\.g\. len",
        ),
        ("3.5", r"returned str \('3\.5'\);.*convert it with float\(\.\.\.\)"),
        (None, r"returned NoneType \(None\);.*forget its `return`"),
        (math.nan, r"returned float \(nan\);.*skip the value"),
        (math.inf, r"returned float \(inf\)"),
        (-math.inf, r"returned float \(-inf\)"),
        ([1, 2], r"returned list \(\[1, 2\]\);.*one value per run; aggregate the list"),
        ({"a": 1}, r"returned dict"),
        ((1,), r"returned tuple"),
        (1 + 2j, r"returned complex"),
        (b"x", r"returned bytes"),
        (
            Score(score=3, reason="ok"),
            r"returned Score .*return its numeric field, e\.g\. `return value\.score`",
        ),
        (TwoScores(a=1, b=2), r"returned TwoScores .*one of its numeric fields \(a, b\)"),
        # A float (SQLite REAL) holds whole numbers exactly up to 2**53 only.
        (2**53 + 1, r"returned an int of 54 bits, beyond ±2\*\*53: .*silently rounded"),
        (-(10**400), r"an int of 1329 bits"),
        pytest.param(10**5000, r"an int of 16610 bits", id="int-beyond-str-digits"),
        (Fraction(10**400), r"returned Fraction .*finite float"),
        pytest.param(
            Fraction(10**5000),
            r"returned Fraction \(a Fraction too large to show\)",
            id="fraction-beyond-str-digits",
        ),
    ],
)
def test_everything_else_is_refused_with_a_fix(value: object, message: str) -> None:
    with pytest.raises(MetricError, match=message) as info:
        to_metric_record("m", value)
    assert info.value.metric_name == "m"


def test_numpy_scalars_are_accepted() -> None:
    np = pytest.importorskip("numpy", reason="numpy is not a dependency; checked when present")
    assert to_metric_record("m", np.bool_(True)).kind == "bool"
    assert to_metric_record("m", np.int64(3)).kind == "int"
    assert to_metric_record("m", np.float32(0.5)).kind == "float"
    with pytest.raises(MetricError, match="an int of 64 bits"):
        to_metric_record("m", np.uint64(2**63))


@metric
def length(text: str) -> int:
    return len(text)


def test_metric_records_on_the_current_run_and_returns_the_value() -> None:
    run = RunContext("e", num_executions=1, execution_index=0, worker="main")
    with activate(run):
        assert length("abcd") == 4
    record = run.finish("passed")
    assert [(m.name, m.value, m.kind) for m in record.metrics] == [("length", 4.0, "int")]
    assert length.__name__ == "length"


def test_outside_a_run_a_metric_only_checks_its_value() -> None:
    assert length("ab") == 2

    @metric
    def broken() -> str:
        return "x"

    with pytest.raises(MetricError):
        broken()


def test_second_call_in_one_run_is_an_error() -> None:
    run = RunContext("e", num_executions=2, execution_index=1, worker="main")
    with (
        activate(run),
        pytest.raises(
            MetricError, match=r"metric 'length' was called twice in run 1 of experiment 'e'"
        ),
    ):
        length("a")
        length("bb")


def test_called_form_and_unknown_options() -> None:
    @metric()
    def plain() -> int:
        return 1

    assert plain() == 1
    with pytest.raises(MetricError, match=r"@metric on 'f' got unknown option\(s\) gates; it"):

        @metric(gates="mean > 1")
        def f() -> int:
            return 1
