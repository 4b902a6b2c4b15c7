"""Capacity functions: how much request rate a GPU mode can take while a latency percentile
stays within a bound.

The paper's constraint ``f_ij(sum of the loads of classes with higher-or-equal priority) <= L_u``
is nonlinear in the loads. Because ``f`` is nondecreasing in load, it is equivalent to the linear
``sum of those loads <= C_ij(L_u)`` with ``C(L) = max{r : f(r) <= L}``: the ILP only needs the
number ``C_ij(L_u)`` per (class, mode). This module computes it:

* :class:`ProfileCapacity` from a benchmark :class:`~ilp.profile.Profile` by monotone
  interpolation over the measured rates: the measured percentile curve is replaced by its upper
  monotone envelope (the smallest nondecreasing curve above every measurement, so noise never
  makes a higher rate look faster) and interpolated linearly (default) or with a monotone cubic
  (Fritsch-Carlson PCHIP). It never extrapolates beyond the highest measured rate.
* :class:`AnalyticCapacity` from the shared latency model with a queueing approximation (the
  instance as an M/M/c queue with ``c = max_batch`` slots, service time from the latency model
  including the stall other requests' prefills cause), for modes nobody has benchmarked yet.

Sans-IO: plain functions of numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ilp.profile import Profile
from ilp.workload import Workload
from quicgw.core.latency import LatencyModel

INTERPOLATIONS = ("linear", "pchip")


class CapacityFunction(Protocol):
    metric: str
    stat: float | str

    @property
    def max_rate_rpm(self) -> float: ...

    def latency_ms(self, rate_rpm: float) -> float: ...

    def capacity_rpm(self, bound_ms: float) -> float: ...


def upper_monotone_envelope(ys: Sequence[float]) -> list[float]:
    out: list[float] = []
    m = -math.inf
    for y in ys:
        m = max(m, y)
        out.append(m)
    return out


def _pchip_slopes(xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Fritsch-Carlson derivatives: the interpolant is monotone wherever the data are."""
    n = len(xs)
    h = [xs[i + 1] - xs[i] for i in range(n - 1)]
    d = [(ys[i + 1] - ys[i]) / h[i] for i in range(n - 1)]
    if n == 2:
        return [d[0], d[0]]
    m = [0.0] * n
    for i in range(1, n - 1):
        if d[i - 1] * d[i] <= 0:
            m[i] = 0.0
        else:
            w1 = 2 * h[i] + h[i - 1]
            w2 = h[i] + 2 * h[i - 1]
            m[i] = (w1 + w2) / (w1 / d[i - 1] + w2 / d[i])

    def end(h0: float, h1: float, d0: float, d1: float) -> float:
        s = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
        if s * d0 <= 0:
            return 0.0
        if d0 * d1 <= 0 and abs(s) > abs(3 * d0):
            return 3 * d0
        return s

    m[0] = end(h[0], h[1], d[0], d[1])
    m[-1] = end(h[-1], h[-2], d[-1], d[-2])
    return m


@dataclass(slots=True)
class ProfileCapacity:
    """Latency percentile vs offered rate from a profile, and its inverse."""

    rates: list[float]
    values: list[float]  # ms, monotone envelope of the measurements
    metric: str = "e2el_ms"
    stat: float | str = 95.0
    interpolation: str = "linear"
    cap_rpm: float | None = None  # the mode's operating rate (A_ij); None = highest measured
    _slopes: list[float] | None = None

    @classmethod
    def from_profile(cls, profile: Profile, metric: str = "e2el_ms", stat: float | str = 95.0,
                     interpolation: str = "linear", cap_rpm: float | None = None,
                     exclude_saturated: bool = False, latency_scale: float = 1.0,
                     rate_scale: float = 1.0) -> ProfileCapacity:
        """``latency_scale``/``rate_scale`` derive a mode from a measured one (e.g. a lower GPU
        clock: latencies x1.2, rates x0.85) when only one frequency was benchmarked."""
        pts = [p for p in profile.points if not (exclude_saturated and p.saturated)]
        if not pts:
            raise ValueError(f"profile {profile.label}: no usable rate points")
        xs, ys = [], []
        for p in pts:
            xs.append(p.rate_rpm * rate_scale)
            ys.append(p.value(metric, stat) * latency_scale)
        return cls.from_points(xs, ys, metric, stat, interpolation, cap_rpm)

    @classmethod
    def from_points(cls, rates: Sequence[float], values_ms: Sequence[float],
                    metric: str = "e2el_ms", stat: float | str = 95.0,
                    interpolation: str = "linear", cap_rpm: float | None = None) -> ProfileCapacity:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {interpolation!r} (choose from {INTERPOLATIONS})")
        if len(rates) != len(values_ms) or not rates:
            raise ValueError("need as many latency values as rates, at least one")
        pairs = sorted(zip(rates, values_ms, strict=True))
        xs = [float(r) for r, _ in pairs]
        if any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
            raise ValueError("rates must be distinct")
        if any(not math.isfinite(v) or v < 0 for _, v in pairs):
            raise ValueError("latency values must be finite and >= 0")
        ys = upper_monotone_envelope([float(v) for _, v in pairs])
        c = cls(xs, ys, metric, stat, interpolation, cap_rpm)
        if interpolation == "pchip" and len(xs) >= 2:
            c._slopes = _pchip_slopes(xs, ys)
        return c

    @property
    def max_rate_rpm(self) -> float:
        top = self.rates[-1]
        return top if self.cap_rpm is None else min(top, self.cap_rpm)

    def latency_ms(self, rate_rpm: float) -> float:
        """f(r): the latency percentile at offered rate r (the lowest measurement below the
        first measured rate, +inf beyond the last: there is no data there)."""
        xs, ys = self.rates, self.values
        if rate_rpm <= xs[0]:
            return ys[0]
        if rate_rpm > xs[-1]:
            return math.inf
        k = max(i for i in range(len(xs) - 1) if xs[i] <= rate_rpm) if len(xs) > 1 else 0
        if xs[k] == rate_rpm or len(xs) == 1:
            return ys[k]
        return self._interp(k, rate_rpm)

    def _interp(self, k: int, r: float) -> float:
        x0, x1 = self.rates[k], self.rates[k + 1]
        y0, y1 = self.values[k], self.values[k + 1]
        t = (r - x0) / (x1 - x0)
        if self._slopes is None:
            return y0 + t * (y1 - y0)
        h = x1 - x0
        m0, m1 = self._slopes[k], self._slopes[k + 1]
        t2, t3 = t * t, t * t * t
        return ((2 * t3 - 3 * t2 + 1) * y0 + (t3 - 2 * t2 + t) * h * m0
                + (-2 * t3 + 3 * t2) * y1 + (t3 - t2) * h * m1)

    def capacity_rpm(self, bound_ms: float) -> float:
        """C(L): the highest rate (<= the mode's cap) whose latency percentile is <= L; 0 when
        even the lowest measured rate misses L."""
        xs, ys = self.rates, self.values
        if bound_ms < ys[0]:
            return 0.0
        if bound_ms >= ys[-1]:
            return self.max_rate_rpm
        k = max(i for i in range(len(xs)) if ys[i] <= bound_ms)
        # f(xs[k]) <= L < f(xs[k+1]): the crossing is inside segment k.
        if self._slopes is None:
            x0, x1, y0, y1 = xs[k], xs[k + 1], ys[k], ys[k + 1]
            r = x0 + (bound_ms - y0) / (y1 - y0) * (x1 - x0)
        else:
            lo, hi = xs[k], xs[k + 1]
            for _ in range(60):
                mid = (lo + hi) / 2
                if self._interp(k, mid) <= bound_ms:
                    lo = mid
                else:
                    hi = mid
            r = lo
        return min(r, self.max_rate_rpm)


@dataclass(slots=True)
class AnalyticCapacity:
    """A queueing approximation of one instance from the shared latency model.

    Service time of a request with ``I`` input and ``O`` output tokens when ``b`` requests run:
    ``S(b) = (prefill(I) + O * tau(b)) / (1 - lambda * prefill(I))``: its own prefill and decode
    steps, stretched by the prefills of the ``lambda * S`` requests admitted while it runs (mixed
    batching puts them into the same iterations). The running batch is ``b = min(B, lambda S)``.
    Waiting: M/M/c with ``c = B`` slots each turning over every ``S(B)``; the p-th percentile of
    the wait is ``ln(C(c, a) / (1 - p)) / (c / S - lambda)`` (Erlang C), which overstates a
    near-deterministic service's wait, so the capacity errs on the safe side.
    """

    model: LatencyModel
    workload: Workload
    metric: str = "e2el_ms"
    stat: float | str = 95.0
    cap_rpm: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in ("e2el_ms", "ttft_ms", "queue_ms"):
            raise ValueError(f"the analytic model covers e2el_ms, ttft_ms and queue_ms, not {self.metric}")

    @property
    def saturation_rpm(self) -> float:
        return self.model.saturation_rps(self.workload.mean_input, self.workload.mean_output) * 60

    @property
    def max_rate_rpm(self) -> float:
        s = self.saturation_rpm * 0.999
        return s if self.cap_rpm is None else min(s, self.cap_rpm)

    def _service_s(self, lam: float, out_tokens: float) -> float:
        m = self.model
        pre = m.prefill_s(int(self.workload.mean_input))
        stall = 1.0 - lam * pre
        if stall <= 0:
            return math.inf
        b = 1.0
        for _ in range(100):  # fixed point b = min(B, lam * S(b))
            s = (pre + out_tokens * m.decode_step_s(b)) / stall
            nb = min(float(m.max_batch), max(1.0, lam * s))
            if abs(nb - b) < 1e-9:
                break
            b = nb
        return (pre + out_tokens * m.decode_step_s(b)) / stall

    def latency_ms(self, rate_rpm: float) -> float:
        lam = rate_rpm / 60.0
        p = 0.5 if self.stat == "mean" else float(self.stat) / 100.0
        lo, hi = self.workload.output_tokens
        out_p = self.workload.mean_output if self.stat == "mean" else lo + p * (hi - lo)
        c = self.model.max_batch
        pre = self.model.prefill_s(int(self.workload.mean_input))
        wait = 0.0
        if lam > 0:
            stall = 1.0 - lam * pre
            if stall <= 0:
                return math.inf
            # A slot turns over once per full-batch service time.
            mu = stall / (pre + self.workload.mean_output * self.model.decode_step_s(c))
            if lam >= c * mu:
                return math.inf
            pc = erlang_c(c, lam / mu)
            if self.stat == "mean":
                wait = pc / (c * mu - lam)
            elif pc > 1.0 - p:
                wait = math.log(pc / (1.0 - p)) / (c * mu - lam)
        if self.metric == "queue_ms":
            return wait * 1e3
        if self.metric == "ttft_ms":
            return (wait + pre + self.model.decode_step_s(1)) * 1e3
        return (wait + self._service_s(lam, out_p)) * 1e3

    def capacity_rpm(self, bound_ms: float) -> float:
        if self.latency_ms(0.0) > bound_ms:
            return 0.0
        lo, hi = 0.0, self.max_rate_rpm
        if self.latency_ms(hi) <= bound_ms:
            return hi
        for _ in range(80):
            mid = (lo + hi) / 2
            if self.latency_ms(mid) <= bound_ms:
                lo = mid
            else:
                hi = mid
        return lo


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with offered load ``a`` (Erlangs)."""
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    # Erlang B by the stable recursion, then C from B.
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1 - rho + rho * b)
