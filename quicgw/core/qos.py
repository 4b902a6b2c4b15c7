"""Request QoS: the class, absolute deadline and RFC 9218 priority of one request."""

from __future__ import annotations

from dataclasses import dataclass

import http_sf

from quicgw.core.classes import TrafficClass

# RFC 9218 section 4: urgency defaults to 3, incremental to false.
DEFAULT_URGENCY = 3
DEFAULT_INCREMENTAL = False


@dataclass(frozen=True, slots=True)
class Priority:
    """RFC 9218 extensible priority parameters."""

    urgency: int = DEFAULT_URGENCY
    incremental: bool = DEFAULT_INCREMENTAL

    def header_value(self) -> str:
        return f"u={self.urgency}, i" if self.incremental else f"u={self.urgency}"


def parse_priority(value: str | bytes | None, base: Priority | None = None) -> Priority:
    """Parse an RFC 9218 ``priority`` field value (a Structured Fields Dictionary).

    Invalid input is ignored, as RFC 9218 section 4 requires: a member with an unexpected type
    or out-of-range value is dropped and its default (or ``base``) used; an unparseable field as
    a whole yields ``base``. Unknown members are ignored.
    """
    base = base or Priority()
    if value is None:
        return base
    if isinstance(value, str):
        value = value.encode("latin-1", "replace")
    if not value.strip():
        return base
    try:
        parsed = http_sf.parse(value, tltype="dictionary")
    except Exception:  # http_sf raises plain ValueError; any failure means "ignore the field"
        return base
    urgency, incremental = base.urgency, base.incremental
    member = parsed.get("u")
    if member is not None:
        u = member[0] if isinstance(member, tuple) else member
        if isinstance(u, int) and not isinstance(u, bool) and 0 <= u <= 7:
            urgency = u
    member = parsed.get("i")
    if member is not None:
        i = member[0] if isinstance(member, tuple) else member
        if isinstance(i, bool):
            incremental = i
    return Priority(urgency, incremental)


@dataclass(frozen=True, slots=True)
class RequestQoS:
    """What the gateway decided about one request.

    ``deadline`` is absolute on the caller's monotonic clock (seconds). ``arrival`` is on the
    same clock.
    """

    traffic_class: TrafficClass
    arrival: float
    deadline: float
    priority: Priority = Priority()
    tenant: str = "anonymous"

    @property
    def class_name(self) -> str:
        return self.traffic_class.name

    @property
    def level(self) -> int:
        return self.traffic_class.priority

    def slack(self, now: float) -> float:
        return self.deadline - now

    def order_key(self) -> tuple[int, float, float]:
        """Admission order: class priority, then earliest deadline, then arrival."""
        return (self.traffic_class.priority, self.deadline, self.arrival)
