"""The bound: the most requests of each class that any schedule could complete by its deadline.

A fluid model of the emulated link (sans-IO, deterministic). Each request uploads ``up_bytes``
over the uplink (capacity ``up_rate`` bytes/s, one-way delay ``up_delay`` s); once the whole
request has arrived, its response of ``down_bytes`` is sent over the downlink (``down_rate``,
``down_delay``). Completion is when the last response byte reaches the client. Bytes are
payload only (no packet, TLS, QUIC or HTTP overhead), there is no loss, no handshake (the
experiment's clock starts on an established connection) and no congestion control: the link is
fully used from the first instant. So no real schedule can beat it.

For each class separately (the other classes are given nothing: they can only take capacity
away), we run an offline EDF on both links and keep the largest set of that class's requests
that all meet their deadlines (Moore-Hodgson: add requests in deadline order; when the set
stops being feasible, drop its largest request, ties to the latest deadline). Within a class
every request has the same size and relative deadline, so this is exact for burst arrivals and
for arrivals in any order (deadline order equals arrival order); across classes it is a
per-class upper bound, not a joint schedule.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FluidRequest:
    id: int
    cls: str
    arrival: float  # seconds, experiment clock
    deadline: float  # absolute, same clock
    up_bytes: float
    down_bytes: float


@dataclass(frozen=True, slots=True)
class FluidLink:
    up_rate: float  # bytes/s
    down_rate: float
    up_delay: float  # one-way, seconds
    down_delay: float

    @classmethod
    def from_profile(cls, profile) -> FluidLink:  # netem.profiles.LinkProfile
        return cls(profile.uplink.bytes_per_s, profile.downlink.bytes_per_s,
                   profile.uplink.delay_ms / 1000.0, profile.downlink.delay_ms / 1000.0)

    @classmethod
    def loss_limited(cls, profile, mss: int = 1200) -> FluidLink:
        """A *reference*, not the bound: the same fluid link with each direction's capacity
        capped at the long-run throughput a Reno-style loss-based congestion controller reaches
        under that direction's random loss (:func:`mathis_rate`; aioquic's default is NewReno,
        Linux TCP's CUBIC matches Reno in this regime). It says how much of the bound any
        scheduler can reach on top of such a sender; slow start at the beginning can do better
        for a while."""
        up, down = profile.uplink, profile.downlink
        rtt = (up.delay_ms + down.delay_ms) / 1000.0 + mss / up.bytes_per_s + mss / down.bytes_per_s
        return cls(min(up.bytes_per_s, mathis_rate(mss, rtt, up.loss.mean_loss)),
                   min(down.bytes_per_s, mathis_rate(mss, rtt, down.loss.mean_loss)),
                   up.delay_ms / 1000.0, down.delay_ms / 1000.0)


def mathis_rate(mss: float, rtt: float, loss: float) -> float:
    """Mathis, Semke, Mahdavi and Ott (1997): a Reno sender's long-run throughput under random
    loss ``p``, ``MSS / RTT * sqrt(3 / (2 p))`` bytes/s (infinite without loss)."""
    if loss <= 0:
        return float("inf")
    return mss / rtt * (1.5 / loss) ** 0.5


def preemptive_edf(jobs: Sequence[tuple[float, float, float]], rate: float) -> list[float]:
    """Finish times of ``(release, deadline, work_bytes)`` jobs under preemptive EDF on one
    server of ``rate`` bytes/s (ties by index). O(n log n)."""
    n = len(jobs)
    finish = [0.0] * n
    order = sorted(range(n), key=lambda i: jobs[i][0])
    ready: list[tuple[float, int]] = []  # (deadline, index)
    remaining = [w for _, _, w in jobs]
    t = 0.0
    k = 0
    while k < n or ready:
        if not ready:
            t = max(t, jobs[order[k]][0])
        while k < n and jobs[order[k]][0] <= t:
            i = order[k]
            heapq.heappush(ready, (jobs[i][1], i))
            k += 1
        d, i = ready[0]
        next_release = jobs[order[k]][0] if k < n else float("inf")
        done_at = t + remaining[i] / rate
        if done_at <= next_release:
            heapq.heappop(ready)
            t = done_at
            remaining[i] = 0.0
            finish[i] = t
        else:
            remaining[i] -= (next_release - t) * rate
            t = next_release
    return finish


def completion_times(reqs: Sequence[FluidRequest], link: FluidLink) -> list[float]:
    """When each request's response fully arrives if all of ``reqs`` share the link by EDF."""
    up = preemptive_edf([(r.arrival, r.deadline, r.up_bytes) for r in reqs], link.up_rate)
    down = preemptive_edf(
        [(u + link.up_delay, r.deadline, r.down_bytes) for u, r in zip(up, reqs, strict=True)],
        link.down_rate)
    return [d + link.down_delay for d in down]


def feasible(reqs: Sequence[FluidRequest], link: FluidLink) -> bool:
    eps = 1e-9
    return all(c <= r.deadline + eps for c, r in zip(completion_times(reqs, link), reqs, strict=True))


def max_on_time(reqs: Iterable[FluidRequest], link: FluidLink) -> list[FluidRequest]:
    """The largest set of ``reqs`` that can all meet their deadlines (Moore-Hodgson on EDF)."""
    chosen: list[FluidRequest] = []
    for r in sorted(reqs, key=lambda r: (r.deadline, r.arrival, r.id)):
        chosen.append(r)
        if not feasible(chosen, link):
            worst = max(chosen, key=lambda x: (x.up_bytes + x.down_bytes, x.deadline, x.id))
            chosen.remove(worst)
    return chosen


def class_bound(reqs: Iterable[FluidRequest], link: FluidLink) -> dict[str, int]:
    """Per class: the most of its requests any schedule could complete by their deadlines."""
    by_class: dict[str, list[FluidRequest]] = {}
    for r in reqs:
        by_class.setdefault(r.cls, []).append(r)
    return {c: len(max_on_time(rs, link)) for c, rs in by_class.items()}
