"""``@experiment`` and its marker: one test becomes ``num_executions`` items ``[exec-N]``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import pytest

from .._util.defaults import check_concurrency, check_experiment_name, check_num_executions
from ..errors import ExperimentError
from .keys import ITEM_KEY

if TYPE_CHECKING:
    from .._verdict.gates import Gate

__all__ = [
    "EXEC_FIXTURE",
    "VARIANT_FIXTURE",
    "ExperimentItem",
    "case_id",
    "check_cli_gates",
    "execution_index",
    "experiment",
    "generate_executions",
    "is_execution_id",
    "order_adaptive",
    "select_experiments",
]

EXEC_FIXTURE = "_llmexp_execution"
#: The indirect parameter of the command line's variants (``--llm-model A --llm-model B``).
VARIANT_FIXTURE = "_llmexp_variant"
MARKER_HELP = (
    "experiment(num_executions=1, name=None, gates=(), concurrency=None, variants=(), "
    "adaptive=None): run the test num_executions times as an LLM experiment, each execution "
    "one recorded run; gates: e.g. ['name_length: mean >= 5']; concurrency: executions in "
    "flight at once per process; variants: parametrize arguments that are treatments "
    "compared side by side, not cases, e.g. ['model']; adaptive: num_executions is each "
    "case's maximum, and executions stop once no gate's verdict can change"
)
_KNOWN_ARGS = ("num_executions", "name", "gates", "concurrency", "variants", "adaptive")
# An execution's parameter id, exec-N, possibly joined by "-" with the ids of other parameters.
_EXECUTION_ID = re.compile(r"\[(?:[^\]]*-)?exec-(\d+)(?:-[^\]]*)?\]$")

F = TypeVar("F", bound=Callable[..., Any])


class ExperimentItem(NamedTuple):
    """What the plugin knows about one collected execution."""

    name: str
    num_executions: int
    execution_index: int
    #: The parametrize id without ``exec-N``; ``None`` when the test has no other parameters.
    case_id: str | None = None
    #: The experiment's gates as declared in code.
    gates: tuple[str, ...] = ()
    #: The executions the code declares, when --llm-num-executions runs another number.
    declared_executions: int | None = None
    #: ``concurrency=`` as the code declares it (``None``: not declared).
    concurrency: int | None = None
    #: The variant this execution belongs to (``model=gpt-4o``), ``None`` without variants;
    #: the experiment's variants in order; what a variant of the command line changes.
    variant: str | None = None
    variants: tuple[str, ...] = ()
    overrides: dict[str, Any] | None = None
    #: Its executions stop once their verdicts are settled; the cases of its variant that
    #: the session runs (a round of the adaptive tests has one execution of each).
    adaptive: bool = False
    cases: int = 1


def experiment(
    num_executions: int | Callable[..., Any] = 1,
    name: str | None = None,
    gates: Any = None,
    concurrency: int | None = None,
    variants: Any = None,
    adaptive: bool | None = None,
    **unknown: Any,
) -> Any:
    """Run the decorated test ``num_executions`` times as the experiment ``name``.

    The name defaults to the function's name without ``test_``. ``gates`` are thresholds on
    the experiment's aggregates that decide the session's verdict, e.g.
    ``["name_length: mean >= 5", "pass_rate >= 0.9"]``. ``concurrency`` keeps that many of
    its executions in flight at once in each process (``--llm-concurrency`` overrides it).
    ``variants`` names parametrize arguments that are treatments, not cases: each value is a
    variant, and variants are compared side by side, each with its own statistics and gates.
    ``adaptive=True`` makes ``num_executions`` each case's maximum: executions that can no
    longer change a gate's verdict are skipped (``--llm-adaptive`` for every experiment;
    ``adaptive=False`` keeps this one fixed).
    This is the same as ``@pytest.mark.experiment(...)``; both are checked at collection.
    """
    if (
        callable(num_executions)
        and name is None
        and gates is None
        and concurrency is None
        and variants is None
        and adaptive is None
        and not unknown
    ):
        return pytest.mark.experiment(num_executions)  # bare @experiment
    kwargs: dict[str, Any] = {"num_executions": num_executions, **unknown}
    if name is not None:
        kwargs["name"] = name
    if gates is not None:
        kwargs["gates"] = gates
    if concurrency is not None:
        kwargs["concurrency"] = concurrency
    if variants is not None:
        kwargs["variants"] = variants
    if adaptive is not None:
        kwargs["adaptive"] = adaptive
    return pytest.mark.experiment(**kwargs)


class _Spec(NamedTuple):
    name: str
    num_executions: int
    gates: tuple[str, ...]
    #: What the code declares, when --llm-num-executions runs another number.
    declared: int | None = None
    concurrency: int | None = None
    variants: tuple[str, ...] = ()
    #: ``adaptive=`` as declared (``None``: as the session says).
    adaptive: bool | None = None


def _spec(definition: pytest.Item | Any, override: int | None) -> _Spec | None:
    """The experiment name, execution count and gates of a test, or ``None``."""
    mark = definition.get_closest_marker("experiment")
    if mark is None:
        return None
    return _mark_spec(mark, definition.name.split("[")[0], override)


def _mark_spec(mark: pytest.Mark, test: str, override: int | None) -> _Spec:
    """What an ``experiment`` mark on the test function ``test`` declares, checked."""
    from .._verdict.gates import check_gates
    from ..errors import GateError

    where = f"@experiment on {test}"
    if len(mark.args) > 1:
        raise ExperimentError(
            f"{where}: takes at most one positional argument (num_executions), got {mark.args!r}"
        )
    unknown = sorted(set(mark.kwargs) - set(_KNOWN_ARGS))
    if unknown:
        raise ExperimentError(
            f"{where}: unknown argument(s) {', '.join(unknown)}; it takes {', '.join(_KNOWN_ARGS)}"
        )
    if mark.args and "num_executions" in mark.kwargs:
        raise ExperimentError(f"{where}: num_executions is given twice")
    count = mark.args[0] if mark.args else mark.kwargs.get("num_executions", 1)
    check_num_executions(count, where)
    default_name = test.removeprefix("test_") or test
    name = mark.kwargs.get("name")
    name = check_experiment_name(default_name if name is None else name, where)
    try:
        gates = check_gates(mark.kwargs.get("gates", ()), source="code", where=where)
    except GateError as exc:
        raise ExperimentError(str(exc)) from None
    concurrency = mark.kwargs.get("concurrency")
    if concurrency is not None:
        check_concurrency(concurrency, where)
    adaptive = mark.kwargs.get("adaptive")
    if adaptive is not None and not isinstance(adaptive, bool):
        raise ExperimentError(f"{where}: adaptive must be True or False, got {adaptive!r}")
    return _Spec(
        name,
        override if override is not None else count,
        tuple(g.text for g in gates),
        count if override is not None and override != count else None,
        concurrency,
        _check_variants(mark.kwargs.get("variants", ()), where),
        adaptive,
    )


def _check_variants(variants: Any, where: str) -> tuple[str, ...]:
    """``variants=`` as declared: a list of distinct argument names."""
    example = "e.g. variants=['model']"
    if isinstance(variants, str) or not isinstance(variants, list | tuple):
        raise ExperimentError(
            f"{where}: variants must be a list of parametrize argument names, {example}; got "
            f"{variants!r}"
        )
    for name in variants:
        if not isinstance(name, str) or not name.isidentifier():
            raise ExperimentError(
                f"{where}: variants names parametrize arguments, {example}; {name!r} is not an "
                "argument name"
            )
    if len(set(variants)) != len(variants):
        raise ExperimentError(f"{where}: variants names an argument twice: {list(variants)!r}")
    return tuple(variants)


def _scalar(name: str, value: Any, index: int) -> str:
    """A parameter value as a variant or case names it: the value itself when it is a plain
    scalar (``model=gpt-4o``), else the argument and its position (``config1``)."""
    if value is None or isinstance(value, str | int | float | bool):
        return f"{name}={value}"
    return f"{name}={name}{index}"


def _variant_of(
    item: pytest.Item, callspec: Any, spec: _Spec, sweep: tuple[dict[str, Any], ...]
) -> tuple[str | None, dict[str, Any] | None, str | None, tuple[int, ...]]:
    """The item's variant, what the command line's variant changes, its case, and the
    variant's place in the declared order."""
    params: dict[str, Any] = callspec.params
    indices: dict[str, int] = callspec.indices
    clash = [name for name in spec.variants if any(name in overrides for overrides in sweep)]
    if clash:
        raise ExperimentError(
            f"@experiment on {item.name.split('[')[0]} declares the variants "
            f"{', '.join(clash)} in code, and the command line sweeps "
            f"{', '.join(clash)} too (--llm-{clash[0]} given more than once): run the sweep "
            "without this experiment (--llm-experiment NAME selects the others), or give one value"
        )
    missing = [name for name in spec.variants if name not in params]
    if missing:
        arguments = [p for p in params if p not in (EXEC_FIXTURE, VARIANT_FIXTURE)]
        raise ExperimentError(
            f"@experiment on {item.name.split('[')[0]}: variants names {', '.join(missing)}, "
            f"which {'is' if len(missing) == 1 else 'are'} not parametrize arguments of the "
            f"test; its arguments: {', '.join(arguments) or 'none'} (parametrize the test with "
            "@pytest.mark.parametrize first)"
        )
    parts = [_scalar(name, params[name], indices[name]) for name in spec.variants]
    order = tuple(indices[name] for name in spec.variants)
    overrides = None
    if VARIANT_FIXTURE in params:
        from .variants import sweep_label

        overrides = sweep[int(params[VARIANT_FIXTURE])]
        parts.append(sweep_label(overrides))
        order += (int(params[VARIANT_FIXTURE]),)
    if not parts:
        return None, None, case_id(item.nodeid), ()
    if not spec.variants:
        # Only the command line's variants: the case keeps the id pytest gives it, as in a
        # session without them, so that baselines pair the same cases.
        return parts[0], overrides, case_id(item.nodeid, drop=parts[0]), order
    cases = [
        _scalar(name, value, indices[name])
        for name, value in params.items()
        if name not in spec.variants and name not in (EXEC_FIXTURE, VARIANT_FIXTURE)
    ]
    return ",".join(parts), overrides, ",".join(cases) or None, order


def check_cli_gates(items: list[pytest.Item], gates: tuple[Gate, ...]) -> None:
    """Refuse, before any run, a ``--llm-gate`` naming an experiment that was not collected
    or a metric that no ``@metric`` defines (the names typed wrong)."""
    experiments = {info.name for item in items if (info := item.stash.get(ITEM_KEY, None))}
    if not experiments or not gates:
        return
    from difflib import get_close_matches

    from .._run.metrics import DEFINED as defined
    from .._verdict.gates import RUNS

    for gate in gates:
        for kind, name, known in (
            ("experiment", gate.experiment, experiments),
            ("metric", None if gate.metric == RUNS else gate.metric, defined),
        ):
            if name is None or name in known:
                continue
            close = get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise pytest.UsageError(
                f"--llm-gate {gate.text!r}: no {kind} named {name!r} "
                f"{'was collected' if kind == 'experiment' else 'is defined by a @metric'}; "
                f"{hint}known: {', '.join(sorted(known)) or 'none'}"
            )


def case_id(nodeid: str, *, drop: str | None = None) -> str | None:
    """The case of an execution: its parametrize id without ``exec-N`` (``None`` if none),
    and without the id ``drop`` (a variant of the command line)."""
    test = nodeid.rsplit("::", 1)[-1]
    if not test.endswith("]") or "[" not in test:
        return None
    ids = test[test.index("[") + 1 : -1]
    rest = re.sub(r"(?:^|-)exec-\d+(?=-|$)", "", ids, count=1).strip("-")
    if drop:
        rest = re.sub(rf"(?:^|-){re.escape(drop)}(?=-|$)", "", rest, count=1).strip("-")
    return rest or None


def execution_index(nodeid: str) -> int | None:
    """The execution index in an experiment item's node id, or ``None`` if it is not one (for
    the xdist controller, which sees ids but no items)."""
    match = _EXECUTION_ID.search(nodeid)
    return None if match is None else int(match.group(1))


def is_execution_id(nodeid: str) -> bool:
    """Whether a node id is one of an experiment's executions."""
    return execution_index(nodeid) is not None


def generate_executions(
    metafunc: pytest.Metafunc, override: int | None, sweep: tuple[dict[str, Any], ...] = ()
) -> None:
    """Parametrize an experiment test over its executions, ids ``exec-0`` ... ``exec-N-1``,
    and over the command line's variants (``model=A``), if any."""
    try:
        spec = _spec(metafunc.definition, override)
    except ExperimentError as exc:
        raise pytest.Collector.CollectError(str(exc)) from None
    if spec is None:
        return
    count = spec.num_executions
    if EXEC_FIXTURE not in metafunc.fixturenames:
        metafunc.fixturenames.append(EXEC_FIXTURE)
    if sweep:
        from .variants import sweep_label

        if VARIANT_FIXTURE not in metafunc.fixturenames:
            metafunc.fixturenames.append(VARIANT_FIXTURE)
        metafunc.parametrize(
            VARIANT_FIXTURE,
            range(len(sweep)),
            indirect=True,
            ids=[sweep_label(overrides) for overrides in sweep],
        )
    metafunc.parametrize(
        EXEC_FIXTURE, range(count), indirect=True, ids=[f"exec-{i}" for i in range(count)]
    )


def select_experiments(
    config: pytest.Config,
    items: list[pytest.Item],
    wanted: tuple[str, ...],
    override: int | None,
    sweep: tuple[dict[str, Any], ...] = (),
    adaptive: bool = False,
) -> None:
    """Tag experiment items, check their names, and keep only the ``wanted`` experiments."""
    functions: dict[str, set[str]] = {}
    # The executions of a test share its mark: it is checked once, not once per execution.
    specs: dict[tuple[int, str], tuple[pytest.Mark, _Spec]] = {}
    orders: dict[str, dict[str, tuple[int, ...]]] = {}
    errors: dict[str, str] = {}
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or EXEC_FIXTURE not in callspec.params:
            continue
        mark = item.get_closest_marker("experiment")
        assert mark is not None, item.nodeid
        test = item.name.split("[")[0]
        # Keyed by identity, the mark kept with its spec so that its id is not reused.
        cached = specs.get((id(mark), test))
        if cached is None:
            cached = specs[(id(mark), test)] = (mark, _mark_spec(mark, test, override))
        spec = cached[1]
        name = spec.name
        functions.setdefault(name, set()).add(item.nodeid.split("[")[0])
        try:
            variant, overrides, case, order = _variant_of(item, callspec, spec, sweep)
        except ExperimentError as exc:
            # An error only if the experiment is selected (a sweep that names others).
            errors.setdefault(name, str(exc))
            continue
        if variant is not None:
            orders.setdefault(name, {}).setdefault(variant, order)
        item.stash[ITEM_KEY] = ExperimentItem(
            name=name,
            num_executions=spec.num_executions,
            execution_index=int(callspec.params[EXEC_FIXTURE]),
            case_id=case,
            gates=spec.gates,
            declared_executions=spec.declared,
            concurrency=spec.concurrency,
            variant=variant,
            overrides=overrides,
            adaptive=adaptive if spec.adaptive is None else spec.adaptive,
        )
    # Each execution knows its experiment's variants in the declared order (the first is
    # the reference the others are compared with), whatever order the items run in.
    for item in items:
        info = item.stash.get(ITEM_KEY, None)
        if info is not None and info.variant is not None:
            declared = orders[info.name]
            item.stash[ITEM_KEY] = info._replace(
                variants=tuple(sorted(declared, key=declared.__getitem__))
            )
    for name, tests in sorted(functions.items()):
        if len(tests) > 1:
            raise pytest.UsageError(
                f"experiment name {name!r} is used by {' and '.join(sorted(tests))}; give "
                "each a distinct name with @experiment(name=...)"
            )
    for name, error in errors.items():
        if not wanted or name in wanted:
            raise pytest.UsageError(error)
    if not wanted:
        return
    unmatched = [name for name in wanted if name not in functions]
    if unmatched:
        known = ", ".join(sorted(functions)) or "none were collected"
        raise pytest.UsageError(
            f"--llm-experiment {', '.join(unmatched)}: no such experiment; "
            f"known experiments: {known}"
        )
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        info = item.stash.get(ITEM_KEY, None)
        (keep if info is not None and info.name in wanted else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def order_adaptive(items: list[pytest.Item]) -> None:
    """Adaptive experiments run round by round: every case's execution 0, then every case's
    execution 1... (a decision waits for a round to be complete, so running one case's
    executions first would decide nothing early). Each execution learns how many cases its
    variant runs. Other items keep their places; the order within a round is left as it was
    (pytest-randomly's, say)."""
    places = [
        i
        for i, item in enumerate(items)
        if getattr(item.stash.get(ITEM_KEY, None), "adaptive", False)
    ]
    if not places:
        return
    cases: dict[tuple[str, str | None], set[str | None]] = {}
    for i in places:
        info = items[i].stash[ITEM_KEY]
        cases.setdefault((info.name, info.variant), set()).add(info.case_id)
    ordered = sorted(
        (items[i] for i in places), key=lambda item: item.stash[ITEM_KEY].execution_index
    )
    for i, item in zip(places, ordered, strict=True):
        info = item.stash[ITEM_KEY]
        item.stash[ITEM_KEY] = info._replace(cases=len(cases[(info.name, info.variant)]))
        items[i] = item
