"""The link model of one direction (sans-IO, deterministic, seeded).

A packet offered at time ``now`` (seconds, any monotonic clock) is

1. lost with the loss model's probability (as netem does, before it takes any capacity);
2. tail-dropped if the bottleneck buffer already holds ``queue_packets`` packets (those not yet
   fully serialised);
3. otherwise serialised at ``rate`` behind the packets already queued (a token bucket with a
   one-packet bucket: a FIFO transmitter), then delayed by the one-way ``delay`` plus a jitter
   sample, never overtaking the packet ahead of it.

``offer`` returns the time at which the packet leaves the far end of the link, or ``None`` if it
was dropped. The I/O shell (``netem.userspace``) holds the packet until then.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from netem.loss import LossModel
from netem.profiles import DirectionProfile


@dataclass(slots=True)
class LinkStats:
    offered: int = 0
    offered_bytes: int = 0
    delivered: int = 0
    delivered_bytes: int = 0
    lost: int = 0
    queue_drops: int = 0
    max_backlog: int = 0

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in self.__slots__}


class LinkDirection:
    def __init__(self, profile: DirectionProfile, seed: int = 0) -> None:
        self.profile = profile
        self._bytes_per_s = profile.bytes_per_s
        self._delay = profile.delay_ms / 1000.0
        self._jitter = profile.jitter_ms / 1000.0
        self._limit = profile.queue_packets
        self.loss = LossModel(profile.loss, seed=seed * 2 + 1)
        self._jitter_rng = random.Random(seed * 2 + 2)
        self._tx_ends: deque[float] = deque()  # serialisation end times of buffered packets
        self._tx_free = float("-inf")  # when the transmitter finishes the last accepted packet
        self._last_release = float("-inf")
        self.stats = LinkStats()

    def backlog(self, now: float) -> int:
        """Packets in the bottleneck buffer (including the one being serialised)."""
        q = self._tx_ends
        while q and q[0] <= now:
            q.popleft()
        return len(q)

    def offer(self, now: float, size: int) -> float | None:
        st = self.stats
        st.offered += 1
        st.offered_bytes += size
        if self.loss.lose():
            st.lost += 1
            return None
        backlog = self.backlog(now)
        if backlog >= self._limit:
            st.queue_drops += 1
            return None
        start = now if self._tx_free < now else self._tx_free
        tx_end = start + size / self._bytes_per_s
        self._tx_free = tx_end
        self._tx_ends.append(tx_end)
        if backlog + 1 > st.max_backlog:
            st.max_backlog = backlog + 1
        delay = self._delay
        if self._jitter:
            delay = max(0.0, self._jitter_rng.gauss(delay, self._jitter))
        release = tx_end + delay
        if release < self._last_release:
            release = self._last_release  # FIFO: jitter never reorders
        self._last_release = release
        st.delivered += 1
        st.delivered_bytes += size
        return release
