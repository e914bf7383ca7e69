"""The "LLM experiments" section of the terminal summary."""

from __future__ import annotations

from typing import Any

import pytest

__all__ = ["write_summary"]

_COLUMNS = ("n", "mean", "std", "min", "max")


def _number(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _runs_line(name: str, runs: dict[str, int]) -> str:
    total = sum(runs.values())
    parts = [f"{runs.get('passed', 0)} passed", f"{runs.get('failed', 0)} failed"]
    parts.append(f"{runs.get('error', 0)} errors")
    for status in ("skipped", "crashed"):
        if runs.get(status):
            parts.append(f"{runs[status]} {status}")
    return f"{name}: {total} run{'s' if total != 1 else ''} ({', '.join(parts)})"


def write_summary(
    terminal: pytest.TerminalReporter,
    summaries: dict[str, dict[str, Any]],
    db_path: str,
    session_id: str,
) -> None:
    """Per experiment: runs by status, then per metric n, mean, std, min, max."""
    terminal.write_sep("=", "LLM experiments")
    for name, summary in summaries.items():
        terminal.write_line(_runs_line(name, summary["runs"]))
        errors = summary.get("errors")
        if errors:
            kinds = ", ".join(f"{count} {kind}" for kind, count in errors.items())
            terminal.write_line(f"  errored (not in the metrics): {kinds}")
        metrics = summary["metrics"]
        if not metrics:
            terminal.write_line("  no metric recorded")
            continue
        rows = [("metric", *_COLUMNS)]
        rows += [
            (metric, *(_number(stats[c]) for c in _COLUMNS)) for metric, stats in metrics.items()
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            terminal.write_line("  " + "  ".join(cells))
    terminal.write_line(f"database: {db_path} (session {session_id})")
