"""How an adaptive experiment's executions read: what ran, what was not needed, and why."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["adaptive_lines", "stop_phrase"]

_REASON = re.compile(
    r"^(?:Skipped: )?decided after (\d+) of \d+ executions: (.*) with [\d.]+ % confidence$"
)


def stop_phrase(reason: str) -> tuple[int | None, str]:
    """The executions after which a case stopped, and what settled it."""
    match = _REASON.match(reason)
    if match is None:
        return None, reason
    return int(match.group(1)), match.group(2)


def adaptive_lines(adaptive: dict[str, Any], note: str | None = None) -> list[str]:
    """The summary of an experiment's ``adaptive`` section: its first line, then each way
    cases were settled (indented)."""
    ran, not_needed = adaptive["executions"], adaptive["not_needed"]
    confidence = f"{float(adaptive['confidence']) * 100:g} %"
    head = f"adaptive ({confidence} confidence): {ran} of {ran + not_needed} executions ran"
    if not_needed:
        head += f", {not_needed} not needed (about {adaptive['calls_saved']} LLM calls saved)"
    lines = [head]
    if note is not None:
        return [*lines, f"  {note}"]
    groups: dict[tuple[str | None, str], list[int]] = {}
    for case in adaptive["cases"]:
        if case["stopped"]:
            after, phrase = stop_phrase(case["stopped"])
            groups.setdefault((case["variant"], phrase), []).append(after or case["executions"])
    cases: dict[str | None, int] = {}
    for case in adaptive["cases"]:
        cases[case["variant"]] = cases.get(case["variant"], 0) + 1
    for (variant, phrase), afters in groups.items():
        low, high = min(afters), max(afters)
        when = f"after {low}" if low == high else f"after {low} to {high}"
        where = f"[{variant}] " if variant else ""
        of = cases[variant]
        share = f"{len(afters)} of {of} case{'s' if of != 1 else ''}"
        lines.append(f"  {where}decided {when} executions ({share}): {phrase}")
    if not groups:
        lines.append("  no case was settled before its last execution")
    per_case: dict[str | None, set[int]] = {}
    for case in adaptive["cases"]:
        per_case.setdefault(case["variant"], set()).add(case["executions"])
    if any(len(counts) > 1 for counts in per_case.values()):
        lines.append(
            "  cases ran different numbers of executions: a gate's mean over the experiment "
            "is the mean of its cases' means (the metrics' means are over runs)"
        )
    return lines
