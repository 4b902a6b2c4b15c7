"""Routers: the slack-fit heuristic and the learned DQN router (both registered in the
``quicgw.routers`` entry-point group), plus the baseline set the evaluation uses.

Routers see only a :class:`~quicgw.core.routing.RouteRequest` and a
:class:`~quicgw.core.routing.ClusterView`, in the simulator and in the gateway alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from quicgw.core.features import (
    MAX_INSTANCES,
    OBS_DIM,
    gather,
    predicted_latency_s,
)
from quicgw.core.routing import (
    ClusterView,
    JoinShortestQueueRouter,
    NoInstanceAvailable,
    RandomRouter,
    RoundRobinRouter,
    Router,
    RouteRequest,
    StaticRouter,
)
from rlrouter.policy import NumpyQPolicy, _kernels

# slackfit-tuned's reserve: the fraction of the slack slack-fit keeps in hand, grid-searched on
# the validation seeds (poster cluster, both workloads): `training/evaluate.py --tune-slackfit`.
TUNED_MARGIN = 0.6
# slackfit-class: one reserve per class in class-table order (realtime, free, bulk), grid-searched
# the same way (`--tune-slackfit`). Most of what a learned router gains over one margin is this
# class differentiation, so it is the baseline the DQN has to beat.
TUNED_CLASS_MARGINS: tuple[float, ...] = (0.45, 0.5, 0.75)
# slackfit-reserve: per-class margins, and the best model's instances are kept for the top class
# once they are this full (in flight + queued, as a fraction of max batch); margins and reserve
# tuned together the same way (the reservation moves the best margins).
TUNED_RESERVE_MARGINS: tuple[float, ...] = (0.35, 0.35, 0.8)
TUNED_RESERVE = 0.625
TUNED = "tuned"  # SlackFitRouter("tuned"): the two above, `router = "slackfit:tuned"`


class SlackFitRouter:
    """The most accurate model whose predicted completion still meets the deadline.

    The prediction is the engine's own (``BatchEngine.estimate_latency_s``: current batch,
    remaining tokens of running requests, the queue ahead under the instance's policy) when the
    view carries engines (the simulator), else the count-based prediction from live in-flight
    and queued counts (the gateway). Among instances of the chosen model, the one with the
    lowest predicted latency wins; if nothing can meet the deadline, the fastest predicted.

    ``margin`` is the fraction of the slack kept in reserve: one number for every class, or one
    per class in class-table order (a sequence, or ``"0.4/0.5/0.7"`` as in the gateway's
    ``router = "slackfit:0.4/0.5/0.7"``; classes past the last entry use the last).
    ``"tuned"`` (``router = "slackfit:tuned"``) is the best configuration we have for the
    poster's three classes: :data:`TUNED_RESERVE_MARGINS` with ``reserve`` defaulting to
    :data:`TUNED_RESERVE` (the ``slackfit-reserve`` baseline).

    ``reserve`` (off by default; ``router_options = {reserve = 0.5}`` in the gateway) keeps the
    instances of the most accurate model present for the top class (class index 0) once they
    hold ``reserve * max_batch`` requests (in flight + queued): lower classes then look
    elsewhere, so a burst of them cannot fill the batch a realtime request will need. (In the
    fluid optimum of the poster's mix at high load the large model serves realtime only.) If
    every instance is reserved, the reservation is ignored.
    """

    name = "slackfit"

    def __init__(self, margin: float | str | Sequence[float] = 0.0,
                 reserve: float | None = None) -> None:
        if margin == TUNED:
            margin = TUNED_RESERVE_MARGINS
            reserve = TUNED_RESERVE if reserve is None else reserve
        if isinstance(margin, str):
            try:
                margins = tuple(float(x) for x in margin.split("/"))
            except ValueError:
                raise ValueError(f"slackfit margins: {TUNED!r} or numbers separated by '/' "
                                 f"(e.g. 0.4/0.5/0.7), got {margin!r}") from None
        elif isinstance(margin, int | float):
            margins = (float(margin),)
        else:
            margins = tuple(float(x) for x in margin)
        if not margins or not all(0.0 <= m < 1.0 for m in margins):
            raise ValueError(f"slackfit margins must be in [0, 1), got {margin!r}")
        self.margins = margins
        self.margin = margins[0]  # the one margin when a single number was given
        if reserve is not None and not 0.0 < float(reserve) <= 1.0:
            raise ValueError(f"slackfit reserve must be in (0, 1], got {reserve!r}")
        self.reserve = None if reserve is None else float(reserve)

    def margin_for(self, class_index: int) -> float:
        m = self.margins
        return m[class_index] if 0 <= class_index < len(m) else m[-1]

    def predict(self, request: RouteRequest, cluster: ClusterView, i: int) -> float:
        load = cluster.loads[i]
        if load.engine is not None:
            return load.engine.estimate_latency_s(
                request.input_tokens, request.output_tokens, request.class_priority)
        return predicted_latency_s(cluster.instances[i], load.in_flight, load.queued,
                                   request.input_tokens, request.output_tokens)

    def _reserved(self, request: RouteRequest, cluster: ClusterView) -> set[int]:
        if self.reserve is None or request.class_index <= 0:
            return set()
        healthy = [i for i, load in enumerate(cluster.loads) if load.healthy]
        quality = {i: cluster.instances[i].task_quality(request.task) for i in healthy}
        top = max(quality.values(), default=0.0)
        reserved = {i for i in healthy if quality[i] >= top and (
            cluster.loads[i].in_flight + cluster.loads[i].queued
            >= self.reserve * cluster.instances[i].latency.max_batch)}
        return set() if len(reserved) == len(healthy) else reserved

    def route(self, request: RouteRequest, cluster: ClusterView) -> int:
        budget = request.slack_s * (1.0 - self.margin_for(request.class_index))
        reserved = self._reserved(request, cluster)
        best, best_key = -1, None
        fastest, fastest_t = -1, float("inf")
        for i, load in enumerate(cluster.loads):
            if not load.healthy or i in reserved:
                continue
            t = self.predict(request, cluster, i)
            if t < fastest_t:
                fastest, fastest_t = i, t
            if t <= budget:
                key = (cluster.instances[i].task_quality(request.task), -t)
                if best_key is None or key > best_key:
                    best, best_key = i, key
        if best >= 0:
            return best
        if fastest < 0:
            raise NoInstanceAvailable("no healthy instance")
        return fastest


class DQNRouter:
    """The learned router: the exported Q-network scores every instance from the shared
    observation; the best-scoring healthy instance wins. Torch-free.

    A decision packs the request and the live counts into a buffer (features.gather) and makes
    one compiled call that writes the observation into the router's buffer and, when every
    instance is healthy, runs the hidden layers (rlrouter.policy._decide); a numpy
    matrix-vector product and argmax finish it. Nothing is allocated per decision; one router
    object serves one decision at a time.
    """

    name = "dqn"

    def __init__(self, policy: str | Path | NumpyQPolicy | None = None) -> None:
        self.policy = policy if isinstance(policy, NumpyQPolicy) else NumpyQPolicy.load(policy)
        self._obs = np.zeros(OBS_DIM, dtype=np.float32)
        self._req: np.ndarray | None = None  # gather()'s scratch buffer, made on first use
        self._per_n: dict[int, tuple] = {}  # slot count -> (policy, weights, z, q, w3)
        self._decide = _kernels()[1]  # compiled now (or loaded from the cache), not mid-request

    def _setup(self, n: int) -> tuple:
        if n > MAX_INSTANCES:
            raise ValueError(f"the dqn router serves at most {MAX_INSTANCES} instances")
        p = self.policy
        per = self._per_n[n] = (p, p.packed(n), *p.buffers(n), p.w3)
        return per

    def route(self, request: RouteRequest, cluster: ClusterView) -> int:
        n = len(cluster.instances)
        per = self._per_n.get(n)
        if per is None or per[0] is not self.policy:
            per = self._setup(n)
        _, w, z, q, w3 = per
        obs = self._obs
        req, rows = gather(request, cluster, self._req)
        self._req = req  # a bigger one after a rate table of more than 16 classes
        # One compiled call: the observation into obs (slots past n are never read) and, with
        # every instance healthy, the hidden layers into z.
        if self._decide(req, rows, obs, w, z) < 0:
            best = self.policy.best(obs, n, False)
            if best < 0:
                raise NoInstanceAvailable("no healthy instance")
            return best
        z.dot(w3, q)
        return int(q.argmax())


def baseline_routers(seed: int = 0) -> dict[str, Router]:
    """The baselines every evaluation reports, by display name."""
    return {
        "static-small": StaticRouter("small"),
        "static-medium": StaticRouter("medium"),
        "static-large": StaticRouter("large"),
        "random": RandomRouter(seed),
        "round-robin": RoundRobinRouter(),
        "jsq": JoinShortestQueueRouter(),
        "slackfit": SlackFitRouter(),
        "slackfit-tuned": SlackFitRouter(TUNED_MARGIN),
        "slackfit-class": SlackFitRouter(TUNED_CLASS_MARGINS),
        "slackfit-reserve": SlackFitRouter(TUNED),
    }
