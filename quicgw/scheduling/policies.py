"""The scheduling policies: rr, fcfs, edf, abs, ml and rfc9218 (``adaptive`` has its own module).

Each is a :class:`~quicgw.scheduling.base.StreamScheduler`; see that module for the interface and
for how control and unclassified streams are handled.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict

from quicgw.scheduling.base import StreamEntry, StreamScheduler


class RoundRobinScheduler(StreamScheduler):
    """``rr``: ready streams take turns of about one packet each (deficit round-robin).

    aioquic's own order is round-robin at packet granularity too, but found by walking every
    open stream for every packet; here the ring holds only ready streams.
    """

    name = "rr"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self._ring: OrderedDict[int, StreamEntry] = OrderedDict()

    def _enqueue(self, entry: StreamEntry) -> None:
        self._ring_push(self._ring, entry)

    def _peek(self, now: float) -> StreamEntry | None:
        return self._ring_head(self._ring)

    def _on_sent(self, entry: StreamEntry, sent_bytes: int, now: float) -> None:
        self._ring_sent(entry, sent_bytes)

    def _reposition(self, entry: StreamEntry) -> None:
        pass  # QoS does not affect round-robin: keep the stream's place in the ring


class FCFSScheduler(StreamScheduler):
    """``fcfs``: the stream opened first sends until it has nothing ready, then the next."""

    name = "fcfs"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self._heap: list = []

    def _enqueue(self, entry: StreamEntry) -> None:
        self._heap_push(self._heap, (entry.seq,), entry)

    def _peek(self, now: float) -> StreamEntry | None:
        return self._heap_peek(self._heap)

    def _reposition(self, entry: StreamEntry) -> None:
        pass  # the order is the order of arrival, whatever the QoS


class EDFScheduler(StreamScheduler):
    """``edf``: earliest absolute deadline first; unclassified streams (no deadline) last, in
    arrival order."""

    name = "edf"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self._heap: list = []

    def _enqueue(self, entry: StreamEntry) -> None:
        self._heap_push(self._heap, (entry.deadline, entry.seq), entry)

    def _peek(self, now: float) -> StreamEntry | None:
        return self._heap_peek(self._heap)


class AbsolutePriorityScheduler(StreamScheduler):
    """``abs``: strict class priority (level 0 first); within a level, arrival order.

    A lower level waits as long as any higher level has a ready stream: that is the point (and
    the risk) of absolute priority.
    """

    name = "abs"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self._heap: list = []

    def _enqueue(self, entry: StreamEntry) -> None:
        self._heap_push(self._heap, (entry.level, entry.seq), entry)

    def _peek(self, now: float) -> StreamEntry | None:
        return self._heap_peek(self._heap)


class MultiLevelScheduler(StreamScheduler):
    """``ml``: tier 0 by EDF; lower tiers strictly after it, each tier round-robin.

    Tiers come from :attr:`TrafficClass.tier`; the number of tiers is a small constant (the
    configuration allows 0-7, plus one for unclassified streams), so scanning them is O(1).
    """

    name = "ml"

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self._top: list = []  # tier 0: EDF heap
        self._rings: dict[int, OrderedDict[int, StreamEntry]] = {}
        self._tiers: list[int] = []  # sorted tiers that have a ring

    def _enqueue(self, entry: StreamEntry) -> None:
        tier = entry.tier
        if tier == 0:
            self._heap_push(self._top, (entry.deadline, entry.seq), entry)
            return
        ring = self._rings.get(tier)
        if ring is None:
            ring = self._rings[tier] = OrderedDict()
            bisect.insort(self._tiers, tier)
        self._ring_push(ring, entry)

    def _peek(self, now: float) -> StreamEntry | None:
        entry = self._heap_peek(self._top)
        if entry is not None:
            return entry
        for tier in self._tiers:
            ring = self._rings[tier]
            if ring:
                return self._ring_head(ring)
        return None

    def _on_sent(self, entry: StreamEntry, sent_bytes: int, now: float) -> None:
        self._ring_sent(entry, sent_bytes)


class RFC9218Scheduler(StreamScheduler):
    """``rfc9218``: urgency 0 (first) to 7; within an urgency, non-incremental streams one at a
    time in ascending stream ID, then incremental streams sharing bandwidth round-robin (RFC
    9218 section 10)."""

    name = "rfc9218"
    URGENCIES = 8

    def __init__(self, **options) -> None:
        super().__init__(**options)
        self._sequential: list[list] = [[] for _ in range(self.URGENCIES)]
        self._incremental: list[OrderedDict[int, StreamEntry]] = [
            OrderedDict() for _ in range(self.URGENCIES)
        ]

    def _enqueue(self, entry: StreamEntry) -> None:
        priority = entry.effective_priority
        if priority.incremental:
            self._ring_push(self._incremental[priority.urgency], entry)
        else:
            self._heap_push(self._sequential[priority.urgency], (entry.stream_id, entry.seq), entry)

    def _peek(self, now: float) -> StreamEntry | None:
        for urgency in range(self.URGENCIES):
            entry = self._heap_peek(self._sequential[urgency])
            if entry is not None:
                return entry
            ring = self._incremental[urgency]
            if ring:
                return self._ring_head(ring)
        return None

    def _on_sent(self, entry: StreamEntry, sent_bytes: int, now: float) -> None:
        self._ring_sent(entry, sent_bytes)
