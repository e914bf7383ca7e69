"""Whether a session's numbers can be trusted: errored runs against the error budget, the
spend guard, credentials refused, and what was recovered or lost. The terminal says so in
:mod:`pytest_llmexp._plugin.terminal`."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .._util.defaults import DEFAULT_ERROR_BUDGET

if TYPE_CHECKING:
    from .._plugin.settings import Settings
    from .._store.store import Store

__all__ = ["DEFAULT_ERROR_BUDGET", "Health", "judge"]


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
