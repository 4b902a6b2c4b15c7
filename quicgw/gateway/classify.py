"""Classification (sans-IO): who is asking, in which traffic class, by when, how urgently.

From the request headers and the caller's clock to a :class:`~quicgw.core.qos.RequestQoS`, or an
:class:`~quicgw.gateway.http.HTTPError` saying what was wrong:

* tenant from ``Authorization: Bearer <key>``: the key's SHA-256 digest is compared with every
  tenant's digest in constant time (``hmac.compare_digest``, no early exit), so neither the key
  nor which tenant matched leaks through timing, and keys are never stored;
* no tenants configured: the gateway is open (every class, tenant ``anonymous``); otherwise a
  missing key is 401 unless ``gateway.anonymous_class`` names the one class anonymous users get;
* class from ``x-traffic-class``, else the tenant's default; a class the tenant may not use is
  403, or the tenant's default class when the tenant is configured to ``downgrade``;
* deadline from ``x-deadline-ms`` (a positive number of milliseconds), else the class default.
  A client may relax its deadline but not tighten it below the class's floor
  (``min_deadline_ms``, which defaults to the class deadline itself): the deadline orders the
  admission queues and the EDF-family packet schedulers, so a tighter one would jump the queue.
  A tighter value is clamped to the floor, not refused (the response's ``x-quicgw-deadline-ms``
  says what was applied). An open gateway (no tenants: no identities, and every client may
  already choose every class) applies only explicit ``min_deadline_ms`` floors, so experiments
  can send per-request deadlines;
* RFC 9218 ``priority`` parsed with :func:`quicgw.core.qos.parse_priority` on top of the class's
  urgency; the urgency is clamped so a client can only make itself *less* urgent than its class.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from quicgw.config import Config
from quicgw.core.classes import TrafficClass
from quicgw.core.qos import Priority, RequestQoS, parse_priority
from quicgw.gateway.http import HTTPError

MAX_DEADLINE_MS = 86_400_000.0  # one day: anything longer is a mistake, not a deadline
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    digest: bytes  # SHA-256 of the API key
    classes: frozenset[str]
    default_class: str
    downgrade: bool


class Classifier:
    def __init__(self, config: Config) -> None:
        table = config.class_table
        self.classes: dict[str, TrafficClass] = dict(table.classes)
        self.class_index: dict[str, int] = {c.name: i for i, c in enumerate(table)}
        self.base_priority: dict[str, Priority] = {
            c.name: Priority(c.urgency, False) for c in table}
        self.tenants: tuple[Tenant, ...] = tuple(
            Tenant(t.name, bytes.fromhex(t.key_digest), frozenset(t.classes),
                   t.default_class or t.classes[0], t.on_forbidden_class == "downgrade")
            for t in config.tenants)
        # Open gateway (no tenants): anonymous users may use every class and default to the
        # least urgent one, so forgetting the header never promotes anybody.
        least_urgent = max(table, key=lambda c: (c.priority, c.name)).name
        # The tightest deadline (ms) a request may set per class (see the module docstring).
        self.deadline_floor: dict[str, float] = {
            c.name: (c.min_deadline_ms if c.min_deadline_ms is not None
                     else (c.deadline_ms if config.tenants else 0.0))
            for c in config.classes}
        if not self.tenants:
            self.anonymous: Tenant | None = Tenant(
                ANONYMOUS, b"", frozenset(self.classes), least_urgent, False)
        elif config.gateway.anonymous_class is not None:
            name = config.gateway.anonymous_class
            self.anonymous = Tenant(ANONYMOUS, b"", frozenset((name,)), name, True)
        else:
            self.anonymous = None

    def tenant(self, authorization: bytes | None) -> Tenant:
        if not self.tenants:
            return self.anonymous  # open gateway: keys are not checked
        if authorization is None:
            if self.anonymous is None:
                raise HTTPError(401, "missing API key: send 'Authorization: Bearer <key>'",
                                "missing_api_key", headers=[(b"www-authenticate", b"Bearer")])
            return self.anonymous
        scheme, _, key = authorization.strip().partition(b" ")
        key = key.strip()
        if scheme.lower() != b"bearer" or not key:
            raise HTTPError(401, "malformed Authorization header: expected 'Bearer <key>'",
                            "invalid_api_key", headers=[(b"www-authenticate", b"Bearer")])
        digest = hashlib.sha256(key).digest()
        found: Tenant | None = None
        for t in self.tenants:  # every tenant, no early exit: constant time in the match
            if hmac.compare_digest(digest, t.digest):
                found = t
        if found is None:
            raise HTTPError(401, "unknown API key", "invalid_api_key",
                            headers=[(b"www-authenticate", b"Bearer")])
        return found

    def classify(self, headers: Mapping[bytes, bytes], now: float) -> RequestQoS:
        tenant = self.tenant(headers.get(b"authorization"))

        raw_class = headers.get(b"x-traffic-class")
        if raw_class is None:
            name = tenant.default_class
        else:
            name = raw_class.decode("latin-1").strip()
            if name not in self.classes:
                known = ", ".join(sorted(self.classes))
                raise HTTPError(400, f"unknown traffic class {name!r} in x-traffic-class "
                                     f"(known: {known})", "unknown_traffic_class")
            if name not in tenant.classes:
                if not tenant.downgrade:
                    raise HTTPError(403, f"tenant {tenant.name!r} may not use traffic class "
                                         f"{name!r}", "class_not_allowed")
                name = tenant.default_class
        tc = self.classes[name]

        raw_deadline = headers.get(b"x-deadline-ms")
        if raw_deadline is None:
            deadline_ms = tc.deadline_ms
        else:
            try:
                deadline_ms = float(raw_deadline)
            except ValueError:
                deadline_ms = float("nan")
            if not 0 < deadline_ms <= MAX_DEADLINE_MS:  # also rejects nan and inf
                raise HTTPError(400, f"x-deadline-ms must be a number of milliseconds in "
                                     f"(0, {MAX_DEADLINE_MS:.0f}], got "
                                     f"{raw_deadline.decode('latin-1')[:40]!r}",
                                "invalid_deadline")
            floor = self.deadline_floor[name]
            if deadline_ms < floor:
                deadline_ms = floor  # never promote yourself by a tighter deadline

        prio = self.clamp(parse_priority(headers.get(b"priority"), self.base_priority[name]), tc)
        return RequestQoS(tc, now, now + deadline_ms / 1000.0, prio, tenant.name)

    @staticmethod
    def clamp(priority: Priority, traffic_class: TrafficClass) -> Priority:
        """The priority a client asked for (header or PRIORITY_UPDATE), never more urgent than
        its class allows."""
        if priority.urgency < traffic_class.urgency:
            return Priority(traffic_class.urgency, priority.incremental)
        return priority
