"""Variants: one experiment over several models or settings, side by side, with cost.

Unit tests of prices and costs; inner sessions (serial and ``-n 2``) against the fake
server, whose replies depend on the model (``fake-large`` says more than ``fake-small``),
read what the database, the reports and the GitHub job summary hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import Run
from pytest_llmexp._verdict.cost import (
    Price,
    PriceError,
    call_cost,
    cheapest_passing,
    format_cost,
    parse_prices,
    run_costs,
)
from pytest_llmexp.cli import main as llmexp

PRICES = """[pytest]
llm_prices =
    fake-small = 0.15 / 0.60
    fake-large = 2.50 / 10
    fake-judge = 1 / 1
"""

#: An experiment with a variant axis in code and two cases; a judge inside a metric.
NAMER = """
import pytest
from pytest_llmexp import SimpleBot, experiment, metric

@metric
def words(reply) -> int:
    return len(reply.content.split())

@metric
def judged(reply) -> bool:
    judge = SimpleBot("You judge names.", model_name="fake-judge")
    return judge(f"Is this a good name? {reply.content}").content.startswith("Reply")

@pytest.mark.parametrize("topic", ["data", "ships"])
@pytest.mark.parametrize("model", ["fake-small", "fake-large"])
@experiment(num_executions=2, variants=["model"], gates=["words: mean >= 8"])
def test_namer(model, topic, llm_run):
    llm_run.set_metadata("seen_variant", llm_run.variant)
    bot = SimpleBot("You name teams.", model_name=model)
    reply = bot(f"Name a {topic} team")
    words(reply)
    judged(reply)
"""

#: No variant in code: the command line sweeps it. The code's own client is captured.
SUMMARY = """
import pytest
from openai import OpenAI
from pytest_llmexp import SimpleBot, experiment, metric

@metric
def words(text) -> int:
    return len(text.split())

@metric
def judged(text) -> bool:
    judge = SimpleBot("You judge.", model_name="fake-judge", temperature=0.0)
    return judge(f"Good? {text}").content.startswith("Reply")

@pytest.mark.parametrize("topic", ["cats", "dogs"])
@experiment(num_executions=2, gates=["words: mean >= 8"])
def test_summary(topic):
    bot = SimpleBot("You summarise.", model_name="gpt-never-called", temperature=0.9)
    words(bot(f"Summarise {topic}").content)
    reply = OpenAI().chat.completions.create(
        model="gpt-never-called", messages=[{"role": "user", "content": f"About {topic}"}]
    )
    judged(reply.choices[0].message.content)
"""


# -- prices and costs ------------------------------------------------------------------------


def test_prices_parse_one_model_a_line() -> None:
    prices = parse_prices(
        ["", "gpt-4o-mini = 0.15 / 0.60", "# a comment", "  gpt-4o-*=2.5/10  # dated ones"]
    )
    assert prices == {"gpt-4o-mini": Price(0.15, 0.60), "gpt-4o-*": Price(2.5, 10.0)}
    assert call_cost(prices, "gpt-4o-mini", 1_000_000, 0) == pytest.approx(0.15)
    # A pattern prices the models it matches; an exact line wins over it.
    assert call_cost(prices, "gpt-4o-2024-08-06", 0, 1_000_000) == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("gpt-4o-mini = 0.15", "expected MODEL = INPUT / OUTPUT"),
        ("gpt-4o-mini 0.15 / 0.6", "expected MODEL = INPUT / OUTPUT"),
        ("= 0.15 / 0.6", "expected MODEL = INPUT / OUTPUT"),
        ("gpt-4o-mini = cheap / 0.6", "the input price 'cheap' is not a number"),
        ("gpt-4o-mini = 0.15 / -1", "the output price '-1' is not a number"),
        ("gpt-4o-mini = nan / 1", "the input price 'nan'"),
    ],
)
def test_a_bad_price_line_says_what_a_line_is(line: str, message: str) -> None:
    with pytest.raises(PriceError, match=message) as info:
        parse_prices([line])
    assert "e.g. 'gpt-4o-mini = 0.15 / 0.60'" in str(info.value)


def test_a_model_priced_twice_is_refused() -> None:
    with pytest.raises(PriceError, match="'m' is priced twice"):
        parse_prices(["m = 1 / 1", "m = 2 / 2"])


def call(model: str, tokens: tuple[int | None, int | None], **fields: Any) -> Any:
    return SimpleNamespace(
        model_name=model,
        prompt_tokens=tokens[0],
        completion_tokens=tokens[1],
        error=fields.get("error"),
        judge=fields.get("judge", False),
    )


def test_a_runs_cost_is_unknown_rather_than_zero_when_a_price_or_usage_is_missing() -> None:
    prices = {"a": Price(1.0, 2.0), "judge": Price(10.0, 10.0)}
    calls = [call("a", (1000, 500)), call("judge", (100, 10), judge=True)]
    cost, judges = run_costs(prices, calls)
    assert cost == pytest.approx((1000 * 1 + 500 * 2) / 1e6)
    assert judges == pytest.approx(110 * 10 / 1e6)
    # A model with no price, or a reply with no usage: not known, not $0.
    assert run_costs(prices, [*calls, call("b", (10, 10))]) == (None, judges)
    assert run_costs(prices, [call("a", (None, None))]) == (None, 0.0)
    # A failed call that reports no usage cost nothing we know of.
    assert run_costs(prices, [call("a", (None, None), error="timeout")]) == (0.0, 0.0)
    assert run_costs({}, calls) == (None, None)


def test_costs_read_as_dollars_with_the_digits_that_matter() -> None:
    assert format_cost(None) == "no price"
    assert format_cost(0) == "$0"
    assert format_cost(0.00000465) == "$0.00000465"
    assert format_cost(0.0104) == "$0.0104"
    assert format_cost(3.14159) == "$3.14"
    assert format_cost(1234.5) == "$1,234"


def test_the_cheapest_variant_is_among_those_that_pass_every_gate() -> None:
    rows = [("a", True, 0.5), ("b", False, 0.1), ("c", True, 0.2), ("d", True, None)]
    name, note = cheapest_passing(rows, gated=True)
    assert name == "c"
    assert note == "$0.200 per run; not ranked, no price: d"
    assert cheapest_passing([("a", False, 0.1)], gated=True) == (
        None,
        "no variant passes every gate",
    )
    assert cheapest_passing([("a", True, None)], gated=True) == (
        None,
        "no passing variant has a price: a",
    )
    # With no gate every variant passes, and it says so.
    assert cheapest_passing([("a", None, 0.3), ("b", None, 0.2)], gated=False) == (
        "b",
        "$0.200 per run; no gates, so every variant passes",
    )


# -- inner sessions --------------------------------------------------------------------------


def namer_session(pytester: pytest.Pytester, run_session: Any, *args: str) -> Run:
    pytester.makeini(PRICES)
    pytester.makepyfile(test_namer=NAMER)
    return run_session(*args)


def test_variants_in_code_are_judged_apart_and_the_cheapest_passing_one_is_named(
    pytester: pytest.Pytester, run_session: Any
) -> None:
    run = namer_session(
        pytester, run_session, "--llm-report-json=report.json", "--llm-report-md=report.md"
    )
    # fake-small's names are too short for the gate: one variant fails, so the session does.
    run.result.assert_outcomes(passed=8)
    assert run.result.ret == 1
    db = run.db
    assert db is not None
    rows = db.rows(
        "SELECT variant, case_id, count(*) AS n, min(cost) > 0 AS priced, "
        "min(judge_cost) > 0 AS judged FROM experiment_runs GROUP BY 1, 2 ORDER BY 1, 2"
    )
    assert [tuple(r) for r in rows] == [
        ("model=fake-large", "topic=data", 2, 1, 1),
        ("model=fake-large", "topic=ships", 2, 1, 1),
        ("model=fake-small", "topic=data", 2, 1, 1),
        ("model=fake-small", "topic=ships", 2, 1, 1),
    ]
    # The run knows its variant; its node id is what pytest makes of the parameters.
    seen = db.rows("SELECT variant, run_data, nodeid FROM experiment_runs")
    for row in seen:
        assert json.loads(row["run_data"])["metadata"]["seen_variant"] == row["variant"]
        assert row["nodeid"].endswith(("-exec-0]", "-exec-1]"))
    # The judge is a judge: its calls are marked and priced apart.
    assert {tuple(r) for r in db.rows("SELECT model_name, judge FROM message_log")} == {
        ("fake-small", 0),
        ("fake-large", 0),
        ("fake-judge", 1),
    }
    gates = db.rows("SELECT variant, verdict, observed FROM gate_results ORDER BY variant")
    assert [(g["variant"], g["verdict"]) for g in gates] == [
        ("model=fake-large", "passed"),
        ("model=fake-small", "failed"),
    ]
    assert db.one("SELECT gate_passed FROM experiments") == 0

    report = json.loads((pytester.path / "report.json").read_text())
    namer = report["experiments"][0]
    assert namer["cheapest_passing_variant"] == "model=fake-large"
    large, small = namer["variants"]["model=fake-large"], namer["variants"]["model=fake-small"]
    assert small["gate_passed"] is False and large["gate_passed"] is True
    assert large["metrics"]["words"]["mean"] > small["metrics"]["words"]["mean"]
    assert large["cost"]["per_run"] > small["cost"]["per_run"] > 0
    # Each variant against the first declared one, over the same cases, paired.
    versus = {m["metric"]: m for m in large["versus_first"]}
    assert versus["words"]["unit"] == "cases (paired)"
    assert versus["words"]["verdict"] == "improved"
    assert small["versus_first"] is None
    assert report["verdict"]["reasons"][0].startswith(
        "namer: gate words: mean >= 8 [model=fake-small] failed"
    )
    markdown = (pytester.path / "report.md").read_text()
    assert "| metric (mean [95% CI]) | model=fake-small | model=fake-large |" in markdown
    assert "**Cheapest variant passing every gate: model=fake-large" in markdown
    # Not under GitHub Actions: no annotation.
    assert "::error" not in run.output


def test_one_variant_can_gate_alone_and_github_hears_of_what_failed(
    pytester: pytest.Pytester, run_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "step-summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    run = namer_session(pytester, run_session, "--llm-gate-variant=model=fake-large")
    # fake-small still fails its gate, but only fake-large's gates decide.
    assert run.result.ret == 0
    assert "[model=fake-small, not gating]" in run.output
    text = summary.read_text()
    assert text.startswith("earlier step\n## LLM experiments: passed")
    assert "| model=fake-small (not gating) | `words: mean >= 8` |" in text
    assert "::error" not in run.output

    run = run_session("--llm-gate-variant=model=fake-huge")
    assert run.result.ret == 1
    assert "--llm-gate-variant model=fake-huge: no experiment of this session ran" in run.output


def test_a_failed_gate_is_an_annotation_on_github_unless_turned_off(
    pytester: pytest.Pytester, run_session: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    run = namer_session(pytester, run_session)
    assert run.result.ret == 1
    annotations = [line for line in run.result.outlines if line.startswith("::")]
    assert annotations == [
        "::error title=LLM gate failed%3A namer::namer: gate words: mean >= 8 "
        "[model=fake-small] failed (observed 6)"
    ]
    assert "## LLM experiments: FAILED" in summary.read_text()
    summary.unlink()
    run = run_session("--llm-github=off")
    assert run.result.ret == 1
    assert not summary.exists()
    assert not [line for line in run.result.outlines if line.startswith("::")]


def test_a_model_sweep_from_the_command_line_keeps_the_judges_model(
    pytester: pytest.Pytester, run_session: Any
) -> None:
    pytester.makeini(PRICES)
    pytester.makepyfile(test_summary=SUMMARY)
    run = run_session("--llm-model=fake-small", "--llm-model=fake-large")
    run.result.assert_outcomes(passed=8)
    db = run.db
    assert db is not None
    assert [
        tuple(r)
        for r in db.rows("SELECT DISTINCT variant, case_id FROM experiment_runs ORDER BY 1, 2")
    ] == [
        ("model=fake-large", "cats"),
        ("model=fake-large", "dogs"),
        ("model=fake-small", "cats"),
        ("model=fake-small", "dogs"),
    ]
    calls = db.rows(
        "SELECT r.variant, c.model_name, c.temperature, c.judge, b.kind FROM message_log c "
        "JOIN experiment_runs r ON r.id = c.run_id JOIN bots b ON b.id = c.bot_id"
    )
    seen = {(c["variant"], c["model_name"], c["temperature"], c["judge"], c["kind"]) for c in calls}
    assert seen == {
        # The bot and the code's own client call the variant's model; the bot keeps its
        # temperature; the judge keeps its model and temperature in every variant.
        ("model=fake-small", "fake-small", 0.9, 0, "bot"),
        ("model=fake-small", "fake-small", None, 0, "client"),
        ("model=fake-small", "fake-judge", 0.0, 1, "bot"),
        ("model=fake-large", "fake-large", 0.9, 0, "bot"),
        ("model=fake-large", "fake-large", None, 0, "client"),
        ("model=fake-large", "fake-judge", 0.0, 1, "bot"),
    }
    assert "cheapest variant passing every gate: model=fake-large" in run.output

    # A second session, compared with the first: each variant with the same variant.
    run = run_session("--llm-model=fake-small", "--llm-model=fake-large", "--llm-compare=last")
    assert "[model=fake-small] compared with session" in run.output
    assert "[model=fake-large] compared with session" in run.output
    assert run.db is not None
    stored = json.loads(run.db.rows("SELECT comparison FROM experiments")[-1][0])
    assert set(stored["variants"]) == {"model=fake-small", "model=fake-large"}

    # llmexp reads it back: side by side, one variant, and two sessions variant by variant.
    db_path = str(pytester.path / "message_log.db")
    assert llmexp(["--db", db_path, "show", "summary", "--json"]) == 0
    assert llmexp(["--db", db_path, "show", "summary", "--variant", "model=fake-small"]) == 0
    assert llmexp(["--db", db_path, "show", "summary", "--variant", "model=nope"]) == 2


def test_llmexp_show_and_compare_take_a_variant(
    pytester: pytest.Pytester, run_session: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run = namer_session(pytester, run_session)
    assert run.db is not None
    db_path = str(pytester.path / "message_log.db")
    capsys.readouterr()
    assert llmexp(["--db", db_path, "show", "namer"]) == 0
    out = capsys.readouterr().out
    assert "variants (2):" in out
    assert "cheapest variant passing every gate: model=fake-large" in out
    # The list of experiments does not average over variants.
    assert llmexp(["--db", db_path, "experiments", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)[0]
    assert listed["variants"] == ["model=fake-small", "model=fake-large"]
    assert (
        llmexp(["--db", db_path, "show", "namer", "--variant", "model=fake-small", "--json"]) == 0
    )
    detail = json.loads(capsys.readouterr().out)
    assert detail["variant"] == "model=fake-small"
    assert detail["runs"]["passed"] == 4
    assert [g["variant"] for g in detail["gates"]] == ["model=fake-small"]
    assert detail["metrics"]["words"]["values"] == [6.0, 6.0, 6.0, 6.0]
    assert llmexp(["--db", db_path, "show", "namer", "--variant", "model=fake-huge"]) == 2
    assert "has no variant 'model=fake-huge'; its variants: model=fake-small" in (
        capsys.readouterr().err
    )
    session = run.db.one("SELECT id FROM sessions")
    assert llmexp(["--db", db_path, "compare", session, session, "--json"]) == 0
    compared = json.loads(capsys.readouterr().out)["experiments"]["namer"]
    assert set(compared) == {"model=fake-small", "model=fake-large"}
    assert all(m["diff"] == 0 for c in compared.values() for m in c["metrics"])
    assert (
        llmexp(["--db", db_path, "compare", session, session, "--variant", "model=fake-large"]) == 0
    )
    assert "namer [model=fake-large]:" in capsys.readouterr().out


def test_the_cost_cap_stops_new_runs(pytester: pytest.Pytester, run_session: Any) -> None:
    pytester.makeini(PRICES)
    pytester.makepyfile(test_namer=NAMER)
    # fake-large's run costs about $0.00016 with its judge: the cap is reached at once.
    run = run_session("--llm-max-cost=0.0001", "-p", "no:randomly")
    assert run.db is not None
    skipped = run.db.count("experiment_runs", "error_type = 'SpendLimit'")
    ran = run.db.count("experiment_runs", "status = 'passed'")
    assert skipped > 0 and ran + skipped == 8
    assert "--llm-max-cost" in run.output


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--llm-max-cost=0.5"], "", "caps what calls cost, but no model has a price"),
        (["--llm-max-cost=-1"], PRICES, "expected a positive number of US dollars"),
        ([], "[pytest]\nllm_prices = gpt-4o = 1\n", "ini llm_prices: 'gpt-4o = 1': expected"),
        (["--llm-model=a", "--llm-model=a"], "", "--llm-model a is given twice"),
        (["--llm-temperature=hot"], "", "expected a temperature from 0 to 2"),
        (["--llm-github=sometimes"], "", "--llm-github: expected on or off"),
        (
            ["--llm-model=fake-small", "--llm-model=fake-large"],
            "",
            "declares the variants model in code, and the command line sweeps model too",
        ),
    ],
)
def test_bad_variant_and_cost_options_are_usage_errors(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    if ini:
        pytester.makeini(ini)
    pytester.makepyfile(test_namer=NAMER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=60)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in "\n".join(result.errlines)


@pytest.mark.parametrize(
    ("declared", "message", "status"),
    [
        # The mark itself is wrong: an error collecting the test, as for any bad argument.
        ('"model"', "variants must be a list of parametrize argument names", 2),
        ("[1]", "1 is not an argument name", 2),
        ('["model", "model"]', "variants names an argument twice", 2),
        # Its names are checked against the test's parameters once they are all known.
        ('["modle"]', "variants names modle, which is not parametrize arguments", 4),
    ],
)
def test_a_bad_variants_argument_names_the_test_and_the_fix(
    pytester: pytest.Pytester, declared: str, message: str, status: int
) -> None:
    pytester.makepyfile(
        test_bad=f"""
import pytest
from pytest_llmexp import experiment

@pytest.mark.parametrize("model", ["a", "b"])
@experiment(num_executions=1, variants={declared})
def test_bad(model):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=60)
    assert result.ret == status
    text = "\n".join(result.outlines + result.errlines)
    assert message in text
    assert "test_bad" in text


def test_the_embedded_model_refuses_a_model_sweep() -> None:
    from pytest_llmexp._plugin.localmodel import check_model_sweep

    with pytest.raises(pytest.UsageError, match="compare it with itself"):
        check_model_sweep(["a", "b"], "auto")
    with pytest.raises(pytest.UsageError, match="--llm-temperature 0 --llm-temperature 1"):
        check_model_sweep(["local", "gpt-4o"], None)
    check_model_sweep(["a", "b"], None)


@pytest.mark.local
def test_the_tagline_example_sweeps_the_temperature_on_the_embedded_model(
    local_session: Any, pytester: pytest.Pytester
) -> None:
    example = Path(__file__).parent.parent / "examples" / "test_tagline.py"
    pytester.makepyfile(test_tagline=example.read_text())
    # A price for the embedded model, as the docs page assumes one.
    pytester.makeini("[pytest]\nllm_prices = gemma-3-270m-q4_k_m.gguf = 0.02 / 0.04\n")
    run = local_session("--llm-temperature=0.2", "--llm-temperature=1.5", "--llm-num-executions=2")
    run.result.assert_outcomes(passed=16)
    assert run.db is not None
    variants = [
        r[0] for r in run.db.rows("SELECT DISTINCT variant FROM experiment_runs ORDER BY 1")
    ]
    assert variants == [
        "style=plain,temperature=0.2",
        "style=plain,temperature=1.5",
        "style=punchy,temperature=0.2",
        "style=punchy,temperature=1.5",
    ]
    # Every call went to the embedded model at its variant's temperature, and was priced.
    calls = run.db.rows(
        "SELECT r.variant, c.temperature, c.error FROM message_log c "
        "JOIN experiment_runs r ON r.id = c.run_id"
    )
    assert len(calls) == 16 and all(c["error"] is None for c in calls)
    assert all(c["variant"].endswith(f"temperature={c['temperature']:g}") for c in calls)
    assert run.db.count("experiment_runs", "cost > 0") == 16
    assert run.db.count("gate_results", "variant IS NOT NULL") == 4
    assert "cost per run" in run.output


def test_a_regression_and_a_failed_gate_become_error_commands_escaped() -> None:
    from pytest_llmexp._plugin.github import error_commands
    from pytest_llmexp._verdict.evaluate import GateResult
    from pytest_llmexp._verdict.gates import parse_gate
    from pytest_llmexp._verdict.verdicts import ExperimentVerdict, SessionVerdict

    gate = parse_gate("score: mean >= 0.5", source="code", where="@experiment")
    regressed = {"metrics": [{"metric": "score", "verdict": "regressed"}]}
    watched = ExperimentVerdict("tagline", 1, variant="a,b", gating=False, comparison=regressed)
    shipped = ExperimentVerdict("tagline", 1, variant="x", comparison=regressed)
    experiment = ExperimentVerdict(
        "tagline",
        1,
        gates=[
            GateResult(gate, "failed", 0.25, variant="a,b"),  # not gating: not annotated
            GateResult(gate, "error", None, "cannot be evaluated: 50%\nof it", variant="x"),
        ],
        variants=[watched, shipped],
    )
    commands = error_commands(SessionVerdict(experiments={"tagline": experiment}))
    assert commands == [
        "::error title=LLM gate error%3A tagline::tagline: gate score: mean >= 0.5 [x] error "
        "(cannot be evaluated: 50%25%0Aof it)",
        "::error title=LLM regression%3A tagline::tagline.score [x] regressed against the "
        "baseline session",
    ]
