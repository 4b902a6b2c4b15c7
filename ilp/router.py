"""The static priority multi-instance router (the paper's Figure 7), as the gateway's ``ilp``
router.

It splits each class's traffic over the plan's instances by the plan's fractions with smooth
weighted round-robin (nginx's algorithm): over any window the picks track the fractions within
one request, and an instance's picks are spread out rather than sent in bursts, as random
sampling would. Priority at each instance is the gateway's job (its admission queue orders by
class priority and forwards vLLM's ``priority`` field upstream); this router only decides the
split. Configure it as::

    [gateway]
    router = "ilp"
    router_options = { plan = "plan.json" }

Options: ``plan`` (the plan file, required); ``fallback`` for a class the plan does not know:
``"jsq"`` (default: least loaded healthy plan instance) or ``"reject"``; ``spill`` (default true):
when all of a class's planned instances are down, send it to the least loaded other healthy
instance of the same model instead of failing.

Plan instances are matched to the gateway's backends by name (``ilp.solve --emit-gateway-config``
writes backends with the plan's names). Sans-IO and deterministic: no clock, no randomness.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ilp.plan import Plan
from quicgw.core.routing import ClusterView, NoInstanceAvailable, RouteRequest

log = logging.getLogger("ilp.router")

FALLBACKS = ("jsq", "reject")


@dataclass(slots=True)
class SmoothWRR:
    """nginx's smooth weighted round-robin over named members."""

    weights: dict[str, float]
    current: dict[str, float] = field(default_factory=dict)

    def pick(self, allowed: set[str] | None = None) -> str | None:
        members = [m for m in self.weights if (allowed is None or m in allowed) and self.weights[m] > 0]
        if not members:
            return None
        total = 0.0
        best = None
        for m in members:
            c = self.current.get(m, 0.0) + self.weights[m]
            self.current[m] = c
            total += self.weights[m]
            if best is None or c > self.current[best]:
                best = m
        self.current[best] -= total
        return best


class ILPRouter:
    """Route each class by the plan's per-instance fractions (smooth weighted round-robin)."""

    name = "ilp"

    def __init__(self, plan: str | Path | Plan | None = None, fallback: str = "jsq",
                 spill: bool = True) -> None:
        if plan is None:
            raise ValueError("the ilp router needs a plan: router_options = { plan = \"plan.json\" }")
        if fallback not in FALLBACKS:
            raise ValueError(f"ilp router: unknown fallback {fallback!r} (choose from {', '.join(FALLBACKS)})")
        self.plan = plan if isinstance(plan, Plan) else Plan.load(plan)
        self.fallback = fallback
        self.spill = bool(spill)
        self.routes = self.plan.routes()
        self._wrr = {c: SmoothWRR(dict(r)) for c, r in self.routes.items() if r}
        self._priority = {c.name: c.priority for c in self.plan.classes}
        self._model_of = {i.name: i.model for i in self.plan.instances}
        self._index: dict[str, int] = {}
        self._names_key: tuple[str, ...] = ()
        self._warned: set[str] = set()
        self.picks: dict[str, dict[str, int]] = {}

    def fractions(self, class_name: str) -> dict[str, float]:
        return dict(self.routes.get(class_name, []))

    def _resolve(self, cluster: ClusterView) -> None:
        key = tuple(i.name for i in cluster.instances)
        if key == self._names_key:
            return
        self._names_key = key
        self._index = {name: i for i, name in enumerate(key)}
        missing = [i.name for i in self.plan.instances if i.name not in self._index]
        if missing:
            log.warning("ilp router: plan instances not among the gateway's backends: %s "
                        "(their share goes to the class's other instances)", ", ".join(missing))
        if not any(i.name in self._index for i in self.plan.instances):
            log.error("ilp router: no plan instance matches a backend name; backends are %s",
                      ", ".join(key) or "none")

    def route(self, request: RouteRequest, cluster: ClusterView) -> int:
        self._resolve(cluster)
        cname = request.class_name
        planned = self._priority.get(cname)
        if planned is not None and planned != request.class_priority and cname not in self._warned:
            self._warned.add(cname)
            log.warning("ilp router: class %s has priority %d in the gateway but %d in the plan",
                        cname, request.class_priority, planned)
        healthy = {name for name, i in self._index.items() if cluster.loads[i].healthy}
        wrr = self._wrr.get(cname)
        if wrr is None:
            if self.fallback == "reject":
                raise NoInstanceAvailable(f"class {cname!r} is not in the ILP plan")
            pool = [n for n in self._model_of if n in healthy]
            return self._least_loaded(pool, cluster, f"class {cname!r}")
        choice = wrr.pick(healthy)
        if choice is None:
            if not self.spill:
                raise NoInstanceAvailable(f"every planned instance of class {cname!r} is down")
            models = {self._model_of[n] for n in wrr.weights if n in self._model_of}
            pool = [n for n in healthy
                    if cluster.instances[self._index[n]].model in models]
            return self._least_loaded(pool, cluster, f"class {cname!r}")
        counts = self.picks.setdefault(cname, {})
        counts[choice] = counts.get(choice, 0) + 1
        return self._index[choice]

    def _least_loaded(self, pool: list[str], cluster: ClusterView, what: str) -> int:
        if not pool:
            raise NoInstanceAvailable(f"{what}: no healthy instance in the ILP plan")

        def load(n: str) -> tuple[float, int]:
            i = self._index[n]
            li = cluster.loads[i]
            return ((li.in_flight + li.queued) / cluster.instances[i].latency.max_batch, i)
        return self._index[min(pool, key=load)]
