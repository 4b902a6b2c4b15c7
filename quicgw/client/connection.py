"""The SDK's HTTP/3 connection: one QUIC connection (a :class:`ScheduledQuicConnection`, so the
client's own stream scheduler orders uploads) carrying many request streams.

Like the gateway's server, this drives an H3 connection (:class:`PriorityH3Connection`:
aioquic's, plus RFC 9218 PRIORITY_UPDATE) directly instead of ``aioquic.asyncio.connect``, which
constructs a plain ``QuicConnection`` we could not replace.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    StreamDataReceived,
    StreamReset,
)

from quicgw.scheduling import ScheduledQuicConnection
from quicgw.scheduling.h3 import PriorityH3Connection


class ConnectionLost(ConnectionError):
    """The QUIC connection closed while the request was in progress."""


class StreamResetError(ConnectionError):
    """The server reset the request's stream."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        super().__init__(f"the server reset stream {stream_id} (HTTP/3 error 0x{error_code:x})")
        self.error_code = error_code


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
                 "_waiter")

    def __init__(self, stream_id: int, timing: Timing) -> None:
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


class H3ClientConnection(asyncio.DatagramProtocol):
    def __init__(self, quic: ScheduledQuicConnection) -> None:
        self.loop = asyncio.get_running_loop()
        self.quic = quic
        self.h3 = PriorityH3Connection(quic)
        self.streams: dict[int, ClientStream] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.connected: asyncio.Future = self.loop.create_future()
        self.closed: asyncio.Future = self.loop.create_future()
        self.terminated = False
        self.close_reason = ""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None

    # asyncio.DatagramProtocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        self.quic.receive_datagram(data, addr, now=self.loop.time())
        self._process_events()
        self.transmit()

    def error_received(self, exc: Exception) -> None:
        pass  # ICMP errors: QUIC's own timers decide whether the path is dead

    def connect(self, addr: NetworkAddress) -> None:
        self.quic.connect(addr, now=self.loop.time())
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
                    stream.fail(StreamResetError(event.stream_id, event.error_code))
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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def transmit_soon(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = self.loop.call_soon(self.transmit)

    def transmit(self) -> None:
        self._transmit_handle = None
        if self.transport is None:
            return
        for data, addr in self.quic.datagrams_to_send(now=self.loop.time()):
            self.transport.sendto(data, addr)
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

    async def aclose(self, timeout: float = 1.0) -> None:
        if not self.terminated:
            self.quic.close()
            self.transmit()
            try:
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)
            except TimeoutError:
                pass
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        if self.transport is not None:
            self.transport.close()
