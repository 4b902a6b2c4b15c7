"""Backend health (sans-IO): when an instance is marked down and when it comes back.

One :class:`HealthState` per instance, fed with probe results and request failures; the I/O
shell (:mod:`quicgw.gateway.app`) probes on a timer and acts on the transitions returned.

* ``fall`` consecutive failed probes mark an instance down; ``rise`` consecutive passed probes
  bring it back up.
* a request that could not reach the instance at all (connection refused or timed out) marks it
  down at once (:meth:`HealthState.request_failed`): waiting for probes would send more requests
  to a dead port;
* a request the instance answered counts against failed probes, and brings a down instance
  back at once (:meth:`HealthState.request_answered`): a busy engine whose probe was slow is
  not down, and one that answers is up (the gateway tries down instances when none is up).

Times are passed in (``now``); the state keeps when it last changed, for ``/healthz``.
"""

from __future__ import annotations

from dataclasses import dataclass

UP, DOWN = "up", "down"


@dataclass(slots=True)
class HealthState:
    fall: int = 2
    rise: int = 1
    healthy: bool = True
    since: float = 0.0  # when the state last changed
    reason: str = ""
    _fails: int = 0
    _passes: int = 0

    def __post_init__(self) -> None:
        if self.fall < 1 or self.rise < 1:
            raise ValueError("health fall and rise must be >= 1")

    def probe(self, ok: bool, now: float, reason: str = "") -> str | None:
        """A probe result; returns UP or DOWN when the state changes, else None."""
        if ok:
            self._fails = 0
            self._passes += 1
            if not self.healthy and self._passes >= self.rise:
                return self._set(True, now, "")
        else:
            self._passes = 0
            self._fails += 1
            if self.healthy and self._fails >= self.fall:
                return self._set(False, now, reason or "health probe failed")
        return None

    def request_failed(self, now: float, reason: str) -> str | None:
        """The instance could not be reached by a request: down now."""
        self._passes = 0
        self._fails = max(self._fails, self.fall)
        if self.healthy:
            return self._set(False, now, reason)
        return None

    def request_answered(self, now: float) -> str | None:
        """The instance answered a request: whatever the probes said, it is alive."""
        self._fails = 0
        if not self.healthy:
            return self._set(True, now, "")
        return None

    def _set(self, healthy: bool, now: float, reason: str) -> str:
        self.healthy = healthy
        self.since = now
        self.reason = reason
        self._fails = self._passes = 0
        return UP if healthy else DOWN
