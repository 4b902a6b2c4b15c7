"""The SDK's HTTP/3 connection: one QUIC connection (a :class:`ScheduledQuicConnection`, so the
client's own stream scheduler orders uploads) carrying many request streams.

Like the gateway's server, this drives an H3 connection (:class:`PriorityH3Connection`:
aioquic's, plus RFC 9218 PRIORITY_UPDATE) directly instead of ``aioquic.asyncio.connect``, which
constructs a plain ``QuicConnection`` we could not replace.

QUIC's clock is ``time.monotonic()`` (``loop.time()`` is millisecond-coarse on uvloop, which made
loopback RTTs 0), with timers set by ``loop.call_at`` on the same base.

GOAWAY (RFC 9114 section 5.2), which aioquic reads past: :class:`_H3` picks it out of the
server's control stream. The connection is then *going away*: the client sends new requests on a
new connection, and requests on streams at or above the GOAWAY's ID fail at once with
:class:`RequestRejected` (the server guarantees it did not process them, so the client retries
them). A stream the server resets with H3_REQUEST_REJECTED is the same.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aioquic.buffer import Buffer, BufferReadError
from aioquic.h3.connection import ErrorCode, FrameType, H3Stream
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    StreamDataReceived,
    StreamReset,
)

from quicgw.quic_timer import QuicTimer
from quicgw.scheduling import ScheduledQuicConnection
from quicgw.scheduling.h3 import PriorityH3Connection


class ConnectionLost(ConnectionError):
    """The QUIC connection closed while the request was in progress."""


class StreamResetError(ConnectionError):
    """The server reset the request's stream."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        super().__init__(f"the server reset stream {stream_id} (HTTP/3 error 0x{error_code:x})")
        self.error_code = error_code


class RequestRejected(StreamResetError):
    """The server did not process the request (GOAWAY, or H3_REQUEST_REJECTED): it is safe to
    send it again, on another connection."""

    def __init__(self, stream_id: int) -> None:
        super().__init__(stream_id, ErrorCode.H3_REQUEST_REJECTED)


class _GoawayScanner:
    """Follows the frames of the server's control stream (from its first byte) and returns the
    stream ID of each GOAWAY. Other frames' payloads are skipped as they arrive."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._type_skipped = False
        self._goaway = False  # inside a GOAWAY frame (payload: one varint)
        self._remaining: int | None = None  # payload bytes of the current frame still to come

    def feed(self, data: bytes) -> list[int]:
        self._buffer += data
        ids: list[int] = []
        buf = Buffer(data=bytes(self._buffer))
        while not buf.eof():
            start = buf.tell()
            try:
                if not self._type_skipped:
                    buf.pull_uint_var()
                    self._type_skipped = True
                elif self._remaining is None:
                    frame_type, length = buf.pull_uint_var(), buf.pull_uint_var()
                    self._goaway = frame_type == FrameType.GOAWAY and 1 <= length <= 8
                    self._remaining = length
                elif self._goaway:
                    if buf.capacity - buf.tell() < self._remaining:
                        buf.seek(start)
                        break
                    ids.append(Buffer(data=buf.pull_bytes(self._remaining)).pull_uint_var())
                    self._remaining = None
                else:
                    skip = min(self._remaining, buf.capacity - buf.tell())
                    buf.seek(buf.tell() + skip)
                    self._remaining -= skip
                    if not self._remaining:
                        self._remaining = None
            except BufferReadError:
                buf.seek(start)
                break
        del self._buffer[:buf.tell()]
        return ids


class _H3(PriorityH3Connection):
    """The client's H3 layer: PRIORITY_UPDATE (sending) plus GOAWAY (receiving)."""

    def __init__(self, quic, on_goaway) -> None:
        self._on_goaway = on_goaway
        self._goaway_heads: dict[int, bytes] = {}
        self._goaway_scanner: _GoawayScanner | None = None
        super().__init__(quic)

    def _receive_stream_data_uni(self, stream: H3Stream, data: bytes,
                                 stream_ended: bool) -> list[H3Event]:
        head = None
        if stream.stream_type is None:
            head = self._goaway_heads.pop(stream.stream_id, b"") + data
        events = super()._receive_stream_data_uni(stream, data, stream_ended)
        if stream.stream_type is None:
            self._goaway_heads[stream.stream_id] = head  # a partial type varint
        elif stream.stream_id == self._peer_control_stream_id:
            if head is not None:
                self._goaway_scanner = _GoawayScanner()
                data = head
            for stream_id in self._goaway_scanner.feed(data):
                self._on_goaway(stream_id)
        return events


@dataclass(slots=True)
class Timing:
    """Monotonic times (``time.monotonic()``, seconds) of one request, for experiments."""

    started: float  # the request was handed to the connection
    sent: float | None = None  # headers and body queued on the stream
    headers: float | None = None  # response headers arrived
    first_byte: float | None = None  # first response body byte arrived
    completed: float | None = None  # the response ended

    @property
    def ttfb_s(self) -> float | None:
        t = self.first_byte or self.headers
        return None if t is None else t - self.started

    @property
    def latency_s(self) -> float | None:
        return None if self.completed is None else self.completed - self.started


class ClientStream:
    """One request's response side: status, headers, body chunks, end or error."""

    __slots__ = ("stream_id", "timing", "status", "headers", "chunks", "ended", "error",
                 "_waiter", "conn")

    def __init__(self, stream_id: int, timing: Timing) -> None:
        self.conn: H3ClientConnection | None = None
        self.stream_id = stream_id
        self.timing = timing
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.ended = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future | None = None

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_result(None)

    def waiter(self) -> asyncio.Future:
        """A future completed when something new arrives (headers, data, end or error).

        Created synchronously, after the caller checked the state, so no arrival can slip in
        between the check and the wait.
        """
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def on_headers(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        now = time.monotonic()
        if self.status is None:
            for name, value in headers:
                if name == b":status":
                    self.status = int(value)
                else:
                    self.headers.append((name, value))
            if self.status is not None and self.status < 200:  # interim response: skip it
                self.status = None
                self.headers = []
                return
            self.timing.headers = now
        if ended:
            self.ended = True
            self.timing.completed = now
        self._wake()

    def on_data(self, data: bytes, ended: bool) -> None:
        now = time.monotonic()
        if data:
            if self.timing.first_byte is None:
                self.timing.first_byte = now
            self.chunks.append(data)
        if ended:
            self.ended = True
            self.timing.completed = now
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self.ended:
            self.error = error
            self.ended = True
        self._wake()


class H3ClientConnection(QuicTimer, asyncio.DatagramProtocol):
    def __init__(self, quic: ScheduledQuicConnection) -> None:
        self.loop = asyncio.get_running_loop()
        self.quic = quic
        self.h3 = _H3(quic, self._goaway)
        self.streams: dict[int, ClientStream] = {}
        self.goaway_id: int | None = None  # the server's GOAWAY: no new requests here
        self.transport: asyncio.DatagramTransport | None = None
        self.connected: asyncio.Future = self.loop.create_future()
        self.closed: asyncio.Future = self.loop.create_future()
        self.terminated = False
        self.close_reason = ""
        self._transmit_handle: asyncio.Handle | None = None

    # asyncio.DatagramProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.quic.receive_datagram(data, addr, now=time.monotonic())
        self._process_events()
        self.transmit()

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors: QUIC's own timers decide whether the path is dead

    @property
    def going_away(self) -> bool:
        return self.goaway_id is not None or self.terminated

    def _goaway(self, stream_id: int) -> None:
        if self.goaway_id is not None and stream_id > self.goaway_id:
            return  # it may only go down
        self.goaway_id = stream_id
        for sid in [sid for sid in self.streams if sid >= stream_id]:
            self.streams.pop(sid).fail(RequestRejected(sid))

    def connect(self, addr: NetworkAddress) -> None:
        self.quic.connect(addr, now=time.monotonic())
        self.transmit()

    def _process_events(self) -> None:
        event = self.quic.next_event()
        while event is not None:
            kind = type(event)
            if kind is StreamDataReceived:
                for h3_event in self.h3.handle_event(event):
                    stream = self.streams.get(h3_event.stream_id)
                    if stream is None:
                        continue
                    if type(h3_event) is DataReceived:
                        stream.on_data(h3_event.data, h3_event.stream_ended)
                    elif type(h3_event) is HeadersReceived:
                        stream.on_headers(h3_event.headers, h3_event.stream_ended)
                    if stream.ended:
                        del self.streams[stream.stream_id]
            elif kind is StreamReset:
                self.h3.handle_event(event)
                stream = self.streams.pop(event.stream_id, None)
                if stream is not None:
                    stream.fail(RequestRejected(event.stream_id)
                                if event.error_code == ErrorCode.H3_REQUEST_REJECTED
                                else StreamResetError(event.stream_id, event.error_code))
            elif kind is HandshakeCompleted:
                if not self.connected.done():
                    self.connected.set_result(None)
            elif kind is ConnectionTerminated:
                self._terminated(event)
            else:
                self.h3.handle_event(event)
            event = self.quic.next_event()

    def _terminated(self, event: ConnectionTerminated) -> None:
        if self.terminated:
            return
        self.terminated = True
        self.close_reason = (f"connection closed (error 0x{event.error_code:x}"
                             f"{': ' + event.reason_phrase if event.reason_phrase else ''})")
        error = ConnectionLost(self.close_reason)
        for stream in self.streams.values():
            stream.fail(error)
        self.streams.clear()
        if not self.connected.done():
            self.connected.set_exception(ConnectionLost(f"handshake failed: {self.close_reason}"))
            self.connected.exception()  # retrieved: a failed connect raises it from connect()
        if not self.closed.done():
            self.closed.set_result(None)
        self._cancel_timer()

    def transmit_soon(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = self.loop.call_soon(self.transmit)

    def transmit(self) -> None:
        self._transmit_handle = None
        if self.transport is None:
            return
        for data, addr in self.quic.datagrams_to_send(now=time.monotonic()):
            self.transport.sendto(data, addr)
        self._rearm_timer()

    def _on_timer(self) -> None:
        self.quic.handle_timer(now=self._timer_fired())
        self._process_events()
        self.transmit()

    async def aclose(self, timeout: float = 1.0) -> None:
        if not self.terminated:
            self.quic.close()
            self.transmit()
            try:
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)
            except TimeoutError:
                pass
        self.release()

    def release(self) -> None:
        """Free the socket and timers (the QUIC connection is over or abandoned)."""
        self._cancel_timer()
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        if self.transport is not None:
            self.transport.close()
