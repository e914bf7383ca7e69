"""A request's whole wall time bounded, not only each read: the ``openai`` client's HTTP
transport, wrapped.

``httpx`` applies a timeout to each read from the socket, so an endpoint that keeps sending
a byte now and then (a slow proxy, an overloaded server streaming a reply) is never timed
out. The client's documented extension point is its ``http_client``: this module gives it
one whose transport stops reading a reply once the request is older than its timeout,
raising ``httpx``'s ``ReadTimeout``, which the client turns into ``APITimeoutError``.

The status line and headers are read by the transport itself: a stall there is caught by the
per-read timeout, and the deadline applies from the first byte of the body on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

__all__ = ["bounded_http_client"]


def bounded_http_client(module: Any, seconds: float) -> Any:
    """An ``http_client`` for ``module.OpenAI`` (the ``openai`` package) whose requests last
    at most ``seconds`` each, read by read and as a whole."""
    base: type = module.DefaultHttpxClient
    # openai 1.x and 2.x are built on httpx; later releases on httpx2, its successor.
    httpx = sys.modules[
        next(c for c in base.__mro__[1:] if c.__name__ == "Client").__module__.partition(".")[0]
    ]
    # The client's own connection limits: a transport given to it is used as it is.
    limits = getattr(module, "DEFAULT_CONNECTION_LIMITS", None)
    inner = httpx.HTTPTransport(**({"limits": limits} if limits is not None else {}))
    return base(transport=_transport_class(httpx)(inner, seconds))


def _transport_class(httpx: Any) -> type:
    class DeadlineStream(httpx.SyncByteStream):  # type: ignore[misc]
        def __init__(self, inner: Any, deadline: float, seconds: float, request: Any) -> None:
            self.inner = inner
            self.deadline = deadline
            self.seconds = seconds
            self.request = request

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self.inner:
                if time.monotonic() > self.deadline:
                    raise httpx.ReadTimeout(
                        f"the reply was still arriving after {self.seconds:g} s",
                        request=self.request,
                    )
                yield chunk

        def close(self) -> None:
            self.inner.close()

    class DeadlineTransport(httpx.BaseTransport):  # type: ignore[misc]
        def __init__(self, inner: Any, seconds: float) -> None:
            self.inner = inner
            self.seconds = seconds

        def handle_request(self, request: Any) -> Any:
            # The request's own timeout (a bot's ``timeout=``), else the client's.
            seconds = (request.extensions.get("timeout") or {}).get("read") or self.seconds
            deadline = time.monotonic() + seconds
            response = self.inner.handle_request(request)
            response.stream = DeadlineStream(response.stream, deadline, seconds, request)
            return response

        def close(self) -> None:
            self.inner.close()

    return DeadlineTransport
