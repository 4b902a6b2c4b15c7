"""Workloads: arrival times, classes and sizes of the requests a simulation serves.

* ``stable``: the poster's stable workload: the rate is fixed for a period, then moves to the
  next level of a fixed cycle.
* ``unpredictable``: random rates held for random durations (the poster's unpredictable
  workload), with occasional bursts.
* ``trace``: replay of a CSV ``time_s,class[,input_tokens,output_tokens]`` (e.g. Azure's public
  LLM traces converted to that header); missing sizes are drawn from the class profiles.

Rates are given as a *load factor* relative to the cluster's nominal capacity
(:func:`nominal_capacity_rps`), so the same workload definition loads a 2-instance and a
16-instance cluster alike. Everything is generated up front, vectorised, from one numpy
``Generator``: a simulation is a pure function of (cluster, workload, seed, router).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quicgw.core.catalog import TASKS
from quicgw.core.classes import DEFAULT_CLASS_TABLE, ClassTable
from quicgw.core.routing import InstanceInfo


@dataclass(frozen=True, slots=True)
class SizeDist:
    """Lognormal token count: ``median * exp(sigma * N(0,1))`` clipped to ``[lo, hi]``."""

    median: float
    sigma: float
    lo: int
    hi: int

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        x = self.median * np.exp(self.sigma * rng.standard_normal(n))
        return np.clip(np.rint(x), self.lo, self.hi).astype(np.int64)

    @property
    def mean(self) -> float:
        return float(min(max(self.median * np.exp(self.sigma ** 2 / 2), self.lo), self.hi))


@dataclass(frozen=True, slots=True)
class ClassProfile:
    name: str
    share: float
    input: SizeDist
    output: SizeDist


# The poster's three classes: short inputs (chat) for realtime and free, long inputs for bulk.
# Output lengths are known to the router (the client's max_tokens, generated in full as in
# vLLM's benchmark with ignore_eos), so deadline predictions are about load, not guessing.
DEFAULT_PROFILES: tuple[ClassProfile, ...] = (
    ClassProfile("realtime", 0.30, SizeDist(200, 0.6, 16, 2048), SizeDist(48, 0.5, 8, 160)),
    ClassProfile("free", 0.45, SizeDist(200, 0.6, 16, 2048), SizeDist(48, 0.5, 8, 160)),
    ClassProfile("bulk", 0.25, SizeDist(1536, 0.4, 256, 6144), SizeDist(64, 0.5, 8, 192)),
)
TASK_SHARES: dict[str, float] = {"general": 0.7, "math": 0.3}


@dataclass(slots=True)
class Arrivals:
    """The requests of one run, sorted by time (arrays of equal length)."""

    time: np.ndarray  # float64 seconds
    cls: np.ndarray  # int: index into ``class_names``
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    task: np.ndarray  # int: index into ``tasks``
    class_names: tuple[str, ...]
    tasks: tuple[str, ...] = TASKS
    schedule: list[tuple[float, float, float]] = field(default_factory=list)  # (t0, t1, rps)

    def __len__(self) -> int:
        return len(self.time)


def nominal_capacity_rps(instances: Sequence[InstanceInfo],
                         profiles: Sequence[ClassProfile] = DEFAULT_PROFILES) -> float:
    """Sum over instances of the full-batch throughput for the mix's mean request."""
    total = sum(p.share for p in profiles)
    mean_in = sum(p.share * p.input.mean for p in profiles) / total
    mean_out = sum(p.share * p.output.mean for p in profiles) / total
    return sum(i.latency.saturation_rps(mean_in, mean_out) for i in instances)


# Load levels (fractions of nominal capacity). The nominal capacity is a full-batch throughput
# that ignores deadlines; deadline-feasible capacity with the large model is a fraction of it.
STABLE_LEVELS: tuple[float, ...] = (0.15, 0.35, 0.6, 0.25, 0.5)
STABLE_PERIOD_S = 60.0
UNPREDICTABLE_RANGE: tuple[float, float] = (0.05, 0.8)
UNPREDICTABLE_DURATION_S: tuple[float, float] = (2.0, 40.0)
BURST_PROB = 0.15
BURST_FACTOR = (1.5, 2.5)


def stable_schedule(duration_s: float, capacity_rps: float, rng: np.random.Generator,
                    levels: Sequence[float] = STABLE_LEVELS, period_s: float = STABLE_PERIOD_S,
                    random_phase: bool = True) -> list[tuple[float, float, float]]:
    start = int(rng.integers(len(levels))) if random_phase else 0
    sched, t, k = [], 0.0, start
    while t < duration_s:
        t1 = min(duration_s, t + period_s)
        sched.append((t, t1, levels[k % len(levels)] * capacity_rps))
        t, k = t1, k + 1
    return sched


def unpredictable_schedule(duration_s: float, capacity_rps: float, rng: np.random.Generator,
                           load_range: tuple[float, float] = UNPREDICTABLE_RANGE,
                           duration_range: tuple[float, float] = UNPREDICTABLE_DURATION_S,
                           burst_prob: float = BURST_PROB) -> list[tuple[float, float, float]]:
    sched, t = [], 0.0
    lo, hi = load_range
    while t < duration_s:
        d = float(rng.uniform(*duration_range))
        load = float(rng.uniform(lo, hi))
        if rng.random() < burst_prob:
            load *= float(rng.uniform(*BURST_FACTOR))
            d = d / 4
        t1 = min(duration_s, t + d)
        sched.append((t, t1, load * capacity_rps))
        t = t1
    return sched


def _sample_requests(rng: np.random.Generator, times: np.ndarray,
                     profiles: Sequence[ClassProfile], class_table: ClassTable,
                     cls: np.ndarray | None = None) -> Arrivals:
    n = len(times)
    names = tuple(c.name for c in class_table)
    by_name = {p.name: p for p in profiles}
    missing = [c for c in names if c not in by_name]
    if missing:
        raise ValueError(f"no workload profile for classes {missing}")
    if cls is None:
        shares = np.array([by_name[c].share for c in names], dtype=float)
        cls = rng.choice(len(names), size=n, p=shares / shares.sum())
    inp = np.zeros(n, dtype=np.int64)
    out = np.zeros(n, dtype=np.int64)
    for k, c in enumerate(names):
        idx = np.flatnonzero(cls == k)
        if len(idx):
            inp[idx] = by_name[c].input.sample(rng, len(idx))
            out[idx] = by_name[c].output.sample(rng, len(idx))
    tshares = np.array([TASK_SHARES.get(t, 0.0) for t in TASKS])
    task = rng.choice(len(TASKS), size=n, p=tshares / tshares.sum())
    return Arrivals(times, np.asarray(cls, dtype=np.int64), inp, out, task, names)


def poisson_arrivals(schedule: list[tuple[float, float, float]], rng: np.random.Generator,
                     profiles: Sequence[ClassProfile] = DEFAULT_PROFILES,
                     class_table: ClassTable = DEFAULT_CLASS_TABLE) -> Arrivals:
    parts = []
    for t0, t1, rate in schedule:
        k = int(rng.poisson(max(rate, 0.0) * (t1 - t0)))
        parts.append(np.sort(rng.uniform(t0, t1, size=k)))
    times = np.concatenate(parts) if parts else np.zeros(0)
    arr = _sample_requests(rng, times, profiles, class_table)
    arr.schedule = schedule
    return arr


WORKLOADS = ("stable", "unpredictable", "trace")


def make_workload(kind: str, rng: np.random.Generator, duration_s: float, capacity_rps: float,
                  profiles: Sequence[ClassProfile] = DEFAULT_PROFILES,
                  class_table: ClassTable = DEFAULT_CLASS_TABLE, trace: str | Path | None = None,
                  load_scale: float = 1.0) -> Arrivals:
    """Arrivals of one run. ``load_scale`` multiplies every rate (for load sweeps)."""
    cap = capacity_rps * load_scale
    if kind == "stable":
        return poisson_arrivals(stable_schedule(duration_s, cap, rng), rng, profiles, class_table)
    if kind == "unpredictable":
        return poisson_arrivals(unpredictable_schedule(duration_s, cap, rng), rng, profiles,
                                class_table)
    if kind == "trace":
        if trace is None:
            raise ValueError("the trace workload needs a CSV file (time_s,class[,input_tokens,output_tokens])")
        return load_trace(trace, rng, profiles, class_table, duration_s=duration_s)
    raise ValueError(f"unknown workload {kind!r} (choose from {', '.join(WORKLOADS)})")


def load_trace(path: str | Path, rng: np.random.Generator,
               profiles: Sequence[ClassProfile] = DEFAULT_PROFILES,
               class_table: ClassTable = DEFAULT_CLASS_TABLE,
               duration_s: float | None = None) -> Arrivals:
    """Read ``time_s,class[,input_tokens,output_tokens]`` (header required). Times are shifted
    to start at 0 and sorted; rows past ``duration_s`` are dropped. A bad row is an error that
    names its line."""
    path = Path(path)
    names = [c.name for c in class_table]
    times, cls, inp, out = [], [], [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"time_s", "class"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: header must start with time_s,class")
        sized = {"input_tokens", "output_tokens"} <= set(reader.fieldnames)
        for line, row in enumerate(reader, start=2):
            try:
                t = float(row["time_s"])
                c = names.index(row["class"].strip())
                if sized and row["input_tokens"] and row["output_tokens"]:
                    i, o = int(row["input_tokens"]), int(row["output_tokens"])
                    if i < 1 or o < 1:
                        raise ValueError("token counts must be >= 1")
                else:
                    i = o = -1
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}:{line}: bad row {row!r}: {e} (classes: {names})") from None
            times.append(t)
            cls.append(c)
            inp.append(i)
            out.append(o)
    if not times:
        raise ValueError(f"{path}: no requests")
    order = np.argsort(np.asarray(times), kind="stable")
    t = np.asarray(times)[order]
    t = t - t[0]
    c = np.asarray(cls, dtype=np.int64)[order]
    arr = _sample_requests(rng, t, profiles, class_table, cls=c)
    given_in = np.asarray(inp, dtype=np.int64)[order]
    given_out = np.asarray(out, dtype=np.int64)[order]
    has = given_in > 0
    arr.input_tokens[has] = given_in[has]
    arr.output_tokens[has] = given_out[has]
    if duration_s is not None:
        keep = arr.time <= duration_s
        arr = Arrivals(arr.time[keep], arr.cls[keep], arr.input_tokens[keep],
                       arr.output_tokens[keep], arr.task[keep], arr.class_names)
    return arr
