"""The fast paths agree with the plain definitions, to the bit.

* ``BatchEngine.advance_to`` (tokens counted per iteration, not per request) against its rule
  applied request by request with ``start_iteration`` / ``finish_iteration``, with priorities
  and cancellations;
* the engine's queue totals and latency prediction against the waiting list itself.
"""

from __future__ import annotations

import math
import random

import pytest

from quicgw.core.catalog import latency_model
from quicgw.core.latency import BatchEngine, EngineRequest


def _state(reqs: list[EngineRequest]) -> list[tuple]:
    return [(r.admitted, r.first_token, r.finished, r.generated, r.cancelled) for r in reqs]


def _stepped_to(engine: BatchEngine, t: float) -> list[EngineRequest]:
    """Reference: ``advance_to(t)``'s rule, request by request. Iterations run one by one; after
    one that leaves nothing to admit, the identical ones before the next completion (or ``t``)
    are jumped in one step (``now += k * step``, as advance_to does)."""
    done: list[EngineRequest] = []
    while True:
        it = engine.current or engine.start_iteration(engine.now)
        if it is None:
            engine.now = max(engine.now, t)
            return done
        if it.end > t:
            return done
        done += engine.finish_iteration()
        if not engine.running or engine._can_admit():
            continue
        step = engine.model.decode_step_s(len(engine.running))
        k = min(r.remaining for r in engine.running) - 1
        if t != math.inf:
            k = min(k, int((t - engine.now) / step))
        if k > 0:
            for r in engine.running:
                r.generated += k
            engine._iters += k  # the engine's own iteration count stays consistent
            engine.now += k * step


@pytest.mark.parametrize("seed", range(12))
def test_advance_to_is_iteration_stepping_bit_for_bit(seed: int) -> None:
    rng = random.Random(seed)
    lm = latency_model(rng.choice(["llama-3.1-8b", "llama-3.2-1b"]), "a100-80gb",
                       max_batch=rng.choice([1, 3, 8, 32]))
    policy = rng.choice(["fcfs", "priority"])
    fast, slow = BatchEngine(lm, policy), BatchEngine(lm, policy)
    rf: list[EngineRequest] = []
    rs: list[EngineRequest] = []
    t = 0.0
    for k in range(300):
        t += rng.expovariate(rng.choice([5.0, 60.0, 400.0]))
        done_f, done_s = fast.advance_to(t), _stepped_to(slow, t)
        assert [r.rid for r in done_f] == [r.rid for r in done_s]
        assert fast.now == slow.now
        assert _state(rf) == _state(rs)
        assert [r.rid for r in fast.running] == [r.rid for r in slow.running]
        if rng.random() < 0.1 and rf:
            j = rng.randrange(len(rf))
            fast.cancel(rf[j])
            slow.cancel(rs[j])
        size = (rng.randint(1, 2000), rng.randint(1, 400), rng.randint(0, 3))
        rf.append(EngineRequest(k, size[0], size[1], t, priority=size[2]))
        rs.append(EngineRequest(k, size[0], size[1], t, priority=size[2]))
        fast.submit(rf[-1])
        slow.submit(rs[-1])
    fast.advance_to(math.inf)
    _stepped_to(slow, math.inf)
    assert fast.now == slow.now and _state(rf) == _state(rs)
    assert all(r.finished is not None or r.cancelled for r in rf)


def _estimate_reference(engine: BatchEngine, input_tokens: int, output_tokens: int,
                        priority: int) -> float:
    """estimate_latency_s's docstring, computed from the waiting list itself."""
    m = engine.model
    ahead = [r for r in engine.waiting() if engine.policy == "fcfs" or r.priority <= priority]
    occupied = len(engine.running) + len(ahead)
    step = m.decode_step_s(min(m.max_batch, occupied + 1))
    wait = 0.0
    if occupied >= m.max_batch:
        remaining = sorted(r.remaining for r in engine.running)
        need = occupied - m.max_batch + 1
        pool = remaining + [r.output_tokens for r in ahead]
        if need <= len(remaining):
            wait = remaining[need - 1] * step
        else:
            wait = (remaining[-1] if remaining else 0) * step + (
                (need - len(remaining)) / m.max_batch) * (sum(pool) / len(pool)) * step
    return wait + m.prefill_s(input_tokens) + max(output_tokens, 1) * step


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_queue_totals_and_prediction_follow_the_waiting_list(policy: str) -> None:
    rng = random.Random(3)
    engine = BatchEngine(latency_model("llama-3.1-8b", "a100-80gb", max_batch=8), policy)
    reqs: list[EngineRequest] = []
    t = 0.0
    for k in range(400):
        t += rng.expovariate(80.0)
        engine.advance_to(t)
        if rng.random() < 0.1 and reqs:
            engine.cancel(rng.choice(reqs))
        r = EngineRequest(k, rng.randint(1, 2000), rng.randint(1, 300), t,
                          priority=rng.randint(0, 2))
        engine.submit(r)
        reqs.append(r)
        for p in (0, 1, 2, math.inf):
            ahead = [r for r in engine.waiting() if r.priority <= p]
            assert engine.queued_ahead(p) == (len(ahead), sum(r.input_tokens for r in ahead),
                                              sum(r.output_tokens for r in ahead))
        for p in (0, 1, 2):
            args = (rng.randint(1, 3000), rng.randint(0, 300), p)
            assert engine.estimate_latency_s(*args) == _estimate_reference(engine, *args)
