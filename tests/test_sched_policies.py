"""Sans-IO scheduler policies: unit tests and hypothesis property tests over random operation
sequences, each checked against a slow reference model of the policy (O(n) scans of plain
lists), plus invariants every policy must keep."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicgw.core.classes import BULK, FREE, REALTIME, TrafficClass
from quicgw.core.qos import Priority, RequestQoS
from quicgw.scheduling import SCHEDULERS, make_scheduler
from quicgw.scheduling.adaptive import LATE, ON_TIME, AdaptiveScheduler
from quicgw.scheduling.base import INF, UNCLASSIFIED_LEVEL

CLASSES = (REALTIME, FREE, BULK, TrafficClass("tier2", priority=3, deadline_ms=5000, tier=2))


def qos_for(choice: int, deadline: float, priority: Priority | None = None) -> RequestQoS:
    cls = CLASSES[choice % len(CLASSES)]
    return RequestQoS(cls, arrival=0.0, deadline=deadline, priority=priority or Priority(cls.urgency))


# -- unit tests -----------------------------------------------------------------------------


def serve_all(sched, now=0.0, nbytes=1000, limit=100):
    """Pick and requeue until nothing is ready or ``limit`` picks; return the picks."""
    order = []
    for _ in range(limit):
        sid = sched.next(now)
        if sid is None:
            break
        order.append(sid)
        sched.requeue(sid, nbytes, now)
        if sched.backlog(sid) == 0:
            sched.mark_blocked(sid)
    return order


def test_rr_rotates_ready_streams():
    s = make_scheduler("rr")
    for sid in (0, 4, 8):
        s.add(sid)
        s.add_backlog(sid, 2000)
        s.mark_ready(sid)
    assert serve_all(s) == [0, 4, 8, 0, 4, 8]


def test_fcfs_serves_in_arrival_order():
    s = make_scheduler("fcfs")
    for sid in (8, 0, 4):
        s.add(sid)
        s.add_backlog(sid, 2000)
        s.mark_ready(sid)
    assert serve_all(s) == [8, 8, 0, 0, 4, 4]


def test_edf_earliest_deadline_first_unclassified_last():
    s = make_scheduler("edf")
    s.add(0, qos_for(0, deadline=3.0))
    s.add(4)  # unclassified
    s.add(8, qos_for(0, deadline=1.0))
    for sid in (0, 4, 8):
        s.add_backlog(sid, 1000)
        s.mark_ready(sid)
    assert serve_all(s) == [8, 0, 4]


def test_abs_strict_priority_then_arrival():
    s = make_scheduler("abs")
    s.add(0, qos_for(2, 1.0))  # bulk
    s.add(4, qos_for(0, 9.0))  # realtime
    s.add(8, qos_for(0, 2.0))  # realtime
    s.add(12, qos_for(1, 0.5))  # free
    for sid in (0, 4, 8, 12):
        s.add_backlog(sid, 1000)
        s.mark_ready(sid)
    assert serve_all(s) == [4, 8, 12, 0]


def test_ml_top_tier_edf_lower_tiers_round_robin():
    s = make_scheduler("ml")
    s.add(0, qos_for(1, 1.0))  # free: tier 1
    s.add(4, qos_for(2, 1.0))  # bulk: tier 1
    s.add(8, qos_for(0, 5.0))  # realtime: tier 0
    s.add(12, qos_for(0, 4.0))  # realtime: tier 0
    s.add(16)  # unclassified: last
    for sid in (0, 4, 8, 12, 16):
        s.add_backlog(sid, 2000)
        s.mark_ready(sid)
    assert serve_all(s) == [12, 12, 8, 8, 0, 4, 0, 4, 16, 16]


def test_rfc9218_urgency_then_sequential_then_incremental():
    s = make_scheduler("rfc9218")
    s.add(0, qos_for(0, 1.0, Priority(3, True)))
    s.add(4, qos_for(0, 1.0, Priority(3, True)))
    s.add(8, qos_for(0, 1.0, Priority(3, False)))
    s.add(12, qos_for(0, 1.0, Priority(1, False)))
    s.add(16)  # unclassified: u=3, non-incremental
    for sid in (0, 4, 8, 12, 16):
        s.add_backlog(sid, 2000)
        s.mark_ready(sid)
    assert serve_all(s) == [12, 12, 8, 8, 16, 16, 0, 4, 0, 4]


def test_rfc9218_priority_update_overrides_qos():
    s = make_scheduler("rfc9218")
    s.add(0, qos_for(0, 1.0, Priority(1)))
    s.add(4, qos_for(0, 1.0, Priority(2)))
    for sid in (0, 4):
        s.add_backlog(sid, 1000)
        s.mark_ready(sid)
    s.set_priority(0, Priority(7))
    assert serve_all(s) == [4, 0]


@pytest.mark.parametrize("name", SCHEDULERS)
def test_control_streams_always_first(name):
    s = make_scheduler(name)
    s.add(0, qos_for(0, 0.1, Priority(0)))
    s.add(2, control=True)
    s.add(6, control=True)
    for sid in (0, 2, 6):
        s.add_backlog(sid, 2000)
        s.mark_ready(sid)
    assert serve_all(s) == [2, 6, 2, 6, 0, 0]


@pytest.mark.parametrize("name", SCHEDULERS)
def test_blocked_and_removed_streams_are_never_picked(name):
    s = make_scheduler(name)
    for sid in (0, 4, 8):
        s.add(sid, qos_for(sid, 1.0 + sid))
        s.add_backlog(sid, 1000)
        s.mark_ready(sid)
    s.mark_blocked(0)
    s.remove(4)
    assert s.next(0.0) == 8
    s.mark_blocked(8)
    assert s.next(0.0) is None
    s.mark_ready(0)
    assert s.next(0.0) == 0
    assert len(s) == 2 and s.ready_count == 1


def test_unknown_scheduler_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown scheduler 'lifo'.*rr, fcfs"):
        make_scheduler("lifo")


def test_adaptive_demotes_hopeless_stream_and_keeps_edf_otherwise():
    s = AdaptiveScheduler()
    s.observe_rate(10_000)  # 10 kB/s
    s.add(0, qos_for(0, deadline=1.0))  # 50 kB by t=1: hopeless
    s.add(4, qos_for(0, deadline=2.0))  # 5 kB by t=2: fine
    s.add(8, qos_for(0, deadline=3.0))
    for sid, size in ((0, 50_000), (4, 5_000), (8, 5_000)):
        s.add_backlog(sid, size)
        s.mark_ready(sid)
    assert s.next(0.0) == 4
    assert s.entry(0).lane == LATE and s.demotions == 1
    s.mark_blocked(4)
    assert s.next(0.0) == 8
    s.mark_blocked(8)
    assert s.next(0.0) == 0  # late streams are still delivered, last


def test_adaptive_switches_to_priority_order_under_overload():
    s = AdaptiveScheduler()
    s.observe_rate(10_000)
    # 20 kB of bulk due at t=2.0 and 20 kB of realtime due at t=2.5: 4 s of work, 2.5 s of time.
    s.add(0, qos_for(2, deadline=2.0))
    s.add(4, qos_for(0, deadline=2.5))
    for sid in (0, 4):
        s.add_backlog(sid, 20_000)
        s.mark_ready(sid)
    assert s.next(0.0) == 4
    assert s.overloaded
    # The load fits again: back to EDF once the miss ratio is low.
    s.remove(0)
    s.remove(4)
    s.add(8, qos_for(2, deadline=10.0))
    s.add(12, qos_for(0, deadline=20.0))
    for sid in (8, 12):
        s.add_backlog(sid, 1_000)
        s.mark_ready(sid)
    assert s.next(1.0) == 8
    assert not s.overloaded


def test_adaptive_measures_the_send_rate_while_backlogged():
    s = AdaptiveScheduler(rate_window=0.01)
    s.add(0, qos_for(0, deadline=100.0))
    s.add_backlog(0, 10**9)
    s.mark_ready(0)
    now = 0.0
    for _ in range(200):
        sid = s.next(now)
        s.requeue(sid, 1000, now)
        now += 0.001  # 1000 bytes per millisecond: 1 MB/s
    assert s.rate == pytest.approx(1_000_000, rel=0.05)


def test_heaps_stay_bounded_under_ready_blocked_churn():
    s = make_scheduler("edf")
    for sid in range(0, 400, 4):
        s.add(sid, qos_for(sid, 1.0 + sid))
    for _ in range(50):
        for sid in range(0, 400, 4):
            s.mark_ready(sid)
            s.update(sid, qos_for(sid, 2.0 + sid))
            s.mark_blocked(sid)
    assert len(s._heap) <= 2 * len(s) + 64


# -- property tests against reference models ---------------------------------------------------


class Model:
    """The slow, obviously-correct version of every policy."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.streams: dict[int, dict] = {}
        self.seq = 0
        self.control_ring: list[int] = []
        self.rings: dict[object, list[int]] = {}
        self.credit: dict[int, int] = {}
        self.quantum = 1000

    def ring_key(self, s: dict) -> object | None:
        """Which round-robin ring a ready stream lives in (None: ordered by key instead)."""
        if self.name == "rr":
            return "rr"
        if self.name == "ml":
            return None if s["tier"] == 0 else ("tier", s["tier"])
        if self.name == "rfc9218":
            p = s["priority"]
            return ("inc", p.urgency) if p.incremental else None
        return None

    def effective(self, sid: int) -> dict:
        s = self.streams[sid]
        qos = s["qos"]
        priority = s["override"] or (qos.priority if qos else Priority())
        return {
            **s,
            "deadline": qos.deadline if qos else INF,
            "level": qos.traffic_class.priority if qos else UNCLASSIFIED_LEVEL,
            "tier": qos.traffic_class.tier if qos else UNCLASSIFIED_LEVEL,
            "priority": priority,
        }

    def enqueue(self, sid: int) -> None:
        s = self.effective(sid)
        if s["control"]:
            self.control_ring.append(sid)
            return
        key = self.ring_key(s)
        if key is not None:
            self.rings.setdefault(key, []).append(sid)
            self.credit[sid] = self.quantum

    def dequeue(self, sid: int) -> None:
        if sid in self.control_ring:
            self.control_ring.remove(sid)
        for ring in self.rings.values():
            if sid in ring:
                ring.remove(sid)

    def add(self, sid, qos, control):
        self.streams[sid] = {
            "qos": qos, "override": None, "control": control, "seq": self.seq, "ready": False,
            "backlog": 0,
        }
        self.seq += 1

    def reposition(self, sid):
        s = self.streams[sid]
        if s["control"] or self.name in ("rr", "fcfs"):
            return
        if s["ready"]:
            self.dequeue(sid)
            self.enqueue(sid)

    def mark_ready(self, sid):
        if not self.streams[sid]["ready"]:
            self.streams[sid]["ready"] = True
            self.enqueue(sid)

    def mark_blocked(self, sid):
        if self.streams[sid]["ready"]:
            self.streams[sid]["ready"] = False
            self.dequeue(sid)

    def remove(self, sid):
        self.dequeue(sid)
        del self.streams[sid]

    def served(self, sid, nbytes):
        s = self.streams[sid]
        s["backlog"] -= min(nbytes, s["backlog"])
        if sid in self.control_ring:
            self.control_ring.remove(sid)
            self.control_ring.append(sid)
        for ring in self.rings.values():
            if sid in ring:
                # Deficit round-robin: the turn ends when the credit is used up.
                self.credit[sid] -= nbytes
                if self.credit[sid] <= 0:
                    self.credit[sid] += self.quantum
                    ring.remove(sid)
                    ring.append(sid)

    def ring_head(self, key) -> int:
        ring = self.rings[key]
        while self.credit[ring[0]] <= 0:
            self.credit[ring[0]] += self.quantum
            ring.append(ring.pop(0))
        return ring[0]

    def expected(self) -> int | None:
        if self.control_ring:
            return self.control_ring[0]
        ready = [self.effective(sid) for sid, s in self.streams.items() if s["ready"]]
        if not ready:
            return None
        name = self.name
        if name == "rr":
            return self.ring_head("rr")
        if name == "fcfs":
            return min((s["seq"], sid) for sid, s in self.streams.items() if s["ready"])[1]
        if name in ("edf", "abs"):
            field = "deadline" if name == "edf" else "level"
            return min(
                (self.effective(sid)[field], s["seq"], sid)
                for sid, s in self.streams.items()
                if s["ready"]
            )[2]
        if name == "ml":
            top = [
                (e["deadline"], e["seq"], sid)
                for sid in self.streams
                if (e := self.effective(sid))["ready"] and e["tier"] == 0
            ]
            if top:
                return min(top)[2]
            tier = min(e["tier"] for e in ready)
            return self.ring_head(("tier", tier))
        if name == "rfc9218":
            urgency = min(e["priority"].urgency for e in ready)
            sequential = [
                sid for sid in self.streams
                if (e := self.effective(sid))["ready"]
                and e["priority"].urgency == urgency and not e["priority"].incremental
            ]
            if sequential:
                return min(sequential)
            return self.ring_head(("inc", urgency))
        raise AssertionError(name)


SIDS = st.sampled_from([0, 2, 4, 6, 8, 12, 16, 20, 24])
ADD = st.tuples(st.just("add"), SIDS, st.integers(0, 4), st.floats(0, 10), st.booleans())
SERVE = st.tuples(st.just("serve"), st.integers(0, 3000), st.floats(0, 0.5))
READY = st.tuples(st.just("ready"), SIDS)
# Serving and readiness changes dominate, so most picks choose among several ready streams.
OPS = st.one_of(
    SERVE, SERVE, SERVE, READY, READY,
    ADD,
    st.tuples(st.just("update"), SIDS, st.integers(0, 4), st.floats(0, 10)),
    st.tuples(st.just("priority"), SIDS, st.integers(0, 7), st.booleans()),
    st.tuples(st.just("backlog"), SIDS, st.integers(0, 5000)),
    st.tuples(st.just("blocked"), SIDS),
    st.tuples(st.just("remove"), SIDS),
    st.tuples(st.just("control"), SIDS, st.booleans()),
)
# Start from several ready streams with data.
SETUP = st.lists(
    st.tuples(SIDS, st.integers(0, 4), st.floats(0, 10), st.booleans(), st.integers(1, 9000)),
    min_size=2, max_size=9, unique_by=lambda t: t[0],
)


def setup_ops(setup) -> list:
    ops = []
    for sid, choice, deadline, control, backlog in setup:
        ops += [("add", sid, choice, deadline, control), ("backlog", sid, backlog), ("ready", sid)]
    return ops


def apply(sched, model: Model | None, op, now: float) -> float:
    kind, *args = op
    if kind == "add":
        sid, choice, deadline, control = args
        if sid in sched:
            return now
        qos = None if choice == 4 else qos_for(choice, deadline)
        control = control and sid % 4 != 0  # unidirectional ids only, as in the connection
        sched.add(sid, qos, control=control)
        if model:
            model.add(sid, qos, control)
        return now
    if kind == "serve":
        nbytes, dt = args
        now += dt
        sid = sched.next(now)
        assert_next_is_valid(sched, sid, now)
        if model is not None:
            assert sid == model.expected(), (sid, model.expected())
        if sid is not None:
            sched.requeue(sid, nbytes, now)
            if model:
                model.served(sid, nbytes)
        return now
    sid = args[0]
    if sid not in sched:
        return now
    if kind == "update":
        qos = None if args[1] == 4 else qos_for(args[1], args[2])
        sched.update(sid, qos)
        if model:
            model.streams[sid]["qos"] = qos
            model.reposition(sid)
    elif kind == "priority":
        p = Priority(args[1], args[2])
        sched.set_priority(sid, p)
        if model:
            model.streams[sid]["override"] = p
            model.reposition(sid)
    elif kind == "backlog":
        sched.add_backlog(sid, args[1])
        if model:
            model.streams[sid]["backlog"] += args[1]
    elif kind == "ready":
        sched.mark_ready(sid)
        if model:
            model.mark_ready(sid)
    elif kind == "blocked":
        sched.mark_blocked(sid)
        if model:
            model.mark_blocked(sid)
    elif kind == "remove":
        sched.remove(sid)
        if model:
            model.remove(sid)
    elif kind == "control":
        control = args[1] and sid % 4 != 0
        sched.set_control(sid, control)
        if model:
            was_ready = model.streams[sid]["ready"]
            if was_ready and model.streams[sid]["control"] != control:
                model.dequeue(sid)
                model.streams[sid]["control"] = control
                model.enqueue(sid)
            model.streams[sid]["control"] = control
    return now


def assert_next_is_valid(sched, sid, now):
    """Invariants every policy keeps."""
    entries = sched._entries
    ready = [e for e in entries.values() if e.ready]
    assert sched.ready_count == len(ready)
    if sid is None:
        assert not ready
        return
    entry = entries[sid]
    assert entry.ready
    if any(e.control for e in ready):
        assert entry.control
    assert all(e.backlog >= 0 for e in entries.values())


@pytest.mark.parametrize("name", ["rr", "fcfs", "edf", "abs", "ml", "rfc9218"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(setup=SETUP, ops=st.lists(OPS, min_size=10, max_size=120))
def test_policy_matches_reference_model(name, setup, ops):
    sched = make_scheduler(name)
    model = Model(name)
    now = 0.0
    for op in setup_ops(setup) + ops:
        now = apply(sched, model, op, now)
        for sid, s in model.streams.items():
            assert sched.backlog(sid) == s["backlog"]
    # Drain: everything ready is served in the model's order.
    for _ in range(30):
        now = apply(sched, model, ("serve", 10**6, 0.0), now)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    setup=SETUP, ops=st.lists(OPS, min_size=10, max_size=120), rate=st.one_of(st.none(), st.floats(100, 1e6))
)
def test_adaptive_invariants(setup, ops, rate):
    sched = AdaptiveScheduler()
    if rate is not None:
        sched.observe_rate(rate)
    now = 0.0
    for op in setup_ops(setup) + ops:
        now = apply(sched, None, op, now)
        if op[0] == "serve":
            check_adaptive_choice(sched, now)


def check_adaptive_choice(sched: AdaptiveScheduler, now: float) -> None:
    sid = sched.next(now)
    if sid is None:
        return
    entry = sched.entry(sid)
    if entry.control:
        return
    ready = [e for e in sched._entries.values() if e.ready and not e.control]
    on_time = [e for e in ready if e.lane == ON_TIME]
    if entry.lane == LATE:
        # Late streams only get leftover bandwidth: every on-time stream was demoted first.
        assert not on_time
        assert (entry.level, entry.deadline, entry.seq) == min(
            (e.level, e.deadline, e.seq) for e in ready
        )
        return
    # An on-time pick can still make its deadline...
    assert not sched.hopeless(sid, now)
    # ...and is first in the current order (EDF, or priority under overload).
    if sched.overloaded:
        key = lambda e: (e.level, e.deadline, e.seq)  # noqa: E731
    else:
        key = lambda e: (e.deadline, e.seq)  # noqa: E731
    assert key(entry) == min(key(e) for e in on_time)
    # Aggregates stay exact.
    assert sched._on_time_backlog == sum(
        e.backlog for e in sched._entries.values() if e.lane == ON_TIME
    )


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 50_000), min_size=1, max_size=12),
    slack=st.lists(st.floats(0.01, 5.0), min_size=12, max_size=12),
    levels=st.lists(st.integers(0, 3), min_size=12, max_size=12),
)
def test_adaptive_never_lets_a_late_stream_delay_an_on_time_one(sizes, slack, levels):
    """Simulate a 100 kB/s link: at every decision, if the pick is late, no ready stream could
    still make its deadline by being sent next."""
    rate = 100_000.0
    sched = AdaptiveScheduler()
    sched.observe_rate(rate)
    for i, size in enumerate(sizes):
        sid = 4 * i
        sched.add(sid, qos_for(levels[i], deadline=slack[i]))
        sched.add_backlog(sid, size)
        sched.mark_ready(sid)
    now = 0.0
    while (sid := sched.next(now)) is not None:
        entry = sched.entry(sid)
        if entry.lane == LATE:
            for other in sched._entries.values():
                if other.ready and other.lane == ON_TIME:
                    raise AssertionError("an on-time stream waits behind a late one")
        chunk = min(1200, entry.backlog)
        now += chunk / rate
        sched.requeue(sid, chunk, now)
        if sched.backlog(sid) == 0:
            sched.remove(sid)
    assert math.isfinite(now)
