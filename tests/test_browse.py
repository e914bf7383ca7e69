"""The statistics and drawing helpers behind ``llmexp`` and the HTML report."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pytest_llmexp._verdict.stats import interval
from pytest_llmexp._view.svgcharts import _ticks, distribution_svg, trend_svg
from pytest_llmexp._view.textview import table


def test_the_interval_of_a_mean_is_students_t() -> None:
    low, high = interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # mean 3, sample std sqrt(2.5), t(0.975, 4) = 2.776
    half = 2.776 * 2.5**0.5 / 5**0.5
    assert (low, high) == pytest.approx((3 - half, 3 + half))
    assert interval([4.0]) == (None, None)
    assert interval([]) == (None, None)


def test_beyond_thirty_degrees_of_freedom_t_is_approximated_closely() -> None:
    # t(0.975, 40) = 2.0211 and t(0.975, 100) = 1.9840, from tables.
    for n, t in ((41, 2.0211), (101, 1.9840)):
        values = [0.0, 1.0] * (n // 2) + [0.5] * (n % 2)
        _, high = interval(values)
        mean = sum(values) / n
        std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
        assert (high - mean) / (std / n**0.5) == pytest.approx(t, abs=5e-4)


def test_a_bool_metric_gets_wilsons_interval_within_0_and_1() -> None:
    low, high = interval([1.0, 1.0, 1.0, 1.0], "bool")
    assert (low, high) == pytest.approx((0.5101, 1.0), abs=1e-4)
    low, high = interval([0.0, 1.0, 0.0, 1.0], "bool")
    assert (low, high) == pytest.approx((0.1500, 0.8500), abs=1e-4)


def test_ticks_cover_the_values_with_round_steps() -> None:
    assert _ticks(5.36, 13.84) == [5, 7.5, 10, 12.5, 15]
    assert _ticks(0.0, 1.0) == [0, 0.25, 0.5, 0.75, 1.0]
    ticks = _ticks(-3.2, 120.0)
    assert ticks[0] <= -3.2 and ticks[-1] >= 120.0 and len(ticks) <= 7


def test_charts_escape_what_they_show() -> None:
    svg = distribution_svg("a<b", [1.0, 2.0, 2.0], "int")
    assert "a<b" not in svg and "a&lt;b" in svg
    assert svg.count('class="bar"') == 2
    point = {
        "session_id": "0123456789ab",
        "started_at": "2026-01-01T00:00:00",
        "session_status": "complete",
        "metrics": {"m": {"n": 2, "mean": 1.0, "ci_low": 0.5, "ci_high": 1.5}},
        "changes": ["prompt <p> a -> b"],
    }
    svg = trend_svg("m", [point, {**point, "changes": []}])
    assert "<p>" not in svg and "prompt &lt;p&gt; a -&gt; b" in svg
    assert svg.count("<circle") == 2 and svg.count('class="change-marker"') == 1


def test_a_table_is_cut_to_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    lines = table(["ID", "TEXT"], [["abc", "x" * 80], ["d", "short"]])
    assert all(len(line) <= 40 for line in lines)
    assert lines[1].startswith("abc  xxx") and lines[1].endswith("…")
    assert lines[2] == "d    short"


def test_a_large_session_embeds_the_runs_that_did_not_pass_first(tmp_path: Path) -> None:
    from pytest_llmexp._store.store import Store
    from pytest_llmexp._view.browse import runs

    Store(tmp_path / "db").close()  # the real schema
    conn = sqlite3.connect(tmp_path / "db")
    statuses = ["failed" if i % 7 == 3 else "passed" for i in range(50)]
    # Stored out of order, as xdist workers store them; the table is in execution order.
    for i in reversed(range(50)):
        conn.execute(
            "INSERT INTO experiment_runs (id, experiment_id, execution_index, status, "
            "started_at, run_data) VALUES (?, 1, ?, ?, '2026-01-01', '{}')",
            (f"r{i}", i, statuses[i]),
        )
        conn.execute(
            "INSERT INTO metrics (run_id, name, value, kind, position) VALUES (?, 'm', ?, "
            "'int', 0)",
            (f"r{i}", i),
        )
    every = runs(conn, 1)
    assert [r["id"] for r in every] == [f"r{i}" for i in range(50)]
    assert runs(conn, 1, limit=50) == every
    chosen = runs(conn, 1, limit=10)
    failing = [r for r in every if r["status"] == "failed"]
    assert len(chosen) == 10
    assert all(r in chosen for r in failing)  # 7 failed runs, then the first passed ones
    assert [r["id"] for r in chosen] == sorted((r["id"] for r in chosen), key=lambda i: int(i[1:]))
    assert [r["id"] for r in chosen if r["status"] == "passed"] == ["r0", "r1", "r2"]
    assert [r["metrics"] for r in chosen[:2]] == [{"m": 0}, {"m": 1}]
    assert runs(conn, 1, limit=3) == failing[:3]
    assert runs(conn, 1, passed=True, limit=2) == [every[0], every[1]]
    conn.close()
