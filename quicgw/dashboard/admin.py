"""The optional plain-HTTP admin listener (``gateway.admin_port``): ``/metrics`` and the
dashboard for Prometheus and operators on a private network, without TLS and without the
public listeners. Served by hypercorn (HTTP/1.1) on a socket bound here, so port 0 works and
:attr:`AdminServer.port` says which port was taken."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from quicgw.dashboard.routes import OpsRoutes
from quicgw.gateway.http import serve_lifespan

log = logging.getLogger("quicgw.admin")


class AdminAsgi:
    """ASGI 3 application answering the operator endpoints (GET and HEAD only)."""

    def __init__(self, routes: OpsRoutes) -> None:
        self.routes = routes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            return await serve_lifespan(receive, send)
        if scope["type"] != "http":
            return
        endpoint = self.routes.endpoints.get(scope["path"])
        if endpoint is None:
            status, headers, body = 404, [(b"content-type", b"text/plain")], (
                f"no such endpoint: {scope['path']} (try /metrics or /dashboard)".encode())
        elif scope["method"] not in ("GET", "HEAD"):
            status, headers, body = 405, [(b"allow", b"GET")], b"GET only\n"
        else:
            page = await self.routes.get(endpoint)
            status, headers, body = page.status, page.headers, page.body
        if scope["method"] == "HEAD":
            body = b""
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body, "more_body": False})


class AdminServer:
    """``await AdminServer(routes, host, port).start()`` ... ``await server.stop()``."""

    def __init__(self, routes: OpsRoutes, host: str, port: int) -> None:
        self.routes = routes
        self.host = host
        self.port = port
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise OSError(f"admin port: cannot listen on {self.host}:{self.port}: {e}") from e
        self.port = sock.getsockname()[1]
        config = HypercornConfig()
        config.bind = [f"fd://{sock.detach()}"]
        config.accesslog = None
        config.errorlog = log
        config.graceful_timeout = 1.0
        self._task = asyncio.get_running_loop().create_task(hypercorn_serve(
            AdminAsgi(self.routes), config, shutdown_trigger=self._stopping.wait, mode="asgi"))
        log.info("admin endpoints (/metrics, /dashboard) on %s", self.url)

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5.0)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                with contextlib.suppress(BaseException):
                    await self._task
            self._task = None
