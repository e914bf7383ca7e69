"""The ``llmexp`` command's text output: tables that fit the terminal, and one view per
command over what ``browse`` reads."""

from __future__ import annotations

import shutil
import textwrap
from typing import Any

__all__ = [
    "comparison_lines",
    "experiment_lines",
    "experiments_lines",
    "num",
    "prompt_lines",
    "run_lines",
    "runs_lines",
    "sessions_lines",
    "table",
]

_ELLIPSIS = "…"


def num(value: Any, signed: bool = False) -> str:
    """A number as a person reads it: integers whole, others to 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15 and not signed:
        return str(int(value))
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _when(timestamp: str | None) -> str:
    """An ISO timestamp to the minute, as stored (UTC)."""
    return "-" if not timestamp else timestamp[:16].replace("T", " ")


def _numeric(cell: str) -> bool:
    try:
        float(cell.rstrip("s%"))
    except ValueError:
        return False
    return True


def table(header: list[str], rows: list[list[str]], *, shrink: int = -1) -> list[str]:
    """Aligned columns, numbers to the right; when wider than the terminal, column
    ``shrink`` (default the last) is cut with an ellipsis."""
    width = shutil.get_terminal_size((100, 24)).columns
    rows = [[" ".join(cell.split()) for cell in row] for row in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    over = sum(widths) + 2 * (len(widths) - 1) - width
    column = shrink % len(widths)
    if over > 0:
        cut = min(over, widths[column] - max(len(header[column]), 10))
        widths[column] -= max(cut, 0)
        over -= max(cut, 0)
    while over > 0:
        # Still too wide: narrow the widest column that can give, one character at a time;
        # the first column (ids, names) stays whole, as people copy it.
        floors = [widths[0], *(max(len(h), 6) for h in header[1:])]
        give = [i for i in range(len(widths)) if widths[i] > floors[i]]
        if not give:
            break
        widest = max(give, key=lambda i: widths[i] - floors[i])
        widths[widest] -= 1
        over -= 1
    lines = []
    for row in [header, *rows]:
        cells = []
        for i, cell in enumerate(row):
            if len(cell) > widths[i]:
                cell = cell[: widths[i] - 1] + _ELLIPSIS
            numeric = row is not header and _numeric(cell)
            cells.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return lines


def _counts(runs: dict[str, int]) -> str:
    return ", ".join(f"{count} {status}" for status, count in runs.items() if count) or "none"


def _pfe(runs: dict[str, int]) -> str:
    errored = runs.get("error", 0) + runs.get("crashed", 0)
    return f"{runs.get('passed', 0)}/{runs.get('failed', 0)}/{errored}"


def sessions_lines(found: list[dict[str, Any]]) -> list[str]:
    if not found:
        return ["no session in the database yet: run pytest with an @experiment test"]
    header = ["SESSION", "STARTED (UTC)", "TIME", "STATUS", "EXIT", "RUNS P/F/E", "GATES"]
    rows = [
        [
            s["id"][:12],
            _when(s["started_at"]),
            "-" if s["duration_s"] is None else f"{s['duration_s']:.1f}s",
            s["status"],
            num(s["exitstatus"]),
            _pfe(s["runs"]),
            s["gates"] or "-",
            ", ".join(s["experiments"]) or "-",
        ]
        for s in found
    ]
    return table([*header, "EXPERIMENTS"], rows)


def _means(means: dict[str, float | None]) -> str:
    return "  ".join(f"{m}={num(v)}" for m, v in means.items()) or "-"


def experiments_lines(found: list[dict[str, Any]]) -> list[str]:
    if not found:
        return ["no experiment in the database yet: run pytest with an @experiment test"]
    header = ["SESSION", "STARTED (UTC)", "EXPERIMENT", "STATUS", "RUNS P/F/E", "GATES", "MEANS"]
    rows = [
        [
            e["session_id"][:12],
            _when(e["started_at"]),
            e["name"],
            e["session_status"],
            _pfe(e["runs"]),
            e["gates"] or "-",
            f"{len(e['variants'])} variants" if e.get("variants") else _means(e["means"]),
        ]
        for e in found
    ]
    return table(header, rows)


def reason(kind: str | None, message: str | None) -> str:
    """A run's error on one line: its type and the message's first line (an assertion's
    own message, which pytest's explanation follows), marked when there is more."""
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    text = lines[0].strip() + (" [...]" if len(lines) > 1 else "") if lines else ""
    if kind and not text.startswith(kind):
        return f"{kind}: {text}" if text else kind
    return text or "-"


def _reason(run: dict[str, Any]) -> str:
    return reason(run.get("error_type"), run.get("error_message"))


def experiment_lines(detail: dict[str, Any], matrix: list[str] | None = None) -> list[str]:
    """``llmexp show``: ``matrix`` is the variants side by side, shown instead of the
    metrics of the whole experiment."""
    variant = f" [{detail['variant']}]" if detail.get("variant") else ""
    lines = [
        f"{detail['name']}{variant}: session {detail['session_id'][:12]} "
        f"({detail['session_status']}), "
        f"started {_when(detail['started_at'])} UTC, {detail['cases']} case(s) x "
        f"{detail['num_executions']} execution(s)"
        + (
            f", partial: {detail['partial']['runs']} of {detail['partial']['planned']} "
            "planned runs ran"
            if detail.get("partial")
            else ""
        ),
        f"runs: {_counts(detail['runs'])}",
        "",
    ]
    if detail.get("adaptive"):
        from .adaptiveview import adaptive_lines

        lines += [*adaptive_lines(detail["adaptive"], detail.get("adaptive_note")), ""]
    if matrix:
        lines += [f"variants ({len(detail['variants'])}):", *matrix, ""]
    elif detail["metrics"]:
        header = ["METRIC", "KIND", "N", "MEAN", "95% CI", "STD", "MIN", "MEDIAN", "MAX"]
        rows = [
            [
                metric,
                s["kind"],
                num(s["n"]),
                num(s["mean"]),
                "-" if s["ci_low"] is None else f"[{num(s['ci_low'])}, {num(s['ci_high'])}]",
                num(s["std"]),
                num(s["min"]),
                num(s["median"]),
                num(s["max"]),
            ]
            for metric, s in detail["metrics"].items()
        ]
        lines += [*table(header, rows, shrink=4), ""]
    else:
        lines += ["no metric values: no run was evaluated", ""]
    if detail["gates"]:
        verdict = "passed" if detail["gate_passed"] else "FAILED"
        lines.append(f"gates: {verdict}")
        by_variant = bool(matrix)
        rows = [
            [
                *([g["variant"] or "-"] if by_variant else []),
                g["gate"],
                g["source"],
                num(g["observed"]),
                g["verdict"],
                g["detail"] or "",
            ]
            for g in detail["gates"]
        ]
        header = [*(["VARIANT"] if by_variant else []), "GATE", "FROM", "OBSERVED", "VERDICT"]
        lines += [*table([*header, "DETAIL"], rows), ""]
    else:
        lines += ["gates: none evaluated", ""]
    cheapest = detail.get("cheapest")
    if cheapest:
        which = cheapest["variant"] or "none"
        lines += [f"cheapest variant passing every gate: {which} ({cheapest['note']})", ""]
    if detail["not_passed"]:
        lines.append(f"runs that did not pass ({len(detail['not_passed'])}):")
        by_variant = any(r.get("variant") for r in detail["not_passed"])
        rows = [
            [
                r["id"][:12],
                *([r["variant"] or "-"] if by_variant else []),
                r["case"] or "-",
                str(r["execution"]),
                r["status"],
                _reason(r),
            ]
            for r in detail["not_passed"]
        ]
        header = ["RUN", *(["VARIANT"] if by_variant else []), "CASE", "EXEC", "STATUS"]
        lines += [*table([*header, "REASON"], rows), ""]
    if detail["comparison"]:
        lines += comparison_lines(detail["comparison"])
    for variant, comparison in (detail.get("variant_comparisons") or {}).items():
        lines += [f"[{variant}]", *comparison_lines(comparison)]
    return lines


def metric_changed_line(name: str) -> str:
    """What a comparison says of a metric whose code changed."""
    return (
        f"metric changed: {name} (its code differs from the baseline's: the difference may be "
        "the ruler's, not the thing measured)"
    )


def comparison_lines(comparison: dict[str, Any], *, diffs: bool = True) -> list[str]:
    lines = [f"compared with session {comparison['baseline_session'][:12]}:"]
    rows = [
        [
            m["metric"],
            num(m["baseline_mean"]),
            num(m["current_mean"]),
            num(m["diff"], signed=True),
            "-"
            if m["ci_low"] is None
            else f"[{num(m['ci_low'], signed=True)}, {num(m['ci_high'], signed=True)}]",
            f"{m['n_baseline']} / {m['n_current']}",
            m["verdict"] + (" (metric changed)" if m.get("metric_changed") else ""),
        ]
        for m in comparison["metrics"]
    ]
    lines += table(
        ["METRIC", "BASELINE", "CURRENT", "DIFF", "95% CI", "N (BASE / CUR)", "VERDICT"],
        rows,
        shrink=4,
    )
    lines += [metric_changed_line(name) for name in comparison.get("metric_changes", [])]
    if comparison.get("adaptive"):
        lines.append(comparison["adaptive"])
    for change in comparison["prompts"]:
        lines.append(
            f"prompt {change['prompt']} changed: {', '.join(change['from']) or '-'} -> "
            f"{', '.join(change['to']) or '-'}"
        )
        if diffs and change.get("diff"):
            lines += ["  " + line for line in change["diff"].rstrip().splitlines()]
    for change in comparison["bots"]:
        if diffs and "diff" in change:
            lines.append(f"bot {change['setting']} changed:")
            lines += ["  " + line for line in change["diff"].rstrip().splitlines()]
        else:
            lines.append(
                f"bot {change['setting']}: {', '.join(change['from']) or '-'} -> "
                f"{', '.join(change['to']) or '-'}"
            )
    return [*lines, ""]


def runs_lines(name: str, session_id: str, found: list[dict[str, Any]]) -> list[str]:
    metrics = list(dict.fromkeys(m for r in found for m in r["metrics"]))
    by_variant = any(r.get("variant") for r in found)
    header = ["RUN", *(["VARIANT"] if by_variant else []), "CASE", "EXEC", "STATUS", "TIME"]
    header += [*metrics, "ERROR"]
    rows = [
        [
            r["id"][:12],
            *([r["variant"] or "-"] if by_variant else []),
            r["case"] or "-",
            str(r["execution"]),
            r["status"],
            "-" if r["duration_s"] is None else f"{r['duration_s']:.2f}s",
            *(num(r["metrics"].get(m)) for m in metrics),
            _reason(r) if r["status"] != "passed" else "",
        ]
        for r in found
    ]
    title = f"{name}: session {session_id[:12]}, {len(found)} run(s)"
    return [title, *table(header, rows)]


def _wrap(text: str, indent: str = "    ") -> list[str]:
    width = max(40, shutil.get_terminal_size((100, 24)).columns - len(indent))
    out = []
    for line in str(text).splitlines() or [""]:
        out += textwrap.wrap(line, width, replace_whitespace=False) or [""]
    return [indent + line for line in out]


def _short(value: Any) -> str:
    """A parameter as a person scans it: a long digest cut to its start."""
    text = str(value)
    return text[:12] + _ELLIPSIS if len(text) > 40 and " " not in text else text


def run_lines(run: dict[str, Any]) -> list[str]:
    case = f" [{run['case']}]" if run["case"] else ""
    if run.get("variant"):
        case = f" [{run['variant']}]{case}"
    took = "" if run["duration_s"] is None else f", {run['duration_s']:.2f}s"
    lines = [
        f"run {run['id']} ({run['status']}): {run['experiment']}{case} execution "
        f"{run['execution']}, session {run['session_id'][:12]}, worker {run['worker']}{took}",
    ]
    attempts = run.get("attempts") or []
    if len(attempts) > 1:
        lines.append(
            "attempts (a rerun plugin's): "
            + "; ".join(
                f"{a['attempt']}: {a['id'][:12]} {a['status']}"
                + (f" ({a['error_type']})" if a["error_type"] else "")
                + (" <- this run" if a["id"] == run["id"] else "")
                for a in attempts
            )
        )
    if run["replayed_from"]:
        lines.append(f"re-scored from run {run['replayed_from'][:12]}")
    if run["status"] != "passed" and (run["error_type"] or run["error_message"]):
        lines.append(f"error: {_reason(run)}")
    metrics = ", ".join(f"{m} = {num(v['value'])}" for m, v in run["metrics"].items())
    lines += [f"metrics: {metrics or 'none'}", "", "prompts:"]
    lines += [f"  {p['name']} ({p['role']}) version {p['version']}" for p in run["prompts"]]
    if not run["prompts"]:
        lines.append("  none")
    lines += ["", "bots:"]
    for bot in run["bots"]:
        extra = ", ".join(f"{k}={_short(v)}" for k, v in bot["params"].items())
        schema = bot["response_schema"]
        lines.append(
            f"  {bot['label']} model={bot['model']} temperature={num(bot['temperature'])}"
            + (f" schema={schema.get('title', 'object')}" if schema else "")
            + (f" {extra}" if extra else "")
        )
    lines += ["", "conversation:"]
    for number, call in enumerate(run["calls"], 1):
        tokens = f"{num(call['prompt_tokens'])}+{num(call['completion_tokens'])} tokens"
        source = " (replayed)" if call["replayed_from"] else ""
        latency = "-" if call["latency_ms"] is None else f"{call['latency_ms']:.0f} ms"
        lines.append(
            f"--- call {number}: {call['bot'] or '?'} {call['model']} "
            f"(temperature {num(call['temperature'])}), {tokens}, {latency}{source}"
        )
        for message in call["messages"]:
            lines += message_lines(message)
        if call["error"]:
            lines.append(f"  error: {call['error']}")
    if not run["calls"]:
        lines.append("  no LLM call")
    return lines


def message_lines(message: dict[str, Any]) -> list[str]:
    """One message of a conversation: its role, text, and the tool calls it asks for."""
    role = message.get("role", "?")
    if role == "tool" and message.get("tool_call_id"):
        role = f"tool {message['tool_call_id']}"
    lines = [f"  [{role}]"]
    content = message.get("content")
    if isinstance(content, list):  # parts: text, images, files
        content = "\n".join(
            str(p.get("text", ""))
            if isinstance(p, dict) and "text" in p
            else f"({p.get('type', 'part') if isinstance(p, dict) else 'part'})"
            for p in content
        )
    if content or not message.get("tool_calls"):
        lines += _wrap(content or "")
    if message.get("refusal"):
        lines += _wrap(f"refused: {message['refusal']}")
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        lines += _wrap(
            f"calls {function.get('name')}({function.get('arguments') or ''}) [{call.get('id')}]"
        )
    return lines


def prompt_lines(history: dict[str, list[dict[str, Any]]]) -> list[str]:
    if not history:
        return ["no prompt in the database yet"]
    lines = []
    for name, versions in history.items():
        latest = versions[-1]
        lines.append(f"{name} ({latest['role']}, {latest['module']}): {len(versions)} version(s)")
        rows = [
            [
                v["version"],
                _when(v["created_at"]),
                str(v["runs"]),
                _when(v["first_used"]),
                _when(v["last_used"]),
                v["template"],
            ]
            for v in versions
        ]
        header = ["VERSION", "CREATED (UTC)", "RUNS", "FIRST USED", "LAST USED", "TEMPLATE"]
        lines += [*("  " + line for line in table(header, rows)), ""]
    return lines
