"""The ``llmexp`` commands that read message_log.db: sessions, experiments, show, runs, run,
prompts, compare, export, gate and report."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .._util.files import write_private
from .._util.lookup import find_experiment, find_run, find_session
from ..errors import ExperimentError
from . import browse, textview

__all__ = ["COMMANDS", "Failed"]


class Failed(Exception):
    """A command that cannot do what was asked; its message is printed, the exit status is 2."""


@contextmanager
def _reading(args: argparse.Namespace) -> Iterator[Any]:
    """The database's connection, for reads; a missing, foreign or newer database, or an id
    or name that names nothing, is a :class:`Failed` with the message a person needs."""
    from .._store.store import Store
    from ..errors import LLMExpError

    path = Path(args.db).resolve()
    if not path.is_file():
        raise Failed(
            f"no database at {path} (from {args.db_source}): run pytest with an @experiment "
            "test first, or pass --db PATH (or set LLMEXP_DB)"
        )
    try:
        store = Store(path)
    except LLMExpError as exc:
        # The store's messages name the plugin's option; here the option is --db.
        raise Failed(str(exc).replace("--llm-db", "--db")) from None
    try:
        with store.reading() as conn:
            yield conn
    except LLMExpError as exc:
        raise Failed(str(exc)) from None
    finally:
        store.close()


def _emit(args: argparse.Namespace, data: Any, lines: list[str]) -> int:
    from .._util.redact import redact

    # Output is pasted into issues and CI logs: key-shaped text is masked, as in a cassette.
    if getattr(args, "json", False):
        print(redact(json.dumps(data, indent=2, ensure_ascii=False)))
    else:
        print(redact("\n".join(lines).rstrip()))
    return 0


def _sessions(args: argparse.Namespace) -> int:
    with _reading(args) as conn:
        found = browse.sessions(conn, args.limit)
    return _emit(args, found, textview.sessions_lines(found))


def _experiments(args: argparse.Namespace) -> int:
    with _reading(args) as conn:
        found = browse.experiments(conn, args.name, args.limit)
    return _emit(args, found, textview.experiments_lines(found))


def _show(args: argparse.Namespace) -> int:
    from . import variantview

    with _reading(args) as conn:
        try:
            detail = browse.experiment_detail(
                conn, find_experiment(conn, args.experiment, args.session), args.variant
            )
        except ExperimentError as exc:
            raise Failed(str(exc)) from None
    matrix = variantview.matrix_lines(detail["variants"], "") if detail.get("variants") else None
    return _emit(args, detail, textview.experiment_lines(detail, matrix))


def _runs(args: argparse.Namespace) -> int:
    with _reading(args) as conn:
        experiment_id = find_experiment(conn, args.experiment, args.session)
        session_id = conn.execute(
            "SELECT session_id FROM experiments WHERE id = ?", (experiment_id,)
        ).fetchone()[0]
        found = browse.runs(conn, experiment_id)
        if args.status:
            found = [r for r in found if r["status"] in args.status]
    return _emit(args, found, textview.runs_lines(args.experiment, session_id, found))


def _run(args: argparse.Namespace) -> int:
    with _reading(args) as conn:
        detail = browse.run_detail(conn, find_run(conn, args.run_id))
    return _emit(args, detail, textview.run_lines(detail))


def _prompts(args: argparse.Namespace) -> int:
    from .._verdict.compare import unified_diff

    with _reading(args) as conn:
        history = browse.prompt_history(conn, args.name)
    if args.diff is None:
        return _emit(args, history, textview.prompt_lines(history))
    if args.name is None:
        raise Failed("--diff compares two versions of one prompt: name it (llmexp prompts NAME)")
    versions = history[args.name]
    if len(args.diff) > 2:
        raise Failed(f"--diff takes at most two versions, got {len(args.diff)}")

    def pick(wanted: str) -> int:
        matches = [i for i, v in enumerate(versions) if v["hash"].startswith(wanted.lower())]
        if len(matches) != 1:
            known = ", ".join(v["version"] for v in versions)
            problem = "matches several" if matches else "is not a version of it"
            raise Failed(f"prompt {args.name!r}: {wanted!r} {problem} (versions: {known})")
        return matches[0]

    if len(versions) < 2 and len(args.diff) < 2:
        raise Failed(f"prompt {args.name!r} has one version only ({versions[0]['version']})")
    if not args.diff:
        before, after = len(versions) - 2, len(versions) - 1
    elif len(args.diff) == 1:
        after = pick(args.diff[0])
        if after == 0:
            raise Failed(f"{versions[0]['version']} is the first version of {args.name!r}")
        before = after - 1
    else:
        before, after = pick(args.diff[0]), pick(args.diff[1])
    old, new = versions[before], versions[after]
    diff = unified_diff(
        old["template"],
        new["template"],
        f"{args.name} {old['version']}",
        f"{args.name} {new['version']}",
    )
    data = {"prompt": args.name, "from": old, "to": new, "diff": diff}
    return _emit(args, data, diff.splitlines() or ["the two versions' templates are the same"])


def _compare(args: argparse.Namespace) -> int:
    from .._verdict.compare import compare_experiments
    from .._verdict.evaluate import applicable_gates, load_experiment

    with _reading(args) as conn:
        base = find_session(conn, args.baseline, "BASELINE")
        current = find_session(conn, args.current, "CURRENT")
        names = [
            str(r[0])
            for r in conn.execute(
                "SELECT e.name FROM experiments e JOIN experiments b ON b.name = e.name "
                "WHERE e.session_id = ? AND b.session_id = ? ORDER BY e.id",
                (current, base),
            )
        ]
        if args.experiment:
            missing = [n for n in args.experiment if n not in names]
            if missing:
                raise Failed(
                    f"experiment(s) {', '.join(missing)} did not run in both sessions (both "
                    f"ran: {', '.join(names) or 'none'})"
                )
            names = list(dict.fromkeys(args.experiment))
        if not names:
            raise Failed(
                f"sessions {base[:12]} and {current[:12]} have no experiment in common: "
                "nothing to compare"
            )
        result: dict[str, Any] = {}
        lines = [f"session {current[:12]} compared with baseline {base[:12]}", ""]
        for name in names:
            baseline_id = find_experiment(conn, name, base)
            data = load_experiment(conn, find_experiment(conn, name, current))
            gates = applicable_gates(data, (), ())
            if not data.variants and not args.variant:
                result[name] = compare_experiments(conn, baseline_id, data, gates)
                lines += [f"{name}:", *textview.comparison_lines(result[name])]
                continue
            # Each variant with the same variant of the baseline.
            base_variants = load_experiment(conn, baseline_id).variants
            both = [v for v in data.variants if v in base_variants]
            wanted = [v for v in args.variant if v in both] if args.variant else both
            if not wanted:
                lines += [
                    f"{name}: not compared: the two sessions ran no variant of it in common",
                    "",
                ]
                continue
            result[name] = {
                variant: compare_experiments(
                    conn, baseline_id, data.of_variant(variant), gates, variant
                )
                for variant in wanted
            }
            for variant, comparison in result[name].items():
                lines += [f"{name} [{variant}]:", *textview.comparison_lines(comparison)]
        if not result:
            raise Failed(
                f"no experiment ran the variant(s) {', '.join(args.variant)} in both sessions "
                f"{base[:12]} and {current[:12]}"
                if args.variant
                else f"sessions {base[:12]} and {current[:12]} have no variant in common"
            )
    return _emit(args, {"baseline": base, "current": current, "experiments": result}, lines)


def _format_rows(rows: list[dict[str, Any]], kind: str) -> str:
    if kind == "json":
        return json.dumps(rows, indent=2, ensure_ascii=False) + "\n"
    if kind == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _export(args: argparse.Namespace) -> int:
    if args.all_sessions and args.session is not None:
        raise Failed("--all-sessions exports every session: leave out --session, or it")
    with _reading(args) as conn:
        if args.all_sessions:
            find_experiment(conn, args.experiment)
            ids = [
                int(r[0])
                for r in conn.execute(
                    "SELECT e.id FROM experiments e JOIN sessions s ON s.id = e.session_id "
                    "WHERE e.name = ? ORDER BY s.started_at, e.id",
                    (args.experiment,),
                )
            ]
        else:
            ids = [find_experiment(conn, args.experiment, args.session)]
        rows = browse.export_rows(conn, ids)
    text = _format_rows(rows, args.format)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        try:
            write_private(Path(args.output), text)
        except OSError as exc:
            raise Failed(f"cannot write {args.output!r}: {exc}") from None
        print(f"wrote {len(rows)} run(s) of {args.experiment} to {args.output}", file=sys.stderr)
    return 0


def _gate(args: argparse.Namespace) -> int:
    from .._verdict.gates import check_gates
    from .._verdict.verdicts import judge_session
    from ..errors import GateError

    try:
        extra = check_gates(args.gate, source="cli", where="--gate")
    except GateError as exc:
        raise Failed(str(exc)) from None
    with _reading(args) as conn:
        session_id = find_session(conn, args.session)
        status, health = conn.execute(
            "SELECT status, health FROM sessions WHERE id = ?", (session_id,)
        ).fetchone()
        if status != "complete":
            raise Failed(
                f"session {session_id[:12]} is {status}: its numbers are not a verdict; gate "
                "a complete session"
            )
        over_budget = bool(health and json.loads(health).get("over_budget"))
        stored: dict[str, list[str]] = {"ini": [], "cli": []}
        for text, source in conn.execute(
            "SELECT DISTINCT g.gate, g.source FROM gate_results g JOIN experiments e "
            "ON e.id = g.experiment_id WHERE e.session_id = ? AND g.source IN ('ini', 'cli')",
            (session_id,),
        ):
            stored[source].append(text)
        verdict = judge_session(
            conn,
            session_id,
            ini_gates=check_gates(stored["ini"], source="ini", where="the session's ini gates"),
            cli_gates=check_gates(stored["cli"], source="cli", where="the session's gates") + extra,
            compare=None,
            fail_on_regression=False,
            not_evaluable="more runs errored than the error budget allows" if over_budget else None,
        )
    reasons = list(verdict.unmatched)
    lines = [f"session {session_id[:12]}:"]
    for name, judged in verdict.experiments.items():
        if judged.not_evaluated and judged.gates == []:
            reasons.append(f"{name}: gates not evaluated: {judged.not_evaluated}")
        variant = [[r.variant or ""] if judged.variants else [] for r in judged.gates]
        rows = [
            [*v, r.gate.text, r.gate.source, textview.num(r.observed), r.verdict, r.detail]
            for v, r in zip(variant, judged.gates, strict=True)
        ]
        reasons += [
            f"{name}: gate {r.gate.text}{f' [{r.variant}]' if r.variant else ''} {r.verdict}"
            for r in judged.gates
            if not r.passed
        ]
        if rows:
            header = [*(["VARIANT"] if judged.variants else []), "GATE", "FROM", "OBSERVED"]
            header += ["VERDICT", "DETAIL"]
            lines += [f"{name}:", *textview.table(header, rows)]
    gated = sum(len(v.gates) for v in verdict.experiments.values())
    if not gated and not reasons:
        # Nothing to judge is not a failed verdict: it is a question with no answer.
        raise Failed(
            f"session {session_id[:12]} has no gate to evaluate: declare gates in code "
            "(@experiment(gates=...), @metric(gate=...)) or ini llm_gates, or pass one: "
            "--gate 'EXPERIMENT.METRIC: mean >= 0.8'"
        )
    lines += [f"ERROR: {reason}" for reason in reasons]
    lines.append(f"LLM verdict: {'FAILED' if reasons else 'passed'} ({gated} gate(s))")
    data = {
        "session": session_id,
        "passed": not reasons,
        "reasons": reasons,
        "experiments": {n: v.as_json() for n, v in verdict.experiments.items()},
    }
    _emit(args, data, lines)
    return 1 if reasons else 0


def _report(args: argparse.Namespace) -> int:
    from .htmlreport import build_html

    with _reading(args) as conn:
        session = None if args.session is None else find_session(conn, args.session)
        for name in args.experiment:
            find_experiment(conn, name, session)
        html = build_html(
            conn,
            session=session,
            experiments=args.experiment,
            trend_length=args.trend,
            database=Path(args.db).name,
        )
    try:
        write_private(Path(args.output), html)
    except OSError as exc:
        raise Failed(f"cannot write {args.output!r}: {exc}") from None
    print(f"wrote {args.output} ({len(html.encode()) // 1024} KiB)")
    return 0


COMMANDS = {
    "sessions": _sessions,
    "experiments": _experiments,
    "show": _show,
    "runs": _runs,
    "run": _run,
    "prompts": _prompts,
    "compare": _compare,
    "export": _export,
    "gate": _gate,
    "report": _report,
}
