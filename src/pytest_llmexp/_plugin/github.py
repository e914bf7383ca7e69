"""GitHub Actions, where CI users look: the Markdown verdict in the job summary, and each
failed gate or regression as an error annotation on the run.

Only when ``GITHUB_ACTIONS=true`` (GitHub sets it in every job) and not ``--llm-github off``;
under any other CI nothing of this happens.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._verdict.verdicts import SessionVerdict

__all__ = ["append_job_summary", "error_commands", "on_github"]


def on_github(enabled: bool) -> bool:
    """Whether this session runs in a GitHub Actions job and may speak to it."""
    return enabled and os.environ.get("GITHUB_ACTIONS") == "true"


def _escape(text: str, *, property: bool = False) -> str:
    # The workflow command syntax: these characters end a field unless escaped.
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if property:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


def error_commands(verdict: SessionVerdict) -> list[str]:
    """One ``::error`` workflow command per failed gate (of a gating variant) and per
    regression."""
    lines = []
    for name, experiment in verdict.experiments.items():
        not_gating = {v.variant for v in experiment.variants if not v.gating}
        for gate in experiment.gates:
            if gate.passed or (gate.variant is not None and gate.variant in not_gating):
                continue
            where = f" [{gate.variant}]" if gate.variant else ""
            found = f"observed {gate.observed:.4g}" if gate.observed is not None else gate.detail
            title = f"LLM gate {'failed' if gate.verdict == 'failed' else 'error'}: {name}"
            lines.append(
                f"::error title={_escape(title, property=True)}::"
                + _escape(f"{name}: gate {gate.gate}{where} {gate.verdict} ({found})")
            )
    for regression in verdict.regressions:
        title = f"LLM regression: {regression.split('.', 1)[0]}"
        lines.append(
            f"::error title={_escape(title, property=True)}::"
            + _escape(f"{regression} regressed against the baseline session")
        )
    return lines


def append_job_summary(markdown: str) -> str | None:
    """Append the verdict to the job summary (``$GITHUB_STEP_SUMMARY``); why not, if not."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return "GITHUB_STEP_SUMMARY is not set: no job summary written"
    try:
        with open(path, "a", encoding="utf-8") as summary:
            summary.write(markdown if markdown.endswith("\n") else markdown + "\n")
    except OSError as exc:
        return f"cannot append to the job summary {path}: {exc}"
    return None
