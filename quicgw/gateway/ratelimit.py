"""Tenant rate limits (sans-IO): token buckets for requests and tokens per minute.

A bucket holds up to one minute's allowance (``per_minute``) and refills continuously at
``per_minute / 60`` a second, so a tenant may burst its whole minute at once and then goes at
the configured rate. Time is always passed in (``now``, seconds on any monotonic clock); nothing
here reads a clock or sleeps.

* requests: one per request, taken when its headers are classified (refused requests count
  too: a client hammering the gateway with bad requests is still hammering it);
* tokens: the request's input tokens (the gateway's estimate) plus its output allowance
  (``max_tokens``, or the default) are reserved when its body is parsed, the way OpenAI's limits
  count ``max_tokens``; what the request did not use is given back when the response says
  (``usage``), and everything is given back when the request fails before reaching a backend.

Over the limit is :class:`RateLimited` with the seconds until the request would fit (the
``Retry-After`` the client gets). A request larger than a whole minute's allowance can never
fit: :class:`RateLimited` with ``retry_after_s = None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class RateLimited(Exception):
    def __init__(self, what: str, amount: float, per_minute: float,
                 retry_after_s: float | None) -> None:
        self.what = what
        self.amount = amount
        self.per_minute = per_minute
        self.retry_after_s = retry_after_s
        if retry_after_s is None:
            msg = (f"this request needs {amount:g} {what}, more than the tenant's whole "
                   f"limit of {per_minute:g} {what} per minute: it can never be served "
                   f"(lower max_tokens or shorten the input)")
        else:
            msg = (f"rate limit of {per_minute:g} {what} per minute exceeded; "
                   f"retry after {retry_after_s:.1f} s")
        super().__init__(msg)

    @property
    def retry_after_header(self) -> bytes | None:
        """Whole seconds (RFC 9110 Retry-After), rounded up, at least 1."""
        if self.retry_after_s is None:
            return None
        return str(max(1, math.ceil(self.retry_after_s))).encode()


@dataclass(slots=True)
class TokenBucket:
    """``capacity`` units, refilled at ``rate`` units per second, full at ``now``."""

    rate: float
    capacity: float
    level: float
    updated: float

    @classmethod
    def per_minute(cls, per_minute: float, now: float) -> TokenBucket:
        if not per_minute > 0:
            raise ValueError(f"a rate limit must be positive, got {per_minute!r}")
        return cls(per_minute / 60.0, per_minute, per_minute, now)

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_time(self, amount: float, now: float) -> float | None:
        """Seconds until ``amount`` fits (0 now), or None if it never can."""
        if amount > self.capacity:
            return None
        self._refill(now)
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, amount: float, now: float) -> float | None:
        """Take ``amount`` if it fits and return 0; otherwise take nothing and return the wait
        (None: never)."""
        wait = self.wait_time(amount, now)
        if wait == 0.0:
            self.level -= amount
        return wait

    def give_back(self, amount: float, now: float) -> None:
        self._refill(now)
        self.level = min(self.capacity, self.level + amount)


@dataclass(slots=True)
class TenantLimits:
    requests: TokenBucket | None
    tokens: TokenBucket | None
    requests_per_minute: float | None
    tokens_per_minute: float | None


class RateLimiter:
    """The buckets of every tenant. ``limits`` maps a tenant name to its (requests per minute,
    tokens per minute); None means no limit. Unknown tenants are not limited."""

    def __init__(self, limits: dict[str, tuple[float | None, float | None]], now: float) -> None:
        self._tenants: dict[str, TenantLimits] = {}
        for name, (rpm, tpm) in limits.items():
            if rpm is None and tpm is None:
                continue
            self._tenants[name] = TenantLimits(
                TokenBucket.per_minute(rpm, now) if rpm is not None else None,
                TokenBucket.per_minute(tpm, now) if tpm is not None else None, rpm, tpm)

    def __bool__(self) -> bool:
        return bool(self._tenants)

    def request(self, tenant: str, now: float) -> None:
        """Count one request; raises :class:`RateLimited` when over the limit."""
        t = self._tenants.get(tenant)
        if t is None or t.requests is None:
            return
        wait = t.requests.take(1.0, now)
        if wait != 0.0:
            raise RateLimited("requests", 1, t.requests_per_minute, wait)

    def reserve_tokens(self, tenant: str, amount: int, now: float) -> int:
        """Reserve ``amount`` tokens; returns what was reserved (0 when the tenant has no token
        limit), raises :class:`RateLimited` when over the limit."""
        t = self._tenants.get(tenant)
        if t is None or t.tokens is None:
            return 0
        wait = t.tokens.take(float(amount), now)
        if wait != 0.0:
            raise RateLimited("tokens", amount, t.tokens_per_minute, wait)
        return amount

    def give_back_tokens(self, tenant: str, amount: int, now: float) -> None:
        t = self._tenants.get(tenant)
        if t is not None and t.tokens is not None and amount > 0:
            t.tokens.give_back(float(amount), now)
