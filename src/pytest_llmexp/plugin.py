"""The pytest entry point (``-p llmexp``): hook functions only; state lives in plugin objects.

Nothing heavy is imported here: this module loads in every pytest session of the
environment, experiments or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from . import cache, endpoint, recording
from .collect import MARKER_HELP, generate_executions, select_experiments
from .local import LocalModelPlugin, LocalXdistHooks, header_lines, worker_client_settings
from .relay import RunRelay
from .settings import SETTINGS_KEY, add_options, build_settings
from .spend import SpendGuard
from .spool import Spool, cassette_path
from .writer import Writer, XdistHooks

if TYPE_CHECKING:
    from .recording import RunContext

_RELAY_KEY = pytest.StashKey[RunRelay]()
_WRITER_KEY = pytest.StashKey[Writer]()
_LOCAL_KEY = pytest.StashKey[LocalModelPlugin]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = build_settings(config)
    config.stash[SETTINGS_KEY] = settings
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    client = endpoint.ClientSettings(
        base_url=settings.base_url,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
        model=settings.model,
    )
    if workerinput is not None:
        client = worker_client_settings(workerinput) or client
    elif settings.local:
        client = _start_local(config, client)
    endpoint.configure(client)
    # Calls outside any run travel on reports to the writer instead of being written here.
    recording.set_orphan_writer(None)
    recording.set_storage_limit(settings.max_stored_chars)
    if workerinput is None:
        writer = Writer(config, settings, recording.utcnow())
        config.stash[_WRITER_KEY] = writer
        config.pluginmanager.register(writer, "llmexp-writer")
        if config.pluginmanager.hasplugin("xdist"):
            config.pluginmanager.register(XdistHooks(writer), "llmexp-xdist")
        session_id, worker = writer.session_id, "main"
    else:
        session_id, worker = workerinput["llmexp_session"], workerinput["workerid"]
    spend = None
    if settings.max_calls is not None or settings.max_tokens is not None:
        spend = SpendGuard(
            settings.db_path,
            session_id,
            max_calls=settings.max_calls,
            max_tokens=settings.max_tokens,
        )
    cache.configure(
        cache.CacheSettings(
            mode=settings.cache,
            cassette=cassette_path(settings.db_path, session_id),
            replay_of=settings.replay_from,
        )
    )
    relay = RunRelay(worker, Spool(settings.db_path, session_id, worker), spend)
    config.stash[_RELAY_KEY] = relay
    config.pluginmanager.register(relay, "llmexp-relay")


def _start_local(config: pytest.Config, client: endpoint.ClientSettings) -> endpoint.ClientSettings:
    """Reserve the local model server's port; the server starts when experiments are about
    to run (see :mod:`.local`)."""
    from .llama import LocalServer

    settings = config.stash[SETTINGS_KEY]
    local = LocalModelPlugin(LocalServer(), needed=settings.cache != "replay")
    config.stash[_LOCAL_KEY] = local
    config.pluginmanager.register(local, "llmexp-local")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(LocalXdistHooks(local), "llmexp-local-xdist")
    return local.server.client_settings(timeout=client.timeout, max_retries=client.max_retries)


def pytest_unconfigure(config: pytest.Config) -> None:
    local = config.stash.get(_LOCAL_KEY, None)
    if local is not None:
        local.stop()
    relay = config.stash.get(_RELAY_KEY, None)
    if relay is not None:
        relay.spool.close()
    writer = config.stash.get(_WRITER_KEY, None)
    if writer is not None:
        writer.close()
    for name in (
        "llmexp-relay",
        "llmexp-writer",
        "llmexp-xdist",
        "llmexp-local",
        "llmexp-local-xdist",
    ):
        plugin = config.pluginmanager.get_plugin(name)
        if plugin is not None:
            config.pluginmanager.unregister(plugin)
    endpoint.configure(endpoint.ClientSettings())
    cache.configure(cache.CacheSettings())
    recording.set_orphan_writer(recording.default_orphan_writer)
    recording.set_storage_limit(recording.DEFAULT_STORAGE_LIMIT)


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    generate_executions(metafunc, metafunc.config.stash[SETTINGS_KEY].num_executions)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    settings = config.stash[SETTINGS_KEY]
    try:
        select_experiments(config, items, settings.experiments, settings.num_executions)
    except pytest.UsageError as exc:
        if not hasattr(config, "workerinput"):
            raise
        # A usage error raised on an xdist worker is an INTERNALERROR per worker; instead
        # the worker runs nothing and the controller reports the error once.
        config.stash[_RELAY_KEY].usage_error = str(exc)
        config.hook.pytest_deselected(items=list(items))
        items.clear()


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash[SETTINGS_KEY]
    local = config.stash.get(_LOCAL_KEY, None)
    server = local.server if local is not None else None
    if server is not None:
        where = f"endpoint {endpoint.endpoint_label()}"
    else:
        url = endpoint.display_url(endpoint.resolved_base_url())
        where = f"endpoint {url}" + (f", model override {settings.model}" if settings.model else "")
    return [f"llmexp: {where}, database {settings.db_path}", *header_lines(settings, server)]


@pytest.fixture
def _llmexp_execution(request: pytest.FixtureRequest) -> int:
    """The execution index of an experiment item (set by ``@experiment``)."""
    return int(request.param)


@pytest.fixture
def llm_run(request: pytest.FixtureRequest) -> RunContext:
    """The current experiment run: ``run_id``, ``experiment``, ``execution_index``,
    ``num_executions``, and ``set_metadata(key, value)`` to attach JSON-safe data to the run.
    """
    current = recording.current_run()
    if current is None:
        pytest.fail(
            f"{request.node.nodeid}: the llm_run fixture belongs to experiments; decorate the "
            "test with @experiment(...) or @pytest.mark.experiment(...)",
            pytrace=False,
        )
    return current
