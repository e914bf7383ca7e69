"""The pytest entry point (``-p llmexp``): hook functions only; state lives in plugin objects.

Nothing heavy is imported here: this module loads in every pytest session of the
environment, experiments or not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from . import endpoint, recording
from .collect import MARKER_HELP, generate_executions, select_experiments
from .relay import RunRelay
from .settings import SETTINGS_KEY, add_options, build_settings
from .writer import Writer, XdistHooks

if TYPE_CHECKING:
    from .recording import RunContext

_RELAY_KEY = pytest.StashKey[RunRelay]()
_WRITER_KEY = pytest.StashKey[Writer]()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_HELP)
    settings = build_settings(config)
    config.stash[SETTINGS_KEY] = settings
    endpoint.configure(
        endpoint.ClientSettings(
            base_url=settings.base_url,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
            model=settings.model,
        )
    )
    # Calls outside any run travel on reports to the writer instead of being written here.
    recording.set_orphan_writer(None)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    worker = workerinput["workerid"] if workerinput else "main"
    relay = RunRelay(worker)
    config.stash[_RELAY_KEY] = relay
    config.pluginmanager.register(relay, "llmexp-relay")
    if workerinput is None:
        writer = Writer(config, settings, recording.utcnow())
        config.stash[_WRITER_KEY] = writer
        config.pluginmanager.register(writer, "llmexp-writer")
        if config.pluginmanager.hasplugin("xdist"):
            config.pluginmanager.register(XdistHooks(writer), "llmexp-xdist")


def pytest_unconfigure(config: pytest.Config) -> None:
    writer = config.stash.get(_WRITER_KEY, None)
    if writer is not None:
        writer.close()
    for name in ("llmexp-relay", "llmexp-writer", "llmexp-xdist"):
        plugin = config.pluginmanager.get_plugin(name)
        if plugin is not None:
            config.pluginmanager.unregister(plugin)
    endpoint.configure(endpoint.ClientSettings())
    recording.set_orphan_writer(recording.default_orphan_writer)


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


def pytest_report_header(config: pytest.Config) -> str:
    settings = config.stash[SETTINGS_KEY]
    url = endpoint.display_url(endpoint.resolved_base_url())
    model = f", model override {settings.model}" if settings.model else ""
    return f"llmexp: endpoint {url}{model}, database {settings.db_path}"


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
