"""What runs cost: prices per model, a run's cost from its calls' tokens, and the cheapest
variant that passes every gate.

Prices are US dollars per million tokens, input and output, one line per model
(``gpt-4o-mini = 0.15 / 0.60``); a model written with ``*`` prices every model it matches
(``gpt-4o-mini-* = 0.15 / 0.60``). A cost is ``None``, never $0, when it is not known: a
model with no price, or a reply whose usage the endpoint did not report.

Stdlib only: the spend guard reads it in every process that runs experiments.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

__all__ = [
    "PRICES_EXAMPLE",
    "Price",
    "PriceError",
    "call_cost",
    "cheapest_passing",
    "format_cost",
    "known_cost",
    "parse_prices",
    "price_of",
    "run_costs",
]

PRICES_EXAMPLE = "gpt-4o-mini = 0.15 / 0.60"
_LINE = re.compile(r"^\s*(?P<model>[^=]+?)\s*=\s*(?P<input>[^/]+?)\s*/\s*(?P<output>\S+)\s*$")


class PriceError(ValueError):
    """A price line that does not parse (the plugin turns it into a usage error)."""


class Price(NamedTuple):
    """US dollars per million tokens."""

    input: float
    output: float


def parse_prices(lines: Iterable[str]) -> dict[str, Price]:
    """The prices of ``MODEL = INPUT / OUTPUT`` lines (blank lines and ``#`` comments skipped)."""
    prices: dict[str, Price] = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.match(line)
        if match is None:
            raise PriceError(
                f"{raw.strip()!r}: expected MODEL = INPUT / OUTPUT in US dollars per million "
                f"tokens, e.g. {PRICES_EXAMPLE!r}"
            )
        model = match["model"]
        amounts = []
        for which in ("input", "output"):
            try:
                amount = float(match[which])
            except ValueError:
                amount = math.nan
            if not (math.isfinite(amount) and amount >= 0):
                raise PriceError(
                    f"{raw.strip()!r}: the {which} price {match[which]!r} is not a number of US "
                    f"dollars >= 0 per million tokens, e.g. {PRICES_EXAMPLE!r}"
                )
            amounts.append(amount)
        if model in prices:
            raise PriceError(f"{raw.strip()!r}: {model!r} is priced twice; keep one line")
        prices[model] = Price(*amounts)
    return prices


def price_of(prices: Mapping[str, Price], model: str) -> Price | None:
    """The price of ``model``: its own line, else the first pattern that matches it."""
    found = prices.get(model)
    if found is not None:
        return found
    for pattern, price in prices.items():
        if "*" in pattern and fnmatchcase(model, pattern):
            return price
    return None


def call_cost(
    prices: Mapping[str, Price],
    model: str,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    *,
    failed: bool = False,
) -> float | None:
    """What one call cost, or ``None`` if unknown (no price; a reply with no usage). A
    failed call that reports no usage is counted as nothing."""
    price = price_of(prices, model)
    if price is None:
        return None
    if prompt_tokens is None and completion_tokens is None:
        return 0.0 if failed else None
    return ((prompt_tokens or 0) * price.input + (completion_tokens or 0) * price.output) / 1e6


def _cost_of(prices: Mapping[str, Price], call: Any) -> float | None:
    """What one recorded call (``model_name``, token counts, ``error``) cost, if known."""
    return call_cost(
        prices,
        call.model_name,
        call.prompt_tokens,
        call.completion_tokens,
        failed=call.error is not None,
    )


def run_costs(
    prices: Mapping[str, Price], calls: Iterable[Any]
) -> tuple[float | None, float | None]:
    """A run's cost and its judges' cost, from calls with ``model_name``, token counts,
    ``error`` and ``judge``; each ``None`` when some call of it has no known cost, or no
    prices are set."""
    if not prices:
        return None, None
    totals: dict[bool, float | None] = {False: 0.0, True: 0.0}
    for call in calls:
        cost = _cost_of(prices, call)
        judge = bool(call.judge)
        current = totals[judge]
        totals[judge] = None if cost is None or current is None else current + cost
    return totals[False], totals[True]


def known_cost(prices: Mapping[str, Price], calls: Iterable[Any]) -> float:
    """What ``calls`` cost, judges' included, counting only the calls whose cost is known
    (the spend guard's measure: it cannot count what it cannot price)."""
    return sum(cost for call in calls if (cost := _cost_of(prices, call)) is not None)


def format_cost(dollars: float | None, *, unknown: str = "no price") -> str:
    """``$0.0123``, with enough digits for small amounts; ``unknown`` for ``None``."""
    if dollars is None:
        return unknown
    if dollars == 0:
        return "$0"
    if dollars >= 100:
        return f"${dollars:,.0f}"
    if dollars >= 1:
        return f"${dollars:,.2f}"
    # Three significant digits, never in exponent form: $0.0104, $0.00000465.
    digits = 2 - math.floor(math.log10(dollars))
    return f"${dollars:.{digits}f}"


def cheapest_passing(
    variants: Iterable[tuple[str, bool | None, float | None]], gated: bool
) -> tuple[str | None, str]:
    """Of ``(variant, gates passed, cost per run)``, the cheapest whose gates all pass (any,
    when there are no gates), and what to say of it: its cost, or why there is none."""
    rows = list(variants)
    passing = [row for row in rows if row[1] or not gated]
    if not passing:
        return None, "no variant passes every gate"
    priced = [row for row in passing if row[2] is not None]
    unpriced = ", ".join(row[0] for row in passing if row[2] is None)
    if not priced:
        return None, f"no passing variant has a price: {unpriced}"
    name, _, per_run = min(priced, key=lambda row: row[2] or 0.0)
    note = f"{format_cost(per_run)} per run"
    note += f"; not ranked, no price: {unpriced}" if unpriced else ""
    note += "" if gated else "; no gates, so every variant passes"
    return name, note
