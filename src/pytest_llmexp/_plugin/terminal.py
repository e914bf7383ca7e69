"""What a session prints at its end: the "LLM experiments" section (runs and metrics per
experiment, their gates and comparisons), the verdict's closing lines, and what went wrong
(killed sessions recovered, errored runs, the spend guard, results that could not be
stored). Everything the plugin writes to the terminal summary is here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .._store.recovery import Ingested
    from .._verdict.health import Health
    from .._verdict.verdicts import ExperimentVerdict, SessionVerdict
    from .conclusion import Conclusion
    from .writer import Writer

__all__ = [
    "conclusion_lines",
    "health_lines",
    "recovery_lines",
    "storage_lines",
    "verdict_lines",
    "write_session_end",
    "write_summary",
]

_COLUMNS = ("n", "mean", "std", "min", "max")


def _number(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _runs_line(name: str, runs: dict[str, int]) -> str:
    reruns = runs.get("rerun", 0)
    total = sum(runs.values()) - reruns
    parts = [f"{runs.get('passed', 0)} passed", f"{runs.get('failed', 0)} failed"]
    parts.append(f"{runs.get('error', 0)} errors")
    for status in ("skipped", "crashed"):
        if runs.get(status):
            parts.append(f"{runs[status]} {status}")
    if reruns:
        parts.append(f"{reruns} earlier attempt{'s' if reruns != 1 else ''} rerun")
    return f"{name}: {total} run{'s' if total != 1 else ''} ({', '.join(parts)})"


def write_session_end(terminal: pytest.TerminalReporter, writer: Writer) -> None:
    """The plugin's whole terminal summary, from what the session's writer holds."""
    if writer.usage_error is not None:
        terminal.write_line(f"ERROR: {writer.usage_error}", red=True, bold=True)
    if writer.begun:
        for line in recovery_lines(writer.recovered):
            terminal.write_line(line, yellow=True)
        if writer.summaries:
            write_summary(
                terminal,
                writer.summaries,
                str(writer.settings.db_path),
                writer.session_id,
                writer.conclusion.verdict,
            )
        if writer.cache_line is not None:
            terminal.write_line(writer.cache_line)
        for line, red in health_lines(writer.health):
            terminal.write_line(line, red=red, yellow=not red, bold=red)
        if writer.adaptive_failure is not None:
            terminal.write_line(
                f"warning: adaptive decisions stopped, so every later execution ran: the "
                f"decision file could not be written ({writer.adaptive_failure})",
                yellow=True,
            )
    for line, color in [*conclusion_lines(writer.conclusion), *storage_lines(writer)]:
        terminal.write_line(line, **({color: True} if color else {}))


def storage_lines(writer: Writer) -> list[tuple[str, str | None]]:
    """What could not be spooled or stored, and where it is: every count is of what was
    actually written (or not)."""
    intake = writer.intake
    where = writer.settings.db_path
    lines: list[tuple[str, str | None]] = []
    if intake.unspooled:
        count = intake.unspooled
        stored = intake.unspooled_stored
        line = (
            f"{count} result(s) could not be spooled (last: {intake.spool_errors[-1]}); "
            f"{stored} of them were stored from their reports"
        )
        if stored < count:
            line += f", {count - stored} could be stored nowhere and are lost"
        lines.append((("warning: " if stored == count else "ERROR: ") + line, _red(stored < count)))
    if intake.not_started:
        lines.append(
            (
                f"ERROR: {intake.not_started} execution(s) were not started: the spool could "
                "not be written, so their results could have been kept nowhere (free space "
                "on the disk or raise the file-size limit, then run them again)",
                "red",
            )
        )
    if intake.kept:
        lines.append(
            (
                f"ERROR: {intake.kept} result(s) could not be stored in {where}; they are "
                f"kept in {writer.spool_dir} and will be stored by the next session or by "
                "`llmexp recover` once there is room",
                "red",
            )
        )
    lost = intake.lost - (intake.unspooled - intake.unspooled_stored)
    if lost > 0:
        lines.append((f"ERROR: {lost} other result(s) could not be stored and are lost", "red"))
    if writer.end_unstored:
        lines.append(
            (
                "ERROR: the session's end (its summaries and health) could not be stored; "
                + (
                    "its row says interrupted"
                    if writer.marked
                    else "nor could its status, which may still say running"
                ),
                "red",
            )
        )
    if writer.left_behind:
        lines.append(
            (
                f"warning: {len(writer.left_behind)} spool file(s) in {writer.spool_dir} could "
                "not be deleted (is the directory read-only?); everything in them is stored, "
                "so they may be deleted by hand",
                "yellow",
            )
        )
    totals = writer.rate_totals
    if totals is not None and (totals.waited or totals.throttled):
        why = (
            f"{totals.throttled} answer(s) were a rate limit, each waited out by every process"
            if totals.throttled
            else "paced by --llm-rpm/--llm-tpm"
        )
        lines.append(
            (
                f"rate limits: the session's calls waited {totals.waited:.1f} s in all ({why})",
                "yellow" if totals.throttled else None,
            )
        )
    if intake.late_calls:
        tests = sorted(set(intake.late_calls))
        lines.append(
            (
                f"warning: {len(intake.late_calls)} LLM call(s) came after their run had ended, "
                f"from threads that {', '.join(tests[:3])}{' and others' if len(tests) > 3 else ''}"
                " started and did not wait for; they are stored as calls outside any run "
                "(join the threads before the test returns)",
                "yellow",
            )
        )
    if intake.write_errors:
        trouble = intake.storage_failed or writer.end_unstored
        lines.append(
            (
                f"{'ERROR' if trouble else 'warning'}: {len(intake.write_errors)} write(s) to "
                f"{where} failed{'' if trouble else ' and succeeded when retried'} "
                f"(last: {intake.write_errors[-1]})",
                _red(trouble),
            )
        )
    return lines


def _red(red: bool) -> str:
    return "red" if red else "yellow"


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
        if "variants" in summary:
            from .._view.variantview import matrix_lines

            terminal.write_line(
                _runs_line(name, summary["runs"]) + f", {len(summary['variants'])} variants"
            )
            for line in matrix_lines(summary["variants"]):
                terminal.write_line(line)
        else:
            _write_experiment(terminal, name, summary)
        if "adaptive" in summary:
            from .._view.adaptiveview import adaptive_lines

            note = judged.adaptive_note if judged is not None else None
            for line in adaptive_lines(summary["adaptive"], note):
                terminal.write_line("  " + line, yellow=line.startswith("  every"))
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
    gating = {v.variant: v.gating for v in verdict.variants}
    for result in verdict.gates:
        label = {"passed": "passed", "failed": "FAILED", "error": "ERROR"}[result.verdict]
        text = f"  gate {label:6} {result.gate} ({result.gate.source})"
        if result.variant is not None:
            text += f" [{result.variant}" + ("" if gating[result.variant] else ", not gating") + "]"
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
        where = f" [{found['variant']}]" if found.get("variant") else ""
        if found["kind"] == "threshold":
            which = (
                "its executions fall"
                if found["of_cases"] == 1
                else f"{len(found['cases'])} of {found['of_cases']} cases have executions"
            )
            text = (
                f"  unstable{where}: {found['metric']}: {which} on both sides of the threshold "
                f"of {' and '.join(found['gates'])}"
            )
        else:
            text = (
                f"  unstable{where}: {found['metric']} (an LLM judge) varies across executions "
                f"of one case: mean within-case std {found['spread']:.3g}"
            )
        lines.append((text, "yellow"))
    if verdict.no_comparison:
        lines.append((f"  no comparison: {verdict.no_comparison}", "yellow"))
    if verdict.comparison is not None:
        lines += _comparison_lines(verdict.comparison)
    if verdict.variants:
        lines += _variant_lines(verdict)
    elif verdict.cost is not None:
        from .._view.variantview import cost_line

        spent = cost_line(verdict.cost)
        if spent:
            lines.append(("  " + spent, None))
    return lines


def _variant_lines(verdict: ExperimentVerdict) -> list[tuple[str, str | None]]:
    """Each variant compared with the first and with its baseline; cost; the cheapest."""
    from .._view.textview import table
    from .._view.variantview import cheapest_line, cost_line, versus_header, versus_rows

    lines: list[tuple[str, str | None]] = []
    first = verdict.variants[0].variant or ""
    colors = {"improved": "green", "regressed": "red"}
    for part in verdict.variants:
        if part.versus_first:
            variant = part.variant or ""
            unit = part.versus_first[0]["unit"]
            lines.append(
                (f"  {variant} compared with {first}, the first variant, over {unit}:", None)
            )
            rows = versus_rows(first, variant, part.versus_first)
            text = table(versus_header(first, variant), rows, shrink=0)
            lines.append(("    " + text[0], None))
            for row, line in zip(part.versus_first, text[1:], strict=True):
                lines.append(("    " + line, colors.get(row["verdict"])))
        if part.no_comparison:
            lines.append((f"  [{part.variant}] no comparison: {part.no_comparison}", "yellow"))
        if part.comparison is not None:
            compared = _comparison_lines(part.comparison)
            lines.append((f"  [{part.variant}]" + compared[0][0][1:], None))
            lines += compared[1:]
    spent = cost_line(verdict.cost)
    if spent:
        lines.append(("  " + spent, None))
    cheapest = cheapest_line(verdict.cheapest, verdict.cheapest_note)
    if cheapest:
        lines.append(("  " + cheapest, "green" if verdict.cheapest else "yellow"))
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
    if comparison.get("adaptive"):
        lines.append(("    " + comparison["adaptive"], "yellow"))
    rows = [("metric", "baseline", "current", "diff", "95% CI", "n (base/cur)", "verdict")]
    for m in comparison["metrics"]:
        ci = "-" if m["ci_low"] is None else f"[{m['ci_low']:+.3g}, {m['ci_high']:+.3g}]"
        changed = ", metric changed" if m.get("metric_changed") else ""
        rows.append(
            (
                m["metric"],
                _number(m["baseline_mean"]),
                _number(m["current_mean"]),
                _signed(m["diff"]),
                ci,
                f"{m['n_baseline']}/{m['n_current']}",
                f"{m['verdict']} ({m['better']} is better, over {m['unit']}{changed})",
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
    if comparison.get("metric_changes"):
        from .._view.textview import metric_changed_line

        lines += [("    " + metric_changed_line(n), "yellow") for n in comparison["metric_changes"]]
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


def conclusion_lines(conclusion: Conclusion) -> list[tuple[str, str | None]]:
    """The verdict's closing lines, each with its color."""
    lines: list[tuple[str, str | None]] = []
    if conclusion.report_note is not None:
        lines.append((f"llmexp: {conclusion.report_note}", None))
    verdict = conclusion.verdict
    if verdict is None:
        return lines + [(f"ERROR: {reason}", "red") for reason in conclusion.reasons]
    lines += [(f"ERROR: {text}", "red") for text in verdict.unmatched]
    lines += [(f"note: {text}", "yellow") for text in verdict.unused]
    judged = [v for v in verdict.experiments.values() if v.gates or v.comparison]
    if judged or verdict.unmatched:
        if conclusion.reasons:
            lines.append((f"LLM verdict: FAILED: {'; '.join(conclusion.reasons)}", "red"))
        else:
            gates = sum(len(v.gates) for v in verdict.experiments.values())
            lines.append((f"LLM verdict: passed ({gates} gate(s))", "green"))
    if conclusion.report_error is not None:
        lines.append((f"ERROR: {conclusion.report_error}", "red"))
    if conclusion.github_note is not None:
        lines.append((f"llmexp: {conclusion.github_note}", "yellow"))
    # Workflow commands, uncolored: GitHub reads a line that starts with "::".
    lines += [(command, None) for command in conclusion.annotations]
    return lines


_AUTH_ERRORS = ("AuthenticationError", "PermissionDeniedError")


def _errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in errors.items())


def health_lines(health: Health | None) -> list[tuple[str, bool]]:
    """Terminal lines about what went wrong, each with whether it is an error (red)."""
    if health is None:
        return []
    lines: list[tuple[str, bool]] = []
    auth = sum(health.errors.get(kind, 0) for kind in _AUTH_ERRORS)
    if auth:
        lines.append(
            (
                f"ERROR: the endpoint refused the credentials ({auth} run(s)); the session "
                "stopped early: check OPENAI_API_KEY and --llm-base-url",
                True,
            )
        )
    if health.over_budget:
        lines.append(
            (
                f"ERROR: infrastructure: {health.errored} of {health.runs - health.skipped} "
                f"runs errored ({health.share:.0%}, error budget {health.error_budget:.0%}): "
                f"{_errors_text(health.errors)}. The metrics of this session are not a "
                "verdict; raise --llm-error-budget only if these errors are expected",
                True,
            )
        )
    elif health.errored:
        lines.append(
            (
                f"errored runs: {_errors_text(health.errors)} ({health.share:.0%}, within the "
                f"error budget of {health.error_budget:.0%}); metrics count evaluated runs only",
                False,
            )
        )
    if health.code_errors:
        count = sum(health.code_errors.values())
        lines.append(
            (
                f"ERROR: {count} run(s) errored in the test's own code: "
                f"{_errors_text(health.code_errors)}. Fix the test (each failure above says "
                "how); these are not counted against the error budget",
                True,
            )
        )
    if health.spend_skipped:
        caps = []
        if health.max_calls is not None:
            caps.append(f"{health.calls} of {health.max_calls} calls")
        if health.max_tokens is not None:
            caps.append(f"{health.tokens} of {health.max_tokens} tokens")
        if health.max_cost is not None:
            caps.append(f"${health.cost:.4f} of ${health.max_cost:g} (--llm-max-cost)")
        lines.append(
            (
                f"spend guard: {health.spend_skipped} run(s) skipped after the session used "
                f"{' and '.join(caps)}",
                False,
            )
        )
    return lines


def recovery_lines(recovered: list[Ingested]) -> list[str]:
    """Terminal lines about killed sessions whose spools were ingested at this start."""
    lines = []
    for result in recovered:
        if not (result.runs or result.aborted or result.unreadable):
            continue
        if result.aborted:
            line = (
                f"recovered: session {result.session_id} had stopped without finishing; "
                f"{result.runs} run(s) stored from its spool, marked aborted"
            )
        else:
            line = (
                f"recovered: {result.runs} run(s) of session {result.session_id} stored from "
                "its spool"
            )
        if result.unreadable:
            line += f" ({result.unreadable} unreadable line(s) skipped)"
        lines.append(line)
    return lines
