"""Admission (sans-IO): one queue per model instance, in-flight requests capped at its batch.

A request that finds a free slot is admitted at once; otherwise it waits in a heap ordered by
:meth:`quicgw.core.qos.RequestQoS.order_key` (class priority, absolute deadline, arrival) and a
sequence number. Releasing a slot admits the head of the queue. The queue keeps the instance's
:class:`~quicgw.core.routing.InstanceLoad` (the router's live view) up to date itself, so the
router always sees the same numbers admission acts on.

The I/O shell attaches whatever it waits on (an asyncio future) to :attr:`Ticket.waiter`; this
module never looks at it.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

from quicgw.core.routing import InstanceLoad

WAITING, ADMITTED, DONE, CANCELLED = "waiting", "admitted", "done", "cancelled"


@dataclass(slots=True)
class Ticket:
    key: tuple
    state: str = WAITING
    waiter: Any = None


@dataclass(slots=True)
class AdmissionQueue:
    capacity: int
    load: InstanceLoad = field(default_factory=InstanceLoad)
    _heap: list[tuple[tuple, int, Ticket]] = field(default_factory=list)
    _seq: itertools.count = field(default_factory=itertools.count)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError("admission capacity must be >= 1")

    @property
    def in_flight(self) -> int:
        return self.load.in_flight

    @property
    def queued(self) -> int:
        return self.load.queued

    def submit(self, key: tuple) -> Ticket:
        """A new request with order ``key``; check ``ticket.state`` for ADMITTED or WAITING."""
        ticket = Ticket(key)
        if self.load.in_flight < self.capacity and not self.load.queued:
            ticket.state = ADMITTED
            self.load.in_flight += 1
        else:
            heapq.heappush(self._heap, (key, next(self._seq), ticket))
            self.load.queued += 1
        return ticket

    def release(self, ticket: Ticket) -> list[Ticket]:
        """The request is finished (or abandoned): free its slot or its place in line.

        Returns the tickets admitted as a result (the shell wakes their waiters). Releasing a
        ticket twice is harmless.
        """
        if ticket.state == ADMITTED:
            ticket.state = DONE
            self.load.in_flight -= 1
            return self._admit()
        if ticket.state == WAITING:
            ticket.state = CANCELLED  # stays in the heap, skipped when it reaches the top
            self.load.queued -= 1
        return []

    def resize(self, capacity: int) -> list[Ticket]:
        if capacity < 1:
            raise ValueError("admission capacity must be >= 1")
        self.capacity = capacity
        return self._admit()

    def _admit(self) -> list[Ticket]:
        admitted = []
        while self._heap and self.load.in_flight < self.capacity:
            _, _, ticket = heapq.heappop(self._heap)
            if ticket.state != WAITING:
                continue
            ticket.state = ADMITTED
            self.load.queued -= 1
            self.load.in_flight += 1
            admitted.append(ticket)
        return admitted

    def waiting(self) -> list[Ticket]:
        """Waiting tickets in admission order (for tests and the dashboard)."""
        return [t for _, _, t in sorted(self._heap) if t.state == WAITING]
