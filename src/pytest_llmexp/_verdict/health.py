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

__all__ = ["CODE_ERRORS", "DEFAULT_ERROR_BUDGET", "Health", "judge"]

#: Errors of the test's own code or configuration (a metric that broke its contract, a
#: prompt missing an argument, a bot used wrongly, a reply cut at the bot's bound or never
#: valid): the user fixes them, and they are not counted against the error budget, which
#: is for the endpoint and the machine (timeouts, refused calls, crashes).
CODE_ERRORS = frozenset(
    {
        "PromptError",
        "MetricError",
        "BotError",
        "ExperimentError",
        "GateError",
        "StructuredOutputError",
        "TruncatedReply",
    }
)


@dataclass
class Health:
    """Stored as ``sessions.health`` (JSON)."""

    runs: int = 0
    #: Runs that errored in the endpoint or the machine, or crashed: the error budget's count.
    errored: int = 0
    skipped: int = 0
    #: Those runs by error type.
    errors: dict[str, int] = field(default_factory=dict)
    #: Runs that errored in the test's own code (:data:`CODE_ERRORS`), by error type.
    code_errors: dict[str, int] = field(default_factory=dict)
    error_budget: float = DEFAULT_ERROR_BUDGET
    over_budget: bool = False
    calls: int = 0
    tokens: int = 0
    max_calls: int | None = None
    max_tokens: int | None = None
    #: What the runs' calls cost at the session's prices, judges included, and the cap.
    cost: float = 0.0
    max_cost: float | None = None
    #: Runs the spend guard skipped.
    spend_skipped: int = 0
    #: Results that could not be stored.
    lost: int = 0
    #: Seconds the session's calls waited on rate limits (all processes), and the answers
    #: that were a rate limit (429, 503 with Retry-After).
    rate_limit_wait_s: float = 0.0
    rate_limited: int = 0

    @property
    def failed(self) -> bool:
        return self.over_budget

    @property
    def share(self) -> float:
        """The share of evaluated runs that errored in the endpoint or the machine."""
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
        max_cost=settings.max_cost,
    )
    for summary in summaries.values():
        runs = summary["runs"]
        health.runs += sum(runs.values()) - runs.get("rerun", 0)
        health.errored += runs["error"] + runs["crashed"]
        health.skipped += runs["skipped"]
        errors.update(summary["errors"])
        cost = summary.get("cost") or {}
        health.cost += (cost.get("total") or 0.0) + (cost.get("judges") or 0.0)
    code = Counter({kind: n for kind, n in errors.items() if kind in CODE_ERRORS})
    health.errored -= sum(code.values())
    health.errors = {kind: n for kind, n in errors.most_common() if kind not in CODE_ERRORS}
    health.code_errors = dict(code.most_common())
    health.over_budget = health.errored > 0 and health.share > health.error_budget
    health.calls, health.tokens, health.spend_skipped = store.spend(session_id)
    return health
