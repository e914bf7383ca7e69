"""The llmexp command: look at message_log.db, and tools for it outside a pytest session."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._util.defaults import DEFAULT_DB

if TYPE_CHECKING:
    from ._store.store import Store

__all__ = ["main"]


def _recover(args: argparse.Namespace) -> int:
    from ._plugin.terminal import recovery_lines
    from ._store.recovery import recover
    from ._store.spool import spool_dir
    from ._store.store import Store
    from .errors import StoreError

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
    from ._store.store import Store
    from .errors import StoreError

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
    from ._store.cassette import export_cassette
    from ._util.lookup import resolve_session
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
    from ._store.cassette import import_cassette
    from ._store.store import Store
    from .errors import StoreError

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


def _read_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    from ._view.commands import COMMANDS

    listing = argparse.ArgumentParser(add_help=False, parents=[common])
    listing.add_argument("--json", action="store_true", help="print JSON, for scripts")

    def command(name: str, help: str, *, json: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[listing if json else common], help=help)
        sub.set_defaults(run=COMMANDS[name])
        return sub

    def session_of(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--session",
            help="the session (an id, a unique prefix, or 'last'; default: the most recent "
            "session that ran the experiment)",
        )

    for name, what in (
        ("sessions", "sessions, with status, runs and gate verdicts"),
        ("experiments", "experiments, with status, runs and metric means"),
    ):
        sub = command(name, f"the most recent {what}")
        if name == "experiments":
            sub.add_argument("name", nargs="?", help="only the experiment of this name")
        sub.add_argument("-n", "--limit", type=_positive, default=20, help="how many (20)")
    show = command("show", "an experiment's metric statistics, gates, and failing runs")
    show.add_argument("experiment", help="the experiment's name")
    show.add_argument(
        "--variant",
        metavar="VARIANT",
        help="only this variant, e.g. model=gpt-4o (default: every variant side by side)",
    )
    session_of(show)
    runs = command("runs", "an experiment's runs, with their status and metric values")
    runs.add_argument("experiment", help="the experiment's name")
    runs.add_argument(
        "--status",
        action="append",
        choices=("passed", "failed", "error", "crashed", "skipped", "rerun"),
        help="only runs of this status (repeatable)",
    )
    session_of(runs)
    run = command("run", "one run: its conversation, prompts with versions, bots and metrics")
    run.add_argument("run_id", metavar="RUN_ID", help="a run id, or a unique prefix of one")
    prompts = command("prompts", "each prompt's version history, or a diff of two versions")
    prompts.add_argument("name", nargs="?", help="only the prompt function of this name")
    prompts.add_argument(
        "--diff",
        nargs="*",
        metavar="VERSION",
        help="show a diff: of the last two versions (no VERSION), of VERSION and the one "
        "before it, or of two VERSIONs",
    )
    compare = command("compare", "compare two stored sessions, metric by metric")
    compare.add_argument("baseline", metavar="BASELINE", help="the baseline session")
    compare.add_argument("current", metavar="CURRENT", help="the session compared with it")
    compare.add_argument(
        "--experiment", action="append", default=[], help="only this experiment (repeatable)"
    )
    compare.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="VARIANT",
        help="only this variant, with the same variant of the baseline (repeatable; default: "
        "every variant both ran)",
    )
    export = command("export", "one row per run, metrics as columns", json=False)
    export.add_argument("experiment", help="the experiment's name")
    export.add_argument("--format", choices=("csv", "jsonl", "json"), default="csv")
    export.add_argument("-o", "--output", default="-", help="the file to write (default: stdout)")
    session_of(export)
    export.add_argument(
        "--all-sessions", action="store_true", help="the runs of every session that ran it"
    )
    gate = command(
        "gate",
        "evaluate the gates on a stored, complete session: exit 0 passed, 1 failed",
    )
    gate.add_argument("session", metavar="SESSION", help="a session id, prefix, or 'last'")
    gate.add_argument(
        "--gate",
        action="append",
        default=[],
        help="one more gate, [EXPERIMENT.]METRIC: STATISTIC OP NUMBER (repeatable)",
    )
    report = command("report", "write the self-contained HTML report", json=False)
    report.add_argument("-o", "--output", default="llmexp-report.html", help="the file to write")
    report.add_argument("--session", help="report this session (default: each experiment's latest)")
    report.add_argument(
        "--experiment", action="append", default=[], help="only this experiment (repeatable)"
    )
    report.add_argument(
        "--trend", type=_positive, default=20, help="sessions shown in the trends (20)"
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmexp", description=__doc__)
    parser.add_argument(
        "--db",
        default=None,
        help="the experiment database (default: $LLMEXP_DB, else the one pytest uses here: "
        f"llm_db of the project's pytest configuration, else {DEFAULT_DB} in its rootdir)",
    )
    # --db is also accepted after the command: `llmexp cache export --db PATH`.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _read_commands(commands, common)
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
    args.db_source = "--db"
    if args.db is None and os.environ.get("LLMEXP_DB"):
        args.db, args.db_source = os.environ["LLMEXP_DB"], "LLMEXP_DB"
    elif args.db is None:
        from ._store.schema import project_db

        path, args.db_source = project_db(Path.cwd(), DEFAULT_DB)
        args.db = str(path)
    from ._view.commands import Failed

    try:
        return int(args.run(args))
    except Failed as exc:
        print(f"llmexp {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `llmexp runs x | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
