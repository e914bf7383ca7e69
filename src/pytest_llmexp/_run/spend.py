"""The spend guard: optional caps on a session's LLM calls, tokens and cost, across its
processes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .._store.spool import SpendLedger

if TYPE_CHECKING:
    from .recording import RunContext

__all__ = ["SpendGuard"]


class SpendGuard:
    """Counts each finished run's calls and tokens; once a cap is reached, runs that have not
    started yet are skipped. Runs already going finish, so a session can pass a cap by what
    its processes were running at that moment."""

    def __init__(
        self,
        db_path: Path,
        session_id: str,
        *,
        max_calls: int | None,
        max_tokens: int | None,
        max_cost: float | None = None,
    ) -> None:
        self.ledger = SpendLedger(db_path, session_id)
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.max_cost = max_cost

    def add_run(self, run: RunContext) -> None:
        live = run.calls(live=True)
        if not live:
            return
        tokens = sum((c.prompt_tokens or 0) + (c.completion_tokens or 0) for c in live)
        cost = 0.0
        if self.max_cost is not None:
            from .._verdict.cost import known_cost
            from .process import PROCESS

            cost = known_cost(PROCESS.settings.prices, live)
        self.ledger.add(len(live), tokens, cost)

    def reached(self) -> str | None:
        """Why no further run may start, or ``None``."""
        calls, tokens, cost = self.ledger.totals()
        if self.max_cost is not None and cost >= self.max_cost:
            return (
                f"spend guard: the session's calls cost ${cost:.4f}, the cap is "
                f"${self.max_cost:g} (--llm-max-cost)"
            )
        if self.max_calls is not None and calls >= self.max_calls:
            return (
                f"spend guard: the session made {calls} LLM calls, the cap is {self.max_calls} "
                "(--llm-max-calls)"
            )
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return (
                f"spend guard: the session used {tokens} tokens, the cap is {self.max_tokens} "
                "(--llm-max-tokens)"
            )
        return None
