"""The pytest entry point (``-p llmexp``): hook functions only; state lives in plugin objects.

Nothing heavy is imported here: this module loads in every pytest session of the
environment, experiments or not.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pytest

from . import wiring
from .collect import MARKER_HELP
from .settings import SETTINGS_KEY, add_options, build_settings

if TYPE_CHECKING:
    from .recording import RunContext


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = build_settings(config)
    config.stash[SETTINGS_KEY] = settings
    from . import clipping, endpoint, recording

    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    client = endpoint.ClientSettings(
        base_url=settings.base_url,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
        model=settings.model,
    )
    if workerinput is not None:
        from .local import worker_client_settings

        client = worker_client_settings(workerinput) or client
    elif settings.local:
        client = wiring.start_local(config, client)
    endpoint.configure(client)
    # Calls outside any run travel on reports to the writer instead of being written here.
    recording.set_orphan_writer(None)
    clipping.set_storage_limit(settings.max_stored_chars)
    if workerinput is None:
        # Known before the database is opened: workers name their spool files with it.
        config.stash[wiring.WHO_KEY] = (recording.new_id(), "main")
        config.stash[wiring.STARTED_KEY] = recording.utcnow()
        if wiring.distributes(config):
            from .intake import ReportHooks

            # The controller sees no items; runs arrive from the workers' reports.
            writer = wiring.make_writer(config)
            config.pluginmanager.register(ReportHooks(writer.intake), "llmexp-reports")
        elif (
            settings.cli_gates or settings.report_json or settings.report_md or settings.report_html
        ):
            # A command-line gate or a report: the session's end has work even without
            # experiments (a gate that gated nothing fails; reports are written).
            wiring.make_writer(config)
    else:
        config.stash[wiring.WHO_KEY] = (workerinput["llmexp_session"], workerinput["workerid"])
    if settings.cache != "off" or settings.replay_from is not None:
        # Set up now, so that no call of this process can reach the endpoint unreplayed.
        wiring.make_relay(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    local = config.stash.get(wiring.LOCAL_KEY, None)
    if local is not None:
        local.stop()
    relay = config.stash.get(wiring.RELAY_KEY, None)
    if relay is not None:
        relay.spool.close()
    writer = config.stash.get(wiring.WRITER_KEY, None)
    if writer is not None:
        writer.close()
    for name in (
        "llmexp-relay",
        "llmexp-reports",
        "llmexp-writer",
        "llmexp-xdist",
        "llmexp-local",
        "llmexp-local-xdist",
    ):
        plugin = config.pluginmanager.get_plugin(name)
        if plugin is not None:
            config.pluginmanager.unregister(plugin)
    from . import clipping, endpoint, recording
    from .validation import DEFAULT_STORAGE_LIMIT

    endpoint.configure(endpoint.ClientSettings())
    if relay is not None:
        from . import cache

        cache.configure(cache.CacheSettings())
    recording.set_orphan_writer(recording.default_orphan_writer)
    clipping.set_storage_limit(DEFAULT_STORAGE_LIMIT)


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("experiment") is None:
        return  # called for every test function of every session: the common case first
    from .collect import generate_executions

    generate_executions(metafunc, metafunc.config.stash[SETTINGS_KEY].num_executions)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from .collect import select_experiments

    settings = config.stash[SETTINGS_KEY]
    try:
        select_experiments(config, items, settings.experiments, settings.num_executions)
    except pytest.UsageError as exc:
        if not hasattr(config, "workerinput"):
            raise
        # A usage error raised on an xdist worker is an INTERNALERROR per worker; instead
        # the worker runs nothing and the controller reports the error once.
        wiring.make_relay(config).usage_error = str(exc)
        config.hook.pytest_deselected(items=list(items))
        items.clear()
    wiring.register_run_hooks(config, items)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    relay = config.stash.get(wiring.RELAY_KEY, None)
    worker = hasattr(config, "workerinput")
    if relay is None and worker:
        # A worker's calls outside runs, made after a lazy import of the bots, still travel.
        relay = wiring.make_relay(config)
    if relay is not None:
        relay.finish(session)
    if not worker and wiring.WRITER_KEY not in config.stash and wiring.BOTS in sys.modules:
        # The bots were imported by a test itself: calls it made outside any run are stored
        # by a writer made now (registered too late for this hook, so called here).
        wiring.make_writer(config).pytest_sessionfinish(session, exitstatus)


def pytest_report_header(config: pytest.Config) -> list[str]:
    from . import endpoint
    from .local import header_lines

    settings = config.stash[SETTINGS_KEY]
    local = config.stash.get(wiring.LOCAL_KEY, None)
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
    from .recording import current_run

    current = current_run()
    if current is None:
        pytest.fail(
            f"{request.node.nodeid}: the llm_run fixture belongs to experiments; decorate the "
            "test with @experiment(...) or @pytest.mark.experiment(...)",
            pytrace=False,
        )
    return current
