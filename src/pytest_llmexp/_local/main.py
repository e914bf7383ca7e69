"""The local model server process: llama-cpp-python's OpenAI-compatible app on a given socket.

Started by :class:`pytest_llmexp._local.server.LocalServer`, never by hand. It serves on the
listening socket it inherits (``--fd``) and exits as soon as its lifeline (``--lifeline``, the
read end of a pipe whose write end only the starting process holds) reports end of file:
when that process stops it, or dies without a chance to.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
from typing import Any


def _watch_lifeline(fd: int) -> None:
    while os.read(fd, 1):
        pass
    os._exit(0)


GEMMA3 = "pytest-llmexp-gemma3"


def _register_gemma3() -> None:
    """Gemma 3's chat template, for GGUF files that do not carry one (the embedded model's).

    llama-cpp-python's own "gemma" format drops the system prompt; Gemma 3's template puts it
    at the start of the first user turn, and so does this one.
    """
    from llama_cpp.llama_chat_format import ChatFormatterResponse, register_chat_format

    @register_chat_format(GEMMA3)  # type: ignore[untyped-decorator]
    def _format(messages: list[dict[str, Any]], **_: Any) -> ChatFormatterResponse:
        turns = list(messages)
        prefix = ""
        if turns and turns[0]["role"] == "system":
            prefix = f"{turns.pop(0).get('content') or ''}\n\n"
        prompt = []
        for message in turns:
            role = "model" if message["role"] == "assistant" else "user"
            content = message.get("content") or ""
            if prefix and role == "user":
                content, prefix = prefix + content, ""
            prompt.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
        prompt.append("<start_of_turn>model\n")
        return ChatFormatterResponse(prompt="".join(prompt), stop="<end_of_turn>")


def _settings_from_environment() -> None:
    """Drop environment variables that llama-cpp-python's settings would read (API_KEY,
    CONFIG_FILE, MODEL, ...): this server is configured by its arguments only."""
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    names = {"config_file", *ModelSettings.model_fields, *ServerSettings.model_fields}
    for name in list(os.environ):
        if name.lower() in names:
            del os.environ[name]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pytest_llmexp._local.main")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--lifeline", type=int, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--alias", required=True)
    parser.add_argument("--n-ctx", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--chat-format", help="a llama-cpp-python chat format, or " + GEMMA3)
    args = parser.parse_args(argv)
    threading.Thread(target=_watch_lifeline, args=(args.lifeline,), daemon=True).start()

    _settings_from_environment()
    _register_gemma3()
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    app = create_app(
        server_settings=ServerSettings(host="127.0.0.1", port=0),
        model_settings=[
            ModelSettings(
                model=args.model,
                model_alias=args.alias,
                n_ctx=args.n_ctx,
                n_threads=args.threads,
                n_threads_batch=args.threads,
                chat_format=args.chat_format,
                verbose=False,
            )
        ],
    )
    listener = socket.socket(fileno=args.fd)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[listener])


if __name__ == "__main__":
    main()
