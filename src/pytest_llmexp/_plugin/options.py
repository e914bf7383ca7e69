"""The ``--llm-*`` options and ``llm_*`` ini keys as pytest shows them in ``--help``;
:mod:`.settings` reads and validates them."""

from __future__ import annotations

from typing import Any

import pytest

from .._util.defaults import (
    DEFAULT_DB,
    DEFAULT_ERROR_BUDGET,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RATE_LIMIT_WAIT,
    DEFAULT_STORAGE_LIMIT,
    DEFAULT_TIMEOUT,
    MAX_CONCURRENCY,
)

__all__ = ["add_options"]


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("llmexp", "LLM experiments")
    group.addoption(
        "--llm-experiment",
        action="append",
        default=[],
        metavar="NAME",
        help="run only the experiment NAME (repeatable); every other test is deselected.",
    )
    group.addoption(
        "--llm-db",
        metavar="PATH",
        help=f"the experiment database (ini: llm_db; default: {DEFAULT_DB} in the rootdir).",
    )
    group.addoption(
        "--llm-num-executions",
        metavar="N",
        help="run every selected experiment N times, whatever it declares.",
    )
    group.addoption(
        "--llm-base-url",
        metavar="URL",
        help="the OpenAI-compatible endpoint (ini: llm_base_url; default: OPENAI_BASE_URL, "
        "else OpenAI).",
    )
    group.addoption(
        "--llm-timeout",
        metavar="SECONDS",
        help=f"timeout of one LLM request (ini: llm_timeout; default: {DEFAULT_TIMEOUT:g}, "
        "300 on the embedded model, where requests queue).",
    )
    group.addoption(
        "--llm-max-retries",
        metavar="N",
        help="retries of a failed LLM request, with backoff; a rate limit is waited out "
        f"instead (ini: llm_max_retries; default: {DEFAULT_MAX_RETRIES}).",
    )
    group.addoption(
        "--llm-error-budget",
        metavar="SHARE",
        help="fail the session when more than SHARE of its runs errored (timeouts, 429s, 5xx, "
        f"bad replies), whatever the metrics (ini: llm_error_budget; default: "
        f"{DEFAULT_ERROR_BUDGET:g}).",
    )
    group.addoption(
        "--llm-max-calls",
        metavar="N",
        help="spend guard: once the session made N LLM calls, skip the runs not yet started "
        "(ini: llm_max_calls).",
    )
    group.addoption(
        "--llm-max-tokens",
        metavar="N",
        help="spend guard: once the session used N tokens, skip the runs not yet started "
        "(ini: llm_max_tokens).",
    )
    group.addoption(
        "--llm-concurrency",
        metavar="K",
        help="keep up to K executions of experiments in flight at once in each process "
        "(serially K per session, under pytest-xdist K per worker); overrides each "
        f"experiment's concurrency= (ini: llm_concurrency; default 1, at most {MAX_CONCURRENCY}).",
    )
    group.addoption(
        "--llm-rpm",
        metavar="N",
        help="rate limit: at most N LLM requests a minute per endpoint, for all processes of "
        "the session together (ini: llm_rpm).",
    )
    group.addoption(
        "--llm-tpm",
        metavar="N",
        help="rate limit: at most N tokens a minute per endpoint, for all processes of the "
        "session together (ini: llm_tpm).",
    )
    group.addoption(
        "--llm-rate-limit-wait",
        metavar="SECONDS",
        help="the longest one call waits out rate limits (429, 503 with Retry-After) before "
        "its run is an error (ini: llm_rate_limit_wait; default "
        f"{DEFAULT_RATE_LIMIT_WAIT:g}).",
    )
    group.addoption(
        "--llm-capture",
        metavar="on|off",
        help="record the calls the code under test makes through its own openai client "
        "(OpenAI, AsyncOpenAI) in the run that made them (ini: llm_capture; default: on).",
    )
    group.addoption(
        "--llm-max-stored-chars",
        metavar="N",
        help="store at most N characters of each message, flagging the call truncated "
        f"(ini: llm_max_stored_chars; default: {DEFAULT_STORAGE_LIMIT}).",
    )
    group.addoption(
        "--llm-gate",
        action="append",
        default=[],
        metavar="GATE",
        help="a gate the session's verdict follows, '[EXPERIMENT.]METRIC: STATISTIC OP NUMBER', "
        "e.g. 'name_generator.name_length: p10 >= 3' (repeatable; wins over ini llm_gates and "
        "the gates in code).",
    )
    group.addoption(
        "--llm-compare",
        nargs="?",
        const="last",
        default=None,
        metavar="SESSION_ID",
        help="compare each experiment with the last complete session of it in the database, "
        "or with session SESSION_ID (write --llm-compare=SESSION_ID).",
    )
    group.addoption(
        "--llm-fail-on-regression",
        action="store_true",
        default=None,
        help="fail the session when a metric regressed against the baseline with a 95%% "
        "interval that excludes zero (implies --llm-compare; ini: llm_fail_on_regression).",
    )
    group.addoption(
        "--llm-report-json",
        metavar="PATH",
        help="write the verdict (experiments, metrics, gates, comparison) as JSON to PATH.",
    )
    group.addoption(
        "--llm-report-md",
        metavar="PATH",
        help="write the verdict as Markdown tables to PATH (e.g. $GITHUB_STEP_SUMMARY).",
    )
    group.addoption(
        "--llm-report",
        metavar="PATH",
        help="write the HTML report of this session's experiments to PATH: one file that opens "
        "with no network (also: llmexp report).",
    )
    group.addoption(
        "--llm-cache",
        metavar="MODE",
        help="record and replay LLM calls: off (the default), record (store each reply), "
        "replay (serve every call from the store, never call the endpoint), auto (replay what "
        "is stored, record the rest) (ini: llm_cache).",
    )
    group.addoption(
        "--llm-replay-from",
        metavar="SESSION_ID",
        help="re-score stored session SESSION_ID: rerun its experiments on its stored "
        "generations and measure them with the current metrics, with no LLM call (LLM-judge "
        "calls it lacks follow --llm-cache).",
    )
    parser.addini("llm_cache", "record and replay LLM calls: off, record, replay or auto")
    parser.addini(
        "llm_gates", "gates, one per line: [EXPERIMENT.]METRIC: STAT OP NUMBER", "linelist"
    )
    parser.addini("llm_fail_on_regression", "fail the session on a regression", "bool", False)
    parser.addini("llm_db", "the experiment database (default: message_log.db in the rootdir)")
    parser.addini("llm_model", "the model every bot calls instead of its own ('local': embedded)")
    _add_variant_options(parser, group)
    group.addoption(
        "--llm-adaptive",
        action="store_const",
        const=True,
        default=None,
        help="num_executions becomes each case's maximum: a case runs no more executions once "
        "they can change no gate's verdict, at --llm-adaptive-confidence (ini: llm_adaptive; "
        "@experiment(adaptive=...) decides for its experiment).",
    )
    group.addoption(
        "--llm-adaptive-confidence",
        metavar="C",
        help="how sure an early verdict must be, from 0.5 to 0.999 (ini: "
        "llm_adaptive_confidence; default: 0.95).",
    )
    parser.addini("llm_adaptive", "stop executions once the verdicts are settled", "bool")
    parser.addini("llm_adaptive_confidence", "how sure an early verdict must be (0.95)")
    parser.addini("llm_base_url", "the OpenAI-compatible endpoint")
    parser.addini("llm_timeout", f"timeout of one LLM request in seconds ({DEFAULT_TIMEOUT:g})")
    parser.addini("llm_max_retries", f"retries of a failed LLM request ({DEFAULT_MAX_RETRIES})")
    parser.addini("llm_error_budget", f"share of runs that may error ({DEFAULT_ERROR_BUDGET:g})")
    parser.addini("llm_max_calls", "spend guard: the session's cap on LLM calls")
    parser.addini("llm_max_tokens", "spend guard: the session's cap on tokens")
    parser.addini("llm_max_stored_chars", "the longest message text stored")
    parser.addini("llm_concurrency", "executions of experiments in flight per process (1)")
    parser.addini("llm_rpm", "rate limit: LLM requests a minute per endpoint, whole session")
    parser.addini("llm_tpm", "rate limit: tokens a minute per endpoint, whole session")
    parser.addini("llm_capture", "record the code's own openai client calls: on or off (on)")
    parser.addini(
        "llm_rate_limit_wait",
        f"the longest a call waits out rate limits, seconds ({DEFAULT_RATE_LIMIT_WAIT:g})",
    )


def _add_variant_options(parser: pytest.Parser, group: Any) -> None:
    """Variants of the command line, judges, prices, GitHub Actions (see ``variants``)."""
    group.addoption(
        "--llm-model",
        action="append",
        default=[],
        metavar="NAME",
        help="call every bot with model NAME instead of its own (ini: llm_model); repeat it to "
        "run every selected experiment once per model, as variants (judges, bots called in a "
        "@metric, keep their own model); 'local' is the embedded model, served by llama.cpp "
        "on 127.0.0.1 (pytest-llmexp[local]).",
    )
    group.addoption(
        "--llm-temperature",
        action="append",
        default=[],
        metavar="T",
        help="call every bot but judges with temperature T, from 0 to 2 (ini: "
        "llm_temperature); repeat it to run each value as a variant.",
    )
    group.addoption(
        "--llm-judge-model",
        metavar="NAME",
        help="the model of judges, bots called inside a @metric (ini: llm_judge_model; "
        "default: each judge's own).",
    )
    group.addoption(
        "--llm-max-cost",
        metavar="DOLLARS",
        help="spend guard: once the session's calls cost this many US dollars at the "
        "llm_prices, runs not yet started are skipped (ini: llm_max_cost).",
    )
    group.addoption(
        "--llm-gate-variant",
        action="append",
        default=[],
        metavar="VARIANT",
        help="only this variant's gates decide the exit status, e.g. model=gpt-4o "
        "(repeatable; default: every variant's do).",
    )
    group.addoption(
        "--llm-github",
        metavar="on|off",
        help="under GitHub Actions, append the verdict to the job summary and annotate "
        "failed gates and regressions (ini: llm_github; default: on).",
    )
    parser.addini("llm_temperature", "the temperature every bot but judges calls with")
    parser.addini("llm_judge_model", "the model of judges (bots called inside a @metric)")
    parser.addini(
        "llm_prices",
        "US dollars per million tokens, one model a line: MODEL = INPUT / OUTPUT",
        "linelist",
    )
    parser.addini("llm_max_cost", "spend guard: the session's cap in US dollars")
    parser.addini("llm_github", "GitHub Actions job summary and annotations: on or off (on)")
