"""Runs and calls made ready for the store: the rows of their tables, and the ids of the
prompt versions and bot configurations they use.

A batch is made when the writer writes it (see ``_plugin/intake.py``): each run's records
become rows and are freed before the next run is parsed, so that no record outlives the
batch's loop and reaches the garbage collector's oldest generation. Runs name their prompts
and bots by key (module, function and hash; a bot's hash); the tables that link them hold
ids, cached for the store's connection (:class:`DefinitionIds`): a definition is inserted
the first time it is asked for.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

from .._util.clock import utcnow
from .._util.jsontext import compact_json as _json

if TYPE_CHECKING:
    from .records import BotRecord, PromptRecord, Recording, RunRecord

__all__ = ["Batch", "DefinitionIds", "PromptKey"]

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


class DefinitionIds:
    """Prompt and bot ids by key, for one connection; used inside its write transactions."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._prompts: dict[tuple[str, str, str], int] = {}
        self._bots: dict[str, int] = {}

    def clear(self) -> None:
        """Forget the cached ids (a rolled-back transaction may have inserted some)."""
        self._prompts.clear()
        self._bots.clear()

    def prompt(self, prompt: PromptRecord) -> int:
        """The id of a prompt version, inserted (after the function's previous version) if new."""
        key = prompt.key
        found = self._known_prompt(key)
        if found is not None:
            return found
        previous = self.conn.execute(
            "SELECT id FROM prompts WHERE module = ? AND function_name = ? "
            "ORDER BY id DESC LIMIT 1",
            key[:2],
        ).fetchone()
        cursor = self.conn.execute(
            "INSERT INTO prompts (hash, function_name, module, role, template, "
            "previous_version_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                prompt.hash,
                prompt.function_name,
                prompt.module,
                prompt.role,
                prompt.template,
                previous[0] if previous else None,
                utcnow(),
            ),
        )
        found = self._prompts[key] = _inserted_id(cursor)
        return found

    def _known_prompt(self, key: tuple[str, str, str]) -> int | None:
        found = self._prompts.get(key)
        if found is None:
            row = self.conn.execute(
                "SELECT id FROM prompts WHERE module = ? AND function_name = ? AND hash = ?", key
            ).fetchone()
            if row is not None:
                found = self._prompts[key] = int(row[0])
        return found

    def bot(self, bot: BotRecord) -> int:
        """The id of a bot configuration, inserted if new."""
        found = self._known_bot(bot.hash)
        if found is not None:
            return found
        cursor = self.conn.execute(
            "INSERT INTO bots (hash, class_name, model_name, temperature, system_prompt, "
            "system_prompt_hash, response_schema, params, created_at, kind) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                bot.hash,
                bot.class_name,
                bot.model_name,
                bot.temperature,
                bot.system_prompt,
                bot.system_prompt_hash,
                None if bot.response_schema is None else _json(bot.response_schema),
                _json(bot.params),
                utcnow(),
                bot.kind,
            ),
        )
        found = self._bots[bot.hash] = _inserted_id(cursor)
        return found

    def _known_bot(self, bot_hash: str) -> int | None:
        found = self._bots.get(bot_hash)
        if found is None:
            row = self.conn.execute("SELECT id FROM bots WHERE hash = ?", (bot_hash,)).fetchone()
            if row is not None:
                found = self._bots[bot_hash] = int(row[0])
        return found

    def named(self, run_id: str | None, key: tuple[str, str, str] | str) -> int:
        """The id of a prompt (by module, function and hash) or bot (by hash) that a run names
        without defining it."""
        if isinstance(key, tuple):
            found, what = self._known_prompt(key), f"prompt {key[1]!r} version {key[2][:12]}"
        else:
            found, what = self._known_bot(key), f"bot {key[:12]}"
        if found is None:
            # As a foreign key that fails: the run stays in its spool, and is counted.
            raise sqlite3.IntegrityError(
                f"run {run_id} uses {what}, which no stored record defines"
            )
        return found


def _inserted_id(cursor: sqlite3.Cursor) -> int:
    """The rowid an INSERT just gave (``lastrowid`` is only ``None`` before any insert)."""
    rowid = cursor.lastrowid
    if rowid is None:  # pragma: no cover - sqlite3 sets it on every successful INSERT
        raise sqlite3.InterfaceError("the INSERT gave no row id")
    return rowid
