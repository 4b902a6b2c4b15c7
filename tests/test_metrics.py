"""Prometheus metrics: the definitions (names, units, README), the hooks' accounting on a fake
proxy with a fake clock, and a real gateway whose /metrics (TLS/TCP and the plain-HTTP admin
port) shows the documented metrics with non-zero values after HTTP/3 traffic."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import ssl
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from quicgw.backends.emulated import EmulatedBackend
from quicgw.client import AsyncClient
from quicgw.config import parse_config
from quicgw.core.classes import DEFAULT_CLASSES
from quicgw.core.qos import RequestQoS
from quicgw.core.routing import InstanceLoad
from quicgw.metrics import (
    METRICS,
    GatewayMetrics,
    histogram_quantile,
    parse_exposition,
)

pytestmark = pytest.mark.timeout(90)
README = Path(__file__).resolve().parent.parent / "README.md"
MESSAGES = [{"role": "user", "content": "Tell me something short."}]


# -- definitions ------------------------------------------------------------------------------

def test_names_follow_prometheus_conventions():
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names)), "a metric is defined twice"
    for m in METRICS:
        assert re.fullmatch(r"quicgw_[a-z0-9_]+", m.name), m.name
        if m.kind == "counter":
            assert m.name.endswith("_total"), f"counter {m.name} must end in _total"
        else:
            assert not m.name.endswith("_total"), m.name
        if m.kind == "histogram":
            assert m.name.endswith("_seconds"), f"histogram {m.name} must name its unit"
            assert list(m.buckets) == sorted(m.buckets)
        assert set(m.labels) <= {"class", "instance", "reason", "router", "target", "scheduler",
                                 "protocol", "endpoint", "code"}, m.name
        assert m.help


def test_every_metric_is_documented_in_the_readme():
    text = README.read_text()
    missing = [m.name for m in METRICS if f"`{m.name}`" not in text]
    assert not missing, f"README.md does not document: {missing}"


def test_histogram_quantile_matches_prometheus():
    buckets = [(0.1, 0.0), (0.5, 10.0), (1.0, 20.0), (math.inf, 20.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.5)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1 + 0.4 * 0.5)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.75)
    assert histogram_quantile(0.99, [(1.0, 1.0), (math.inf, 2.0)]) == 1.0  # +Inf bucket
    assert math.isnan(histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]))


# -- the hooks, with a fake clock and a fake proxy ------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Sink:
    """A transport responder that records what it is told."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def respond(self, status, headers, body):
        self.calls.append(f"respond {status}")

    async def start(self, status, headers):
        self.calls.append(f"start {status}")

    async def write(self, data):
        self.calls.append("write")

    async def finish(self):
        self.calls.append("finish")


class Status(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


def make_metrics(clock: FakeClock) -> GatewayMetrics:
    loads = [InstanceLoad(), InstanceLoad()]
    loads[1].in_flight, loads[1].queued, loads[1].healthy = 3, 2, False
    return GatewayMetrics(
        [c.name for c in DEFAULT_CLASSES],
        [("a", loads[0], SimpleNamespace(capacity=8)), ("b", loads[1], SimpleNamespace(capacity=4))],
        router="jsq", scheduler="edf", clock=clock)


def exchange(clock: FakeClock, class_index: int = 0, deadline_s: float = 1.0):
    tc = DEFAULT_CLASSES[class_index]
    return SimpleNamespace(qos=RequestQoS(tc, clock.t, clock.t + deadline_s), arrival=clock.t)


def value(m: GatewayMetrics, name: str, **labels) -> float:
    samples = parse_exposition(m.render().decode())
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_hooks_count_a_streamed_request_end_to_end():
    clock = FakeClock()
    m = make_metrics(clock)

    async def proxy(ex, body, out):
        m.routed("auto", 1)
        clock.t += 0.25  # queued
        m.admitted(1)
        await out.start(200, [])
        clock.t += 0.1
        await out.write(b"data: {\"choices\": []}\n\n")
        clock.t += 0.4
        await out.finish()

    sink = Sink()
    await m.observe(proxy, exchange(clock), b"", sink)
    assert sink.calls == ["start 200", "write", "finish"]  # passed through unchanged
    rt = {"class": "realtime", "instance": "b"}
    assert value(m, "quicgw_requests_started_total", **rt) == 1
    assert value(m, "quicgw_requests_finished_total", **rt) == 1
    assert value(m, "quicgw_deadline_met_total", **rt) == 1
    assert value(m, "quicgw_router_decisions_total", router="jsq", target="b") == 1
    assert value(m, "quicgw_ttft_seconds_sum", **rt) == pytest.approx(0.35)
    assert value(m, "quicgw_request_duration_seconds_sum", **rt) == pytest.approx(0.75)
    assert value(m, "quicgw_queue_wait_seconds_sum", **rt) == pytest.approx(0.25)
    # scrape-time gauges read the live load
    assert value(m, "quicgw_in_flight_requests", instance="b") == 3
    assert value(m, "quicgw_queue_depth", instance="b") == 2
    assert value(m, "quicgw_backend_up", instance="b") == 0
    assert value(m, "quicgw_instance_capacity_requests", instance="a") == 8
    assert value(m, "quicgw_gateway_info", scheduler="edf", router="jsq") == 1


async def test_hooks_failures_late_answers_and_retries():
    clock = FakeClock()
    m = make_metrics(clock)

    async def late(ex, body, out):  # finishes after its 1 s deadline
        m.routed("llama-3.2-1b", 0)
        m.admitted(0)
        clock.t += 1.5
        await out.respond(200, [], b"{}")

    async def no_instance(ex, body, out):
        raise Status(503)

    async def bad_body(ex, body, out):
        raise Status(400)

    async def retried(ex, body, out):  # instance a unreachable, then b answers
        m.routed("auto", 0)
        m.admitted(0)
        m.routed("auto", 1)
        m.admitted(1)
        await out.respond(200, [], b"{}")

    async def broken_stream(ex, body, out):
        m.routed("auto", 0)
        m.admitted(0)
        await out.start(200, [])
        await out.write(b'data: {"error": {"message": "backend went away"}}\n\n')
        await out.finish()

    async def cancelled(ex, body, out):
        m.routed("auto", 0)
        m.admitted(0)
        clock.t += 2.0
        raise asyncio.CancelledError

    await m.observe(late, exchange(clock, 1), b"", Sink())
    for proxy in (no_instance, bad_body):
        with pytest.raises(Status):
            await m.observe(proxy, exchange(clock, 1), b"", Sink())
    await m.observe(retried, exchange(clock, 2), b"", Sink())
    await m.observe(broken_stream, exchange(clock, 2), b"", Sink())
    with pytest.raises(asyncio.CancelledError):
        await m.observe(cancelled, exchange(clock, 0), b"", Sink())

    assert value(m, "quicgw_deadline_missed_total", **{"class": "free", "instance": "a"}) == 1
    assert value(m, "quicgw_router_decisions_total", router="static:llama-3.2-1b",
                 target="a") == 1
    assert value(m, "quicgw_requests_failed_total",
                 **{"class": "free", "instance": "none", "reason": "no_instance"}) == 1
    # a server-side failure misses the deadline; a bad request says nothing about it
    assert value(m, "quicgw_deadline_missed_total", **{"class": "free", "instance": "none"}) == 1
    assert value(m, "quicgw_requests_failed_total",
                 **{"class": "free", "instance": "none", "reason": "rejected"}) == 1
    bulk_a = {"class": "bulk", "instance": "a"}
    assert value(m, "quicgw_requests_started_total", **bulk_a) == 2
    assert value(m, "quicgw_requests_failed_total", **bulk_a, reason="unreachable") == 1
    assert value(m, "quicgw_requests_failed_total", **bulk_a, reason="upstream_error") == 1
    assert value(m, "quicgw_requests_finished_total", **{"class": "bulk", "instance": "b"}) == 1
    rt_a = {"class": "realtime", "instance": "a"}
    assert value(m, "quicgw_requests_failed_total", **rt_a, reason="cancelled") == 1
    assert value(m, "quicgw_deadline_missed_total", **rt_a) == 1  # cancelled after the deadline


# -- a real gateway ------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def gateway(models=("llama-3.2-1b", "llama-3.1-8b"), **gateway_fields):
    from quicgw.gateway import Gateway

    async with contextlib.AsyncExitStack() as stack:
        backends = []
        for i, model in enumerate(models):
            b = await stack.enter_async_context(EmulatedBackend(
                model, "a100-80gb", port=0, time_scale=20.0, queue_policy="priority"))
            backends.append({"name": f"b{i}", "model": model, "url": b.url})
        config = parse_config({"gateway": {"host": "127.0.0.1", "port": 0,
                                           "scheduler": "edf", **gateway_fields},
                               "backends": backends})
        yield await stack.enter_async_context(Gateway(config))


def nonzero(samples: dict, name: str) -> float:
    total = sum(v for (n, _), v in samples.items() if n == name)
    assert total > 0, f"{name} is zero after traffic"
    return total


async def test_metrics_endpoint_after_http3_traffic():
    async with gateway(admin_port=0) as gw:
        async with AsyncClient(gw.url, verify=gw.cafile) as client:
            for i in range(6):
                cls = ("realtime", "free", "bulk")[i % 3]
                if i % 2:
                    tokens = [t async for t in client.stream_chat(
                        MESSAGES, max_tokens=8, traffic_class=cls)]
                    assert len(tokens) == 8
                else:
                    await client.chat(MESSAGES, max_tokens=8, traffic_class=cls)
            r = await client.request("POST", "/v1/chat/completions", {"messages": []},
                                     traffic_class="free")
            assert r.status == 400
            r = await client.request("POST", "/v1/chat/completions", {"messages": MESSAGES},
                                     traffic_class="nope")
            assert r.status == 400
        tls = ssl.create_default_context(cafile=gw.cafile)
        async with httpx.AsyncClient(verify=tls, timeout=20) as http:
            public = await http.get(f"{gw.url}/metrics")
            admin = await http.get(f"{gw.admin.url}/metrics")
        for r in (public, admin):
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/plain; version=")
        samples = parse_exposition(public.text)
        # every documented metric is exposed
        exposed = {n for n, _ in samples}
        for spec in METRICS:
            wanted = spec.name + ("_count" if spec.kind == "histogram" else "")
            assert wanted in exposed, f"{wanted} missing from /metrics"
        assert nonzero(samples, "quicgw_requests_started_total") == 6
        assert nonzero(samples, "quicgw_requests_finished_total") == 6
        assert nonzero(samples, "quicgw_deadline_met_total") + sum(
            v for (n, _), v in samples.items() if n == "quicgw_deadline_missed_total") == 6
        assert nonzero(samples, "quicgw_ttft_seconds_count") == 3  # the streamed ones
        assert nonzero(samples, "quicgw_request_duration_seconds_count") == 6
        assert nonzero(samples, "quicgw_router_decisions_total") == 6
        assert samples[("quicgw_requests_failed_total", (
            ("class", "free"), ("instance", "none"), ("reason", "rejected")))] == 1
        assert samples[("quicgw_requests_rejected_total", (("code", "unknown_traffic_class"),))] == 1
        assert samples[("quicgw_http_requests_total", (("endpoint", "chat"),
                                                       ("protocol", "h3")))] == 8
        for cls in ("realtime", "free", "bulk"):
            assert samples[("quicgw_scheduler_sent_bytes_total",
                            (("class", cls), ("scheduler", "edf")))] > 0
        assert nonzero(samples, "quicgw_quic_connections_total") == 1
        assert nonzero(samples, "quicgw_quic_packets_sent_total") > 10
        assert samples[("quicgw_gateway_info", (("router", "jsq"), ("scheduler", "edf")))] == 1
        assert samples[("quicgw_backend_up", (("instance", "b0"),))] == 1


async def test_public_ops_off_keeps_metrics_on_the_admin_port_only():
    async with gateway(("llama-3.2-1b",), admin_port=0, public_ops=False) as gw:
        tls = ssl.create_default_context(cafile=gw.cafile)
        async with httpx.AsyncClient(verify=tls, timeout=20) as http:
            assert (await http.get(f"{gw.url}/metrics")).status_code == 404
            assert (await http.get(f"{gw.url}/dashboard")).status_code == 404
            assert (await http.get(f"{gw.admin.url}/metrics")).status_code == 200
            page = await http.get(f"{gw.admin.url}/dashboard")
            assert page.status_code == 200 and "quicgw dashboard" in page.text
            missing = await http.get(f"{gw.admin.url}/v1/models")
            assert missing.status_code == 404 and "/metrics" in missing.text


def test_quic_counters_on_a_lossy_link():
    """MeteredQuicConnection on the scheduler's in-memory link: STREAM bytes per class
    (retransmissions included), packets declared lost and lost bytes per class, connection
    counts, and the totals kept when the connection ends."""
    from aioquic.quic.connection import QuicConnection
    from aioquic.quic.events import StreamDataReceived

    from quicgw.metrics import connection_factory
    from quicgw.scheduling.sim import SimulatedLink

    clock = FakeClock()
    m = make_metrics(clock)
    received = bytearray()

    def on_client_event(event, now):
        if isinstance(event, StreamDataReceived):
            received.extend(event.data)

    def drop(direction: str, index: int, data: bytes) -> bool:
        return direction == "s2c" and index > 20 and index % 9 == 0  # ~11 % after the handshake

    link = SimulatedLink.pair(QuicConnection, connection_factory(m), drop=drop,
                              on_client_event=on_client_event, delay=0.005, rate=2_000_000)
    link.connect()
    assert value(m, "quicgw_quic_connections") == 1
    link.client.send_stream_data(0, b"request", end_stream=True)
    link.run(until=lambda: 0 in link.server._streams, max_time=5)
    qos = RequestQoS(DEFAULT_CLASSES[1], 0.0, 10.0)  # free
    link.server.set_stream_qos(0, qos)
    payload = bytes(300_000)
    link.server.send_stream_data(0, payload, end_stream=True)
    assert link.run(until=lambda: len(received) == len(payload), max_time=30)

    free = {"class": "free", "scheduler": "edf"}
    sent = value(m, "quicgw_scheduler_sent_bytes_total", **free)
    lost_packets = value(m, "quicgw_quic_packets_lost_total")
    lost_bytes = value(m, "quicgw_quic_lost_bytes_total", **{"class": "free"})
    assert link.stats["s2c_dropped"] > 5
    assert 0 < lost_packets <= link.stats["s2c_dropped"]
    assert lost_bytes > 0
    assert sent >= len(payload) + lost_bytes  # lost data went out again
    assert value(m, "quicgw_quic_packets_sent_total") == link.server._packet_number
    assert value(m, "quicgw_quic_connections_total") == 1

    link.server.close()
    link.run(max_time=5)
    assert value(m, "quicgw_quic_connections") == 0  # ended: folded into the totals
    assert value(m, "quicgw_scheduler_sent_bytes_total", **free) == sent
    assert value(m, "quicgw_quic_packets_lost_total") == lost_packets
