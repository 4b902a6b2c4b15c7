"""The running gateway: the application core behind HTTP/3 (UDP) and HTTP/1.1 + HTTP/2 (TLS/TCP)
on the same port number.

In-process use (tests, experiments)::

    async with Gateway(config) as gw:        # port 0 in the config: an ephemeral port
        print(gw.url, gw.port, gw.cafile)    # https://127.0.0.1:PORT, verify clients with cafile
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig

from quicgw.config import Config
from quicgw.dashboard.admin import AdminServer
from quicgw.gateway.app import GatewayApp
from quicgw.gateway.asgi import AsgiAdapter
from quicgw.gateway.h3server import H3Server, serve_h3, server_configuration
from quicgw.metrics import connection_factory
from quicgw.tls import CertificateFiles, dev_certificate

log = logging.getLogger("quicgw.gateway")

_BIND_ATTEMPTS = 64


UDP_BUFFER_BYTES = 8 << 20


def set_udp_buffers(sock: socket.socket, size: int = UDP_BUFFER_BYTES) -> int:
    """Ask for large UDP socket buffers; returns the receive buffer the kernel granted.

    Every QUIC connection of the gateway arrives on one UDP socket: with the kernel's default
    receive buffer (~208 KB) a burst that lands while the event loop is busy overflows it, the
    datagrams are dropped, and the clients wait for loss recovery (seconds of tail latency, seen
    at 1,000 streams). As root, SO_RCVBUFFORCE goes past ``net.core.rmem_max``.
    """
    for force, normal in ((getattr(socket, "SO_RCVBUFFORCE", None), socket.SO_RCVBUF),
                          (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF)):
        for option in (force, normal):
            if option is None:
                continue
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
                break
            except OSError:
                continue
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def bind_udp_tcp(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a listening-ready TCP socket bound to the same port number.

    With ``port`` 0 the kernel picks the TCP port and the UDP socket takes the same number,
    retrying when that UDP port happens to be taken.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    last_error: OSError | None = None
    for _ in range(_BIND_ATTEMPTS if port == 0 else 1):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if family == socket.AF_INET6:
                for s in (tcp, udp):
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            tcp.bind(address)
            udp.bind((address[0], tcp.getsockname()[1], *address[2:]))
            tcp.listen(1024)
            tcp.setblocking(False)
            udp.setblocking(False)
            set_udp_buffers(udp)
            return udp, tcp
        except OSError as e:
            tcp.close()
            udp.close()
            last_error = e
    raise OSError(f"cannot bind UDP and TCP on {host}:{port}: {last_error}")


class Gateway:
    """The gateway serving ``config`` until :meth:`stop` (or the ``async with`` block ends)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.app: GatewayApp | None = None
        self.h3: H3Server | None = None
        self.port: int | None = None
        self.host = config.gateway.host
        self.certificate: CertificateFiles | None = None
        self._tcp_task: asyncio.Task | None = None
        self.admin: AdminServer | None = None  # the plain-HTTP admin port, if configured
        self._stopping = asyncio.Event()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    @property
    def cafile(self) -> str | None:
        """The CA that signed the server certificate (None for an operator-supplied one)."""
        return self.certificate.cafile if self.certificate else None

    def _certificate(self) -> CertificateFiles:
        gw = self.config.gateway
        if gw.certfile and gw.keyfile:
            return CertificateFiles(gw.certfile, gw.keyfile)
        if gw.certfile or gw.keyfile:
            raise ValueError("gateway: give both certfile and keyfile, or neither")
        return dev_certificate()

    async def start(self) -> None:
        gw = self.config.gateway
        self.certificate = self._certificate()
        self.app = GatewayApp(self.config)
        udp, tcp = bind_udp_tcp(gw.host, gw.port)
        self.port = tcp.getsockname()[1]
        try:
            quic_config = server_configuration(self.certificate.certfile,
                                               self.certificate.keyfile,
                                               congestion_control=gw.congestion_control)
            self.h3 = await serve_h3(self.app, gw.host, self.port, quic_config,
                                     scheduler=gw.scheduler,
                                     max_streams=gw.max_streams_per_connection, sock=udp)
            # QUIC connections that count bytes per class and losses for /metrics.
            self.h3.connection_factory = connection_factory(self.app.metrics)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        hc = HypercornConfig()
        hc.bind = [f"fd://{tcp.detach()}"]  # hypercorn's socket object owns the fd from here
        hc.certfile = self.certificate.certfile
        hc.keyfile = self.certificate.keyfile
        hc.errorlog = logging.getLogger("quicgw.gateway.tcp")
        hc.accesslog = None
        hc.graceful_timeout = gw.shutdown_grace_s
        hc.h2_max_concurrent_streams = gw.max_streams_per_connection
        self._tcp_task = asyncio.get_running_loop().create_task(hypercorn_serve(
            AsgiAdapter(self.app, self.port), hc, shutdown_trigger=self._stopping.wait,
            mode="asgi"))
        await self.app.start()
        if gw.admin_port is not None:
            self.admin = AdminServer(self.app.ops, gw.admin_host or gw.host, gw.admin_port)
            await self.admin.start()
        log.info("gateway listening on %s (HTTP/3 on UDP, HTTP/1.1 + HTTP/2 on TCP), "
                 "scheduler=%s router=%s", self.url, gw.scheduler, gw.router)

    async def stop(self) -> None:
        self._stopping.set()
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        if self.app is not None:
            self.app.draining = True
        h3, self.h3 = self.h3, None  # a second stop() meanwhile does not touch it again
        if h3 is not None:
            # HTTP/3: GOAWAY, drain within the grace period, close. hypercorn drains TCP at
            # the same time (its graceful_timeout is the same grace period).
            try:
                await h3.shutdown(self.config.gateway.shutdown_grace_s)
            except Exception:
                log.exception("HTTP/3 graceful shutdown failed; closing")
            finally:
                h3.close()
        if self._tcp_task is not None:
            try:
                await asyncio.wait_for(self._tcp_task, self.config.gateway.shutdown_grace_s + 5)
            except (TimeoutError, asyncio.CancelledError):
                self._tcp_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._tcp_task
            except Exception:
                log.exception("TLS/TCP listener ended with an error")
            self._tcp_task = None
        if self.app is not None:
            await self.app.aclose()
            self.app = None

    async def __aenter__(self) -> Gateway:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()
