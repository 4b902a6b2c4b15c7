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

Bounded memory for a peer that does not read: aioquic buffers whatever the application writes,
whether or not flow control lets it out. Response writers here wait while their stream holds
more than ``gateway.stream_buffer_bytes`` unsent bytes or the connection more than
``gateway.connection_buffer_bytes`` (counted in O(1): bytes written minus the connection's
flow-control bytes used); the wait propagates to the backend over TCP. A writer that cannot write
for ``gateway.write_stall_timeout_s`` has its stream reset (H3_REQUEST_CANCELLED), which cancels
the backend request and frees its slot.

Clock: QUIC gets ``time.monotonic()`` (the clock of every ``RequestQoS`` deadline), not
``loop.time()``, which uvloop truncates to milliseconds (loopback RTTs then measure 0); timers
are set with ``loop.call_at`` on the same monotonic base. An exception while handling one
connection closes that connection (INTERNAL_ERROR) and no other.

Graceful shutdown (:meth:`H3Server.shutdown`): GOAWAY in two steps (RFC 9114 section 5.2: first
the largest stream ID, then, after the requests already in flight have had time to arrive, the
first ID that will not be processed); requests on later streams are reset with
H3_REQUEST_REJECTED (never processed: a client may retry them elsewhere); requests in flight get
the grace period to finish, then an explicit end (503, or a stream reset); then every connection
closes with H3_NO_ERROR. New connections during the shutdown are closed at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from time import monotonic

from aioquic.buffer import Buffer, encode_uint_var
from aioquic.h3.connection import H3_ALPN, ErrorCode, FrameType, encode_frame
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

import quicgw.congestion  # registers our congestion controllers with aioquic
from quicgw.core.qos import Priority
from quicgw.gateway.app import Exchange, GatewayApp
from quicgw.gateway.classify import Classifier
from quicgw.gateway.http import Headers, error_response
from quicgw.quic_timer import QuicTimer
from quicgw.scheduling import ScheduledQuicConnection
from quicgw.scheduling.h3 import PriorityH3Connection, PriorityUpdateReceived

log = logging.getLogger("quicgw.gateway.h3")

# Flow-control windows for the gateway side: large enough for many concurrent 100 KB uploads.
MAX_DATA = 16 << 20
MAX_STREAM_DATA = 1 << 20
# The largest client-initiated bidirectional stream ID (2^62 - 4): the first GOAWAY.
MAX_CLIENT_STREAM_ID = (1 << 62) - 4
# Responses up to this size are written at once, without looking at buffer limits.
_SMALL_RESPONSE = 16 << 10

_STATUS = {s: str(s).encode() for s in range(100, 600)}


def server_configuration(certfile: str, keyfile: str, *, idle_timeout: float = 60.0,
                         max_datagram_size: int | None = None,
                         congestion_control: str = quicgw.congestion.DEFAULT
                         ) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=False, alpn_protocols=list(H3_ALPN), idle_timeout=idle_timeout,
        max_data=MAX_DATA, max_stream_data=MAX_STREAM_DATA,
        congestion_control_algorithm=quicgw.congestion.check_algorithm(congestion_control))
    if max_datagram_size is not None:
        config.max_datagram_size = max_datagram_size
    config.load_cert_chain(certfile, keyfile)
    return config


class _WriterStalled(Exception):
    pass


class RequestStream:
    """One request on one QUIC stream; the :class:`~quicgw.gateway.http.Responder` of its
    exchange."""

    __slots__ = ("conn", "stream_id", "exchange", "chunks", "size", "task", "closed", "started",
                 "sender", "reset")

    def __init__(self, conn: H3ServerConnection, stream_id: int, exchange: Exchange) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.exchange = exchange
        self.chunks: list[bytes] = []
        self.size = 0
        self.task: asyncio.Task | None = None
        self.closed = False  # the peer reset or stopped it, or we are done with its input
        self.started = False
        self.sender = conn.quic._streams[stream_id].sender  # aioquic's send side, for accounting
        self.reset = False  # our send side was reset (by us, or by aioquic on STOP_SENDING)

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
        except (asyncio.CancelledError, _WriterStalled):
            pass  # the peer reset the stream, stopped reading, or the connection closed
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
            try:
                self.conn.quic.reset_stream(self.stream_id, code)
            except ValueError:
                pass
            self.send_side_reset()
            self.conn.transmit_soon()

    def on_peer_abort(self, reset_ours: bool = False) -> None:
        self.closed = True
        if reset_ours:
            # The client cancelled its request (RESET_STREAM): cancel the response as well,
            # or our half of the stream would never finish and its slot never come back.
            try:
                self.conn.quic.reset_stream(self.stream_id, ErrorCode.H3_REQUEST_CANCELLED)
            except ValueError:
                pass
        self.send_side_reset()
        if self.task is not None:
            self.task.cancel()

    def send_side_reset(self) -> None:
        """Our send side will send nothing more: its unsent bytes leave the connection's
        count."""
        if not self.reset:
            self.reset = True
            sender = self.sender
            self.conn.written -= max(0, sender._buffer_stop - sender.highest_offset)

    def unsent(self) -> int:
        sender = self.sender
        return sender._buffer_stop - sender.highest_offset

    async def _room(self) -> None:
        """Wait until this stream and its connection are below their buffer limits."""
        conn = self.conn
        if conn.unsent() <= conn.connection_budget and self.unsent() <= conn.stream_budget:
            return
        waiter = conn.loop.create_future()
        conn.blocked[self] = waiter
        try:
            await asyncio.wait_for(waiter, conn.server.write_stall_timeout_s)
        except TimeoutError:
            log.info("stream %d: the peer read nothing for %g s; resetting it", self.stream_id,
                     conn.server.write_stall_timeout_s)
            self.abort(ErrorCode.H3_REQUEST_CANCELLED)
            raise _WriterStalled from None
        finally:
            conn.blocked.pop(self, None)

    def _wrote(self, before: int) -> None:
        self.conn.written += self.sender._buffer_stop - before

    # -- Responder ---------------------------------------------------------------------------
    def _send_now(self, status: int, headers: Headers, body: bytes) -> None:
        if self.closed or self.started:
            return
        self.started = True
        h3 = self.conn.h3
        before = self.sender._buffer_stop
        h3.send_headers(self.stream_id, [(b":status", _STATUS[status]), *headers,
                                         (b"content-length", str(len(body)).encode())],
                        end_stream=not body)
        if body:
            h3.send_data(self.stream_id, body, end_stream=True)
        self._wrote(before)
        self.conn.transmit_soon()

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        if len(body) <= _SMALL_RESPONSE:
            self._send_now(status, headers, body)
            return
        # A large body goes out in pieces, each waiting for room (a peer that does not read
        # holds at most the buffer limits, not the whole body).
        await self.start(status, [*headers, (b"content-length", str(len(body)).encode())])
        view = memoryview(body)
        step = max(_SMALL_RESPONSE, self.conn.stream_budget // 4)
        for offset in range(0, len(body), step):
            if self.closed:
                return
            await self._room()
            if self.closed:
                return
            last = offset + step >= len(body)
            before = self.sender._buffer_stop
            self.conn.h3.send_data(self.stream_id, bytes(view[offset:offset + step]),
                                   end_stream=last)
            self._wrote(before)
            self.conn.transmit_soon()

    async def start(self, status: int, headers: Headers) -> None:
        if self.closed:
            return
        self.started = True
        before = self.sender._buffer_stop
        self.conn.h3.send_headers(self.stream_id, [(b":status", _STATUS[status]), *headers])
        self._wrote(before)
        self.conn.transmit_soon()

    async def write(self, data: bytes) -> None:
        if self.closed:
            return
        await self._room()
        if self.closed:
            return
        before = self.sender._buffer_stop
        self.conn.h3.send_data(self.stream_id, data, end_stream=False)
        self._wrote(before)
        self.conn.transmit_soon()

    async def finish(self) -> None:
        if self.closed:
            return
        self.conn.h3.send_data(self.stream_id, b"", end_stream=True)
        self.conn.transmit_soon()

    def end_for_shutdown(self) -> None:
        """The grace period is over: end this request explicitly."""
        if self.task is not None:
            self.task.cancel()
        if self.closed:
            return
        if not self.started:
            r = error_response(503, "the gateway shut down before this request finished",
                               "shutting_down", [(b"retry-after", b"1")])
            self._send_now(r.status, r.headers, r.body)
            self.closed = True
        else:
            self.abort(ErrorCode.H3_REQUEST_CANCELLED)


class H3ServerConnection(QuicTimer):
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
        self._transmit_handle: asyncio.Handle | None = None
        self.terminated = False
        # Response bytes written into aioquic's stream buffers (minus those of streams reset
        # before sending them); minus the flow-control bytes used, the bytes not yet sent.
        self.written = 0
        self.stream_budget = server.stream_buffer_bytes
        self.connection_budget = server.connection_buffer_bytes
        self.blocked: dict[RequestStream, asyncio.Future] = {}  # writers waiting for room
        self.unsent_streams: dict[int, RequestStream] = {}  # answered, bytes not all sent yet
        self.last_stream_id = -4  # the highest request stream whose headers arrived
        self.goaway_id: int | None = None  # streams from this ID on are refused

    def unsent(self) -> int:
        return self.written - self.quic._remote_max_data_used

    def output_pending(self) -> bool:
        """Some response is not yet acknowledged in full (O(streams): for shutdown only)."""
        return not self.terminated and any(
            not st.sender.is_finished for sid, st in self.quic._streams.items() if sid % 4 == 0)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            self.quic.receive_datagram(data, addr, now=monotonic())
            self._process_events()
            self.transmit()
        except Exception:
            self._crashed()

    def _crashed(self) -> None:
        """A bug while handling this connection: end it (INTERNAL_ERROR), keep the others."""
        log.exception("internal error on a QUIC connection; closing it")
        try:
            self.quic.close(error_code=0x1, reason_phrase="internal error")
            for data, addr in self.quic.datagrams_to_send(now=monotonic()):
                self.server.transport.sendto(data, addr)
        except Exception:
            pass
        self._terminated()

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
                stream = (self.streams.pop(event.stream_id, None)
                          or self.unsent_streams.pop(event.stream_id, None))
                if stream is not None:
                    # STOP_SENDING: aioquic resets our side itself; RESET_STREAM: we do.
                    stream.on_peer_abort(reset_ours=kind is StreamReset)
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
        if self.goaway_id is not None and sid >= self.goaway_id:
            self._reject(sid)
            return
        if sid > self.last_stream_id:
            self.last_stream_id = sid
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
        self.app.metrics.http_request("h3", ex.endpoint)
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
        stream = self.streams.pop(stream_id, None)
        if stream is not None and not stream.reset and stream.unsent() > 0:
            # Answered, not yet all sent: a reset may still come, and must leave the count.
            self.unsent_streams[stream_id] = stream

    def _reject(self, stream_id: int) -> None:
        """A request after our GOAWAY: never processed, so the client may retry it."""
        try:
            self.quic.reset_stream(stream_id, ErrorCode.H3_REQUEST_REJECTED)
            self.quic.stop_stream(stream_id, ErrorCode.H3_REQUEST_REJECTED)
        except (ValueError, KeyError):
            pass
        self.transmit_soon()

    def send_goaway(self, stream_id: int) -> None:
        """HTTP/3 GOAWAY: requests on streams from ``stream_id`` on will not be processed. It
        may only go down (RFC 9114 section 5.2)."""
        if self.terminated or (self.goaway_id is not None and stream_id >= self.goaway_id):
            return
        self.goaway_id = stream_id
        try:
            self.quic.send_stream_data(self.h3._local_control_stream_id,
                                       encode_frame(FrameType.GOAWAY, encode_uint_var(stream_id)))
        except (AssertionError, ValueError, AttributeError):
            return  # no control stream yet (handshake in progress)
        self.transmit_soon()

    def _wake_writers(self) -> None:
        if self.unsent() > self.connection_budget:
            return
        budget = self.stream_budget
        for stream, waiter in list(self.blocked.items()):
            if stream.unsent() <= budget and not waiter.done():
                waiter.set_result(None)

    def _terminated(self) -> None:
        if self.terminated:
            return
        self.terminated = True
        for stream in list(self.streams.values()):
            stream.on_peer_abort()
        self.streams.clear()
        self.unsent_streams.clear()
        self._cancel_timer()
        self.server.remove(self)

    # -- output ----------------------------------------------------------------------------
    def transmit_soon(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = self.loop.call_soon(self.transmit)

    def transmit(self) -> None:
        self._transmit_handle = None
        sendto = self.server.transport.sendto
        for data, addr in self.quic.datagrams_to_send(now=monotonic()):
            sendto(data, addr)
        if self.unsent_streams:
            for sid, stream in list(self.unsent_streams.items()):
                if stream.reset or stream.unsent() <= 0:
                    del self.unsent_streams[sid]
        if self.blocked:
            self._wake_writers()
        self._rearm_timer()

    def _on_timer(self) -> None:
        now = self._timer_fired()
        try:
            self.quic.handle_timer(now=now)
            self._process_events()
            self.transmit()
        except Exception:
            self._crashed()

    def close(self, error_code: int = ErrorCode.H3_NO_ERROR, reason: str = "") -> None:
        self.quic.close(error_code=error_code, reason_phrase=reason)
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
        gw = app.config.gateway
        self.stream_buffer_bytes = gw.stream_buffer_bytes
        self.connection_buffer_bytes = gw.connection_buffer_bytes
        self.write_stall_timeout_s = gw.write_stall_timeout_s
        self.shutting_down = False
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
                original_destination_connection_id=header.destination_cid,
                max_streams_bidi=self.max_streams)
            conn = H3ServerConnection(self, quic)
            self.connections[header.destination_cid] = conn
            self.connections[quic.host_cid] = conn
            if self.shutting_down:  # answer the handshake with a close, not with silence
                conn.datagram_received(data, addr)
                conn.close(ErrorCode.H3_NO_ERROR, "the gateway is shutting down")
                return
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
            conn.close(ErrorCode.H3_NO_ERROR, "the gateway is shutting down")
            conn._terminated()
        self.connections.clear()
        if self.transport is not None:
            self.transport.close()

    def in_flight(self) -> int:
        """Requests not yet answered in full (their body may still be arriving)."""
        return sum(len(c.streams) for c in set(self.connections.values()))

    async def shutdown(self, grace_s: float) -> None:
        """Graceful shutdown (see the module docstring); returns when every connection is
        closed, at most ``grace_s`` plus a moment later."""
        self.shutting_down = True
        loop = self.loop
        conns = set(self.connections.values())
        for conn in conns:
            conn.send_goaway(MAX_CLIENT_STREAM_ID)
        # Requests the clients sent before they saw the first GOAWAY arrive within about a
        # round trip; then the real limit.
        rtt = max((c.quic._loss._rtt_smoothed for c in conns), default=0.0)
        end = loop.time() + grace_s
        await asyncio.sleep(min(grace_s, max(0.05, 2 * rtt)))
        for conn in set(self.connections.values()):
            conn.send_goaway(conn.last_stream_id + 4)
        while (self.in_flight() or any(c.output_pending() for c in self.connections.values())) \
                and loop.time() < end:
            await asyncio.sleep(0.02)
        for conn in set(self.connections.values()):
            for stream in list(conn.streams.values()):
                stream.end_for_shutdown()
            conn.transmit()
        await asyncio.sleep(0)  # let cancelled requests unwind (they release their slots)
        for conn in set(self.connections.values()):
            conn.close(ErrorCode.H3_NO_ERROR, "the gateway is shutting down")
        await asyncio.sleep(0.05)  # CONNECTION_CLOSE on its way (a lost one: the idle timeout)
        self.close()


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
