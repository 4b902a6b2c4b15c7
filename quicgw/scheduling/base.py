"""The sans-IO stream scheduler interface and the bookkeeping every policy shares.

A scheduler knows streams, their QoS and whether each is *ready* (has bytes the transport could
send now). The transport asks :meth:`StreamScheduler.next` which stream's bytes go into the
packet being built, writes one frame of that stream, then reports back with
:meth:`StreamScheduler.requeue` (it sent N bytes and may send more) or
:meth:`StreamScheduler.mark_blocked` (nothing more to send, or flow control holds it). It has no
clock and no I/O: ``now`` is passed in by the caller.

Three kinds of stream:

* **control** streams (HTTP/3 control and QPACK encoder/decoder streams) always go first, in
  round-robin among themselves: a late SETTINGS or QPACK instruction would stall every request.
* **classified** streams carry a :class:`~quicgw.core.qos.RequestQoS` and are ordered by the
  policy.
* **unclassified** streams (no QoS yet, or none ever) are best effort: policies that order by
  class or deadline put them after every classified stream (deadline +inf, lowest level, last
  tier); ``rr`` and ``fcfs`` treat them like any other; ``rfc9218`` gives them the RFC's default
  priority (u=3, non-incremental) unless a PRIORITY_UPDATE said otherwise.

Every decision is O(log n) in the number of streams: heaps with lazy deletion and O(1)
round-robin rings (``OrderedDict`` keeps a doubly linked list, so ``move_to_end`` and popping the
front are O(1)). A heap record is ``(key, token, entry)``; it is live while ``token`` equals the
entry's current token. Blocking a stream leaves its record in place (a stream that blocks and
unblocks per LLM token does not churn the heap); the record is dropped when it reaches the top
while its stream is still blocked. Heaps are compacted when stale records outnumber live ones,
so memory stays O(n). Every key ends with the entry's arrival number, unique per entry, so two
records never compare their entries.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import ClassVar

from quicgw.core.qos import Priority, RequestQoS

INF = float("inf")
# Level / tier given to unclassified streams: after every real class (config caps priority at 63
# and tier at 7).
UNCLASSIFIED_LEVEL = 1 << 20
DEFAULT_PRIORITY = Priority()

# Round-robin turn: a little under one packet's worth of stream data (a 1200-byte packet carries
# about 1170), so a full frame always ends a turn.
DEFAULT_QUANTUM = 1000

# A heap holds more records than live entries once streams block, change QoS or go away;
# compact it when it is this many times larger than the number of streams (plus slack).
_COMPACT_FACTOR = 2
_COMPACT_SLACK = 64


class StreamEntry:
    """What a scheduler knows about one stream."""

    __slots__ = (
        "stream_id", "qos", "priority", "control", "seq", "ready", "queued", "token",
        "backlog", "ring", "credit", "lane", "deadline",
    )

    def __init__(self, stream_id: int, qos: RequestQoS | None, control: bool, seq: int) -> None:
        self.stream_id = stream_id
        self.qos = qos
        self.priority: Priority | None = None  # RFC 9218 override (PRIORITY_UPDATE)
        self.control = control
        self.seq = seq  # order of arrival at the scheduler: the FCFS order and the tie-breaker
        self.ready = False
        self.queued = False  # has a live record in the policy's heap or ring
        self.token = 0
        self.backlog = 0  # bytes the transport said are waiting (new data and retransmissions)
        self.ring: OrderedDict[int, StreamEntry] | None = None
        self.credit = 0  # round-robin: bytes the stream may still send in its turn
        self.lane = 0  # policy-specific (adaptive: on time or late)
        self.deadline = INF  # cached effective deadline

    # Effective QoS attributes; unclassified streams sort after classified ones.
    @property
    def level(self) -> int:
        return self.qos.traffic_class.priority if self.qos is not None else UNCLASSIFIED_LEVEL

    @property
    def tier(self) -> int:
        return self.qos.traffic_class.tier if self.qos is not None else UNCLASSIFIED_LEVEL

    @property
    def effective_priority(self) -> Priority:
        if self.priority is not None:
            return self.priority
        return self.qos.priority if self.qos is not None else DEFAULT_PRIORITY

    def __repr__(self) -> str:
        cls = self.qos.class_name if self.qos is not None else ("control" if self.control else "-")
        return f"<stream {self.stream_id} {cls} ready={self.ready} backlog={self.backlog}>"


class StreamScheduler:
    """Base class: entry bookkeeping, control streams, ready accounting.

    Subclasses implement :meth:`_enqueue`, :meth:`_peek` and, where their structure is a ring,
    :meth:`_on_blocked`, :meth:`_invalidate` and :meth:`_on_sent`.
    """

    name: ClassVar[str] = ""

    def __init__(self, *, quantum: int = DEFAULT_QUANTUM) -> None:
        if quantum <= 0:
            raise ValueError("quantum must be positive")
        self.quantum = quantum
        self._entries: dict[int, StreamEntry] = {}
        self._control: OrderedDict[int, StreamEntry] = OrderedDict()
        self._seq = 0
        self._ready_count = 0

    # -- the interface the transport uses ---------------------------------------------------

    def add(self, stream_id: int, qos: RequestQoS | None = None, *, control: bool = False) -> None:
        """Start tracking a stream (not ready until :meth:`mark_ready`)."""
        if stream_id in self._entries:
            raise ValueError(f"stream {stream_id} is already scheduled")
        entry = StreamEntry(stream_id, qos, control, self._seq)
        self._seq += 1
        entry.deadline = qos.deadline if qos is not None else INF
        self._entries[stream_id] = entry
        self._on_added(entry)

    def update(self, stream_id: int, qos: RequestQoS | None) -> None:
        """The stream's QoS changed (classified, reclassified, or a new deadline)."""
        entry = self._entries[stream_id]
        entry.qos = qos
        entry.deadline = qos.deadline if qos is not None else INF
        self._reposition(entry)

    def set_priority(self, stream_id: int, priority: Priority | None) -> None:
        """RFC 9218 parameters that override the QoS's own (a PRIORITY_UPDATE), or ``None``."""
        entry = self._entries[stream_id]
        entry.priority = priority
        self._reposition(entry)

    def set_control(self, stream_id: int, control: bool = True) -> None:
        """Make a stream a control stream (always first) or a normal one."""
        entry = self._entries[stream_id]
        if entry.control == control:
            return
        if entry.ready:
            self._unqueue(entry)
        entry.control = control
        if entry.ready:
            self._queue(entry)

    def add_backlog(self, stream_id: int, nbytes: int) -> None:
        """``nbytes`` more bytes wait on the stream (new data or data to retransmit)."""
        entry = self._entries[stream_id]
        entry.backlog += nbytes
        self._backlog_changed(entry, nbytes)

    def mark_ready(self, stream_id: int) -> None:
        """The stream has something the transport could send now."""
        entry = self._entries[stream_id]
        if not entry.ready:
            entry.ready = True
            self._ready_count += 1
            self._queue(entry)

    def mark_blocked(self, stream_id: int) -> None:
        """The stream has nothing to send now, or flow control holds it."""
        entry = self._entries[stream_id]
        if entry.ready:
            entry.ready = False
            self._ready_count -= 1
            if entry.control:
                del self._control[stream_id]
            else:
                self._on_blocked(entry)

    def next(self, now: float) -> int | None:
        """The stream whose bytes should fill the packet being built, or ``None``."""
        if self._control:
            return next(iter(self._control))
        entry = self._peek(now)
        return None if entry is None else entry.stream_id

    def requeue(self, stream_id: int, sent_bytes: int, now: float) -> None:
        """The transport sent ``sent_bytes`` of the stream's data and it stays ready."""
        entry = self._entries[stream_id]
        taken = min(sent_bytes, entry.backlog)
        entry.backlog -= taken
        if taken:
            self._backlog_changed(entry, -taken)
        if entry.control:
            if entry.ready:
                self._control.move_to_end(stream_id)  # control streams: one frame per turn
        else:
            self._on_sent(entry, sent_bytes, now)

    def remove(self, stream_id: int) -> None:
        """Forget the stream (it finished or was discarded)."""
        entry = self._entries.pop(stream_id, None)
        if entry is None:
            return
        if entry.ready:
            self._ready_count -= 1
        entry.ready = False
        if entry.control:
            self._control.pop(stream_id, None)
        self._on_removed(entry)
        self._invalidate(entry)

    # -- inspection ---------------------------------------------------------------------------

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def ready_count(self) -> int:
        return self._ready_count

    def is_ready(self, stream_id: int) -> bool:
        return self._entries[stream_id].ready

    def backlog(self, stream_id: int) -> int:
        return self._entries[stream_id].backlog

    def entry(self, stream_id: int) -> StreamEntry:
        return self._entries[stream_id]

    def observe_rate(self, bytes_per_second: float) -> None:
        """A hint of the path's send rate (congestion window / smoothed RTT). Most policies
        ignore it; ``adaptive`` uses it until it has measured the rate itself."""

    wants_rate_hint: ClassVar[bool] = False

    # -- shared plumbing ----------------------------------------------------------------------

    def _queue(self, entry: StreamEntry) -> None:
        if entry.control:
            self._control[entry.stream_id] = entry
        elif not entry.queued:
            entry.queued = True
            self._enqueue(entry)

    def _unqueue(self, entry: StreamEntry) -> None:
        if entry.control:
            self._control.pop(entry.stream_id, None)
        else:
            self._invalidate(entry)

    def _reposition(self, entry: StreamEntry) -> None:
        """The entry's ordering key changed: drop its record and queue it afresh."""
        if entry.control:
            return
        self._invalidate(entry)
        if entry.ready:
            self._queue(entry)

    def _invalidate(self, entry: StreamEntry) -> None:
        entry.token += 1
        entry.queued = False
        if entry.ring is not None:
            del entry.ring[entry.stream_id]
            entry.ring = None

    # Round-robin rings: deficit round-robin (DRR). A stream's turn lasts until it has used its
    # credit; the credit is topped up by ``quantum`` bytes per turn and what it overspent carries
    # over, so continuously ready streams get the same bytes in the long run, whatever the frame
    # sizes (a frame squeezed into the last bytes of the congestion window does not cost a whole
    # turn). With frames of a packet and a quantum under a packet, a turn is one packet. O(1)
    # amortised: a skipped turn adds ``quantum``, and no stream overspends by more than a frame.
    def _ring_push(self, ring: OrderedDict[int, StreamEntry], entry: StreamEntry) -> None:
        ring[entry.stream_id] = entry
        entry.ring = ring
        entry.credit = self.quantum

    def _ring_head(self, ring: OrderedDict[int, StreamEntry]) -> StreamEntry | None:
        while ring:
            entry = next(iter(ring.values()))
            if entry.credit > 0:
                return entry
            entry.credit += self.quantum  # overspent earlier: this turn only pays it back
            ring.move_to_end(entry.stream_id)
        return None

    def _ring_sent(self, entry: StreamEntry, sent_bytes: int) -> None:
        if entry.ring is not None:
            entry.credit -= sent_bytes
            if entry.credit <= 0:
                entry.credit += self.quantum
                entry.ring.move_to_end(entry.stream_id)

    # Heap helpers (O(log n), lazy deletion).
    def _heap_push(self, heap: list, key: tuple, entry: StreamEntry) -> None:
        heapq.heappush(heap, (key, entry.token, entry))
        if len(heap) > _COMPACT_FACTOR * len(self._entries) + _COMPACT_SLACK:
            heap[:] = [rec for rec in heap if rec[1] == rec[2].token]
            heapq.heapify(heap)

    @staticmethod
    def _heap_peek(heap: list) -> StreamEntry | None:
        while heap:
            _key, token, entry = heap[0]
            if token == entry.token:
                if entry.ready:
                    return entry
                # Blocked while queued: retire the record now that it reached the top.
                entry.token += 1
                entry.queued = False
            heapq.heappop(heap)
        return None

    # -- policy hooks -------------------------------------------------------------------------

    def _on_added(self, entry: StreamEntry) -> None:
        pass

    def _enqueue(self, entry: StreamEntry) -> None:
        raise NotImplementedError

    def _peek(self, now: float) -> StreamEntry | None:
        raise NotImplementedError

    def _on_blocked(self, entry: StreamEntry) -> None:
        # Heaps keep the record (see module docstring); rings drop it at once.
        if entry.ring is not None:
            self._invalidate(entry)

    def _on_sent(self, entry: StreamEntry, sent_bytes: int, now: float) -> None:
        pass

    def _on_removed(self, entry: StreamEntry) -> None:
        pass

    def _backlog_changed(self, entry: StreamEntry, delta: int) -> None:
        pass
