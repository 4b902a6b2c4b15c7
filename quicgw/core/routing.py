"""The router interface, the registry routers plug into, and the simple routers.

A router sees a :class:`RouteRequest` and a :class:`ClusterView` (the same view in the gateway,
built from live state, and in the rlrouter simulator) and returns the index of the instance to
serve the request. Routers are deterministic objects: no clock, no I/O.

Routers register by name. Built-ins are registered here; other packages register through the
``quicgw.routers`` entry-point group (see pyproject.toml), so the gateway never imports rlrouter
or ilp, and users can plug in their own. A spec is ``name`` or ``name:argument`` (e.g.
``static:medium``); keyword options come from the config.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Protocol, runtime_checkable

from quicgw.core.catalog import DEFAULT_TASK, resolve_model
from quicgw.core.latency import BatchEngine, LatencyModel

ENTRY_POINT_GROUP = "quicgw.routers"


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """A model instance the router may pick: static facts."""

    name: str
    model: str
    gpu: str
    latency: LatencyModel
    quality: dict[str, float]

    def task_quality(self, task: str) -> float:
        """The model's quality on ``task``; a task it has no score for gets its lowest score
        (the one rule the routers, the simulator and the score bound share)."""
        q = self.quality.get(task)
        return q if q is not None else min(self.quality.values())


@dataclass(slots=True)
class InstanceLoad:
    """A model instance's live load, as the gateway or simulator sees it."""

    in_flight: int = 0  # admitted to the instance (running in its batch)
    queued: int = 0  # waiting in front of it (gateway admission queue + engine queue)
    healthy: bool = True
    engine: BatchEngine | None = None  # the simulator exposes the engine for exact predictions


# Not frozen: a frozen dataclass's __init__ costs 5x more (object.__setattr__ per field), and the
# simulator builds one per decision. Routers must treat it as read-only.
@dataclass(slots=True)
class RouteRequest:
    class_name: str
    class_priority: int
    class_index: int
    slack_s: float  # deadline minus now
    deadline_s: float  # the class's relative deadline (for normalising slack)
    input_tokens: int
    output_tokens: int  # expected output tokens (max_tokens when the client gives it)
    task: str = DEFAULT_TASK
    weight: float = 1.0


@dataclass(slots=True)
class ClusterView:
    instances: Sequence[InstanceInfo]
    loads: Sequence[InstanceLoad]
    now: float = 0.0
    # Arrival-rate estimates (requests/s) over several windows, per class; filled by the owner.
    rates: dict[str, Sequence[float]] = field(default_factory=dict)

    def healthy(self) -> list[int]:
        return [i for i, load in enumerate(self.loads) if load.healthy]


@runtime_checkable
class Router(Protocol):
    name: str

    def route(self, request: RouteRequest, cluster: ClusterView) -> int: ...


class NoInstanceAvailable(RuntimeError):
    """No healthy instance can serve the request."""


def _require_healthy(cluster: ClusterView) -> list[int]:
    healthy = cluster.healthy()
    if not healthy:
        raise NoInstanceAvailable("no healthy instance")
    return healthy


class StaticRouter:
    """Always the named model (size alias or catalog name); least loaded among its instances."""

    def __init__(self, model: str) -> None:
        self.model = resolve_model(model).name
        self.name = f"static:{model}"

    def route(self, request: RouteRequest, cluster: ClusterView) -> int:
        candidates = [i for i in _require_healthy(cluster)
                      if cluster.instances[i].model == self.model]
        if not candidates:
            raise NoInstanceAvailable(f"no healthy instance of {self.model}")
        return min(candidates, key=lambda i: (cluster.loads[i].in_flight + cluster.loads[i].queued, i))


class JoinShortestQueueRouter:
    """Least outstanding requests (in flight + queued), relative to batch size."""

    name = "jsq"

    def route(self, request: RouteRequest, cluster: ClusterView) -> int:
        def load(i: int) -> tuple[float, int]:
            li = cluster.loads[i]
            return ((li.in_flight + li.queued) / cluster.instances[i].latency.max_batch, i)
        return min(_require_healthy(cluster), key=load)


class RoundRobinRouter:
    name = "rr"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def route(self, request: RouteRequest, cluster: ClusterView) -> int:
        healthy = _require_healthy(cluster)
        return healthy[next(self._counter) % len(healthy)]


class RandomRouter:
    name = "random"

    def __init__(self, seed: int = 0) -> None:
        import random
        self._rng = random.Random(seed)

    def route(self, request: RouteRequest, cluster: ClusterView) -> int:
        return self._rng.choice(_require_healthy(cluster))


RouterFactory = Callable[..., Router]

_BUILTIN: dict[str, RouterFactory] = {
    "static": StaticRouter,
    "jsq": JoinShortestQueueRouter,
    "rr": RoundRobinRouter,
    "random": RandomRouter,
}
_registered: dict[str, RouterFactory] = {}


def register_router(name: str, factory: RouterFactory) -> None:
    """Register a router factory under ``name`` (for code that does not use entry points)."""
    _registered[name] = factory


def available_routers() -> list[str]:
    names = set(_BUILTIN) | set(_registered)
    names |= {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def create_router(spec: str, **options: object) -> Router:
    """Build a router from ``name`` or ``name:argument`` plus keyword options."""
    name, _, arg = spec.partition(":")
    factory = _registered.get(name) or _BUILTIN.get(name)
    if factory is None:
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=name):
            factory = ep.load()
            break
    if factory is None:
        raise KeyError(f"unknown router {name!r} (available: {', '.join(available_routers())})")
    args = (arg,) if arg else ()
    return factory(*args, **options)
