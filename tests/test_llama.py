"""LocalServer's lifecycle, with a stand-in server process (no model, no llama.cpp needed)."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from procs import alive, linux_only
from pytest_llmexp import LocalModelError, LocalServer
from pytest_llmexp._local import server as llama
from pytest_llmexp._local.server import LocalModel

FAKE = str(Path(__file__).with_name("fake_llama_server.py"))
MODEL = LocalModel(file_name="fake.gguf", sha256="0" * 64)


def fake_server(mode: str, **kwargs: float) -> LocalServer:
    return LocalServer(command=[sys.executable, FAKE, mode], model=MODEL, **kwargs)


def wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def get_models(port: int) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/v1/models")
        return connection.getresponse().status
    finally:
        connection.close()


pytestmark = linux_only


def test_port_is_reserved_but_refuses_calls_until_started() -> None:
    server = fake_server("serve")
    try:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        assert server.pid is None
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", server.port), timeout=5)
        assert time.monotonic() - started < 1, "a call before start fails at once"
    finally:
        server.stop()


def test_start_serves_and_stop_ends_the_process() -> None:
    with fake_server("serve") as server:
        pid = server.pid
        assert pid is not None and alive(pid)
        assert get_models(server.port) == 200
        server.start()  # a second start is a no-op
        assert server.pid == pid
        settings = server.client_settings(timeout=7, max_retries=1)
        assert settings.base_url == server.base_url and settings.model == "fake.gguf"
        assert settings.model_sha256 == "0" * 64 and settings.label == llama.LABEL
        assert settings.structured_output == "json_object"
        assert (settings.timeout, settings.max_retries) == (7, 1)
    assert server.pid is None and not alive(pid)
    server.stop()  # stopping twice is harmless
    with pytest.raises(LocalModelError, match="was stopped; make a new LocalServer"):
        server.start()


def test_a_server_that_never_answers_is_an_error_after_the_timeout() -> None:
    server = fake_server("hang", startup_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(LocalModelError, match=r"did not answer within 1 s"):
        server.start()
    assert time.monotonic() - started < 5
    assert server.pid is None


def test_a_server_that_exits_is_an_error_with_its_output() -> None:
    server = fake_server("exit")
    with pytest.raises(LocalModelError, match=r"exited with status 3") as info:
        server.start()
    assert "boom: no model here" in str(info.value)


def test_the_server_exits_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from pytest_llmexp._local.server import LocalModel, LocalServer
            server = LocalServer(command=[sys.executable, {FAKE!r}, "serve"],
                                 model=LocalModel("fake.gguf", "0" * 64))
            server.start()
            print(server.pid, flush=True)
            time.sleep(60)
            """
        )
    )
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        assert alive(pid)
        os.kill(owner.pid, signal.SIGKILL)  # no chance to stop the server itself
        owner.wait(timeout=10)
        assert wait_gone(pid), f"server {pid} outlived the process that started it"
    finally:
        owner.kill()
        owner.wait()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="startup_timeout must be > 0"):
        LocalServer(startup_timeout=0, command=["x"], model=MODEL)
    with pytest.raises(ValueError, match="a custom command needs the model it serves"):
        LocalServer(command=["x"])


def test_the_thread_count_comes_from_the_argument_the_environment_or_the_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LLMEXP_LOCAL_THREADS", raising=False)
    for env, argument, expected in [
        (None, None, os.cpu_count()),
        ("", None, os.cpu_count()),
        (" 3 ", None, 3),
        ("3", 2, 2),
    ]:
        if env is not None:
            monkeypatch.setenv("LLMEXP_LOCAL_THREADS", env)
        server = LocalServer(command=["x"], model=MODEL, threads=argument)
        try:
            assert server.threads == expected
            # What llama.cpp is started with.
            assert f"--threads={expected}" in server._argv(5, 6, Path("model.gguf"))
        finally:
            server.stop()


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "2 3", "²"])
def test_a_bad_thread_count_in_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LLMEXP_LOCAL_THREADS", value)
    message = f"LLMEXP_LOCAL_THREADS: expected a whole number of threads, 1 or more, got {value!r}"
    with pytest.raises(ValueError, match=re.escape(message)):
        LocalServer(command=["x"], model=MODEL)


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "2"])
def test_a_bad_thread_count_argument_is_refused(value: object) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"threads must be a whole number, 1 or more, got {value!r}")
    ):
        LocalServer(command=["x"], model=MODEL, threads=value)  # type: ignore[arg-type]


def test_missing_packages_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llama, "REQUIRED", {"no_such_module_xyz": "llama-cpp-python"})
    assert llama.missing_packages() == ["llama-cpp-python"]
    message = (
        r'needs llama-cpp-python, which is not installed: pip install "pytest-llmexp\[local\]"'
    )
    with pytest.raises(LocalModelError, match=message):
        llama.local_model()
    with pytest.raises(LocalModelError, match=message):
        LocalServer()


def test_cache_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLMEXP_CACHE_DIR", str(tmp_path / "explicit"))
    assert llama.cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("LLMEXP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert llama.cache_dir() == tmp_path / "xdg" / "pytest-llmexp"
