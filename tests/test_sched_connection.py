"""ScheduledQuicConnection on deterministic in-memory pairs (simulated clock, fixed congestion
window): each scheduler's order of delivery, retransmissions through the scheduler, flow
control and stream limits, resets, interop with stock aioquic both ways, and the absence of
per-packet walks over open streams."""

from __future__ import annotations

import functools
import random
from collections import defaultdict

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import StreamDataReceived, StreamReset

from quicgw.core.classes import BULK, FREE, REALTIME
from quicgw.core.qos import Priority, RequestQoS
from quicgw.scheduling import SCHEDULERS, ScheduledQuicConnection
from quicgw.scheduling.base import StreamScheduler
from quicgw.scheduling.connection import _check_aioquic_version, make_scheduler
from quicgw.scheduling.sim import SimulatedLink, fixed_window_congestion_control

WINDOW = fixed_window_congestion_control(12_000)  # ten packets in flight
PACKET = 1200  # one packet's worth of stream data, rounded up


def scheduled(name: str | StreamScheduler, **options):
    return functools.partial(ScheduledQuicConnection, scheduler=name, **options)


def make_link(client=None, server=None, *, window=WINDOW, client_config=None, server_config=None,
              server_options=None, **link_kwargs) -> SimulatedLink:
    """``client``/``server``: a scheduler name or instance for a ScheduledQuicConnection, or
    None for stock aioquic. ``server_options``: more keyword arguments for the server's
    ScheduledQuicConnection."""
    link = SimulatedLink.pair(
        QuicConnection if client is None else scheduled(client),
        QuicConnection if server is None else scheduled(server, **(server_options or {})),
        client_config={"congestion_control_algorithm": window, **(client_config or {})},
        server_config={"congestion_control_algorithm": window, **(server_config or {})},
        delay=link_kwargs.pop("delay", 0.01),
        **link_kwargs,
    )
    link.connect()
    return link


class Receiver:
    """Records what one endpoint receives: bytes per stream over time, completion times. With
    ``echo``, answers each finished stream with its own data and a FIN (so both sides close)."""

    def __init__(self, conn: QuicConnection, echo: bool = False) -> None:
        self.conn = conn
        self.echo = echo
        self.data: dict[int, bytearray] = defaultdict(bytearray)
        self.trace: list[tuple[float, int, int]] = []  # (time, stream, total bytes so far)
        self.done: dict[int, float] = {}
        self.first: dict[int, float] = {}
        self.resets: dict[int, int] = {}

    def __call__(self, event, now: float) -> None:
        if isinstance(event, StreamDataReceived):
            sid = event.stream_id
            if event.data:
                self.first.setdefault(sid, now)
            self.data[sid] += event.data
            self.trace.append((now, sid, len(self.data[sid])))
            if event.end_stream:
                self.done[sid] = now
                if self.echo and sid % 4 < 2:  # bidirectional: answer on the same stream
                    self.conn.send_stream_data(sid, bytes(self.data[sid]), end_stream=True)
        elif isinstance(event, StreamReset):
            self.resets[event.stream_id] = event.error_code

    def received_at(self, sid: int, when: float) -> int:
        total = 0
        for t, s, n in self.trace:
            if t > when:
                break
            if s == sid:
                total = n
        return total


def qos(cls, deadline: float, priority: Priority | None = None, arrival: float = 0.0) -> RequestQoS:
    return RequestQoS(cls, arrival=arrival, deadline=deadline, priority=priority or Priority(cls.urgency))


def upload(link: SimulatedLink, streams: list[tuple[int, RequestQoS | None]], echo=False,
           max_time=30.0) -> tuple[Receiver, list[int]]:
    """Client opens one stream per (size, qos), writes everything at once, runs to completion."""
    client = link.client
    receiver = Receiver(link.server, echo=echo)
    link.on_server_event = receiver
    ids = []
    for i, (size, q) in enumerate(streams):
        sid = client.get_next_available_stream_id()
        ids.append(sid)
        if q is not None and isinstance(client, ScheduledQuicConnection):
            client.set_stream_qos(sid, q)
        client.send_stream_data(sid, bytes([i % 251]) * size, end_stream=True)
    assert link.run(until=lambda: len(receiver.done) == len(ids), max_time=max_time)
    for i, sid in enumerate(ids):
        assert receiver.data[sid] == bytes([i % 251]) * streams[i][0]
    return receiver, ids


def completion_order(receiver: Receiver, ids: list[int]) -> list[int]:
    return sorted(ids, key=lambda sid: receiver.done[sid])


# -- order of delivery, one test per scheduler -------------------------------------------------


def test_edf_earliest_deadline_completes_first():
    link = make_link(client="edf")
    t = link.now
    streams = [(20_000, qos(FREE, t + 3.0)), (20_000, qos(BULK, t + 2.0)), (20_000, qos(REALTIME, t + 1.0))]
    receiver, ids = upload(link, streams)
    assert completion_order(receiver, ids) == [ids[2], ids[1], ids[0]]
    # One at a time: the next stream starts only as the previous one ends.
    assert receiver.first[ids[1]] >= receiver.done[ids[2]]
    assert receiver.first[ids[0]] >= receiver.done[ids[1]]


def test_abs_class_zero_starves_class_two_while_it_has_data():
    link = make_link(client="abs")
    t = link.now
    streams = [(40_000, qos(BULK, t + 0.5)), (40_000, qos(REALTIME, t + 9.0))]
    receiver, (bulk, realtime) = upload(link, streams)
    # The bulk stream, opened first and due first, gets nothing until realtime is done...
    assert receiver.first[bulk] >= receiver.done[realtime]
    assert receiver.received_at(bulk, receiver.done[realtime] - 1e-9) == 0
    # ...and is served once it is.
    assert receiver.done[bulk] > receiver.done[realtime]


def test_abs_preempts_lower_class_when_higher_class_data_arrives():
    link = make_link(client="abs")
    client = link.client
    receiver = Receiver(link.server)
    link.on_server_event = receiver
    t = link.now
    bulk = client.get_next_available_stream_id()
    client.set_stream_qos(bulk, qos(BULK, t + 5))
    client.send_stream_data(bulk, b"b" * 200_000, end_stream=True)
    link.run(max_time=0.1)
    realtime = client.get_next_available_stream_id()
    client.set_stream_qos(realtime, qos(REALTIME, t + 5))
    client.send_stream_data(realtime, b"r" * 30_000, end_stream=True)
    before = receiver.received_at(bulk, link.now)
    assert link.run(until=lambda: realtime in receiver.done, max_time=10)
    # While realtime had data, bulk got at most what was already in flight.
    in_flight_allowance = 12_000
    assert receiver.received_at(bulk, receiver.done[realtime]) - before <= in_flight_allowance


def test_rr_equal_streams_finish_within_one_packet_of_each_other():
    link = make_link(client="rr")
    size = 30_000
    receiver, ids = upload(link, [(size, None)] * 4)
    first_done = min(receiver.done.values())
    for sid in ids:
        assert receiver.received_at(sid, first_done) >= size - PACKET


def test_fcfs_serves_streams_in_the_order_they_were_opened():
    link = make_link(client="fcfs")
    t = link.now
    streams = [(20_000, qos(BULK, t + 9)), (20_000, qos(REALTIME, t + 1)), (20_000, None)]
    receiver, ids = upload(link, streams)
    assert completion_order(receiver, ids) == ids
    assert receiver.first[ids[1]] >= receiver.done[ids[0]]


def test_ml_top_tier_by_deadline_then_lower_tier_round_robin():
    link = make_link(client="ml")
    t = link.now
    streams = [
        (24_000, qos(FREE, t + 0.1)),  # tier 1, even with the earliest deadline
        (24_000, qos(BULK, t + 0.2)),  # tier 1
        (12_000, qos(REALTIME, t + 2.0)),  # tier 0
        (12_000, qos(REALTIME, t + 1.0)),  # tier 0
    ]
    receiver, ids = upload(link, streams)
    free, bulk, rt_late, rt_early = ids
    assert receiver.done[rt_early] < receiver.done[rt_late]
    assert receiver.first[rt_late] >= receiver.done[rt_early]
    assert min(receiver.first[free], receiver.first[bulk]) >= receiver.done[rt_late]
    # The lower tier shares round-robin: when one finishes the other is within a packet.
    first_done = min(receiver.done[free], receiver.done[bulk])
    for sid in (free, bulk):
        assert receiver.received_at(sid, first_done) >= 24_000 - PACKET


def test_rfc9218_urgency_then_stream_id_incremental_shared():
    link = make_link(client="rfc9218")
    t = link.now
    p = lambda u, i=False: qos(FREE, t + 9, Priority(u, i))  # noqa: E731
    streams = [
        (15_000, p(3)),
        (15_000, p(1)),
        (15_000, p(3)),
        (15_000, p(0)),
        (15_000, p(2, True)),
        (15_000, p(2, True)),
    ]
    receiver, ids = upload(link, streams)
    u3_low, u1, u3_high, u0, inc_a, inc_b = ids
    order = completion_order(receiver, ids)
    assert order[:2] == [u0, u1]
    assert set(order[2:4]) == {inc_a, inc_b}
    assert order[4:] == [u3_low, u3_high]
    # Non-incremental: strictly one after the other; incremental: shared.
    assert receiver.first[u1] >= receiver.done[u0]
    assert receiver.first[u3_high] >= receiver.done[u3_low]
    first_inc = min(receiver.done[inc_a], receiver.done[inc_b])
    for sid in (inc_a, inc_b):
        assert receiver.received_at(sid, first_inc) >= 15_000 - PACKET


def test_adaptive_stops_a_hopeless_stream_from_delaying_the_others():
    """100 kB/s link. Stream A (100 kB, due at 0.6 s) cannot make it; B and C (15 kB each, due
    at 0.7 s and 0.9 s) can. EDF serves A first and all three miss; adaptive gives up on A."""
    results = {}
    for name in ("edf", "adaptive"):
        link = make_link(client=name, rate=100_000, delay=0.005)
        t = link.now
        streams = [
            (100_000, qos(REALTIME, t + 0.6)),
            (15_000, qos(REALTIME, t + 0.7)),
            (15_000, qos(REALTIME, t + 0.9)),
        ]
        receiver, ids = upload(link, streams)
        results[name] = [receiver.done[sid] - t <= (0.6, 0.7, 0.9)[i] for i, sid in enumerate(ids)]
        if name == "adaptive":
            assert link.client.scheduler.demotions >= 1
    assert results["edf"] == [False, False, False]
    assert results["adaptive"] == [False, True, True]


def test_adaptive_falls_back_to_priority_order_under_overload():
    """Twice the work the link can do before the deadlines: EDF serves the earlier-due bulk
    streams and the realtime ones miss; adaptive sees the overload and serves realtime first."""
    met = {}
    for name in ("edf", "adaptive"):
        link = make_link(client=name, rate=100_000, delay=0.005)
        t = link.now
        streams = [(20_000, qos(BULK, t + 1.2)) for _ in range(5)]
        streams += [(20_000, qos(REALTIME, t + 1.5)) for _ in range(5)]
        receiver, ids = upload(link, streams)
        met[name] = {
            cls: sum(receiver.done[sid] - t <= d for sid, (_, q) in zip(ids, streams, strict=True)
                     if q.traffic_class is cls and (d := q.deadline - t))
            for cls in (BULK, REALTIME)
        }
        if name == "adaptive":
            assert link.client.scheduler.mode_switches >= 1
    assert met["edf"][REALTIME] < 5
    assert met["adaptive"][REALTIME] == 5
    # The weighted score (realtime counts double, as in the poster) is higher.
    score = {n: 2 * m[REALTIME] + m[BULK] for n, m in met.items()}
    assert score["adaptive"] > score["edf"]


# -- retransmissions -----------------------------------------------------------------------------


class RecordingScheduler:
    """Wraps a policy and records every frame the connection sends and every byte it re-queues."""

    @staticmethod
    def wrap(name: str) -> StreamScheduler:
        sched = make_scheduler(name)
        sched.log = []
        original_requeue, original_backlog = sched.requeue, sched.add_backlog

        def requeue(stream_id, sent_bytes, now):
            sched.log.append(("sent", stream_id, sent_bytes, now))
            original_requeue(stream_id, sent_bytes, now)

        def add_backlog(stream_id, nbytes):
            sched.log.append(("queued", stream_id, nbytes, None))
            original_backlog(stream_id, nbytes)

        sched.requeue, sched.add_backlog = requeue, add_backlog
        return sched


def run_with_early_losses(name: str, losses: int = 3):
    """Urgent 6 kB and background 150 kB uploads; the first ``losses`` full-size client packets
    (all urgent data) are lost. Returns the scheduler's log and the two stream IDs."""
    sched = RecordingScheduler.wrap(name)
    link = make_link(client=sched)
    dropped = []

    def drop(direction, index, data):
        if direction == "c2s" and len(data) >= 1200 and len(dropped) < losses:
            dropped.append(index)
            return True
        return False

    link.drop = drop
    t = link.now
    streams = [
        (6_000, qos(REALTIME, t + 1.0, Priority(0))),
        (150_000, qos(BULK, t + 9.0, Priority(7))),
    ]
    receiver, (urgent, other) = upload(link, streams)
    assert len(dropped) == losses
    assert receiver.done[urgent] < receiver.done[other]
    return sched.log, urgent, other


def retransmission_interleaved(log, urgent, other) -> bool:
    """Whether the other stream sent anything while lost urgent bytes waited to be resent."""
    first_write_seen = False
    waiting = 0
    for kind, sid, nbytes, _ in log:
        if kind == "queued" and sid == urgent:
            if first_write_seen:
                waiting += nbytes  # lost data back in the queue
            first_write_seen = True
        elif kind == "sent" and sid == urgent and waiting:
            waiting = max(0, waiting - nbytes)
        elif kind == "sent" and sid == other and waiting:
            return True
    return False


@pytest.mark.parametrize("name", ["abs", "edf", "ml", "rfc9218", "adaptive"])
def test_retransmission_after_loss_obeys_the_scheduler(name):
    """Lost urgent data goes out before any more background data, although the urgent stream
    had already sent all its new data (and the background stream was mid-transfer) when the
    losses were detected: retransmissions pass through the scheduler."""
    log, urgent, other = run_with_early_losses(name)
    retransmitted = [i for i, (k, sid, _, _) in enumerate(log) if k == "queued" and sid == urgent][1:]
    assert retransmitted, "the losses were never rescheduled"
    assert any(k == "sent" and sid == other for k, sid, _, _ in log[: retransmitted[0]])
    assert not retransmission_interleaved(log, urgent, other)


def test_retransmission_under_round_robin_takes_turns():
    # The contrast: rr shares the link with the background stream even for retransmissions.
    log, urgent, other = run_with_early_losses("rr")
    assert retransmission_interleaved(log, urgent, other)


# -- flow control, stream limits, resets --------------------------------------------------------


@pytest.mark.parametrize("name", ["rr", "edf", "adaptive"])
def test_streams_held_by_flow_control_are_parked_and_woken(name):
    link = make_link(client=name, server_config={"max_stream_data": 8_000, "max_data": 20_000})
    sched = link.client.scheduler
    calls = {"next": 0}
    original = sched.next

    def counting_next(now):
        calls["next"] += 1
        return original(now)

    sched.next = counting_next
    receiver, ids = upload(link, [(60_000, None), (60_000, None), (5_000, None)])
    assert len(receiver.done) == 3
    parked = link.client._parked_stream_credit, link.client._parked_connection_credit
    assert not parked[0] and not parked[1]
    # Parking means no busy loop: a bounded number of decisions per packet sent.
    assert calls["next"] <= 4 * link.stats["c2s_sent"] + 50


def test_stream_limit_blocked_streams_wait_for_max_streams():
    # The server lets the client open 4 streams at a time (max_streams_bidi=4): the other 8
    # wait for MAX_STREAMS and all 12 complete.
    link = make_link(client="edf", server="rr", server_options={"max_streams_bidi": 4})
    assert link.client._remote_max_streams_bidi == 4
    receiver, ids = upload(link, [(3_000, None)] * 12, echo=True)
    assert len(receiver.done) == 12
    with pytest.raises(ValueError):
        ScheduledQuicConnection(configuration=QuicConfiguration(is_client=True),
                                max_streams_bidi=0)


def test_peer_opened_streams_are_discarded_and_limits_raised():
    """Our server: 300 requests over time (more than aioquic's 128 concurrent), each answered."""
    link = make_link(server="rr")
    client, server = link.client, link.server
    receiver = Receiver(server, echo=True)
    link.on_server_event = receiver
    answered = Receiver(client)
    link.on_client_event = answered
    for batch in range(3):
        for _ in range(100):
            client.send_stream_data(client.get_next_available_stream_id(), b"q" * 100, end_stream=True)
        assert link.run(until=lambda b=batch: len(answered.done) == 100 * (b + 1), max_time=20)
    link.run(max_time=1.0)
    assert len(server._streams) == 0 and len(server.scheduler) == 0
    assert server._local_max_streams_bidi.value >= 128 + 200


def test_reset_and_stop_sending():
    link = make_link(client="rfc9218", server="edf")
    client, server = link.client, link.server
    got = Receiver(server)
    link.on_server_event = got
    back = Receiver(client)
    link.on_client_event = back
    a = client.get_next_available_stream_id()
    client.send_stream_data(a, b"a" * 100_000)
    b = client.get_next_available_stream_id()
    client.send_stream_data(b, b"b" * 10_000)
    client.set_stream_priority(b, Priority(0, True))  # b first, then a
    assert link.run(until=lambda: b in got.first and a in got.first, max_time=5)
    assert len(got.data[a]) < 100_000
    client.reset_stream(a, 7)  # abandon a mid-transfer
    server.stop_stream(b, 9)  # the server asks the client to stop b: client resets it
    assert link.run(until=lambda: a in got.resets and b in got.resets, max_time=5)
    assert got.resets == {a: 7, b: 9}
    for sid in (a, b):  # the server's send sides are done too, so both streams close
        server.send_stream_data(sid, b"", end_stream=True)
    link.run(max_time=2)
    assert a not in client._streams and b not in client._streams
    assert a not in client.scheduler and b not in client.scheduler


def test_receiver_sends_max_stream_data_from_the_dirty_set():
    # 3 MB on one stream against our server's 1 MB stream window: only MAX_STREAM_DATA frames
    # from the dirty set let it through.
    link = make_link(server="rr", window=fixed_window_congestion_control(60_000))
    receiver, ids = upload(link, [(3_000_000, None)], max_time=60)
    assert receiver.done


# -- interop with stock aioquic, both directions, with loss ---------------------------------------


@pytest.mark.parametrize("name", SCHEDULERS)
@pytest.mark.parametrize("side", ["client", "server", "both"])
def test_interop_echo_with_loss(name, side):
    rng = random.Random(f"{name}-{side}")
    link = make_link(
        client=name if side in ("client", "both") else None,
        server=name if side in ("server", "both") else None,
        drop=lambda direction, index, data: index > 4 and rng.random() < 0.05,
    )
    client, server = link.client, link.server
    echo = Receiver(server, echo=True)
    link.on_server_event = echo
    answers = Receiver(client)
    link.on_client_event = answers
    t = link.now
    classes = (REALTIME, FREE, BULK)
    expected = {}
    for i in range(12):
        sid = client.get_next_available_stream_id()
        size = rng.choice([1, 800, 8_000, 30_000])
        payload = rng.randbytes(size)
        expected[sid] = payload
        if isinstance(client, ScheduledQuicConnection):
            client.set_stream_qos(sid, qos(classes[i % 3], t + rng.uniform(0.1, 3)))
        client.send_stream_data(sid, payload, end_stream=True)
        if i == 3:
            uni = client.get_next_available_stream_id(is_unidirectional=True)
            client.send_stream_data(uni, b"control-ish", end_stream=True)
    assert link.run(until=lambda: len(answers.done) == 12, max_time=60)
    for sid, payload in expected.items():
        assert bytes(answers.data[sid]) == payload
        assert bytes(echo.data[sid]) == payload
    link.run(max_time=2)  # let the last ACKs land
    for conn in (client, server):
        bidi_left = [sid for sid in conn._streams if sid % 4 in (0, 1)]
        assert bidi_left == []
        if isinstance(conn, ScheduledQuicConnection):
            assert conn.scheduler.ready_count == 0
            assert not conn._parked_stream_credit and not conn._parked_connection_credit


# -- the scheduler replaces the per-packet walks -------------------------------------------------


def test_no_per_packet_work_for_idle_open_streams():
    link = make_link(client="edf", window=fixed_window_congestion_control(100_000))
    client = link.client
    link.server._local_max_streams_bidi.value = 2_100  # announced through MAX_STREAMS
    for _ in range(2_000):
        client.send_stream_data(client.get_next_available_stream_id(), b"?")
    link.run(max_time=0.2)
    assert len(client._streams) >= 2_000
    calls = defaultdict(int)
    for method in ("_write_stream_limits", "_write_stop_sending_frame", "_write_reset_stream_frame"):
        original = getattr(client, method)

        def counted(*args, _original=original, _name=method, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        setattr(client, method, counted)
    sched = client.scheduler
    original_next = sched.next

    def next_counted(now):
        calls["next"] += 1
        return original_next(now)

    sched.next = next_counted
    busy = client.get_next_available_stream_id()
    client.send_stream_data(busy, b"x" * 300_000, end_stream=True)
    sent_before = link.stats["c2s_sent"]
    receiver = Receiver(link.server)
    link.on_server_event = receiver
    assert link.run(until=lambda: busy in receiver.done, max_time=10)
    packets = link.stats["c2s_sent"] - sent_before
    assert packets > 200
    assert calls["_write_stream_limits"] < packets // 4  # only streams that received data
    assert calls["next"] <= 2 * packets + 10


# -- QoS API -----------------------------------------------------------------------------------


def test_qos_set_before_the_stream_exists_and_forgotten_after():
    link = make_link(client="edf", server=None)
    client = link.client
    sid = client.get_next_available_stream_id()
    q = qos(REALTIME, link.now + 1)
    client.set_stream_qos(sid, q)
    client.send_stream_data(sid, b"x" * 10, end_stream=True)
    assert client.scheduler.entry(sid).qos == q
    echo = Receiver(link.server, echo=True)
    link.on_server_event = echo
    link.run(max_time=1)
    assert sid not in client._streams and sid not in client.stream_qos
    client.set_stream_qos(sid, q)  # a finished stream: ignored, not resurrected
    assert sid not in client.stream_qos


def test_priority_update_before_qos_overrides_the_header_priority():
    link = make_link(client="rfc9218")
    client = link.client
    sid = client.get_next_available_stream_id()
    client.set_stream_priority(sid, Priority(0, True))
    client.set_stream_qos(sid, qos(BULK, link.now + 1, Priority(6)))
    assert client.stream_qos[sid].priority == Priority(0, True)
    client.send_stream_data(sid, b"x")
    assert client.scheduler.entry(sid).effective_priority == Priority(0, True)


def test_unidirectional_streams_without_qos_are_control_streams_and_go_first():
    link = make_link(client="abs")
    client = link.client
    receiver = Receiver(link.server)
    link.on_server_event = receiver
    big = client.get_next_available_stream_id()
    client.set_stream_qos(big, qos(REALTIME, link.now + 1, Priority(0)))
    client.send_stream_data(big, b"b" * 50_000, end_stream=True)
    control = client.get_next_available_stream_id(is_unidirectional=True)
    client.send_stream_data(control, b"c" * 3_000, end_stream=True)
    assert client.scheduler.entry(control).control
    assert link.run(until=lambda: len(receiver.done) == 2, max_time=10)
    assert receiver.done[control] < receiver.first.get(big, 0) + 0.05
    assert receiver.done[control] < receiver.done[big]


def test_unknown_scheduler_and_unsupported_aioquic_are_clear_errors():
    with pytest.raises(ValueError, match="unknown scheduler"):
        ScheduledQuicConnection(configuration=None, scheduler="nope")
    _check_aioquic_version("1.7.0")
    _check_aioquic_version("1.7.99")
    for bad in ("1.6.2", "1.8.0", "2.0.0", "garbage"):
        with pytest.raises(ImportError, match=r"aioquic >=1.7,<1.8.*" + bad.replace(".", r"\.")):
            _check_aioquic_version(bad)


@pytest.mark.parametrize("name", ["rr", "edf", "adaptive"])
def test_zero_rtt_data_goes_through_the_scheduler(name):
    tickets: dict[bytes, object] = {}
    got_ticket = []
    server_kwargs = {"session_ticket_fetcher": tickets.pop,
                     "session_ticket_handler": lambda t: tickets.__setitem__(t.ticket, t)}
    first = SimulatedLink.pair(
        scheduled(name), QuicConnection, client_kwargs={"session_ticket_handler": got_ticket.append},
        server_kwargs=server_kwargs,
    )
    first.connect()
    first.run(max_time=0.2)
    assert got_ticket
    second = SimulatedLink.pair(
        scheduled(name), QuicConnection, client_config={"session_ticket": got_ticket[-1]},
        server_kwargs=server_kwargs,
    )
    client = second.client
    receiver = Receiver(second.server)
    second.on_server_event = receiver
    start = second.now
    client.connect(("10.0.0.2", 443), now=start)
    sid = client.get_next_available_stream_id()
    client.set_stream_qos(sid, qos(REALTIME, second.now + 1))
    client.send_stream_data(sid, b"early" * 100, end_stream=True)
    assert second.run(until=lambda: sid in receiver.done, max_time=5)
    assert receiver.data[sid] == b"early" * 100
    assert second.server.tls.early_data_accepted
    assert receiver.first[sid] < start + 1.5 * second.delay  # in the first flight: 0-RTT
