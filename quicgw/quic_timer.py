"""The QUIC loss/idle timer, driven from asyncio: shared by the gateway's per-connection
endpoint and the SDK's connection, which both wrap a sans-IO ``QuicConnection``.

aioquic's connection says when it next needs ``handle_timer`` (``get_timer()``, on the
``time.monotonic()`` clock both endpoints feed it); this keeps exactly one loop timer armed for
that instant. The class using it provides ``loop``, ``quic``, ``terminated`` and ``_on_timer``.
"""

from __future__ import annotations

import asyncio
from time import monotonic


class QuicTimer:
    _timer: asyncio.TimerHandle | None = None
    _timer_at: float | None = None

    def _rearm_timer(self) -> None:
        """After sending: (re)arm the loop timer for the connection's next deadline."""
        timer_at = self.quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None and not self.terminated:
            self._timer = self.loop.call_at(timer_at, self._on_timer)
        self._timer_at = timer_at

    def _timer_fired(self) -> float:
        """In ``_on_timer``: forget the fired timer; returns the time to hand ``handle_timer``
        (never earlier than the deadline, as the loop may fire a little early)."""
        now = max(self._timer_at, monotonic())
        self._timer = None
        self._timer_at = None
        return now

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
