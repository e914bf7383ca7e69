"""What the plugin sets up in a process, and when: as late as it can.

A session without experiments must cost next to nothing, so the writer, the run relay (with
its spool, spend guard and cache) and the per-test hooks are made on first need: where
experiment items are collected or the bots are imported, where xdist distributes, or where
the session's end has work of its own. ``plugin.py``'s hooks call these.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pytest

from .keys import (
    BOTS_MODULE,
    ENV_KEY,
    ITEM_KEY,
    LOCAL_KEY,
    RELAY_KEY,
    SETTINGS_KEY,
    STARTED_KEY,
    WHO_KEY,
    WRITER_KEY,
)

if TYPE_CHECKING:
    from .._run.endpoint import ClientSettings
    from .._run.process import ProcessSettings
    from .relay import RunRelay
    from .writer import Writer

__all__ = [
    "distributes",
    "lend_endpoint",
    "make_relay",
    "make_writer",
    "process_settings",
    "register_run_hooks",
    "restore_environment",
    "start_local",
]


def process_settings(config: pytest.Config, workerinput: dict[str, Any] | None) -> ProcessSettings:
    """What this process's runs and calls use: the endpoint (on a worker, the one the
    controller chose; with the embedded model, its server's), the record/replay mode, the
    storage cap, and calls outside runs kept for the writer instead of written here."""
    from .._run.process import CacheSettings, ClientSettings, ProcessSettings, RateLimits
    from .._store.spool import rate_path

    settings = config.stash[SETTINGS_KEY]
    client = ClientSettings(
        base_url=settings.base_url,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
        model=settings.model,
    )
    if workerinput is not None:
        from .localmodel import worker_client_settings

        client = worker_client_settings(workerinput) or client
    elif settings.local:
        client = start_local(config, client)
    client = client._replace(temperature=settings.temperature, judge_model=settings.judge_model)
    cache = CacheSettings()
    if settings.cache != "off" or settings.replay_from is not None:
        from .._store.spool import cassette_path

        cache = CacheSettings(
            mode=settings.cache,
            cassette=cassette_path(settings.db_path, config.stash[WHO_KEY][0]),
            replay_of=settings.replay_from,
        )
    return ProcessSettings(
        endpoint=client,
        cache=cache,
        storage_limit=settings.max_stored_chars,
        buffer_orphans=True,
        rate_limits=RateLimits(
            ledger=rate_path(settings.db_path, config.stash[WHO_KEY][0]),
            rpm=settings.rpm,
            tpm=settings.tpm,
            wait=settings.rate_limit_wait,
        ),
        capture=settings.capture,
        prices=settings.prices,
    )


def lend_endpoint(config: pytest.Config) -> None:
    """The code's own ``openai`` clients call the session's endpoint too (``--llm-base-url``,
    or the embedded model): where tests run, ``OPENAI_BASE_URL`` points at it and
    ``OPENAI_API_KEY`` holds a placeholder, each only if unset, before any test module is
    imported (a client made at import reads them then). A client given its own
    ``base_url`` and ``api_key`` is left as it is. :func:`restore_environment` puts them
    back."""
    import os

    from .._run.process import PROCESS

    base_url = PROCESS.settings.endpoint.base_url or os.environ.get("OPENAI_BASE_URL")
    if not base_url:
        return  # OpenAI's own: the clients need a key, as the bots do
    # Where xdist distributes, the workers run the tests and lend it themselves (under
    # --collect-only xdist does not distribute: the tests are collected here).
    if (
        not hasattr(config, "workerinput")
        and distributes(config)
        and not config.getoption("collectonly", False)
    ):
        return
    from .._run.endpoint import PLACEHOLDER_KEY

    # Endpoints such as llama.cpp, Ollama or vLLM take any key; the client insists on one.
    wanted = {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": PLACEHOLDER_KEY}
    before = {name: os.environ.get(name) for name in wanted}
    config.stash[ENV_KEY] = before
    for name, value in wanted.items():
        if not before[name]:
            os.environ[name] = value


def restore_environment(config: pytest.Config) -> None:
    """Put back what :func:`lend_endpoint` set."""
    import os

    before = config.stash.get(ENV_KEY, None)
    for name, value in (before or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def make_writer(config: pytest.Config) -> Writer:
    """The controller's writer, made and registered on first need (see ``plugin.pytest_configure``
    and :func:`register_run_hooks`)."""
    writer = config.stash.get(WRITER_KEY, None)
    if writer is not None:
        return writer
    from .writer import Writer, XdistHooks

    session_id, _ = config.stash[WHO_KEY]
    settings = config.stash[SETTINGS_KEY]
    writer = Writer(config, settings, config.stash[STARTED_KEY], session_id)
    config.stash[WRITER_KEY] = writer
    config.pluginmanager.register(writer, "llmexp-writer")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistHooks(writer), "llmexp-xdist")
    return writer


def make_relay(config: pytest.Config) -> RunRelay:
    """This process's run machinery (relay, spool, spend guard, cache), made on first need:
    a session without experiments never makes it."""
    relay = config.stash.get(RELAY_KEY, None)
    if relay is not None:
        return relay
    from .._run.spend import SpendGuard
    from .._store.spool import Spool
    from .relay import RunRelay

    settings = config.stash[SETTINGS_KEY]
    session_id, worker = config.stash[WHO_KEY]
    spend = None
    if any(cap is not None for cap in (settings.max_calls, settings.max_tokens, settings.max_cost)):
        spend = SpendGuard(
            settings.db_path,
            session_id,
            max_calls=settings.max_calls,
            max_tokens=settings.max_tokens,
            max_cost=settings.max_cost,
        )
    relay = config.stash[RELAY_KEY] = RunRelay(
        worker, Spool(settings.db_path, session_id, worker), spend
    )
    return relay


def distributes(config: pytest.Config) -> bool:
    """Whether pytest-xdist will run the tests on workers (``-n N`` with N > 0, ``--tx``)."""
    if not config.pluginmanager.hasplugin("xdist"):
        return False
    return config.getoption("dist", "no") != "no" or bool(config.getoption("tx", None))


def start_local(config: pytest.Config, client: ClientSettings) -> ClientSettings:
    """Reserve the local model server's port; the server starts when experiments are about
    to run (see :mod:`.localmodel`)."""
    from .._local.server import LOCAL_TIMEOUT, LocalServer
    from .localmodel import LocalModelPlugin, LocalXdistHooks

    settings = config.stash[SETTINGS_KEY]
    try:
        server = LocalServer()
    except ValueError as exc:  # LLMEXP_LOCAL_THREADS
        raise pytest.UsageError(str(exc)) from None
    local = LocalModelPlugin(server, needed=settings.cache != "replay")
    config.stash[LOCAL_KEY] = local
    config.pluginmanager.register(local, "llmexp-local")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(LocalXdistHooks(local), "llmexp-local-xdist")
    # The embedded model answers one request at a time: under -n N a request waits for the
    # others, so its default timeout is longer than an API's.
    timeout = client.timeout if settings.timeout_given else LOCAL_TIMEOUT
    return local.server.client_settings(timeout=timeout, max_retries=client.max_retries)


def _in_flight(config: pytest.Config, items: list[pytest.Item]) -> bool:
    """Whether an experiment here may keep executions in flight, or has an async body."""
    from inspect import iscoroutinefunction

    session_k = config.stash[SETTINGS_KEY].concurrency or 1
    for item in items:
        info = item.stash.get(ITEM_KEY, None)
        if info is None:
            continue
        if session_k > 1 or (info.concurrency or 1) > 1:
            return True
        if iscoroutinefunction(getattr(item, "obj", None)):
            return True
    return False


def register_run_hooks(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Register the per-test hooks only where runs or calls can happen: this process has
    experiment items, or a test module imported the bots. A session without experiments
    pays nothing per test; calls made there are still stored when the session ends."""
    if config.stash[SETTINGS_KEY].dry_run:
        return  # --collect-only, --setup-plan...: no test body runs, nothing is recorded
    if not any(ITEM_KEY in item.stash for item in items) and BOTS_MODULE not in sys.modules:
        return
    settings = config.stash[SETTINGS_KEY]
    if settings.capture and any(ITEM_KEY in item.stash for item in items):
        from .._run.capture import install

        # The code's own openai clients, those made at import included, are captured
        # from here on; pytest_unconfigure puts the transports back.
        install()
    manager = config.pluginmanager
    relay = make_relay(config)
    if not manager.hasplugin("llmexp-relay"):
        manager.register(relay, "llmexp-relay")
    if relay.decisions is None and any(
        getattr(item.stash.get(ITEM_KEY, None), "adaptive", False) for item in items
    ):
        from .._store.spool import Decisions

        relay.decisions = Decisions(settings.db_path, config.stash[WHO_KEY][0])
    if relay.inflight is None and _in_flight(config, items):
        from .inflight import InFlight

        relay.inflight = InFlight(relay, config)
        manager.register(relay.inflight, "llmexp-inflight")
    writer = None if hasattr(config, "workerinput") else make_writer(config)
    if writer is not None and not manager.hasplugin("llmexp-reports"):
        from .intake import ReportHooks

        manager.register(ReportHooks(writer.intake), "llmexp-reports")
