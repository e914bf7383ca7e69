"""The ``llmexp`` command: tools for message_log.db outside a pytest session."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .validation import DEFAULT_DB

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmexp", description=__doc__)
    parser.add_argument(
        "--db",
        default=os.environ.get("LLMEXP_DB") or DEFAULT_DB,
        help=f"the experiment database (default: $LLMEXP_DB, else ./{DEFAULT_DB})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "recover",
        help="store the runs that killed sessions left in the spool, and mark those sessions "
        "aborted (a pytest session with experiments does this when it starts)",
    ).set_defaults(run=_recover)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
