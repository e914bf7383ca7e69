"""``@metric``: functions that return one scalar per run, recorded on the current run."""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable
from typing import Any, overload

from .errors import MetricError
from .recording import current_run
from .records import MetricRecord

__all__ = ["MetricFunction", "metric", "to_metric_record"]

_RETURN_INSTEAD = "return a bool, an int or a finite float"


def _short(value: Any) -> str:
    text = repr(value)
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


def _is_numpy_bool(value: Any) -> bool:
    kind = type(value)
    return kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")


def to_metric_record(name: str, value: Any) -> MetricRecord:
    """Check ``value`` against the metric contract and turn it into a record."""
    if isinstance(value, bool) or _is_numpy_bool(value):
        return MetricRecord(name=name, value=1.0 if value else 0.0, kind="bool")
    if isinstance(value, numbers.Integral):
        return MetricRecord(name=name, value=float(int(value)), kind="int")
    if isinstance(value, numbers.Real):
        number = float(value)
        if math.isfinite(number):
            return MetricRecord(name=name, value=number, kind="float")
    raise MetricError(
        f"metric {name!r} returned {type(value).__name__} ({_short(value)}); {_hint(value)}",
        metric_name=name,
    )


class MetricFunction:
    """A ``@metric`` function: calling it records its value on the current run."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        functools.update_wrapper(self, fn)
        self.__wrapped__ = fn
        self.name: str = fn.__name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        value = self.__wrapped__(*args, **kwargs)
        record = to_metric_record(self.name, value)
        run = current_run()
        if run is not None:
            run.add_metric(record)
        return value

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

    Usable bare (``@metric``) or called (``@metric()``). The metric's name is the function's.
    """

    def decorate(fn: Callable[..., Any]) -> MetricFunction:
        if options:
            raise MetricError(
                f"@metric on {fn.__name__!r} got unknown option(s) "
                f"{', '.join(sorted(options))}; it takes no options yet",
                metric_name=fn.__name__,
            )
        return MetricFunction(fn)

    return decorate(fn) if fn is not None else decorate
