"""Gates: thresholds on an experiment's aggregates, parsed by a small grammar (never ``eval``).

::

    gate       := [subject ":"] statistic op number
    subject    := [experiment "."] metric          (experiment only from --llm-gate / ini)
    statistic  := base | "each_case." base | "pass^" k | "pass@" k
    base       := mean | median | min | max | std | pNN (0..100) | pass_rate
    op         := >= | > | <= | < | ==

The metric ``runs`` is each evaluated run's outcome (1 passed, 0 failed). A gate written on an
experiment without a subject gates ``runs``; one given on a ``@metric`` gates that metric.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Literal

from ..errors import GateError

__all__ = [
    "OPS",
    "RUNS",
    "Gate",
    "GateSource",
    "check_gates",
    "compare",
    "parse_gate",
]

#: The pseudo-metric of run outcomes.
RUNS = "runs"
OPS = (">=", "<=", "==", ">", "<")
BASES = ("mean", "median", "min", "max", "std", "pass_rate")
GateSource = Literal["metric", "code", "ini", "cli"]

_GATE = re.compile(
    r"^\s*(?:(?P<subject>[^:]+?)\s*:)?\s*(?P<stat>[A-Za-z_][\w.^@]*)\s*"
    r"(?P<op>>=|<=|==|>|<)\s*(?P<number>\S+)\s*$"
)
_METRIC = re.compile(r"^[A-Za-z_]\w*$")
_PERCENTILE = re.compile(r"^p(\d{1,3})$")
_PASS_K = re.compile(r"^pass([\^@])(\d+)$")
_EXAMPLE = "e.g. 'name_length: mean >= 5', 'pass_rate >= 0.9' or 'score: each_case.p10 > 3'"


@dataclass(frozen=True, slots=True)
class Gate:
    """One parsed gate."""

    text: str
    experiment: str | None
    metric: str
    statistic: str
    op: str
    threshold: float
    source: GateSource

    @property
    def key(self) -> tuple[str, str]:
        """Gates with the same key replace each other: the command line wins over the ini
        file, which wins over code."""
        return (self.metric, self.statistic)

    @property
    def base(self) -> str:
        """The statistic without its ``each_case.`` prefix."""
        return self.statistic.removeprefix("each_case.")

    @property
    def higher_is_better(self) -> bool:
        return self.op in (">=", ">")

    def for_experiment(self, name: str) -> Gate:
        return replace(self, experiment=name)

    def __str__(self) -> str:
        return f"{self.metric}: {self.statistic} {self.op} {self.threshold:g}"


def compare(value: float, op: str, threshold: float) -> bool:
    """Whether ``value op threshold`` holds."""
    if op == ">=":
        return value >= threshold
    if op == ">":
        return value > threshold
    if op == "<=":
        return value <= threshold
    if op == "<":
        return value < threshold
    return math.isclose(value, threshold, rel_tol=1e-9, abs_tol=1e-12)


def _check_statistic(stat: str) -> str | None:
    """Why ``stat`` is not a statistic, or ``None`` if it is one."""
    base = stat.removeprefix("each_case.")
    if base in BASES:
        return None
    percentile = _PERCENTILE.match(base)
    if percentile:
        return None if int(percentile.group(1)) <= 100 else "a percentile is p0 to p100"
    pass_k = _PASS_K.match(stat)
    if pass_k:
        return None if int(pass_k.group(2)) >= 1 else f"{stat}: k must be at least 1"
    if _PASS_K.match(base):
        return f"{stat}: pass^k and pass@k are already per case; write {base}"
    return (
        f"unknown statistic {stat!r}; known: {', '.join(BASES)}, pNN (e.g. p10), pass^k, "
        "pass@k, and each_case.<statistic>"
    )


def parse_gate(
    text: object,
    *,
    source: GateSource,
    where: str,
    metric: str | None = None,
) -> Gate:
    """Parse one gate.

    ``metric`` is given for a ``@metric(gate=...)``: the gate names no subject. A gate from
    code (``source="code"``) names no experiment: it is on one.
    """
    __tracebackhide__ = True
    if not isinstance(text, str):
        raise GateError(f"{where}: a gate is a string ({_EXAMPLE}), got {text!r}")
    match = _GATE.match(text)
    if match is None:
        form = "[EXPERIMENT.]METRIC:" if source in ("ini", "cli") else "[METRIC:]"
        raise GateError(
            f"{where}: gate {text!r} does not parse; write {form} STATISTIC OP NUMBER, "
            f"with OP one of {', '.join(OPS)}: {_EXAMPLE}"
        )
    subject, stat, op, number = match.group("subject", "stat", "op", "number")
    try:
        threshold = float(number)
    except ValueError:
        raise GateError(f"{where}: gate {text!r}: {number!r} is not a number") from None
    if not math.isfinite(threshold):
        raise GateError(f"{where}: gate {text!r}: the threshold must be a finite number")
    problem = _check_statistic(stat)
    if problem is not None:
        if (
            subject is None
            and metric is None
            and problem.startswith("unknown")
            and (_METRIC.match(stat.split(".")[-1]))
        ):
            # "x >= 0.8": a metric named where its statistic goes.
            problem += f"; did you mean {f'{stat}: mean {op} {number}'!r}?"
        raise GateError(f"{where}: gate {text!r}: {problem}")
    gate_experiment: str | None = None
    if metric is not None:
        if subject is not None:
            raise GateError(
                f"{where}: gate {text!r} names {subject!r}, but a @metric gate is about its "
                f"own metric; write {text.split(':', 1)[1].strip()!r}"
            )
        subject = metric
    elif subject is None:
        subject = RUNS
    elif "." in subject:
        if source == "code":
            raise GateError(
                f"{where}: gate {text!r}: a gate on an experiment names a metric, not "
                f"'experiment.metric'; write {subject.rsplit('.', 1)[1]!r}"
            )
        gate_experiment, subject = subject.rsplit(".", 1)
        if not gate_experiment.strip():
            raise GateError(f"{where}: gate {text!r}: the experiment name before '.' is empty")
    if not _METRIC.match(subject):
        raise GateError(
            f"{where}: gate {text!r}: {subject!r} is not a metric name (a metric is named after "
            f"its function; '{RUNS}' is the runs' outcomes)"
        )
    return Gate(
        text=text.strip(),
        experiment=gate_experiment,
        metric=subject,
        statistic=stat,
        op=op,
        threshold=threshold,
        source=source,
    )


def check_gates(
    value: object, *, source: GateSource, where: str, metric: str | None = None
) -> tuple[Gate, ...]:
    """A string or a list of strings, each parsed; anything else is a :class:`GateError`."""
    __tracebackhide__ = True
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise GateError(
            f"{where}: gates must be a list of strings ({_EXAMPLE}), got {type(value).__name__}"
        )
    # A loop, not a generator: a generator's frame would show in the user's traceback.
    gates = []
    for text in value:
        gates.append(parse_gate(text, source=source, where=where, metric=metric))
    return tuple(gates)
