"""``ScheduledQuicConnection``: aioquic's QuicConnection with a stream scheduler in the packet builder.

Stock aioquic (1.7.x) fills each 1-RTT packet by walking every open stream
(``_streams_queue``) and checking every stream for flow-control updates
(``for stream in self._streams.values(): _write_stream_limits``): O(n) per packet in open streams,
round-robin at packet granularity, no priorities. This subclass keeps aioquic's frame order and
protocol logic and replaces the per-packet walks with state kept up to date by events:

* **scheduler**: ready streams live in a :class:`~quicgw.scheduling.base.StreamScheduler`;
  each STREAM frame goes to the stream it picks. Streams become ready when the application
  writes (``send_stream_data``), when lost data is rescheduled (the STREAM frame's delivery
  handler is wrapped), when flow-control credit arrives (MAX_DATA, MAX_STREAM_DATA, transport
  parameters) and when MAX_STREAMS unblocks a stream.
* **parking**: a stream held by flow control is taken out of the scheduler and parked, by
  stream-level or connection-level credit, until the matching frame arrives; it is never
  rescanned.
* **dirty sets** replace the other walks: streams that received data or lost a MAX_STREAM_DATA
  (the only events that can require a MAX_STREAM_DATA frame); streams that may have finished
  (data received, or our data/reset acknowledged); streams with a STOP_SENDING or RESET_STREAM
  to send.

Subclasses (the gateway's metered connection) may extend ``_push_stream_frame`` (every STREAM
frame written) and ``_on_stream_data_delivery`` (every STREAM frame acknowledged or lost); their
signatures are kept stable.

The result is O(log n) per packet in open streams. ``_write_application`` is re-implemented
(adapted from aioquic 1.7.2, BSD-3-Clause) because it is one monolithic method; the parts that
are not about streams are unchanged in content and order. The subclass depends on private
aioquic attributes, so the supported aioquic range is checked at import.
"""

from __future__ import annotations

from dataclasses import replace

import aioquic
from aioquic import tls
from aioquic.buffer import Buffer, size_uint_var
from aioquic.quic.connection import (
    RESET_STREAM_FRAME_CAPACITY,
    STOP_SENDING_FRAME_CAPACITY,
    QuicConnection,
    QuicNetworkPath,
    QuicReceiveContext,
    stream_is_client_initiated,
    stream_is_unidirectional,
)
from aioquic.quic.packet import QuicFrameType, QuicPacketType, QuicStreamFrame
from aioquic.quic.packet_builder import (
    QuicDeliveryState,
    QuicPacketBuilder,
    QuicPacketBuilderStop,
)
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream

from quicgw.core.qos import Priority, RequestQoS
from quicgw.scheduling.adaptive import AdaptiveScheduler
from quicgw.scheduling.base import StreamScheduler
from quicgw.scheduling.policies import (
    AbsolutePriorityScheduler,
    EDFScheduler,
    FCFSScheduler,
    MultiLevelScheduler,
    RFC9218Scheduler,
    RoundRobinScheduler,
)

SUPPORTED_AIOQUIC = ((1, 7), (1, 8))  # >= 1.7, < 1.8
# A STREAM frame header is at least 4 bytes (type, 1-byte stream ID, 2-byte length); with no
# room for one data byte beyond it, no stream can use the packet.
_SMALLEST_STREAM_FRAME = 4


def _check_aioquic_version(version: str) -> None:
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        major_minor = (-1, -1)
    low, high = SUPPORTED_AIOQUIC
    if not low <= major_minor < high:
        raise ImportError(
            f"quicgw.scheduling needs aioquic >=1.7,<1.8 (it replaces QuicConnection's packet "
            f"writer and relies on its internals); aioquic {version} is installed. Install a "
            f"supported version: pip install 'aioquic>=1.7,<1.8'"
        )


_check_aioquic_version(aioquic.__version__)

SCHEDULER_CLASSES: dict[str, type[StreamScheduler]] = {
    cls.name: cls
    for cls in (
        RoundRobinScheduler,
        FCFSScheduler,
        EDFScheduler,
        AbsolutePriorityScheduler,
        MultiLevelScheduler,
        RFC9218Scheduler,
        AdaptiveScheduler,
    )
}
SCHEDULERS: tuple[str, ...] = ("rr", "fcfs", "edf", "abs", "ml", "rfc9218", "adaptive")
assert set(SCHEDULERS) == set(SCHEDULER_CLASSES)


def make_scheduler(name: str, **options) -> StreamScheduler:
    """A new scheduler by name (``options`` go to its constructor, e.g. adaptive's thresholds)."""
    try:
        cls = SCHEDULER_CLASSES[name]
    except KeyError:
        raise ValueError(
            f"unknown scheduler {name!r} (choose from {', '.join(SCHEDULERS)})"
        ) from None
    return cls(**options)


class _StreamOpenedHook:
    """Stands in for aioquic's ``_streams_queue`` list: the two places that create a stream
    append it there, which is exactly the hook needed to register it with the scheduler."""

    __slots__ = ("_on_open",)

    def __init__(self, on_open) -> None:
        self._on_open = on_open

    def append(self, stream: QuicStream) -> None:
        self._on_open(stream)

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


class ScheduledQuicConnection(QuicConnection):
    """A QuicConnection whose stream scheduler decides which stream's bytes fill each packet.

    ``scheduler`` is a name from :data:`SCHEDULERS` or a :class:`StreamScheduler` instance;
    ``scheduler_options`` go to the named scheduler's constructor. ``max_streams_bidi`` is how
    many concurrent bidirectional streams the peer may open (aioquic hard-codes 128 and has no
    setting; the limit is raised by one per closed stream as aioquic does, and a peer that opens
    more is closed with STREAM_LIMIT_ERROR). All other keyword arguments are QuicConnection's.
    """

    def __init__(
        self,
        *,
        scheduler: str | StreamScheduler = "rr",
        scheduler_options: dict | None = None,
        max_streams_bidi: int | None = None,
        **kwargs,
    ) -> None:
        if isinstance(scheduler, StreamScheduler):
            self._scheduler = scheduler
        else:
            self._scheduler = make_scheduler(scheduler, **(scheduler_options or {}))
        if max_streams_bidi is not None and max_streams_bidi < 1:
            raise ValueError(f"max_streams_bidi must be >= 1, got {max_streams_bidi}")
        super().__init__(**kwargs)
        if max_streams_bidi is not None:
            # Before the handshake sends the transport parameters (aioquic 1.7 internals).
            limit = self._local_max_streams_bidi
            limit.value = limit.sent = max_streams_bidi
        self.scheduler_name = self._scheduler.name
        # A congestion controller with a rate model (quicgw.congestion's bbr) paces at its own
        # rate: aioquic's pacer would run at cwnd / smoothed RTT. It also wants to know when
        # the sender runs out of data (app-limited rate samples say nothing about the path).
        cc = self._loss._cc
        make_pacer = getattr(cc, "make_pacer", None)
        if make_pacer is not None:
            self._loss._pacer = make_pacer()
        self._on_app_limited = getattr(cc, "on_app_limited", None)
        # QoS by stream ID; may be set before the stream exists (applied when it opens).
        self.stream_qos: dict[int, RequestQoS] = {}
        self._priority_overrides: dict[int, Priority] = {}
        self._control_overrides: dict[int, bool] = {}
        self._streams_queue = _StreamOpenedHook(self._on_stream_opened)  # type: ignore[assignment]
        # Event-driven replacements for aioquic's per-packet walks (dicts: deterministic order).
        self._limits_dirty: dict[int, QuicStream] = {}
        self._maybe_finished: dict[int, QuicStream] = {}
        self._frames_pending: dict[int, QuicStream] = {}
        self._parked_stream_credit: dict[int, QuicStream] = {}
        self._parked_connection_credit: dict[int, QuicStream] = {}

    # -- public API ---------------------------------------------------------------------------

    @property
    def scheduler(self) -> StreamScheduler:
        return self._scheduler

    def set_stream_qos(self, stream_id: int, qos: RequestQoS) -> None:
        """Tell the scheduler a stream's class, deadline and RFC 9218 priority.

        Call it when the request is classified and whenever its QoS changes. It may be called
        before the stream exists (the SDK does so for a request it is about to send). A
        PRIORITY_UPDATE received for the stream (:meth:`set_stream_priority`) overrides
        ``qos.priority``, as RFC 9218 section 7 says the most recent signal wins.
        """
        if self._stream_is_discarded(stream_id):
            return
        override = self._priority_overrides.get(stream_id)
        if override is not None and override != qos.priority:
            qos = replace(qos, priority=override)
        self.stream_qos[stream_id] = qos
        if stream_id in self._scheduler:
            if self._scheduler.entry(stream_id).control and stream_id not in self._control_overrides:
                self._scheduler.set_control(stream_id, False)
            self._scheduler.update(stream_id, qos)

    def set_stream_priority(self, stream_id: int, priority: Priority) -> None:
        """Apply RFC 9218 parameters from a PRIORITY_UPDATE (or any later signal) to a stream,
        open or not yet open; they override the priority in the stream's QoS."""
        if self._stream_is_discarded(stream_id):
            return
        self._priority_overrides[stream_id] = priority
        qos = self.stream_qos.get(stream_id)
        if qos is not None and qos.priority != priority:
            self.stream_qos[stream_id] = replace(qos, priority=priority)
            if stream_id in self._scheduler:
                self._scheduler.update(stream_id, self.stream_qos[stream_id])
        if stream_id in self._scheduler:
            self._scheduler.set_priority(stream_id, priority)

    def set_stream_control(self, stream_id: int, control: bool = True) -> None:
        """Mark a stream as a control stream (sent before every other stream) or not.

        Without a call, a locally opened unidirectional stream with no QoS is a control stream
        (HTTP/3 control, QPACK encoder and decoder streams); everything else is not.
        """
        self._control_overrides[stream_id] = control
        if stream_id in self._scheduler:
            self._scheduler.set_control(stream_id, control)

    # -- stream lifecycle hooks ---------------------------------------------------------------

    def _on_stream_opened(self, stream: QuicStream) -> None:
        if stream.sender.is_finished:
            return  # receive-only (the peer's unidirectional stream): nothing to schedule
        stream_id = stream.stream_id
        qos = self.stream_qos.get(stream_id)
        control = self._control_overrides.get(
            stream_id, qos is None and stream_is_unidirectional(stream_id)
        )
        self._scheduler.add(stream_id, qos, control=control)
        priority = self._priority_overrides.get(stream_id)
        if priority is not None:
            self._scheduler.set_priority(stream_id, priority)

    def _get_or_create_stream(self, frame_type: int, stream_id: int) -> QuicStream:
        # Every received frame about a stream passes here: its receive side may now need a
        # MAX_STREAM_DATA, or may have finished.
        stream = super()._get_or_create_stream(frame_type, stream_id)
        self._limits_dirty[stream_id] = stream
        self._maybe_finished[stream_id] = stream
        return stream

    def _discard_finished_streams(self) -> bool:
        candidates = self._maybe_finished
        if not candidates:
            return False
        self._maybe_finished = {}
        discarded = False
        for stream_id, stream in candidates.items():
            if not stream.is_finished or self._streams.get(stream_id) is not stream:
                continue
            self._logger.debug("Stream %d discarded", stream_id)
            del self._streams[stream_id]
            if stream_is_client_initiated(stream_id) != self._is_client:
                # Let the peer open a new stream for each one that closes (RFC 9000 section 4.6).
                self._stream_limit(stream_id).value += 1
            self._scheduler.remove(stream_id)
            for table in (
                self._limits_dirty, self._frames_pending, self._parked_stream_credit,
                self._parked_connection_credit, self.stream_qos, self._priority_overrides,
                self._control_overrides,
            ):
                table.pop(stream_id, None)
            discarded = True
        return discarded

    # -- readiness hooks ----------------------------------------------------------------------

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        super().send_stream_data(stream_id, data, end_stream)
        if data:
            self._scheduler.add_backlog(stream_id, len(data))
        stream = self._streams[stream_id]
        if not (
            stream.is_blocked
            or stream_id in self._parked_stream_credit
            or stream_id in self._parked_connection_credit
        ):
            self._scheduler.mark_ready(stream_id)

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        super().reset_stream(stream_id, error_code)
        self._note_reset(stream_id)

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        super().stop_stream(stream_id, error_code)
        self._frames_pending[stream_id] = self._streams[stream_id]

    def _note_reset(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and stream.sender.reset_pending:
            self._frames_pending[stream_id] = stream
            # Its data will never be sent: stop offering it.
            self._parked_stream_credit.pop(stream_id, None)
            self._parked_connection_credit.pop(stream_id, None)
            if stream_id in self._scheduler:
                self._scheduler.mark_blocked(stream_id)

    def _wake(self, stream: QuicStream) -> None:
        stream_id = stream.stream_id
        self._parked_stream_credit.pop(stream_id, None)
        self._parked_connection_credit.pop(stream_id, None)
        if stream_id in self._scheduler and not stream.sender.buffer_is_empty:
            self._scheduler.mark_ready(stream_id)

    def _wake_all(self, parked: dict[int, QuicStream]) -> None:
        # Amortised: a stream is parked only after the scheduler picked it.
        for stream in list(parked.values()):
            self._wake(stream)

    def _handle_max_data_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        before = self._remote_max_data
        super()._handle_max_data_frame(context, frame_type, buf)
        if self._remote_max_data > before:
            self._wake_all(self._parked_connection_credit)

    def _handle_max_stream_data_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        stream_id = _peek_uint_var(buf)
        super()._handle_max_stream_data_frame(context, frame_type, buf)
        stream = self._parked_stream_credit.get(stream_id)
        if stream is not None and stream.max_stream_data_remote > stream.sender.next_offset:
            self._wake(stream)

    def _handle_stop_sending_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        stream_id = _peek_uint_var(buf)
        super()._handle_stop_sending_frame(context, frame_type, buf)
        self._note_reset(stream_id)

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        super()._parse_transport_parameters(data, from_session_ticket)
        # The peer's initial limits arrive here (or from a session ticket for 0-RTT).
        self._wake_all(self._parked_connection_credit)
        self._wake_all(self._parked_stream_credit)

    def _unblock_streams(self, is_unidirectional: bool) -> None:
        # Same as aioquic's, plus waking the streams it unblocks.
        if is_unidirectional:
            max_stream_data_remote = self._remote_max_stream_data_uni
            max_streams = self._remote_max_streams_uni
            streams_blocked = self._streams_blocked_uni
        else:
            max_stream_data_remote = self._remote_max_stream_data_bidi_remote
            max_streams = self._remote_max_streams_bidi
            streams_blocked = self._streams_blocked_bidi

        while streams_blocked and streams_blocked[0].stream_id // 4 < max_streams:
            stream = streams_blocked.pop(0)
            stream.is_blocked = False
            stream.max_stream_data_remote = max_stream_data_remote
            self._wake(stream)

        if not self._streams_blocked_bidi and not self._streams_blocked_uni:
            self._streams_blocked_pending = False

    # -- delivery handlers (ACK / loss of our frames) -------------------------------------------

    def _on_stream_data_delivery(
        self, delivery: QuicDeliveryState, stream: QuicStream, start: int, stop: int, fin: bool
    ) -> None:
        stream.sender.on_data_delivery(delivery, start, stop, fin)
        if delivery == QuicDeliveryState.ACKED:
            if stream.sender.is_finished:
                self._maybe_finished[stream.stream_id] = stream
        elif not stream.sender.buffer_is_empty and stream.stream_id in self._scheduler:
            # Lost: the data is pending again and goes back through the scheduler, so
            # retransmissions obey the same order as first transmissions. Retransmitted bytes
            # lie below the highest offset sent, so flow control cannot hold them.
            if stop > start:
                self._scheduler.add_backlog(stream.stream_id, stop - start)
            self._wake(stream)

    def _on_reset_delivery(self, delivery: QuicDeliveryState, stream: QuicStream) -> None:
        stream.sender.on_reset_delivery(delivery)
        if delivery == QuicDeliveryState.ACKED:
            self._maybe_finished[stream.stream_id] = stream
        else:
            self._frames_pending[stream.stream_id] = stream

    def _on_stop_sending_delivery(self, delivery: QuicDeliveryState, stream: QuicStream) -> None:
        stream.receiver.on_stop_sending_delivery(delivery)
        if delivery != QuicDeliveryState.ACKED:
            self._frames_pending[stream.stream_id] = stream

    def _on_max_stream_data_delivery(
        self, delivery: QuicDeliveryState, stream: QuicStream
    ) -> None:
        super()._on_max_stream_data_delivery(delivery, stream)
        if delivery != QuicDeliveryState.ACKED:
            self._limits_dirty[stream.stream_id] = stream

    # -- the packet writer ----------------------------------------------------------------------

    def _write_application(
        self, builder: QuicPacketBuilder, network_path: QuicNetworkPath, now: float
    ) -> None:
        crypto_stream: QuicStream | None = None
        if self._cryptos[tls.Epoch.ONE_RTT].send.is_valid():
            crypto = self._cryptos[tls.Epoch.ONE_RTT]
            crypto_stream = self._crypto_streams[tls.Epoch.ONE_RTT]
            packet_type = QuicPacketType.ONE_RTT
        elif self._cryptos[tls.Epoch.ZERO_RTT].send.is_valid():
            crypto = self._cryptos[tls.Epoch.ZERO_RTT]
            packet_type = QuicPacketType.ZERO_RTT
        else:
            return
        space = self._spaces[tls.Epoch.ONE_RTT]

        if self._scheduler.wants_rate_hint and self._loss._rtt_smoothed > 0:
            # The controller's own estimate where it has one (BBR's cwnd is twice the BDP, so
            # cwnd / RTT would overstate the rate); else cwnd / smoothed RTT.
            self._scheduler.observe_rate(
                getattr(self._loss._cc, "send_rate_estimate", 0.0)
                or self._loss.congestion_window / self._loss._rtt_smoothed
            )

        while True:
            # Apply pacing. An ACK that is due goes out anyway, but alone: aioquic fills such a
            # packet with data too, which on a connection carrying data both ways (requests up,
            # responses down) lets every ACK bypass the pacer, so the window alone limits the
            # sender and it queues up to a window's worth at the bottleneck.
            ack_only = False
            if space.ack_at is None or space.ack_at >= now:
                self._pacing_at = self._loss._pacer.next_send_time(now=now)
                if self._pacing_at is not None:
                    break
            else:
                self._pacing_at = self._loss._pacer.next_send_time(now=now)
                ack_only = self._pacing_at is not None
            builder.start_packet(packet_type, crypto)

            # ACK, which a server sends for 0-RTT packets before the handshake completes (RFC
            # 9000 section 13.2.1), but not in 0-RTT packets.
            if (
                packet_type == QuicPacketType.ONE_RTT
                and space.ack_at is not None
                and space.ack_at <= now
            ):
                self._write_ack_frame(builder=builder, space=space, now=now)
            if ack_only:
                break

            if self._handshake_complete:
                self._write_connection_frames(builder, network_path, space, now)

            # MAX_STREAM_DATA, only for streams whose receive state changed (aioquic: all).
            if self._limits_dirty:
                self._write_dirty_stream_limits(builder, space)

            # PING (user-request)
            if self._ping_pending:
                self._write_ping_frame(builder, self._ping_pending)
                self._ping_pending.clear()

            # PING (probe)
            if self._probe_pending:
                self._write_ping_frame(builder, comment="probe")
                self._probe_pending = False

            # CRYPTO
            if crypto_stream is not None and not crypto_stream.sender.buffer_is_empty:
                self._write_crypto_frame(builder=builder, space=space, stream=crypto_stream)

            # DATAGRAM
            while self._datagrams_pending:
                try:
                    self._write_datagram_frame(
                        builder=builder,
                        data=self._datagrams_pending[0],
                        frame_type=QuicFrameType.DATAGRAM_WITH_LENGTH,
                    )
                    self._datagrams_pending.popleft()
                except QuicPacketBuilderStop:
                    break

            discarded = self._discard_finished_streams()

            # STOP_SENDING and RESET_STREAM
            if self._frames_pending:
                self._write_stream_control_frames(builder)

            # STREAM, in the scheduler's order
            self._write_scheduled_streams(builder, now)

            if builder.packet_is_empty:
                # Discarded streams may let the peer open new ones, which the next packet
                # announces with MAX_STREAMS.
                if not discarded:
                    if self._on_app_limited is not None and not self._scheduler.ready_count:
                        self._on_app_limited()  # out of data, not held by cwnd or pacing
                    break
            else:
                self._loss._pacer.update_after_send(now=now)

    def _write_connection_frames(
        self,
        builder: QuicPacketBuilder,
        network_path: QuicNetworkPath,
        space: QuicPacketSpace,
        now: float,
    ) -> None:
        """Connection-level frames of a 1-RTT packet, as aioquic writes them."""
        # PATH_CHALLENGE, while the active path is not validated, which only happens on a
        # server whose client migrated (RFC 9000 section 9.3).
        if not (network_path.is_validated or network_path.local_challenge_sent):
            self._write_path_challenge_frame(builder=builder, network_path=network_path)

            # RFC 9000 section 8.2.4 recommends abandoning path validation after three times
            # the larger of the current PTO and the PTO of a new path, which uses the initial
            # RTT.
            if network_path.validation_deadline is None:
                network_path.validation_deadline = now + 3 * max(
                    self._loss.get_probe_timeout(),
                    2 * self._configuration.initial_rtt,
                )

        # HANDSHAKE_DONE
        if self._handshake_done_pending:
            self._write_handshake_done_frame(builder=builder)
            self._handshake_done_pending = False

        # PATH RESPONSE
        while len(network_path.remote_challenges) > 0:
            self._write_path_response_frame(
                builder=builder, challenge=network_path.remote_challenges[0]
            )
            network_path.remote_challenges.popleft()

        # NEW_CONNECTION_ID
        for connection_id in self._host_cids:
            if not connection_id.was_sent:
                self._write_new_connection_id_frame(builder=builder, connection_id=connection_id)

        # RETIRE_CONNECTION_ID
        for sequence_number in self._retire_connection_ids[:]:
            self._write_retire_connection_id_frame(
                builder=builder, sequence_number=sequence_number
            )
            self._retire_connection_ids.pop(0)

        # STREAMS_BLOCKED
        if self._streams_blocked_pending:
            if self._streams_blocked_bidi:
                self._write_streams_blocked_frame(
                    builder=builder,
                    frame_type=QuicFrameType.STREAMS_BLOCKED_BIDI,
                    limit=self._remote_max_streams_bidi,
                )
            if self._streams_blocked_uni:
                self._write_streams_blocked_frame(
                    builder=builder,
                    frame_type=QuicFrameType.STREAMS_BLOCKED_UNI,
                    limit=self._remote_max_streams_uni,
                )
            self._streams_blocked_pending = False

        # MAX_DATA and MAX_STREAMS
        self._write_connection_limits(builder=builder, space=space)

    def _write_dirty_stream_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        dirty = self._limits_dirty
        for stream_id, stream in list(dirty.items()):
            # Raises QuicPacketBuilderStop when the packet is full: the rest stay dirty.
            self._write_stream_limits(builder=builder, space=space, stream=stream)
            del dirty[stream_id]

    def _write_stream_control_frames(self, builder: QuicPacketBuilder) -> None:
        pending = self._frames_pending
        for stream_id, stream in list(pending.items()):
            if stream.receiver.stop_pending:
                self._write_stop_sending_frame(builder=builder, stream=stream)
            if stream.sender.reset_pending:
                self._write_reset_stream_frame(builder=builder, stream=stream)
            del pending[stream_id]

    def _write_scheduled_streams(self, builder: QuicPacketBuilder, now: float) -> None:
        scheduler = self._scheduler
        streams = self._streams
        while True:
            stream_id = scheduler.next(now)
            if stream_id is None:
                return
            stream = streams[stream_id]
            sender = stream.sender
            if stream.is_blocked or sender.buffer_is_empty:
                # Held by the peer's stream limit (woken by MAX_STREAMS), or nothing to send.
                scheduler.mark_blocked(stream_id)
                continue

            next_offset = sender.next_offset
            frame_overhead = (
                3 + size_uint_var(stream_id) + (size_uint_var(next_offset) if next_offset else 0)
            )
            max_size = builder.remaining_flight_space - frame_overhead
            if max_size <= 0:
                return  # the packet is full; the stream stays first in line for the next one

            stream_limit = stream.max_stream_data_remote
            connection_limit = (
                sender.highest_offset + self._remote_max_data - self._remote_max_data_used
            )
            previous_highest = sender.highest_offset
            frame = sender.get_frame(
                max_size, stream_limit if stream_limit < connection_limit else connection_limit
            )
            if frame is None:
                scheduler.mark_blocked(stream_id)
                if not sender.buffer_is_empty:
                    # Flow control holds the stream: park it until credit arrives.
                    if next_offset >= stream_limit:
                        self._parked_stream_credit[stream_id] = stream
                    else:
                        self._parked_connection_credit[stream_id] = stream
                continue

            self._push_stream_frame(builder, stream, frame)
            self._remote_max_data_used += sender.highest_offset - previous_highest
            scheduler.requeue(stream_id, len(frame.data), now)
            if builder.remaining_flight_space <= _SMALLEST_STREAM_FRAME:
                return  # full: skip asking the scheduler for a stream that cannot fit

    def _push_stream_frame(
        self, builder: QuicPacketBuilder, stream: QuicStream, frame: QuicStreamFrame
    ) -> None:
        stream_id = stream.stream_id
        frame_type = QuicFrameType.STREAM_BASE | 2  # length
        if frame.offset:
            frame_type |= 4
        if frame.fin:
            frame_type |= 1
        # The frame fits: get_frame was given the space left after this header, and the
        # packet's buffer space is never smaller than its flight space, so this cannot raise.
        buf = builder.start_frame(
            frame_type,
            capacity=3 + size_uint_var(stream_id) + (size_uint_var(frame.offset) if frame.offset else 0),
            handler=self._on_stream_data_delivery,
            handler_args=(stream, frame.offset, frame.offset + len(frame.data), frame.fin),
        )
        buf.push_uint_var(stream_id)
        if frame.offset:
            buf.push_uint_var(frame.offset)
        buf.push_uint16(len(frame.data) | 0x4000)
        buf.push_bytes(frame.data)

        if self._quic_logger is not None:
            builder.quic_logger_frames.append(
                self._quic_logger.encode_stream_frame(frame, stream_id=stream_id)
            )

    def _write_reset_stream_frame(self, builder: QuicPacketBuilder, stream: QuicStream) -> None:
        buf = builder.start_frame(
            frame_type=QuicFrameType.RESET_STREAM,
            capacity=RESET_STREAM_FRAME_CAPACITY,
            handler=self._on_reset_delivery,
            handler_args=(stream,),
        )
        frame = stream.sender.get_reset_frame()
        buf.push_uint_var(frame.stream_id)
        buf.push_uint_var(frame.error_code)
        buf.push_uint_var(frame.final_size)

        if self._quic_logger is not None:
            builder.quic_logger_frames.append(
                self._quic_logger.encode_reset_stream_frame(
                    error_code=frame.error_code,
                    final_size=frame.final_size,
                    stream_id=frame.stream_id,
                )
            )

    def _write_stop_sending_frame(self, builder: QuicPacketBuilder, stream: QuicStream) -> None:
        buf = builder.start_frame(
            frame_type=QuicFrameType.STOP_SENDING,
            capacity=STOP_SENDING_FRAME_CAPACITY,
            handler=self._on_stop_sending_delivery,
            handler_args=(stream,),
        )
        frame = stream.receiver.get_stop_frame()
        buf.push_uint_var(frame.stream_id)
        buf.push_uint_var(frame.error_code)

        if self._quic_logger is not None:
            builder.quic_logger_frames.append(
                self._quic_logger.encode_stop_sending_frame(
                    error_code=frame.error_code, stream_id=frame.stream_id
                )
            )


def _peek_uint_var(buf: Buffer) -> int:
    """Read the variable-length integer at the buffer's position without consuming it."""
    position = buf.tell()
    value = buf.pull_uint_var()
    buf.seek(position)
    return value
