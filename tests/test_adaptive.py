"""Adaptive executions: a case stops once more of its executions can change no verdict.

Unit tests of the decisions (``_verdict.adaptive``), their validity under continuous
monitoring by simulation, and the decision file; inner sessions (serial and ``-n 2``)
against the fake server read what the database and the reports hold.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from pytest_llmexp._store.spool import Decisions
from pytest_llmexp._verdict.adaptive import Monitor, unsupported
from pytest_llmexp._verdict.gates import parse_gate
from pytest_llmexp.cli import main as llmexp


def gate(text: str) -> Any:
    return parse_gate(text, source="cli", where="test")


def feed(monitor: Monitor, case: str | None, values: list[bool]) -> list[Any]:
    """Each value a run of ``case`` whose outcome is that value; the stops they made."""
    stops = []
    for value in values:
        stops += monitor.add(case, "passed" if value else "failed", {}, {}, {})
    return stops


# -- decisions ------------------------------------------------------------------------------


def test_a_case_that_always_passes_stops_and_says_why() -> None:
    monitor = Monitor([gate("pass_rate >= 0.5")], cases=1, num_executions=20, confidence=0.95)
    stops = feed(monitor, None, [True] * 20)
    assert len(stops) == 1
    stop = stops[0]
    assert 4 <= stop.after < 20
    assert stop.reason == (
        f"decided after {stop.after} of 20 executions: runs: pass_rate >= 0.5 holds with "
        "95 % confidence"
    )
    assert monitor.verdicts() == {"runs: pass_rate >= 0.5": "holds"}


def test_a_case_at_the_threshold_is_never_decided() -> None:
    monitor = Monitor([gate("pass_rate >= 0.5")], cases=1, num_executions=20, confidence=0.95)
    assert feed(monitor, None, [True, False] * 10) == []
    assert monitor.verdicts() == {}


def test_a_failing_gate_is_decided_failing_for_every_case() -> None:
    monitor = Monitor([gate("pass_rate >= 0.8")], cases=2, num_executions=20, confidence=0.95)
    stops = []
    for _ in range(10):
        stops += feed(monitor, "a", [False]) + feed(monitor, "b", [False])
    assert {s.case for s in stops} == {"a", "b"}
    assert all("runs: pass_rate >= 0.8 fails" in s.reason for s in stops)


def test_nothing_stops_before_every_case_has_run() -> None:
    monitor = Monitor([gate("pass_rate >= 0.5")], cases=3, num_executions=20, confidence=0.95)
    # Two cases always pass; the third has not run: it could fail everything.
    for _ in range(20):
        assert feed(monitor, "a", [True]) + feed(monitor, "b", [True]) == []


def test_each_case_gates_stop_each_case_on_its_own() -> None:
    monitor = Monitor(
        [gate("each_case.pass_rate >= 0.5")], cases=2, num_executions=20, confidence=0.95
    )
    stops = []
    for index in range(20):
        stops += feed(monitor, "steady", [True]) + feed(monitor, "coin", [index % 2 == 0])
    assert [s.case for s in stops] == ["steady"]
    assert "holds for this case" in stops[0].reason
    # One case decided failing fails the gate: every case stops.
    monitor = Monitor(
        [gate("each_case.pass_rate >= 0.5")], cases=2, num_executions=20, confidence=0.95
    )
    stops = []
    for _ in range(20):
        stops += feed(monitor, "never", [False]) + feed(monitor, "coin", [True])
    assert {s.case for s in stops} == {"never", "coin"}
    assert "fails (case 'never')" in stops[-1].reason


def test_every_gate_must_be_settled_for_a_case_to_stop() -> None:
    gates = [gate("pass_rate >= 0.5"), gate("score: mean >= 2")]
    monitor = Monitor(gates, cases=1, num_executions=30, confidence=0.95)
    specs = {"score": {"min": 0, "max": 4}}
    stops = []
    for index in range(30):
        # Always passes; the score alternates 1 and 3 (mean 2, at the threshold).
        score = {"score": 1.0 + 2 * (index % 2)}
        stops += monitor.add(None, "passed", score, {"score": "int"}, specs)
    assert stops == []
    assert monitor.verdicts() == {"runs: pass_rate >= 0.5": "holds"}


@pytest.mark.parametrize(
    ("text", "kind", "spec", "why"),
    [
        ("score: median >= 3", "int", {"min": 1, "max": 5}, "median cannot be decided early"),
        ("pass@3 >= 0.9", None, {}, "pass@3 cannot be decided early"),
        ("score: each_case.p10 > 3", "int", {"min": 1, "max": 5}, "each_case.p10 cannot"),
        ("pass_rate == 1", None, {}, "'==' cannot be decided early"),
        ("score: mean >= 3", "int", {}, "has no bounds; declare them with @metric(min=..., max"),
        ("score: mean >= 3", "float", {"min": 1}, "has no bounds"),
    ],
)
def test_a_gate_that_cannot_be_decided_early_says_why(
    text: str, kind: str | None, spec: dict[str, Any], why: str
) -> None:
    found = unsupported(gate(text), kind, spec)
    assert found is not None and why in found
    monitor = Monitor([gate(text)], cases=1, num_executions=20, confidence=0.95)
    metric = gate(text).metric
    for _ in range(20):
        assert (
            monitor.add(None, "passed", {metric: 5.0}, {metric: kind or "int"}, {metric: spec})
            == []
        )
    assert monitor.why_all is not None and why in monitor.why_all


def test_supported_gates_on_bounded_metrics_can_be_decided() -> None:
    for text, kind, spec in [
        ("score: mean >= 3", "int", {"min": 1, "max": 5}),
        ("ok: each_case.mean >= 0.5", "bool", {}),
        ("pass^3 >= 0.5", None, {}),
        ("latency: mean <= 2", "float", {"min": 0, "max": 10}),
    ]:
        assert unsupported(gate(text), kind, spec) is None, text
    assert Monitor([], cases=1, num_executions=5, confidence=0.95).why_all == (
        "it has no gate to decide"
    )


def test_a_gate_at_the_bound_fails_on_the_first_counterexample() -> None:
    monitor = Monitor([gate("pass_rate >= 1")], cases=1, num_executions=20, confidence=0.95)
    assert feed(monitor, None, [True] * 5) == []
    assert len(feed(monitor, None, [False])) == 1


def _wrongly_decided(p: float, threshold: float, runs: int, seed: int) -> bool:
    rng = random.Random(seed)
    monitor = Monitor(
        [gate(f"pass_rate >= {threshold}")], cases=1, num_executions=runs, confidence=0.9
    )
    feed(monitor, None, [rng.random() < p for _ in range(runs)])
    # The truth: p >= threshold holds; deciding "fails" is the wrong verdict.
    return monitor.verdicts().get(f"runs: pass_rate >= {threshold}") == "fails"


def test_decisions_watched_after_every_run_stay_within_the_error_rate() -> None:
    # At the threshold exactly (the hardest truth), 500 sequences of 60 runs each watched
    # after every run: "fails" is decided at most about 10 % of the time (confidence 0.9).
    # A fixed-n 90 % interval tested after every run would be wrong far more often.
    wrong = sum(_wrongly_decided(0.6, 0.6, 60, seed) for seed in range(500))
    assert wrong / 500 <= 0.1 + 0.03  # three standard errors of a 10 % rate over 500


def test_the_decision_file_is_read_as_it_grows(tmp_path: Path) -> None:
    writer, reader = Decisions(tmp_path / "db", "s"), Decisions(tmp_path / "db", "s")
    assert reader.stopped("e", None, "a") is None  # no file yet
    writer.add("e", None, "a", "decided after 3 of 10 executions: why")
    writer.add("e", "model=x", "b\tc", "another")
    assert reader.stopped("e", None, "a") == "decided after 3 of 10 executions: why"
    assert reader.stopped("e", "model=x", "b\tc") == "another"
    assert reader.stopped("e", None, "b\tc") is None
    # A line still being written is read once whole.
    with open(writer.path, "ab") as file:
        file.write(b'{"e": "e", "v": null, "c": "z", ')
    assert reader.stopped("e", None, "z") is None
    with open(writer.path, "ab") as file:
        file.write(b'"r": "late"}\n')
    assert reader.stopped("e", None, "z") == "late"


# -- sessions -------------------------------------------------------------------------------

#: A case that always passes, one at its threshold, and an experiment whose gate fails;
#: adaptive from the command line, one declared in code, one kept fixed in code, one whose
#: gate cannot be decided early.
EXPERIMENTS = """
import pytest
from pytest_llmexp import SimpleBot, experiment, metric

@metric
def ok(reply, passes) -> bool:
    return passes

@metric
def words(reply) -> int:
    return len(reply.content.split())

@pytest.mark.parametrize("case", ["always", "coin"])
@experiment(num_executions=20, gates=["ok: each_case.pass_rate >= 0.5"])
def test_steady(case, llm_run):
    reply = SimpleBot("You answer.", model_name="fake-small")(f"Say {case}")
    ok(reply, case == "always" or llm_run.execution_index % 2 == 0)

@experiment(num_executions=20, adaptive=True, gates=["ok: pass_rate >= 0.8"])
def test_never():
    ok(SimpleBot("You answer.", model_name="fake-small")("Say no"), False)

@experiment(num_executions=6, adaptive=False, gates=["ok: pass_rate >= 0.5"])
def test_fixed():
    ok(SimpleBot("You answer.", model_name="fake-small")("Say yes"), True)

@experiment(num_executions=6, gates=["words: median >= 1"])
def test_wordy():
    words(SimpleBot("You answer.", model_name="fake-small")("Say words"))
"""


def _executed(db: Any, name: str, case: str | None = None) -> int:
    where = "e.name = ? AND r.status != 'skipped'"
    args: list[Any] = [name]
    if case is not None:
        where += " AND r.case_id = ?"
        args.append(case)
    return int(
        db.one(
            "SELECT count(*) FROM experiment_runs r JOIN experiments e ON e.id = r.experiment_id "
            f"WHERE {where}",
            *args,
        )
    )


def test_settled_cases_stop_early_and_the_rest_run_to_the_maximum(
    pytester: pytest.Pytester, run_session: Any, mode: str, fake_llm: Any
) -> None:
    # As a model would, the server takes a moment: the runs are not all done at once.
    fake_llm.latency = 0.02
    pytester.makepyfile(test_adaptive_x=EXPERIMENTS)
    run = run_session(
        "--llm-adaptive", "--llm-report-json", "report.json", "--llm-report", "report.html", "-rs"
    )
    db = run.db
    assert db is not None
    # The gate of "never" is decided failing early, and fails the session.
    assert run.result.ret == 1
    assert db.one("SELECT status FROM sessions") == "complete"
    assert db.count("experiments", "partial = 1") == 0
    workers = 2 if mode == "xdist" else 1
    # Always passing: stopped early (within one run per worker of the decision).
    always = _executed(db, "steady", "always")
    assert always < 20
    # At the threshold: it runs to the maximum.
    assert _executed(db, "steady", "coin") == 20
    never = _executed(db, "never")
    assert never <= 8 + workers
    stopped = db.rows(
        "SELECT r.case_id, r.error_message FROM experiment_runs r JOIN experiments e "
        "ON e.id = r.experiment_id WHERE r.error_type = 'AdaptiveStop' AND e.name = ?",
        "steady",
    )
    assert len(stopped) == 20 - always and {row[0] for row in stopped} == {"always"}
    assert all(
        "of 20 executions: ok: each_case.pass_rate >= 0.5 holds for this case with 95 % "
        "confidence" in row[1]
        for row in stopped
    )
    assert db.count("experiment_runs", "status = 'skipped' AND error_type != 'AdaptiveStop'") == 0
    if mode == "serial":
        # Round by round: every case's exec-0, then every case's exec-1...
        order = [
            row[0]
            for row in db.rows(
                "SELECT r.execution_index FROM experiment_runs r JOIN experiments e "
                "ON e.id = r.experiment_id WHERE e.name = 'steady' ORDER BY r.rowid"
            )
        ]
        assert order == sorted(order) and order[:4] == [0, 0, 1, 1]
    # Kept fixed in code; its gate cannot be decided early: both ran every execution.
    assert _executed(db, "fixed") == 6 and _executed(db, "wordy") == 6
    summaries = {
        name: json.loads(text) for name, text in db.rows("SELECT name, summary FROM experiments")
    }
    assert "adaptive" not in summaries["fixed"]
    assert summaries["wordy"]["adaptive_note"] == (
        "every execution runs: words: median >= 1: median cannot be decided early (only mean, "
        "pass_rate, each_case.mean, each_case.pass_rate and pass^k can)"
    )
    steady = summaries["steady"]["adaptive"]
    assert steady["confidence"] == 0.95
    assert steady["executions"] == always + 20 and steady["not_needed"] == 20 - always
    # One call per run: each execution not needed saved one.
    assert steady["calls_saved"] == 20 - always
    by_case = {c["case"]: c for c in steady["cases"]}
    assert by_case["coin"]["stopped"] is None
    assert by_case["always"]["executions"] == always
    report = json.loads((pytester.path / "report.json").read_text())
    never_report = next(e for e in report["experiments"] if e["name"] == "never")
    assert never_report["gate_passed"] is False
    assert never_report["adaptive"]["not_needed"] == 20 - never
    assert f"{20 - never} not needed" in run.output
    assert "decided after" in run.output
    # The HTML report: per case, the executions that ran and why it stopped.
    html = (pytester.path / "report.html").read_text()
    assert "<h3>Adaptive executions</h3>" in html
    assert f"<td>always</td><td>{always}</td><td>decided after " in html
    assert "<td>coin</td><td>20</td><td>ran every execution</td>" in html


def test_a_comparison_says_when_a_side_was_adaptive(
    pytester: pytest.Pytester, run_session: Any, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytester.makepyfile(
        test_cmp="""
import pytest
from pytest_llmexp import SimpleBot, experiment, metric

@metric
def ok(reply) -> bool:
    return True

@pytest.mark.parametrize("case", ["a", "b"])
@experiment(num_executions=12, gates=["ok: pass_rate >= 0.5"])
def test_cmp(case):
    ok(SimpleBot("You answer.", model_name="fake-small")(f"Say {case}"))
"""
    )
    first = run_session()
    assert first.result.ret == 0
    second = run_session("--llm-adaptive", "--llm-compare", "last")
    assert second.result.ret == 0
    db = second.db
    assert db is not None
    session = db.one("SELECT id FROM sessions ORDER BY started_at DESC LIMIT 1")
    comparison = json.loads(
        db.one("SELECT comparison FROM experiments WHERE session_id = ?", session)
    )
    assert comparison["adaptive"] == (
        "this session stopped cases once their verdicts were settled (adaptive): compared on "
        "the executions that ran"
    )
    ran = db.one(
        "SELECT count(*) FROM experiment_runs r JOIN experiments e ON e.id = r.experiment_id "
        "WHERE e.session_id = ? AND r.status = 'passed'",
        session,
    )
    assert ran < 24
    assert comparison["metrics"][0]["n_current"] == 2  # over cases, paired
    db_path = str(pytester.path / "message_log.db")
    baseline = db.one("SELECT id FROM sessions WHERE id != ?", session)
    assert llmexp(["--db", db_path, "compare", session, baseline]) == 0
    out = capsys.readouterr().out
    assert "the baseline stopped cases once their verdicts were settled (adaptive)" in out
    assert llmexp(["--db", db_path, "show", "cmp"]) == 0
    shown = capsys.readouterr().out
    assert f"adaptive (95 % confidence): {ran} of 24 executions ran" in shown


def test_executions_in_flight_stop_once_decided(
    pytester: pytest.Pytester, run_session: Any, mode: str, fake_llm: Any
) -> None:
    fake_llm.latency = 0.05
    pytester.makepyfile(
        test_flight="""
from pytest_llmexp import SimpleBot, experiment, metric

@metric
def ok(reply) -> bool:
    return False

@experiment(num_executions=60, adaptive=True, gates=["ok: pass_rate >= 0.8"])
def test_flight():
    ok(SimpleBot("You answer.", model_name="fake-small")("Say no"))
"""
    )
    run = run_session("--llm-concurrency", "4")
    assert run.result.ret == 1
    db = run.db
    assert db is not None
    executed = _executed(db, "flight")
    workers = 2 if mode == "xdist" else 1
    # Decided after a handful of stored runs. A process runs at most 4 bodies ahead of its
    # reports, and the decision waits for the reports: what was started before it was seen
    # finishes (about 2 x 4 per process), nothing starts after.
    reason = db.one("SELECT max(error_message) FROM experiment_runs")
    decided_after = int(reason.split("decided after ")[1].split(" ")[0])
    assert decided_after <= 8
    assert executed <= decided_after + 3 * (4 + 1) * workers
    assert db.count("experiment_runs", "error_type = 'AdaptiveStop'") == 60 - executed


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--llm-adaptive-confidence=1"], "", "a confidence from 0.5 to 0.999, e.g. 0.95"),
        (["--llm-adaptive-confidence=0.3"], "", "--llm-adaptive-confidence: expected a conf"),
        ([], "[pytest]\nllm_adaptive_confidence = sure\n", "ini llm_adaptive_confidence"),
    ],
)
def test_a_bad_confidence_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    if ini:
        pytester.makeini(ini)
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in "\n".join(result.errlines)


def test_a_bad_adaptive_argument_names_the_test(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bad="""
from pytest_llmexp import experiment

@experiment(num_executions=2, adaptive="yes")
def test_bad():
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    assert result.ret == 2
    text = "\n".join(result.outlines + result.errlines)
    assert "@experiment on test_bad: adaptive must be True or False, got 'yes'" in text


def test_when_decisions_cannot_be_written_every_execution_runs(
    pytester: pytest.Pytester, run_session: Any, mode: str
) -> None:
    pytester.makeconftest(
        """
from pytest_llmexp._store import spool

def pytest_configure(config):
    def refuse(self, *args):
        raise OSError(28, "No space left on device")
    spool.Decisions.add = refuse
"""
    )
    pytester.makepyfile(
        test_full="""
from pytest_llmexp import SimpleBot, experiment, metric

@metric
def ok(reply) -> bool:
    return False

@experiment(num_executions=12, adaptive=True, gates=["ok: pass_rate >= 0.8"])
def test_full():
    ok(SimpleBot("You answer.", model_name="fake-small")("Say no"))
"""
    )
    run = run_session()
    assert run.result.ret == 1  # the gate still fails, on every execution
    assert run.db is not None
    assert _executed(run.db, "full") == 12
    assert run.db.count("experiment_runs", "status = 'skipped'") == 0
    assert "warning: adaptive decisions stopped, so every later execution ran" in run.output
    assert "No space left on device" in run.output
