"""Live-state features shared by training and serving.

The router observation is built by one function from the simulator's state in training and
from the gateway's live state in serving (see DESIGN.md). This module holds the pieces both
sides feed: the arrival-rate estimator (sans-IO: callers pass time in).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

# Windows (seconds) of the arrival-rate estimates: short enough to see a burst, long enough to
# see the regime.
RATE_WINDOWS_S: tuple[float, ...] = (1.0, 10.0, 60.0)


@dataclass(slots=True)
class RateEstimator:
    """Exponentially decaying arrival-rate estimates (requests/s) per class and window.

    Each window w keeps ``r <- r * exp(-dt / w) + 1 / w`` per arrival, which converges to the
    arrival rate for stationary Poisson traffic and forgets with time constant w.
    """

    windows: tuple[float, ...] = RATE_WINDOWS_S
    _rates: dict[str, list[float]] = field(default_factory=dict)
    _last: dict[str, float] = field(default_factory=dict)

    def _decay(self, key: str, now: float) -> list[float]:
        rates = self._rates.setdefault(key, [0.0] * len(self.windows))
        last = self._last.get(key, now)
        dt = max(0.0, now - last)
        if dt:
            for i, w in enumerate(self.windows):
                rates[i] *= math.exp(-dt / w)
        self._last[key] = now
        return rates

    def observe(self, key: str, now: float) -> None:
        rates = self._decay(key, now)
        for i, w in enumerate(self.windows):
            rates[i] += 1.0 / w

    def rates(self, key: str, now: float) -> tuple[float, ...]:
        return tuple(self._decay(key, now))

    def all_rates(self, keys: Iterable[str], now: float) -> dict[str, tuple[float, ...]]:
        return {k: self.rates(k, now) for k in keys}
