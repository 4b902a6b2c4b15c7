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
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from quicgw.core.routing import ClusterView, InstanceInfo, InstanceLoad, RouteRequest

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
    # Immutable per key (rebuilt on each update), so snapshots can share them.
    _rates: dict[str, tuple[float, ...]] = field(default_factory=dict)
    _now: float | None = None

    def _decay(self, now: float) -> None:
        last = self._now
        if last is None:
            self._now = now
            return
        dt = now - last
        if dt > 0.0:
            got = self._rates
            windows = self.windows
            if len(windows) == 3:  # the default, unrolled (this runs once per routed request)
                w0, w1, w2 = windows
                f0, f1, f2 = math.exp(-dt / w0), math.exp(-dt / w1), math.exp(-dt / w2)
                for key, (r0, r1, r2) in got.items():
                    got[key] = (r0 * f0, r1 * f1, r2 * f2)
            else:
                factors = [math.exp(-dt / w) for w in windows]
                for key, rates in got.items():
                    got[key] = tuple([r * f for r, f in zip(rates, factors, strict=True)])
            self._now = now

    def observe(self, key: str, now: float) -> None:
        self._decay(now)
        windows = self.windows
        rates = self._rates.get(key) or (0.0,) * len(windows)
        if len(windows) == 3:
            self._rates[key] = (rates[0] + 1.0 / windows[0], rates[1] + 1.0 / windows[1],
                                rates[2] + 1.0 / windows[2])
        else:
            self._rates[key] = tuple([r + 1.0 / w for r, w in zip(rates, windows, strict=True)])

    def rates(self, key: str, now: float) -> tuple[float, ...]:
        self._decay(now)
        return self._rates.get(key) or (0.0,) * len(self.windows)

    def all_rates(self, keys: Iterable[str], now: float) -> dict[str, tuple[float, ...]]:
        if now != self._now:  # else _decay is a no-op (the simulator calls this after observe)
            self._decay(now)
        zero = (0.0,) * len(self.windows)
        get = self._rates.get
        out = {}
        for k in keys:  # a plain loop: cheaper than a comprehension's frame for a few keys
            out[k] = get(k, zero)
        return out


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
_ZERO_ROW: tuple[float, ...] = (0.0,) * INSTANCE_DIM
_ZERO_RATES: list[float] = [0.0] * (MAX_CLASSES * N_WINDOWS)
_RATES_END = 9 + MAX_CLASSES * N_WINDOWS  # the global features after the rates start here
_ZERO_TAIL: tuple[float, ...] = (0.0,) * (GLOBAL_DIM - _RATES_END)


@dataclass(slots=True)
class _Static:
    """Per-cluster constants, computed once per instance list."""

    instances: Sequence[InstanceInfo]
    # Per instance: decode_base_s, decode_per_seq_s, prefill_s_per_token, max_batch, capacity
    # share, decode step alone (base + per_seq), decode step in a full batch.
    rows: list[tuple[float, float, float, int, float, float, float]]
    total_batch: int  # sum of max_batch
    capacity_rps: float
    rate_scale: float  # rates are read relative to half the cluster's nominal capacity
    by_task: dict[str, list[tuple]] = field(default_factory=dict)  # task_rows' cache

    def qualities(self, task: str) -> list[float]:
        return [i.quality.get(task, min(i.quality.values())) for i in self.instances]

    def task_rows(self, task: str) -> list[tuple]:
        """``rows`` extended with (quality, quality gap) for a task, every instance healthy."""
        got = self.by_task.get(task)
        if got is None:
            got = self.by_task[task] = self._with_quality(task, [True] * len(self.rows))
        return got

    def healthy_rows(self, task: str, loads: Sequence[InstanceLoad]) -> tuple[list[tuple], int, int]:
        """(task rows with the quality gap relative to the best healthy instance, healthy
        instances, their total max_batch)."""
        healthy = [ld.healthy for ld in loads]
        rows = self._with_quality(task, healthy)
        return (rows, sum(healthy),
                sum(r[3] for r, h in zip(self.rows, healthy, strict=True) if h))

    def _with_quality(self, task: str, healthy: list[bool]) -> list[tuple]:
        qs = self.qualities(task)
        qmax = max((q for q, h in zip(qs, healthy, strict=True) if h), default=0.0)
        return [r + (q, q - qmax if q - qmax > -1.0 else -1.0)
                for r, q in zip(self.rows, qs, strict=True)]


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
    rows = []
    for i, cap in zip(instances, caps, strict=True):
        m = i.latency
        rows.append((m.decode_base_s, m.decode_per_seq_s, m.prefill_s_per_token, m.max_batch,
                     cap / total, m.decode_base_s + m.decode_per_seq_s,
                     m.decode_base_s + m.decode_per_seq_s * m.max_batch))
    st = _Static(instances, rows, sum(r[3] for r in rows), total, 1.0 / (2.0 * total))
    if len(_static_cache) > 64:
        _static_cache.clear()
    _static_cache[key] = st
    return st


def _predict(tau0: float, tau1: float, max_batch: int, prefill_s: float, occupied: int,
             output_tokens: int) -> float:
    """Count-based latency prediction: the one formula behind :func:`predicted_latency_s` and
    the observation's ``predicted_latency``/``fits``/``margin``/``tail_latency`` features
    (``_values`` has it inline, pinned to this by tests/test_fastpaths.py)."""
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


def _values(request: RouteRequest, cluster: ClusterView) -> list[float]:
    """The observation's first ``GLOBAL_DIM + n * INSTANCE_DIM`` entries (n instances), as
    Python floats: the one definition of the features (see the module docstring)."""
    instances = cluster.instances
    loads = cluster.loads
    st = _static_cache.get(id(instances))
    if st is None or st.instances is not instances:
        st = _static(instances)
    n = len(instances)
    deadline = request.deadline_s
    if not deadline > 0:
        deadline = 1.0
    inv_dl = 1.0 / deadline
    slack = request.slack_s
    inp = request.input_tokens
    outp = request.output_tokens
    if not outp > 0:
        outp = 1

    # -- global block, up to the rates (order follows GLOBAL_FEATURES) --
    x = request.weight / MAX_WEIGHT
    x5 = slack * inv_dl
    x6 = deadline / 5.0
    x7 = math.log1p(inp) / _LOG_IN
    x8 = math.log1p(outp) / _LOG_OUT
    v = [0.0, 0.0, 0.0, 0.0, 0.0 if x < 0.0 else 1.0 if x > 1.0 else x,
         -1.0 if x5 < -1.0 else 1.0 if x5 > 1.0 else x5, 1.0 if x6 > 1.0 else x6,
         1.0 if x7 > 1.0 else x7, 1.0 if x8 > 1.0 else x8]
    ci = request.class_index
    if 0 <= ci < MAX_CLASSES:
        v[ci] = 1.0
    k = st.rate_scale
    t0 = t1 = t2 = 0.0
    for rates in cluster.rates.values():
        r0 = rates[0] * k
        r1 = rates[1] * k
        r2 = rates[2] * k
        t0 += r0
        t1 += r1
        t2 += r2
        v += (1.0 if r0 > 1.0 else r0, 1.0 if r1 > 1.0 else r1, 1.0 if r2 > 1.0 else r2)
    if len(v) != _RATES_END:  # slots past the table's classes stay 0; classes past 4 count in totals
        if len(v) > _RATES_END:
            del v[_RATES_END:]
        else:
            v += _ZERO_RATES[:_RATES_END - len(v)]
    v += _ZERO_TAIL  # filled below, once the instances are seen

    # -- instance blocks (order follows INSTANCE_FEATURES) --
    rows = st.by_task.get(request.task) or st.task_rows(request.task)
    n_present = n
    tot_mb = st.total_batch
    for load in loads:
        if not load.healthy:
            rows, n_present, tot_mb = st.healthy_rows(request.task, loads)
            break
    best_fit = 0.0
    n_fit = tot_in = tot_q = 0
    inv_rc = inv_dl / RATIO_CLIP
    for load, (a, b, pre, mb, share, step1, step_full, q, gap) in zip(loads, rows, strict=True):
        if not load.healthy:
            v += _ZERO_ROW
            continue
        fl = load.in_flight
        qd = load.queued
        tot_in += fl
        tot_q += qd
        prefill = pre * inp
        # _predict(a, b, mb, prefill, fl + qd, outp), inline: the call is a tenth of a decision
        # (tests/test_fastpaths.py pins this to predicted_latency_s). Without a wait, its
        # `0.0 + prefill` is prefill (never -0.0), so that branch skips the add.
        occ = fl + qd + 1
        if occ > mb:
            step = a + b * mb
            est = (occ - mb) / mb * outp * step + prefill + outp * step
        else:
            step = a + b * occ
            est = prefill + outp * step
        full = prefill + outp * step_full
        x3 = (prefill + outp * step1) * inv_rc
        x4 = full * inv_rc
        x5 = fl / mb
        x6 = qd / mb / RATIO_CLIP
        if slack > 0:
            x7 = est / slack / RATIO_CLIP
            if x7 > 1.0:
                x7 = 1.0
        else:
            x7 = 1.0
        if est <= slack:
            fits = 1.0
            n_fit += 1
            if q > best_fit:
                best_fit = q
        else:
            fits = 0.0
        x9 = (slack - est) * inv_dl
        x11 = (est + full - prefill) * inv_rc
        v += (1.0, q, gap, 1.0 if x3 > 1.0 else x3, 1.0 if x4 > 1.0 else x4,
              1.0 if x5 > 1.0 else x5, 1.0 if x6 > 1.0 else x6, x7, fits,
              -1.0 if x9 < -1.0 else 1.0 if x9 > 1.0 else x9, share, 1.0 if x11 > 1.0 else x11)

    # -- global block, the rest --
    x = tot_q / tot_mb / RATIO_CLIP if tot_mb else 0.0
    v[_RATES_END:GLOBAL_DIM] = (
        1.0 if t0 > 1.0 else t0, 1.0 if t1 > 1.0 else t1, 1.0 if t2 > 1.0 else t2,
        n / MAX_INSTANCES, best_fit, n_fit / n_present if n_present else 0.0,
        tot_in / tot_mb if tot_mb else 0.0, 1.0 if x > 1.0 else x)
    return v


_packers: dict[int, struct.Struct] = {}
_F32 = np.dtype(np.float32)


def _packer(size: int) -> struct.Struct:
    p = _packers[size] = struct.Struct(f"{size}f")  # native float32, no padding
    return p


def observation(request: RouteRequest, cluster: ClusterView) -> np.ndarray:
    """The router observation (see the module docstring for the layout).

    ``cluster.rates`` maps class name -> rate estimates over :data:`RATE_WINDOWS_S`, in class
    table order (priority order); the i-th entry fills class slot i.
    """
    vec = np.zeros(OBS_DIM, _F32)
    observation_into(request, cluster, vec)
    return vec


def observation_into(request: RouteRequest, cluster: ClusterView, out: np.ndarray) -> int:
    """Write the observation's first ``GLOBAL_DIM + n * INSTANCE_DIM`` entries into ``out`` (a
    C-contiguous float32 array of at least that length; the rest is left as it is) and return
    n, the number of instances: :func:`observation` without the allocation and zero padding,
    for a caller that keeps its own buffer (the dqn router's decision)."""
    values = _values(request, cluster)
    # One C call, with the same float64 -> float32 rounding as a numpy assignment.
    (_packers.get(len(values)) or _packer(len(values))).pack_into(out, 0, *values)
    return len(cluster.instances)


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
