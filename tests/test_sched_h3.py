"""PRIORITY_UPDATE (RFC 9218 section 7) over HTTP/3 on in-memory connection pairs: events, the
scheduler following them, malformed frames closing the connection with the RFC's error codes,
and the client sending them."""

from __future__ import annotations

import functools

import pytest
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import ErrorCode, H3Connection, encode_frame
from aioquic.h3.events import DataReceived, HeadersReceived

from quicgw.core.classes import BULK, REALTIME
from quicgw.core.qos import Priority, RequestQoS, parse_priority
from quicgw.scheduling import ScheduledQuicConnection
from quicgw.scheduling.h3 import (
    MAX_PRIORITY_UPDATE_SIZE,
    PRIORITY_UPDATE_PUSH,
    PRIORITY_UPDATE_REQUEST,
    PriorityH3Connection,
    PriorityUpdateReceived,
    _ControlStreamScanner,
    encode_priority_update,
)
from quicgw.scheduling.sim import SimulatedLink, fixed_window_congestion_control

WINDOW = fixed_window_congestion_control(12_000)


class H3Pair:
    """Client and server H3 over a simulated link. The server acts like the gateway: on request
    headers it calls ``set_stream_qos`` with the class and the ``priority`` header, and answers
    each finished request with ``response_size`` bytes."""

    def __init__(self, server_scheduler="rfc9218", client_h3=PriorityH3Connection,
                 server_h3=PriorityH3Connection, response_size=0, strict=False) -> None:
        cc = {"congestion_control_algorithm": WINDOW}
        self.link = SimulatedLink.pair(
            functools.partial(ScheduledQuicConnection, scheduler="rr"),
            functools.partial(ScheduledQuicConnection, scheduler=server_scheduler),
            client_config=cc, server_config=cc, delay=0.01,
        )
        self.link.connect()
        self.client = self.link.client
        self.server = self.link.server
        self.ch3 = client_h3(self.client)
        kwargs = {"strict": strict} if server_h3 is PriorityH3Connection else {}
        self.sh3 = server_h3(self.server, **kwargs)
        self.client_events: list = []
        self.server_events: list = []
        self.response_size = response_size
        self.done: dict[int, float] = {}
        self.classified: dict[int, RequestQoS] = {}  # QoS right after set_stream_qos
        self.link.on_client_event = self._on_client
        self.link.on_server_event = self._on_server
        self.run(0.1)

    def _on_client(self, event, now):
        for ev in self.ch3.handle_event(event):
            self.client_events.append(ev)
            if isinstance(ev, DataReceived) and ev.stream_ended:
                self.done[ev.stream_id] = now

    def _on_server(self, event, now):
        for ev in self.sh3.handle_event(event):
            self.server_events.append(ev)
            if isinstance(ev, HeadersReceived):
                headers = dict(ev.headers)
                cls = REALTIME if headers.get(b"x-traffic-class") == b"realtime" else BULK
                priority = parse_priority(headers.get(b"priority"), Priority(cls.urgency))
                self.server.set_stream_qos(
                    ev.stream_id, RequestQoS(cls, now, now + 5, priority)
                )
                self.classified[ev.stream_id] = self.server.stream_qos[ev.stream_id]
            if getattr(ev, "stream_ended", False):
                self.sh3.send_headers(ev.stream_id, [(b":status", b"200")])
                self.sh3.send_data(ev.stream_id, b"r" * self.response_size, end_stream=True)

    def request(self, priority: str | None = None, cls: bytes = b"bulk") -> int:
        sid = self.client.get_next_available_stream_id()
        headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"),
                   (b":path", b"/"), (b"x-traffic-class", cls)]
        if priority is not None:
            headers.append((b"priority", priority.encode()))
        self.ch3.send_headers(sid, headers, end_stream=True)
        return sid

    def run(self, seconds=0.5, until=None):
        return self.link.run(until=until, max_time=seconds)

    def updates(self) -> list[PriorityUpdateReceived]:
        return [e for e in self.server_events if isinstance(e, PriorityUpdateReceived)]

    def close_code(self, conn) -> int | None:
        return None if conn._close_event is None else conn._close_event.error_code


def test_priority_update_becomes_an_event_and_reaches_the_scheduler():
    pair = H3Pair()
    sid = pair.client.get_next_available_stream_id()
    pair.ch3.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"x"),
                                (b":path", b"/"), (b"priority", b"u=5")], end_stream=False)
    pair.run(0.1)
    assert pair.server.stream_qos[sid].priority == Priority(5)
    pair.ch3.send_priority_update(sid, Priority(0, True))
    pair.run(0.1)
    assert pair.updates() == [
        PriorityUpdateReceived(Priority(0, True), b"u=0, i", stream_id=sid)
    ]
    assert pair.server.stream_qos[sid].priority == Priority(0, True)
    assert pair.server.scheduler.entry(sid).effective_priority == Priority(0, True)
    # The client applied it to its own upload scheduling too.
    assert pair.client.scheduler.entry(sid).effective_priority == Priority(0, True)


def test_priority_update_before_the_request_overrides_its_header():
    pair = H3Pair()
    sid = pair.client.get_next_available_stream_id()
    pair.ch3.send_priority_update(sid, "u=1")  # the control stream goes first
    pair.run(0.1)
    assert pair.updates()[0].stream_id == sid and sid not in pair.server._streams
    pair.request(priority="u=6")
    pair.run(0.1)
    assert pair.classified[sid].priority == Priority(1)


def test_reprioritised_response_is_delivered_first():
    pair = H3Pair(server_scheduler="rfc9218", response_size=60_000)
    first = pair.request(priority="u=3")
    second = pair.request(priority="u=3")
    pair.ch3.send_priority_update(second, Priority(0))
    assert pair.run(5, until=lambda: len(pair.done) == 2)
    assert pair.done[second] < pair.done[first]


def test_h3_control_and_qpack_streams_are_control_streams():
    pair = H3Pair()
    sched = pair.server.scheduler
    for sid in (pair.sh3._local_control_stream_id, pair.sh3._local_encoder_stream_id,
                pair.sh3._local_decoder_stream_id):
        assert sched.entry(sid).control


def test_stock_h3_client_interoperates_and_unparsed_frames_stay_harmless():
    pair = H3Pair(client_h3=H3Connection, response_size=5_000)
    sid = pair.request(priority="u=2")
    assert pair.run(2, until=lambda: sid in pair.done)
    # Raw PRIORITY_UPDATE from a client whose H3 layer does not know the frame.
    pair.client.send_stream_data(pair.ch3._local_control_stream_id,
                                 encode_priority_update(sid + 4, "u=0"))
    pair.run(0.1)
    assert pair.updates()[0].stream_id == sid + 4
    assert pair.close_code(pair.server) is None


# -- malformed frames: RFC 9218 section 7 ------------------------------------------------------


def inject_on_client_control(pair: H3Pair, raw: bytes) -> None:
    pair.client.send_stream_data(pair.ch3._local_control_stream_id, raw)
    pair.run(0.2)


@pytest.mark.parametrize(
    ("payload", "frame_type", "code"),
    [
        (encode_uint_var(2) + b"u=1", PRIORITY_UPDATE_REQUEST, ErrorCode.H3_ID_ERROR),  # uni
        (encode_uint_var(1) + b"u=1", PRIORITY_UPDATE_REQUEST, ErrorCode.H3_ID_ERROR),  # server's
        (encode_uint_var(4 * 100_000) + b"u=1", PRIORITY_UPDATE_REQUEST, ErrorCode.H3_ID_ERROR),
        (encode_uint_var(0) + b"u=1", PRIORITY_UPDATE_PUSH, ErrorCode.H3_ID_ERROR),  # no push
        (b"", PRIORITY_UPDATE_REQUEST, ErrorCode.H3_FRAME_ERROR),
        (b"\x40", PRIORITY_UPDATE_REQUEST, ErrorCode.H3_FRAME_ERROR),  # truncated varint
        (encode_uint_var(0) + b"u=1" * 400, PRIORITY_UPDATE_REQUEST, ErrorCode.H3_EXCESSIVE_LOAD),
    ],
    ids=["uni-stream", "server-stream", "beyond-limit", "unpromised-push", "empty", "truncated",
         "oversized"],
)
def test_malformed_priority_update_is_a_connection_error(payload, frame_type, code):
    assert len(b"u=1" * 400) > MAX_PRIORITY_UPDATE_SIZE
    pair = H3Pair()
    inject_on_client_control(pair, encode_frame(frame_type, payload))
    assert pair.close_code(pair.server) == code
    assert pair.updates() == []


def test_priority_update_on_a_request_stream_is_frame_unexpected():
    pair = H3Pair()
    sid = pair.client.get_next_available_stream_id()
    pair.ch3.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"x"),
                                (b":path", b"/")], end_stream=False)
    pair.client.send_stream_data(sid, encode_priority_update(sid, "u=0"))
    pair.run(0.2)
    assert pair.close_code(pair.server) == ErrorCode.H3_FRAME_UNEXPECTED


def test_client_receiving_priority_update_is_frame_unexpected():
    pair = H3Pair()
    pair.server.send_stream_data(pair.sh3._local_control_stream_id, encode_priority_update(0, "u=0"))
    pair.run(0.2)
    assert pair.close_code(pair.client) == ErrorCode.H3_FRAME_UNEXPECTED


@pytest.mark.parametrize("value", [b"u=", b"u=1,,", b"\xff", b"u=1;", b"(u=1"])
def test_unparseable_field_value_is_ignored_by_default_and_an_error_when_strict(value):
    pair = H3Pair()
    inject_on_client_control(pair, encode_frame(PRIORITY_UPDATE_REQUEST, encode_uint_var(0) + value))
    assert pair.close_code(pair.server) is None
    assert pair.updates() == [] and pair.sh3.priority_updates_ignored == 1

    strict = H3Pair(strict=True)
    inject_on_client_control(strict, encode_frame(PRIORITY_UPDATE_REQUEST, encode_uint_var(0) + value))
    assert strict.close_code(strict.server) == ErrorCode.H3_GENERAL_PROTOCOL_ERROR


def test_invalid_members_take_their_defaults():
    pair = H3Pair()
    inject_on_client_control(
        pair, encode_frame(PRIORITY_UPDATE_REQUEST, encode_uint_var(0) + b"u=9, i=?1, foo=bar")
    )
    assert pair.updates() == [PriorityUpdateReceived(Priority(3, True), b"u=9, i=?1, foo=bar", stream_id=0)]


def test_sending_rules():
    pair = H3Pair()
    with pytest.raises(RuntimeError, match="only clients"):
        pair.sh3.send_priority_update(0, Priority(1))
    with pytest.raises(ValueError, match="not a client-initiated bidirectional"):
        pair.ch3.send_priority_update(2, Priority(1))


def test_scanner_handles_any_split_and_skips_other_frames():
    stream = (
        encode_uint_var(0)  # control stream type
        + encode_frame(0x4, b"\x01\x02")  # SETTINGS
        + encode_frame(0x21, b"grease" * 50)  # reserved type, skipped unbuffered
        + encode_priority_update(8, "u=2, i")
        + encode_frame(0x7, encode_uint_var(0))  # GOAWAY
        + encode_priority_update(12, "u=7")
    )
    for step in (1, 2, 3, 7, 64, len(stream)):
        scanner = _ControlStreamScanner()
        frames = []
        for i in range(0, len(stream), step):
            frames += scanner.feed(stream[i : i + step])
        assert frames == [
            (PRIORITY_UPDATE_REQUEST, encode_uint_var(8) + b"u=2, i"),
            (PRIORITY_UPDATE_REQUEST, encode_uint_var(12) + b"u=7"),
        ]
        assert len(scanner._buffer) == 0
