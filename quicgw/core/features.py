"""Live-state features shared by training and serving.

The router observation is defined ONCE, by the kernel :func:`_fill` (compiled with numba),
from a :class:`~quicgw.core.routing.RouteRequest` and a :class:`~quicgw.core.routing.ClusterView`
packed into flat arrays by :func:`gather`; :func:`observation` (the Gymnasium env),
:func:`observation_into` and the dqn router's decision (rlrouter.policy) all run it. The
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
import warnings
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

    @classmethod
    def for_keys(cls, keys: Iterable[str]) -> RateEstimator:
        """An estimator whose table holds ``keys`` from the start (zero rates, in this order),
        so that :attr:`table` is what :meth:`all_rates` returns for them (the same values),
        without building a dict per call (the simulator reads it once per decision)."""
        est = cls()
        est._rates = dict.fromkeys(keys, (0.0,) * len(est.windows))
        return est

    @property
    def table(self) -> dict[str, tuple[float, ...]]:
        """The live rate table (updated in place; current as of the latest :meth:`observe`)."""
        return self._rates

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


@dataclass(slots=True)
class _Static:
    """Per-cluster constants, computed once per instance list."""

    instances: Sequence[InstanceInfo]
    # Per instance: decode_base_s, decode_per_seq_s, prefill_s_per_token, max_batch, capacity
    # share, decode step alone (base + per_seq), decode step in a full batch.
    rows: list[tuple[float, float, float, int, float, float, float]]
    rate_scale: float  # rates are read relative to half the cluster's nominal capacity
    by_task: dict[str, np.ndarray] = field(default_factory=dict)  # task_rows' cache

    def qualities(self, task: str) -> list[float]:
        return [i.task_quality(task) for i in self.instances]

    def task_rows(self, task: str) -> np.ndarray:
        """The kernel's static input for a task: ``rows`` plus the task's quality, one float64
        row per instance (max_batch is an exact integer in float64)."""
        got = self.by_task.get(task)
        if got is None:
            got = self.by_task[task] = np.array(
                [r + (q,) for r, q in zip(self.rows, self.qualities(task), strict=True)],
                dtype=np.float64).reshape(len(self.rows), _ST_COLS)
        return got


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
    st = _Static(instances, rows, 1.0 / (2.0 * total))
    if len(_static_cache) > 64:
        _static_cache.clear()
    _static_cache[key] = st
    return st


def _predict(tau0: float, tau1: float, max_batch: int, prefill_s: float, occupied: int,
             output_tokens: int) -> float:
    """Count-based latency prediction: the one formula behind :func:`predicted_latency_s` and
    the observation's ``predicted_latency``/``fits``/``margin``/``tail_latency`` features
    (the kernel has it inline, pinned to this by tests/test_fastpaths.py)."""
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


# -- the kernel: the one definition of the features -------------------------------------------
#
# `_fill` computes the observation from flat arrays (the request's scalars, the live counts and
# the rate estimates in `req`, the cluster's static rows in `st`) and writes it into `out`. It
# is compiled with numba (nopython, no fastmath: every + - * / is the IEEE float64 operation
# Python does, and the store into a float32 `out` rounds to nearest like numpy's cast), on
# first use, cached on disk. `gather` packs a RouteRequest and a ClusterView into `req`.

_ST_COLS = 8  # st row: tau0, tau1, prefill/token, max_batch, share, step alone, step full, quality
# req layout, 8 bytes an entry: the request's scalars, then (in_flight, queued, healthy) per
# instance, then the rate estimates (N_WINDOWS per class, in class-table order). Integers
# (class index, token counts, the number of rate classes, the counts and health) are int64,
# read through an int64 view; the rest float64. (struct converts an int to a double through a
# temporary float object: packing them as integers saves a third of the packing.)
_R_CLASS, _R_WEIGHT, _R_SLACK, _R_DEADLINE, _R_IN, _R_OUT, _R_SCALE, _R_NCLASSES = range(8)
_R_LOADS = 8


def _fill(req, st, out):  # compiled: see above
    """Write the observation's first ``GLOBAL_DIM + n * INSTANCE_DIM`` entries into ``out``
    (n = ``len(st)``); returns the number of healthy instances."""
    n = st.shape[0]
    ri = req.view(np.int64)
    if req.shape[0] < _R_LOADS + 3 * n or ri[_R_NCLASSES] < 0 or (
            req.shape[0] < _R_LOADS + 3 * n + N_WINDOWS * ri[_R_NCLASSES]):
        raise ValueError("req does not hold what gather() writes for this cluster")
    deadline = req[_R_DEADLINE]
    if not deadline > 0:
        deadline = 1.0
    inv_dl = 1.0 / deadline
    slack = req[_R_SLACK]
    inp = ri[_R_IN]
    outp = ri[_R_OUT]
    if not outp > 0:
        outp = 1

    # -- global block, up to the rates (order follows GLOBAL_FEATURES) --
    for j in range(MAX_CLASSES):
        out[j] = 0.0
    ci = ri[_R_CLASS]
    if 0 <= ci < MAX_CLASSES:
        out[ci] = 1.0
    x = req[_R_WEIGHT] / MAX_WEIGHT
    out[4] = 0.0 if x < 0.0 else 1.0 if x > 1.0 else x
    x = slack * inv_dl
    out[5] = -1.0 if x < -1.0 else 1.0 if x > 1.0 else x
    x = deadline / 5.0
    out[6] = 1.0 if x > 1.0 else x
    x = math.log1p(inp) / _LOG_IN
    out[7] = 1.0 if x > 1.0 else x
    x = math.log1p(outp) / _LOG_OUT
    out[8] = 1.0 if x > 1.0 else x
    # Rates: slots past the table's classes stay 0; classes past MAX_CLASSES count in totals.
    k = req[_R_SCALE]
    t0 = t1 = t2 = 0.0
    base = _R_LOADS + 3 * n
    for c in range(ri[_R_NCLASSES]):
        r0 = req[base + 3 * c] * k
        r1 = req[base + 3 * c + 1] * k
        r2 = req[base + 3 * c + 2] * k
        t0 += r0
        t1 += r1
        t2 += r2
        if c < MAX_CLASSES:
            j = 9 + N_WINDOWS * c
            out[j] = 1.0 if r0 > 1.0 else r0
            out[j + 1] = 1.0 if r1 > 1.0 else r1
            out[j + 2] = 1.0 if r2 > 1.0 else r2
    for c in range(ri[_R_NCLASSES], MAX_CLASSES):
        j = 9 + N_WINDOWS * c
        out[j] = out[j + 1] = out[j + 2] = 0.0

    # -- instance blocks (order follows INSTANCE_FEATURES) --
    # The quality gap is relative to the best healthy instance (0.0 if none is).
    qmax = 0.0
    first = True
    n_present = 0
    tot_mb = 0.0
    for i in range(n):
        if ri[_R_LOADS + 3 * i + 2] != 0:
            q = st[i, 7]
            if first or q > qmax:
                qmax = q
                first = False
            n_present += 1
            tot_mb += st[i, 3]
    best_fit = 0.0
    n_fit = 0
    tot_in = tot_q = 0.0
    inv_rc = inv_dl / RATIO_CLIP
    for i in range(n):
        o = GLOBAL_DIM + INSTANCE_DIM * i
        if ri[_R_LOADS + 3 * i + 2] == 0:  # unhealthy: an absent slot
            for j in range(INSTANCE_DIM):
                out[o + j] = 0.0
            continue
        a = st[i, 0]
        b = st[i, 1]
        mb = st[i, 3]
        q = st[i, 7]
        fl = ri[_R_LOADS + 3 * i]
        qd = ri[_R_LOADS + 3 * i + 1]
        tot_in += fl
        tot_q += qd
        prefill = st[i, 2] * inp
        # _predict(a, b, mb, prefill, fl + qd, outp), inline (tests/test_fastpaths.py pins it
        # to predicted_latency_s). Without a wait, its `0.0 + prefill` is prefill (never
        # -0.0), so that branch skips the add.
        occ = fl + qd + 1
        if occ > mb:
            step = a + b * mb
            est = (occ - mb) / mb * outp * step + prefill + outp * step
        else:
            step = a + b * occ
            est = prefill + outp * step
        full = prefill + outp * st[i, 6]
        gap = q - qmax
        x3 = (prefill + outp * st[i, 5]) * inv_rc
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
        out[o] = 1.0
        out[o + 1] = q
        out[o + 2] = gap if gap > -1.0 else -1.0
        out[o + 3] = 1.0 if x3 > 1.0 else x3
        out[o + 4] = 1.0 if x4 > 1.0 else x4
        out[o + 5] = 1.0 if x5 > 1.0 else x5
        out[o + 6] = 1.0 if x6 > 1.0 else x6
        out[o + 7] = x7
        out[o + 8] = fits
        out[o + 9] = -1.0 if x9 < -1.0 else 1.0 if x9 > 1.0 else x9
        out[o + 10] = st[i, 4]
        out[o + 11] = 1.0 if x11 > 1.0 else x11

    # -- global block, the rest --
    j = 9 + N_WINDOWS * MAX_CLASSES
    out[j] = 1.0 if t0 > 1.0 else t0
    out[j + 1] = 1.0 if t1 > 1.0 else t1
    out[j + 2] = 1.0 if t2 > 1.0 else t2
    out[j + 3] = n / MAX_INSTANCES
    out[j + 4] = best_fit
    out[j + 5] = n_fit / n_present if n_present else 0.0
    out[j + 6] = tot_in / tot_mb if tot_mb else 0.0
    x = tot_q / tot_mb / RATIO_CLIP if tot_mb else 0.0
    out[j + 7] = 1.0 if x > 1.0 else x
    return n_present


def jit(fn, signatures: list[str], **flags):
    """``numba.njit(signatures, cache=True)``: compiled for these argument types only (arrays
    C-contiguous), at once. numba is imported on first use: the gateway imports this module
    for :class:`RateEstimator` at startup and needs no compiler unless it routes with the
    observation. The machine code is cached on disk (``__pycache__``, else numba's user cache
    directory), so only the first process after an edit compiles (a few seconds); later ones
    load it (a tenth of a second)."""
    import numba

    try:
        return numba.njit(signatures, cache=True, **flags)(fn)
    except RuntimeError as e:  # "cannot cache ...: no locator available" (read-only install)
        global _warned_no_cache
        if not _warned_no_cache:
            _warned_no_cache = True
            warnings.warn(f"numba cannot cache the router kernels ({e}); compiling them in "
                          f"memory (seconds per process): set NUMBA_CACHE_DIR to a writable "
                          f"directory to keep the machine code", RuntimeWarning, stacklevel=2)
        return numba.njit(signatures, cache=False, **flags)(fn)


_warned_no_cache = False


_kernels: dict[str, object] = {}  # out dtype -> compiled _fill
_kernel = None  # _kernels["float32"], read directly on the hot paths


def kernel(out_dtype: str = "float32"):
    """The compiled :func:`_fill` for an ``out`` of this dtype, built (or loaded from the cache)
    on the first call; ``"float64"`` is a separate build for :func:`_values`, the tests' view
    before the rounding."""
    global _kernel
    k = _kernels.get(out_dtype)
    if k is None:
        k = _kernels[out_dtype] = jit(
            _fill, [f"int64(float64[::1], float64[:, ::1], {out_dtype}[::1])"])
        if out_dtype == "float32":
            _kernel = k
    return k


# Length of a gather() scratch buffer that holds any cluster and up to 16 rate classes (more
# than MAX_CLASSES count in the totals); a caller that keeps one allocates this much.
REQ_BUFFER_LEN = _R_LOADS + 3 * MAX_INSTANCES + N_WINDOWS * 16
_packers: dict[int, struct.Struct] = {}
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def _packer(key: int) -> struct.Struct:
    n_rates, n = divmod(key, MAX_INSTANCES + 1)  # `req`'s layout for n instances, n_rates classes
    p = _packers[key] = struct.Struct("qdddqqdq" + "qqq" * n + "d" * (N_WINDOWS * n_rates))
    return p


def gather(request: RouteRequest, cluster: ClusterView,
           req: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pack what the observation reads from ``request`` and ``cluster`` into ``req`` (a float64
    scratch buffer the caller keeps; ``REQ_BUFFER_LEN`` entries hold up to 16 rate classes) and
    return ``(req, rows)``: the buffer used (a new one when ``req`` is None or too small: keep
    it for the next call) and the kernel's static rows for the cluster and task. One
    ``struct.pack_into``: a few attribute reads per instance, no per-element numpy call. The
    class index, token counts and in-flight/queued counts must be integers (TypeError
    otherwise)."""
    instances = cluster.instances
    st = _static_cache.get(id(instances))
    if st is None or st.instances is not instances:
        st = _static(instances)
    rows = st.by_task.get(request.task)
    if rows is None:
        rows = st.task_rows(request.task)
    rates = cluster.rates
    v = [request.class_index, request.weight, request.slack_s, request.deadline_s,
         request.input_tokens, request.output_tokens, st.rate_scale, len(rates)]
    for load in cluster.loads:
        v += (load.in_flight, load.queued, load.healthy)
    for r in rates.values():
        v += r
    size = len(v)
    n_rates = len(rates)
    if size != _R_LOADS + 3 * len(instances) + N_WINDOWS * n_rates:
        raise ValueError(f"{len(instances)} instances with {len(cluster.loads)} loads and rate "
                         f"estimates of {N_WINDOWS} windows expected")
    if req is None or size > len(req):
        req = np.empty(max(REQ_BUFFER_LEN, size), _F64)
    key = len(instances) + (MAX_INSTANCES + 1) * n_rates
    try:
        (_packers.get(key) or _packer(key)).pack_into(req, 0, *v)
    except struct.error as e:
        raise TypeError("class index, token counts, in-flight and queued counts must be "
                        f"integers: {e}") from None
    return req, rows


def _values(request: RouteRequest, cluster: ClusterView) -> list[float]:
    """The observation's first ``GLOBAL_DIM + n * INSTANCE_DIM`` entries (n instances), as
    Python floats, before the float32 rounding (the kernel run with a float64 ``out``)."""
    req, rows = gather(request, cluster)
    out = np.zeros(OBS_DIM, _F64)
    kernel("float64")(req, rows, out)
    return out[:GLOBAL_DIM + len(cluster.instances) * INSTANCE_DIM].tolist()


def observation(request: RouteRequest, cluster: ClusterView,
                req: np.ndarray | None = None) -> np.ndarray:
    """The router observation (see the module docstring for the layout), a new array.

    ``cluster.rates`` maps class name -> rate estimates over :data:`RATE_WINDOWS_S`, in class
    table order (priority order); the i-th entry fills class slot i. ``req``: a scratch buffer
    for :func:`gather` that the caller keeps (the env), else one is allocated.
    """
    vec = np.zeros(OBS_DIM, _F32)
    req, rows = gather(request, cluster, req)
    (_kernel or kernel())(req, rows, vec)
    return vec


def observation_into(request: RouteRequest, cluster: ClusterView, out: np.ndarray) -> int:
    """Write the observation's first ``GLOBAL_DIM + n * INSTANCE_DIM`` entries into ``out`` (a
    C-contiguous float32 array of at least that length; the rest is left as it is) and return
    n, the number of instances: :func:`observation` without the allocation and zero padding."""
    (_kernel or kernel())(*gather(request, cluster), out)
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
