"""Summary statistics for benchmark samples: means and percentiles with confidence intervals.

Sans-IO and deterministic. Latency samples from one queueing run are autocorrelated (a request
that waited long is followed by others that waited long), so the confidence interval of the mean
uses batch means (10 consecutive batches in arrival order, Student t with 9 degrees of freedom)
rather than the i.i.d. formula, which would be far too narrow near saturation. Percentile
intervals are the distribution-free order-statistic interval (normal approximation to the
binomial); they assume independence and are optimistic for strongly correlated runs, which the
profile says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

PERCENTILES: tuple[float, ...] = (50.0, 80.0, 90.0, 95.0, 99.0)
Z95 = 1.959963984540054
# Two-sided 95% Student t quantiles by degrees of freedom (1..30); larger df use the normal.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
N_BATCHES = 10


def t95(df: int) -> float:
    if df < 1:
        return math.inf
    return _T95[df - 1] if df <= len(_T95) else Z95


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation between order statistics (numpy's
    default "linear" method), of an already sorted sequence."""
    n = len(sorted_values)
    if n == 0:
        return math.nan
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    h = (n - 1) * p / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def percentile_ci(sorted_values: Sequence[float], p: float) -> tuple[float, float]:
    """95% distribution-free interval for the p-th percentile from order statistics."""
    n = len(sorted_values)
    if n == 0:
        return (math.nan, math.nan)
    q = p / 100.0
    half = Z95 * math.sqrt(n * q * (1 - q))
    lo = max(0, math.floor(n * q - half) - 1)
    hi = min(n - 1, math.ceil(n * q + half))
    return (sorted_values[lo], sorted_values[hi])


def mean_ci(values_in_order: Sequence[float]) -> tuple[float, float]:
    """95% interval for the mean by batch means (values in arrival order)."""
    n = len(values_in_order)
    if n == 0:
        return (math.nan, math.nan)
    m = sum(values_in_order) / n
    if n < 2:
        return (m, m)
    if n >= 2 * N_BATCHES:
        k = N_BATCHES
        means = []
        for b in range(k):
            chunk = values_in_order[b * n // k:(b + 1) * n // k]
            means.append(sum(chunk) / len(chunk))
        mm = sum(means) / k
        var = sum((x - mm) ** 2 for x in means) / (k - 1)
        half = t95(k - 1) * math.sqrt(var / k)
    else:
        var = sum((x - m) ** 2 for x in values_in_order) / (n - 1)
        half = t95(n - 1) * math.sqrt(var / n)
    return (m - half, m + half)


@dataclass(frozen=True, slots=True)
class MetricSummary:
    """One metric (e.g. e2el_ms) at one offered rate."""

    n: int
    mean: float
    std: float
    median: float
    percentiles: dict[float, float] = field(default_factory=dict)
    mean_ci: tuple[float, float] = (math.nan, math.nan)
    percentile_ci: dict[float, tuple[float, float]] = field(default_factory=dict)

    def at(self, p: float) -> float:
        """The p-th percentile: stored exactly, else interpolated linearly in p between the
        stored ones (p50 is the median)."""
        table = dict(self.percentiles)
        table.setdefault(50.0, self.median)
        if p in table:
            return table[p]
        keys = sorted(table)
        if not keys:
            raise ValueError("no percentiles stored")
        if p <= keys[0]:
            return table[keys[0]] if p == keys[0] else _extrapolate_low(table, keys, p)
        if p >= keys[-1]:
            if p == keys[-1]:
                return table[keys[-1]]
            raise ValueError(
                f"p{p:g} is above the highest stored percentile p{keys[-1]:g}; store raw samples "
                "in the profile (--keep-samples) to use it")
        for a, b in zip(keys, keys[1:], strict=False):
            if a <= p <= b:
                return table[a] + (p - a) / (b - a) * (table[b] - table[a])
        raise AssertionError("unreachable")


def _extrapolate_low(table: dict[float, float], keys: list[float], p: float) -> float:
    # Below the lowest stored percentile: the value there is an upper bound, which is safe for
    # capacity planning (it overstates latency).
    return table[keys[0]]


def summarize(values_in_order: Sequence[float],
              percentiles: Sequence[float] = PERCENTILES) -> MetricSummary:
    """Summarise samples given in arrival order (the order matters for the batch-means CI)."""
    vals = [float(v) for v in values_in_order if v is not None and not math.isnan(v)]
    n = len(vals)
    if n == 0:
        nan = math.nan
        return MetricSummary(0, nan, nan, nan, {p: nan for p in percentiles},
                             (nan, nan), {p: (nan, nan) for p in percentiles})
    s = sorted(vals)
    m = sum(vals) / n
    std = math.sqrt(sum((x - m) ** 2 for x in vals) / (n - 1)) if n > 1 else 0.0
    return MetricSummary(
        n=n,
        mean=m,
        std=std,
        median=percentile(s, 50.0),
        percentiles={float(p): percentile(s, p) for p in percentiles},
        mean_ci=mean_ci(vals),
        percentile_ci={float(p): percentile_ci(s, p) for p in percentiles},
    )


def linear_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys on xs (0 when undefined)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx = sum(xs) / n
    my = sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def ecdf(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """Points of the empirical CDF (x sorted, y in (0, 1])."""
    s = sorted(values)
    n = len(s)
    return s, [(i + 1) / n for i in range(n)]
