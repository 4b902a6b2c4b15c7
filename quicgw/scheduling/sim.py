"""Deterministic in-memory QUIC connection pairs: no sockets, a simulated clock.

Used by the scheduler tests and by ``python -m quicgw.bench.packet``. A :class:`SimulatedLink`
joins a client and a server :class:`~aioquic.quic.connection.QuicConnection` (stock or
scheduled, either side) through a path with a one-way delay, an optional bottleneck rate and an
optional drop rule, and runs them as a discrete-event simulation: the clock jumps to the next
datagram arrival or connection timer, so a run is exactly reproducible and takes no wall time.

``fixed_window_congestion_control(window)`` registers a congestion controller whose window
never changes, which makes "which stream's bytes filled each packet" depend only on the
scheduler (Reno's growth and back-off would otherwise blur the order tests look at).
"""

from __future__ import annotations

import datetime
import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.congestion.base import QuicCongestionControl, register_congestion_control
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent
from aioquic.quic.packet_builder import QuicSentPacket

CLIENT_ADDR = ("10.0.0.1", 4433)
SERVER_ADDR = ("10.0.0.2", 443)
ALPN = ["quicgw-test"]
TIMER_LATENESS = 1e-6


@cache
def self_signed_certificate() -> tuple[object, object]:
    """An EC P-256 certificate for ``localhost``, made once per process (tests need no files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def client_configuration(**overrides) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=list(ALPN), server_name="localhost")
    config.verify_mode = 0  # ssl.CERT_NONE: the test certificate is self-signed
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def server_configuration(**overrides) -> QuicConfiguration:
    cert, key = self_signed_certificate()
    config = QuicConfiguration(is_client=False, alpn_protocols=list(ALPN))
    config.certificate = cert
    config.private_key = key
    for key_, value in overrides.items():
        setattr(config, key_, value)
    return config


class _FixedWindow(QuicCongestionControl):
    """A congestion window that neither grows on ACKs nor shrinks on loss."""

    def __init__(self, *, max_datagram_size: int, window: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.congestion_window = window

    def on_packet_acked(self, *, now: float, packet: QuicSentPacket) -> None:
        self.bytes_in_flight -= packet.sent_bytes

    def on_packet_sent(self, *, packet: QuicSentPacket) -> None:
        self.bytes_in_flight += packet.sent_bytes

    def on_packets_expired(self, *, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_packets_lost(self, *, now: float, packets: Iterable[QuicSentPacket]) -> None:
        for packet in packets:
            self.bytes_in_flight -= packet.sent_bytes

    def on_persistent_congestion(self) -> None:
        pass

    def on_rtt_measurement(self, *, now: float, rtt: float) -> None:
        pass


def fixed_window_congestion_control(window: int) -> str:
    """Register (once) a fixed-window congestion controller; return its algorithm name."""
    name = f"quicgw-fixed-{window}"

    def factory(*, max_datagram_size: int) -> QuicCongestionControl:
        return _FixedWindow(max_datagram_size=max_datagram_size, window=window)

    register_congestion_control(name, factory)
    return name


# A drop rule sees (direction, datagram index in that direction, datagram) and returns True to
# drop it. Direction is "c2s" or "s2c".
DropRule = Callable[[str, int, bytes], bool]


@dataclass
class _Direction:
    name: str
    free_at: float = 0.0  # when the bottleneck finishes serialising what it already carries
    sent: int = 0
    dropped: int = 0
    bytes: int = 0


@dataclass
class SimulatedLink:
    """A client and a server joined by a simulated path.

    ``rate`` is the bottleneck in bytes per second (``None``: unlimited), ``delay`` the one-way
    propagation delay in seconds. Events each connection emits are handed to ``on_client_event``
    / ``on_server_event`` (default: appended with their time to ``client_events`` /
    ``server_events``).
    """

    client: QuicConnection
    server: QuicConnection
    delay: float = 0.01
    rate: float | None = None
    drop: DropRule | None = None
    now: float = 0.0
    on_client_event: Callable[[QuicEvent, float], None] | None = None
    on_server_event: Callable[[QuicEvent, float], None] | None = None
    client_events: list[tuple[float, QuicEvent]] = field(default_factory=list)
    server_events: list[tuple[float, QuicEvent]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._in_flight: list[tuple[float, int, bool, bytes]] = []  # (arrival, seq, to_server, data)
        self._seq = itertools.count()
        self._c2s = _Direction("c2s")
        self._s2c = _Direction("s2c")

    @classmethod
    def pair(
        cls,
        client_cls: Callable[..., QuicConnection] = QuicConnection,
        server_cls: Callable[..., QuicConnection] = QuicConnection,
        *,
        client_kwargs: dict | None = None,
        server_kwargs: dict | None = None,
        client_config: dict | None = None,
        server_config: dict | None = None,
        **link_kwargs,
    ) -> SimulatedLink:
        """Make both endpoints (``*_cls`` is called with ``configuration=`` plus ``*_kwargs``)."""
        client = client_cls(
            configuration=client_configuration(**(client_config or {})), **(client_kwargs or {})
        )
        server = server_cls(
            configuration=server_configuration(**(server_config or {})),
            original_destination_connection_id=client.original_destination_connection_id,
            **(server_kwargs or {}),
        )
        return cls(client, server, **link_kwargs)

    # -- driving -----------------------------------------------------------------------------

    def connect(self, max_time: float = 5.0) -> None:
        """Run the handshake until both sides have completed it."""
        self.client.connect(SERVER_ADDR, now=self.now)
        self.run(until=lambda: self.client._handshake_complete and self.server._handshake_complete,
                 max_time=max_time)
        if not (self.client._handshake_complete and self.server._handshake_complete):
            raise RuntimeError("handshake did not complete in the simulated link")

    def pump(self) -> None:
        """Let both endpoints send whatever they can at the current time."""
        self._send(self.client, self._c2s, to_server=True)
        self._send(self.server, self._s2c, to_server=False)

    def run(self, until: Callable[[], bool] | None = None, max_time: float = 60.0) -> bool:
        """Advance the simulation until ``until()`` holds, nothing is left to do or ``max_time``
        simulated seconds pass. Returns whether ``until`` held."""
        deadline = self.now + max_time
        self.pump()
        while True:
            if until is not None and until():
                return True
            next_time = self._next_time()
            if next_time is None or next_time > deadline:
                return until is not None and until()
            if not (self._in_flight and self._in_flight[0][0] <= next_time):
                # A timer, not an arrival: fire it a microsecond late, as real event loops do.
                # Exactly on time, aioquic's loss detection can compute ``now - loss_delay``
                # a rounding error short of the packet's send time and re-arm the same timer.
                next_time += TIMER_LATENESS
            self.now = max(self.now, next_time)
            self._deliver_due()
            for conn in (self.client, self.server):
                timer = conn.get_timer()
                if timer is not None and timer <= self.now:
                    conn.handle_timer(now=self.now)
            self._drain_events()
            self.pump()

    # -- internals ---------------------------------------------------------------------------

    def _send(self, conn: QuicConnection, direction: _Direction, to_server: bool) -> None:
        if not conn._network_paths:  # a server has no path until its first datagram arrives
            return
        for data, _addr in conn.datagrams_to_send(now=self.now):
            index = direction.sent
            direction.sent += 1
            direction.bytes += len(data)
            if self.drop is not None and self.drop(direction.name, index, data):
                direction.dropped += 1
                continue
            start = max(self.now, direction.free_at)
            if self.rate is not None:
                direction.free_at = start + len(data) / self.rate
                start = direction.free_at
            heapq.heappush(self._in_flight, (start + self.delay, next(self._seq), to_server, data))

    def _next_time(self) -> float | None:
        times = [self._in_flight[0][0]] if self._in_flight else []
        for conn in (self.client, self.server):
            timer = conn.get_timer()
            if timer is not None:
                times.append(timer)
        return min(times) if times else None

    def _deliver_due(self) -> None:
        while self._in_flight and self._in_flight[0][0] <= self.now:
            _, _, to_server, data = heapq.heappop(self._in_flight)
            if to_server:
                self.server.receive_datagram(data, CLIENT_ADDR, now=self.now)
            else:
                self.client.receive_datagram(data, SERVER_ADDR, now=self.now)

    def _drain_events(self) -> None:
        for conn, handler, sink in (
            (self.client, self.on_client_event, self.client_events),
            (self.server, self.on_server_event, self.server_events),
        ):
            while (event := conn.next_event()) is not None:
                if handler is not None:
                    handler(event, self.now)
                else:
                    sink.append((self.now, event))

    @property
    def stats(self) -> dict[str, int]:
        return {
            "c2s_sent": self._c2s.sent, "c2s_dropped": self._c2s.dropped,
            "s2c_sent": self._s2c.sent, "s2c_dropped": self._s2c.dropped,
        }
