"""Reliability over real loopback sockets (issue 8): bad input on the wire, stream resets, QUIC
stream limits, a peer that never reads, backend faults (health, failover, death mid-stream),
deadline-derived timeouts and graceful shutdown with GOAWAY."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import ErrorCode, encode_frame
from aioquic.quic.packet import QuicErrorCode
from fake_backend import FakeBackend

from quicgw.backends.emulated import EmulatedBackend
from quicgw.backends.process import BackendProcess
from quicgw.client import (
    APIError,
    AsyncClient,
    ConnectionLost,
    RequestTimeout,
    StreamResetError,
)
from quicgw.client.connection import RequestRejected
from quicgw.config import parse_config
from quicgw.gateway import Gateway
from quicgw.scheduling.h3 import PRIORITY_UPDATE_REQUEST

pytestmark = pytest.mark.timeout(90)

MESSAGES = [{"role": "user", "content": "Say something."}]


def config(backends: list[dict], **gateway):
    return parse_config({
        "gateway": {"host": "127.0.0.1", "port": 0, "health_interval_s": 0.2, **gateway},
        "backends": backends,
    })


def fake_config(fake: FakeBackend, max_batch: int | None = None, **gateway):
    return config([{"name": "fake", "model": fake.model, "url": fake.url,
                    "max_batch": max_batch}], **gateway)


async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_conn(gw: Gateway):
    (conn,) = set(gw.h3.connections.values())
    return conn


def request_headers(c: AsyncClient, path: str, extra=()) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", c._authority),
            (b":path", path.encode()), *extra]


# -- bad input on the wire ------------------------------------------------------------------

async def test_body_limit_is_enforced_while_reading():
    # No content-length: the 413 must come while the client is still uploading, after the
    # limit and not after the whole (never-ending) body.
    async with FakeBackend() as fake, Gateway(fake_config(fake, max_body_bytes=4096,
                                                          echo_endpoint=True)) as gw, \
            AsyncClient(gw.url, verify=gw.cafile) as c:
        conn = await c._connection()
        sid = conn.quic.get_next_available_stream_id()
        from quicgw.client.connection import ClientStream, Timing
        stream = ClientStream(sid, Timing(time.monotonic()))
        stream.conn = conn
        conn.streams[sid] = stream
        conn.h3.send_headers(sid, request_headers(c, "/v1/echo"))
        for _ in range(3):
            conn.h3.send_data(sid, b"x" * 2000, end_stream=False)  # 6000 > 4096, never ended
        conn.transmit()
        await until(lambda: stream.ended, what="413")
        assert stream.status == 413
        assert b"over the limit of 4096" in b"".join(stream.chunks)
        assert not server_conn(gw).streams  # nothing of it is kept
        r = await c.request("POST", "/v1/echo", b"ok")  # the connection still serves
        assert r.status == 200 and r.content == b"ok"


async def test_client_reset_mid_upload_and_mid_response_frees_everything():
    async with FakeBackend(token_delay_s=0.2) as fake, \
            Gateway(fake_config(fake, echo_endpoint=True)) as gw, \
            AsyncClient(gw.url, verify=gw.cafile) as c:
        conn = await c._connection()
        server = server_conn(gw)
        # Mid-upload: headers and part of the body, then RESET_STREAM.
        sid = conn.quic.get_next_available_stream_id()
        conn.h3.send_headers(sid, request_headers(c, "/v1/echo", [(b"content-length", b"90000")]))
        conn.h3.send_data(sid, b"y" * 30000, end_stream=False)
        conn.transmit()
        await until(lambda: sid in server.streams and server.streams[sid].size > 0,
                    what="the upload to start")
        conn.quic.reset_stream(sid, ErrorCode.H3_REQUEST_CANCELLED)
        conn.transmit()
        await until(lambda: sid not in server.streams, what="the reset to reach the gateway")
        # Our half is reset too, so the stream finishes and its slot comes back.
        await until(lambda: sid not in server.quic._streams, what="the stream to be discarded")

        # Mid-response: a streamed answer, abandoned after its first token.
        tokens = c.stream_chat(MESSAGES, max_tokens=20)
        async for _ in tokens:
            break
        await tokens.aclose()
        await until(lambda: fake.cancelled == 1, what="the backend request to be cancelled")
        await until(lambda: gw.app.instances[0].load.in_flight == 0, what="the slot to be freed")
        assert (await c.chat(MESSAGES, max_tokens=1)).status == 200


async def test_quic_stream_limit_queues_well_behaved_clients_and_closes_cheaters():
    async with FakeBackend(token_delay_s=0.05) as fake, \
            Gateway(fake_config(fake, max_streams_per_connection=8)) as gw:
        async with AsyncClient(gw.url, verify=gw.cafile) as c:
            results = await asyncio.gather(*(c.chat(MESSAGES, max_tokens=2) for _ in range(40)))
            assert [r.status for r in results] == [200] * 40
            assert fake.max_active <= 8  # never more than 8 requests open on the connection
        cheater = AsyncClient(gw.url, verify=gw.cafile)
        conn = await cheater._connection()
        conn.quic._remote_max_streams_bidi = 1000  # ignore the server's limit
        with pytest.raises(ConnectionLost) as e:
            await asyncio.gather(*(cheater.chat(MESSAGES, max_tokens=2, timeout=20)
                                   for _ in range(20)))
        assert f"0x{QuicErrorCode.STREAM_LIMIT_ERROR:x}" in str(e.value)
        await cheater.aclose()
        async with AsyncClient(gw.url, verify=gw.cafile) as c:  # everyone else is served
            assert (await c.chat(MESSAGES, max_tokens=1)).status == 200


@pytest.mark.parametrize("where", ["request stream", "bogus stream id"])
async def test_priority_update_protocol_errors_close_only_that_connection(where):
    async with FakeBackend(token_delay_s=0.05) as fake, Gateway(fake_config(fake)) as gw:
        async with AsyncClient(gw.url, verify=gw.cafile) as bystander:
            slow = asyncio.create_task(bystander.chat(MESSAGES, max_tokens=10))
            bad = AsyncClient(gw.url, verify=gw.cafile)
            conn = await bad._connection()
            if where == "request stream":
                sid = conn.quic.get_next_available_stream_id()
                conn.h3.send_headers(sid, request_headers(bad, "/v1/chat/completions"))
                conn.quic.send_stream_data(sid, encode_frame(
                    PRIORITY_UPDATE_REQUEST, encode_uint_var(sid) + b"u=0"))
                expected = ErrorCode.H3_FRAME_UNEXPECTED
            else:  # stream 2 is server-initiated unidirectional, not a request stream
                conn.quic.send_stream_data(conn.h3._local_control_stream_id, encode_frame(
                    PRIORITY_UPDATE_REQUEST, encode_uint_var(2) + b"u=0"))
                expected = ErrorCode.H3_ID_ERROR
            conn.transmit()
            await asyncio.wait_for(asyncio.shield(conn.closed), 10)
            assert f"error 0x{expected:x}" in conn.close_reason
            await bad.aclose()
            assert (await slow).status == 200  # other connections never noticed


async def test_a_bug_on_one_connection_closes_only_that_connection(caplog):
    async with FakeBackend() as fake, Gateway(fake_config(fake)) as gw:
        async with AsyncClient(gw.url, verify=gw.cafile, timeout=10) as a:
            assert (await a.chat(MESSAGES, max_tokens=1)).status == 200
            (victim,) = set(gw.h3.connections.values())
            b = AsyncClient(gw.url, verify=gw.cafile, timeout=10)
            await b.connect()

            def broken(*args, **kwargs):
                raise RuntimeError("injected bug")

            victim.quic.receive_datagram = broken
            with pytest.raises(ConnectionLost) as e:
                await a.chat(MESSAGES, max_tokens=1)
            assert "0x1" in str(e.value)  # INTERNAL_ERROR
            assert (await b.chat(MESSAGES, max_tokens=1)).status == 200
            await b.aclose()
            assert "internal error on a QUIC connection" in caplog.text


# -- a peer that never reads ----------------------------------------------------------------

class _NeverReadingClient(AsyncClient):
    """Small flow-control windows, and never any MAX_DATA / MAX_STREAM_DATA: it reads nothing
    beyond its first 32 KB."""

    def _quic_configuration(self):
        cfg = super()._quic_configuration()
        cfg.max_data = 64 << 10
        cfg.max_stream_data = 32 << 10
        return cfg

    async def _open(self):
        conn = await super()._open()
        conn.quic._write_connection_limits = lambda builder, space: None
        conn.quic._write_stream_limits = lambda builder, space, stream: None
        return conn


async def test_peer_that_never_reads_holds_bounded_memory_and_frees_the_backend_slot():
    budget = 64 << 10
    async with EmulatedBackend("llama-3.2-1b", port=0, time_scale=4) as backend, \
            Gateway(config([{"name": "b0", "model": "llama-3.2-1b", "url": backend.url}],
                           stream_buffer_bytes=budget, write_stall_timeout_s=1.0,
                           echo_endpoint=True, max_body_bytes=2 << 20)) as gw:
        c = _NeverReadingClient(gw.url, verify=gw.cafile, timeout=30)
        await c.connect()
        # A streamed answer of 4,000 tokens (~500 KB of SSE, several seconds): far beyond what
        # it reads.
        r = await c.stream("POST", "/v1/chat/completions",
                           {"messages": MESSAGES, "max_tokens": 4000, "stream": True,
                            "ignore_eos": True})
        server = server_conn(gw)
        await until(lambda: server.blocked, what="the response writer to block")
        (stream,) = server.blocked
        assert stream.unsent() <= budget + 2048
        assert server.unsent() <= server.connection_budget
        assert gw.app.instances[0].load.in_flight == 1
        # After write_stall_timeout_s: reset, backend request cancelled, slot freed.
        with pytest.raises(StreamResetError) as e:
            await r.aread()
        assert e.value.error_code == ErrorCode.H3_REQUEST_CANCELLED
        await until(lambda: gw.app.instances[0].load.in_flight == 0, what="the slot")
        await until(lambda: backend.engine.n_running == 0, what="the backend to cancel")
        assert backend.stats["cancelled"] >= 1
        # A 1 MB echo is written in pieces, never more than the budget ahead of the peer.
        task = asyncio.create_task(c.request("POST", "/v1/echo", b"z" * (1 << 20)))
        await until(lambda: server.blocked, what="the echo writer to block")
        (stream,) = server.blocked
        assert stream.unsent() <= budget + max(16 << 10, budget // 4)
        with pytest.raises(StreamResetError):
            await task
        await c.aclose()
        async with AsyncClient(gw.url, verify=gw.cafile) as ok:  # the gateway is fine
            assert (await ok.chat(MESSAGES, max_tokens=2)).status == 200


async def test_a_reset_after_the_answer_was_written_leaves_the_buffer_count():
    # The echo is handed to QUIC in full (its task is done) but the peer reads 32 KB of it;
    # when the peer then gives up, the unsent rest must leave the connection's count, or a
    # long-lived connection would end up blocked by bytes that will never be sent.
    async with FakeBackend() as fake, Gateway(fake_config(fake, echo_endpoint=True)) as gw:
        c = _NeverReadingClient(gw.url, verify=gw.cafile)
        await c.connect()
        server = server_conn(gw)
        with pytest.raises(RequestTimeout):
            await c.request("POST", "/v1/echo", b"e" * 200_000, timeout=1.0)
        await until(lambda: not server.streams and not server.unsent_streams,
                    what="the reset to reach the gateway")
        assert server.unsent() <= 0
        await c.aclose()


# -- backend faults -------------------------------------------------------------------------

async def test_health_checks_mark_down_and_up_and_routing_avoids_down_instances():
    port = free_port()
    async with EmulatedBackend("llama-3.2-1b", port=0, time_scale=50) as b0:
        b1 = EmulatedBackend("llama-3.2-1b", port=port, time_scale=50)
        await b1.start()
        cfg = config([{"name": "b0", "model": "llama-3.2-1b", "url": b0.url},
                      {"name": "b1", "model": "llama-3.2-1b", "url": b1.url}],
                     health_fall=2, health_rise=1)
        async with Gateway(cfg) as gw, AsyncClient(gw.url, verify=gw.cafile) as c:
            inst1 = gw.app.instances[1]
            await b1.close()
            await until(lambda: not inst1.load.healthy, what="b1 marked down", timeout=5)
            results = await asyncio.gather(*(c.chat(MESSAGES, max_tokens=2) for _ in range(20)))
            assert {r.headers["x-quicgw-instance"] for r in results} == {"b0"}
            health = (await c.request("GET", "/healthz")).json()
            assert health["instances"][1]["healthy"] is False and health["instances"][1]["reason"]
            await b1.start()  # the same port again
            await until(lambda: inst1.load.healthy, what="b1 back up", timeout=5)
            results = await asyncio.gather(*(c.chat(MESSAGES, max_tokens=2) for _ in range(20)))
            assert "b1" in {r.headers["x-quicgw-instance"] for r in results}
        await b1.close()


async def test_when_every_instance_is_down_a_request_tries_one_rather_than_failing():
    port = free_port()
    b = EmulatedBackend("llama-3.2-1b", port=port, time_scale=50)
    await b.start()
    # health_rise so high that probes cannot bring it back within the test: only an answer can.
    cfg = config([{"name": "b", "model": "llama-3.2-1b", "url": b.url}],
                 health_interval_s=0.3, health_fall=1, health_rise=1000)
    try:
        async with Gateway(cfg) as gw, AsyncClient(gw.url, verify=gw.cafile) as c:
            inst = gw.app.instances[0]
            await b.close()
            await until(lambda: not inst.load.healthy, what="marked down")
            r = await c.request("POST", "/v1/chat/completions", {"messages": MESSAGES})
            assert r.status in (502, 503)  # down for less than a health interval: not retried
            await b.start()
            await asyncio.sleep(0.4)  # down for more than a health interval
            r = await c.chat(MESSAGES, max_tokens=2)
            assert r.status == 200 and inst.load.healthy  # the answer brought it back
    finally:
        await b.close()


async def test_backend_process_killed_mid_stream_is_an_explicit_error_within_a_second():
    with BackendProcess("llama-3.1-8b", time_scale=2.0) as proc:
        cfg = config([{"name": "b0", "model": "llama-3.1-8b", "url": proc.url}])
        async with Gateway(cfg) as gw, AsyncClient(gw.url, verify=gw.cafile, timeout=20) as c:
            got = []
            with pytest.raises(APIError) as e:
                async for tok in c.stream_chat(MESSAGES, max_tokens=200):
                    got.append(tok)
                    if len(got) == 3:
                        killed = time.monotonic()
                        proc.proc.kill()
            assert time.monotonic() - killed < 1.0
            assert e.value.status == 502 and len(got) >= 3
            r = await c.request("POST", "/v1/chat/completions", {"messages": MESSAGES})
            assert r.status in (502, 503)  # explicit, never a hang
            assert r.json()["error"]["message"]


async def test_requests_not_started_fail_over_to_another_instance():
    port_b = free_port()
    async with EmulatedBackend("llama-3.2-1b", port=0, time_scale=1, max_batch=1) as a:
        cfg = config([{"name": "a", "model": "llama-3.2-1b", "url": a.url, "max_batch": 1},
                      {"name": "b", "model": "llama-3.2-1b",
                       "url": f"http://127.0.0.1:{port_b}", "max_batch": 1}],
                     health_fall=1, health_interval_s=0.2)
        async with Gateway(cfg) as gw, AsyncClient(gw.url, verify=gw.cafile, timeout=30) as c:
            ia, ib = gw.app.instances
            # b refuses connections: the request that tries it is not lost, it goes to a.
            r = await c.chat(MESSAGES, max_tokens=1)
            assert r.headers["x-quicgw-instance"] == "a"
            await until(lambda: not ib.load.healthy, what="b marked down")
            # One request runs on a, three wait in its queue (b is down).
            blocker = asyncio.create_task(c.chat(MESSAGES, max_tokens=2000))  # several s
            await until(lambda: ia.load.in_flight == 1, what="the blocker")
            waiting = [asyncio.create_task(c.chat(MESSAGES, max_tokens=2)) for _ in range(3)]
            await until(lambda: ia.load.queued == 3, what="three queued on a")
            b = EmulatedBackend("llama-3.2-1b", port=port_b, time_scale=50)
            await b.start()
            try:
                await until(lambda: ib.load.healthy, what="b up")
                await a.close()  # a dies: the queued requests have not started there
                results = await asyncio.gather(*waiting)
                assert [r.headers["x-quicgw-instance"] for r in results] == ["b"] * 3
                with pytest.raises(APIError) as e:  # the one that had started: explicit error
                    await blocker
                assert e.value.status == 502
            finally:
                await b.close()


async def test_timeouts_derive_from_the_deadline():
    async with FakeBackend(token_delay_s=0.5) as fake, \
            Gateway(fake_config(fake, deadline_timeout_factor=1.0)) as gw, \
            AsyncClient(gw.url, verify=gw.cafile, timeout=20) as c:
        t0 = time.monotonic()
        r = await c.request("POST", "/v1/chat/completions",
                            {"messages": MESSAGES, "max_tokens": 20}, deadline_ms=300)
        assert r.status == 504 and r.json()["error"]["code"] == "deadline_expired"
        assert 0.25 < time.monotonic() - t0 < 2.0
        with pytest.raises(APIError) as e:  # streamed: an error event after the headers
            async for _ in c.stream_chat(MESSAGES, max_tokens=20, deadline_ms=800):
                pass
        assert e.value.status == 504 and "expired" in e.value.message
        await until(lambda: fake.cancelled == 2, what="both backend requests cancelled")
        assert gw.app.instances[0].load.in_flight == 0


async def test_stream_ended_without_done_gets_an_error_event():
    async def truncating_backend(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        event = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event))  # complete, but no [DONE]
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(truncating_backend, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with Gateway(config([{"name": "t", "model": "llama-3.1-8b", "url": url}])) as gw, \
                AsyncClient(gw.url, verify=gw.cafile) as c:
            got = []
            with pytest.raises(APIError) as e:
                async for tok in c.stream_chat(MESSAGES, max_tokens=5):
                    got.append(tok)
            assert got == ["hi"] and "without data: [DONE]" in e.value.message
    finally:
        server.close()


# -- graceful shutdown ---------------------------------------------------------------------

async def test_graceful_shutdown_sends_goaway_and_drains_in_flight_requests():
    async with FakeBackend(token_delay_s=0.1) as fake:
        gw = Gateway(fake_config(fake, shutdown_grace_s=3.0))
        await gw.start()
        try:
            c = AsyncClient(gw.url, verify=gw.cafile, timeout=20, connect_timeout=1)
            await c.connect()
            conn = c.connection
            tokens = []

            async def stream():
                async for tok in c.stream_chat(MESSAGES, max_tokens=8):
                    tokens.append(tok)

            in_flight = asyncio.create_task(stream())
            await until(lambda: tokens, what="the first token")
            t0 = time.monotonic()
            stopping = asyncio.create_task(gw.stop())
            # Two GOAWAYs: the largest stream ID first, then the first one not processed.
            await until(lambda: conn.goaway_id is not None and conn.goaway_id < 1 << 40,
                        what="the final GOAWAY")
            assert conn.goaway_id == 4  # stream 0 is in flight; 4 and later: not processed
            # A request on the old connection beyond the GOAWAY is refused unprocessed ...
            sid = conn.quic.get_next_available_stream_id()
            assert sid >= conn.goaway_id
            from quicgw.client.connection import ClientStream, Timing
            raw = ClientStream(sid, Timing(time.monotonic()))
            conn.streams[sid] = raw
            conn.h3.send_headers(sid, request_headers(c, "/v1/chat/completions"),
                                 end_stream=True)
            conn.transmit()
            await until(lambda: raw.ended, what="the rejection")
            assert isinstance(raw.error, RequestRejected) and len(fake.received) == 1
            # ... and the SDK's new connection is closed at once while the gateway drains.
            t1 = time.monotonic()
            with pytest.raises(ConnectionLost):  # closed in the handshake (QUIC error 0xc)
                await c.chat(MESSAGES, max_tokens=1)
            assert time.monotonic() - t1 < 1.0
            await in_flight  # drained: the whole answer, [DONE] included
            assert len(tokens) == 8
            await stopping
            assert time.monotonic() - t0 < 3.0
            # New requests after the GOAWAY go to a new connection, which the stopped
            # gateway does not accept: an explicit error (here: no handshake within the
            # client's connect timeout).
            with pytest.raises((ConnectionError, ConnectionLost, RequestRejected)):
                await c.chat(MESSAGES, max_tokens=1)
            await c.aclose()
        finally:
            await gw.stop()


async def test_shutdown_ends_requests_still_running_after_the_grace_period():
    async with FakeBackend(token_delay_s=0.2) as fake:
        gw = Gateway(fake_config(fake, shutdown_grace_s=0.5))
        await gw.start()
        try:
            async with AsyncClient(gw.url, verify=gw.cafile, timeout=20) as c:
                long = asyncio.create_task(c.request(  # ~10 s
                    "POST", "/v1/chat/completions", {"messages": MESSAGES, "max_tokens": 50}))
                streamed = c.stream_chat(MESSAGES, max_tokens=50).__aiter__()
                first = asyncio.create_task(streamed.__anext__())
                await until(lambda: fake.active == 2, what="both requests at the backend")
                await first
                t0 = time.monotonic()
                await gw.stop()
                assert time.monotonic() - t0 < 2.0
                r = await long
                assert r.status == 503 and r.json()["error"]["code"] == "shutting_down"
                with pytest.raises((StreamResetError, ConnectionLost)):
                    async for _ in streamed:
                        pass
                await until(lambda: fake.active == 0, what="backend requests cancelled")
        finally:
            await gw.stop()



async def test_upstream_pool_never_leaks_connections_on_cancellation():
    # httpx/httpcore leaked a pooled connection for good when a cancellation landed while it
    # closed a response (clients reset streams all the time); with max_connections leaked,
    # every request waited forever. Our pool: cancelled or not, the slot comes back.
    from quicgw.gateway.upstream import Upstream

    async with FakeBackend(token_delay_s=0.02) as fake:
        up = Upstream("fake", fake.url, max_connections=2, timeout_s=5)
        body = json.dumps({"model": "x", "messages": MESSAGES, "max_tokens": 5,
                           "stream": True}).encode()

        async def one(cancel_after: int | None) -> bytes:
            response = await up.open_stream("/v1/chat/completions", body)
            try:
                got = b""
                async for chunk in up.relay(response):
                    got += chunk
                    if cancel_after is not None and got.count(b"data:") >= cancel_after:
                        raise asyncio.CancelledError
                return got
            finally:
                await up.close(response)

        try:
            for i in range(8):  # four times the pool
                if i % 2:
                    with pytest.raises(asyncio.CancelledError):
                        await one(cancel_after=2)  # mid-body: the connection is closed
                else:
                    assert (await one(None)).rstrip().endswith(b"data: [DONE]")
            await until(lambda: fake.cancelled == 4, what="the backend to see the cancels")
            assert up.slots._value == 2  # every slot back
            r = await asyncio.wait_for(up.post("/v1/chat/completions", json.dumps(
                {"model": "x", "messages": MESSAGES, "max_tokens": 1}).encode()), 5)
            assert r.status == 200 and b"t0" in r.body
            assert await up.check(1.0)
        finally:
            await up.aclose()


async def test_upstream_stops_reading_a_fast_backend_for_a_slow_client_then_resumes():
    from quicgw.gateway.upstream import Upstream

    piece = b"data: " + b"x" * 4000 + b"\n\n"

    async def fast_backend(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        for _ in range(300):  # 1.2 MB, as fast as TCP takes it
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    server = await asyncio.start_server(fast_backend, "127.0.0.1", 0)
    up = Upstream("fast", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                  max_connections=1, timeout_s=5)
    try:
        response = await up.open_stream("/v1/chat/completions", b"{}")
        chunks = up.relay(response)
        got = len(await chunks.__anext__())
        await until(lambda: response.conn.paused, what="reading to pause")
        assert response.conn.buffered < 1 << 20  # held back by TCP, not by our memory
        async for chunk in chunks:
            got += len(chunk)
        assert got == 300 * len(piece) and response.complete
        await up.close(response)
    finally:
        await up.aclose()
        server.close()
