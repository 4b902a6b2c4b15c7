"""The TLS/TCP shell: an ASGI adapter of the same application core, served by hypercorn over
HTTP/1.1 and HTTP/2. It adds ``alt-svc: h3=":PORT"`` to every response so clients upgrade to
HTTP/3 on the same port number."""

from __future__ import annotations

import asyncio
import logging

from quicgw.gateway.app import GatewayApp
from quicgw.gateway.http import Headers, error_response, serve_lifespan

log = logging.getLogger("quicgw.gateway.tcp")



class _AsgiResponder:
    __slots__ = ("send", "extra", "started")

    def __init__(self, send, extra: Headers) -> None:
        self.send = send
        self.extra = extra
        self.started = False

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": status,
                         "headers": [*headers, *self.extra,
                                     (b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def start(self, status: int, headers: Headers) -> None:
        self.started = True
        await self.send({"type": "http.response.start", "status": status,
                         "headers": [*headers, *self.extra]})

    async def write(self, data: bytes) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    async def finish(self) -> None:
        await self.send({"type": "http.response.body", "body": b"", "more_body": False})


class AsgiAdapter:
    """``AsgiAdapter(app, h3_port)`` is an ASGI 3 application."""

    def __init__(self, app: GatewayApp, h3_port: int | None) -> None:
        self.app = app
        self.extra: Headers = (
            [(b"alt-svc", f'h3=":{h3_port}"; ma=86400'.encode())] if h3_port else [])

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            return await serve_lifespan(receive, send)
        if kind != "http":
            return
        headers: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in headers:
                headers[name] += b", " + value
            else:
                headers[name] = value
        path = scope["path"]
        out = _AsgiResponder(send, self.extra)
        ex = self.app.open(scope["method"], path, headers)
        self.app.metrics.http_request(
            "h2" if scope.get("http_version") == "2" else "http/1.1", ex.endpoint)
        if ex.error is not None:
            await out.respond(ex.error.status, ex.error.headers, ex.error.body)
            return
        limit = self.app.max_body_bytes
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._too_large(out, limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(out, limit)
                return
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        # hypercorn does not cancel the application when the client goes away; it reports
        # http.disconnect on receive(). Watch for it so the upstream request is cancelled and
        # its admission slot freed, as on HTTP/3 when a stream is reset.
        handler = asyncio.ensure_future(self.app.handle(ex, b"".join(chunks), out))
        watcher = asyncio.ensure_future(receive())
        try:
            await asyncio.wait((handler, watcher), return_when=asyncio.FIRST_COMPLETED)
            if not handler.done():
                handler.cancel()
            await handler
        except asyncio.CancelledError:
            if not handler.done():  # we are cancelled: take the handler with us
                handler.cancel()
                raise
        except Exception:
            log.exception("request %s failed", path)
            if not out.started:
                r = error_response(500, "internal gateway error", "internal_error")
                await out.respond(r.status, r.headers, r.body)
            else:
                raise
        finally:
            watcher.cancel()

    @staticmethod
    async def _too_large(out: _AsgiResponder, limit: int) -> None:
        r = error_response(413, f"request body over the limit of {limit} bytes", "body_too_large")
        await out.respond(r.status, r.headers, r.body)
