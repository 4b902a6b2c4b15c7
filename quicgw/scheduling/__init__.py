"""Packet-level QUIC stream scheduling.

Which stream's bytes fill each QUIC packet is decided by a scheduler inside aioquic's packet
writer, O(log n) per decision in open streams (stock aioquic walks every open stream for every
packet). Schedulers (``SCHEDULERS``):

=========  ==================================================================================
rr         round-robin, one frame (at most a packet) per ready stream in turn
fcfs       the stream opened first sends until it has nothing ready
edf        earliest absolute deadline first
abs        strict class priority (``TrafficClass.priority``, 0 first), arrival order within
ml         multi-level: tier 0 (``TrafficClass.tier``) by EDF, lower tiers strictly after,
           round-robin within each tier
rfc9218    RFC 9218 urgency 0-7; within an urgency, non-incremental streams in stream-ID order,
           then incremental streams round-robin
adaptive   EDF that demotes streams which can no longer make their deadline at the measured
           send rate, and switches to priority order under overload (see ``adaptive.py``)
=========  ==================================================================================

HTTP/3 control and QPACK streams always go first. Streams without QoS are best effort: after
every classified stream for ``edf``/``abs``/``ml``/``adaptive``; RFC 9218 defaults for
``rfc9218``.

Integration (gateway and client SDK)
------------------------------------

1. Create the QUIC connection as ``ScheduledQuicConnection(configuration=config,
   scheduler=name, **QuicConnection_kwargs)`` (``scheduler_options={...}`` tunes ``adaptive``).
   On a server, aioquic's ``QuicServer`` constructs ``QuicConnection`` itself, so build it in a
   ``QuicServer`` subclass or patch the class the server uses. The clock passed to
   ``datagrams_to_send``/``receive_datagram`` (asyncio's ``loop.time()``, i.e.
   ``time.monotonic()``) must be the clock of ``RequestQoS.arrival`` and ``.deadline``.
2. Use :class:`~quicgw.scheduling.h3.PriorityH3Connection` instead of ``H3Connection`` (same
   constructor). It reports PRIORITY_UPDATE frames as
   :class:`~quicgw.scheduling.h3.PriorityUpdateReceived` events and applies them to the
   scheduler itself.
3. Gateway, when a request's headers are classified (its QoS is known), before sending the
   response::

       quic.set_stream_qos(event.stream_id, qos)   # qos.priority from the `priority` header

   On ``PriorityUpdateReceived`` nothing more is required by default: the H3 layer already
   called ``quic.set_stream_priority(ev.stream_id, ev.priority)`` (a PRIORITY_UPDATE that arrives
   before the request is buffered and overrides the header's priority when ``set_stream_qos`` is
   called; ``quic.stream_qos[ev.stream_id]`` then carries it). A gateway that vets the signal
   first (ours clamps it to the class's urgency) builds ``PriorityH3Connection(quic,
   apply_to_scheduler=False)`` and calls, for a classified stream::

       quic.set_stream_priority(ev.stream_id, vetted_priority)

   or, equivalently, ``quic.set_stream_qos(ev.stream_id, replace(qos, priority=vetted))``.
   ``ev.stream_id`` is ``None`` for the push variant (``ev.push_id``).

4. Client SDK, for each request (uploads are scheduled too)::

       stream_id = quic.get_next_available_stream_id()
       quic.set_stream_qos(stream_id, qos)          # may precede the stream's first byte
       h3.send_headers(stream_id, headers + [(b"priority", qos.priority.header_value().encode())])
       ...
       h3.send_priority_update(stream_id, Priority(urgency=0))   # reprioritise later

``quic.stream_qos`` holds each open stream's current QoS; entries go when the stream is
discarded.
"""

from __future__ import annotations

from quicgw.scheduling.base import StreamScheduler
from quicgw.scheduling.connection import (
    SCHEDULER_CLASSES,
    SCHEDULERS,
    ScheduledQuicConnection,
    make_scheduler,
)

__all__ = [
    "SCHEDULERS",
    "SCHEDULER_CLASSES",
    "ScheduledQuicConnection",
    "StreamScheduler",
    "make_scheduler",
]
