"""``adaptive``: EDF that gives up on streams that cannot make it, and priority order under overload.

The source poster found EDF best and asked for a scheduler that changes with load. EDF is
optimal while every deadline can be met, and collapses under overload: the stream at the head
has the earliest deadline and is often the one already lost, so every stream behind it misses
too (the domino effect). This policy keeps EDF's behaviour when the load fits and changes two
things when it does not:

1. **Hopeless streams are demoted.** Before the head of the queue is served, it is checked
   against the measured send rate: if its deadline has passed, or its queued bytes cannot be
   sent before the deadline even if it had the link alone (``now + backlog / rate >
   deadline``), it moves to the *late* lane. Late streams are still delivered (nothing accepted
   is dropped), but only when no on-time stream is ready, so they stop delaying streams that can
   still make it. Each stream is demoted at most once per QoS, so the check is amortised
   O(log n).
2. **Overload switches the order from deadline to priority.** The policy is overloaded when the
   bytes queued on on-time streams cannot be sent before the latest of their deadlines
   (``backlog / rate > latest_deadline - now``: someone must miss whatever the order), or when
   the recent miss ratio (an exponentially weighted mean over streams leaving the on-time lane:
   1 for a demotion, 0 for a stream finished on time) exceeds ``overload_enter``. Overloaded,
   on-time streams are served by (class priority, deadline), so the misses fall on the
   lowest-priority class instead of on whoever is unlucky; the mode ends when the backlog fits
   again and the miss ratio has fallen below ``overload_exit`` (hysteresis, so it does not
   flap).

The send rate is measured from the bytes the transport reports through :meth:`requeue` while
streams stay backlogged (app-limited gaps do not count), in windows of ``rate_window`` seconds,
smoothed; until the first window completes, the connection's hint (congestion window / RTT) is
used. Demotion uses the larger of the two (a too-low estimate would demote streams that would
have made it, and demotion is one-way). Without any rate, only deadlines that have passed
demote.

Caveat: for a streamed LLM response the backlog is what has been generated so far, not the
whole answer, so prediction is early only for requests/responses written at once (uploads, the
poster's echo experiment); for token streams the passed-deadline rule does the work.
"""

from __future__ import annotations

import heapq

from quicgw.core.qos import RequestQoS
from quicgw.scheduling.base import INF, StreamEntry, StreamScheduler

ON_TIME = 0
LATE = 1


class _RateMeter:
    """Send rate while backlogged, in bytes per second."""

    __slots__ = ("window", "alpha", "rate", "_start", "_bytes")

    def __init__(self, window: float, alpha: float) -> None:
        self.window = window
        self.alpha = alpha
        self.rate: float | None = None
        self._start: float | None = None
        self._bytes = 0

    def idle(self) -> None:
        # The sender ran out of ready streams: a window spanning the gap would measure the
        # application, not the path.
        self._start = None
        self._bytes = 0

    def sent(self, nbytes: int, now: float) -> bool:
        """Count bytes sent at ``now``; return whether the rate estimate changed."""
        if self._start is None:
            # Bytes sent at the very start of a busy period have no duration to divide by.
            self._start = now
            return False
        self._bytes += nbytes
        elapsed = now - self._start
        if elapsed < self.window or self._bytes <= 0:
            # A window in which nothing was sent says nothing about the path (flow control,
            # say), and a zero rate would make every deadline hopeless.
            return False
        sample = self._bytes / elapsed
        self.rate = sample if self.rate is None else self.rate + self.alpha * (sample - self.rate)
        self._start = now
        self._bytes = 0
        return True


class AdaptiveScheduler(StreamScheduler):
    name = "adaptive"
    wants_rate_hint = True

    def __init__(
        self,
        *,
        overload_enter: float = 0.25,
        overload_exit: float = 0.10,
        miss_memory: int = 16,
        rate_window: float = 0.02,
        rate_alpha: float = 0.25,
        **options,
    ) -> None:
        super().__init__(**options)
        if not 0 <= overload_exit <= overload_enter <= 1:
            raise ValueError("need 0 <= overload_exit <= overload_enter <= 1")
        self.overload_enter = overload_enter
        self.overload_exit = overload_exit
        self._miss_alpha = 1.0 / max(1, miss_memory)
        self._meter = _RateMeter(rate_window, rate_alpha)
        self._rate_hint: float | None = None
        self._edf: list = []  # on-time lane, (deadline, seq)
        self._prio: list = []  # on-time lane, (level, deadline, seq): the overload order
        self._late: list = []  # late lane, (level, deadline, seq)
        self._latest: list = []  # max-heap of on-time deadlines: (-deadline, seq, entry)
        self._on_time_backlog = 0
        self._now = 0.0
        self._mode_at = -INF
        self._rate_now: float | None = None
        self._mode_stale = True
        self.miss_ratio = 0.0
        self.overloaded = False
        # Counters for metrics and tests.
        self.demotions = 0
        self.met = 0
        self.mode_switches = 0

    # -- rate ---------------------------------------------------------------------------------

    def observe_rate(self, bytes_per_second: float) -> None:
        if bytes_per_second > 0 and bytes_per_second != self._rate_hint:
            self._rate_hint = bytes_per_second
            self._mode_stale = True

    @property
    def rate(self) -> float | None:
        """The send rate used for predictions (bytes/s), or ``None`` if unknown."""
        measured, hint = self._meter.rate, self._rate_hint
        if measured is None:
            return hint
        return measured if hint is None else max(measured, hint)

    # -- hooks --------------------------------------------------------------------------------

    def _on_added(self, entry: StreamEntry) -> None:
        entry.lane = ON_TIME
        self._track_deadline(entry)

    def _enqueue(self, entry: StreamEntry) -> None:
        if entry.lane == ON_TIME:
            self._heap_push(self._edf, (entry.deadline, entry.seq), entry)
            self._heap_push(self._prio, (entry.level, entry.deadline, entry.seq), entry)
        else:
            self._heap_push(self._late, (entry.level, entry.deadline, entry.seq), entry)

    def update(self, stream_id: int, qos: RequestQoS | None) -> None:
        entry = self._entries[stream_id]
        new_deadline = qos.deadline if qos is not None else INF
        if entry.lane == LATE and new_deadline != entry.deadline:
            # A new deadline gives a late stream another chance (it is checked again when it
            # reaches the head).
            entry.lane = ON_TIME
            self._on_time_backlog += entry.backlog
        super().update(stream_id, qos)

    def _reposition(self, entry: StreamEntry) -> None:
        self._track_deadline(entry)
        super()._reposition(entry)

    def _backlog_changed(self, entry: StreamEntry, delta: int) -> None:
        # Control streams count too (they are sent first, so they are demand); they are never
        # demoted.
        if entry.lane == ON_TIME:
            self._on_time_backlog += delta

    def _on_sent(self, entry: StreamEntry, sent_bytes: int, now: float) -> None:
        self._now = now
        if self._meter.sent(sent_bytes, now):
            self._mode_stale = True

    def _on_blocked(self, entry: StreamEntry) -> None:
        if self._ready_count == 0:
            self._meter.idle()

    def _on_removed(self, entry: StreamEntry) -> None:
        if entry.lane == ON_TIME:
            self._on_time_backlog -= entry.backlog
            if entry.deadline < INF and not entry.control:
                self._record(missed=self._now > entry.deadline)
        if self._ready_count == 0:
            self._meter.idle()
        entry.lane = LATE  # stale for _latest

    # -- decisions ----------------------------------------------------------------------------

    def _peek(self, now: float) -> StreamEntry | None:
        self._now = now
        if now != self._mode_at or self._mode_stale:
            # Once per instant: a packet train built at one ``now`` shares the rate and mode.
            self._mode_at = now
            self._rate_now = self.rate
            self._update_mode(now, self._rate_now)
            self._mode_stale = False
        rate = self._rate_now
        heap = self._prio if self.overloaded else self._edf
        while (entry := self._heap_peek(heap)) is not None:
            deadline = entry.deadline
            if deadline == INF or (
                now <= deadline and (rate is None or now + entry.backlog / rate <= deadline)
            ):
                return entry
            self._demote(entry)  # hopeless: it can no longer make its deadline
        return self._heap_peek(self._late)

    def hopeless(self, stream_id: int, now: float) -> bool:
        """Whether the stream can no longer make its deadline at the current rate estimate."""
        entry = self._entries[stream_id]
        rate = self.rate
        if entry.deadline == INF:
            return False
        return now > entry.deadline or (
            rate is not None and now + entry.backlog / rate > entry.deadline
        )

    def _demote(self, entry: StreamEntry) -> None:
        self._on_time_backlog -= entry.backlog
        entry.lane = LATE
        self._invalidate(entry)
        self._queue(entry)
        self.demotions += 1
        self._record(missed=True)

    def _record(self, missed: bool) -> None:
        if not missed:
            self.met += 1
        self.miss_ratio += self._miss_alpha * ((1.0 if missed else 0.0) - self.miss_ratio)
        self._mode_stale = True

    def _update_mode(self, now: float, rate: float | None) -> None:
        demand_exceeds = False
        if rate is not None and self._on_time_backlog > 0:
            latest = self._latest_deadline()
            if latest is not None:
                demand_exceeds = self._on_time_backlog / rate > latest - now
        if self.overloaded:
            if not demand_exceeds and self.miss_ratio < self.overload_exit:
                self.overloaded = False
                self.mode_switches += 1
        elif demand_exceeds or self.miss_ratio > self.overload_enter:
            self.overloaded = True
            self.mode_switches += 1

    def _track_deadline(self, entry: StreamEntry) -> None:
        if entry.deadline < INF and entry.lane == ON_TIME:
            heapq.heappush(self._latest, (-entry.deadline, entry.seq, entry))
            if len(self._latest) > 2 * len(self._entries) + 64:
                self._latest = [r for r in self._latest if self._latest_live(r)]
                heapq.heapify(self._latest)

    def _latest_live(self, record: tuple) -> bool:
        neg_deadline, _seq, entry = record
        return (
            entry.lane == ON_TIME
            and entry.deadline == -neg_deadline
            and self._entries.get(entry.stream_id) is entry
        )

    def _latest_deadline(self) -> float | None:
        heap = self._latest
        while heap and not self._latest_live(heap[0]):
            heapq.heappop(heap)
        return -heap[0][0] if heap else None
