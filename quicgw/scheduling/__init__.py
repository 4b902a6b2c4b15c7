"""Packet-level QUIC stream scheduling.

Public API used by the gateway's HTTP/3 server and by the client SDK:

* ``SCHEDULERS``: the scheduler names.
* ``ScheduledQuicConnection(configuration=..., scheduler="rr", **QuicConnection kwargs)``: a
  ``QuicConnection`` whose stream scheduler decides which stream's bytes fill each packet.
* ``connection.set_stream_qos(stream_id, qos: RequestQoS)``: tell the scheduler a stream's class,
  deadline and RFC 9218 priority (call it when the request's headers are classified, and again
  when a PRIORITY_UPDATE arrives).

NOTE (in progress, issue 3): the connection below accepts and records the QoS but still sends
with aioquic's own round-robin; the scheduler work replaces it.
"""

from __future__ import annotations

from aioquic.quic.connection import QuicConnection

from quicgw.core.qos import RequestQoS

SCHEDULERS = ("rr", "fcfs", "edf", "abs", "ml", "rfc9218", "adaptive")


class ScheduledQuicConnection(QuicConnection):
    def __init__(self, *, scheduler: str = "rr", **kwargs) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r} (choose from {', '.join(SCHEDULERS)})")
        super().__init__(**kwargs)
        self.scheduler_name = scheduler
        self.stream_qos: dict[int, RequestQoS] = {}

    def set_stream_qos(self, stream_id: int, qos: RequestQoS) -> None:
        self.stream_qos[stream_id] = qos
