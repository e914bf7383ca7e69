"""Runs and calls made ready for the store: the rows of their tables, before any id.

A batch is made when the writer writes it (see :mod:`.intake`): each run's records become
rows and are freed before the next run is parsed, so that no record outlives the batch's
loop and reaches the garbage collector's oldest generation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .records import BotRecord, PromptRecord, Recording, RunRecord

__all__ = ["Batch", "PromptKey"]

#: How a prompt version is found in the ``prompts`` table: module, function, hash.
PromptKey = tuple[str, str, str]


class Batch:
    """The rows of runs, and of calls outside runs, to insert in one transaction.

    Where a table holds the id of another row, a row here holds its key instead: the
    experiment's name and size, the prompt's :data:`PromptKey`, the bot's hash. A key whose
    definition is not in the batch names a row an earlier batch stored.
    """

    def __init__(self) -> None:
        #: ``experiment_runs`` rows: id, experiment name, size, then the other columns.
        self.runs: list[tuple[Any, ...]] = []
        #: The definitions the rows name, to insert if the database lacks them.
        self.prompts: dict[PromptKey, PromptRecord] = {}
        self.bots: dict[str, BotRecord] = {}
        self.run_prompts: list[tuple[str, str, str, str]] = []
        self.run_bots: list[tuple[str, str]] = []
        #: ``message_log`` rows, the bot's hash in the place of its id.
        self.calls: list[tuple[Any, ...]] = []
        #: ``llm_cache`` rows, after the id of the run whose call they name.
        self.cached: list[tuple[str | None, str, str, str]] = []
        self.metrics: list[tuple[str, str, float, str, int]] = []
        self._run_ids: set[str] = set()

    def __len__(self) -> int:
        """The number of runs."""
        return len(self.runs)

    @property
    def run_ids(self) -> list[str]:
        return [row[0] for row in self.runs]

    def add_run(self, run: RunRecord) -> None:
        """Add a finished run; a run already in the batch is not added again."""
        if run.run_id in self._run_ids:
            return
        self._run_ids.add(run.run_id)
        self.runs.append(run.row())
        self._add_used(run, run.run_id)
        # Used, but defined by an earlier record: linked by key, resolved by the store.
        self.run_prompts += [(run.run_id, *key) for key in run.prompt_refs]
        self.run_bots += [(run.run_id, bot) for bot in run.bot_refs]
        self.metrics += [
            (run.run_id, m.name, m.value, m.kind, i) for i, m in enumerate(run.metrics)
        ]

    def add_recording(self, recording: Recording) -> None:
        """Add calls made outside any run, with the prompts and bots they used."""
        self._add_used(recording, None)

    def _add_used(self, recording: Recording, run_id: str | None) -> None:
        for prompt in recording.prompts:
            key = prompt.key
            self.prompts.setdefault(key, prompt)
            if run_id is not None:
                self.run_prompts.append((run_id, *key))
        for bot in recording.bots:
            self.bots.setdefault(bot.hash, bot)
            if run_id is not None:
                self.run_bots.append((run_id, bot.hash))
        for call in recording.calls:
            self.calls.append(call.row(run_id))
            # Only a whole, successful reply is worth replaying; the newest recording of a
            # key wins.
            if call.record and call.cache_key and call.error is None and not call.truncated:
                self.cached.append((run_id, call.cache_key, call.id, call.timestamp))

    def without(self, stored: set[str]) -> Batch:
        """This batch without the rows of the runs in ``stored`` (already in the database)."""
        if not stored:
            return self
        rest = Batch()
        rest.prompts, rest.bots = self.prompts, self.bots
        rest.runs = [r for r in self.runs if r[0] not in stored]
        rest.run_prompts = [r for r in self.run_prompts if r[0] not in stored]
        rest.run_bots = [r for r in self.run_bots if r[0] not in stored]
        rest.calls = [r for r in self.calls if r[1] not in stored]
        rest.cached = [r for r in self.cached if r[0] not in stored]
        rest.metrics = [r for r in self.metrics if r[0] not in stored]
        rest._run_ids = self._run_ids - stored
        return rest
