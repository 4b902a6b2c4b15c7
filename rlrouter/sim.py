"""The cluster simulator: sans-IO, deterministic given its arrivals (and so given a seed).

Requests of the workload arrive one at a time; the caller (a router, or the Gymnasium
environment) picks an instance for each; instances are the core's
:class:`~quicgw.core.latency.BatchEngine` (continuous batching under the shared latency model,
fast-forwarded between arrivals). A request earns ``weight * quality`` if its response reaches
the client within its class deadline (:mod:`quicgw.core.score`).

Optionally the requests and responses cross a network link (:mod:`rlrouter.network`): the
request bytes are uploaded before the gateway can route the request (its slack shrinks by the
upload time) and the response bytes are downloaded after the engine finishes.

Reward (for learning): the sum of a run's rewards equals its total weighted score exactly. With
``reward="shaped"`` (default) each decision is credited at once:

* with the reward the engine's own predictor (``BatchEngine.estimate_latency_s``) expects for
  the routed request (``weight * quality`` if predicted in time, else 0), minus
* the predicted reward it takes from requests already on that instance: joining a batch slows
  every decode step by ``decode_per_seq_s`` while both run, and its prefill stalls the batch
  once (mixed batching); a request whose predicted finish crosses its deadline loses its credit.

When a request completes, the difference between what it earned and what it is still credited
with is paid. This is potential-based shaping (potential: the credited reward in flight): it
telescopes, so the rewards of a run sum to its weighted score whatever the predictions, and the
blame for slowing others lands on the decision that did it. ``reward="completion"`` pays only
outcomes, when they are known.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quicgw.core.classes import DEFAULT_CLASS_TABLE, ClassTable
from quicgw.core.features import RateEstimator
from quicgw.core.latency import BatchEngine, EngineRequest
from quicgw.core.routing import ClusterView, InstanceInfo, InstanceLoad, Router, RouteRequest
from quicgw.core.score import ScoreBoard
from rlrouter.workloads import Arrivals

REWARDS = ("shaped", "completion")


@dataclass(slots=True)
class RunResult:
    score: float
    board: ScoreBoard
    requests: int
    model_share: dict[str, float]
    latency_p50_s: float
    latency_p99_s: float

    def as_dict(self) -> dict:
        per_class = {
            c: {"attainment": v["met"] / v["requests"] if v["requests"] else 0.0,
                "requests": int(v["requests"]),
                "score": v["reward"] / v["weight"] if v["weight"] else 0.0}
            for c, v in self.board.per_class.items()
        }
        return {"score": self.score, "requests": self.requests, "model_share": self.model_share,
                "latency_p50_s": self.latency_p50_s, "latency_p99_s": self.latency_p99_s,
                "per_class": per_class}


class Simulator:
    """One run: a cluster serving one workload's arrivals.

    Protocol: while ``not sim.done``: read ``sim.request`` and ``sim.view``, call
    ``sim.route(index)`` (returns the reward paid at this step). ``sim.run(router)`` does that
    loop with a :class:`~quicgw.core.routing.Router`.
    """

    def __init__(self, instances: Sequence[InstanceInfo], arrivals: Arrivals,
                 classes: ClassTable = DEFAULT_CLASS_TABLE, *, engine_policy: str = "priority",
                 reward: str = "shaped", network: object | None = None) -> None:
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r} (choose from {', '.join(REWARDS)})")
        if not instances:
            raise ValueError("a cluster needs at least one instance")
        self.instances = tuple(instances)
        self.arrivals = arrivals
        self.reward_mode = reward
        self.engines = [BatchEngine(i.latency, engine_policy) for i in self.instances]
        self.loads = [InstanceLoad(engine=e) for e in self.engines]
        self.board = ScoreBoard()
        self.network = network
        tclasses = list(classes)
        names = [c.name for c in tclasses]
        if list(arrivals.class_names) != names:
            raise ValueError(f"workload classes {arrivals.class_names} != class table {names}")
        self._class_names = names
        self.rate_estimator = RateEstimator.for_keys(names)
        self._weights = [c.reward_weight for c in tclasses]
        self._prio = [c.priority for c in tclasses]
        self._deadline = [c.deadline_ms / 1000.0 for c in tclasses]
        # quality[instance][task]
        self._quality = [[inst.task_quality(t) for t in arrivals.tasks]
                         for inst in self.instances]
        n = len(arrivals)
        self.n = n
        self._cls = arrivals.cls.tolist()
        self._inp = arrivals.input_tokens.tolist()
        self._out = arrivals.output_tokens.tolist()
        self._task = arrivals.task.tolist()
        self._tasks = arrivals.tasks
        self._sent = arrivals.time.tolist()  # client send time; the deadline counts from here
        if network is not None:
            self._at_gateway = network.upload(arrivals)
        else:
            self._at_gateway = self._sent
        # Requests reach the gateway in upload-completion order.
        self._order = sorted(range(n), key=self._at_gateway.__getitem__)
        self.routed = np.full(n, -1, dtype=np.int64)
        self._latencies: list[float] = []
        self._credit = [0.0] * n  # reward credited and not yet settled, per request
        self._finish = [0.0] * n  # predicted finish (engine clock), per request
        self._due = [0.0] * n  # latest finish that still meets the deadline
        self._holding: list[list[EngineRequest]] = [[] for _ in self.instances]
        # Diagnostics of the shaped reward: credited at decisions, taken back as harm, paid on
        # settlement (earned more than still credited), taken back on settlement.
        self.shaping = [0.0, 0.0, 0.0, 0.0]
        self._model_counts = [0] * len(self.instances)
        self._pos = 0
        self.now = 0.0
        # The view's rates are the estimator's table itself (class-table order, updated in
        # place by observe): what all_rates(names, now) would return after each arrival.
        self.view = ClusterView(self.instances, self.loads, 0.0, self.rate_estimator.table)
        self.request: RouteRequest | None = None
        self._pending_reward = 0.0
        self._next_request()

    # -- state -------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.request is None

    @property
    def current_index(self) -> int:
        return self._order[self._pos]

    # -- lookahead -----------------------------------------------------------------------------
    # Inputs a fork never writes: shared, not copied.
    _SHARED = ("instances", "arrivals", "_class_names", "_weights", "_prio", "_deadline",
               "_quality", "_tasks")
    # Flat per-request lists: copied by slicing (a deepcopy walks them item by item).
    _PER_REQUEST = ("_cls", "_inp", "_out", "_task", "_sent", "_credit", "_finish", "_due")

    def fork(self, future: Arrivals | None = None) -> Simulator:
        """A copy of this run's state for lookahead (rollouts, training/headroom.py): routing
        the copy leaves this run untouched. With ``future`` (times at or after ``now``), the
        arrivals after the pending request are replaced by ``future``'s, e.g. a sampled
        continuation; without it the copy sees this run's real future."""
        k = self.current_index if self.request is not None else self.n
        if future is not None and (self.network is not None or k != self._pos):
            raise ValueError("fork(future) needs a run without a network stage")
        memo: dict[int, object] = {id(getattr(self, a)): getattr(self, a) for a in self._SHARED}
        keep = self.n if future is None else k + 1
        for a in self._PER_REQUEST:
            v = getattr(self, a)
            memo[id(v)] = v[:keep]
        memo[id(self._at_gateway)] = (memo[id(self._sent)] if self._at_gateway is self._sent
                                      else self._at_gateway[:keep])
        memo[id(self._order)] = self._order[:keep]
        memo[id(self.routed)] = self.routed[:keep].copy()
        memo[id(self._latencies)] = self._latencies[:]
        fork = copy.deepcopy(self, memo)
        if future is not None:
            m = len(future)
            fork._cls += future.cls.tolist()
            fork._inp += future.input_tokens.tolist()
            fork._out += future.output_tokens.tolist()
            fork._task += future.task.tolist()
            fork._sent += future.time.tolist()  # _at_gateway is the same list
            fork._credit += [0.0] * m
            fork._finish += [0.0] * m
            fork._due += [0.0] * m
            fork._order += range(keep, keep + m)
            fork.routed = np.concatenate([fork.routed, np.full(m, -1, dtype=np.int64)])
            fork.n = keep + m
        return fork

    # -- stepping ------------------------------------------------------------------------------
    def route(self, index: int) -> float:
        """Send the pending request to instance ``index``; run to the next arrival. Returns the
        reward paid at this step (see the module docstring)."""
        if self.request is None:
            raise RuntimeError("the run is over")
        if not 0 <= index < len(self.loads) or not self.loads[index].healthy:
            raise ValueError(f"instance {index} is not routable")
        k = self._order[self._pos]
        c = self._cls[k]
        engine = self.engines[index]
        now = self.now
        inp, out, prio = self._inp[k], self._out[k], self._prio[c]
        deadline_abs = self._sent[k] + self._deadline[c]
        er = EngineRequest(k, inp, out, now, prio, deadline_abs)
        reward = 0.0
        if self.reward_mode == "shaped":
            due = deadline_abs if self.network is None else (
                deadline_abs - self._response_delay_guess(k))
            finish = now + self._predicted_latency(engine, inp, out, prio)
            credit = self._weights[c] * self._quality[index][self._task[k]] if finish <= due else 0.0
            self._credit[k] = credit
            self._finish[k] = finish
            self._due[k] = due
            harm = self._harm(index, inp, out, prio)
            shaping = self.shaping
            shaping[0] += credit
            shaping[1] += harm
            reward += credit - harm
            if credit:
                self._holding[index].append(er)
        engine.submit(er)
        self.loads[index].queued = engine._n_waiting
        self.routed[k] = index
        self._model_counts[index] += 1
        self._pos += 1
        self._next_request()
        reward += self._pending_reward
        self._pending_reward = 0.0
        return reward

    def run(self, router: Router) -> RunResult:
        while self.request is not None:
            self.route(router.route(self.request, self.view))
        return self.result()

    def result(self) -> RunResult:
        lat = np.asarray(self._latencies) if self._latencies else np.zeros(1)
        share: dict[str, float] = {}
        total = max(1, sum(self._model_counts))
        for inst, cnt in zip(self.instances, self._model_counts, strict=True):
            share[inst.model] = share.get(inst.model, 0.0) + cnt / total
        return RunResult(self.board.score, self.board, self.n, share,
                         float(np.percentile(lat, 50)), float(np.percentile(lat, 99)))

    # -- internals -----------------------------------------------------------------------------
    def _response_delay_guess(self, k: int) -> float:
        return 0.0 if self.network is None else self.network.response_delay_estimate(self._out[k])

    def _harm(self, i: int, input_tokens: int, output_tokens: int, priority: int,
              dry: bool = False) -> float:
        """Credit lost by the requests on instance ``i`` when a new request joins (see the
        module docstring). Only requests still holding credit can lose it, so only they are
        visited."""
        engine = self.engines[i]
        held = self._holding[i]
        if not held:
            return 0.0
        m = engine.model
        stall = m.prefill_s_per_token * input_tokens
        room = len(engine.running) + engine._n_waiting < m.max_batch
        tau1 = m.decode_per_seq_s if room else 0.0
        # A full instance: the newcomer takes the next free slot ahead of lower classes.
        turn = 0.0 if room else output_tokens * m.decode_step_s(m.max_batch) / m.max_batch
        finish, due, credit = self._finish, self._due, self._credit
        iters = engine._iters  # running requests' progress: engine.generated(r), inline
        lost = 0.0
        keep: list[EngineRequest] = []
        append = keep.append
        for r in held:
            rid = r.rid
            if not credit[rid] or r.finished is not None:
                continue
            # Predicted finishes only grow (each newcomer's delay adds up): a pessimistic
            # prediction, which trained better policies than re-predicting from the current
            # batch (see the README's rlrouter section).
            queued = r.admitted is None
            left = r.output_tokens - (r.generated if queued else iters - r.zero_at)
            f2 = finish[rid] + stall + tau1 * (left if left < output_tokens else output_tokens)
            if queued and r.priority > priority:
                f2 += turn
            if dry:
                if f2 > due[rid]:
                    lost += credit[rid]
                continue
            finish[rid] = f2
            if f2 > due[rid]:
                lost += credit[rid]
                credit[rid] = 0.0
            else:
                append(r)
        if not dry:
            self._holding[i] = keep
        return lost

    def _predicted_latency(self, engine: BatchEngine, input_tokens: int, output_tokens: int,
                           priority: int) -> float:
        """The engine's own prediction for a request, plus the batch stalls of the requests
        queued ahead of it: each is prefilled in some iteration this request waits through or
        runs in (the engine's predictor counts their decode tokens, not their prefills)."""
        est = engine.estimate_latency_s(input_tokens, output_tokens, priority)
        if engine._n_waiting:
            est += engine.model.prefill_s_per_token * engine.queued_ahead(priority)[1]
        return est

    def preview(self, index: int) -> float:
        """The shaped reward routing the pending request to ``index`` would be credited with
        at once (credit minus harm), without routing it. Uses per-request engine state that a
        gateway does not have: for analysis (an upper reference for myopic routers), not a
        baseline."""
        k = self._order[self._pos]
        c = self._cls[k]
        engine = self.engines[index]
        est = self._predicted_latency(engine, self._inp[k], self._out[k], self._prio[c])
        due = self._sent[k] + self._deadline[c] - self._response_delay_guess(k)
        q = self._quality[index][self._task[k]]
        credit = self._weights[c] * q if self.now + est <= due else 0.0
        return credit - self._harm(index, self._inp[k], self._out[k], self._prio[c], dry=True)

    def _next_request(self) -> None:
        if self._pos >= self.n:
            self._advance(math.inf, False)
            if self.network is not None:
                self._finish_downloads(math.inf)
            self.request = None
            return
        k = self._order[self._pos]
        t = self._at_gateway[k]
        self._advance(t)
        self.now = t
        c = self._cls[k]
        name = self._class_names[c]
        self.rate_estimator.observe(name, t)  # the view's rates are its table
        self.view.now = t
        deadline = self._deadline[c]
        # Positional (class_name, class_priority, class_index, slack_s, deadline_s,
        # input_tokens, output_tokens, task, weight): a third cheaper than keywords.
        self.request = RouteRequest(
            name, self._prio[c], c, self._sent[k] + deadline - t, deadline, self._inp[k],
            self._out[k], self._tasks[self._task[k]], self._weights[c])

    def _advance(self, t: float, loads: bool = True) -> None:
        """Run the engines to ``t``; ``loads``: bring the view's counts up to date for each
        engine that ran (the others' counts did not change; route() updates the queue it
        submits to)."""
        network = self.network
        for i, e in enumerate(self.engines):
            cur = e._current
            if cur is None:
                if not e.running and not e._n_waiting:
                    if t > e.now and t != math.inf:
                        e.now = t  # what advance_to does for an idle engine, without the call
                    continue
            elif cur.end > t:
                continue  # mid-iteration: nothing ends by t (advance_to would return at once)
            done = e.advance_to(t, False)  # generated stays stale: _harm reads engine progress
            if loads:
                load = self.loads[i]
                load.in_flight = len(e.running)
                load.queued = e._n_waiting
            if done:
                for r in done:
                    if network is None:
                        self._score(r.rid, i, r.finished)
                    else:
                        self._finished(i, r)
        if network is not None:
            self._finish_downloads(t)

    def _finished(self, i: int, r: EngineRequest) -> None:
        if self.network is not None:
            k = r.rid
            self.network.download(k, r.finished, self._out[k], self._sent[k], self._cls[k], i)
            return
        self._score(r.rid, i, r.finished)

    def _finish_downloads(self, t: float) -> None:
        for rid, inst, t_done in self.network.delivered(t):
            self._score(rid, inst, t_done)

    def _score(self, k: int, i: int, t_done: float) -> None:
        c = self._cls[k]
        latency = t_done - self._sent[k]
        met = latency <= self._deadline[c] + 1e-9
        w = self._weights[c]
        q = self._quality[i][self._task[k]]
        self.board.add(self._class_names[c], w, q, met, latency)
        self._latencies.append(latency)
        earned = w * q if met else 0.0
        settle = earned - self._credit[k]
        self._pending_reward += settle
        self._credit[k] = 0.0
        if settle > 0:
            self.shaping[2] += settle
        else:
            self.shaping[3] -= settle


def simulate(instances: Sequence[InstanceInfo], arrivals: Arrivals, router: Router,
             **kwargs) -> RunResult:
    return Simulator(instances, arrivals, **kwargs).run(router)
