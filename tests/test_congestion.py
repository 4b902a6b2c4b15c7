"""quicgw.congestion: the BBR-style controller on synthetic ACK/loss sequences, its pacer, and
its use by aioquic connections (in-memory, simulated clock)."""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from aioquic.quic.congestion.base import create_congestion_control
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.packet_builder import QuicSentPacket
from aioquic.quic.recovery import QuicPacketPacer
from aioquic.tls import Epoch

from quicgw import congestion
from quicgw.congestion import (
    DRAIN,
    PROBE_BW,
    PROBE_RTT,
    STARTUP,
    BBRCongestionControl,
    ModelPacer,
    WindowedMax,
)

MSS = 1200
RATE = 625_000.0  # bytes/s: the 3G profile's 5 Mbit/s
DELAY = 0.05  # one way: 100 ms RTT
BDP = RATE * 2 * DELAY


# -- a synthetic path: sender -> bottleneck (rate, tail-drop buffer, random loss) -> receiver ---


@dataclass
class PathResult:
    delivered: int = 0
    lost: int = 0
    queue_drops: int = 0
    random_drops: int = 0
    modes: list[tuple[float, str]] = field(default_factory=list)
    mode_bw: list[float] = field(default_factory=list)  # max_bw at each mode change
    cwnd: list[tuple[float, int]] = field(default_factory=list)
    pacing: list[tuple[float, float]] = field(default_factory=list)
    max_queue: int = 0

    def goodput(self, duration: float) -> float:
        return self.delivered / duration

    def min_cwnd_after(self, t: float) -> int:
        return min(c for when, c in self.cwnd if when >= t)


def run_path(cc, *, duration: float, loss: float | Callable[[float], float] = 0.0,
             buffer: int = 1000, seed: int = 1, rate: float = RATE, delay: float = DELAY,
             app_rate: float | None = None,
             reverse_queue: Callable[[float], float] | None = None) -> PathResult:
    """Drive ``cc`` (an aioquic congestion controller) over a simulated path for ``duration``
    seconds with an always-backlogged sender (or one whose application writes ``app_rate``
    bytes/s); ``loss`` is a probability or a function of time giving one; ``reverse_queue(t)``
    delays the ACK of a packet arriving at ``t`` (the queue of the peer's data on the ACKs'
    path, as on a connection carrying data both ways). Every packet is acknowledged on
    arrival; a packet is declared lost once a packet sent three later is acknowledged (RFC
    9002's packet threshold). Pacing: the controller's own pacer if it has one, else aioquic's
    at cwnd / smoothed RTT, as QuicPacketRecovery does. RTT samples are whole microseconds, as
    from a real clock."""
    rng = random.Random(seed)
    pacer = cc.make_pacer() if hasattr(cc, "make_pacer") else QuicPacketPacer(
        max_datagram_size=MSS)
    res = PathResult()
    now = 0.0
    loss_at = loss if callable(loss) else (lambda t: loss)
    pn = 0
    outstanding: dict[int, QuicSentPacket] = {}
    acks: list[tuple[float, int]] = []  # (arrival at the sender, packet number)
    queue: deque[float] = deque()  # departure times of packets in the bottleneck buffer
    free_at = 0.0
    srtt: float | None = None
    app_bytes = 0.0
    last_mode = None

    def sendable() -> bool:
        if app_rate is not None and app_bytes < MSS:
            return False
        return cc.bytes_in_flight + MSS <= cc.congestion_window

    while now < duration:
        # send what the window, the pacer and the application allow
        while sendable() and pacer.next_send_time(now) is None:
            packet = QuicSentPacket(epoch=Epoch.ONE_RTT, in_flight=True, is_ack_eliciting=True,
                                    is_crypto_packet=False, packet_number=pn,
                                    packet_type=QuicPacketType.ONE_RTT, sent_time=now,
                                    sent_bytes=MSS)
            cc.on_packet_sent(packet=packet)
            pacer.update_after_send(now=now)
            outstanding[pn] = packet
            if app_rate is not None:
                app_bytes -= MSS
            while queue and queue[0] <= now:
                queue.popleft()
            if rng.random() < loss_at(now):
                res.random_drops += 1
            elif len(queue) >= buffer:
                res.queue_drops += 1
            else:
                free_at = max(now, free_at) + MSS / rate
                queue.append(free_at)
                res.max_queue = max(res.max_queue, len(queue))
                back = reverse_queue(free_at + delay) if reverse_queue else 0.0
                heapq.heappush(acks, (free_at + 2 * delay + back, pn))
            pn += 1
        if app_rate is not None and app_bytes < MSS and hasattr(cc, "on_app_limited"):
            cc.on_app_limited()

        # the next event: an ACK, the pacer, or the application
        times = [acks[0][0]] if acks else []
        wait = pacer.next_send_time(now)
        if wait is not None and cc.bytes_in_flight + MSS <= cc.congestion_window:
            times.append(wait)
        if app_rate is not None:
            times.append(now + MSS / app_rate)
        if not times:
            break
        step = max(min(times), now)
        if app_rate is not None:
            app_bytes = min(app_bytes + (step - now) * app_rate, 64 * MSS)
        now = step

        while acks and acks[0][0] <= now:
            _, acked_pn = heapq.heappop(acks)
            packet = outstanding.pop(acked_pn, None)
            if packet is None:
                continue  # already declared lost (a spurious loss): aioquic ignores it too
            cc.on_packet_acked(now=now, packet=packet)
            res.delivered += MSS
            rtt = round(now - packet.sent_time, 6)
            srtt = rtt if srtt is None else 7 / 8 * srtt + rtt / 8
            cc.on_rtt_measurement(now=now, rtt=rtt)
            lost = [p for n, p in outstanding.items() if n <= acked_pn - 3]
            if lost:
                for p in lost:
                    del outstanding[p.packet_number]
                res.lost += len(lost)
                cc.on_packets_lost(now=now, packets=lost)
            pacer.update_rate(congestion_window=cc.congestion_window, smoothed_rtt=srtt)
        mode = getattr(cc, "mode", None)
        if mode != last_mode:
            res.modes.append((now, mode))
            res.mode_bw.append(getattr(cc, "max_bw", 0.0))
            last_mode = mode
        res.cwnd.append((now, cc.congestion_window))
        if getattr(cc, "pacing_rate", None):
            res.pacing.append((now, cc.pacing_rate))
    return res


def bbr(**options) -> BBRCongestionControl:
    return BBRCongestionControl(max_datagram_size=MSS, **options)


def reno():
    return create_congestion_control("reno", max_datagram_size=MSS)


def mean_pacing(res: PathResult, start: float) -> float:
    rates = [r for t, r in res.pacing if t >= start]
    return sum(rates) / len(rates)


# -- the windowed max filter ------------------------------------------------------------------


def test_windowed_max_keeps_the_max_of_the_last_rounds():
    f = WindowedMax(10)
    assert f.get(0) == 0.0
    f.update(1, 5.0)
    f.update(2, 3.0)
    assert f.get(2) == 5.0
    assert f.get(10) == 5.0  # round 1 is still within the last 10 rounds
    assert f.get(11) == 3.0  # round 1 expired, round 2 remains
    f.update(12, 4.0)
    assert f.get(12) == 4.0  # a larger sample replaces the smaller older one
    f.update(30, 1.0)
    assert f.get(30) == 1.0  # everything older expired; the newest sample stays


# -- the model converges ----------------------------------------------------------------------


def test_bandwidth_and_min_rtt_converge_without_loss():
    cc = bbr()
    res = run_path(cc, duration=6.0)
    assert cc.mode == PROBE_BW
    assert cc.max_bw == pytest.approx(RATE, rel=0.05)
    assert cc.min_rtt == pytest.approx(2 * DELAY + MSS / RATE, abs=0.003)
    assert res.goodput(6.0) > 0.85 * RATE
    # cwnd is the model's 2 BDP (+ 3 packets of headroom), not a loss-driven sawtooth
    assert cc.congestion_window == pytest.approx(2 * cc.max_bw * cc.min_rtt + 3 * MSS, rel=0.02)
    # pacing follows the model, with the gain cycle around 1.0
    assert mean_pacing(res, 2.0) == pytest.approx(RATE, rel=0.1)
    assert res.queue_drops == 0 and res.lost == 0


def test_half_percent_random_loss_does_not_collapse_the_window():
    cc = bbr()
    res = run_path(cc, duration=10.0, loss=0.005, buffer=50)
    assert res.random_drops > 10  # the loss really happened
    assert cc.max_bw == pytest.approx(RATE, rel=0.06)
    # after startup the window never fell below one BDP, and goodput is most of the link
    assert res.min_cwnd_after(2.0) >= BDP
    assert res.goodput(10.0) > 0.85 * RATE
    # isolated random loss is not congestion: the lower bounds almost never engage
    assert cc.congested_rounds <= 3
    # Reno on the same path and loss draws: the window halves on every loss (Mathis)
    r = run_path(reno(), duration=10.0, loss=0.005, buffer=50)
    assert r.goodput(10.0) < 0.6 * res.goodput(10.0)


def test_sustained_ten_percent_loss_backs_off():
    light = bbr()
    run_path(light, duration=8.0, loss=0.005, buffer=50, seed=3)
    heavy = bbr()
    res = run_path(heavy, duration=8.0, loss=0.10, buffer=50, seed=3)
    # most rounds are congested, and the short-term bounds pull rate and window down: the
    # window to about one BDP (from the model's two), the pacing rate by about a quarter
    assert heavy.congested_rounds >= heavy.round_count // 2
    assert light.congested_rounds <= 2
    assert mean_pacing(res, 2.0) < 0.8 * RATE
    cwnd_late = [c for t, c in res.cwnd if t >= 2.0]
    assert sum(cwnd_late) / len(cwnd_late) < 0.6 * light.congestion_window
    # ...but it keeps probing: it does not collapse to the minimum window for good
    assert sum(cwnd_late) / len(cwnd_late) > 4 * congestion.MIN_CWND_PACKETS * MSS


def test_lower_bounds_are_released_when_loss_stops():
    cc = bbr()
    res = run_path(cc, duration=8.0, loss=lambda t: 0.10 if t < 4.0 else 0.0, buffer=50, seed=5)
    assert cc.congested_rounds > 0
    assert min(r for t, r in res.pacing if t > 2.0) < 0.6 * RATE
    # the next bandwidth probe forgets bw_lo / inflight_lo, and nothing sets them again: the
    # rate is back at the link's within a cycle (eight rounds) of the loss stopping
    assert math.isinf(cc.bw_lo) and math.isinf(cc.inflight_lo)
    assert mean_pacing(res, 5.5) > 0.9 * RATE


# -- startup ----------------------------------------------------------------------------------


def test_startup_exits_on_a_bandwidth_plateau_then_drains():
    cc = bbr(startup_delay_exit=False)
    res = run_path(cc, duration=3.0, buffer=10_000)
    assert cc.startup_exit == "plateau"
    modes = [m for _, m in res.modes]
    assert modes[:3] == [STARTUP, DRAIN, PROBE_BW]
    exit_time = next(t for t, m in res.modes if m == DRAIN)
    # doubling from 32 packets to the ~52-packet BDP takes a round or two, then three rounds
    # without 25 % growth: about 5-6 round trips (plus the queue the overshoot builds)
    assert 0.4 < exit_time < 1.2
    assert cc.max_bw == pytest.approx(RATE, rel=0.05)


def test_startup_delay_signal_exits_before_the_buffer_overflows():
    # A buffer smaller than the BDP, as on the 3G profile: the plateau test alone needs three
    # rounds at up to 2 BDP in flight and overflows it; the delay signal stops a round earlier.
    plateau = bbr(startup_delay_exit=False)
    r_plateau = run_path(plateau, duration=1.5, buffer=40)
    delay = bbr()
    r_delay = run_path(delay, duration=1.5, buffer=40)
    assert delay.startup_exit == "delay"
    assert plateau.startup_exit in ("plateau", "loss")
    assert r_delay.queue_drops < r_plateau.queue_drops / 2
    assert delay.max_bw == pytest.approx(RATE, rel=0.1)


def test_startup_resumes_when_the_delay_was_not_its_own_queue():
    # A 20 Mbit/s path; while this sender ramps, the peer's data builds a queue on the ACKs'
    # path (0 to 40 ms, then it drains). The delay signal ends startup far below the link
    # rate; the next bandwidth probes find more, and startup resumes to the real rate.
    rate = 4 * RATE

    def reverse(t: float) -> float:  # builds up, stays, drains (never reordering ACKs)
        return max(0.0, min(0.04, (t - 0.25) * 0.2, 0.04 - (t - 0.8) * 0.2))

    cc = bbr()
    res = run_path(cc, duration=4.0, rate=rate, reverse_queue=reverse)
    exits = [i for i, (t, m) in enumerate(res.modes) if m == DRAIN]
    assert exits and res.modes[exits[0]][0] < 0.8
    assert res.mode_bw[exits[0]] < 0.6 * rate  # the first exit was far below the link rate
    assert cc.startup_resumed >= 1
    assert cc.max_bw == pytest.approx(rate, rel=0.05)
    # without the reverse queue the same path needs no second startup
    clean = bbr()
    run_path(clean, duration=4.0, rate=rate)
    assert clean.startup_resumed == 0 and clean.max_bw == pytest.approx(rate, rel=0.05)


def test_startup_exits_on_congestive_loss():
    cc = bbr(startup_delay_exit=False)
    run_path(cc, duration=2.0, buffer=8)  # a tiny buffer: startup overflows it at once
    assert cc.startup_exit == "loss"
    assert cc.full_bw_reached


def test_app_limited_rounds_do_not_end_startup():
    # The application writes a fifth of the link rate: the delivery rate plateaus because of
    # the application, not the path, so startup must not take it for the path's bandwidth.
    cc = bbr(startup_delay_exit=False)
    run_path(cc, duration=3.0, app_rate=RATE / 5)
    assert cc.mode == STARTUP and not cc.full_bw_reached
    assert cc.max_bw == pytest.approx(RATE / 5, rel=0.15)


def test_initial_pacing_rate_comes_from_the_initial_window_and_first_rtt():
    cc = bbr()
    assert cc.pacing_rate is None
    cc.on_rtt_measurement(now=0.1, rtt=0.1)
    assert cc.pacing_rate == pytest.approx(congestion.STARTUP_PACING_GAIN * 32 * MSS / 0.1)
    assert bbr(initial_window=10).congestion_window == 10 * MSS


def test_send_rate_estimate_is_the_ramp_target_in_startup_then_the_model():
    # adaptive predicts completion times from it: in startup the model holds only the
    # handshake's samples, and a prediction that low would give up on streams for good
    cc = bbr()
    assert cc.send_rate_estimate == 0.0
    cc.on_rtt_measurement(now=0.1, rtt=0.1)
    assert cc.send_rate_estimate == cc.pacing_rate > RATE
    run_path(cc, duration=3.0)
    assert cc.full_bw_reached
    assert cc.send_rate_estimate == pytest.approx(RATE, rel=0.05)


# -- ProbeRTT ---------------------------------------------------------------------------------


def test_probe_rtt_after_ten_seconds_without_a_lower_rtt():
    cc = bbr()
    res = run_path(cc, duration=11.5)
    probe = [t for t, m in res.modes if m == PROBE_RTT]
    assert probe and 10.0 < probe[0] < 10.6
    during = [c for t, c in res.cwnd if probe[0] < t < probe[0] + 0.2]
    assert min(during) == congestion.MIN_CWND_PACKETS * MSS
    assert res.modes[-1][1] == PROBE_BW  # and back after about 200 ms and a round


# -- the pacer --------------------------------------------------------------------------------


def _packets_in_two_seconds(pacer) -> int:
    """Packets a pacer lets through in 2 s when asked every 0.1 ms."""
    sent = 0
    t = 0.0
    while t < 2.0:
        if pacer.next_send_time(t) is None:
            pacer.update_after_send(t)
            sent += 1
        t += 0.0001
    return sent

def test_model_pacer_holds_the_rate_however_often_it_is_woken():
    # aioquic's own pacer releases a packet on any wake-up with any credit; ours needs a whole
    # packet time, so 10,000 wake-ups a second still send at the pacing rate.
    cc = bbr()
    cc.on_rtt_measurement(now=0.0, rtt=0.1)
    cc._set_pacing_rate(250_000.0, force=True)
    pacer = ModelPacer(cc, max_datagram_size=MSS)
    sent = _packets_in_two_seconds(pacer)
    burst = pacer.bucket_max * 250_000 / MSS  # the initial bucket
    assert sent * MSS / 2.0 == pytest.approx(250_000, abs=(burst + 2) * MSS / 2.0)
    stock = QuicPacketPacer(max_datagram_size=MSS)
    stock.update_rate(congestion_window=25_000, smoothed_rtt=0.1)  # also 250 KB/s
    stock_sent = _packets_in_two_seconds(stock)
    assert stock_sent > 3 * sent  # the hole ModelPacer closes


def test_pacer_follows_the_controller_rate_changes():
    cc = bbr()
    pacer = cc.make_pacer()
    assert pacer.packet_time is None  # no rate before the first RTT sample
    cc.on_rtt_measurement(now=0.0, rtt=0.1)
    assert pacer.packet_time == pytest.approx(MSS / cc.pacing_rate)


# -- aioquic integration ----------------------------------------------------------------------


def test_registered_with_aioquic_and_the_variants():
    for name, iw, hystart in (("bbr", 32, True), ("bbr-iw10", 10, True),
                              ("bbr-nohystart", 32, False)):
        cc = create_congestion_control(name, max_datagram_size=MSS)
        assert isinstance(cc, BBRCongestionControl)
        assert cc.congestion_window == iw * MSS and cc.startup_delay_exit is hystart
    assert congestion.check_algorithm("reno") == "reno"
    with pytest.raises(ValueError, match="unknown congestion control 'vegas'"):
        congestion.check_algorithm("vegas")


def _transfer(cc_name: str, loss: float, size: int = 600_000, seed: int = 7) -> float:
    """Seconds to upload ``size`` bytes on one stream over an in-memory 3G-like link."""
    from quicgw.scheduling.connection import ScheduledQuicConnection
    from quicgw.scheduling.sim import SimulatedLink

    rng = random.Random(seed)
    link = SimulatedLink.pair(
        ScheduledQuicConnection, ScheduledQuicConnection,
        client_kwargs={"scheduler": "edf"}, server_kwargs={"scheduler": "edf"},
        client_config={"congestion_control_algorithm": cc_name},
        server_config={"congestion_control_algorithm": cc_name},
        delay=DELAY, rate=RATE, drop=lambda direction, index, data: rng.random() < loss)
    link.connect()
    assert isinstance(link.client._loss._pacer, ModelPacer) == cc_name.startswith("bbr")
    start = link.now
    received = 0
    done: list[float] = []

    def on_server(event, now):
        nonlocal received
        data = getattr(event, "data", None)
        if data is not None:
            received += len(data)
            if getattr(event, "end_stream", False):
                done.append(now)

    link.on_server_event = on_server
    sid = link.client.get_next_available_stream_id()
    link.client.send_stream_data(sid, bytes(size), end_stream=True)
    assert link.run(until=lambda: bool(done), max_time=60)
    assert received == size
    return done[0] - start


def test_in_memory_transfer_under_random_loss_bbr_vs_reno():
    ideal = 600_000 / RATE + 2 * DELAY
    t_bbr = _transfer("bbr", 0.005)
    t_reno = _transfer("reno", 0.005)
    assert t_bbr < 1.5 * ideal
    assert t_reno > 1.3 * t_bbr


# -- configuration wiring -----------------------------------------------------------------------


def test_gateway_config_and_sdk_name_the_congestion_controller():
    from quicgw.client import AsyncClient
    from quicgw.config import ConfigError, parse_config

    assert parse_config({}).gateway.congestion_control == "bbr"
    assert parse_config({"gateway": {"congestion_control": "reno"}}).gateway.congestion_control \
        == "reno"
    with pytest.raises(ConfigError, match="congestion_control"):
        parse_config({"gateway": {"congestion_control": "vegas"}})
    client = AsyncClient(host="127.0.0.1", port=1, verify=False)
    assert client._quic_configuration().congestion_control_algorithm == "bbr"
    client = AsyncClient(host="127.0.0.1", port=1, verify=False, congestion_control="cubic")
    assert client._quic_configuration().congestion_control_algorithm == "cubic"
    with pytest.raises(ValueError, match="unknown congestion control"):
        AsyncClient(host="127.0.0.1", port=1, congestion_control="vegas")


def test_netem_experiment_takes_the_congestion_controller():
    from netem.experiment import parse_args

    assert parse_args(["--quick"]).congestion_control == "bbr"
    assert parse_args(["--congestion-control", "reno"]).congestion_control == "reno"
    with pytest.raises(SystemExit):
        parse_args(["--congestion-control", "vegas"])
