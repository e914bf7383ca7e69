"""The ids of prompt versions and bot configurations in message_log.db.

Runs name their prompts and bots by key (module, function and hash; a bot's hash); the
tables that link them hold ids. Ids are cached for the store's connection; a definition is
inserted the first time it is asked for.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from .._util.clock import utcnow
from .._util.jsontext import compact_json as _json

if TYPE_CHECKING:
    from .records import BotRecord, PromptRecord

__all__ = ["DefinitionIds"]


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
            "system_prompt_hash, response_schema, params, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
