"""Open-loop arrival processes (sans-IO, seeded): Poisson, gamma, constant, trace replay.

Each returns arrival times in seconds from the start of a run, in model time. A rate is in
requests per second here; the CLIs speak requests per minute, as the paper does.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path

ARRIVALS = ("poisson", "gamma", "constant", "trace")


def arrival_times(kind: str, rate_rps: float, duration_s: float, seed: int = 0,
                  burstiness: float = 1.0, trace: Sequence[float] | None = None) -> list[float]:
    """Arrival times in ``[0, duration_s)``.

    ``poisson``: exponential gaps. ``gamma``: gamma gaps with shape ``burstiness`` (vLLM's
    benchmark convention: 1 is Poisson, < 1 burstier, > 1 smoother), same mean rate.
    ``constant``: evenly spaced. ``trace``: the given times (already in seconds), rescaled so
    their mean rate is ``rate_rps`` when that is > 0, else replayed as recorded.
    """
    if duration_s <= 0:
        raise ValueError("duration must be > 0")
    if kind == "trace":
        if not trace:
            raise ValueError("trace arrivals need a trace (--trace FILE)")
        base = sorted(float(t) - float(min(trace)) for t in trace)
        if rate_rps > 0 and len(base) > 1 and base[-1] > 0:
            native = (len(base) - 1) / base[-1]
            base = [t * native / rate_rps for t in base]
        return [t for t in base if t < duration_s]
    if rate_rps <= 0:
        raise ValueError("rate must be > 0")
    if kind == "constant":
        gap = 1.0 / rate_rps
        n = int(duration_s * rate_rps - 1e-9) + 1
        return [i * gap for i in range(n) if i * gap < duration_s]
    if kind not in ("poisson", "gamma"):
        raise ValueError(f"unknown arrival process {kind!r} (choose from {', '.join(ARRIVALS)})")
    if kind == "gamma" and burstiness <= 0:
        raise ValueError("burstiness must be > 0")
    rng = random.Random(seed)
    out = []
    t = 0.0
    while True:
        if kind == "poisson":
            t += rng.expovariate(rate_rps)
        else:
            t += rng.gammavariate(burstiness, 1.0 / (rate_rps * burstiness))
        if t >= duration_s:
            return out
        out.append(t)


def load_trace(path: str | Path) -> list[float]:
    """Arrival timestamps (seconds) from a text/CSV file (first numeric column, or a column named
    ``timestamp``/``arrival_s``) or a JSON list (of numbers or objects with ``timestamp``)."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list")
        out = []
        for i, x in enumerate(data):
            v = x.get("timestamp", x.get("arrival_s")) if isinstance(x, dict) else x
            if not isinstance(v, int | float):
                raise ValueError(f"{path}[{i}]: no numeric timestamp")
            out.append(float(v))
        return out
    rows = list(csv.reader(text.splitlines()))
    col = 0
    start = 0
    if rows and rows[0]:
        header = [h.strip().lower() for h in rows[0]]
        for name in ("timestamp", "arrival_s", "time"):
            if name in header:
                col, start = header.index(name), 1
                break
        else:
            try:
                float(rows[0][0])
            except ValueError:
                start = 1
    out = []
    for i, row in enumerate(rows[start:], start=start + 1):
        if not row or not row[0].strip():
            continue
        try:
            out.append(float(row[col]))
        except (ValueError, IndexError):
            raise ValueError(f"{path}:{i}: not a timestamp: {row!r}") from None
    return out
