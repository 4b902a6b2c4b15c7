"""Evaluation on fixed workload seeds: every router runs the same arrivals in the same simulator.

Seed sets are disjoint: training episodes draw their workloads from the training seed's
``np_random`` stream; checkpoints are selected on :data:`VALIDATION_SEEDS`; reported numbers use
:data:`TEST_SEEDS`, never seen in training or selection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from quicgw.core.routing import InstanceInfo, Router
from rlrouter.cluster import build_instances, cluster_specs
from rlrouter.sim import RunResult, Simulator
from rlrouter.workloads import make_workload, nominal_capacity_rps

VALIDATION_SEEDS: tuple[int, ...] = tuple(range(500, 503))
TEST_SEEDS: tuple[int, ...] = tuple(range(1000, 1005))
EVAL_DURATION_S = 300.0


@dataclass(slots=True)
class Scenario:
    cluster: str = "poster"
    workload: str = "stable"
    duration_s: float = EVAL_DURATION_S
    trace: str | None = None
    network: dict | None = None
    load_scale: float = 1.0
    _instances: tuple[InstanceInfo, ...] | None = field(default=None, repr=False)

    @property
    def instances(self) -> tuple[InstanceInfo, ...]:
        if self._instances is None:
            self._instances = build_instances(cluster_specs(self.cluster))
        return self._instances

    def arrivals(self, seed: int):
        rng = np.random.default_rng(seed)
        return make_workload(self.workload, rng, self.duration_s,
                             nominal_capacity_rps(self.instances), trace=self.trace,
                             load_scale=self.load_scale)

    def run(self, router: Router, seed: int) -> RunResult:
        network = None
        if self.network is not None:
            from rlrouter.network import NetworkStage
            network = NetworkStage.from_config(self.network, np.random.default_rng(seed + 7919))
        return Simulator(self.instances, self.arrivals(seed), network=network).run(router)


def evaluate(make_router: Callable[[], Router], scenario: Scenario,
             seeds: Sequence[int] = TEST_SEEDS) -> list[RunResult]:
    """One fresh router per seed (routers may keep state, e.g. round-robin's counter)."""
    return [scenario.run(make_router(), s) for s in seeds]


def mean_score(results: Sequence[RunResult]) -> float:
    return float(np.mean([r.score for r in results]))
