"""``@metric``: functions that return one scalar per run, recorded on the current run."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, overload

from .._store.records import MetricRecord
from ..errors import MetricBoundFailure, MetricError
from .recording import current_run, measuring

__all__ = ["MetricFunction", "metric", "to_metric_record"]

_RETURN_INSTEAD = "return a bool, an int or a finite float"


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 80 else text[:77] + "..."


def _numeric_fields(value: Any) -> list[str]:
    fields = getattr(type(value), "model_fields", None) or {}
    return [name for name in fields if isinstance(getattr(value, name, None), numbers.Real | bool)]


def _hint(value: Any) -> str:
    """What to return instead of ``value``, for the error message."""
    if value is None:
        return f"{_RETURN_INSTEAD}; did the function forget its `return`?"
    if isinstance(value, float):
        return f"{_RETURN_INSTEAD}; skip the value or map it to a number explicitly"
    if isinstance(value, str | bytes):
        try:
            float(value)
        except ValueError:
            return f"{_RETURN_INSTEAD}, e.g. len(text) or a score"
        return f"{_RETURN_INSTEAD}: convert it with float(...)"
    if hasattr(type(value), "model_fields"):
        fields = _numeric_fields(value)
        if len(fields) == 1:
            return f"{_RETURN_INSTEAD}: return its numeric field, e.g. `return value.{fields[0]}`"
        if fields:
            return (
                f"{_RETURN_INSTEAD}: return one of its numeric fields ({', '.join(fields)}), "
                "or define one metric per field"
            )
        return f"{_RETURN_INSTEAD} computed from the model's fields"
    if isinstance(value, list | tuple | set | frozenset | dict):
        return (
            f"{_RETURN_INSTEAD}: a metric gives one value per run; aggregate the "
            f"{type(value).__name__} (e.g. its mean or length) or define one metric per value"
        )
    return _RETURN_INSTEAD


#: The largest whole numbers a float (how metrics are stored) holds exactly.
_EXACT = 2**53


def _is_numpy_bool(value: Any) -> bool:
    kind = type(value)
    return kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")


def to_metric_record(name: str, value: Any) -> MetricRecord:
    """Check ``value`` against the metric contract and turn it into a record."""
    __tracebackhide__ = True  # the user's line, not ours (nor our locals)
    kind = type(value)  # the usual types first: the checks below are slower
    if kind is int and -_EXACT <= value <= _EXACT:
        return MetricRecord(name=name, value=float(value), kind="int")
    if kind is float and math.isfinite(value):
        return MetricRecord(name=name, value=value, kind="float")
    if isinstance(value, bool) or _is_numpy_bool(value):
        return MetricRecord(name=name, value=1.0 if value else 0.0, kind="bool")
    if isinstance(value, numbers.Integral):
        whole = int(value)
        if -_EXACT <= whole <= _EXACT:
            return MetricRecord(name=name, value=float(whole), kind="int")
        raise MetricError(
            f"metric {name!r} returned an int of {whole.bit_length()} bits, beyond ±2**53: it "
            "would be stored as a float (SQLite REAL), which cannot hold it exactly, silently "
            "rounded; return a smaller number, or float(value) if rounding is fine",
            metric_name=name,
        )
    if isinstance(value, numbers.Real):
        try:
            number = float(value)
        except OverflowError:  # e.g. a Fraction beyond any float
            number = math.inf
        if math.isfinite(number):
            return MetricRecord(name=name, value=number, kind="float")
    raise MetricError(
        f"metric {name!r} returned {type(value).__name__} ({_short(value)}); {_hint(value)}",
        metric_name=name,
    )


_OPTIONS = ("gate", "min", "max", "better")


def _bound(name: str, option: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise MetricError(
            f"@metric on {name!r}: {option}= must be a finite number, got {value!r}; "
            f"e.g. @metric({option}=5)",
            metric_name=name,
        )
    return float(value)


#: The names of the ``@metric`` functions defined in this process so far (a command-line gate
#: on another name is refused when collection ends, not after every run).
DEFINED: set[str] = set()


def code_hash(fn: Callable[..., Any]) -> str:
    """The version of a metric: a hash of its source, or of its bytecode and constants when
    the source is not at hand (a function typed at a prompt)."""
    import hashlib
    import inspect
    import textwrap

    try:
        text = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = repr((code.co_code, code.co_consts)) if code is not None else repr(fn)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class MetricFunction:
    """A ``@metric`` function: calling it records its value on the current run.

    ``gate`` declares gates on the metric's aggregates, the default for every experiment
    that records it; ``min`` / ``max`` bound each run's value (outside them the run fails);
    ``better`` ("higher" or "lower") says which way is an improvement when comparing.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        gate: Any = (),
        min: float | None = None,
        max: float | None = None,
        better: str | None = None,
    ) -> None:
        __tracebackhide__ = True
        from .._store.records import MetricSpec
        from .._verdict.gates import RUNS, check_gates

        functools.update_wrapper(self, fn)
        self.__wrapped__ = fn
        self.name: str = fn.__name__
        DEFINED.add(self.name)
        where = f"@metric on {self.name!r}"
        if self.name == RUNS:
            raise MetricError(
                f"{where}: the name {RUNS!r} is reserved for the runs' outcomes in gates; "
                "rename the function",
                metric_name=self.name,
            )
        gates = check_gates(gate, source="metric", where=where, metric=self.name)
        low, high = _bound(self.name, "min", min), _bound(self.name, "max", max)
        if low is not None and high is not None and low > high:
            raise MetricError(f"{where}: min={min!r} is above max={max!r}", metric_name=self.name)
        if better not in (None, "higher", "lower"):
            raise MetricError(
                f"{where}: better= must be 'higher' or 'lower', got {better!r}",
                metric_name=self.name,
            )
        self.spec = MetricSpec(
            gates=[g.text for g in gates],
            min=low,
            max=high,
            better=better,  # type: ignore[arg-type]
            code=code_hash(fn),
        )
        #: What a run records beside the value when the metric called no LLM (``None``:
        #: nothing, the options are the defaults).
        self._plain_spec = None if self.spec == MetricSpec() else self.spec

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        run = current_run()
        calls_before = run.call_count() if run is not None else 0
        with measuring():
            value = self.__wrapped__(*args, **kwargs)
        record = to_metric_record(self.name, value)
        if run is not None:
            judge = run.call_count() > calls_before
            spec = self.spec.model_copy(update={"judge": True}) if judge else self._plain_spec
            run.add_metric(record, spec)
        self._check_bounds(record.value)
        return value

    def _check_bounds(self, value: float) -> None:
        __tracebackhide__ = True
        low, high = self.spec.min, self.spec.max
        if low is not None and value < low:
            raise MetricBoundFailure(
                f"metric {self.name!r} = {value:g} is below its minimum {low:g} "
                f"(@metric(min={low:g}))",
                metric_name=self.name,
                value=value,
            )
        if high is not None and value > high:
            raise MetricBoundFailure(
                f"metric {self.name!r} = {value:g} is above its maximum {high:g} "
                f"(@metric(max={high:g}))",
                metric_name=self.name,
                value=value,
            )

    def __repr__(self) -> str:
        return f"<metric {self.name!r}>"


@overload
def metric(fn: Callable[..., Any], /) -> MetricFunction: ...
@overload
def metric(
    fn: None = None, /, **options: Any
) -> Callable[[Callable[..., Any]], MetricFunction]: ...


def metric(
    fn: Callable[..., Any] | None = None, /, **options: Any
) -> MetricFunction | Callable[[Callable[..., Any]], MetricFunction]:
    """Declare a metric: a function returning one bool, int or finite float per run.

    Usable bare (``@metric``) or called with options: ``@metric(gate="mean >= 5")``,
    ``@metric(min=1, max=5)``, ``@metric(better="lower")``. The name is the function's.
    """

    def decorate(fn: Callable[..., Any]) -> MetricFunction:
        __tracebackhide__ = True
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise MetricError(
                f"@metric on {fn.__name__!r} got unknown option(s) {', '.join(unknown)}; it "
                f"takes {', '.join(_OPTIONS)}",
                metric_name=fn.__name__,
            )
        return MetricFunction(fn, **options)

    __tracebackhide__ = True
    return decorate(fn) if fn is not None else decorate
