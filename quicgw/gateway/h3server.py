"""The HTTP/3 shell: a UDP endpoint that owns QUIC connections and feeds the application core.

Why not ``aioquic.asyncio.serve``: its ``QuicServer`` constructs ``QuicConnection`` itself, with
no way to inject :class:`quicgw.scheduling.ScheduledQuicConnection` (the packet-level stream
scheduler), so this module is the small datagram endpoint that does what it does (connection
IDs, version negotiation, timers) with our connection class, and speaks HTTP/3 through
:class:`~quicgw.scheduling.h3.PriorityH3Connection` (aioquic's ``H3Connection`` plus RFC 9218
PRIORITY_UPDATE frames) directly, without asyncio stream adapters: one QUIC stream per request,
one task per request once its body is in.

The coupling to the scheduler: :meth:`ScheduledQuicConnection.set_stream_qos` as soon as a
request's headers are classified, and ``set_stream_priority`` for a PRIORITY_UPDATE, whose
urgency is clamped to the class's first (a client may lower its urgency, never raise it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

from aioquic.buffer import Buffer
from aioquic.h3.connection import H3_ALPN, ErrorCode
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_version_negotiation,
    pull_quic_header,
)

from quicgw.core.qos import Priority
from quicgw.gateway.app import Exchange, GatewayApp
from quicgw.gateway.classify import Classifier
from quicgw.gateway.http import Headers, error_response
from quicgw.scheduling import ScheduledQuicConnection
from quicgw.scheduling.h3 import PriorityH3Connection, PriorityUpdateReceived

log = logging.getLogger("quicgw.gateway.h3")

# Flow-control windows for the gateway side: large enough for many concurrent 100 KB uploads.
MAX_DATA = 16 << 20
MAX_STREAM_DATA = 1 << 20

_STATUS = {s: str(s).encode() for s in range(100, 600)}


def server_configuration(certfile: str, keyfile: str, *, idle_timeout: float = 60.0,
                         max_datagram_size: int | None = None) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=False, alpn_protocols=list(H3_ALPN), idle_timeout=idle_timeout,
        max_data=MAX_DATA, max_stream_data=MAX_STREAM_DATA)
    if max_datagram_size is not None:
        config.max_datagram_size = max_datagram_size
    config.load_cert_chain(certfile, keyfile)
    return config


def set_peer_stream_limit(quic: ScheduledQuicConnection, max_streams: int) -> None:
    """Let the peer open ``max_streams`` concurrent bidirectional streams (requests).

    aioquic hard-codes an initial limit of 128 and has no setting for it, so this sets its
    ``Limit`` before the handshake sends the transport parameters (aioquic 1.7 internals, the
    version pyproject pins). The limit is then raised by one per closed stream, as aioquic does.
    """
    limit = quic._local_max_streams_bidi
    limit.value = limit.sent = max_streams


class RequestStream:
    """One request on one QUIC stream; the :class:`~quicgw.gateway.http.Responder` of its
    exchange."""

    __slots__ = ("conn", "stream_id", "exchange", "chunks", "size", "task", "closed", "started")

    def __init__(self, conn: H3ServerConnection, stream_id: int, exchange: Exchange) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.exchange = exchange
        self.chunks: list[bytes] = []
        self.size = 0
        self.task: asyncio.Task | None = None
        self.closed = False  # the peer reset or stopped it, or we are done with its input
        self.started = False

    # -- input ---------------------------------------------------------------------------
    def on_data(self, data: bytes, ended: bool) -> None:
        if self.closed or self.task is not None:
            return
        self.size += len(data)
        if self.size > self.conn.app.max_body_bytes:
            self._refuse_body()
            return
        if data:
            self.chunks.append(data)
        if ended:
            self.dispatch()

    def _refuse_body(self) -> None:
        limit = self.conn.app.max_body_bytes
        r = error_response(413, f"request body over the limit of {limit} bytes",
                           "body_too_large")
        self._send_now(r.status, r.headers, r.body)
        self.stop_input()

    def stop_input(self) -> None:
        """We will not read the rest of the request (RFC 9114 section 4.1: STOP_SENDING with
        H3_NO_ERROR after a complete response)."""
        self.closed = True
        self.chunks.clear()
        try:
            self.conn.quic.stop_stream(self.stream_id, ErrorCode.H3_NO_ERROR)
        except ValueError:
            pass
        self.conn.forget(self.stream_id)

    def dispatch(self) -> None:
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        self.task = self.conn.loop.create_task(self._run(body))

    async def _run(self, body: bytes) -> None:
        try:
            await self.conn.app.handle(self.exchange, body, self)
        except asyncio.CancelledError:
            pass  # the peer reset the stream or the connection closed
        except Exception:
            log.exception("request on stream %d failed", self.stream_id)
            if self.closed:
                pass
            elif not self.started:
                r = error_response(500, "internal gateway error", "internal_error")
                self._send_now(r.status, r.headers, r.body)
            else:
                self.abort(ErrorCode.H3_INTERNAL_ERROR)
        finally:
            self.conn.forget(self.stream_id)

    def abort(self, code: int) -> None:
        if not self.closed:
            self.closed = True
            self.conn.quic.reset_stream(self.stream_id, code)
            self.conn.transmit_soon()

    def on_peer_abort(self) -> None:
        self.closed = True
        if self.task is not None:
            self.task.cancel()

    # -- Responder ---------------------------------------------------------------------------
    def _send_now(self, status: int, headers: Headers, body: bytes) -> None:
        if self.closed:
            return
        self.started = True
        h3 = self.conn.h3
        h3.send_headers(self.stream_id, [(b":status", _STATUS[status]), *headers,
                                         (b"content-length", str(len(body)).encode())],
                        end_stream=not body)
        if body:
            h3.send_data(self.stream_id, body, end_stream=True)
        self.conn.transmit_soon()

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        self._send_now(status, headers, body)

    async def start(self, status: int, headers: Headers) -> None:
        if self.closed:
            return
        self.started = True
        self.conn.h3.send_headers(self.stream_id, [(b":status", _STATUS[status]), *headers])
        self.conn.transmit_soon()

    async def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.conn.h3.send_data(self.stream_id, data, end_stream=False)
        self.conn.transmit_soon()

    async def finish(self) -> None:
        if self.closed:
            return
        self.conn.h3.send_data(self.stream_id, b"", end_stream=True)
        self.conn.transmit_soon()


class H3ServerConnection:
    """One QUIC connection: datagrams in, H3 events to request streams, datagrams out."""

    def __init__(self, server: H3Server, quic: ScheduledQuicConnection) -> None:
        self.server = server
        self.app = server.app
        self.loop = server.loop
        self.quic = quic
        # PRIORITY_UPDATEs are applied here, clamped per class, not by the H3 layer.
        self.h3 = PriorityH3Connection(quic, apply_to_scheduler=False)
        self.streams: dict[int, RequestStream] = {}
        self._early_priority: dict[int, Priority] = {}  # PRIORITY_UPDATE before the request
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self.terminated = False

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.quic.receive_datagram(data, addr, now=self.loop.time())
        self._process_events()
        self.transmit()

    def _process_events(self) -> None:
        quic = self.quic
        event = quic.next_event()
        while event is not None:
            kind = type(event)
            if kind is StreamDataReceived:
                for h3_event in self.h3.handle_event(event):
                    kind = type(h3_event)
                    if kind is DataReceived:
                        stream = self.streams.get(h3_event.stream_id)
                        if stream is not None:
                            stream.on_data(h3_event.data, h3_event.stream_ended)
                    elif kind is HeadersReceived:
                        self._on_headers(h3_event)
                    elif kind is PriorityUpdateReceived:
                        self._on_priority_update(h3_event)
            elif kind is StreamReset or kind is StopSendingReceived:
                self.h3.handle_event(event)
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.on_peer_abort()
            elif kind is ConnectionIdIssued:
                self.server.connections[event.connection_id] = self
            elif kind is ConnectionIdRetired:
                self.server.connections.pop(event.connection_id, None)
            elif kind is ConnectionTerminated:
                self._terminated()
            else:
                self.h3.handle_event(event)
            event = quic.next_event()

    def _on_headers(self, event: HeadersReceived) -> None:
        sid = event.stream_id
        if sid in self.streams:
            return  # trailers: nothing in them matters here
        method = path = b""
        headers: dict[bytes, bytes] = {}
        for name, value in event.headers:
            if name[:1] == b":":
                if name == b":method":
                    method = value
                elif name == b":path":
                    path = value
            elif name in headers:  # repeated field lines combine (RFC 9110 section 5.3)
                headers[name] += b", " + value
            else:
                headers[name] = value
        ex = self.app.open(method.decode("latin-1"), path.decode("latin-1"), headers)
        stream = RequestStream(self, sid, ex)
        self.streams[sid] = stream
        if ex.error is not None:
            stream._send_now(ex.error.status, ex.error.headers, ex.error.body)
            if event.stream_ended:
                self.forget(sid)
            else:
                stream.stop_input()
            return
        if ex.qos is not None:
            early = self._early_priority.pop(sid, None)
            if early is not None:  # the most recent signal wins (RFC 9218 section 7)
                ex.qos = replace(ex.qos, priority=Classifier.clamp(early, ex.qos.traffic_class))
            self.quic.set_stream_qos(sid, ex.qos)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.app.max_body_bytes:
            stream._refuse_body()
        elif event.stream_ended:
            stream.dispatch()

    def _on_priority_update(self, event: PriorityUpdateReceived) -> None:
        sid = event.stream_id
        if sid is None:
            return  # a push stream: the gateway never pushes
        qos = self.quic.stream_qos.get(sid)
        if qos is not None:
            self.quic.set_stream_priority(sid, Classifier.clamp(event.priority,
                                                                qos.traffic_class))
        elif sid not in self.streams and len(self._early_priority) < self.server.max_streams:
            self._early_priority[sid] = event.priority

    def forget(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)

    def _terminated(self) -> None:
        if self.terminated:
            return
        self.terminated = True
        for stream in list(self.streams.values()):
            stream.on_peer_abort()
        self.streams.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.server.remove(self)

    # -- output ----------------------------------------------------------------------------
    def transmit_soon(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = self.loop.call_soon(self.transmit)

    def transmit(self) -> None:
        self._transmit_handle = None
        sendto = self.server.transport.sendto
        for data, addr in self.quic.datagrams_to_send(now=self.loop.time()):
            sendto(data, addr)
        timer_at = self.quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None and not self.terminated:
            self._timer = self.loop.call_at(timer_at, self._on_timer)
        self._timer_at = timer_at

    def _on_timer(self) -> None:
        now = max(self._timer_at, self.loop.time())
        self._timer = None
        self._timer_at = None
        self.quic.handle_timer(now=now)
        self._process_events()
        self.transmit()

    def close(self) -> None:
        self.quic.close()
        self.transmit()


class H3Server(asyncio.DatagramProtocol):
    """The UDP endpoint: routes datagrams to connections by connection ID."""

    def __init__(self, app: GatewayApp, configuration: QuicConfiguration, *,
                 scheduler: str = "rr", max_streams: int = 1000,
                 connection_factory: Callable[..., ScheduledQuicConnection] =
                 ScheduledQuicConnection) -> None:
        self.app = app
        self.configuration = configuration
        self.scheduler = scheduler
        self.max_streams = max_streams
        self.connection_factory = connection_factory
        self.loop = asyncio.get_running_loop()
        self.connections: dict[bytes, H3ServerConnection] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self._cid_length = configuration.connection_id_length

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        # Fast path: a short-header packet of a known connection (almost all of them).
        if data and not data[0] & 0x80:
            conn = self.connections.get(data[1:1 + self._cid_length])
            if conn is not None:
                conn.datagram_received(data, addr)
            return
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self._cid_length)
        except ValueError:
            return
        if (header.packet_type != QuicPacketType.VERSION_NEGOTIATION
                and header.version is not None
                and header.version not in self.configuration.supported_versions):
            self.transport.sendto(encode_quic_version_negotiation(
                source_cid=header.destination_cid, destination_cid=header.source_cid,
                supported_versions=self.configuration.supported_versions), addr)
            return
        conn = self.connections.get(header.destination_cid)
        if (conn is None and len(data) >= SMALLEST_MAX_DATAGRAM_SIZE
                and header.packet_type == QuicPacketType.INITIAL):
            quic = self.connection_factory(
                configuration=self.configuration, scheduler=self.scheduler,
                original_destination_connection_id=header.destination_cid)
            set_peer_stream_limit(quic, self.max_streams)
            conn = H3ServerConnection(self, quic)
            self.connections[header.destination_cid] = conn
            self.connections[quic.host_cid] = conn
        if conn is not None:
            conn.datagram_received(data, addr)

    def remove(self, conn: H3ServerConnection) -> None:
        for cid in [cid for cid, c in self.connections.items() if c is conn]:
            del self.connections[cid]

    @property
    def connection_count(self) -> int:
        return len(set(self.connections.values()))

    def close(self) -> None:
        for conn in set(self.connections.values()):
            conn.close()
            conn._terminated()
        self.connections.clear()
        if self.transport is not None:
            self.transport.close()


async def serve_h3(app: GatewayApp, host: str, port: int, configuration: QuicConfiguration,
                   *, scheduler: str = "rr", max_streams: int = 1000,
                   sock=None) -> H3Server:
    """Listen for HTTP/3 on UDP ``host:port`` (or an already bound ``sock``)."""
    loop = asyncio.get_running_loop()
    kwargs = {"sock": sock} if sock is not None else {"local_addr": (host, port)}
    _, server = await loop.create_datagram_endpoint(
        lambda: H3Server(app, configuration, scheduler=scheduler, max_streams=max_streams),
        **kwargs)
    return server
