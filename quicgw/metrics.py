"""The gateway's Prometheus metrics: every metric is defined once, in :data:`METRICS`.

One :class:`GatewayMetrics` per running gateway owns its own ``CollectorRegistry`` (two gateways
in one process, as in the tests, never mix their numbers) and exposes small hooks the gateway
calls at the points where things happen:

* ``http_request(protocol, endpoint)`` when a request's headers arrive (each transport);
* ``rejected(code)`` when classification refuses a request (401/403/400 before any body);
* ``observe(proxy, exchange, body, out)`` around the proxying of one OpenAI request: it wraps
  the transport's responder in a :class:`RequestMeter` that sees the status, the first body
  bytes (TTFT) and the end (end-to-end latency, deadline met or missed, failure reason);
* ``routed(model, index)`` and ``admitted(index)`` inside the proxying, after the router's pick
  and after admission to the instance. They find the request's meter through a context
  variable, so the application core needs no extra arguments threaded through it.

Gauges of live state (queue depth, in-flight requests, backend health, open QUIC connections)
cost nothing per request: a collector reads them from the admission queues' shared
:class:`~quicgw.core.routing.InstanceLoad` objects at scrape time. QUIC counters (STREAM bytes
the scheduler put into packets per class, packets sent and declared lost) are plain integers on
each connection (:class:`MeteredQuicConnection`) summed at scrape time, so the packet writer
never takes a metrics lock.

Hot path: every (class, instance) pair's label children are bound once at start-up
(:class:`_Cell`); a request costs one small meter object and a few lock-protected increments.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aioquic.quic.connection import QuicConnectionState
from aioquic.quic.packet_builder import QuicDeliveryState
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from quicgw.core.routing import InstanceLoad
from quicgw.scheduling import ScheduledQuicConnection

# ``*_created`` series double the exposition and no dashboard of ours reads them.
disable_created_metrics()

CONTENT_TYPE = CONTENT_TYPE_LATEST
NONE = "none"  # instance label of a request that failed before reaching an instance
UNCLASSIFIED = "unclassified"  # class label of QUIC streams without a traffic class

# Buckets around the poster's deadlines (1.8 s and 2.3 s): attainment is read off them.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
                5.0, 10.0)
DURATION_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.25, 1.5, 1.8, 2.0, 2.3, 2.5, 3.0,
                    4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

# Why a request failed (the ``reason`` label); a closed set so the label cannot explode.
REASONS = ("rejected", "no_instance", "upstream_error", "upstream_timeout", "unreachable",
           "expired", "cancelled", "internal")
# Failures that are the client's doing: they say nothing about meeting deadlines.
_CLIENT_REASONS = frozenset({"rejected"})


class HasCapacity(Protocol):
    capacity: int


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its exposed name (units in the name, ``_total`` for counters), type, labels,
    help text; ``live`` ones are computed at scrape time from the gateway's state."""

    name: str
    kind: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str
    buckets: tuple[float, ...] = ()
    live: bool = False

    @property
    def family(self) -> str:
        """The name prometheus-client wants (counters without ``_total``)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("quicgw_http_requests_total", "counter", ("protocol", "endpoint"),
               "HTTP requests received, by protocol (h3, h2, http/1.1) and endpoint"),
    MetricSpec("quicgw_requests_rejected_total", "counter", ("code",),
               "requests refused before routing: authentication, class or header errors "
               "(the error code of the response)"),
    MetricSpec("quicgw_requests_started_total", "counter", ("class", "instance"),
               "inference requests admitted to a backend instance (retries on another "
               "instance count again)"),
    MetricSpec("quicgw_requests_finished_total", "counter", ("class", "instance"),
               "inference requests whose complete response was relayed"),
    MetricSpec("quicgw_requests_failed_total", "counter", ("class", "instance", "reason"),
               "inference requests that ended without a complete response; instance is "
               "'none' before routing; reason: " + ", ".join(REASONS)),
    MetricSpec("quicgw_deadline_met_total", "counter", ("class", "instance"),
               "requests that finished by their deadline"),
    MetricSpec("quicgw_deadline_missed_total", "counter", ("class", "instance"),
               "requests that finished late or failed for a server-side reason (client "
               "errors do not count; cancellations count once past the deadline)"),
    MetricSpec("quicgw_ttft_seconds", "histogram", ("class", "instance"),
               "time to first token: request headers in to the first streamed body bytes "
               "out (streamed requests)", TTFT_BUCKETS),
    MetricSpec("quicgw_request_duration_seconds", "histogram", ("class", "instance"),
               "end-to-end latency of finished requests: request headers in to the last "
               "response byte out", DURATION_BUCKETS),
    MetricSpec("quicgw_queue_wait_seconds", "histogram", ("class", "instance"),
               "time a request waited in the instance's admission queue", QUEUE_BUCKETS),
    MetricSpec("quicgw_router_decisions_total", "counter", ("router", "target"),
               "routing decisions by router and chosen instance"),
    MetricSpec("quicgw_queue_depth", "gauge", ("instance",),
               "requests waiting for admission to the instance", live=True),
    MetricSpec("quicgw_in_flight_requests", "gauge", ("instance",),
               "requests admitted to the instance and not finished", live=True),
    MetricSpec("quicgw_instance_capacity_requests", "gauge", ("instance",),
               "admission cap of the instance (its maximum batch)", live=True),
    MetricSpec("quicgw_backend_up", "gauge", ("instance",),
               "1 if the instance passed its last health check, else 0", live=True),
    MetricSpec("quicgw_gateway_info", "gauge", ("scheduler", "router"),
               "always 1; labels name the stream scheduler and router in use", live=True),
    MetricSpec("quicgw_scheduler_sent_bytes_total", "counter", ("class", "scheduler"),
               "STREAM frame payload bytes the stream scheduler put into QUIC packets "
               "(retransmissions included), by traffic class", live=True),
    MetricSpec("quicgw_quic_connections_total", "counter", (),
               "QUIC connections accepted", live=True),
    MetricSpec("quicgw_quic_connections", "gauge", (),
               "QUIC connections open now", live=True),
    MetricSpec("quicgw_quic_packets_sent_total", "counter", (),
               "QUIC packets sent", live=True),
    MetricSpec("quicgw_quic_packets_lost_total", "counter", (),
               "QUIC packets declared lost by loss detection", live=True),
    MetricSpec("quicgw_quic_lost_bytes_total", "counter", ("class",),
               "STREAM payload bytes in packets declared lost, by traffic class", live=True),
)
SPECS: dict[str, MetricSpec] = {m.name: m for m in METRICS}

_CURRENT: contextvars.ContextVar[RequestMeter | None] = contextvars.ContextVar(
    "quicgw_request_meter", default=None)


def _reason_for_status(status: int) -> str:
    if status == 503:
        return "no_instance"
    if status == 504:
        return "upstream_timeout"
    if status >= 500:
        return "upstream_error"
    return "rejected"


class _Cell:
    """The label children of one (class, instance) pair, bound once."""

    __slots__ = ("labels", "started", "finished", "met", "missed", "ttft", "duration",
                 "queue_wait", "_failed", "_metrics")

    def __init__(self, m: GatewayMetrics, class_name: str, instance: str) -> None:
        self.labels = (class_name, instance)
        self.missed = m.deadline_missed.labels(class_name, instance)
        if instance == NONE:
            # Requests that never reached an instance only fail (and may miss their deadline):
            # no zero-valued latency series for them.
            self.started = self.finished = self.met = None
            self.ttft = self.duration = self.queue_wait = None
        else:
            self.started = m.requests_started.labels(class_name, instance)
            self.finished = m.requests_finished.labels(class_name, instance)
            self.met = m.deadline_met.labels(class_name, instance)
            self.ttft = m.ttft.labels(class_name, instance)
            self.duration = m.duration.labels(class_name, instance)
            self.queue_wait = m.queue_wait.labels(class_name, instance)
        self._failed: dict[str, Any] = {}
        self._metrics = m

    def failed(self, reason: str):
        child = self._failed.get(reason)
        if child is None:  # failures are rare: bind on first use
            child = self._failed[reason] = self._metrics.requests_failed.labels(
                *self.labels, reason)
        return child


class RequestMeter:
    """One proxied request's measurements; also the :class:`Responder` the core answers
    through, passing everything on to the transport's own responder."""

    __slots__ = ("_m", "_out", "_class", "_cell", "arrival", "deadline", "routed_at",
                 "status", "first_byte", "error_event", "done")

    def __init__(self, metrics: GatewayMetrics, class_index: int, arrival: float,
                 deadline: float, out) -> None:
        self._m = metrics
        self._out = out
        self._class = class_index
        self._cell = metrics._cells[class_index][-1]  # 'none' until admitted somewhere
        self.arrival = arrival
        self.deadline = deadline
        self.routed_at = arrival
        self.status = 0
        self.first_byte: float | None = None
        self.error_event: str | None = None  # failure reason of an in-band error event
        self.done = False

    # -- hooks ------------------------------------------------------------------------------
    def admit(self, index: int) -> None:
        now = self._m.clock()
        if self._cell is not self._m._cells[self._class][-1]:
            # A second admission: the first instance could not be reached (the core retries
            # elsewhere only then); that attempt failed there. The deadline outcome is the
            # request's, counted once at its end.
            self._cell.failed("unreachable").inc()
        self._cell = cell = self._m._cells[self._class][index]
        cell.started.inc()
        cell.queue_wait.observe(max(0.0, now - self.routed_at))

    def end(self, reason: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        now = self._m.clock()
        cell = self._cell
        if reason is None:
            if self.status >= 400 or self.status == 0:
                reason = _reason_for_status(self.status) if self.status else "internal"
            elif self.error_event:
                reason = self.error_event
        if reason is None and cell.finished is None:
            reason = "internal"  # a response without ever being admitted: a gateway bug
        if reason is None:
            cell.finished.inc()
            cell.duration.observe(now - self.arrival)
            if self.first_byte is not None:
                cell.ttft.observe(self.first_byte - self.arrival)
            (cell.met if now <= self.deadline else cell.missed).inc()
            return
        cell.failed(reason).inc()
        if reason in _CLIENT_REASONS or (reason == "cancelled" and now <= self.deadline):
            return
        cell.missed.inc()

    # -- Responder ----------------------------------------------------------------------------
    async def respond(self, status: int, headers, body: bytes) -> None:
        self.status = status
        await self._out.respond(status, headers, body)

    async def start(self, status: int, headers) -> None:
        self.status = status
        await self._out.start(status, headers)

    async def write(self, data: bytes) -> None:
        if self.first_byte is None:
            self.first_byte = self._m.clock()
        # An SSE error event (the gateway's own after a broken upstream, or the engine's):
        # '{"error"' cannot occur unescaped inside generated text.
        if b'{"error"' in data:
            self.error_event = "expired" if b'"deadline_expired"' in data else "upstream_error"
        await self._out.write(data)

    async def finish(self) -> None:
        await self._out.finish()


class GatewayMetrics:
    """All metrics of one gateway, with the hooks the gateway calls.

    ``instances``: (name, the live load its admission queue keeps, the queue itself, whose
    ``capacity`` is read at scrape time) per backend instance, in the gateway's index order.
    """

    def __init__(self, classes: Sequence[str],
                 instances: Sequence[tuple[str, InstanceLoad, HasCapacity]],
                 *, router: str, scheduler: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        self.router_name = router
        self.scheduler_name = scheduler
        self.class_names = tuple(classes)
        self.class_index = {name: i for i, name in enumerate(self.class_names)}
        self.instance_names = tuple(name for name, _, _ in instances)
        self.instances = tuple(instances)
        made: dict[str, Any] = {}
        for spec in METRICS:
            if spec.live:
                continue
            if spec.kind == "counter":
                made[spec.name] = Counter(spec.family, spec.help, spec.labels,
                                          registry=self.registry)
            elif spec.kind == "histogram":
                made[spec.name] = Histogram(spec.family, spec.help, spec.labels,
                                            buckets=spec.buckets, registry=self.registry)
            else:
                raise ValueError(f"metric {spec.name}: no static {spec.kind} support")
        self.http_requests = made["quicgw_http_requests_total"]
        self.requests_rejected = made["quicgw_requests_rejected_total"]
        self.requests_started = made["quicgw_requests_started_total"]
        self.requests_finished = made["quicgw_requests_finished_total"]
        self.requests_failed = made["quicgw_requests_failed_total"]
        self.deadline_met = made["quicgw_deadline_met_total"]
        self.deadline_missed = made["quicgw_deadline_missed_total"]
        self.ttft = made["quicgw_ttft_seconds"]
        self.duration = made["quicgw_request_duration_seconds"]
        self.queue_wait = made["quicgw_queue_wait_seconds"]
        self.router_decisions = made["quicgw_router_decisions_total"]
        # [class][instance index, then 'none' last]
        self._cells: list[list[_Cell]] = [
            [_Cell(self, c, i) for i in (*self.instance_names, NONE)] for c in self.class_names]
        self._decisions: dict[str, list[Any]] = {}
        self._http: dict[tuple[str, str], Any] = {}
        self._rejected: dict[str, Any] = {}
        self.quic = QuicMeter(len(self.class_names))
        self.registry.register(_LiveCollector(self))

    # -- hooks for the transports and the core -----------------------------------------------
    def http_request(self, protocol: str, endpoint: str) -> None:
        key = (protocol, endpoint)
        child = self._http.get(key)
        if child is None:
            child = self._http[key] = self.http_requests.labels(protocol, endpoint or "unknown")
        child.inc()

    def rejected(self, code: str) -> None:
        child = self._rejected.get(code)
        if child is None:
            child = self._rejected[code] = self.requests_rejected.labels(code)
        child.inc()

    def routed(self, model: str, index: int) -> None:
        """The router (the gateway's, or ``static:<model>`` for a pinned model) picked the
        instance at ``index``."""
        children = self._decisions.get(model)
        if children is None:
            router = self.router_name if model == "auto" else f"static:{model}"
            children = self._decisions[model] = [
                self.router_decisions.labels(router, name) for name in self.instance_names]
        children[index].inc()
        meter = _CURRENT.get()
        if meter is not None:
            meter.routed_at = self.clock()

    def admitted(self, index: int) -> None:
        meter = _CURRENT.get()
        if meter is not None:
            meter.admit(index)

    async def observe(self, proxy: Callable[[Any, bytes, Any], Awaitable[None]], exchange,
                      body: bytes, out) -> None:
        """Run ``proxy(exchange, body, responder)`` with the request metered."""
        qos = exchange.qos
        meter = RequestMeter(self, self.class_index[qos.traffic_class.name], exchange.arrival,
                             qos.deadline, out)
        token = _CURRENT.set(meter)
        try:
            await proxy(exchange, body, meter)
        except asyncio.CancelledError:
            meter.end("cancelled")
            raise
        except Exception as e:
            # The core's HTTPError carries the status and an error code.
            status = getattr(e, "status", None)
            if getattr(e, "code", None) == "deadline_expired":
                meter.end("expired")
            else:
                meter.end(_reason_for_status(status) if isinstance(status, int) else "internal")
            raise
        else:
            meter.end()
        finally:
            _CURRENT.reset(token)

    # -- exposition ------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)

    def samples(self) -> list[tuple[str, dict[str, str], float]]:
        """Every sample the exposition holds, as (name, labels, value): the one source the
        dashboard's live view reads, so it shows exactly what ``/metrics`` says."""
        out = []
        for family in self.registry.collect():
            for s in family.samples:
                out.append((s.name, s.labels, s.value))
        return out


class QuicMeter:
    """Per-gateway QUIC totals: connections fold their counters in here when they end; live
    connections are summed at scrape time."""

    def __init__(self, n_classes: int) -> None:
        self.n_classes = n_classes
        self.live: set[MeteredQuicConnection] = set()
        self.opened = 0
        self.closed_packets_sent = 0
        self.closed_packets_lost = 0
        self.closed_sent_bytes = [0] * (n_classes + 1)  # last: unclassified
        self.closed_lost_bytes = [0] * (n_classes + 1)

    def connection_opened(self, conn: MeteredQuicConnection) -> None:
        self.opened += 1
        self.live.add(conn)

    def connection_ended(self, conn: MeteredQuicConnection) -> None:
        if conn in self.live:
            self.live.discard(conn)
            self.closed_packets_sent += conn._packet_number
            self.closed_packets_lost += conn.packets_lost
            for i in range(self.n_classes + 1):
                self.closed_sent_bytes[i] += conn.sent_bytes[i]
                self.closed_lost_bytes[i] += conn.lost_bytes[i]

    def totals(self) -> tuple[int, int, list[int], list[int]]:
        sent, lost = self.closed_packets_sent, self.closed_packets_lost
        sent_bytes = list(self.closed_sent_bytes)
        lost_bytes = list(self.closed_lost_bytes)
        for conn in self.live:
            sent += conn._packet_number
            lost += conn.packets_lost
            for i in range(self.n_classes + 1):
                sent_bytes[i] += conn.sent_bytes[i]
                lost_bytes[i] += conn.lost_bytes[i]
        return sent, lost, sent_bytes, lost_bytes


class MeteredQuicConnection(ScheduledQuicConnection):
    """The gateway's QUIC connection with per-class byte counters and loss counts.

    ``meter`` and ``class_index`` come from the gateway's :class:`GatewayMetrics`; everything
    else is :class:`ScheduledQuicConnection`'s. Counting is a list increment per STREAM frame;
    packets sent are aioquic's own packet number (no per-packet work at all).
    """

    def __init__(self, *, meter: QuicMeter, class_index: dict[str, int], **kwargs) -> None:
        super().__init__(**kwargs)
        self._quic_meter = meter
        self._class_index = class_index
        self.sent_bytes = [0] * (meter.n_classes + 1)
        self.lost_bytes = [0] * (meter.n_classes + 1)
        self.packets_lost = 0
        # aioquic has no loss counter: count the packets its loss detection declares lost
        # (not the PTO probes it merely retransmits early: congestion_event=False).
        recovery = self._loss
        declare_lost = recovery._on_packets_lost

        def on_packets_lost(*, packets: Iterable, congestion_event: bool = True, **kw) -> None:
            packets = list(packets)
            if congestion_event:
                self.packets_lost += len(packets)
            declare_lost(packets=packets, congestion_event=congestion_event, **kw)

        recovery._on_packets_lost = on_packets_lost
        meter.connection_opened(self)

    def _class_of(self, stream_id: int) -> int:
        qos = self.stream_qos.get(stream_id)
        if qos is None:
            return self._quic_meter.n_classes
        return self._class_index.get(qos.traffic_class.name, self._quic_meter.n_classes)

    def _push_stream_frame(self, builder, stream, frame) -> None:
        super()._push_stream_frame(builder, stream, frame)
        self.sent_bytes[self._class_of(stream.stream_id)] += len(frame.data)

    def _on_stream_data_delivery(self, delivery, stream, start: int, stop: int,
                                 fin: bool) -> None:
        if delivery == QuicDeliveryState.LOST:
            self.lost_bytes[self._class_of(stream.stream_id)] += stop - start
        super()._on_stream_data_delivery(delivery, stream, start, stop, fin)

    def _set_state(self, state: QuicConnectionState) -> None:
        super()._set_state(state)
        if state == QuicConnectionState.TERMINATED:
            self._quic_meter.connection_ended(self)


def connection_factory(metrics: GatewayMetrics) -> Callable[..., MeteredQuicConnection]:
    """What the HTTP/3 server calls to make a connection (``H3Server.connection_factory``)."""
    meter, index = metrics.quic, metrics.class_index

    def make(**kwargs) -> MeteredQuicConnection:
        return MeteredQuicConnection(meter=meter, class_index=index, **kwargs)

    return make


class _LiveCollector(Collector):
    """The ``live`` metrics, read from the gateway's state at scrape time."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.m = metrics

    def _family(self, name: str) -> Metric:
        spec = SPECS[name]
        cls = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
        return cls(spec.family, spec.help, labels=spec.labels)

    def collect(self) -> Iterable[Metric]:
        m = self.m
        depth = self._family("quicgw_queue_depth")
        in_flight = self._family("quicgw_in_flight_requests")
        capacity = self._family("quicgw_instance_capacity_requests")
        up = self._family("quicgw_backend_up")
        for name, load, cap in m.instances:
            depth.add_metric([name], load.queued)
            in_flight.add_metric([name], load.in_flight)
            capacity.add_metric([name], cap.capacity)
            up.add_metric([name], 1.0 if load.healthy else 0.0)
        yield from (depth, in_flight, capacity, up)
        info = self._family("quicgw_gateway_info")
        info.add_metric([m.scheduler_name, m.router_name], 1.0)
        yield info
        q = m.quic
        sent, lost, sent_bytes, lost_bytes = q.totals()
        classes = (*m.class_names, UNCLASSIFIED)
        by_class = self._family("quicgw_scheduler_sent_bytes_total")
        lost_by_class = self._family("quicgw_quic_lost_bytes_total")
        for name, n_sent, n_lost in zip(classes, sent_bytes, lost_bytes, strict=True):
            by_class.add_metric([name, m.scheduler_name], n_sent)
            lost_by_class.add_metric([name], n_lost)
        yield by_class
        for name, value in (("quicgw_quic_connections_total", q.opened),
                            ("quicgw_quic_connections", len(q.live)),
                            ("quicgw_quic_packets_sent_total", sent),
                            ("quicgw_quic_packets_lost_total", lost)):
            family = self._family(name)
            family.add_metric([], value)
            yield family
        yield lost_by_class


# -- reading an exposition back (tests, the dashboard's checks) ---------------------------------

def parse_exposition(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` text -> {(sample name, sorted label pairs): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile``: ``buckets`` are (upper bound, cumulative count),
    ascending, ending with +Inf. Linear interpolation inside the bucket; NaN when empty."""
    if not buckets:
        return math.nan
    total = buckets[-1][1]
    if total <= 0:
        return math.nan
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # the highest finite bound, as Prometheus does
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound
