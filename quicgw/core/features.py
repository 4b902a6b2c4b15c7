"""Live-state features shared by training and serving.

The router observation is built by ONE function, :func:`observation`, from a
:class:`~quicgw.core.routing.RouteRequest` and a :class:`~quicgw.core.routing.ClusterView`. The
rlrouter simulator fills the view from its engines in training; the gateway fills it from its
live state in serving (in-flight and queued per instance, arrival-rate estimates from
:class:`RateEstimator`). Only fields both sides have are used (counts, not per-request engine
internals), so a trained policy sees the same thing in both.

Layout of the flat observation (float32, every entry in [-1, 1]):

``[ global (GLOBAL_DIM) | instance 0 (INSTANCE_DIM) | ... | instance MAX_INSTANCES-1 ]``

Absent instance slots are all zeros (their ``present`` flag is 0). A Q-network with shared
weights scores each instance slot from ``global + own block`` (see rlrouter.policy), so one
policy serves any cluster of up to :data:`MAX_INSTANCES` instances.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from quicgw.core.routing import ClusterView, InstanceInfo, RouteRequest

# Windows (seconds) of the arrival-rate estimates: short enough to see a burst, long enough to
# see the regime.
RATE_WINDOWS_S: tuple[float, ...] = (1.0, 10.0, 60.0)


@dataclass(slots=True)
class RateEstimator:
    """Exponentially decaying arrival-rate estimates (requests/s) per class and window.

    Each window w keeps ``r <- r * exp(-dt / w) + 1 / w`` per arrival, which converges to the
    arrival rate for stationary Poisson traffic and forgets with time constant w. All keys decay
    together on one clock (one ``exp`` per window per call, whatever the number of keys);
    times earlier than the latest seen are treated as the latest.
    """

    windows: tuple[float, ...] = RATE_WINDOWS_S
    _rates: dict[str, list[float]] = field(default_factory=dict)
    _now: float | None = None

    def _decay(self, now: float) -> None:
        last = self._now
        if last is None:
            self._now = now
            return
        dt = now - last
        if dt > 0.0:
            factors = [math.exp(-dt / w) for w in self.windows]
            for rates in self._rates.values():
                for i, f in enumerate(factors):
                    rates[i] *= f
            self._now = now

    def observe(self, key: str, now: float) -> None:
        self._decay(now)
        rates = self._rates.get(key)
        if rates is None:
            rates = self._rates[key] = [0.0] * len(self.windows)
        for i, w in enumerate(self.windows):
            rates[i] += 1.0 / w

    def rates(self, key: str, now: float) -> tuple[float, ...]:
        self._decay(now)
        rates = self._rates.get(key)
        return tuple(rates) if rates is not None else (0.0,) * len(self.windows)

    def all_rates(self, keys: Iterable[str], now: float) -> dict[str, tuple[float, ...]]:
        self._decay(now)
        zero = (0.0,) * len(self.windows)
        got = self._rates
        return {k: tuple(got[k]) if k in got else zero for k in keys}


# -- the observation ------------------------------------------------------------------------

MAX_INSTANCES = 16
MAX_CLASSES = 4
N_WINDOWS = len(RATE_WINDOWS_S)

# Reference request for the cluster's nominal capacity (rate features are relative to it, so a
# policy trained on one cluster size reads the same load level on another).
REF_INPUT_TOKENS = 256
REF_OUTPUT_TOKENS = 64
MAX_WEIGHT = 2.0
RATIO_CLIP = 4.0  # latency / deadline ratios are clipped to [0, 4]

GLOBAL_FEATURES: tuple[str, ...] = (
    *(f"class_{i}" for i in range(MAX_CLASSES)),
    "weight",
    "slack_frac",
    "deadline_s",
    "log_input_tokens",
    "log_output_tokens",
    *(f"rate_c{c}_w{w}" for c in range(MAX_CLASSES) for w in range(N_WINDOWS)),
    *(f"rate_total_w{w}" for w in range(N_WINDOWS)),
    "n_instances",
    "best_fit_quality",
    "fit_fraction",
    "cluster_in_flight",
    "cluster_queued",
)
INSTANCE_FEATURES: tuple[str, ...] = (
    "present",
    "quality",
    "quality_gap",  # quality - best quality present (<= 0)
    "isolated_latency",  # this request alone / deadline
    "full_batch_latency",  # this request in a full batch / deadline
    "in_flight",  # / max_batch
    "queued",  # / max_batch
    "predicted_latency",  # count-based prediction / slack
    "fits",  # predicted latency <= slack
    "margin",  # (slack - predicted) / deadline
    "capacity_share",
    "tail_latency",  # prediction with one more full batch ahead / deadline
)
GLOBAL_DIM = len(GLOBAL_FEATURES)
INSTANCE_DIM = len(INSTANCE_FEATURES)
OBS_DIM = GLOBAL_DIM + MAX_INSTANCES * INSTANCE_DIM
OBS_LOW = -1.0
OBS_HIGH = 1.0

_LOG_IN = math.log1p(8192)
_LOG_OUT = math.log1p(2048)
_ZEROS: list[float] = [0.0] * OBS_DIM


@dataclass(slots=True)
class _Static:
    """Per-cluster constants, computed once per instance list."""

    instances: Sequence[InstanceInfo]
    tau0: list[float]
    tau1: list[float]
    prefill: list[float]
    max_batch: list[int]
    share: list[float]
    capacity_rps: float
    _quality: dict[str, tuple[list[float], float]] = field(default_factory=dict)

    def _task(self, task: str) -> tuple[list[float], float]:
        got = self._quality.get(task)
        if got is None:
            qs = [i.quality.get(task, min(i.quality.values())) for i in self.instances]
            got = self._quality[task] = (qs, max(qs, default=0.0))
        return got

    def quality(self, task: str) -> list[float]:
        return self._task(task)[0]

    def qmax(self, task: str) -> float:
        return self._task(task)[1]


_static_cache: dict[int, _Static] = {}


def _static(instances: Sequence[InstanceInfo]) -> _Static:
    key = id(instances)
    st = _static_cache.get(key)
    if st is not None and st.instances is instances:
        return st
    if len(instances) > MAX_INSTANCES:
        raise ValueError(f"the observation holds at most {MAX_INSTANCES} instances, got {len(instances)}")
    caps = [i.latency.saturation_rps(REF_INPUT_TOKENS, REF_OUTPUT_TOKENS) for i in instances]
    total = sum(caps) or 1.0
    st = _Static(
        instances,
        [i.latency.decode_base_s for i in instances],
        [i.latency.decode_per_seq_s for i in instances],
        [i.latency.prefill_s_per_token for i in instances],
        [i.latency.max_batch for i in instances],
        [c / total for c in caps],
        total,
    )
    if len(_static_cache) > 64:
        _static_cache.clear()
    _static_cache[key] = st
    return st


def _predict(tau0: float, tau1: float, max_batch: int, prefill_s: float, occupied: int,
             output_tokens: int) -> float:
    """Count-based latency prediction: the one formula behind :func:`predicted_latency_s` and
    the observation's ``predicted_latency``/``fits``/``margin`` features."""
    step = tau0 + tau1 * (max_batch if occupied + 1 > max_batch else occupied + 1)
    over = occupied + 1 - max_batch
    wait = over / max_batch * output_tokens * step if over > 0 else 0.0
    return wait + prefill_s + output_tokens * step


def predicted_latency_s(info: InstanceInfo, in_flight: int, queued: int, input_tokens: int,
                        output_tokens: int) -> float:
    """Count-based latency prediction (what the gateway can compute from its live counts).

    A request joining ``in_flight + queued`` others runs in a batch of that size plus one; when
    the batch is full it first waits for ``over / max_batch`` turnovers of a batch, each taking
    about one request's worth of decode steps. (The simulator's engine predicts more precisely
    from per-request state; this one is used by the observation so training and serving agree.)
    """
    m = info.latency
    return _predict(m.decode_base_s, m.decode_per_seq_s, m.max_batch, m.prefill_s(input_tokens),
                    in_flight + queued, max(output_tokens, 1))


def observation(request: RouteRequest, cluster: ClusterView) -> np.ndarray:
    """The router observation (see the module docstring for the layout).

    ``cluster.rates`` maps class name -> rate estimates over :data:`RATE_WINDOWS_S`, in class
    table order (priority order); the i-th entry fills class slot i.
    """
    instances = cluster.instances
    loads = cluster.loads
    st = _static(instances)
    n = len(instances)
    deadline = request.deadline_s if request.deadline_s > 0 else 1.0
    inv_dl = 1.0 / deadline
    slack = request.slack_s
    inp = request.input_tokens
    outp = request.output_tokens if request.output_tokens > 0 else 1
    v = _ZEROS[:GLOBAL_DIM + n * INSTANCE_DIM]

    # -- global block (indices follow GLOBAL_FEATURES) --
    ci = request.class_index
    if 0 <= ci < MAX_CLASSES:
        v[ci] = 1.0
    x = request.weight / MAX_WEIGHT
    v[4] = 0.0 if x < 0.0 else 1.0 if x > 1.0 else x
    x = slack * inv_dl
    v[5] = -1.0 if x < -1.0 else 1.0 if x > 1.0 else x
    x = deadline / 5.0
    v[6] = 1.0 if x > 1.0 else x
    x = math.log1p(inp) / _LOG_IN
    v[7] = 1.0 if x > 1.0 else x
    x = math.log1p(outp) / _LOG_OUT
    v[8] = 1.0 if x > 1.0 else x
    k = 1.0 / (2.0 * st.capacity_rps)
    t0 = t1 = t2 = 0.0
    j = 9
    for c, rates in enumerate(cluster.rates.values()):
        r0, r1, r2 = rates[0] * k, rates[1] * k, rates[2] * k
        t0 += r0
        t1 += r1
        t2 += r2
        if c < MAX_CLASSES:
            v[j] = 1.0 if r0 > 1.0 else r0
            v[j + 1] = 1.0 if r1 > 1.0 else r1
            v[j + 2] = 1.0 if r2 > 1.0 else r2
            j += N_WINDOWS
    j = 9 + MAX_CLASSES * N_WINDOWS
    v[j] = 1.0 if t0 > 1.0 else t0
    v[j + 1] = 1.0 if t1 > 1.0 else t1
    v[j + 2] = 1.0 if t2 > 1.0 else t2
    j += N_WINDOWS
    v[j] = n / MAX_INSTANCES

    # -- instance blocks (indices follow INSTANCE_FEATURES) --
    qualities = st.quality(request.task)
    all_healthy = True
    for load in loads:
        if not load.healthy:
            all_healthy = False
            break
    if all_healthy:
        qmax = st.qmax(request.task)
    else:
        qmax = max((q for q, ld in zip(qualities, loads, strict=True) if ld.healthy), default=0.0)
    best_fit = 0.0
    n_fit = n_present = tot_in = tot_q = tot_mb = 0
    tau0, tau1, pre, mbs, share = st.tau0, st.tau1, st.prefill, st.max_batch, st.share
    inv_rc = inv_dl / RATIO_CLIP
    o = GLOBAL_DIM
    for i in range(n):
        load = loads[i]
        if not load.healthy:
            o += INSTANCE_DIM
            continue
        n_present += 1
        mb = mbs[i]
        fl = load.in_flight
        qd = load.queued
        tot_in += fl
        tot_q += qd
        tot_mb += mb
        prefill = pre[i] * inp
        a, b = tau0[i], tau1[i]
        est = _predict(a, b, mb, prefill, fl + qd, outp)
        full = prefill + outp * (a + b * mb)
        q = qualities[i]
        v[o] = 1.0
        v[o + 1] = q
        v[o + 2] = q - qmax if q - qmax > -1.0 else -1.0
        x = (prefill + outp * (a + b)) * inv_rc
        v[o + 3] = 1.0 if x > 1.0 else x
        x = full * inv_rc
        v[o + 4] = 1.0 if x > 1.0 else x
        x = fl / mb
        v[o + 5] = 1.0 if x > 1.0 else x
        x = qd / mb / RATIO_CLIP
        v[o + 6] = 1.0 if x > 1.0 else x
        if slack > 0:
            x = est / slack / RATIO_CLIP
            v[o + 7] = 1.0 if x > 1.0 else x
        else:
            v[o + 7] = 1.0
        if est <= slack:
            v[o + 8] = 1.0
            n_fit += 1
            if q > best_fit:
                best_fit = q
        x = (slack - est) * inv_dl
        v[o + 9] = -1.0 if x < -1.0 else 1.0 if x > 1.0 else x
        v[o + 10] = share[i]
        x = (est + full - prefill) * inv_rc
        v[o + 11] = 1.0 if x > 1.0 else x
        o += INSTANCE_DIM
    v[j + 1] = best_fit
    if n_present:
        v[j + 2] = n_fit / n_present
    if tot_mb:
        v[j + 3] = tot_in / tot_mb
        x = tot_q / tot_mb / RATIO_CLIP
        v[j + 4] = 1.0 if x > 1.0 else x
    vec = np.zeros(OBS_DIM, dtype=np.float32)
    vec[:len(v)] = v
    return vec


def action_mask(cluster: ClusterView, size: int = MAX_INSTANCES) -> np.ndarray:
    """Which action indices are routable (present and healthy)."""
    mask = np.zeros(size, dtype=bool)
    for i, load in enumerate(cluster.loads[:size]):
        mask[i] = load.healthy
    return mask


def split(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(global features, per-instance matrix) views of flat observation(s)."""
    g = obs[..., :GLOBAL_DIM]
    inst = obs[..., GLOBAL_DIM:].reshape(*obs.shape[:-1], MAX_INSTANCES, INSTANCE_DIM)
    return g, inst
