"""Finding a session, experiment, run or prompt by what a person types: an id, a unique prefix
of one, a name; and, when it names nothing, the nearest ones to suggest."""

from __future__ import annotations

import difflib
import sqlite3
from collections.abc import Sequence
from typing import Any

from ..errors import ExperimentError

__all__ = ["LATEST", "find_experiment", "find_id", "find_run", "find_session", "nearest"]

#: Session arguments that name the most recent session.
LATEST = ("last", "latest")


def nearest(wanted: str, candidates: Sequence[str], n: int = 3) -> list[str]:
    """Up to ``n`` candidates that look like ``wanted``: those it is a prefix of or that share
    its start, then the closest by edit similarity."""
    wanted = wanted.lower()
    found = [c for c in candidates if c.lower().startswith(wanted[:4])]
    found += difflib.get_close_matches(wanted, candidates, n=n, cutoff=0.4)
    return list(dict.fromkeys(found))[:n]


def find_id(
    conn: sqlite3.Connection,
    table: str,
    wanted: str,
    *,
    what: str,
    option: str,
    order: str = "rowid DESC",
) -> str:
    """The id in ``table`` that ``wanted`` (an id or a unique prefix of one) names; an error
    naming the nearest ids when it names none or several."""
    # Only hexadecimal ids and a '-' are ever stored; anything else names nothing, and must
    # not reach LIKE as a wildcard.
    if not wanted or any(c in "%_" for c in wanted):
        raise ExperimentError(f"{option} {wanted!r}: not a {what} id")
    rows = conn.execute(
        f"SELECT id FROM {table} WHERE id LIKE ? || '%' ORDER BY {order} LIMIT 4",
        (wanted.lower(),),
    ).fetchall()
    if len(rows) == 1:
        return str(rows[0][0])
    if rows:
        shown = ", ".join(str(r[0])[:12] for r in rows[:3])
        raise ExperimentError(
            f"{option} {wanted}: the prefix matches several {what}s ({shown}...); give more "
            "of the id"
        )
    ids = [str(r[0]) for r in conn.execute(f"SELECT id FROM {table} ORDER BY {order} LIMIT 500")]
    if not ids:
        raise ExperimentError(
            f"{option} {wanted}: no {what} with this id in the database (it holds none yet)"
        )
    short = {i[:12]: i for i in ids}
    close = nearest(wanted[:12], list(short))
    hint = (
        f"nearest: {', '.join(close)}"
        if close
        else f"the most recent: {', '.join(i[:12] for i in ids[:3])}"
    )
    raise ExperimentError(f"{option} {wanted}: no {what} with this id in the database ({hint})")


def find_session(conn: sqlite3.Connection, wanted: str, option: str = "SESSION") -> str:
    """A session id from an id, a unique prefix of one, or ``last``/``latest``."""
    if wanted.lower() in LATEST:
        row = conn.execute("SELECT id FROM sessions ORDER BY started_at DESC LIMIT 1").fetchone()
        if row is None:
            raise ExperimentError(f"{option} {wanted}: the database holds no session yet")
        return str(row[0])
    return find_id(conn, "sessions", wanted, what="session", option=option, order="started_at DESC")


def find_run(conn: sqlite3.Connection, wanted: str) -> str:
    """A run id from an id or a unique prefix of one."""
    return find_id(conn, "experiment_runs", wanted, what="run", option="RUN_ID")


def find_experiment(conn: sqlite3.Connection, name: str, session: str | None = None) -> int:
    """The id of experiment ``name`` in ``session`` (an id or prefix), else in the most recent
    session that ran it."""
    session_id = None if session is None else find_session(conn, session, "--session")
    sql = "SELECT e.id FROM experiments e JOIN sessions s ON s.id = e.session_id WHERE e.name = ?"
    params: list[Any] = [name]
    if session_id is not None:
        sql += " AND e.session_id = ?"
        params.append(session_id)
    row = conn.execute(sql + " ORDER BY s.started_at DESC, e.id DESC LIMIT 1", params).fetchone()
    if row is not None:
        return int(row[0])
    known = [str(r[0]) for r in conn.execute("SELECT DISTINCT name FROM experiments ORDER BY 1")]
    if session_id is not None and name in known:
        ran = conn.execute(
            "SELECT group_concat(name, ', ') FROM experiments WHERE session_id = ?", (session_id,)
        ).fetchone()[0]
        raise ExperimentError(
            f"session {session_id[:12]} did not run experiment {name!r} (it ran: {ran or 'none'})"
        )
    if not known:
        raise ExperimentError(f"no experiment {name!r}: the database holds no experiment yet")
    close = nearest(name, known)
    hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known[:10])}"
    raise ExperimentError(f"no experiment {name!r} in the database; {hint}")


def resolve_session(conn: sqlite3.Connection, wanted: str, option: str = "--llm-compare") -> str:
    """The session id that ``wanted`` (an id or a unique prefix of one) names."""
    return find_id(conn, "sessions", wanted, what="session", option=option, order="started_at DESC")
