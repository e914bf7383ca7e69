"""The ``llmexp`` command: tools for message_log.db outside a pytest session."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .validation import DEFAULT_DB

if TYPE_CHECKING:
    from .store import Store

__all__ = ["main"]


def _recover(args: argparse.Namespace) -> int:
    from .errors import StoreError
    from .health import recovery_lines
    from .recovery import recover
    from .spool import spool_dir
    from .store import Store

    db_path = Path(args.db).resolve()
    directory = spool_dir(db_path)
    if not directory.is_dir():
        print(f"nothing to recover: no spool beside {db_path}")
        return 0
    try:
        store = Store(db_path)
    except StoreError as exc:
        print(f"llmexp recover: {exc}", file=sys.stderr)
        return 2
    try:
        results = recover(store, directory)
    finally:
        store.close()
    for line in recovery_lines(results):
        print(line)
    failed = [r for r in results if r.errors]
    for result in failed:
        print(
            f"llmexp recover: session {result.session_id}: {len(result.errors)} record(s) "
            f"could not be stored (last: {result.errors[-1]}); its spool was kept",
            file=sys.stderr,
        )
    if not results:
        print(f"nothing to recover in {directory}: its sessions are still running")
    return 1 if failed else 0


def _open_store(db: str, command: str) -> Store | None:
    from .errors import StoreError
    from .store import Store

    path = Path(db).resolve()
    if not path.is_file():
        print(f"llmexp {command}: no database at {path}; pass --db PATH", file=sys.stderr)
        return None
    try:
        return Store(path)
    except StoreError as exc:
        print(f"llmexp {command}: {exc}", file=sys.stderr)
        return None


def _export(args: argparse.Namespace) -> int:
    from .cachedb import export_cassette
    from .compare import resolve_session
    from .errors import ExperimentError

    store = _open_store(args.db, "cache export")
    if store is None:
        return 2
    try:
        with store.reading() as conn:
            session = None
            if args.session is not None:
                session = resolve_session(conn, args.session, option="--session")
            if args.output == "-":
                written, masked = export_cassette(
                    conn, sys.stdout, session=session, experiments=args.experiment
                )
            else:
                with open(args.output, "w", encoding="utf-8") as out:
                    written, masked = export_cassette(
                        conn, out, session=session, experiments=args.experiment
                    )
    except (ExperimentError, OSError) as exc:
        print(f"llmexp cache export: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    source = f"session {session[:12]}" if session else "the cache"
    print(f"exported {written} recorded call(s) from {source}", file=sys.stderr)
    if masked:
        print(
            f"warning: {masked} of them held key-like text, which was masked; those calls "
            "will not replay until their prompts hold no secret",
            file=sys.stderr,
        )
    if not written:
        print(
            "nothing to export: record calls with pytest --llm-cache record, or name a "
            "session with --session",
            file=sys.stderr,
        )
        return 1
    return 0


def _import(args: argparse.Namespace) -> int:
    from .cachedb import import_cassette
    from .errors import StoreError
    from .store import Store

    try:
        with open(args.file, encoding="utf-8") as lines:
            text = lines.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        print(f"llmexp cache import: cannot read {args.file!r}: {exc}", file=sys.stderr)
        return 2
    try:
        store = Store(Path(args.db).resolve())
    except StoreError as exc:
        print(f"llmexp cache import: {exc}", file=sys.stderr)
        return 2
    try:
        result = import_cassette(store, text, args.file)
    except StoreError as exc:
        print(f"llmexp cache import: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"imported {result.added} call(s) into {args.db}; {result.unchanged} already there")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmexp", description=__doc__)
    parser.add_argument(
        "--db",
        default=os.environ.get("LLMEXP_DB") or DEFAULT_DB,
        help=f"the experiment database (default: $LLMEXP_DB, else ./{DEFAULT_DB})",
    )
    # --db is also accepted after the command: `llmexp cache export --db PATH`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "recover",
        parents=[common],
        help="store the runs that killed sessions left in the spool, and mark those sessions "
        "aborted (a pytest session with experiments does this when it starts)",
    ).set_defaults(run=_recover)
    cache = commands.add_parser(
        "cache", help="export or import recorded LLM calls (a cassette, JSON Lines)"
    )
    verbs = cache.add_subparsers(dest="verb", required=True, metavar="VERB")
    export = verbs.add_parser(
        "export",
        parents=[common],
        help="write the recorded calls (pytest --llm-cache record) as JSON Lines, with no "
        "key, header or endpoint address",
    )
    export.add_argument("-o", "--output", default="-", help="the file to write (default: stdout)")
    export.add_argument(
        "--experiment", action="append", default=[], help="only this experiment (repeatable)"
    )
    export.add_argument(
        "--session", help="export this session's calls instead of the cache (an id or prefix)"
    )
    export.set_defaults(run=_export)
    load = verbs.add_parser(
        "import",
        parents=[common],
        help="record the calls of a cassette file in the database's cache",
    )
    load.add_argument("file", help="a file written by llmexp cache export")
    load.set_defaults(run=_import)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
