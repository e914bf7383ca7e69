"""The session's verdict as JSON (``--llm-report-json``) and Markdown (``--llm-report-md``).

The JSON shape is documented in the README ("Gating CI on metrics"); ``format`` names its
version.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .._verdict.health import Health
    from .._verdict.verdicts import SessionVerdict

__all__ = ["FORMAT", "build_report", "failure_reasons", "to_json", "to_markdown", "write_report"]

FORMAT = "pytest-llmexp-report/1"


def failure_reasons(
    verdict: SessionVerdict,
    health: Health | None,
    *,
    interrupted: bool,
    lost: int,
    untolerated_failures: bool,
) -> list[str]:
    """Why the session's verdict is not a pass, one sentence each (empty: it passed)."""
    reasons = []
    if interrupted:
        reasons.append("the session was interrupted: its numbers are not a verdict")
    if lost:
        reasons.append(f"{lost} result(s) could not be stored")
    if health is not None and health.over_budget:
        reasons.append(
            f"infrastructure: {health.errored} runs errored, over the error budget of "
            f"{health.error_budget:.0%}"
        )
    if health is not None and health.code_errors:
        reasons.append(
            f"{sum(health.code_errors.values())} run(s) errored in the test's own code "
            f"({', '.join(health.code_errors)})"
        )
    reasons += verdict.unmatched
    for name, experiment in verdict.experiments.items():
        not_gating = {v.variant for v in experiment.variants if not v.gating}
        for gate in experiment.gates:
            if gate.variant is not None and gate.variant in not_gating:
                continue
            where = f" [{gate.variant}]" if gate.variant else ""
            if gate.verdict == "failed":
                reasons.append(
                    f"{name}: gate {gate.gate}{where} failed (observed {gate.observed:.4g})"
                )
            elif gate.verdict == "error":
                reasons.append(f"{name}: gate {gate.gate}{where}: {gate.detail}")
    if verdict.fail_on_regression:
        reasons += [f"{r} regressed" for r in verdict.regressions]
    if untolerated_failures:
        reasons.append("tests failed")
    return reasons


def build_report(
    *,
    session: dict[str, Any],
    summaries: dict[str, dict[str, Any]],
    verdict: SessionVerdict,
    reasons: list[str],
) -> dict[str, Any]:
    """The whole verdict as JSON-safe builtins."""
    experiments = []
    for name, summary in summaries.items():
        entry: dict[str, Any] = {"name": name, **summary}
        judged = verdict.experiments.get(name)
        if judged is not None:
            found = judged.as_json()
            # Per variant: its statistics and cost (from the summary) with its verdict.
            stored = entry.get("variants", {})
            found["variants"] = {
                variant: {**stored.get(variant, {}), **judged_variant}
                for variant, judged_variant in found.get("variants", {}).items()
            } or stored
            if not found["variants"]:
                del found["variants"]
            entry.update(found)
        experiments.append(entry)
    return {
        "format": FORMAT,
        "session": session,
        "verdict": {"passed": not reasons, "reasons": reasons},
        "experiments": experiments,
        "unmatched_gates": verdict.unmatched,
        "unused_gates": verdict.unused,
    }


def _n(value: Any, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return [*lines, ""]


def to_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: a verdict line, then per experiment its tables."""
    verdict = report["verdict"]
    lines = [f"## LLM experiments: {'passed' if verdict['passed'] else 'FAILED'}", ""]
    lines += [f"- {reason}" for reason in verdict["reasons"]]
    if verdict["reasons"]:
        lines.append("")
    for experiment in report["experiments"]:
        runs = experiment["runs"]
        counts = ", ".join(f"{count} {status}" for status, count in runs.items() if count)
        lines += [f"### {experiment['name']}", "", f"Runs: {counts or 'none'}", ""]
        metrics = experiment["metrics"]
        variants = experiment.get("variants")
        if variants:
            from .._view.variantview import matrix_rows

            lines += _table(*matrix_rows(variants))
        elif metrics:
            rows = [
                [m, *(_n(s[c]) for c in ("n", "mean", "std", "min", "max"))]
                for m, s in metrics.items()
            ]
            lines += _table(["metric", "n", "mean", "std", "min", "max"], rows)
        gates = experiment.get("gates") or []
        if gates:
            gating = {v: bool(d.get("gating", True)) for v, d in (variants or {}).items()}
            rows = [
                [
                    *(
                        [g["variant"] + ("" if gating.get(g["variant"]) else " (not gating)")]
                        if variants
                        else []
                    ),
                    f"`{g['gate']}`",
                    g["source"],
                    _n(g["observed"]),
                    g["verdict"],
                    g["detail"],
                ]
                for g in gates
            ]
            header = [*(["variant"] if variants else []), "gate", "from", "observed"]
            lines += _table([*header, "verdict", "detail"], rows)
        elif experiment.get("gates_not_evaluated"):
            lines += [f"Gates not evaluated: {experiment['gates_not_evaluated']}", ""]
        if experiment.get("adaptive"):
            from .._view.adaptiveview import adaptive_lines

            first, *rest = adaptive_lines(experiment["adaptive"], experiment.get("adaptive_note"))
            lines += [first.capitalize() + ".", "", *(f"- {r.strip()}" for r in rest), ""]
        if experiment.get("failures_tolerated"):
            lines += [
                f"{experiment['failing_runs']} failing run(s) tolerated by the passing gates "
                "on runs.",
                "",
            ]
        for found in experiment.get("unstable", []):
            where = f" [{found['variant']}]" if found.get("variant") else ""
            if found["kind"] == "threshold":
                cases = ", ".join(c or "(the only case)" for c in found["cases"])
                lines.append(
                    f"- unstable{where}: `{found['metric']}`: executions of {cases} fall on both "
                    f"sides of the threshold of `{' and '.join(found['gates'])}`"
                )
            else:
                lines.append(
                    f"- unstable{where}: `{found['metric']}` (an LLM judge): mean within-case std "
                    f"{found['spread']:.3g}"
                )
        if experiment.get("unstable"):
            lines.append("")
        if variants:
            lines += _variants_markdown(variants, experiment)
        else:
            lines += _comparison_markdown(experiment)
            lines += _cost_markdown(experiment)
    return "\n".join(lines).rstrip() + "\n"


def _cost_markdown(experiment: dict[str, Any]) -> list[str]:
    from .._view.variantview import cost_line

    text = cost_line(experiment.get("cost"))
    return [text[0].upper() + text[1:] + ".", ""] if text else []


def _variants_markdown(variants: dict[str, Any], experiment: dict[str, Any]) -> list[str]:
    """Each variant compared with the first and with its baseline; cost; the cheapest."""
    from .._view.variantview import cheapest_line, versus_header, versus_rows

    lines: list[str] = []
    first = next(iter(variants))
    for variant, data in variants.items():
        compared = data.get("versus_first")
        if compared:
            lines += [
                f"`{variant}` compared with `{first}`, the first variant, over "
                f"{compared[0]['unit']}:",
                "",
            ]
            lines += _table(versus_header(first, variant), versus_rows(first, variant, compared))
        if data.get("comparison") or data.get("no_comparison"):
            lines += [f"Variant `{variant}`, against the baseline's:", ""]
            lines += _comparison_markdown(data)
    lines += _cost_markdown(experiment)
    text = cheapest_line(
        experiment.get("cheapest_passing_variant"), experiment.get("cheapest_note")
    )
    if text:
        lines += [f"**{text[0].upper() + text[1:]}**", ""]
    return lines


def _comparison_markdown(experiment: dict[str, Any]) -> list[str]:
    comparison = experiment.get("comparison")
    if comparison is None:
        reason = experiment.get("no_comparison")
        return [f"No comparison: {reason}", ""] if reason else []
    lines = [f"Compared with session `{comparison['baseline_session'][:12]}`:", ""]
    rows = [
        [
            m["metric"],
            _n(m["baseline_mean"]),
            _n(m["current_mean"]),
            _n(m["diff"], signed=True),
            "-" if m["ci_low"] is None else f"[{m['ci_low']:+.3g}, {m['ci_high']:+.3g}]",
            f"{m['n_baseline']} / {m['n_current']}",
            m["verdict"] + (" (metric changed)" if m.get("metric_changed") else ""),
        ]
        for m in comparison["metrics"]
    ]
    lines += _table(["metric", "baseline", "current", "diff", "95% CI", "n", "verdict"], rows)
    for name in comparison.get("metric_changes", []):
        lines += [f"Metric `{name}` changed: its code differs from the baseline's.", ""]
    for change in comparison["prompts"]:
        lines += [
            f"<details><summary>prompt {change['prompt']} changed</summary>",
            "",
            "```diff",
            change.get("diff", "").rstrip(),
            "```",
            "</details>",
            "",
        ]
    for change in comparison["bots"]:
        before, after = ", ".join(change["from"]) or "-", ", ".join(change["to"]) or "-"
        if "diff" in change:
            lines += [f"Bot {change['setting']} changed:", "", "```diff", change["diff"], "```"]
        else:
            lines.append(f"Bot {change['setting']}: `{before}` → `{after}`")
        lines.append("")
    return lines


def write_report(path: Path, text: str) -> None:
    """Write a report file, creating its directory, readable by its owner only."""
    from .._util.files import write_private

    write_private(path, text)


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"
