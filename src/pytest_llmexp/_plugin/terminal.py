"""The "LLM experiments" section of the terminal summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .._verdict.verdicts import ExperimentVerdict, SessionVerdict

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
    verdict: SessionVerdict | None = None,
) -> None:
    """Per experiment: runs by status, per metric n, mean, std, min, max, then its gates,
    unstable metrics and comparison."""
    terminal.write_sep("=", "LLM experiments")
    for name, summary in summaries.items():
        judged = verdict.experiments.get(name) if verdict is not None else None
        _write_experiment(terminal, name, summary)
        if judged is not None:
            for line, color in verdict_lines(judged):
                terminal.write_line(line, **({color: True} if color else {}))
    terminal.write_line(f"database: {db_path} (session {session_id})")


def _write_experiment(
    terminal: pytest.TerminalReporter, name: str, summary: dict[str, Any]
) -> None:
    terminal.write_line(_runs_line(name, summary["runs"]))
    errors = summary.get("errors")
    if errors:
        kinds = ", ".join(f"{count} {kind}" for kind, count in errors.items())
        terminal.write_line(f"  errored (not in the metrics): {kinds}")
    metrics = summary["metrics"]
    if not metrics:
        terminal.write_line("  no metric recorded")
        return
    rows = [("metric", *_COLUMNS)]
    rows += [(metric, *(_number(stats[c]) for c in _COLUMNS)) for metric, stats in metrics.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        terminal.write_line("  " + "  ".join(cells))


def verdict_lines(verdict: ExperimentVerdict) -> list[tuple[str, str | None]]:
    """Terminal lines of one experiment's gates, tolerance, instability and comparison, each
    with its color (``None``, "green", "yellow" or "red")."""
    lines: list[tuple[str, str | None]] = []
    if verdict.not_evaluated:
        lines.append((f"  gates not evaluated: {verdict.not_evaluated}", "yellow"))
    for result in verdict.gates:
        label = {"passed": "passed", "failed": "FAILED", "error": "ERROR"}[result.verdict]
        text = f"  gate {label:6} {result.gate} ({result.gate.source})"
        if result.observed is not None:
            text += f": observed {result.observed:.4g}"
        if result.detail:
            text += f"; {result.detail}" if result.observed is None else f" ({result.detail})"
        lines.append((text, "green" if result.passed else "red"))
    if verdict.tolerated:
        lines.append(
            (
                f"  {verdict.failing_runs} failing run(s) tolerated: the gates on runs passed, "
                "so they do not fail the session",
                "yellow",
            )
        )
    for found in verdict.unstable:
        if found["kind"] == "threshold":
            which = (
                "its executions fall"
                if found["of_cases"] == 1
                else f"{len(found['cases'])} of {found['of_cases']} cases have executions"
            )
            text = (
                f"  unstable: {found['metric']}: {which} on both sides of the threshold of "
                f"{' and '.join(found['gates'])}"
            )
        else:
            text = (
                f"  unstable: {found['metric']} (an LLM judge) varies across executions of "
                f"one case: mean within-case std {found['spread']:.3g}"
            )
        lines.append((text, "yellow"))
    if verdict.no_comparison:
        lines.append((f"  no comparison: {verdict.no_comparison}", "yellow"))
    if verdict.comparison is not None:
        lines += _comparison_lines(verdict.comparison)
    return lines


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4g}"


def _comparison_lines(comparison: dict[str, Any]) -> list[tuple[str, str | None]]:
    lines: list[tuple[str, str | None]] = [
        (
            f"  compared with session {comparison['baseline_session'][:12]} "
            f"({comparison['baseline_started_at'][:19]}, {comparison['baseline_status']}):",
            None,
        )
    ]
    rows = [("metric", "baseline", "current", "diff", "95% CI", "verdict")]
    for m in comparison["metrics"]:
        ci = "-" if m["ci_low"] is None else f"[{m['ci_low']:+.3g}, {m['ci_high']:+.3g}]"
        rows.append(
            (
                m["metric"],
                _number(m["baseline_mean"]),
                _number(m["current_mean"]),
                _signed(m["diff"]),
                ci,
                f"{m['verdict']} ({m['better']} is better, over {m['unit']})",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    colors = {"improved": "green", "regressed": "red"}
    for index, row in enumerate(rows):
        text = "    " + "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        )
        verdict = comparison["metrics"][index - 1]["verdict"] if index else None
        lines.append((text.rstrip(), colors.get(verdict or "")))
    for change in comparison["prompts"]:
        lines.append(
            (
                f"    prompt {change['prompt']} changed: {', '.join(change['from']) or 'new'} -> "
                f"{', '.join(change['to']) or 'gone'}",
                "yellow",
            )
        )
        for diff_line in change.get("diff", "").splitlines():
            lines.append(("      " + diff_line, None))
    for change in comparison["bots"]:
        lines.append(
            (
                f"    bot {change['setting']} changed: {', '.join(change['from']) or '-'} -> "
                f"{', '.join(change['to']) or '-'}",
                "yellow",
            )
        )
    return lines
