"""A stand-in for the llama.cpp server process, for LocalServer's lifecycle tests.

Run as ``python fake_llama_server.py MODE FD LIFELINE``, as LocalServer runs a custom command:
``serve`` answers GET /v1/models on the inherited socket, ``hang`` never answers, ``exit``
prints a line and exits with status 3. Every mode watches its lifeline as the real one does.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from pytest_llmexp._local.main import _watch_lifeline


class Models(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"object": "list", "data": [{"id": "fake.gguf", "object": "model"}]}'
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    mode, fd, lifeline = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True).start()
    if mode == "exit":
        print("boom: no model here", flush=True)
        sys.exit(3)
    if mode == "hang":
        time.sleep(3600)
    server = HTTPServer(("127.0.0.1", 0), Models, bind_and_activate=False)
    server.socket.close()
    server.socket = socket.socket(fileno=fd)
    server.serve_forever()


if __name__ == "__main__":
    main()
