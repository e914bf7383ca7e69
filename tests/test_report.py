"""The HTML report, opened from disk in a real headless Chromium (driven by Playwright): its
charts and run table render, a click opens a run's conversation, and the page asks the
network for nothing. Then ``pytest --llm-report`` in an inner session, both modes."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from browser import chromium, launch, screenshots
from conftest import Database
from history import MARKUP, History
from pytest_llmexp.cli import main


def _chromium() -> str:
    path = chromium()
    if path is None:
        reason = "the report tests need Debian's chromium (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs every test, and {reason}", pytrace=False)
        pytest.skip(reason=reason)
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]'")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        launched = launch(playwright, executable)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def report(history: History, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["--db", str(history.path), "report", "-o", str(path)]) == 0
    return path


@pytest.fixture
def page(browser: Any, report: Path) -> Iterator[Any]:
    """The report opened from disk; every request the page makes and every script error is
    kept on it."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    opened = context.new_page()
    opened.requests, opened.errors = [], []
    opened.on("request", lambda request: opened.requests.append(request.url))
    opened.on("pageerror", lambda error: opened.errors.append(str(error)))
    opened.on("console", lambda m: opened.errors.append(m.text) if m.type == "error" else None)
    opened.goto(report.as_uri())
    yield opened
    context.close()


def open_report(browser: Any, path: Path) -> tuple[Any, Any, list[str]]:
    """A report opened in a new context, and the script errors it raises."""
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(path.as_uri())
    return context, page, errors


def latest_runs(db: Database, name: str = "namer") -> list[Any]:
    return db.rows(
        "SELECT r.id, r.status, r.case_id FROM experiment_runs r JOIN experiments e "
        "ON e.id = r.experiment_id WHERE e.id = (SELECT e2.id FROM experiments e2 JOIN sessions s "
        "ON s.id = e2.session_id WHERE e2.name = ? ORDER BY s.started_at DESC LIMIT 1)",
        name,
    )


def test_charts_and_run_table_render(page: Any, history: History, report: Path) -> None:
    db = Database(history.path)
    section = page.locator("section.experiment[data-name='namer']")
    assert section.locator("h2").inner_text().startswith("namer")
    # One distribution and one trend per metric, drawn with a visible size.
    for metric in ("coolness", "short", "words"):
        charts = section.locator(f".metric-charts[data-metric='{metric}']")
        histogram = charts.locator("svg.distribution")
        box = histogram.bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 100
        heights = [
            float(h)
            for h in histogram.locator("rect.bar").evaluate_all(
                "bars => bars.map(b => b.getBoundingClientRect().height)"
            )
        ]
        assert sum(h > 0 for h in heights) >= 1
        # Three namer sessions: three points, the latest drawn hollow.
        assert charts.locator("svg.trend circle.point").count() == 3
        assert charts.locator("svg.trend circle.point.latest").count() == 1
    # The prompt changed at the second session, the temperature at the third.
    markers = section.locator(".metric-charts[data-metric='words'] svg.trend .change-marker")
    assert markers.count() == 2
    titles = markers.locator("title").all_text_contents()
    assert "prompt namer_system" in titles[0]
    assert "bot temperature 0.7 -> 0.2" in titles[1]
    runs = latest_runs(db)
    rows = section.locator("tr.run")
    assert rows.count() == len(runs)
    assert {rows.nth(i).get_attribute("data-run") for i in range(rows.count())} == {
        r[0] for r in runs
    }
    gates = section.locator("table.gates tr.gate")
    assert gates.count() == db.count(
        "gate_results g JOIN experiments e ON e.id = g.experiment_id",
        "e.session_id = ?",
        history.sessions[2],
    )
    assert section.locator("svg.trend circle.point.incomplete").count() == 0
    # The interrupted session's point is told apart: its mean is of part of its runs.
    halted = page.locator("section.experiment[data-name='halted']")
    assert halted.locator("svg.trend circle.point.incomplete").count() == 1
    assert "(interrupted)" in halted.locator("p.meta").inner_text()
    assert "is interrupted: its numbers cover only" in halted.locator("p.warning").inner_text()
    assert section.locator("p.warning").count() == 0
    assert page.errors == []
    db.close()


def test_filters_and_a_click_open_a_conversation(page: Any, history: History) -> None:
    db = Database(history.path)
    section = page.locator("section.experiment[data-name='namer']")
    runs = latest_runs(db)
    failed = [r for r in runs if r[1] == "failed"]
    section.locator("select[name=status]").select_option("failed")
    assert section.locator("tr.run:visible").count() == len(failed)
    assert section.locator(".shown").inner_text() == f"{len(failed)} of {len(runs)} run(s)"
    section.locator("select[name=case]").select_option("data pipelines")
    expected = [r for r in failed if r[2] == "data pipelines"]
    assert section.locator("tr.run:visible").count() == len(expected)
    section.locator("select[name=status]").select_option("")
    section.locator("select[name=case]").select_option("")
    assert section.locator("tr.run:visible").count() == len(runs)

    run_id = db.one(
        "SELECT c.run_id FROM message_log c JOIN experiment_runs r ON r.id = c.run_id "
        "WHERE c.message_log LIKE ? AND r.experiment_id = (SELECT experiment_id FROM "
        "experiment_runs WHERE id = ?) LIMIT 1",
        f"%{MARKUP[:8]}%",
        runs[0][0],
    )
    panel = page.locator("#conversation")
    assert not panel.is_visible()
    section.locator(f"tr.run[data-run='{run_id}']").click()
    assert panel.is_visible()
    assert panel.get_attribute("data-run") == run_id
    calls = [
        json.loads(r[0])
        for r in db.rows(
            "SELECT message_log FROM message_log WHERE run_id = ? ORDER BY timestamp", run_id
        )
    ]
    shown = panel.locator(".call")
    assert shown.count() == len(calls)
    for i, messages in enumerate(calls):
        texts = shown.nth(i).locator(".message pre.text").all_inner_texts()
        assert texts == [m["content"] for m in messages]
    # A reply holding markup is shown as text: no element was made from it.
    assert panel.locator("img").count() == 0
    assert page.title() == "LLM experiments report"
    page.keyboard.press("Escape")
    assert not panel.is_visible()
    assert page.errors == []
    db.close()


def test_the_page_makes_no_network_request(page: Any, report: Path) -> None:
    page.locator("tr.run").first.click()
    page.wait_for_timeout(200)
    assert page.requests == [report.as_uri()]
    html = report.read_text()
    # Nor could it: no element of the file loads anything, and the CSS fetches nothing.
    assert re.findall(r"<(?:link|img|script|iframe|object|embed)\b[^>]*\b(?:src|href)=", html) == []
    assert "url(" not in html and "@import" not in html


def test_only_the_reports_own_script_runs(page: Any) -> None:
    # Markup that would run if it reached the page (it does not: text is set as text) is
    # refused by the page's Content-Security-Policy as well.
    page.evaluate(
        "document.body.insertAdjacentHTML('beforeend', '<img src=x onerror=\"document.title=2\">')"
    )
    page.wait_for_timeout(200)
    assert page.title() == "LLM experiments report"
    assert any("Content Security Policy" in error for error in page.errors)
    # The report's own script did run: its filters work.
    section = page.locator("section.experiment[data-name='namer']")
    section.locator("select[name=status]").select_option("failed")
    assert section.locator("tr.run:visible").count() < section.locator("tr.run").count()


def test_the_readme_screenshots_are_made_by_tests_browser_py(
    browser: Any, history: History, tmp_path: Path
) -> None:
    shots = screenshots(history.path, tmp_path, browser)
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The second has the conversation panel open over the page: the two differ.
    assert shots[0].read_bytes() != shots[1].read_bytes()


def test_pytest_writes_the_report_at_session_end(run_session, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_one="""
        from pytest_llmexp import SimpleBot, experiment, metric

        @metric
        def size(reply: str) -> int:
            return len(reply)

        @experiment(num_executions=3)
        def test_one():
            size(SimpleBot("You are terse.", model_name="m")("hello").content)
        """
    )
    run = run_session("--llm-report", "out/report.html")
    assert run.result.ret == 0
    assert run.db is not None
    html = (pytester.path / "out" / "report.html").read_text()
    run_ids = [r[0] for r in run.db.rows("SELECT id FROM experiment_runs")]
    assert len(run_ids) == 3
    for run_id in run_ids:
        assert f'data-run="{run_id}"' in html
    session = run.db.one("SELECT id FROM sessions")
    assert f"<code>{session[:12]}</code> (complete)" in html
    run.result.stdout.fnmatch_lines(["llmexp: HTML report: *out/report.html"])

    failed = run_session("--llm-report", "/proc/none/report.html")
    assert failed.result.ret == 3
    assert "ERROR: cannot write the HTML report" in failed.output
    assert failed.db is not None
    assert failed.db.rows("SELECT status FROM sessions ORDER BY started_at")[-1][0] == "complete"

    pytester.makepyfile(test_one="def test_plain():\n    pass\n")
    plain = run_session("--llm-report", "plain.html")
    assert plain.result.ret == 0
    assert not (pytester.path / "plain.html").exists()
    plain.result.stdout.fnmatch_lines(["llmexp: no experiment ran: no HTML report was written*"])


def test_the_conversation_shows_a_captured_calls_tool_calls(
    browser: Any, pytester: pytest.Pytester, run_session: Any, fake_llm: Any
) -> None:
    from test_capture import weather

    weather(pytester, fake_llm)
    run = run_session("--llm-report", "report.html")
    run.result.assert_outcomes(passed=1)
    context, page, errors = open_report(browser, pytester.path / "report.html")
    page.locator("tr.run").first.click()
    panel = page.locator("#conversation")
    assert panel.is_visible()
    heads = panel.locator(".call-head").all_inner_texts()
    assert len(heads) == 2 and all("OpenAI (client, chat.completions)" in h for h in heads)
    second = panel.locator(".call").nth(1)
    assert second.locator(".message .role").all_inner_texts() == [
        "USER",
        "ASSISTANT",
        "TOOL CALL_1",
        "ASSISTANT",
    ]
    assert second.locator("pre.tool-call").inner_text() == (
        'calls weather({"city": "Paris"}) [call_1]'
    )
    assert second.locator(".message pre.text").last.inner_text() == "Sunny, 22 C."
    assert errors == []
    context.close()


def test_variants_open_side_by_side_in_the_report_matrix(
    browser: Any, pytester: pytest.Pytester, run_session: Any
) -> None:
    from test_variants import NAMER, PRICES

    pytester.makeini(PRICES)
    pytester.makepyfile(test_namer=NAMER)
    run = run_session("--llm-report", "report.html")
    run.result.assert_outcomes(passed=8)
    context, page, errors = open_report(browser, pytester.path / "report.html")
    section = page.locator("section.experiment")
    # The variants side by side, the cheapest that passes, and a cost chart per metric.
    assert section.locator("table.variants th").all_inner_texts() == [
        "metric (mean [95% CI])",
        "model=fake-small",
        "model=fake-large",
    ]
    assert "model=fake-large" in section.locator(".cheapest").inner_text()
    charts = section.locator("figure.chart.cost")
    assert charts.count() == 2  # judged, words
    assert charts.nth(1).locator("circle.point").count() == 2
    # Cases as rows, variants as columns; a click shows what each variant answered.
    matrix = section.locator("table.matrix")
    assert matrix.locator("tbody tr").all_inner_texts()[0].split("\t") == [
        "topic=data",
        "judged 1 · words 6",
        "judged 1 · words 15",
    ]
    matrix.locator("tr.case").first.click()
    panel = page.locator("#conversation")
    assert panel.is_visible()
    columns = panel.locator(".variant-column")
    assert columns.locator("h3").all_inner_texts() == ["model=fake-small", "model=fake-large"]
    small, large = (columns.nth(i).locator("pre.reply").all_inner_texts() for i in (0, 1))
    # The variant's own answer, not its judge's.
    assert small == ["Reply to: Name a data team"] * 2
    assert all(text.startswith("Reply to: Name a data team (answered at length") for text in large)
    # From there, one run's whole conversation, judge included.
    columns.nth(1).locator("button.open-run").first.click()
    heads = panel.locator(".call-head").all_inner_texts()
    assert [("fake-large" in h, "judge" in h) for h in heads] == [(True, False), (False, True)]
    # The run table filters by variant.
    page.locator("#conversation .close").click()
    section.locator("select[name=variant]").select_option("model=fake-small")
    assert section.locator(".shown").inner_text() == "4 of 8 run(s)"
    assert errors == []
    context.close()
