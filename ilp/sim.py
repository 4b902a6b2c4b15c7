"""Simulate one model instance under open-loop multi-class load with the shared latency model.

Sans-IO and fast: it fast-forwards :class:`quicgw.core.latency.BatchEngine` (the same engine the
emulated backend steps in real time), so a 40-minute run takes milliseconds. Used to build
profiles without sockets (``ilp.bench --simulate``), to verify plans (``ilp.solve --verify``)
and to explore which instance configuration reproduces the paper's measurements.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from ilp.arrivals import arrival_times
from ilp.profile import RequestRecord
from ilp.workload import Workload
from quicgw.core.latency import BatchEngine, EngineRequest, LatencyModel


@dataclass(frozen=True, slots=True)
class ClassLoad:
    name: str
    rate_rps: float
    priority: int = 0
    workload: Workload = field(default_factory=Workload)


def simulate_instance(model: LatencyModel, classes: Sequence[ClassLoad], duration_s: float,
                      policy: str = "fcfs", seed: int = 0, arrival: str = "poisson",
                      burstiness: float = 1.0) -> list[RequestRecord]:
    """Every request that arrives in ``[0, duration_s)``, run to completion (the queue is
    drained after the last arrival, as a load generator that waits for its responses would)."""
    arrivals: list[tuple[float, int, ClassLoad, int, int]] = []
    for ci, c in enumerate(classes):
        if c.rate_rps <= 0:
            continue
        # The same derivation as the live load generator (ilp.bench.load.run_load), so a
        # simulation and a live run of the same streams and seed see the same requests.
        rng = random.Random(f"{seed}:{ci}:{c.name}:sizes")
        times = arrival_times(arrival, c.rate_rps, duration_s,
                              seed=random.Random(f"{seed}:{ci}:{c.name}").getrandbits(32),
                              burstiness=burstiness)
        for t in times:
            i, o = c.workload.sample(rng)
            arrivals.append((t, ci, c, i, o))
    arrivals.sort(key=lambda a: (a[0], a[1]))
    engine = BatchEngine(model, policy=policy)
    reqs: list[tuple[EngineRequest, ClassLoad]] = []
    for k, (t, _ci, c, i, o) in enumerate(arrivals):
        engine.advance_to(t)
        r = EngineRequest(k, i, o, t, priority=c.priority)
        engine.submit(r)
        reqs.append((r, c))
    engine.advance_to(math.inf)
    out = []
    for r, c in reqs:
        out.append(RequestRecord(
            arrival_s=r.arrival,
            ok=r.finished is not None,
            input_tokens=r.input_tokens,
            output_tokens=r.output_tokens,
            ttft_s=None if r.first_token is None else r.first_token - r.arrival,
            e2el_s=None if r.finished is None else r.finished - r.arrival,
            queue_s=None if r.admitted is None else r.admitted - r.arrival,
            klass=c.name,
        ))
    return out
