"""A rate sweep: run the load at each offered rate, trim, summarise, find saturation.

The same code builds a profile from a live target (:func:`run_sweep_live`) or from the shared
latency model without sockets (:func:`run_sweep_sim`), so both produce the same
:class:`~ilp.profile.Profile`.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ilp.bench.load import LoadSample, Stream, Target, discover, run_load
from ilp.profile import (
    Profile,
    RatePoint,
    RequestRecord,
    build_point,
    detect_saturation,
    saturation_summary,
)
from ilp.sim import ClassLoad, simulate_instance
from ilp.stats import PERCENTILES, linear_slope
from ilp.workload import Workload
from quicgw.core.latency import LatencyModel


def parse_rates(spec: str) -> list[float]:
    """``"1,2,5"``, ``"1:16:0.5"`` (start:stop:step, inclusive) or a mix: ``"1,2,4:8:0.25"``."""
    out: list[float] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if ":" in part:
            bits = part.split(":")
            if len(bits) != 3:
                raise ValueError(f"rate range {part!r}: expected start:stop:step")
            a, b, st = (float(x) for x in bits)
            if st <= 0 or b < a:
                raise ValueError(f"rate range {part!r}: need step > 0 and stop >= start")
            n = int(math.floor((b - a) / st + 1e-9))
            out.extend(round(a + k * st, 9) for k in range(n + 1))
        else:
            out.append(float(part))
    if not out or any(r <= 0 for r in out):
        raise ValueError(f"rates {spec!r}: need at least one rate, all > 0")
    return sorted(set(out))


def parse_duration(v: str | float) -> float:
    """Seconds from ``"40m"``, ``"480s"``, ``"1.5h"`` or a number of seconds."""
    if isinstance(v, int | float):
        return float(v)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([smh]?)\s*", v)
    if not m:
        raise ValueError(f"duration {v!r}: expected e.g. 40m, 480s, 1.5h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def parse_slo(spec: str | None) -> dict[str, float]:
    """``"ttft_ms=2000,e2el_ms=30000"``."""
    out: dict[str, float] = {}
    if not spec:
        return out
    for part in spec.split(","):
        k, _, v = part.partition("=")
        k = k.strip()
        if k not in ("ttft_ms", "tpot_ms", "e2el_ms"):
            raise ValueError(f"--slo: unknown metric {k!r} (ttft_ms, tpot_ms, e2el_ms)")
        try:
            out[k] = float(v)
        except ValueError:
            raise ValueError(f"--slo: {k} needs a number of milliseconds") from None
    return out


@dataclass(slots=True)
class SweepConfig:
    rates_rpm: list[float]
    duration_s: float = 2400.0  # the paper: 40 minutes ...
    warmup_s: float = 480.0  # ... dropping the first 8 ...
    cooldown_s: float = 180.0  # ... and the last 3
    workload: Workload = field(default_factory=Workload)
    arrival: str = "poisson"
    burstiness: float = 1.0
    trace: Sequence[float] | None = None
    seed: int = 0
    slo_ms: dict[str, float] = field(default_factory=dict)
    keep_samples: bool = True
    percentiles: tuple[float, ...] = PERCENTILES

    def __post_init__(self) -> None:
        if self.warmup_s < 0 or self.cooldown_s < 0:
            raise ValueError("warm-up and cool-down must be >= 0")
        if self.warmup_s + self.cooldown_s >= self.duration_s:
            raise ValueError(f"trimming {self.warmup_s:g} s + {self.cooldown_s:g} s leaves nothing "
                             f"of a {self.duration_s:g} s run")

    @property
    def window(self) -> tuple[float, float]:
        return (self.warmup_s, self.duration_s - self.cooldown_s)


@dataclass(slots=True)
class SweepResult:
    profile: Profile
    records: dict[float, list[RequestRecord]]
    load: dict[float, list[LoadSample]] = field(default_factory=dict)


def _point(cfg: SweepConfig, rate: float, records: list[RequestRecord],
           load: list[LoadSample] | None = None) -> RatePoint:
    pt = build_point(rate, records, cfg.window, cfg.slo_ms, cfg.percentiles, cfg.keep_samples)
    if load:
        t0, t1 = cfg.window
        inside = [s for s in load if t0 <= s.t_s < t1]
        if inside:
            pt.mean_batch = sum(s.running for s in inside) / len(inside)
            # Prefer the server's queue length trend when we have it (requests per second).
            qs = linear_slope([s.t_s for s in inside], [s.waiting for s in inside])
            if pt.metrics.get("queue_ms") is None and qs > 0:
                pt.queue_slope = qs
    return pt


def finish_profile(cfg: SweepConfig, points: list[RatePoint], **meta: Any) -> Profile:
    max_batch = meta.pop("max_batch", None)
    detect_saturation(points, max_batch)
    sat, rng, cap = saturation_summary(points)
    workload = cfg.workload.to_json()
    if max_batch is not None:
        workload["max_batch"] = max_batch
    return Profile(
        points=points, saturation_rpm=sat, saturation_range_rpm=rng, capacity_rpm=cap,
        duration_s=cfg.duration_s, warmup_s=cfg.warmup_s, cooldown_s=cfg.cooldown_s,
        workload=workload, arrival=cfg.arrival, slo=dict(cfg.slo_ms), **meta)


def run_sweep_sim(model: LatencyModel, cfg: SweepConfig, *, model_name: str, gpu: str,
                  policy: str = "fcfs", progress: Callable[[float], None] | None = None,
                  mode: str | None = None) -> SweepResult:
    """The sweep on the shared latency model (fast-forwarded; no sockets)."""
    points, recs = [], {}
    for rate in cfg.rates_rpm:
        r = simulate_instance(model, [ClassLoad("load", rate / 60.0, 0, cfg.workload)],
                              cfg.duration_s, policy=policy, seed=cfg.seed, arrival=cfg.arrival,
                              burstiness=cfg.burstiness)
        recs[rate] = r
        points.append(_point(cfg, rate, r))
        if progress:
            progress(rate)
    prof = finish_profile(
        cfg, points, model=model_name, gpu=gpu, engine="simulated", mode=mode,
        time_scale=1.0, max_batch=model.max_batch,
        source="ilp.bench --simulate (quicgw.core.latency.BatchEngine, fast-forwarded)",
        notes=f"latency model {model}")
    prof.instance = {"model": model_name, "gpu": gpu, "max_batch": model.max_batch,
                     "queue_policy": policy, "latency_model": _lm_json(model)}
    return SweepResult(prof, recs)


def _lm_json(m: LatencyModel) -> dict[str, Any]:
    return {"prefill_s_per_token": m.prefill_s_per_token, "decode_base_s": m.decode_base_s,
            "decode_per_seq_s": m.decode_per_seq_s, "max_batch": m.max_batch,
            "kv_capacity_tokens": m.kv_capacity_tokens}


async def _backend_lag_ms(target: Target) -> float | None:
    """Our emulated backend reports how late its step loop ran (``/load``'s ``lag_wall_ms``)."""
    import httpx

    try:
        async with httpx.AsyncClient(verify=target.verify, timeout=10) as c:
            d = (await c.get(target.url + "/load")).json()
        return float(d["lag_wall_ms"]["max"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def run_sweep_live(target: Target, cfg: SweepConfig, *, stream: Stream | None = None,
                   model_name: str | None = None, gpu: str | None = None,
                   engine: str | None = None, mode: str | None = None,
                   max_batch: int | None = None, progress_bar: bool = True,
                   drain_timeout_s: float | None = None, poll_s: float | None = 5.0,
                   log: Callable[[str], None] = print) -> SweepResult:
    """The sweep against a live OpenAI-compatible endpoint, one rate after another."""
    info = asyncio.run(discover(target))
    q = info.get("quicgw") or {}
    if q:
        ts = float(q.get("time_scale", 1.0))
        if not math.isclose(ts, target.time_scale, rel_tol=1e-6):
            raise ValueError(f"{target.url} runs at time scale {ts:g} but --time-scale is "
                             f"{target.time_scale:g}; pass --time-scale {ts:g}")
    model_name = model_name or q.get("catalog_model") or (info["models"][0] if info["models"] else "unknown")
    gpu = gpu or q.get("gpu") or "unknown"
    max_batch = max_batch or q.get("max_batch")
    engine = engine or ("emulated" if q else "openai-compatible")
    base = stream or Stream("load", 0.0)
    points, recs, loads = [], {}, {}
    total_wall = len(cfg.rates_rpm) * cfg.duration_s / target.time_scale
    log(f"ilp.bench: {len(cfg.rates_rpm)} rate(s) x {cfg.duration_s / 60:g} min model time at "
        f"time scale {target.time_scale:g}: about {total_wall / 60:.1f} min wall (plus drain)")
    for rate in cfg.rates_rpm:
        s = Stream(base.name, rate, cfg.workload, base.traffic_class, base.priority, base.headers,
                   cfg.arrival, cfg.burstiness, cfg.trace)
        bar = None
        if progress_bar:
            from tqdm import tqdm

            bar = tqdm(total=None, desc=f"{rate:g} RPM", unit="req", leave=False)

        def prog(done: int, total: int, bar=bar) -> None:
            if bar is not None:
                if bar.total != total:
                    bar.total = total
                bar.update(1)

        t0 = time.monotonic()
        r, samples = asyncio.run(run_load(target, [s], cfg.duration_s, seed=cfg.seed,
                                          progress=prog, poll_s=poll_s,
                                          drain_timeout_s=drain_timeout_s))
        if bar is not None:
            bar.close()
        recs[rate], loads[rate] = r, samples
        pt = _point(cfg, rate, r, samples)
        points.append(pt)
        lag = asyncio.run(_backend_lag_ms(target)) if q else None
        if lag is not None and lag > 1000:
            log(f"  warning: the backend's step loop fell up to {lag / 1000:.1f} s (wall) behind "
                f"its clock at {rate:g} RPM: the machine could not keep up with time scale "
                f"{target.time_scale:g}; this point is not trustworthy")
        e = pt.metrics.get("e2el_ms")
        log(f"  {rate:g} RPM: {pt.completed} done, {pt.failed} failed, achieved "
            f"{pt.achieved_rpm:.2f} RPM, e2el p50 {(e.median if e else math.nan) / 1e3:.2f} s "
            f"p95 {(e.percentiles.get(95.0, math.nan) if e else math.nan) / 1e3:.2f} s "
            f"(wall {time.monotonic() - t0:.0f} s)")
    prof = finish_profile(
        cfg, points, model=model_name, gpu=gpu, engine=engine, mode=mode,
        time_scale=target.time_scale, max_batch=max_batch,
        source=f"ilp.bench --target {target.url} ({target.protocol}, {target.endpoint}"
               f"{', streaming' if target.stream else ''})")
    if q:
        prof.instance = {"model": model_name, "gpu": gpu, "max_batch": max_batch,
                         "queue_policy": q.get("queue_policy")}
    return SweepResult(prof, recs, loads)
