"""Variants side by side, as text: each metric's mean and interval per variant, each variant
compared with the first, what each costs, and the cheapest that passes every gate.

The terminal summary, ``llmexp show`` and the Markdown report all say it this way.
"""

from __future__ import annotations

from typing import Any

from .._verdict.cost import format_cost
from .._verdict.stats import interval_from
from .textview import num, table

__all__ = ["cheapest_line", "cost_line", "matrix_lines", "matrix_rows", "versus_rows"]


def _cell(stats: dict[str, Any] | None) -> str:
    """A metric of one variant: its mean and 95% interval (``-`` when it recorded none)."""
    if not stats:
        return "-"
    low, high = interval_from(stats["n"], stats["mean"], stats["std"], stats["kind"])
    if low is None or high is None:
        return f"{num(stats['mean'])} (n={stats['n']})"
    return f"{num(stats['mean'])} [{num(low)}, {num(high)}]"


def _runs(runs: dict[str, int]) -> str:
    text = f"{runs.get('passed', 0)}/{runs.get('failed', 0)}/{runs.get('error', 0)}"
    return text + (f" +{runs['skipped']} skipped" if runs.get("skipped") else "")


def matrix_rows(variants: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the side-by-side table: metrics, then runs and cost per run."""
    names = list(variants)
    metrics = sorted({m for v in variants.values() for m in v.get("metrics", {})})
    rows = [[m, *(_cell(variants[v].get("metrics", {}).get(m)) for v in names)] for m in metrics]
    rows.append(["runs (pass/fail/err)", *(_runs(variants[v]["runs"]) for v in names)])
    if any("cost" in variants[v] for v in names):
        rows.append(
            [
                "cost per run",
                *(_per_run(variants[v].get("cost")) for v in names),
            ]
        )
    return ["metric (mean [95% CI])", *names], rows


def _per_run(cost: dict[str, Any] | None) -> str:
    if cost is None or cost.get("per_run") is None:
        return "no price"
    text = format_cost(cost["per_run"])
    return text + (" (some: no price)" if cost.get("unpriced_runs") else "")


def matrix_lines(variants: dict[str, dict[str, Any]], indent: str = "  ") -> list[str]:
    header, rows = matrix_rows(variants)
    return [indent + line for line in table(header, rows, shrink=0)]


def versus_rows(reference: str, variant: str, compared: list[dict[str, Any]]) -> list[list[str]]:
    """Rows of one variant compared with the first: metric, means, difference, interval,
    verdict."""
    rows = []
    for m in compared:
        ci = "-" if m["ci_low"] is None else f"[{m['ci_low']:+.3g}, {m['ci_high']:+.3g}]"
        rows.append(
            [
                m["metric"],
                num(m["baseline_mean"]),
                num(m["current_mean"]),
                num(m["diff"], signed=True),
                ci,
                m["verdict"],
            ]
        )
    return rows


def versus_header(reference: str, variant: str) -> list[str]:
    """The line above the rows names both variants; the columns say which is which."""
    return ["metric", "first", "this", "diff", "95% CI", "verdict"]


def cost_line(cost: dict[str, Any] | None) -> str | None:
    """What an experiment's runs cost in all, the judges' calls apart."""
    if cost is None or not cost.get("priced_runs"):
        return None
    text = f"cost: {format_cost(cost['total'])} for {cost['priced_runs']} priced run(s)"
    if cost.get("judges"):
        text += f", judges {format_cost(cost['judges'])} more"
    if cost.get("unpriced_runs"):
        text += f"; {cost['unpriced_runs']} run(s) had no price"
    return text


def cheapest_line(cheapest: str | None, note: str | None) -> str | None:
    """Which variant to ship on cost: the cheapest that passes every gate."""
    if note is None:
        return None
    if cheapest is None:
        return f"cheapest variant passing every gate: none ({note})"
    return f"cheapest variant passing every gate: {cheapest} ({note})"
