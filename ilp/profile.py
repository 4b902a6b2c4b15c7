"""The Profile: what a benchmark sweep measured for one (engine, model, GPU, mode).

This is the one definition of the shared concept (DESIGN.md): ``ilp.bench`` writes it,
``ilp.capacity`` reads it, the ILP consumes capacities derived from it. Per offered rate it holds
percentiles of TTFT, TPOT, inter-token latency, end-to-end latency and queue time, achieved
throughput and goodput, and for the sweep the saturation rate.

On disk it is JSON whose per-rate metric keys follow vLLM's ``benchmark_serving`` result names
(``mean_ttft_ms``, ``median_ttft_ms``, ``std_ttft_ms``, ``p99_ttft_ms``, ... for ``ttft_ms``,
``tpot_ms``, ``itl_ms``, ``e2el_ms``; plus ``queue_ms``, which vLLM does not report), so numbers
can be compared with a vLLM run directly. Confidence intervals sit beside them as
``ci_mean_e2el_ms: [lo, hi]`` and ``ci_p95_e2el_ms: [lo, hi]``. All times are in *model time*:
a run against an emulated backend with a time scale is converted back before it is stored.

Sans-IO: parsing, validation and saturation detection only; no sockets, no clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilp.stats import PERCENTILES, MetricSummary, percentile, summarize

METRICS: tuple[str, ...] = ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms", "queue_ms")
PROFILE_VERSION = 1


class ProfileError(ValueError):
    """A profile file is malformed; the message names the field."""


def _pword(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p)


@dataclass(slots=True)
class RatePoint:
    """Everything measured at one offered rate (after trimming warm-up and cool-down)."""

    rate_rpm: float  # offered
    duration_s: float  # measured window, model time
    requests: int  # arrivals inside the window
    completed: int
    failed: int = 0
    request_throughput: float = 0.0  # completions per second inside the window
    output_throughput: float = 0.0  # output tokens per second
    total_token_throughput: float = 0.0
    goodput: float | None = None  # completions per second that met every SLO
    metrics: dict[str, MetricSummary] = field(default_factory=dict)
    queue_slope: float = 0.0  # d(queue time)/d(arrival time), s per s: > 0 means growing
    mean_batch: float | None = None  # mean running batch seen by requests (server-side), if known
    saturated: bool = False
    samples: dict[str, list[float]] = field(default_factory=dict)  # raw, in arrival order

    @property
    def achieved_rpm(self) -> float:
        return self.request_throughput * 60.0

    def value(self, metric: str, p: float | str) -> float:
        """Percentile ``p`` (a number) or ``"mean"`` of ``metric``; raw samples first."""
        if metric not in self.metrics:
            raise KeyError(f"metric {metric!r} not measured at {self.rate_rpm:g} RPM")
        s = self.metrics[metric]
        if p == "mean":
            return s.mean
        p = float(p)
        if metric in self.samples and self.samples[metric]:
            return percentile(sorted(self.samples[metric]), p)
        return s.at(p)

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rate_rpm": self.rate_rpm,
            "achieved_rpm": round(self.achieved_rpm, 6),
            "duration_s": self.duration_s,
            "requests": self.requests,
            "completed": self.completed,
            "failed": self.failed,
            "request_throughput": self.request_throughput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "request_goodput": self.goodput,
            "queue_slope": self.queue_slope,
            "mean_batch": self.mean_batch,
            "saturated": self.saturated,
        }
        for name, s in self.metrics.items():
            out[f"n_{name}"] = s.n
            out[f"mean_{name}"] = _num(s.mean)
            out[f"median_{name}"] = _num(s.median)
            out[f"std_{name}"] = _num(s.std)
            out[f"ci_mean_{name}"] = [_num(x) for x in s.mean_ci]
            for p, v in s.percentiles.items():
                out[f"p{_pword(p)}_{name}"] = _num(v)
                out[f"ci_p{_pword(p)}_{name}"] = [_num(x) for x in s.percentile_ci.get(p, (None, None))]
        if self.samples:
            out["samples"] = {k: [round(x, 3) for x in v] for k, v in self.samples.items()}
        return out

    @classmethod
    def from_json(cls, d: Any, where: str) -> RatePoint:
        if not isinstance(d, dict):
            raise ProfileError(f"{where}: expected an object")
        rate = _req_num(d, "rate_rpm", where, positive=True)
        metrics: dict[str, MetricSummary] = {}
        for name in METRICS:
            if f"mean_{name}" not in d:
                continue
            pct = {}
            pct_ci = {}
            for key, v in d.items():
                pre = "p"
                suffix = f"_{name}"
                if key.startswith(pre) and key.endswith(suffix) and not key.startswith("ci_"):
                    word = key[len(pre):-len(suffix)]
                    try:
                        p = float(word)
                    except ValueError:
                        continue
                    pct[p] = _as_num(v, f"{where}.{key}")
                    ci = d.get(f"ci_{key}")
                    if isinstance(ci, list) and len(ci) == 2:
                        pct_ci[p] = (_as_num(ci[0], f"{where}.ci_{key}[0]"),
                                     _as_num(ci[1], f"{where}.ci_{key}[1]"))
            mean = _as_num(d[f"mean_{name}"], f"{where}.mean_{name}")
            median = _as_num(d.get(f"median_{name}", pct.get(50.0, math.nan)),
                             f"{where}.median_{name}")
            mci = d.get(f"ci_mean_{name}") or [math.nan, math.nan]
            metrics[name] = MetricSummary(
                n=int(d.get(f"n_{name}", d.get("completed", 0)) or 0),
                mean=mean,
                std=_as_num(d.get(f"std_{name}", math.nan), f"{where}.std_{name}"),
                median=median,
                percentiles=dict(sorted(pct.items())),
                mean_ci=(_as_num(mci[0], f"{where}.ci_mean_{name}[0]"),
                         _as_num(mci[1], f"{where}.ci_mean_{name}[1]")),
                percentile_ci=pct_ci,
            )
        if not metrics:
            raise ProfileError(f"{where}: no metrics (expected e.g. mean_e2el_ms, p95_e2el_ms)")
        samples = d.get("samples") or {}
        if not isinstance(samples, dict):
            raise ProfileError(f"{where}.samples: expected an object of lists")
        return cls(
            rate_rpm=rate,
            duration_s=_as_num(d.get("duration_s", 0.0), f"{where}.duration_s"),
            requests=int(d.get("requests", d.get("completed", 0)) or 0),
            completed=int(d.get("completed", 0) or 0),
            failed=int(d.get("failed", 0) or 0),
            request_throughput=_as_num(d.get("request_throughput", 0.0), f"{where}.request_throughput"),
            output_throughput=_as_num(d.get("output_throughput", 0.0), f"{where}.output_throughput"),
            total_token_throughput=_as_num(d.get("total_token_throughput", 0.0),
                                           f"{where}.total_token_throughput"),
            goodput=d.get("request_goodput"),
            metrics=metrics,
            queue_slope=_as_num(d.get("queue_slope", 0.0), f"{where}.queue_slope"),
            mean_batch=d.get("mean_batch"),
            saturated=bool(d.get("saturated", False)),
            samples={k: [float(x) for x in v] for k, v in samples.items()},
        )


@dataclass(slots=True)
class Profile:
    """A benchmark sweep of one (engine, model, GPU, mode) over offered rates."""

    model: str
    gpu: str
    engine: str = "emulated"
    mode: str | None = None
    workload: dict[str, Any] = field(default_factory=dict)
    arrival: str = "poisson"
    points: list[RatePoint] = field(default_factory=list)
    saturation_rpm: float | None = None  # highest offered rate that was not saturated
    saturation_range_rpm: tuple[float, float] | None = None  # (last unsaturated, first saturated)
    capacity_rpm: float | None = None  # highest completion rate measured (service capacity)
    time_scale: float = 1.0
    duration_s: float | None = None  # per rate, model time, before trimming
    warmup_s: float = 0.0
    cooldown_s: float = 0.0
    slo: dict[str, float] = field(default_factory=dict)
    source: str = ""
    notes: str = ""
    # How the measured instance was configured, when known (catalog model, GPU, max batch,
    # queue policy, latency model): lets ``ilp.solve --verify`` simulate a plan on it.
    instance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.points.sort(key=lambda p: p.rate_rpm)

    @property
    def rates(self) -> list[float]:
        return [p.rate_rpm for p in self.points]

    def series(self, metric: str = "e2el_ms", p: float | str = 95.0) -> tuple[list[float], list[float]]:
        """(offered rates, the metric's p-th percentile or mean at each), sorted by rate."""
        if not self.points:
            raise ProfileError("profile has no rate points")
        xs, ys = [], []
        for pt in self.points:
            xs.append(pt.rate_rpm)
            ys.append(pt.value(metric, p))
        return xs, ys

    def point(self, rate_rpm: float) -> RatePoint:
        for pt in self.points:
            if math.isclose(pt.rate_rpm, rate_rpm, rel_tol=1e-9, abs_tol=1e-9):
                return pt
        raise KeyError(f"no point at {rate_rpm:g} RPM (have {', '.join(f'{r:g}' for r in self.rates)})")

    @property
    def label(self) -> str:
        parts = [self.model, self.gpu]
        if self.mode:
            parts.append(self.mode)
        return f"{'/'.join(parts)} ({self.engine})"

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "version": PROFILE_VERSION,
            "model": self.model,
            "gpu": self.gpu,
            "engine": self.engine,
            "mode": self.mode,
            "workload": self.workload,
            "arrival": self.arrival,
            "time_scale": self.time_scale,
            "times_are": "model time (seconds / milliseconds as labelled)",
            "duration_s": self.duration_s,
            "warmup_s": self.warmup_s,
            "cooldown_s": self.cooldown_s,
            "slo": self.slo,
            "saturation_rpm": self.saturation_rpm,
            "saturation_range_rpm": list(self.saturation_range_rpm) if self.saturation_range_rpm else None,
            "capacity_rpm": self.capacity_rpm,
            "source": self.source,
            "notes": self.notes,
            "instance": self.instance,
            "points": [p.to_json() for p in self.points],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1, allow_nan=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps() + "\n")

    @classmethod
    def from_json(cls, d: Any, where: str = "profile") -> Profile:
        if not isinstance(d, dict):
            raise ProfileError(f"{where}: expected a JSON object")
        for key in ("model", "gpu"):
            if not isinstance(d.get(key), str) or not d[key]:
                raise ProfileError(f"{where}.{key}: missing or not a string")
        pts = d.get("points")
        if not isinstance(pts, list) or not pts:
            raise ProfileError(f"{where}.points: expected a non-empty list of rate points")
        points = [RatePoint.from_json(p, f"{where}.points[{i}]") for i, p in enumerate(pts)]
        rates = [p.rate_rpm for p in points]
        if len(set(rates)) != len(rates):
            raise ProfileError(f"{where}.points: duplicate rate_rpm")
        sr = d.get("saturation_range_rpm")
        return cls(
            model=d["model"],
            gpu=d["gpu"],
            engine=str(d.get("engine", "unknown")),
            mode=d.get("mode"),
            workload=dict(d.get("workload") or {}),
            arrival=str(d.get("arrival", "poisson")),
            points=points,
            saturation_rpm=d.get("saturation_rpm"),
            saturation_range_rpm=tuple(sr) if sr else None,
            capacity_rpm=d.get("capacity_rpm"),
            time_scale=float(d.get("time_scale", 1.0)),
            duration_s=d.get("duration_s"),
            warmup_s=float(d.get("warmup_s", 0.0)),
            cooldown_s=float(d.get("cooldown_s", 0.0)),
            slo=dict(d.get("slo") or {}),
            source=str(d.get("source", "")),
            notes=str(d.get("notes", "")),
            instance=dict(d.get("instance") or {}),
        )

    @classmethod
    def loads(cls, text: str, where: str = "profile") -> Profile:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProfileError(f"{where}: not valid JSON: {e}") from None
        return cls.from_json(data, where)

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ProfileError(f"profile file not found: {path}") from None
        return cls.loads(text, str(path))


# -- building points from per-request records ---------------------------------------------------

@dataclass(slots=True)
class RequestRecord:
    """One request as the load generator saw it (model time, seconds from the run start)."""

    arrival_s: float
    ok: bool
    input_tokens: int = 0
    output_tokens: int = 0
    ttft_s: float | None = None
    e2el_s: float | None = None
    itl_s: list[float] = field(default_factory=list)  # gaps between successive tokens
    queue_s: float | None = None  # server-reported, else None
    batch: float | None = None  # server-reported running batch at admission, if any
    klass: str | None = None
    instance: str | None = None  # which instance served it (the gateway's x-quicgw-instance)
    server_queue_s: float | None = None  # the backend's own timings (quicgw_timings), if sent
    server_e2el_s: float | None = None
    error: str = ""

    @property
    def finish_s(self) -> float | None:
        return None if self.e2el_s is None else self.arrival_s + self.e2el_s

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.e2el_s is None or self.output_tokens < 2:
            return None
        return (self.e2el_s - self.ttft_s) / (self.output_tokens - 1)


def build_point(
    rate_rpm: float,
    records: Sequence[RequestRecord],
    window: tuple[float, float],
    slo_ms: dict[str, float] | None = None,
    percentiles: Sequence[float] = PERCENTILES,
    keep_samples: bool = False,
) -> RatePoint:
    """Summarise the requests that *arrived* inside ``window`` (the trimmed steady state).

    Throughput counts completions that *finished* inside the window, so in overload it measures
    the service capacity rather than echoing the offered rate.
    """
    t0, t1 = window
    if not t1 > t0:
        raise ValueError("empty measurement window (trim less or run longer)")
    span = t1 - t0
    inside = [r for r in records if t0 <= r.arrival_s < t1]
    inside.sort(key=lambda r: r.arrival_s)
    ok = [r for r in inside if r.ok and r.e2el_s is not None]
    finished_in = [r for r in records if r.ok and r.finish_s is not None and t0 <= r.finish_s < t1]
    values: dict[str, list[float]] = {m: [] for m in METRICS}
    for r in ok:
        values["e2el_ms"].append(r.e2el_s * 1e3)
        if r.ttft_s is not None:
            values["ttft_ms"].append(r.ttft_s * 1e3)
        tp = r.tpot_s
        if tp is not None:
            values["tpot_ms"].append(tp * 1e3)
        values["itl_ms"].extend(x * 1e3 for x in r.itl_s)
        if r.queue_s is not None:
            values["queue_ms"].append(r.queue_s * 1e3)
    metrics = {m: summarize(v, percentiles) for m, v in values.items() if v}
    good = None
    if slo_ms:
        good_n = 0
        for r in ok:
            met = True
            for m, bound in slo_ms.items():
                v = {"ttft_ms": None if r.ttft_s is None else r.ttft_s * 1e3,
                     "e2el_ms": r.e2el_s * 1e3,
                     "tpot_ms": None if r.tpot_s is None else r.tpot_s * 1e3}.get(m)
                if v is None or v > bound:
                    met = False
                    break
            good_n += met
        good = good_n / span
    # Queue growth: server queue time when reported, else time to first token (which contains it).
    qx = [r.arrival_s for r in ok if (r.queue_s if r.queue_s is not None else r.ttft_s) is not None]
    qy = [r.queue_s if r.queue_s is not None else r.ttft_s for r in ok
          if (r.queue_s if r.queue_s is not None else r.ttft_s) is not None]
    from ilp.stats import linear_slope

    batches = [r.batch for r in ok if r.batch is not None]
    mean_batch = (sum(batches) / len(batches)) if batches else None
    if mean_batch is None:
        # Little's law on the service intervals (admitted -> finished) overlapping the window.
        busy = 0.0
        known = False
        for r in records:
            if not r.ok or r.e2el_s is None or r.queue_s is None:
                continue
            known = True
            a = max(t0, r.arrival_s + r.queue_s)
            b = min(t1, r.arrival_s + r.e2el_s)
            busy += max(0.0, b - a)
        mean_batch = busy / span if known else None
    return RatePoint(
        rate_rpm=rate_rpm,
        duration_s=span,
        requests=len(inside),
        completed=len(ok),
        failed=sum(1 for r in inside if not r.ok),
        request_throughput=len(finished_in) / span,
        output_throughput=sum(r.output_tokens for r in finished_in) / span,
        total_token_throughput=sum(r.output_tokens + r.input_tokens for r in finished_in) / span,
        goodput=good,
        metrics=metrics,
        queue_slope=linear_slope(qx, qy),
        mean_batch=mean_batch,
        samples={m: v for m, v in values.items() if v and m != "itl_ms"} if keep_samples else {},
    )


def detect_saturation(points: Sequence[RatePoint], max_batch: int | None = None,
                      tracking: float = 0.97, growth: float = 0.25) -> None:
    """Mark saturated points in place.

    The paper's criterion: "after reaching the saturation point, the queue size continued to
    increase, whereas the batch size remained unchanged". A point is saturated when the queue
    keeps growing over the measured window (the waiting time's trend rises by more than
    ``growth`` x the mean service time across the window) and, as a second sign, either the
    running batch has plateaued at 90% of ``max_batch`` or completions no longer track the
    offered load (below ``tracking`` x offered). Without any waiting-time measurement,
    completions below 85% of the offered load decide alone.
    """
    for p in points:
        if p.completed == 0:
            p.saturated = True
            continue
        lagging = p.achieved_rpm < tracking * p.rate_rpm
        e = p.metrics.get("e2el_ms")
        q = p.metrics.get("queue_ms")
        service_s = 0.0
        if e is not None:
            service_s = (e.mean - (q.mean if q is not None else 0.0)) / 1e3
        rise = p.queue_slope * p.duration_s
        growing = p.queue_slope > 0 and rise > growth * max(service_s, 1e-3)
        plateau = (max_batch is not None and p.mean_batch is not None
                   and p.mean_batch >= 0.9 * max_batch)
        if "queue_ms" in p.metrics or "ttft_ms" in p.metrics:
            p.saturated = growing and (lagging or plateau)
        else:  # no waiting-time signal at all (non-streaming, no server timings)
            p.saturated = p.achieved_rpm < 0.85 * p.rate_rpm


def saturation_summary(points: Sequence[RatePoint]) -> tuple[float | None, tuple[float, float] | None, float | None]:
    """(saturation rate, (last unsaturated, first saturated), capacity) from marked points."""
    pts = sorted(points, key=lambda p: p.rate_rpm)
    last_ok = None
    first_sat = None
    for p in pts:
        if p.saturated:
            first_sat = p.rate_rpm
            break
        last_ok = p.rate_rpm
    cap = max((p.achieved_rpm for p in pts), default=None)
    rng = (last_ok, first_sat) if last_ok is not None and first_sat is not None else None
    return last_ok, rng, cap


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _as_num(v: Any, where: str) -> float:
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ProfileError(f"{where}: expected a number, got {v!r}")
    return float(v)


def _req_num(d: dict, key: str, where: str, positive: bool = False) -> float:
    if key not in d:
        raise ProfileError(f"{where}.{key}: missing")
    v = _as_num(d[key], f"{where}.{key}")
    if positive and not v > 0:
        raise ProfileError(f"{where}.{key}: must be > 0, got {v:g}")
    return v
