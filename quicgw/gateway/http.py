"""Transport-independent HTTP messages of the gateway's application core.

The HTTP/3 server and the ASGI adapter (HTTP/1.1 and HTTP/2 over TLS/TCP) both turn their
protocol's events into these and feed one :class:`~quicgw.gateway.app.GatewayApp`; the core
answers through a :class:`Responder` the transport implements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
SSE = b"text/event-stream"


class HTTPError(Exception):
    """A request the gateway refuses: becomes an OpenAI-style JSON error response."""

    def __init__(self, status: int, message: str, code: str, *,
                 headers: Headers | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or []

    def response(self) -> Response:
        return error_response(self.status, self.message, self.code, self.headers)


@dataclass(slots=True)
class Response:
    """A complete (non-streamed) response."""

    status: int
    headers: Headers
    body: bytes


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "invalid_request_error",
                429: "rate_limit_error"}


def error_body(status: int, message: str, code: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return json.dumps(
        {"error": {"message": message, "type": kind, "code": code, "status": status}}).encode()


def error_response(status: int, message: str, code: str, headers: Headers | None = None) -> Response:
    return Response(status, [(b"content-type", JSON), *(headers or [])],
                    error_body(status, message, code))


def json_response(status: int, obj: object, headers: Headers | None = None) -> Response:
    return Response(status, [(b"content-type", JSON), *(headers or [])], json.dumps(obj).encode())


class Responder(Protocol):
    """How the core answers one request; each transport implements it.

    Either :meth:`respond` once, or :meth:`start`, any number of :meth:`write`, then
    :meth:`finish`.
    """

    async def respond(self, status: int, headers: Headers, body: bytes) -> None: ...

    async def start(self, status: int, headers: Headers) -> None: ...

    async def write(self, data: bytes) -> None: ...

    async def finish(self) -> None: ...


async def serve_lifespan(receive, send) -> None:
    """Answer an ASGI lifespan scope: nothing to set up or tear down beyond acknowledging."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
