"""The pytest entry point (``-p llmexp``): hook functions only; state lives in plugin objects.

Nothing heavy is imported here: this module loads in every pytest session of the
environment, experiments or not.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import pytest

from ._plugin import wiring
from ._plugin.collect import MARKER_HELP
from ._plugin.keys import (
    BOTS_MODULE,
    LOCAL_KEY,
    RELAY_KEY,
    SETTINGS_KEY,
    STARTED_KEY,
    WHO_KEY,
    WORKERINPUT_SESSION,
    WRITER_KEY,
)
from ._plugin.options import add_options
from ._plugin.settings import build_settings

if TYPE_CHECKING:
    from ._run.recording import RunContext


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = build_settings(config)
    config.stash[SETTINGS_KEY] = settings
    from ._run import process

    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is None:
        from ._util.clock import utcnow
        from ._util.ids import new_id

        # Known before the database is opened: workers name their spool files with it.
        config.stash[WHO_KEY] = (new_id(), "main")
        config.stash[STARTED_KEY] = utcnow()
    else:
        config.stash[WHO_KEY] = (workerinput[WORKERINPUT_SESSION], workerinput["workerid"])
    process.setup(wiring.process_settings(config, workerinput))
    wiring.lend_endpoint(config)
    if workerinput is None:
        if wiring.distributes(config):
            from ._plugin.intake import ReportHooks

            # The controller sees no items; runs arrive from the workers' reports.
            writer = wiring.make_writer(config)
            config.pluginmanager.register(ReportHooks(writer.intake), "llmexp-reports")
        elif (
            settings.cli_gates or settings.report_json or settings.report_md or settings.report_html
        ):
            # A command-line gate or a report: the session's end has work even without
            # experiments (a gate that gated nothing fails; reports are written).
            wiring.make_writer(config)
    if process.PROCESS.settings.cache != process.CacheSettings():
        # Record or replay: set up now, so that no call of this process can reach the
        # endpoint unreplayed.
        wiring.make_relay(config)


def pytest_unconfigure(config: pytest.Config) -> None:
    local = config.stash.get(LOCAL_KEY, None)
    if local is not None:
        local.stop()
    relay = config.stash.get(RELAY_KEY, None)
    if relay is not None:
        relay.spool.close()
    writer = config.stash.get(WRITER_KEY, None)
    if writer is not None:
        writer.close()
    for name in (
        "llmexp-relay",
        "llmexp-inflight",
        "llmexp-reports",
        "llmexp-writer",
        "llmexp-xdist",
        "llmexp-local",
        "llmexp-local-xdist",
    ):
        plugin = config.pluginmanager.get_plugin(name)
        if plugin is not None:
            config.pluginmanager.unregister(plugin)
    from ._run import process

    process.teardown()
    wiring.restore_environment(config)
    capture = sys.modules.get("pytest_llmexp._run.capture")
    if capture is not None:
        capture.uninstall()
    recording = sys.modules.get("pytest_llmexp._run.recording")
    if recording is not None:
        recording.stop_following_threads()


@pytest.hookimpl(trylast=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("experiment") is None:
        return  # called for every test function of every session: the common case first
    from ._plugin.collect import generate_executions

    settings = metafunc.config.stash[SETTINGS_KEY]
    generate_executions(metafunc, settings.num_executions, settings.sweep)


# Last, to see what other plugins kept (-k, --lf) in the order they left it (randomly).
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from ._plugin.collect import check_cli_gates, order_adaptive, select_experiments

    settings = config.stash[SETTINGS_KEY]
    try:
        select_experiments(
            config,
            items,
            settings.experiments,
            settings.num_executions,
            settings.sweep,
            settings.adaptive,
        )
        check_cli_gates(items, settings.cli_gates)
        order_adaptive(items)
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
    relay = config.stash.get(RELAY_KEY, None)
    worker = hasattr(config, "workerinput")
    if relay is None and worker:
        # A worker's calls outside runs, made after a lazy import of the bots, still travel.
        relay = wiring.make_relay(config)
    if relay is not None:
        relay.finish(session)
    if (
        not worker
        and WRITER_KEY not in config.stash
        and BOTS_MODULE in sys.modules
        and not config.stash[SETTINGS_KEY].dry_run
    ):
        # The bots were imported by a test itself: calls it made outside any run are stored
        # by a writer made now (registered too late for this hook, so called here).
        wiring.make_writer(config).pytest_sessionfinish(session, exitstatus)


def pytest_report_header(config: pytest.Config) -> list[str]:
    from ._plugin.localmodel import header_lines
    from ._run import endpoint
    from ._util.redact import display_url

    settings = config.stash[SETTINGS_KEY]
    local = config.stash.get(LOCAL_KEY, None)
    server = local.server if local is not None else None
    if server is not None:
        where = f"endpoint {endpoint.endpoint_label()}"
    else:
        url = display_url(endpoint.resolved_base_url())
        where = f"endpoint {url}" + (f", model override {settings.model}" if settings.model else "")
    return [f"llmexp: {where}, database {settings.db_path}", *header_lines(settings, server)]


@pytest.fixture
def _llmexp_execution(request: pytest.FixtureRequest) -> int:
    """The execution index of an experiment item (set by ``@experiment``)."""
    return int(request.param)


@pytest.fixture
def _llmexp_variant(request: pytest.FixtureRequest) -> int:
    """Which variant of the command line an experiment item runs (``--llm-model A ...``)."""
    return int(request.param)


@pytest.fixture
def llm_run(request: pytest.FixtureRequest) -> RunContext:
    """The current experiment run: ``run_id``, ``experiment``, ``execution_index``,
    ``num_executions``, ``case_id``, ``variant``, and ``set_metadata(key, value)`` to attach
    JSON-safe data to the run.
    """
    from ._run.recording import current_run

    current = current_run()
    if current is None:
        pytest.fail(
            f"{request.node.nodeid}: the llm_run fixture belongs to experiments; decorate the "
            "test with @experiment(...) or @pytest.mark.experiment(...)",
            pytrace=False,
        )
    return current
