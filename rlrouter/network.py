"""The optional network stage: request and response bytes cross a lossy bottleneck link whose
packets are filled by one of our stream schedulers (:mod:`quicgw.scheduling`: the same sans-IO
scheduler objects the QUIC connection uses), or by a TCP-like single ordered byte stream.

Model (one direction of a link; a :class:`NetworkStage` has an uplink for requests and a
downlink for responses):

* Packets of ``mss`` payload bytes (+ ``overhead``) leave back to back at ``rate`` when some
  stream has bytes; each arrives ``delay`` later, or is lost with probability ``loss``.
* QUIC (``rr fcfs edf abs ml rfc9218 adaptive``): for every packet the scheduler picks the
  stream (``next``), the stream's bytes go out (``requeue`` / ``mark_blocked``). A lost
  packet's bytes are given back to *its* stream when the loss is detected (``detect_rtts``
  round trips after sending) and rescheduled like any data: other streams are not held up.
* ``tcp``: HTTP/2 over TLS/TCP. Frames of the streams are interleaved round-robin into one
  ordered byte stream; a lost segment is retransmitted on detection and every byte behind it
  waits for it (head-of-line blocking).

A request's upload completes when its last byte arrives; only then can the gateway route it.
A response's bytes are queued when the engine finishes it (the whole response at once: a
conservative stand-in for token streaming), and the request scores if its last response byte
reaches the client by the deadline, counted from when the client sent the request.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, fields

import numpy as np

from quicgw.core.classes import DEFAULT_CLASS_TABLE, ClassTable
from quicgw.core.qos import Priority, RequestQoS

NETWORK_SCHEDULERS = ("rr", "fcfs", "edf", "abs", "ml", "rfc9218", "adaptive", "tcp")


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    scheduler: str = "edf"
    rate_mbps: float = 20.0  # bottleneck, each direction
    delay_ms: float = 50.0  # one-way propagation delay
    loss: float = 0.005  # packet loss probability
    mss: int = 1200  # payload bytes per packet
    overhead: int = 60  # header bytes per packet
    detect_rtts: float = 1.25  # loss detected this many RTTs after sending
    request_header_bytes: int = 300
    request_bytes_per_token: float = 40.0  # ~8 KB for a 200-token chat prompt (the poster's 8 KB)
    response_bytes_per_token: float = 150.0  # SSE chunk per token (OpenAI streaming format)

    @classmethod
    def from_dict(cls, data: dict | NetworkConfig) -> NetworkConfig:
        if isinstance(data, NetworkConfig):
            return data
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown network config keys {sorted(unknown)} (known: {sorted(known)})")
        cfg = cls(**data)
        if cfg.scheduler not in NETWORK_SCHEDULERS:
            raise ValueError(f"unknown network scheduler {cfg.scheduler!r} "
                             f"(choose from {', '.join(NETWORK_SCHEDULERS)})")
        if cfg.rate_mbps <= 0 or cfg.mss < 1 or not 0 <= cfg.loss < 1:
            raise ValueError("network needs rate_mbps > 0, mss >= 1 and 0 <= loss < 1")
        return cfg

    @property
    def rate_bps(self) -> float:
        return self.rate_mbps * 1e6 / 8.0


class Link:
    """One direction of the bottleneck, driven by the caller's clock (sans-IO)."""

    def __init__(self, cfg: NetworkConfig, rng: np.random.Generator) -> None:
        from quicgw.scheduling import make_scheduler  # aioquic only when a network is used

        self.cfg = cfg
        self.tcp = cfg.scheduler == "tcp"
        self.sched = make_scheduler("rr" if self.tcp else cfg.scheduler)
        self.rng = rng
        self.rate = cfg.rate_bps
        self.delay = cfg.delay_ms / 1000.0
        self.detect = cfg.detect_rtts * 2 * self.delay
        self.t = 0.0  # when the link can start its next packet
        self._opening: list[tuple[float, int, int, int, RequestQoS]] = []  # (t, seq, sid, n, qos)
        self._retx: list[tuple[float, int, int, int]] = []  # (t, seq, sid, nbytes)
        self._seq = itertools.count()
        self._backlog: dict[int, int] = {}
        self._undelivered: dict[int, int] = {}
        self._last: dict[int, float] = {}
        self._frontier = 0.0  # tcp: in-order delivery time of the byte stream so far
        # Loss draws come in blocks (one numpy call per 4096 packets).
        self._u = np.empty(0)
        self._ui = 0
        self.packets = 0
        self.lost = 0

    def open(self, t: float, sid: int, nbytes: int, qos: RequestQoS) -> None:
        """Stream ``sid`` has ``nbytes`` to send from time ``t`` on."""
        heapq.heappush(self._opening, (t, next(self._seq), sid, max(1, int(nbytes)), qos))

    def _lost(self) -> bool:
        if self.cfg.loss <= 0:
            return False
        if self._ui >= len(self._u):
            self._u = self.rng.random(4096)
            self._ui = 0
        u = self._u[self._ui]
        self._ui += 1
        return u < self.cfg.loss

    def run(self, until: float) -> list[tuple[int, float]]:
        """Send every packet that starts by ``until``; returns ``(sid, completion time)`` of
        the streams whose last byte has been sent (their completion may lie after ``until``)."""
        done: list[tuple[int, float]] = []
        sched = self.sched
        opening, retx = self._opening, self._retx
        mss, over, rate, delay = self.cfg.mss, self.cfg.overhead, self.rate, self.delay
        while True:
            t = self.t
            while opening and opening[0][0] <= t:
                _, _, sid, n, qos = heapq.heappop(opening)
                sched.add(sid, qos)
                self._backlog[sid] = n
                self._undelivered[sid] = n
                self._last[sid] = 0.0
                sched.add_backlog(sid, n)
                sched.mark_ready(sid)
            while retx and retx[0][0] <= t:
                _, _, sid, n = heapq.heappop(retx)
                self._backlog[sid] += n
                sched.add_backlog(sid, n)
                sched.mark_ready(sid)
            sid = sched.next(t)
            if sid is None:
                nxt = min(opening[0][0] if opening else np.inf, retx[0][0] if retx else np.inf)
                if nxt > until or nxt == np.inf:
                    if until != np.inf:
                        self.t = max(t, until)  # idle until then
                    return done
                self.t = nxt
                continue
            if t > until:
                return done
            left = self._backlog[sid]
            n = mss if left > mss else left
            left -= n
            self._backlog[sid] = left
            sched.requeue(sid, n, t)
            if left == 0:
                sched.mark_blocked(sid)
            end = t + (n + over) / rate
            self.t = end
            self.packets += 1
            lost = self._lost()
            if self.tcp:
                arrival = end + delay
                if lost:
                    self.lost += 1
                    # Retransmitted on detection, ahead of new data; everything behind waits.
                    arrival = end + self.detect + (n + over) / rate + delay
                    while self._lost():
                        self.lost += 1
                        arrival += self.detect
                if arrival > self._frontier:
                    self._frontier = arrival
                arrival = self._frontier
            elif lost:
                self.lost += 1
                heapq.heappush(retx, (end + self.detect, next(self._seq), sid, n))
                continue
            else:
                arrival = end + delay
            if arrival > self._last[sid]:
                self._last[sid] = arrival
            rest = self._undelivered[sid] - n
            self._undelivered[sid] = rest
            if rest == 0:
                done.append((sid, self._last.pop(sid)))
                del self._backlog[sid], self._undelivered[sid]
                sched.remove(sid)


class NetworkStage:
    """Uplink (requests) and downlink (responses) for the simulator."""

    def __init__(self, cfg: NetworkConfig, rng: np.random.Generator,
                 classes: ClassTable = DEFAULT_CLASS_TABLE) -> None:
        self.cfg = cfg
        self.classes = list(classes)
        self.up = Link(cfg, rng)
        self.down = Link(cfg, rng)
        self._inst: dict[int, int] = {}
        self._ready: list[tuple[int, float]] = []

    @classmethod
    def from_config(cls, data: dict | NetworkConfig, rng: np.random.Generator,
                    classes: ClassTable = DEFAULT_CLASS_TABLE) -> NetworkStage:
        return cls(NetworkConfig.from_dict(data), rng, classes)

    def _qos(self, c: int, sent: float) -> RequestQoS:
        tc = self.classes[c]
        return RequestQoS(tc, sent, sent + tc.deadline_ms / 1000.0, Priority(tc.urgency))

    def upload(self, arrivals) -> list[float]:
        """When each request's last byte reaches the gateway (routing-independent)."""
        cfg = self.cfg
        sent = arrivals.time.tolist()
        sizes = (cfg.request_header_bytes
                 + cfg.request_bytes_per_token * arrivals.input_tokens).tolist()
        for k, (t, c, b) in enumerate(zip(sent, arrivals.cls.tolist(), sizes, strict=True)):
            self.up.open(t, k, b, self._qos(c, t))
        at = list(sent)
        for sid, t_done in self.up.run(np.inf):
            at[sid] = t_done
        return at

    def response_delay_estimate(self, output_tokens: int) -> float:
        """Unloaded time to deliver a response (for reward shaping and routers)."""
        cfg = self.cfg
        nbytes = output_tokens * cfg.response_bytes_per_token
        packets = -(-nbytes // cfg.mss)
        return self.down.delay + (nbytes + packets * cfg.overhead) / cfg.rate_bps

    def download(self, rid: int, t_ready: float, output_tokens: int, sent: float, cls: int,
                 instance: int) -> None:
        self._inst[rid] = instance
        self.down.open(t_ready, rid, output_tokens * self.cfg.response_bytes_per_token,
                       self._qos(cls, sent))

    def delivered(self, t: float) -> list[tuple[int, int, float]]:
        """``(request, instance, time its response reached the client)`` for responses whose
        last byte has been sent by ``t``."""
        return [(rid, self._inst.pop(rid), t_done) for rid, t_done in self.down.run(t)]
