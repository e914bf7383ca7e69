"""Whether a session's numbers can be trusted: errored runs against the error budget, the
spend guard, credentials refused, and what was recovered or lost."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .._util.defaults import DEFAULT_ERROR_BUDGET

if TYPE_CHECKING:
    from .._plugin.settings import Settings
    from .._store.recovery import Ingested
    from .._store.store import Store

__all__ = ["DEFAULT_ERROR_BUDGET", "Health", "judge", "problem_lines", "recovery_lines"]

_AUTH_ERRORS = ("AuthenticationError", "PermissionDeniedError")


@dataclass
class Health:
    """Stored as ``sessions.health`` (JSON)."""

    runs: int = 0
    errored: int = 0
    skipped: int = 0
    #: Errored and crashed runs by error type.
    errors: dict[str, int] = field(default_factory=dict)
    error_budget: float = DEFAULT_ERROR_BUDGET
    over_budget: bool = False
    calls: int = 0
    tokens: int = 0
    max_calls: int | None = None
    max_tokens: int | None = None
    #: Runs the spend guard skipped.
    spend_skipped: int = 0
    #: Results that could not be stored.
    lost: int = 0

    @property
    def failed(self) -> bool:
        return self.over_budget

    @property
    def share(self) -> float:
        counted = self.runs - self.skipped
        return self.errored / counted if counted else 0.0

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "error_share": round(self.share, 4)}


def judge(
    store: Store, session_id: str, summaries: dict[str, dict[str, Any]], settings: Settings
) -> Health:
    """The health of a session from what the database holds."""
    errors: Counter[str] = Counter()
    health = Health(
        error_budget=settings.error_budget,
        max_calls=settings.max_calls,
        max_tokens=settings.max_tokens,
    )
    for summary in summaries.values():
        runs = summary["runs"]
        health.runs += sum(runs.values())
        health.errored += runs["error"] + runs["crashed"]
        health.skipped += runs["skipped"]
        errors.update(summary["errors"])
    health.errors = dict(errors.most_common())
    health.over_budget = health.errored > 0 and health.share > health.error_budget
    health.calls, health.tokens, health.spend_skipped = store.spend(session_id)
    return health


def _errors_text(errors: dict[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in errors.items())


def problem_lines(health: Health | None) -> list[tuple[str, bool]]:
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
    if health.spend_skipped:
        caps = []
        if health.max_calls is not None:
            caps.append(f"{health.calls} of {health.max_calls} calls")
        if health.max_tokens is not None:
            caps.append(f"{health.tokens} of {health.max_tokens} tokens")
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
