"""The poster's network workload (sans-IO, seeded): three classes, N requests, burst or Poisson.

Real-time short requests (8 KB, 1 s deadline), low-priority short requests (8 KB, 2 s) and
long-input requests (102.4 KB, 7 s); the client sends N requests (80 in the poster), each of a
class chosen uniformly at random, and the server echoes the payload. KB here is 1000 bytes
(102.4 KB = 102400 bytes = 100 KiB).

They map onto the gateway's classes ``realtime`` (priority 0), ``free`` (1) and ``bulk`` (2);
the deadlines are sent in ``x-deadline-ms``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from netem.bound import FluidRequest


@dataclass(frozen=True, slots=True)
class ExpClass:
    name: str  # the gateway's traffic class
    label: str
    size: int  # request bytes (and response bytes: echoed)
    deadline_ms: float


POSTER_CLASSES: tuple[ExpClass, ...] = (
    ExpClass("realtime", "real-time short", 8000, 1000.0),
    ExpClass("free", "low-priority short", 8000, 2000.0),
    ExpClass("bulk", "long input", 102400, 7000.0),
)
CLASS_BY_NAME = {c.name: c for c in POSTER_CLASSES}


@dataclass(frozen=True, slots=True)
class WorkItem:
    id: int
    cls: str
    size: int
    deadline_ms: float
    offset_s: float  # when the request is issued, from the start of the run

    def to_dict(self) -> dict:
        return asdict(self)


def make_workload(n: int = 80, seed: int = 0, arrivals: str = "burst", rate: float = 20.0,
                  classes: tuple[ExpClass, ...] = POSTER_CLASSES) -> list[WorkItem]:
    """``arrivals="burst"``: all at t=0 (issued in id order); ``"poisson"``: exponential gaps
    at ``rate`` requests per second, the first at t=0."""
    if n < 1:
        raise ValueError("need at least one request")
    if arrivals not in ("burst", "poisson"):
        raise ValueError(f"arrivals must be burst or poisson, not {arrivals!r}")
    if arrivals == "poisson" and not rate > 0:
        raise ValueError("poisson arrivals need --rate > 0")
    rng = random.Random(f"netem-workload-{seed}")
    t = 0.0
    items = []
    for i in range(n):
        c = rng.choice(classes)
        if arrivals == "poisson" and i > 0:
            t += rng.expovariate(rate)
        items.append(WorkItem(i, c.name, c.size, c.deadline_ms, t))
    return items


def fluid_requests(items: list[WorkItem]) -> list[FluidRequest]:
    return [FluidRequest(w.id, w.cls, w.offset_s, w.offset_s + w.deadline_ms / 1000.0,
                         w.size, w.size) for w in items]


def payload(seed: int, item_id: int, size: int) -> bytes:
    """The request body: incompressible, reproducible."""
    return random.Random(f"netem-payload-{seed}-{item_id}").randbytes(size)
