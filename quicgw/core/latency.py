"""The latency model of one model instance on one GPU, and the continuous-batching engine that
follows it.

This is the one definition used by the emulated backend (which steps the engine in real time),
the rlrouter simulator (which fast-forwards it) and, through benchmark profiles, the ILP. The
engine is sans-IO: callers pass time in and read events out.

Iteration model (vLLM-style continuous batching, simplified):

* At each iteration boundary, waiting requests are admitted (by FCFS or by priority) while the
  batch has room (``max_batch``) and the KV cache can hold their input + output tokens.
* One iteration lasts ``tau(B) = decode_base_s + decode_per_seq_s * B`` for the B running
  requests, plus ``prefill_s_per_token * (input tokens admitted this iteration)``: newly admitted
  requests are prefilled in the same iteration (mixed batching).
* Every running request gets one output token at the end of each iteration; a request finishes
  with its last token. TTFT is the end of its first iteration minus its arrival.

Because every running request gains one token per iteration, the engine counts iterations and
keeps the running requests sorted by the count at which they complete: completions and the
latency prediction's "k-th request to finish" are read off that list without visiting the
batch, and fast-forwarding (:meth:`BatchEngine.advance_to`) costs per batch change, not per
request and token. ``generated`` is brought up to date before it returns.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LatencyModel:
    prefill_s_per_token: float
    decode_base_s: float
    decode_per_seq_s: float
    max_batch: int
    kv_capacity_tokens: int

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if min(self.prefill_s_per_token, self.decode_base_s, self.decode_per_seq_s) < 0:
            raise ValueError("latency model times must be >= 0")
        if self.kv_capacity_tokens < 1:
            raise ValueError("kv_capacity_tokens must be >= 1")

    def decode_step_s(self, batch: int) -> float:
        """tau(B): one decode iteration with B running requests."""
        return self.decode_base_s + self.decode_per_seq_s * batch

    def prefill_s(self, tokens: int) -> float:
        return self.prefill_s_per_token * tokens

    def isolated_latency_s(self, input_tokens: int, output_tokens: int, batch: int = 1) -> float:
        """End-to-end latency of one request admitted at once into a batch of ``batch``."""
        return self.prefill_s(input_tokens) + max(output_tokens, 1) * self.decode_step_s(batch)

    def saturation_rps(self, input_tokens: float, output_tokens: float) -> float:
        """Highest sustainable request rate with a full batch (requests per second).

        With B = max_batch running, each iteration moves B requests one token; each admitted
        request also costs its prefill once.
        """
        per_request = (
            output_tokens * self.decode_step_s(self.max_batch) / self.max_batch
            + self.prefill_s(int(input_tokens))
        )
        return 1.0 / per_request

    def scaled(self, time_scale: float) -> LatencyModel:
        """The same model running ``time_scale`` times faster (benchmarks in compressed time)."""
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        return LatencyModel(
            self.prefill_s_per_token / time_scale,
            self.decode_base_s / time_scale,
            self.decode_per_seq_s / time_scale,
            self.max_batch,
            self.kv_capacity_tokens,
        )


@dataclass(slots=True, eq=False)
class EngineRequest:
    """One request inside a :class:`BatchEngine`. Times are on the engine's clock.

    Compared by identity (``eq=False``): two requests are never the same because their fields
    match, and the engine's list removals stay cheap.
    """

    rid: Hashable
    input_tokens: int
    output_tokens: int
    arrival: float
    priority: int = 0  # lower is served first under the "priority" policy (vLLM semantics)
    deadline: float = math.inf
    admitted: float | None = None
    first_token: float | None = None
    finished: float | None = None
    generated: int = 0
    cancelled: bool = False
    # While running: the engine's iteration count at which ``generated`` was 0, so that
    # ``generated = iterations - zero_at`` (set on admission).
    zero_at: int = field(default=0, init=False, repr=False)

    @property
    def kv_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def remaining(self) -> int:
        return self.output_tokens - self.generated


@dataclass(slots=True)
class Iteration:
    """One engine iteration: it runs from ``start`` to ``end``; every request in ``batch`` gets a
    token at ``end``; ``admitted`` were prefilled in it."""

    start: float
    end: float
    batch: list[EngineRequest]
    admitted: list[EngineRequest]


POLICIES = ("fcfs", "priority")
_INF = math.inf


@dataclass(slots=True)
class BatchEngine:
    """Continuous batching for one instance, driven by the caller's clock."""

    model: LatencyModel
    policy: str = "fcfs"
    running: list[EngineRequest] = field(default_factory=list)
    _waiting: list[tuple[tuple, EngineRequest]] = field(default_factory=list)
    _seq: itertools.count = field(default_factory=itertools.count)
    _current: Iteration | None = None
    _kv_used: int = 0
    _n_waiting: int = 0
    now: float = 0.0
    # Iterations finished so far; the running requests as (iteration count at their last
    # token, admission order, request), sorted; and the sum of those counts.
    _iters: int = 0
    _ends: list[tuple[int, int, EngineRequest]] = field(default_factory=list)
    _ends_sum: int = 0
    _admissions: itertools.count = field(default_factory=itertools.count)
    # Waiting requests per priority: [count, input tokens, output tokens] (for predictions).
    _queued: dict[int, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown queue policy {self.policy!r} (choose from {POLICIES})")

    # -- state ---------------------------------------------------------------------------
    @property
    def n_running(self) -> int:
        return len(self.running)

    @property
    def n_waiting(self) -> int:
        return self._n_waiting

    @property
    def busy(self) -> bool:
        return bool(self.running) or self._n_waiting > 0

    @property
    def current(self) -> Iteration | None:
        return self._current

    def waiting(self) -> list[EngineRequest]:
        """Waiting requests in service order."""
        return [r for _, r in sorted(self._waiting) if not r.cancelled]

    def queued_ahead(self, priority: float = math.inf) -> tuple[int, int, int]:
        """(count, input tokens, output tokens) of the waiting requests whose priority value is
        at most ``priority`` (all of them by default)."""
        if not self._n_waiting:
            return 0, 0, 0
        n = inp = out = 0
        for p, (c, i, o) in self._queued.items():
            if p <= priority:
                n += c
                inp += i
                out += o
        return n, inp, out

    # -- input ---------------------------------------------------------------------------
    def submit(self, request: EngineRequest) -> None:
        if request.input_tokens + request.output_tokens > self.model.kv_capacity_tokens:
            raise ValueError(
                f"request needs {request.kv_tokens} KV tokens; the instance holds "
                f"{self.model.kv_capacity_tokens}"
            )
        if request.output_tokens < 1:
            raise ValueError("output_tokens must be >= 1")
        key = (request.priority, next(self._seq)) if self.policy == "priority" else (
            0, next(self._seq))
        heapq.heappush(self._waiting, (key, request))
        self._n_waiting += 1
        self._count_queued(request, 1)

    def cancel(self, request: EngineRequest) -> None:
        """Drop a waiting or running request; its batch slot and KV are freed at once."""
        if request.cancelled or request.finished is not None:
            return
        request.cancelled = True
        if request.admitted is None:
            self._n_waiting -= 1
            self._count_queued(request, -1)
        elif request in self.running:
            request.generated = self._iters - request.zero_at  # current after advance_to(sync=False)
            self.running.remove(request)
            self._kv_used -= request.kv_tokens
            for i, e in enumerate(self._ends):
                if e[2] is request:
                    del self._ends[i]
                    self._ends_sum -= e[0]
                    break

    def _count_queued(self, r: EngineRequest, sign: int) -> None:
        q = self._queued.get(r.priority)
        if q is None:
            q = self._queued[r.priority] = [0, 0, 0]
        q[0] += sign
        q[1] += sign * r.input_tokens
        q[2] += sign * r.output_tokens

    # -- stepping (real time: the emulated backend) ----------------------------------------
    def start_iteration(self, now: float) -> Iteration | None:
        """Begin the next iteration at ``now``: admit what fits and fix its duration.

        Returns None when there is nothing to run. Call :meth:`finish_iteration` at its end.
        """
        if self._current is not None:
            raise RuntimeError("an iteration is already running")
        admitted = self._admit(now)
        if not self.running:
            return None
        duration = self.model.decode_step_s(len(self.running)) + self.model.prefill_s(
            sum(r.input_tokens for r in admitted)
        )
        self._current = Iteration(now, now + duration, list(self.running), admitted)
        return self._current

    def finish_iteration(self) -> list[EngineRequest]:
        """End the running iteration: one token each; returns the requests that finished."""
        it = self._current
        if it is None:
            raise RuntimeError("no iteration is running")
        self._current = None
        self.now = it.end
        self._iters += 1
        done = []
        for r in it.batch:
            if r.cancelled:
                continue
            r.generated += 1
            if r.first_token is None:
                r.first_token = it.end
            if r.generated >= r.output_tokens:
                r.finished = it.end
                done.append(r)
        if done:
            for r in done:
                self.running.remove(r)
                self._kv_used -= r.kv_tokens
        ends = self._ends
        while ends and ends[0][0] <= self._iters:  # exactly the ones that finished
            self._ends_sum -= ends.pop(0)[0]
        return done

    # -- fast-forward (simulation) ---------------------------------------------------------
    def advance_to(self, t: float, sync: bool = True) -> list[EngineRequest]:
        """Run every iteration that ends at or before ``t``; returns the finished requests.

        Identical iterations (no admission possible, batch unchanged) are jumped over in one
        step (``now += k * step``), and tokens are counted per iteration, not per request
        (``generated`` is brought up to date on return), so the cost is per batch change. The
        result is that of calling :meth:`start_iteration` / :meth:`finish_iteration` back to
        back, up to the rounding of the jumps.

        ``sync=False`` is for a caller that only ever advances the engine this way (the
        simulator): the running requests' ``generated`` is not brought up to date (a visit per
        request per call; read :meth:`generated` instead), the pending iteration's ``batch``
        is the live running list, not a copy, and its :class:`Iteration` object is reused.
        """
        finished: list[EngineRequest] = []
        it = self._current
        running = self.running
        if it is None:
            if not running and not self._n_waiting:
                self.now = max(self.now, t)
                return finished
            end = None
        elif it.end > t:
            return finished
        else:
            self._current = None
            end, admitted = it.end, it.admitted
        m = self.model
        tau0, tau1, pre = m.decode_base_s, m.decode_per_seq_s, m.prefill_s_per_token
        max_batch = m.max_batch
        ends = self._ends
        iters = synced = self._iters
        now = self.now
        while True:
            if end is None:
                # Start an iteration at `now` (what start_iteration does, without the copy of
                # the batch unless it outlasts `t`).
                if not running and not self._n_waiting:
                    now = max(now, t)
                    break
                self._iters = iters  # _admit stamps zero_at from it
                admitted = self._admit(now)
                if not running:
                    now = max(now, t)
                    break
                tokens = 0
                for r in admitted:
                    tokens += r.input_tokens
                end = now + ((tau0 + tau1 * len(running)) + pre * tokens)
                if end > t:
                    if sync or it is None:
                        it = Iteration(now, end, list(running) if sync else running, admitted)
                    else:  # sync=False: the finished iteration's object is reused
                        it.start, it.end, it.batch, it.admitted = now, end, running, admitted
                    self._current = it
                    break
            # Finish the iteration: every running request gets a token (counted in `iters`).
            now = end
            end = None
            iters += 1
            for r in admitted:
                if r.first_token is None and not r.cancelled:
                    r.first_token = now
            if ends and ends[0][0] <= iters:
                while ends and ends[0][0] <= iters:
                    d, _, r = ends.pop(0)
                    self._ends_sum -= d
                    r.generated = r.output_tokens
                    r.finished = now
                    running.remove(r)
                    self._kv_used -= r.input_tokens + r.output_tokens
                    finished.append(r)
            if not running:
                continue
            if len(running) < max_batch and self._waiting and self._can_admit():
                continue
            # Steady state: the batch can only change when a running request finishes.
            step = tau0 + tau1 * len(running)
            k = ends[0][0] - iters - 1
            if t != _INF:
                kt = int((t - now) / step)
                if kt < k:
                    k = kt
            if k > 0:
                iters += k
                now += k * step
            # Nothing changed, so the next iteration admits nothing: start it here.
            admitted = []
            end = now + (step + pre * 0)
            if end > t:
                if sync or it is None:
                    it = Iteration(now, end, list(running) if sync else running, admitted)
                else:
                    it.start, it.end, it.batch, it.admitted = now, end, running, admitted
                self._current = it
                break
        self.now = now
        self._iters = iters
        if sync and iters != synced:
            for r in running:
                r.generated = iters - r.zero_at
        return finished

    def generated(self, r: EngineRequest) -> int:
        """Tokens ``r`` has generated, current even after ``advance_to(sync=False)``."""
        if r.admitted is None or r.finished is not None or r.cancelled:
            return r.generated
        return self._iters - r.zero_at

    def _can_admit(self) -> bool:
        m = self.model
        if len(self.running) >= m.max_batch:
            return False
        waiting = self._waiting
        while waiting:
            head = waiting[0][1]
            if not head.cancelled:
                return self._kv_used + head.input_tokens + head.output_tokens <= m.kv_capacity_tokens
            heapq.heappop(waiting)
        return False

    def _admit(self, now: float) -> list[EngineRequest]:
        admitted: list[EngineRequest] = []
        waiting = self._waiting
        if not waiting:
            return admitted
        running = self.running
        while self._can_admit():
            _, r = heapq.heappop(waiting)
            self._n_waiting -= 1
            self._count_queued(r, -1)
            r.admitted = now
            running.append(r)
            self._kv_used += r.input_tokens + r.output_tokens
            r.zero_at = zero_at = self._iters - r.generated
            done = zero_at + r.output_tokens
            bisect.insort(self._ends, (done, next(self._admissions), r))
            self._ends_sum += done
            admitted.append(r)
        return admitted

    # -- prediction (routers) ---------------------------------------------------------------
    def estimate_latency_s(self, input_tokens: int, output_tokens: int, priority: int = 0) -> float:
        """Predicted end-to-end latency of a request submitted now (for deadline-aware routers).

        Counts the requests that would be served before it (all waiting under FCFS; those of
        equal or higher priority under "priority"), waits for enough running requests to finish
        to make room, then serves it in a batch of the resulting size.
        """
        m = self.model
        max_batch = m.max_batch
        n_ahead, _, out_ahead = self.queued_ahead(math.inf if self.policy == "fcfs" else priority)
        running = self.running
        n_run = len(running)
        occupied = n_run + n_ahead
        step = m.decode_base_s + m.decode_per_seq_s * (
            max_batch if occupied + 1 > max_batch else occupied + 1)  # decode_step_s, inline
        wait = 0.0
        if occupied >= max_batch:
            # The slot we get is freed by the (occupied - max_batch + 1)-th completion, counting
            # running requests' remaining tokens (the sorted completion list), then the ones
            # ahead in line in order.
            ends, iters = self._ends, self._iters
            need = occupied - max_batch + 1
            if need <= n_run:
                wait = (ends[need - 1][0] - iters) * step
            else:
                # Rough: every further slot turns over after an average request's worth of tokens.
                mean_out = (self._ends_sum - iters * n_run + out_ahead) / (n_run + n_ahead)
                wait = ((ends[-1][0] - iters) if ends else 0) * step + (
                    (need - n_run) / max_batch) * mean_out * step
        return wait + m.prefill_s_per_token * input_tokens + (
            output_tokens if output_tokens > 1 else 1) * step
