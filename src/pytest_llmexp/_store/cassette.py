"""The store side of record and replay: the session's cassette, cassette files, and counts.

The writer builds the cassette when a session starts: a read-only SQLite file beside the
database holding what the session may replay (the recorded cache, a stored session's
calls, or both). Cassette *files* are JSON Lines, one recorded call per line, for
committing next to the experiments: ``llmexp cache export`` / ``llmexp cache import``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

from .._util.ids import new_id
from .._util.jsontext import cache_key, digest, request_digest
from .._util.redact import redact
from ..errors import ExperimentError, StoreError

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "FORMAT_VERSION",
    "Imported",
    "build_cassette",
    "cache_line",
    "check_replay_source",
    "export_cassette",
    "import_cassette",
    "prepare_cassette",
]

#: The ``v`` of every line of a cassette file.
FORMAT_VERSION = 1

_COLUMNS = (
    "c.cache_key, json_extract(c.request, '$.experiment'), c.id, c.run_id, c.model_name, "
    "c.temperature, c.message_log, c.request, c.response_model, c.prompt_tokens, "
    "c.completion_tokens, c.finish_reason"
)
_REPLAYABLE = "c.cache_key IS NOT NULL AND c.error IS NULL AND c.truncated = 0"
_IN_SESSION = (
    "JOIN experiment_runs r ON r.id = c.run_id JOIN experiments e ON e.id = r.experiment_id "
    "WHERE e.session_id = ?"
)


def check_replay_source(conn: sqlite3.Connection, wanted: str) -> str:
    """The id of the session ``--llm-replay-from`` names; an error if it has nothing to replay."""
    from .._util.lookup import resolve_session

    session_id = resolve_session(conn, wanted, option="--llm-replay-from")
    calls, keyed = conn.execute(
        f"SELECT count(*), count(c.cache_key) FROM message_log c {_IN_SESSION} AND c.error IS NULL",
        (session_id,),
    ).fetchone()
    if not keyed:
        why = (
            "its calls were made by a pytest-llmexp too old to record cache keys"
            if calls
            else "its runs made no successful LLM call"
        )
        raise ExperimentError(f"--llm-replay-from {wanted}: nothing to replay: {why}")
    return session_id


def prepare_cassette(store: Store, path: Path, mode: str, replay_of: str | None) -> None:
    """Build the session's cassette if the session replays anything: the cache
    (``--llm-cache replay`` or ``auto``), a stored session (``--llm-replay-from``), or both."""
    cache = mode in ("replay", "auto")
    if cache or replay_of is not None:
        build_cassette(store, path, cache=cache, session=replay_of)


def build_cassette(store: Store, path: Path, *, cache: bool, session: str | None) -> int:
    """Write the session's cassette at ``path``: the recorded cache if ``cache``, and the
    calls of stored session ``session``. Returns how many calls it holds."""
    path.unlink(missing_ok=True)
    with store.reading() as conn:
        conn.execute("ATTACH DATABASE ? AS cassette", (str(path),))
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "CREATE TABLE cassette.entries (key TEXT NOT NULL, experiment TEXT, "
                "message_log_id TEXT NOT NULL, run_id TEXT, model TEXT NOT NULL, temperature "
                "REAL, messages TEXT NOT NULL, request TEXT NOT NULL, response_model TEXT, "
                "prompt_tokens INTEGER, completion_tokens INTEGER, finish_reason TEXT, "
                "source TEXT NOT NULL, PRIMARY KEY (source, key))"
            )
            conn.execute("CREATE INDEX cassette.entries_experiment ON entries (source, experiment)")
            if session is not None:
                conn.execute(
                    f"INSERT OR REPLACE INTO cassette.entries SELECT {_COLUMNS}, 'session' "
                    f"FROM message_log c {_IN_SESSION} AND {_REPLAYABLE}",
                    (session,),
                )
            if cache:
                conn.execute(
                    f"INSERT OR REPLACE INTO cassette.entries SELECT {_COLUMNS}, 'cache' "
                    f"FROM llm_cache k JOIN message_log c ON c.id = k.message_log_id "
                    f"WHERE {_REPLAYABLE}"
                )
            count = int(conn.execute("SELECT count(*) FROM cassette.entries").fetchone()[0])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        finally:
            conn.execute("DETACH DATABASE cassette")
    return count


def cache_line(conn: sqlite3.Connection, session_id: str) -> str | None:
    """The summary line about the cache, from the finished session's row (``None`` when the
    cache was off and nothing was replayed)."""
    mode, replay_of, served = conn.execute(
        "SELECT cache_mode, replay_of, cache_served FROM sessions WHERE id = ?", (session_id,)
    ).fetchone()
    if mode in (None, "off") and replay_of is None:
        return None
    made, recorded = conn.execute(
        "SELECT count(*) - count(c.replayed_from), count(k.key) FROM message_log c "
        f"LEFT JOIN llm_cache k ON k.message_log_id = c.id {_IN_SESSION}",
        (session_id,),
    ).fetchone()
    head = f"llmexp cache: {mode}"
    if replay_of is not None:
        head = f"llmexp re-scoring session {replay_of[:12]} (cache: {mode})"
    parts = [f"{served} call(s) served from the store", f"{made} made"]
    if mode in ("record", "auto"):
        parts.append(f"{recorded} recorded")
    return f"{head}: {', '.join(parts)}"


def export_cassette(
    conn: sqlite3.Connection,
    out: TextIO,
    *,
    session: str | None = None,
    experiments: Iterable[str] = (),
) -> tuple[int, int]:
    """Write the recorded cache (or ``session``'s calls) as JSON Lines; returns the lines
    written and how many of them had key-like text masked."""
    select = (
        "SELECT c.message_log, c.request, c.model_name, c.temperature, c.response_model, "
        "c.prompt_tokens, c.completion_tokens, c.finish_reason, c.timestamp, b.class_name, "
        "b.response_schema, b.kind, c.api FROM message_log c JOIN bots b ON b.id = c.bot_id "
    )
    if session is not None:
        rows = conn.execute(
            f"{select}{_IN_SESSION} AND {_REPLAYABLE} ORDER BY c.timestamp", (session,)
        )
    else:
        rows = conn.execute(
            f"{select}JOIN llm_cache k ON k.message_log_id = c.id WHERE {_REPLAYABLE} "
            "ORDER BY c.timestamp"
        )
    wanted = set(experiments)
    written = masked = 0
    for row in rows:
        messages, request = json.loads(row[0]), json.loads(row[1])
        if wanted and request["experiment"] not in wanted:
            continue
        reply = {"content": messages[-1].get("content")}
        # A captured call's reply may ask for tools, or refuse, instead of answering.
        reply.update({k: messages[-1][k] for k in ("tool_calls", "refusal") if k in messages[-1]})
        entry = {
            "v": FORMAT_VERSION,
            "experiment": request["experiment"],
            "case": request["case"],
            "execution": request["execution"],
            "occurrence": request["occurrence"],
            "bot": row[9],
            "model": row[2],
            "temperature": row[3],
            "params": request["params"],
            "response_schema": None if row[10] is None else json.loads(row[10]),
            "messages": messages[:-1],
            "prompts": request["prompts"],
            "reply": {
                **reply,
                "model": row[4],
                "prompt_tokens": row[5],
                "completion_tokens": row[6],
                "finish_reason": row[7],
            },
            "recorded_at": row[8],
        }
        if row[11] == "client":
            entry["kind"] = "client"
        if row[12] not in (None, "chat.completions"):
            entry["api"] = row[12]
        line = json.dumps(entry, ensure_ascii=False)
        safe = redact(line)
        masked += safe != line
        out.write(safe + "\n")
        written += 1
    return written, masked


@dataclass
class Imported:
    """What ``import_cassette`` did."""

    added: int = 0
    unchanged: int = 0


def import_cassette(store: Store, lines: Iterable[str], source: str) -> Imported:
    """Record every call of a cassette file in the store's cache (the file's reply wins over
    a different one recorded for the same key). A bad line is a :class:`StoreError` naming
    it, and nothing is imported."""
    from .records import Recording

    bots: dict[str, Any] = {}
    calls: list[Any] = []
    result = Imported()
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            bot, call = _entry(json.loads(line))
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(
                f"{source} line {number} is not a pytest-llmexp cassette entry "
                f"({type(exc).__name__}: {exc}); nothing was imported"
            ) from None
        assert call.cache_key is not None
        with store.reading() as conn:
            row = conn.execute(
                "SELECT c.message_log FROM llm_cache k JOIN message_log c ON "
                "c.id = k.message_log_id WHERE k.key = ?",
                (call.cache_key,),
            ).fetchone()
        if call.cache_key in seen or (row is not None and json.loads(row[0]) == call.messages):
            result.unchanged += 1
            continue
        seen.add(call.cache_key)
        bots[bot.hash] = bot
        calls.append(call)
    if calls:
        store.insert_recording(Recording(bots=list(bots.values()), calls=calls))
    result.added = len(calls)
    return result


def _entry(data: Any) -> tuple[Any, Any]:
    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    from .records import BotRecord, CallRecord

    class Reply(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        content: str | None
        tool_calls: list[dict[str, Any]] | None = None
        refusal: str | None = None
        model: str | None = None
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        finish_reason: str | None = None

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow", strict=True)
        role: str

    class Line(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        v: int
        experiment: str
        case: str | None
        execution: int = Field(ge=0)
        occurrence: int = Field(ge=0)
        bot: str
        model: str
        temperature: float | None
        params: dict[str, Any]
        response_schema: dict[str, Any] | None
        messages: list[Message]
        prompts: list[list[str] | None]
        reply: Reply
        recorded_at: str
        #: ``client``: a call captured from the code's own openai client; the API it called.
        kind: Literal["bot", "client"] = "bot"
        api: str = "chat.completions"

    if isinstance(data, dict) and data.get("v") != FORMAT_VERSION:
        raise ValueError(f"its format version is {data.get('v')!r}, this reads {FORMAT_VERSION}")
    try:
        line = Line.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(map(str, first["loc"])) or "(the line)"
        raise ValueError(f"{where}: {first['msg']}") from None
    if len(line.prompts) != len(line.messages) or any(
        p is not None and len(p) != 2 for p in line.prompts
    ):
        raise ValueError("prompts must name one prompt ([name, version] or null) per message")
    messages = [m.model_dump() for m in line.messages]
    prompts = [None if p is None else list(p) for p in line.prompts]
    schema = line.response_schema
    request = {
        "experiment": line.experiment,
        "case": line.case,
        "execution": line.execution,
        "params": line.params,
        "schema": None if schema is None else digest(schema),
        "prompts": prompts,
        "occurrence": line.occurrence,
    }
    system = messages[0] if messages and messages[0]["role"] == "system" else None
    tag = prompts[0] if system is not None else None
    config: dict[str, Any] = {
        "class_name": line.bot,
        "model_name": line.model,
        "temperature": line.temperature,
        "system_prompt": None if system is None else system.get("content"),
        "response_schema": schema,
        "params": line.params,
    }
    if line.kind == "client":
        config["kind"] = "client"
    elif line.reply.content is None:
        raise ValueError("reply.content: a bot's reply has text")
    bot = BotRecord(
        hash=digest(config),
        kind=line.kind,
        class_name=line.bot,
        model_name=line.model,
        temperature=line.temperature,
        system_prompt=config["system_prompt"],
        system_prompt_hash=tag[1] if tag else None,
        response_schema=schema,
        params=line.params,
    )
    reply = line.reply
    call = CallRecord(
        id=new_id(),
        bot_hash=bot.hash,
        timestamp=line.recorded_at,
        model_name=line.model,
        response_model=reply.model,
        temperature=line.temperature,
        messages=[
            *messages,
            {
                "role": "assistant",
                "content": reply.content,
                # A captured call's reply may ask for tools, or refuse, instead of answering.
                **reply.model_dump(include={"tool_calls", "refusal"}, exclude_none=True),
            },
        ],
        api=line.api,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        latency_ms=0.0,
        retries=0,
        finish_reason=reply.finish_reason,
        error=None,
        cache_key=cache_key(
            request_digest(line.model, line.temperature, messages, request), line.occurrence
        ),
        request=request,
        record=True,
    )
    return bot, call
