"""HTTP/3 with RFC 9218 PRIORITY_UPDATE frames: received as events, validated, and sent by clients.

aioquic's :class:`~aioquic.h3.connection.H3Connection` skips unknown frames on the control
stream, so PRIORITY_UPDATE (types 0xF0700 for request streams, 0xF0701 for push streams) is
dropped today. :class:`PriorityH3Connection` is a drop-in subclass that

* scans the peer's control stream alongside aioquic's own parser (aioquic still validates and
  consumes every frame; the scanner only buffers PRIORITY_UPDATE payloads, at most
  :data:`MAX_PRIORITY_UPDATE_SIZE` bytes, and skips everything else without buffering);
* returns a :class:`PriorityUpdateReceived` event from :meth:`handle_event` for each valid
  frame and, when the QUIC connection is a
  :class:`~quicgw.scheduling.connection.ScheduledQuicConnection`, applies it to the scheduler
  at once with ``set_stream_priority`` (buffered if the request stream is not open yet, and
  overriding the ``priority`` header, since RFC 9218 section 7 makes the most recent signal win);
* lets a client send one with :meth:`send_priority_update`;
* marks its control and QPACK streams as control streams of a ScheduledQuicConnection, so they
  are always sent first.

Errors, as RFC 9218 section 7 prescribes (each closes the connection with that code):

======================================================================  ======================
PRIORITY_UPDATE received by a client (on the server's control stream)   H3_FRAME_UNEXPECTED
PRIORITY_UPDATE on a request or push stream                             H3_FRAME_UNEXPECTED
0xF0700 naming a stream that is not a client-initiated bidirectional   H3_ID_ERROR
0xF0700 naming a stream beyond the bidirectional stream limit (SHOULD)  H3_ID_ERROR
0xF0701 naming a push ID above the maximum or not yet promised          H3_ID_ERROR
payload too short to hold the element ID                               H3_FRAME_ERROR
payload larger than MAX_PRIORITY_UPDATE_SIZE (RFC 9114 section 10.5)    H3_EXCESSIVE_LOAD
Priority Field Value that does not parse (a MAY)                        ignored, or
                                                                        H3_GENERAL_PROTOCOL_ERROR
                                                                        with ``strict=True``
======================================================================  ======================

A field value that parses but has unknown members or out-of-range values is not an error: those
members are ignored and take their defaults (RFC 9218 section 4), and a PRIORITY_UPDATE carries
the complete set of parameters, so omitted ones revert to their defaults too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import http_sf
from aioquic.buffer import Buffer, BufferReadError, encode_uint_var
from aioquic.h3.connection import (
    ErrorCode,
    FrameError,
    FrameUnexpected,
    H3Connection,
    H3Stream,
    IdError,
    ProtocolError,
    StreamType,
    encode_frame,
)
from aioquic.h3.events import H3Event
from aioquic.quic.connection import QuicConnection

from quicgw.core.qos import Priority, parse_priority
from quicgw.scheduling.connection import ScheduledQuicConnection

logger = logging.getLogger("quicgw.scheduling.h3")

PRIORITY_UPDATE_REQUEST = 0xF0700
PRIORITY_UPDATE_PUSH = 0xF0701
PRIORITY_UPDATE_TYPES = (PRIORITY_UPDATE_REQUEST, PRIORITY_UPDATE_PUSH)
# A priority field value is a few bytes ("u=3, i"); anything near this is abuse.
MAX_PRIORITY_UPDATE_SIZE = 1024
_CONTROL_STREAM_TYPES = (StreamType.CONTROL, StreamType.QPACK_ENCODER, StreamType.QPACK_DECODER)


class GeneralProtocolError(ProtocolError):
    error_code = ErrorCode.H3_GENERAL_PROTOCOL_ERROR


class ExcessiveLoad(ProtocolError):
    error_code = ErrorCode.H3_EXCESSIVE_LOAD


@dataclass(frozen=True)
class PriorityUpdateReceived(H3Event):
    """A client reprioritised a request (``stream_id``) or a push (``push_id``).

    ``priority`` is the complete new RFC 9218 priority (omitted parameters at their defaults);
    ``field_value`` is the raw Priority Field Value as received.
    """

    priority: Priority
    field_value: bytes
    stream_id: int | None = None
    push_id: int | None = None


def encode_priority_update(stream_id: int, priority: Priority | str) -> bytes:
    """A complete PRIORITY_UPDATE frame (request-stream variant) for ``stream_id``."""
    value = priority.header_value() if isinstance(priority, Priority) else priority
    return encode_frame(PRIORITY_UPDATE_REQUEST, encode_uint_var(stream_id) + value.encode("ascii"))


class _ControlStreamScanner:
    """Follows frame boundaries on the peer's control stream and extracts PRIORITY_UPDATE frames.

    Only PRIORITY_UPDATE payloads are buffered; other frames' payloads are skipped as they
    arrive, so memory stays bounded whatever the peer sends.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._type_skipped = False
        self._frame_type: int | None = None
        self._remaining = 0  # payload bytes of the current frame still to come

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Return the (frame type, payload) of each complete PRIORITY_UPDATE in ``data``."""
        self._buffer += data
        frames: list[tuple[int, bytes]] = []
        buf = Buffer(data=bytes(self._buffer))
        consumed = 0
        while True:
            try:
                if not self._type_skipped:
                    buf.pull_uint_var()  # the stream type, already checked by aioquic
                    self._type_skipped = True
                elif self._frame_type is None:
                    frame_type = buf.pull_uint_var()
                    length = buf.pull_uint_var()
                    if frame_type in PRIORITY_UPDATE_TYPES and length > MAX_PRIORITY_UPDATE_SIZE:
                        raise ExcessiveLoad(
                            f"PRIORITY_UPDATE of {length} bytes exceeds {MAX_PRIORITY_UPDATE_SIZE}"
                        )
                    self._frame_type, self._remaining = frame_type, length
                elif self._frame_type in PRIORITY_UPDATE_TYPES:
                    if buf.capacity - buf.tell() < self._remaining:
                        break  # wait for the whole payload
                    frames.append((self._frame_type, buf.pull_bytes(self._remaining)))
                    self._frame_type = None
                else:
                    skip = min(self._remaining, buf.capacity - buf.tell())
                    buf.seek(buf.tell() + skip)
                    self._remaining -= skip
                    if self._remaining:
                        consumed = buf.tell()
                        break
                    self._frame_type = None
            except BufferReadError:
                break
            consumed = buf.tell()
            if buf.eof() and self._frame_type is None:
                break
        del self._buffer[:consumed]
        return frames


class PriorityH3Connection(H3Connection):
    """H3Connection that understands RFC 9218 PRIORITY_UPDATE frames.

    ``strict=True`` closes the connection with H3_GENERAL_PROTOCOL_ERROR on a Priority Field
    Value that does not parse (RFC 9218 allows it); by default such a frame is ignored.
    ``apply_to_scheduler=False`` only reports events and leaves the scheduler alone.
    """

    def __init__(
        self,
        quic: QuicConnection,
        enable_webtransport: bool = False,
        *,
        strict: bool = False,
        apply_to_scheduler: bool = True,
    ) -> None:
        self._strict_priority = strict
        self._apply_priority = apply_to_scheduler
        self._control_scanner: _ControlStreamScanner | None = None
        self._uni_heads: dict[int, bytes] = {}  # peer uni streams whose type is not known yet
        self.priority_updates_ignored = 0
        super().__init__(quic, enable_webtransport)

    # -- sending ------------------------------------------------------------------------------

    def send_priority_update(self, stream_id: int, priority: Priority | str) -> None:
        """Client: ask the server to reprioritise the response on ``stream_id`` (RFC 9218
        section 7.2). Also applies the priority to this endpoint's own scheduler (a client may
        use priorities for its local scheduling, section 9)."""
        if not self._is_client:
            raise RuntimeError("only clients send PRIORITY_UPDATE (RFC 9218 section 7.2)")
        if stream_id % 4 != 0:
            raise ValueError(f"stream {stream_id} is not a client-initiated bidirectional stream")
        if isinstance(priority, str):
            priority = parse_priority(priority)
        self._quic.send_stream_data(
            self._local_control_stream_id, encode_priority_update(stream_id, priority)
        )
        if self._apply_priority and isinstance(self._quic, ScheduledQuicConnection):
            self._quic.set_stream_priority(stream_id, priority)

    def _create_uni_stream(self, stream_type: int, push_id: int | None = None) -> int:
        stream_id = super()._create_uni_stream(stream_type, push_id)
        if isinstance(self._quic, ScheduledQuicConnection):
            self._quic.set_stream_control(stream_id, stream_type in _CONTROL_STREAM_TYPES)
        return stream_id

    # -- receiving ----------------------------------------------------------------------------

    def _check_control_frame_type(self, frame_type: int) -> None:
        super()._check_control_frame_type(frame_type)
        if frame_type in PRIORITY_UPDATE_TYPES and self._is_client:
            raise FrameUnexpected("Servers must not send PRIORITY_UPDATE")

    def _check_request_or_push_frame_type(self, frame_type: int, stream: H3Stream) -> None:
        if frame_type in PRIORITY_UPDATE_TYPES:
            raise FrameUnexpected("PRIORITY_UPDATE is only allowed on the client control stream")
        super()._check_request_or_push_frame_type(frame_type, stream)

    def _receive_stream_data_uni(
        self, stream: H3Stream, data: bytes, stream_ended: bool
    ) -> list[H3Event]:
        # aioquic parses first (and raises on anything invalid); then, on the peer's control
        # stream, the scanner looks at the same bytes from the stream's first byte on.
        head = None
        if stream.stream_type is None:
            head = self._uni_heads.pop(stream.stream_id, b"") + data
        events = super()._receive_stream_data_uni(stream, data, stream_ended)
        if stream.stream_type is None:
            self._uni_heads[stream.stream_id] = head  # a partial type varint: < 8 bytes
            return events
        if stream.stream_id != self._peer_control_stream_id:
            return events
        if head is not None:
            self._control_scanner = _ControlStreamScanner()
            data = head
        for frame_type, payload in self._control_scanner.feed(data):
            event = self._priority_update(frame_type, payload)
            if event is not None:
                events.append(event)
        return events

    def _priority_update(self, frame_type: int, payload: bytes) -> PriorityUpdateReceived | None:
        buf = Buffer(data=payload)
        try:
            element_id = buf.pull_uint_var()
        except BufferReadError:
            raise FrameError("PRIORITY_UPDATE frame is too short") from None
        field_value = payload[buf.tell():]

        if frame_type == PRIORITY_UPDATE_REQUEST:
            if element_id % 4 != 0:
                raise IdError(f"PRIORITY_UPDATE for stream {element_id}, not a request stream")
            if element_id // 4 >= self._quic._local_max_streams_bidi.value:
                raise IdError(f"PRIORITY_UPDATE for stream {element_id}, beyond the stream limit")
        elif (
            self._max_push_id is None
            or element_id > self._max_push_id
            or element_id >= self._next_push_id
        ):
            raise IdError(f"PRIORITY_UPDATE for push {element_id}, which was not promised")

        try:
            http_sf.parse(field_value, tltype="dictionary")
        except Exception:  # http_sf raises ValueError (and friends) on any syntax error
            if self._strict_priority:
                raise GeneralProtocolError("PRIORITY_UPDATE Priority Field Value does not parse") from None
            self.priority_updates_ignored += 1
            logger.info("ignoring PRIORITY_UPDATE for %d: unparseable %r", element_id, field_value)
            return None
        priority = parse_priority(field_value)

        if frame_type == PRIORITY_UPDATE_REQUEST:
            if self._apply_priority and isinstance(self._quic, ScheduledQuicConnection):
                self._quic.set_stream_priority(element_id, priority)
            return PriorityUpdateReceived(priority, bytes(field_value), stream_id=element_id)
        return PriorityUpdateReceived(priority, bytes(field_value), push_id=element_id)
