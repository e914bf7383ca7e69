"""The ``--llm-*`` options and ``llm_*`` ini keys, validated once into :class:`Settings`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar
from urllib.parse import urlsplit

import pytest

from .._util.defaults import (
    CACHE_MODES,
    DEFAULT_CONFIDENCE,
    DEFAULT_DB,
    DEFAULT_ERROR_BUDGET,
    DEFAULT_MAX_RETRIES,
    DEFAULT_RATE_LIMIT_WAIT,
    DEFAULT_STORAGE_LIMIT,
    DEFAULT_TIMEOUT,
    MAX_CONCURRENCY,
    MAX_EXECUTIONS,
)

if TYPE_CHECKING:
    from .._run.cache import CacheMode
    from .._verdict.gates import Gate

__all__ = ["Settings", "build_settings"]


class Settings(NamedTuple):
    """Everything the plugin was told, after validation (a named tuple: it is made in every
    pytest session, and a dataclass of this size takes a millisecond to define)."""

    experiments: tuple[str, ...]
    db_path: Path
    num_executions: int | None
    model: str | None
    base_url: str | None
    timeout: float
    max_retries: int
    #: ``--llm-timeout`` (or ini ``llm_timeout``) was given, not defaulted.
    timeout_given: bool = False
    #: The embedded local model: asked for (``--llm-model local``), chosen because no key and
    #: no endpoint is configured, or not used.
    local: Literal["explicit", "auto"] | None = None
    #: No key and no endpoint is configured, and the local model is not installed either.
    local_unavailable: bool = False
    #: The share of runs that may error before the session fails as "infrastructure".
    error_budget: float = DEFAULT_ERROR_BUDGET
    #: The spend guard's caps on the session's LLM calls and tokens.
    max_calls: int | None = None
    max_tokens: int | None = None
    #: The longest message text stored per message.
    max_stored_chars: int = DEFAULT_STORAGE_LIMIT
    #: Gates from the ini file (``llm_gates``) and the command line (``--llm-gate``).
    ini_gates: tuple[Gate, ...] = ()
    cli_gates: tuple[Gate, ...] = ()
    #: ``"last"`` (the last complete session) or a session id (prefix) to compare with.
    compare: str | None = None
    fail_on_regression: bool = False
    report_json: Path | None = None
    report_md: Path | None = None
    report_html: Path | None = None
    #: ``--llm-cache``: off, record, replay or auto.
    cache: CacheMode = "off"
    #: ``--llm-replay-from``: the stored session (id or prefix) whose generations are replayed.
    replay_from: str | None = None
    #: Nothing runs (``--collect-only``, ``--setup-plan``, ``--setup-only``, ``--fixtures``…):
    #: no session, run, gate or report is stored or written.
    dry_run: bool = False
    #: Executions of experiments in flight at once per process (``--llm-concurrency``);
    #: ``None``: not set, each experiment's own ``concurrency=`` or 1.
    concurrency: int | None = None
    #: The session's requests and tokens per minute, per endpoint, for all its processes.
    rpm: int | None = None
    tpm: int | None = None
    #: The longest a call waits out rate limits (429, 503 with Retry-After), in seconds.
    rate_limit_wait: float = DEFAULT_RATE_LIMIT_WAIT
    #: Record the code's own ``openai`` client calls (``--llm-capture``).
    capture: bool = True
    #: The temperature every bot but judges calls with (one ``--llm-temperature``).
    temperature: float | None = None
    #: Variants of the command line (several ``--llm-model`` or ``--llm-temperature``), each
    #: what it changes: ``{"model": "gpt-4o"}``; empty without a sweep.
    sweep: tuple[dict[str, Any], ...] = ()
    #: The model of judges, bots called inside a ``@metric`` (``--llm-judge-model``).
    judge_model: str | None = None
    #: US dollars per million tokens by model (``llm_prices``), and the spend guard's cap.
    prices: Mapping[str, Any] = MappingProxyType({})
    max_cost: float | None = None
    #: GitHub Actions job summary and annotations (``--llm-github``), where it runs.
    github: bool = True
    #: The variants whose gates decide the exit status (``--llm-gate-variant``; all if empty).
    gate_variants: tuple[str, ...] = ()
    #: Stop executions once their verdicts are settled (``--llm-adaptive``), and how sure.
    adaptive: bool = False
    adaptive_confidence: float = DEFAULT_CONFIDENCE


N = TypeVar("N", int, float)


def _variants_given(config: pytest.Config) -> bool:
    """Whether any option of variants, judges, prices or GitHub Actions is given: checking
    them imports a module and the prices' parser, which a session without them skips."""
    return any(config.getoption(n) for n in _VARIANT_OPTIONS) or any(
        config.getini(n) for n in _VARIANT_INI
    )


#: The options and ini keys ``variants`` checks, besides several ``--llm-model``.
_VARIANT_OPTIONS = (
    "llm_temperature",
    "llm_judge_model",
    "llm_max_cost",
    "llm_gate_variant",
    "llm_github",
)
_VARIANT_INI = ("llm_temperature", "llm_judge_model", "llm_prices", "llm_max_cost", "llm_github")


def _value(config: pytest.Config, name: str, *, ini: bool = True) -> tuple[str | None, str]:
    """The raw value of option ``name`` (command line first, then ini) and where it came from."""
    cli = config.getoption(name)
    if cli is not None:
        return str(cli), "--" + name.replace("_", "-")
    value = config.getini(name) if ini else None
    if isinstance(value, str) and value.strip():
        return value.strip(), f"ini {name}"
    return None, ""


def _bad(where: str, value: str, expected: str) -> pytest.UsageError:
    return pytest.UsageError(f"{where}: expected {expected}, got {value!r}")


def _number(
    config: pytest.Config,
    name: str,
    parse: Callable[[str], N],
    valid: Callable[[N], bool],
    expected: str,
    *,
    ini: bool = True,
) -> N | None:
    """Option ``name`` parsed and checked, or ``None`` if it is not set."""
    raw, where = _value(config, name, ini=ini)
    if raw is None:
        return None
    try:
        value = parse(raw)
    except ValueError:
        raise _bad(where, raw, expected) from None
    if not valid(value):
        raise _bad(where, raw, expected)
    return value


def build_settings(config: pytest.Config) -> Settings:
    """Read and validate every option; a bad value is a ``pytest.UsageError``."""
    names = tuple(config.getoption("llm_experiment") or ())
    for name in names:
        if not name.strip():
            raise _bad("--llm-experiment", name, "an experiment name")

    raw_db, where = _value(config, "llm_db")
    if config.getoption("llm_db") is not None:
        if not raw_db or not raw_db.strip():
            raise _bad(where, raw_db or "", "a file path")
        # Like --junitxml, a command line path is relative to the invocation directory.
        db_path = Path(config.invocation_params.dir, raw_db)
    else:
        db_path = Path(config.rootpath, raw_db or DEFAULT_DB)
    if db_path.is_dir():
        raise _bad(where or "llm_db", str(db_path), "a file path, not a directory")

    num_executions = _number(
        config,
        "llm_num_executions",
        int,
        lambda n: 1 <= n <= MAX_EXECUTIONS,
        f"a whole number from 1 to {MAX_EXECUTIONS:,}, e.g. 10",
        ini=False,
    )

    models = [str(m) for m in config.getoption("llm_model") or []]
    model, model_where = (models[0], "--llm-model") if len(models) == 1 else (None, "")
    ini_model = str(config.getini("llm_model") or "").strip()
    if not models and ini_model:
        model, model_where = ini_model, "ini llm_model"
    variants: dict[str, Any] = {}
    if len(models) > 1 or _variants_given(config):
        from .variants import variant_options

        variants = variant_options(config, models)

    base_url, where = _value(config, "llm_base_url")
    if base_url is not None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _bad(where, base_url, "an http:// or https:// URL, e.g. http://127.0.0.1:8080/v1")

    from .localmodel import local_mode

    local, local_unavailable = local_mode(
        model or (models[0] if models else None), model_where or "--llm-model", base_url, where
    )

    timeout = _number(
        config,
        "llm_timeout",
        float,
        lambda t: 0 < t < float("inf"),
        "a positive number of seconds, e.g. 30",
    )
    max_retries = _number(
        config, "llm_max_retries", int, lambda n: n >= 0, "a whole number >= 0, e.g. 2"
    )

    error_budget = _number(
        config,
        "llm_error_budget",
        float,
        lambda share: 0 <= share <= 1,
        "a share of runs from 0 to 1, e.g. 0.1",
    )
    positive = "a positive whole number, e.g. 1000"
    max_calls = _number(config, "llm_max_calls", int, lambda n: n >= 1, positive)
    max_tokens = _number(config, "llm_max_tokens", int, lambda n: n >= 1, positive)
    max_stored_chars = _number(config, "llm_max_stored_chars", int, lambda n: n >= 1, positive)
    concurrency = _number(
        config,
        "llm_concurrency",
        int,
        lambda n: 1 <= n <= MAX_CONCURRENCY,
        f"a whole number from 1 to {MAX_CONCURRENCY}, e.g. 16",
    )
    rpm = _number(config, "llm_rpm", int, lambda n: n >= 1, "a positive whole number, e.g. 500")
    tpm = _number(config, "llm_tpm", int, lambda n: n >= 1, "a positive whole number, e.g. 200000")
    rate_limit_wait = _number(
        config,
        "llm_rate_limit_wait",
        float,
        lambda t: 0 <= t < float("inf"),
        "a number of seconds >= 0, e.g. 300",
    )

    adaptive = config.getoption("llm_adaptive")
    if adaptive is None:
        adaptive = bool(config.getini("llm_adaptive"))
    confidence = _number(
        config,
        "llm_adaptive_confidence",
        float,
        lambda c: 0.5 <= c <= 0.999,
        "a confidence from 0.5 to 0.999, e.g. 0.95",
    )

    capture, where = _value(config, "llm_capture")
    if capture is not None and capture.lower() not in _SWITCH:
        raise _bad(where, capture, "on or off")

    verdict = _verdict_options(config)
    if len(models) > 1:
        from .localmodel import check_model_sweep

        check_model_sweep(models, local)
    if local is None and verdict["cache"] != "replay":
        from .localmodel import check_named_model

        for name in models or ([model] if model else []):
            check_named_model(name, model_where or "--llm-model", base_url)

    return Settings(
        **verdict,
        experiments=names,
        db_path=db_path.resolve(),
        num_executions=num_executions,
        model=model,
        base_url=base_url,
        timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        timeout_given=timeout is not None,
        max_retries=DEFAULT_MAX_RETRIES if max_retries is None else max_retries,
        local=local,
        local_unavailable=local_unavailable,
        error_budget=DEFAULT_ERROR_BUDGET if error_budget is None else error_budget,
        max_calls=max_calls,
        max_tokens=max_tokens,
        max_stored_chars=DEFAULT_STORAGE_LIMIT if max_stored_chars is None else max_stored_chars,
        dry_run=is_dry_run(config),
        concurrency=concurrency,
        rpm=rpm,
        tpm=tpm,
        rate_limit_wait=DEFAULT_RATE_LIMIT_WAIT if rate_limit_wait is None else rate_limit_wait,
        capture=capture is None or _SWITCH[capture.lower()],
        adaptive=adaptive,
        adaptive_confidence=DEFAULT_CONFIDENCE if confidence is None else confidence,
        **variants,
    )


#: What ``--llm-capture`` takes, and what each means.
_SWITCH = {"on": True, "off": False}


#: pytest's options under which no test body runs (``--setup-plan`` implies ``setuponly``).
_DRY_OPTIONS = (
    "collectonly",
    "setuponly",
    "setupplan",
    "showfixtures",
    "show_fixtures_per_test",
    "markers",
)


def is_dry_run(config: pytest.Config) -> bool:
    """Whether this session only shows what it would do: collection, fixtures, markers."""
    return any(getattr(config.option, name, False) for name in _DRY_OPTIONS)


def _gates(values: list[str], source: Literal["ini", "cli"], where: str) -> tuple[Gate, ...]:
    if not values:
        return ()
    from .._verdict.gates import parse_gate
    from ..errors import GateError

    gates = []
    for text in values:
        try:
            gates.append(parse_gate(text, source=source, where=where))
        except GateError as exc:
            raise pytest.UsageError(str(exc)) from None
    return tuple(gates)


def _report_path(config: pytest.Config, name: str) -> Path | None:
    raw = config.getoption(name)
    if raw is None:
        return None
    where = "--" + name.replace("_", "-")
    path = Path(config.invocation_params.dir, raw)
    if not str(raw).strip() or path.is_dir():
        raise _bad(where, str(raw), "a file path")
    return path


_SESSION_PREFIX = re.compile(r"^[0-9a-f]{4,32}$")


def _verdict_options(config: pytest.Config) -> dict[str, Any]:
    """Gates, comparison, report, cache and re-scoring options."""
    compare = config.getoption("llm_compare")
    if compare is not None and compare != "last" and not _SESSION_PREFIX.match(compare):
        hint = (
            "; it is a path: write --llm-compare=SESSION_ID, or put --llm-compare after the paths"
            if Path(config.invocation_params.dir, compare).exists()
            else ""
        )
        raise _bad("--llm-compare", compare, "a session id (or its first 4+ hex digits)" + hint)
    fail_on_regression = config.getoption("llm_fail_on_regression")
    if fail_on_regression is None:
        fail_on_regression = bool(config.getini("llm_fail_on_regression"))
    if fail_on_regression and compare is None:
        compare = "last"
    cache, where = _value(config, "llm_cache")
    if cache is not None and cache not in CACHE_MODES:
        raise _bad(where, cache, "one of " + ", ".join(CACHE_MODES))
    replay_from = config.getoption("llm_replay_from")
    if replay_from is not None and not _SESSION_PREFIX.match(replay_from):
        raise _bad("--llm-replay-from", replay_from, "a session id (or its first 4+ hex digits)")
    return {
        "cache": cache or "off",
        "replay_from": replay_from,
        "ini_gates": _gates(list(config.getini("llm_gates")), "ini", "ini llm_gates"),
        "cli_gates": _gates(list(config.getoption("llm_gate") or []), "cli", "--llm-gate"),
        "compare": compare,
        "fail_on_regression": fail_on_regression,
        "report_json": _report_path(config, "llm_report_json"),
        "report_md": _report_path(config, "llm_report_md"),
        "report_html": _report_path(config, "llm_report"),
    }
