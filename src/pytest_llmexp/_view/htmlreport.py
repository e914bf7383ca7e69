"""The HTML report: one self-contained file (CSS, script, charts and data inline) that opens
from disk with no network. Per experiment: metric distributions and trends, gates, a run
table that opens each run's conversation, and prompt histories with diffs."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from html import escape
from importlib import resources
from typing import Any

from .._util.lookup import find_experiment
from .._util.redact import redact
from .._verdict.compare import unified_diff
from . import browse
from .svgcharts import distribution_svg, trend_svg
from .textview import num, reason
from .trends import trend

__all__ = ["build_html"]

_DASH = "\u2013"  # an en dash: no value
# Nothing the page holds may load anything, so a report opened from disk stays offline; and
# only the report's own script may run (allowed by its hash), never markup a model wrote.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src '{script}'; img-src data:"


def _num(value: Any) -> str:
    return _DASH if value is None else num(value)


def _digest(script: str) -> str:
    """The CSP source that allows exactly this inline script."""
    import base64
    import hashlib

    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def _script_json(data: Any) -> str:
    """JSON that cannot end its ``<script>`` element early."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _experiment_names(
    conn: sqlite3.Connection, session: str | None, wanted: list[str]
) -> list[str]:
    if wanted:
        return list(dict.fromkeys(wanted))
    rows = conn.execute(
        "SELECT e.name, max(s.started_at) FROM experiments e JOIN sessions s "
        "ON s.id = e.session_id WHERE ? IS NULL OR e.session_id = ? GROUP BY e.name "
        "ORDER BY 2 DESC, 1",
        (session, session),
    )
    return [str(r[0]) for r in rows]


def _badge(verdict: str | None) -> str:
    if verdict is None:
        return '<span class="badge neutral">not gated</span>'
    return f'<span class="badge {verdict}">gates {escape(verdict)}</span>'


def _metrics_table(detail: dict[str, Any]) -> str:
    header = "".join(
        f"<th>{h}</th>"
        for h in ("metric", "kind", "n", "mean", "95% interval", "std", "min", "median", "max")
    )
    rows = []
    for metric, s in detail["metrics"].items():
        interval = _DASH if s["ci_low"] is None else f"[{num(s['ci_low'])}, {num(s['ci_high'])}]"
        cells = [
            _num(s["n"]),
            _num(s["mean"]),
            interval,
            _num(s["std"]),
            _num(s["min"]),
            _num(s["median"]),
            _num(s["max"]),
        ]
        rows.append(
            f"<tr><td>{escape(metric)}</td><td>{escape(s['kind'])}</td>"
            + "".join(f'<td class="num">{escape(c)}</td>' for c in cells)
            + "</tr>"
        )
    if not rows:
        return '<p class="empty">No metric values: no run of this session was evaluated.</p>'
    return (
        f'<table class="metrics"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _charts(detail: dict[str, Any], points: list[dict[str, Any]]) -> str:
    figures = []
    for metric, s in detail["metrics"].items():
        figures.append(
            f'<div class="metric-charts" data-metric="{escape(metric)}">'
            f"<h4>{escape(metric)}</h4>"
            f'<figure class="chart distribution">{distribution_svg(metric, s["values"], s["kind"])}'
            f"<figcaption>this session</figcaption></figure>"
            f'<figure class="chart trend">{trend_svg(metric, points)}'
            f"<figcaption>mean and 95% interval per session (grey: not complete); P / B: "
            f"a prompt / bot changed</figcaption></figure></div>"
        )
    return "".join(figures)


def _gates(detail: dict[str, Any]) -> str:
    if not detail["gates"]:
        return '<p class="empty">No gate was evaluated for this session.</p>'
    by_variant = bool(detail.get("variants"))
    rows = "".join(
        f'<tr class="gate {escape(g["verdict"])}">'
        + (f"<td>{escape(g['variant'] or _DASH)}</td>" if by_variant else "")
        + f"<td><code>{escape(g['gate'])}</code></td>"
        f'<td>{escape(g["source"])}</td><td class="num">{escape(_num(g["observed"]))}</td>'
        f'<td><span class="badge {escape(g["verdict"])}">{escape(g["verdict"])}</span></td>'
        f"<td>{escape(g['detail'] or '')}</td></tr>"
        for g in detail["gates"]
    )
    variant = "<th>variant</th>" if by_variant else ""
    return (
        f'<table class="gates"><thead><tr>{variant}<th>gate</th><th>from</th><th>observed</th>'
        f"<th>verdict</th><th>detail</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _variants_table(detail: dict[str, Any]) -> str:
    """The variants side by side: each metric's mean and interval, runs, cost per run."""
    from .variantview import matrix_rows

    header, rows = matrix_rows(detail["variants"])
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        f"<tr><td>{escape(row[0])}</td>"
        + "".join(f'<td class="num">{escape(cell)}</td>' for cell in row[1:])
        + "</tr>"
        for row in rows
    )
    cheapest = detail.get("cheapest") or {}
    note = ""
    if cheapest.get("note"):
        which = escape(cheapest["variant"] or "none")
        found = "" if cheapest["variant"] else " none"
        note = (
            f'<p class="cheapest{found}">Cheapest variant passing every gate: '
            f"<strong>{which}</strong> ({escape(cheapest['note'])})</p>"
        )
    return (
        f'<table class="metrics variants"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>'
        f"</table>{note}"
    )


def _cost_charts(detail: dict[str, Any]) -> str:
    """Per metric: each variant's mean and interval against its cost per run."""
    from .._verdict.stats import interval_from
    from .svgcharts import cost_svg

    variants = detail["variants"]
    metrics = sorted({m for v in variants.values() for m in v["metrics"]})
    unpriced = [
        v for v, data in variants.items() if (data.get("cost") or {}).get("per_run") is None
    ]
    if len(unpriced) == len(variants):
        return (
            '<p class="empty">No variant has a price, so there is no chart of cost against '
            "the metrics: give each model its price in the ini file (llm_prices).</p>"
        )
    figures = []
    for metric in metrics:
        points = []
        for variant, data in variants.items():
            stats = data["metrics"].get(metric)
            per_run = (data.get("cost") or {}).get("per_run")
            if stats is None or per_run is None:
                continue
            low, high = interval_from(stats["n"], stats["mean"], stats["std"], stats["kind"])
            points.append(
                {
                    "variant": variant,
                    "cost": per_run,
                    "mean": stats["mean"],
                    "low": low,
                    "high": high,
                }
            )
        caption = "mean and 95% interval against cost per run, one point per variant"
        if unpriced:
            caption += f"; no price, not shown: {', '.join(unpriced)}"
        figures.append(
            f'<div class="metric-charts" data-metric="{escape(metric)}">'
            f'<figure class="chart cost">{cost_svg(metric, points)}'
            f"<figcaption>{escape(caption)}</figcaption></figure></div>"
        )
    return "".join(figures)


def _matrix(
    name: str, means: dict[str, dict[str, dict[str, tuple[float, int]]]], variants: list[str]
) -> str:
    """Cases as rows, variants as columns, each cell the metric means of that case and
    variant; a click opens the outputs of every variant for the case side by side."""
    head = "<th>case</th>" + "".join(f"<th>{escape(v)}</th>" for v in variants)
    rows = []
    for case, by_variant in means.items():
        cells = []
        for variant in variants:
            metrics = by_variant.get(variant, {})
            text = " · ".join(f"{m} {num(mean)}" for m, (mean, _) in metrics.items()) or _DASH
            cells.append(f'<td class="cell" data-variant="{escape(variant)}">{escape(text)}</td>')
        rows.append(
            f'<tr class="case" tabindex="0" data-experiment="{escape(name)}" '
            f'data-case="{escape(case)}"><td>{escape(case or "(the only case)")}</td>'
            + "".join(cells)
            + "</tr>"
        )
    return (
        f'<table class="matrix"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
        '</table><p class="hint">Click a case to read what each variant answered, side by '
        "side.</p>"
    )


#: Runs whose rows and conversations one experiment's section embeds (about 1 KB each).
EMBEDDED_RUNS = 500


def _run_table(name: str, runs: list[dict[str, Any]]) -> str:
    metrics = list(dict.fromkeys(m for r in runs for m in r["metrics"]))
    statuses = list(dict.fromkeys(r["status"] for r in runs))
    cases = list(dict.fromkeys(r["case"] or "" for r in runs))
    variants = list(dict.fromkeys(r["variant"] for r in runs if r.get("variant")))

    def options(values: list[str], every: str) -> str:
        return f'<option value="">{every}</option>' + "".join(
            f'<option value="{escape(v)}">{escape(v or "(no case)")}</option>' for v in values
        )

    columns = ("run", *(("variant",) if variants else ()), "case", "exec", "status", "time")
    head = "".join(f"<th>{escape(h)}</th>" for h in columns)
    head += "".join(f'<th class="num">{escape(m)}</th>' for m in metrics) + "<th>error</th>"
    rows = []
    for r in runs:
        error = "" if r["status"] == "passed" else reason(r["error_type"], r["error_message"])
        time = _DASH if r["duration_s"] is None else f"{r['duration_s']:.2f}s"
        rows.append(
            f'<tr class="run" tabindex="0" data-run="{escape(r["id"])}" '
            f'data-status="{escape(r["status"])}" data-case="{escape(r["case"] or "")}" '
            f'data-variant="{escape(r.get("variant") or "")}">'
            f"<td><code>{escape(r['id'][:12])}</code></td>"
            + (f"<td>{escape(r.get('variant') or _DASH)}</td>" if variants else "")
            + f"<td>{escape(r['case'] or _DASH)}</td>"
            f'<td class="num">{r["execution"]}</td>'
            f'<td><span class="badge {escape(r["status"])}">{escape(r["status"])}</span></td>'
            f'<td class="num">{time}</td>'
            + "".join(f'<td class="num">{escape(_num(r["metrics"].get(m)))}</td>' for m in metrics)
            + f'<td class="error">{escape(error)}</td></tr>'
        )
    return (
        f'<div class="filters" data-experiment="{escape(name)}">'
        f'<label>status <select class="filter" name="status">{options(statuses, "all")}</select>'
        f'</label><label>case <select class="filter" name="case">{options(cases, "all")}'
        "</select></label>"
        + (
            f'<label>variant <select class="filter" name="variant">{options(variants, "all")}'
            "</select></label>"
            if variants
            else ""
        )
        + f'<span class="shown">{len(runs)} of {len(runs)} run(s)</span></div>'
        f'<table class="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
        '<p class="hint">Click a run to read its conversation.</p>'
    )


def _adaptive(detail: dict[str, Any]) -> str:
    """An adaptive experiment: what ran and was not needed, and per case how many of its
    executions ran and why it stopped."""
    adaptive = detail.get("adaptive")
    if not adaptive:
        return ""
    from .adaptiveview import adaptive_lines, stop_phrase

    lines = adaptive_lines(adaptive, detail.get("adaptive_note"))
    notes = "".join(f"<li>{escape(line.strip())}</li>" for line in lines[1:])
    by_variant = any(c["variant"] for c in adaptive["cases"])
    rows = []
    for case in adaptive["cases"]:
        if case["stopped"]:
            after, phrase = stop_phrase(case["stopped"])
            why = f"decided after {after}: {phrase}" if after is not None else phrase
        else:
            why = "ran every execution"
        cells = [case["variant"] or "-"] if by_variant else []
        cells += [case["case"] or "(the only case)", str(case["executions"]), why]
        rows.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    head = ["variant"] if by_variant else []
    head += ["case", "executions run", "why it stopped"]
    return (
        f"<h3>Adaptive executions</h3><p>{escape(lines[0])}</p><ul>{notes}</ul>"
        "<table><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _left_out(name: str, total: int, shown: int) -> str:
    if shown == total:
        return ""
    return (
        f'<p class="note">The table holds {shown} of the {total} runs, those that did not '
        f"pass first; the statistics and charts cover them all. <code>llmexp runs "
        f"{escape(name)}</code> lists every run, and <code>llmexp run RUN_ID</code> shows "
        "any conversation.</p>"
    )


def _diff_html(diff: str) -> str:
    lines = []
    for line in diff.splitlines():
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")
        if line.startswith(("+++", "---")):
            kind = "file"
        lines.append(f'<span class="{kind}">{escape(line)}</span>')
    return '<pre class="diff">' + "\n".join(lines) + "</pre>"


def _prompt_history(conn: sqlite3.Connection, latest_id: int) -> str:
    used: set[str] = set()
    current: set[str] = set()
    for function, digest in conn.execute(
        "SELECT DISTINCT p.function_name, p.hash FROM experiment_runs r JOIN run_prompts rp "
        "ON rp.run_id = r.id JOIN prompts p ON p.id = rp.prompt_id WHERE r.experiment_id = ?",
        (latest_id,),
    ):
        used.add(str(function))
        current.add(str(digest))
    history = browse.prompt_history(conn, dates=False)
    parts = []
    for function in sorted(used):
        versions = history.get(function, [])
        items = []
        for i, version in enumerate(versions):
            mark = ""
            if version["hash"] in current:
                mark = ' <span class="badge passed">this session</span>'
            diff = ""
            if i:
                before = versions[i - 1]
                diff = _diff_html(
                    unified_diff(
                        before["template"],
                        version["template"],
                        f"{function} {before['version']}",
                        f"{function} {version['version']}",
                    )
                )
            items.append(
                f'<details class="version"{" open" if i == len(versions) - 1 else ""}><summary>'
                f"<code>{escape(version['version'])}</code> {escape(version['role'])}, first "
                f"stored {escape((version['created_at'] or '')[:16].replace('T', ' '))}, "
                f"{version['runs']} run(s){mark}</summary>"
                f'<pre class="template">{escape(version["template"])}</pre>{diff}</details>'
            )
        parts.append(
            f'<div class="prompt"><h4>{escape(function)} <small>{len(versions)} '
            f"version(s)</small></h4>{''.join(items)}</div>"
        )
    return "".join(parts) or '<p class="empty">No prompt function was used.</p>'


def _section(
    conn: sqlite3.Connection,
    name: str,
    session: str | None,
    length: int,
    runs_data: dict[str, Any],
    matrix_data: dict[str, Any],
) -> str:
    experiment_id = find_experiment(conn, name, session)
    detail = browse.experiment_detail(conn, experiment_id)
    points = trend(conn, name, length, until=detail["session_id"])
    (total,) = conn.execute(
        "SELECT count(*) FROM experiment_runs WHERE experiment_id = ?", (experiment_id,)
    ).fetchone()
    runs = browse.runs(conn, experiment_id, limit=EMBEDDED_RUNS)
    for run in runs:
        runs_data[run["id"]] = browse.run_detail(conn, run["id"])
    if detail.get("variants"):
        # Which embedded runs the matrix opens, per case and variant.
        cases: dict[str, dict[str, list[str]]] = {}
        for run in runs:
            by_case = cases.setdefault(run["case"] or "", {})
            by_case.setdefault(run["variant"] or "", []).append(run["id"])
        matrix_data[name] = {"variants": list(detail["variants"]), "cases": cases}
        metrics_html = _variants_table(detail)
        charts_html = _cost_charts(detail)
        matrix_html = "<h3>Cases by variant</h3>" + _matrix(
            name, browse.case_variant_means(conn, experiment_id), list(detail["variants"])
        )
    else:
        metrics_html = _metrics_table(detail)
        charts_html = _charts(detail, points)
        matrix_html = ""
    counts = ", ".join(f"{c} {s}" for s, c in detail["runs"].items() if c) or "no run"
    verdict = {None: None, True: "passed", False: "failed"}[detail["gate_passed"]]
    anchor = "exp-" + "".join(c if c.isalnum() else "-" for c in name)
    warning = ""
    if detail.get("partial") and detail["session_status"].startswith("complete"):
        warning = (
            f'<p class="warning">This experiment ran {detail["partial"]["runs"]} of its '
            f"{detail['partial']['planned']} planned runs (partial): its numbers are of those "
            "runs only, and it is never the default baseline of a comparison.</p>"
        )
    elif not detail["session_status"].startswith("complete"):
        warning = (
            f'<p class="warning">This session is {escape(detail["session_status"])}: its numbers '
            "cover only the runs it stored, and are not a verdict.</p>"
        )
    return (
        f'<section class="experiment" id="{escape(anchor)}" data-name="{escape(name)}">'
        f"<h2>{escape(name)} {_badge(verdict)}</h2>"
        f'<p class="meta">Session <code>{escape(detail["session_id"][:12])}</code> '
        f"({escape(detail['session_status'])}), started "
        f"{escape(detail['started_at'][:16].replace('T', ' '))} UTC · {detail['cases']} case(s) "
        f"&times; {detail['num_executions']} execution(s) · {escape(counts)} · trend over "
        f"{len(points)} session(s)</p>{warning}"
        f"<h3>Metrics</h3>{metrics_html}"
        f'<div class="charts">{charts_html}</div>{matrix_html}'
        f"<h3>Gates</h3>{_gates(detail)}{_adaptive(detail)}"
        f"<h3>Runs</h3>{_left_out(name, total, len(runs))}{_run_table(name, runs)}"
        f"<h3>Prompt history</h3>{_prompt_history(conn, experiment_id)}"
        "</section>"
    )


def build_html(
    conn: sqlite3.Connection,
    *,
    session: str | None = None,
    experiments: list[str] | None = None,
    trend_length: int = 20,
    database: str = "message_log.db",
) -> str:
    """The report over each experiment's latest session (or over ``session``)."""
    runs_data: dict[str, Any] = {}
    matrix_data: dict[str, Any] = {}
    names = _experiment_names(conn, session, experiments or [])
    sections = [
        _section(conn, name, session, trend_length, runs_data, matrix_data) for name in names
    ]
    toc = "".join(
        f'<a href="#exp-{escape("".join(c if c.isalnum() else "-" for c in n))}">{escape(n)}</a>'
        for n in names
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "".join(sections) or (
        '<p class="empty">The database holds no experiment yet: run pytest with an '
        "@experiment test.</p>"
    )
    script = _asset("report.js")
    data = _script_json({"runs": runs_data, "matrix": matrix_data})
    # Like a cassette, the report is a file people share: key-shaped text is masked.
    return redact(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP.format(script=_digest(script))}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>LLM experiments report</title><style>{_asset("report.css")}</style></head>
<body><header><h1>LLM experiments</h1><p class="meta">{escape(database)} · generated
{generated} · {len(names)} experiment(s)</p><nav>{toc}</nav></header>
<main>{body}</main>
<aside id="conversation" hidden aria-live="polite"><button type="button" class="close"
aria-label="close">&times;</button><div class="content"></div></aside>
<script type="application/json" id="llmexp-data">{data}</script>
<script>{script}</script></body></html>
""")
