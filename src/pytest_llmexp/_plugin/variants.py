"""Variants of the command line, judges, prices and CI annotations: their options checked.

``--llm-model A --llm-model B`` (and ``--llm-temperature``) runs every selected experiment
once per value, each a variant (``model=A``); a bot called inside a ``@metric`` is a judge
and keeps its own model (or ``--llm-judge-model``). ``llm_prices`` gives each run a cost.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest

__all__ = ["sweep_label", "variant_options"]

#: What ``--llm-github`` takes.
_SWITCH = {"on": True, "off": False}


def _bad(where: str, value: str, expected: str) -> pytest.UsageError:
    return pytest.UsageError(f"{where}: expected {expected}, got {value!r}")


def _ini(config: pytest.Config, name: str) -> str | None:
    value = config.getini(name)
    return value.strip() if isinstance(value, str) and value.strip() else None


def _temperature(raw: str, where: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 2:
        raise _bad(where, raw, "a temperature from 0 to 2, e.g. 0.7")
    return value


def _distinct(values: list[str], where: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise pytest.UsageError(f"{where} {value} is given twice; give each variant once")
        seen.add(value)


def sweep_label(overrides: dict[str, Any]) -> str:
    """A variant of the command line as stored and shown: ``model=A,temperature=0.7``."""
    return ",".join(
        f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in overrides.items()
    )


def variant_options(config: pytest.Config, models: list[str]) -> dict[str, Any]:
    """Temperatures, the sweep, the judges' model, prices, the cost cap, gated variants and
    GitHub annotations, checked; ``models`` are the ``--llm-model`` values given."""
    from .._verdict.cost import PriceError, parse_prices

    _distinct(models, "--llm-model")
    raw_temperatures = list(config.getoption("llm_temperature") or [])
    where = "--llm-temperature"
    if not raw_temperatures and (ini := _ini(config, "llm_temperature")) is not None:
        raw_temperatures, where = [ini], "ini llm_temperature"
    temperatures = [_temperature(raw, where) for raw in raw_temperatures]
    _distinct([f"{t:g}" for t in temperatures], "--llm-temperature")
    axes: list[list[tuple[str, Any]]] = []
    if len(models) > 1:
        axes.append([("model", m) for m in models])
    if len(temperatures) > 1:
        axes.append([("temperature", t) for t in temperatures])
    sweep = tuple(dict(combination) for combination in itertools.product(*axes)) if axes else ()

    judge_model = config.getoption("llm_judge_model") or _ini(config, "llm_judge_model")
    if judge_model is not None and not judge_model.strip():
        raise _bad("--llm-judge-model", judge_model, "a model name")
    try:
        prices = parse_prices(config.getini("llm_prices") or [])
    except PriceError as exc:
        raise pytest.UsageError(f"ini llm_prices: {exc}") from None

    raw_cost = config.getoption("llm_max_cost")
    cost_where = "--llm-max-cost"
    if raw_cost is None:
        raw_cost, cost_where = _ini(config, "llm_max_cost"), "ini llm_max_cost"
    max_cost = None
    if raw_cost is not None:
        try:
            max_cost = float(raw_cost)
        except ValueError:
            max_cost = math.nan
        if not (math.isfinite(max_cost) and max_cost > 0):
            raise _bad(cost_where, raw_cost, "a positive number of US dollars, e.g. 5")
        if not prices:
            raise pytest.UsageError(
                f"{cost_where} {raw_cost} caps what calls cost, but no model has a price: add "
                "llm_prices to the ini file, one line per model, e.g. "
                "'gpt-4o-mini = 0.15 / 0.60' (US dollars per million tokens, input / output)"
            )

    github = config.getoption("llm_github")
    github_where = "--llm-github"
    if github is None:
        github, github_where = _ini(config, "llm_github"), "ini llm_github"
    if github is not None and github.lower() not in _SWITCH:
        raise _bad(github_where, github, "on or off")

    gate_variants = tuple(config.getoption("llm_gate_variant") or ())
    for variant in gate_variants:
        if "=" not in variant:
            raise _bad(
                "--llm-gate-variant", variant, "a variant as the summary names it, e.g. model=A"
            )
    return {
        "temperature": temperatures[0] if len(temperatures) == 1 else None,
        "sweep": sweep,
        "judge_model": judge_model.strip() if judge_model else None,
        "prices": prices,
        "max_cost": max_cost,
        "github": github is None or _SWITCH[github.lower()],
        "gate_variants": gate_variants,
    }
