"""Record and replay of LLM calls: cache keys, the cache mode, and the session's cassette.

A call's key is a digest of what decides its reply: the model, the messages, the temperature,
the response schema, the other request parameters, and where the call was made: experiment,
case, execution index, and how many identical requests the run made before it. So repeats
stay independent: execution 3 replays execution 3's reply, never execution 0's.

message_log.db is the store. When a session starts, the writer copies what it may replay
into a read-only *cassette* next to the database (see ``_store/cassette.py``); every
process of the session looks replies up there, so workers never open message_log.db.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from .._util.defaults import CACHE_MODES, CacheMode
from .._util.jsontext import cache_key, digest, request_digest
from ..errors import ReplayMiss
from .process import PROCESS, CacheSettings, update
from .recording import current_run, in_metric

if TYPE_CHECKING:
    from .._store.records import BotRecord

__all__ = [
    "MODES",
    "CacheMode",
    "CacheSettings",
    "Entry",
    "Plan",
    "configure",
    "describe_miss",
    "plan_call",
]

MODES: tuple[CacheMode, ...] = CACHE_MODES
#: Cassette sources: a stored session's calls (``--llm-replay-from``) and the recorded cache.
Source = Literal["session", "cache"]


@dataclass(frozen=True, slots=True)
class Entry:
    """A recorded call that can answer the current one."""

    source: Source
    message_log_id: str
    run_id: str | None
    #: The recorded reply message whole (with its tool calls, for a captured call).
    message: dict[str, Any]
    response_model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None

    @property
    def content(self) -> str:
        """The reply's text, as a bot returns it."""
        return str(self.message.get("content"))


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do with one call: serve ``entry``, or call the endpoint (and maybe record)."""

    key: str | None
    request: dict[str, Any] | None
    entry: Entry | None = None
    record: bool = False
    #: The key without the occurrence, counted once the call is answered (:meth:`answered`).
    base: str | None = None

    def answered(self) -> None:
        """Count the reply in the current run, so an identical request next is the next
        occurrence. A call that failed is not counted: the same request asked again (the
        structured-output fallback, a retry in the test) is still the same occurrence."""
        run = current_run()
        if run is not None and self.base is not None:
            run.answered(self.base)


#: Response schema digests by bot hash (a bot's hash covers its schema).
_schema_digests: dict[str, str] = {}
_MAX_SCHEMA_DIGESTS = 1024


def configure(new: CacheSettings) -> None:
    """Set this process's cache mode (the plugin does, from ``--llm-cache``)."""
    update(cache=new)


def _schema_digest(bot: BotRecord) -> str | None:
    """The digest of the bot's response schema, made once per bot configuration."""
    if bot.response_schema is None:
        return None
    found = _schema_digests.get(bot.hash)
    if found is None:
        if len(_schema_digests) >= _MAX_SCHEMA_DIGESTS:
            _schema_digests.clear()
        found = _schema_digests[bot.hash] = digest(bot.response_schema)
    return found


def plan_call(
    bot: BotRecord,
    messages: list[dict[str, Any]],
    prompts: list[list[str] | None],
    params: dict[str, Any],
) -> Plan:
    """Look the call up as the cache mode says; raise :class:`ReplayMiss` when it must be
    replayed and cannot be."""
    __tracebackhide__ = True
    run = current_run()
    current = PROCESS.settings.cache
    if run is None:
        if current.mode == "replay":
            raise ReplayMiss(
                f"{bot.class_name} was called outside any experiment run, and such calls are "
                "never recorded, so --llm-cache replay cannot serve it; make the call inside "
                "the experiment's test function"
            )
        return Plan(None, None)
    request: dict[str, Any] = {
        "experiment": run.experiment,
        "case": run.case_id,
        "execution": run.execution_index,
        "params": params,
        "schema": _schema_digest(bot),
        "prompts": prompts,
    }
    if run.variant is not None:
        # Variants whose requests are alike (a post-processing argument) keep their own
        # replies; an experiment without variants keeps its keys as they were.
        request["variant"] = run.variant
    base = request_digest(bot.model_name, bot.temperature, messages, request)
    request["occurrence"] = run.occurrence(base)
    key = cache_key(base, request["occurrence"])
    replaying = current.replay_of is not None
    cached = current.mode in ("replay", "auto")
    if not (replaying or cached):
        return Plan(key, request, record=current.mode == "record", base=base)
    cassette = _open(current)
    entry = cassette.get("session", key) if replaying else None
    if entry is None and cached:
        entry = cassette.get("cache", key)
    if entry is not None:
        if entry.source == "session" and run.replayed_from is None:
            run.replayed_from = entry.run_id
        return Plan(key, request, entry, base=base)
    # A judge's call (made inside a metric) that the replayed session lacks follows the mode.
    if current.mode == "replay" or (replaying and not in_metric()):
        raise ReplayMiss(_miss_message(cassette, current, bot, messages, request))
    return Plan(key, request, record=current.mode in ("record", "auto"), base=base)


def _open(current: CacheSettings) -> _Cassette:
    with PROCESS.lock:
        if PROCESS.cassette is None:
            if current.cassette is None or not current.cassette.is_file():
                raise ReplayMiss(
                    f"the session's cassette {str(current.cassette)!r} is missing: the session "
                    "did not start its experiments normally, so nothing can be replayed"
                )
            PROCESS.cassette = _Cassette(current.cassette)
        return cast(_Cassette, PROCESS.cassette)


class _Cassette:
    """The read-only snapshot of what a session may replay."""

    def __init__(self, path: Path) -> None:
        import sqlite3

        self._conn = sqlite3.connect(
            f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
        )
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def get(self, source: Source, key: str) -> Entry | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT message_log_id, run_id, messages, response_model, prompt_tokens, "
                "completion_tokens, finish_reason FROM entries WHERE source = ? AND key = ?",
                (source, key),
            ).fetchone()
        if row is None:
            return None
        message = json.loads(row[2])[-1]
        return Entry(
            source=source,
            message_log_id=row[0],
            run_id=row[1],
            response_model=row[3],
            prompt_tokens=row[4],
            completion_tokens=row[5],
            finish_reason=row[6],
            message=message,
        )

    def candidates(self, sources: list[Source], experiment: str) -> list[dict[str, Any]]:
        marks = ", ".join("?" * len(sources))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT model, temperature, messages, request FROM entries WHERE source IN "
                f"({marks}) AND experiment = ?",
                (*sources, experiment),
            ).fetchall()
        return [
            {
                "model": r[0],
                "temperature": r[1],
                "messages": json.loads(r[2])[:-1],
                **json.loads(r[3]),
            }
            for r in rows
        ]

    def experiments(self, sources: list[Source]) -> list[str]:
        marks = ", ".join("?" * len(sources))
        with self._lock:
            rows = self._conn.execute(
                f"SELECT DISTINCT experiment FROM entries WHERE source IN ({marks}) "
                "ORDER BY experiment",
                sources,
            ).fetchall()
        return [str(r[0]) for r in rows]


def _miss_message(
    cassette: _Cassette,
    current: CacheSettings,
    bot: BotRecord,
    messages: list[dict[str, Any]],
    request: dict[str, Any],
) -> str:
    sources: list[Source] = ["cache"] if current.mode == "replay" else []
    if current.replay_of is not None and in_metric():
        # A judge under re-scoring: --llm-cache replay, not --llm-replay-from, refused it.
        sources.insert(0, "session")
        where = f"session {current.replay_of} or the cache"
        fix = (
            "a judge's call under --llm-replay-from follows --llm-cache, and replay calls "
            "nothing: use --llm-cache auto to call only the judges' calls that are missing (a "
            "judge that changed since it was recorded), or --llm-cache off to call them all"
        )
    elif current.replay_of is not None:
        sources.insert(0, "session")
        where = f"session {current.replay_of}"
        fix = (
            "re-scoring replays the stored generations as they were made; run without "
            "--llm-replay-from to generate anew"
        )
    else:
        where = "the store"
        fix = (
            "record it with --llm-cache record (or auto, which calls only what is missing), "
            "or import a cassette with `llmexp cache import`"
        )
    now = {"model": bot.model_name, "temperature": bot.temperature, "messages": messages}
    now.update(request)
    where_now = f"experiment {request['experiment']!r}"
    if request["case"] is not None:
        where_now += f", case {request['case']!r}"
    where_now += f", execution {request['execution']}"
    why = describe_miss(
        now, cassette.candidates(sources, request["experiment"]), cassette.experiments(sources)
    )
    return (
        f"no recorded reply in {where} for this {bot.class_name} call (model "
        f"{bot.model_name!r}, {where_now}): {why}; {fix}"
    )


def describe_miss(
    now: dict[str, Any], recorded: list[dict[str, Any]], experiments: list[str]
) -> str:
    """What differs between the call ``now`` and the nearest of the ``recorded`` calls of its
    experiment (each a dict of model, temperature, messages and the stored request)."""
    if not recorded:
        if not experiments:
            return "nothing is recorded"
        return f"nothing is recorded for this experiment (recorded: {', '.join(experiments)})"
    here = [r for r in recorded if (r["case"], r["execution"]) == (now["case"], now["execution"])]
    if not here:
        cases = sorted({r["case"] for r in recorded}, key=str)
        if now["case"] not in cases:
            shown = ", ".join("(none)" if c is None else repr(c) for c in cases[:10])
            return f"case {now['case']!r} was not recorded (recorded cases: {shown})"
        runs = sorted({r["execution"] for r in recorded if r["case"] == now["case"]})
        return (
            f"execution {now['execution']} was not recorded (recorded executions: {_ranges(runs)})"
        )
    best = min(
        here, key=lambda r: (len(_differences(now, r)), abs(r["occurrence"] - now["occurrence"]))
    )
    found = _differences(now, best)
    if not found and best["occurrence"] != now["occurrence"]:
        times = 1 + max(r["occurrence"] for r in here if _differences(now, r) == [])
        return (
            f"the run makes this same request more often than was recorded ({times} "
            f"time(s) recorded; this is time {now['occurrence'] + 1})"
        )
    return "; ".join(found) or "the request differs from every recorded call"


def _differences(now: dict[str, Any], old: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for field in ("model", "temperature"):
        if now[field] != old[field]:
            found.append(f"{field} {now[field]!r} (recorded: {old[field]!r})")
    if now["schema"] != old["schema"]:
        found.append("the response schema changed")
    params = sorted(set(now["params"]) | set(old["params"]))
    changed = [p for p in params if now["params"].get(p) != old["params"].get(p)]
    if changed:
        found.append(f"request parameters {', '.join(changed)} changed")
    found += _message_differences(now, old)
    return found


def _message_differences(now: dict[str, Any], old: dict[str, Any]) -> list[str]:
    found: list[str] = []
    new_messages, old_messages = now["messages"], old["messages"]
    if len(new_messages) != len(old_messages):
        found.append(f"{len(new_messages)} messages (recorded: {len(old_messages)})")
    tags = zip(now["prompts"], old["prompts"] or [None] * len(old_messages), strict=False)
    for i, ((new, old_message), (tag, old_tag)) in enumerate(
        zip(zip(new_messages, old_messages, strict=False), tags, strict=False)
    ):
        if new == old_message:
            continue
        if tag and old_tag and tag[0] == old_tag[0] and tag[1] != old_tag[1]:
            found.append(f"prompt {tag[0]!r} changed from version {old_tag[1][:8]} to {tag[1][:8]}")
        elif tag and tag == old_tag:
            found.append(
                f"prompt {tag[0]!r} (version {tag[1][:8]}) rendered other text, so its "
                f"arguments changed: {_snip(old_message)} became {_snip(new)}"
            )
        else:
            found.append(
                f"message {i} ({new.get('role')}) was {_snip(old_message)}, now {_snip(new)}"
            )
    return found


def _snip(message: dict[str, Any]) -> str:
    text = str(message.get("content"))
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _ranges(values: list[int]) -> str:
    parts: list[str] = []
    start = prev = values[0]
    for value in [*values[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ", ".join(parts)
