"""The process-wide settings: one value, set up and torn down together."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_llmexp._run import cache, endpoint, process
from pytest_llmexp._run.process import PROCESS, CacheSettings, ClientSettings, ProcessSettings
from pytest_llmexp._run.recording import clip_messages


@pytest.fixture(autouse=True)
def _outer_settings() -> Iterator[None]:
    """This session's own plugin set the process up: put its settings back afterwards."""
    outer = PROCESS.settings
    yield
    process.setup(outer)


class Closing:
    closed = 0

    def close(self) -> None:
        self.closed += 1


def test_setup_installs_all_four_and_teardown_puts_every_default_back(tmp_path: Path) -> None:
    process.setup(
        ProcessSettings(
            endpoint=ClientSettings(base_url="http://127.0.0.1:9/v1", model="m"),
            cache=CacheSettings(mode="replay", cassette=tmp_path / "c.db"),
            storage_limit=5,
            buffer_orphans=True,
        )
    )
    assert endpoint.settings().model == "m"
    assert endpoint.resolved_base_url() == "http://127.0.0.1:9/v1"
    assert PROCESS.settings.cache.mode == "replay"
    assert clip_messages([{"role": "user", "content": "0123456789"}]) == (
        [{"role": "user", "content": "01234"}],
        True,
    )
    endpoint.remember_json_object()
    assert endpoint.structured_output() == "json_object"
    cassette = Closing()
    PROCESS.cassette = cassette

    process.teardown()

    assert PROCESS.settings == ProcessSettings()
    assert endpoint.settings() == ClientSettings()
    assert PROCESS.json_object_endpoints == set()
    assert cassette.closed == 1 and PROCESS.cassette is None
    long = "x" * (ProcessSettings().storage_limit + 1)
    assert clip_messages([{"content": long}])[1] is True
    assert clip_messages([{"content": long[:-1]}])[1] is False


def test_changing_one_part_keeps_what_the_others_learnt(tmp_path: Path) -> None:
    process.setup(ProcessSettings(endpoint=ClientSettings(base_url="http://127.0.0.1:9/v1")))
    endpoint.remember_json_object()
    cassette = Closing()
    PROCESS.cassette = cassette

    process.update(storage_limit=7)
    assert PROCESS.settings.storage_limit == 7
    assert PROCESS.json_object_endpoints and cassette.closed == 0

    cache.configure(CacheSettings(mode="record"))
    assert cassette.closed == 1 and PROCESS.json_object_endpoints
    assert PROCESS.settings.endpoint.base_url == "http://127.0.0.1:9/v1"

    endpoint.configure(ClientSettings(base_url="http://127.0.0.1:9/v1"))
    assert PROCESS.json_object_endpoints == set()
    assert PROCESS.settings.cache.mode == "record" and PROCESS.settings.storage_limit == 7


def test_the_public_endpoint_module_configures_the_same_settings() -> None:
    from pytest_llmexp import endpoint as public

    public.configure(public.ClientSettings(base_url="http://127.0.0.1:9/v1", timeout=3))
    assert PROCESS.settings.endpoint.timeout == 3
    assert public.settings() is PROCESS.settings.endpoint
