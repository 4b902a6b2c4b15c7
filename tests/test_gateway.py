"""The gateway over real loopback sockets: HTTP/3 through the gateway to emulated backends and
back, the TLS/TCP listener (HTTP/1.1, HTTP/2, Alt-Svc), an independent HTTP/3 client,
classification, admission order and upstream failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time

import httpx
import pytest
from fake_backend import FakeBackend

from quicgw.backends.emulated import EmulatedBackend
from quicgw.client import APIError, AsyncClient
from quicgw.config import parse_config
from quicgw.core.classes import DEFAULT_CLASS_TABLE
from quicgw.gateway import Gateway

pytestmark = pytest.mark.timeout(60)

MESSAGES = [{"role": "user", "content": "Say something short."}]
TENANTS = [
    {"name": "app", "api_key": "sk-test-interactive", "classes": ["realtime", "free"],
     "default_class": "realtime"},
    {"name": "batch", "api_key": "sk-test-batch", "classes": ["bulk", "free"],
     "default_class": "bulk", "on_forbidden_class": "downgrade"},
]


def make_config(backends: list[dict], tenants: list[dict] | None = None, **gateway):
    return parse_config({
        "gateway": {"host": "127.0.0.1", "port": 0, "health_interval_s": 0.5, **gateway},
        "tenants": tenants or [],
        "backends": backends,
    })


@contextlib.asynccontextmanager
async def emulated_gateway(models=("llama-3.2-1b",), *, time_scale: float = 20.0,
                           max_batch: int | None = None, tenants=None, **gateway):
    async with contextlib.AsyncExitStack() as stack:
        backends = []
        for i, model in enumerate(models):
            b = await stack.enter_async_context(EmulatedBackend(
                model, "a100-80gb", port=0, time_scale=time_scale, max_batch=max_batch,
                queue_policy="priority"))
            backends.append({"name": f"b{i}", "model": model, "url": b.url,
                             "max_batch": max_batch})
        gw = await stack.enter_async_context(Gateway(make_config(backends, tenants, **gateway)))
        yield gw


@contextlib.asynccontextmanager
async def fake_gateway(fake: FakeBackend, *, max_batch: int | None = None, **gateway):
    cfg = make_config([{"name": "fake", "model": fake.model, "url": fake.url,
                        "max_batch": max_batch}], **gateway)
    async with Gateway(cfg) as gw:
        yield gw


async def test_h3_chat_through_gateway_to_emulated_backend():
    async with emulated_gateway() as gw, AsyncClient(gw.url, verify=gw.cafile) as client:
        r = await client.chat(MESSAGES, max_tokens=12, traffic_class="realtime")
        body = r.json()
        assert r.status == 200 and body["object"] == "chat.completion"
        assert body["usage"]["completion_tokens"] == 12
        assert body["choices"][0]["message"]["content"]
        assert r.headers["x-quicgw-model"] == "llama-3.2-1b"
        assert r.headers["x-quicgw-class"] == "realtime"
        t = r.timing
        assert t.started <= t.sent <= t.headers <= t.completed

        tokens = client.stream_chat(MESSAGES, max_tokens=9, traffic_class="free")
        received = [tok async for tok in tokens]
        assert len(received) == 9 and all(received)
        assert tokens.finish_reason == "length"
        assert tokens.response.headers["content-type"].startswith("text/event-stream")

        c = await client.completions("Once upon a time", max_tokens=5, traffic_class="free")
        assert c.json()["choices"][0]["text"]
        streamed = [t async for t in client.stream_completions("Hello", max_tokens=4)]
        assert len(streamed) == 4


async def test_tokens_are_relayed_as_they_arrive():
    # 8 tokens at ~40 ms each (Llama-8B emulated 4x slower than real time): the first must
    # reach the client long before the last, i.e. the gateway does not buffer the stream.
    async with emulated_gateway(("llama-3.1-8b",), time_scale=0.25) as gw, \
            AsyncClient(gw.url, verify=gw.cafile) as client:
        arrivals = []
        async for _ in client.stream_chat(MESSAGES, max_tokens=8):
            arrivals.append(time.monotonic())
        assert len(arrivals) == 8
        assert arrivals[-1] - arrivals[0] > 0.1


async def test_100_concurrent_requests_on_one_connection():
    async with emulated_gateway(("llama-3.2-1b", "llama-3.1-8b")) as gw, \
            AsyncClient(gw.url, verify=gw.cafile) as client:
        classes = ["realtime", "free", "bulk"]
        results = await asyncio.gather(*(
            client.chat([{"role": "user", "content": f"request {i}"}], max_tokens=4,
                        traffic_class=classes[i % 3])
            for i in range(100)))
        assert [r.status for r in results] == [200] * 100
        assert len({r.stream_id for r in results}) == 100
        assert [r.headers["x-quicgw-class"] for r in results] == [classes[i % 3]
                                                                  for i in range(100)]
        assert gw.h3.connection_count == 1
        # jsq spread the load over both instances
        assert {r.headers["x-quicgw-instance"] for r in results} == {"b0", "b1"}


async def test_tls_tcp_listener_http1_http2_and_alt_svc():
    async with emulated_gateway() as gw:
        for http2, version in ((False, "HTTP/1.1"), (True, "HTTP/2")):
            tls = ssl.create_default_context(cafile=gw.cafile)
            async with httpx.AsyncClient(verify=tls, http2=http2, timeout=20) as h:
                r = await h.post(f"{gw.url}/v1/chat/completions",
                                 json={"messages": MESSAGES, "max_tokens": 3},
                                 headers={"x-traffic-class": "free"})
                assert r.http_version == version and r.status_code == 200
                assert r.json()["usage"]["completion_tokens"] == 3
                assert r.headers["alt-svc"] == f'h3=":{gw.port}"; ma=86400'
                assert r.headers["x-quicgw-class"] == "free"
                models = (await h.get(f"{gw.url}/v1/models")).json()
                assert {m["id"] for m in models["data"]} == {"auto", "llama-3.2-1b"}
                health = (await h.get(f"{gw.url}/healthz")).json()
                assert health["status"] == "ok" and health["instances"][0]["healthy"]
                async with h.stream("POST", f"{gw.url}/v1/chat/completions",
                                    json={"messages": MESSAGES, "max_tokens": 5,
                                          "stream": True}) as s:
                    lines = [line async for line in s.aiter_lines() if line.startswith("data:")]
                assert lines[-1] == "data: [DONE]"


def _niquests_h3(url: str, cafile: str) -> tuple[str, int, dict]:
    import niquests

    with niquests.Session(disable_http1=True, disable_http2=True) as s:
        r = s.post(f"{url}/v1/chat/completions", verify=cafile, timeout=20,
                   json={"messages": MESSAGES, "max_tokens": 6},
                   headers={"x-traffic-class": "realtime"})
        return r.http_version, r.status_code, r.json()


def _niquests_alt_svc(url: str, cafile: str) -> list[int]:
    import niquests

    with niquests.Session() as s:  # starts on TCP, follows Alt-Svc to HTTP/3
        return [s.get(f"{url}/v1/models", verify=cafile, timeout=20).http_version
                for _ in range(3)]


async def test_independent_http3_client_niquests():
    async with emulated_gateway() as gw:
        version, status, body = await asyncio.to_thread(_niquests_h3, gw.url, gw.cafile)
        assert (version, status) == (30, 200)
        assert body["usage"]["completion_tokens"] == 6
        versions = await asyncio.to_thread(_niquests_alt_svc, gw.url, gw.cafile)
        assert versions[0] in (11, 20) and versions[-1] == 30


async def test_classification_from_key_and_headers_over_h3():
    async with emulated_gateway(tenants=TENANTS, echo_endpoint=True) as gw:
        async with AsyncClient(gw.url, verify=gw.cafile, api_key="sk-test-interactive") as c:
            r = await c.chat(MESSAGES, max_tokens=2)
            assert r.headers["x-quicgw-class"] == "realtime"
            r = await c.chat(MESSAGES, max_tokens=2, traffic_class="free", priority="u=0")
            assert r.headers["x-quicgw-class"] == "free"
            assert r.headers["x-quicgw-urgency"] == str(DEFAULT_CLASS_TABLE["free"].urgency)
            with pytest.raises(APIError) as e:
                await c.chat(MESSAGES, max_tokens=2, traffic_class="bulk")
            assert e.value.status == 403
            with pytest.raises(APIError) as e:
                await c.chat(MESSAGES, max_tokens=2, deadline_ms=-1)
            assert e.value.status == 400 and "x-deadline-ms" in e.value.message
            payload = bytes(range(256)) * 32  # 8 KB, as the network experiments send
            echo = await c.request("POST", "/v1/echo", payload, traffic_class="free",
                                   deadline_ms=1000)
            assert echo.status == 200 and echo.content == payload
            assert echo.headers["x-quicgw-class"] == "free"
        async with AsyncClient(gw.url, verify=gw.cafile, api_key="sk-test-batch") as c:
            r = await c.chat(MESSAGES, max_tokens=2, traffic_class="realtime")
            assert r.headers["x-quicgw-class"] == "bulk"  # downgraded, never promoted
        async with AsyncClient(gw.url, verify=gw.cafile, api_key="sk-not-a-key") as c:
            r = await c.request("POST", "/v1/chat/completions", {"messages": MESSAGES})
            assert r.status == 401 and r.json()["error"]["code"] == "invalid_api_key"
        async with AsyncClient(gw.url, verify=gw.cafile) as c:
            r = await c.request("POST", "/v1/chat/completions", {"messages": MESSAGES})
            assert r.status == 401


async def test_bad_requests_get_clear_errors_and_serving_continues():
    async with emulated_gateway(max_body_bytes=4096) as gw, \
            AsyncClient(gw.url, verify=gw.cafile) as c:
        r = await c.request("POST", "/v1/chat/completions", b"{broken",
                            {"content-type": "application/json"})
        assert r.status == 400 and "not valid JSON" in r.json()["error"]["message"]
        r = await c.request("POST", "/v1/chat/completions",
                            {"model": "gpt-17", "messages": MESSAGES})
        assert r.status == 404 and r.json()["error"]["code"] == "model_not_found"
        r = await c.request("POST", "/v1/chat/completions",
                            {"messages": [{"role": "user", "content": "x" * 5000}]})
        assert r.status == 413
        r = await c.request("GET", "/v1/chat/completions")
        assert r.status == 405 and r.headers["allow"] == "POST"
        r = await c.request("POST", "/v1/echo", b"x")
        assert r.status == 404  # echo is off unless gateway.echo_endpoint
        r = await c.request("GET", "/nowhere")
        assert r.status == 404
        ok = await c.chat(MESSAGES, max_tokens=2, model="small")
        assert ok.headers["x-quicgw-model"] == "llama-3.2-1b"


async def test_admission_serves_by_class_priority_with_batch_cap():
    # One slot: a blocker runs while bulk, free and realtime requests queue (in that arrival
    # order); they must reach the backend as realtime, free, bulk.
    async with FakeBackend(token_delay_s=0.1) as fake, fake_gateway(fake, max_batch=1) as gw, \
            AsyncClient(gw.url, verify=gw.cafile) as c:
        blocker = asyncio.create_task(c.chat([{"role": "user", "content": "blocker"}],
                                             max_tokens=5))
        while not fake.received:
            await asyncio.sleep(0.01)
        tasks = []
        for cls in ("bulk", "free", "realtime"):
            tasks.append(asyncio.create_task(
                c.chat([{"role": "user", "content": cls}], max_tokens=1, traffic_class=cls)))
            await asyncio.sleep(0.05)
        await asyncio.gather(blocker, *tasks)
        order = [d["messages"][0]["content"] for d in fake.received]
        assert order == ["blocker", "realtime", "free", "bulk"]
        assert fake.max_active == 1
        # vLLM's priority field carries the class priority; the model is the served name.
        prio = {d["messages"][0]["content"]: d["priority"] for d in fake.received}
        assert prio == {"blocker": 2, "realtime": 0, "free": 1, "bulk": 2}
        assert {d["model"] for d in fake.received} == {"llama-3.1-8b"}


async def test_backend_dying_mid_stream_is_an_explicit_error():
    async with FakeBackend(token_delay_s=0.01, die_after_tokens=3) as fake, \
            fake_gateway(fake) as gw, AsyncClient(gw.url, verify=gw.cafile, timeout=10) as c:
        got = []
        t0 = time.monotonic()
        with pytest.raises(APIError) as e:
            async for tok in c.stream_chat(MESSAGES, max_tokens=10):
                got.append(tok)
        assert time.monotonic() - t0 < 2.0
        assert e.value.status == 502 and len(got) == 3
        r = await c.chat(MESSAGES, max_tokens=2)  # the gateway keeps serving
        assert r.status == 200


async def test_unreachable_backend_is_a_502_not_a_hang():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    cfg = make_config([{"name": "dead", "model": "llama-3.1-8b", "url": dead}])
    async with Gateway(cfg) as gw, AsyncClient(gw.url, verify=gw.cafile, timeout=10) as c:
        t0 = time.monotonic()
        r = await c.request("POST", "/v1/chat/completions", {"messages": MESSAGES})
        assert r.status == 502 and "unreachable" in r.json()["error"]["message"]
        r = await c.request("POST", "/v1/chat/completions", {"messages": MESSAGES})
        assert r.status == 503  # marked down: no instance left
        assert time.monotonic() - t0 < 5.0
        health = json.loads((await c.request("GET", "/healthz")).content)
        assert health["instances"][0]["healthy"] is False


async def test_priority_update_is_applied_but_never_above_the_class():
    async with FakeBackend(token_delay_s=0.05) as fake, fake_gateway(fake) as gw, \
            AsyncClient(gw.url, verify=gw.cafile) as c:
        free = DEFAULT_CLASS_TABLE["free"].urgency
        r = await c.stream("POST", "/v1/chat/completions",
                           {"messages": MESSAGES, "max_tokens": 30, "stream": True},
                           traffic_class="free", priority="u=5")
        (server,) = set(gw.h3.connections.values())

        async def urgency_becomes(value: int) -> bool:
            for _ in range(100):
                qos = server.quic.stream_qos.get(r.stream_id)
                if qos is not None and qos.priority.urgency == value:
                    return True
                await asyncio.sleep(0.01)
            return False

        assert await urgency_becomes(5)
        r.reprioritise("u=6")
        assert await urgency_becomes(6)
        r.reprioritise("u=0, i")  # asks for more than the class allows: clamped
        assert await urgency_becomes(free)
        assert server.quic.stream_qos[r.stream_id].priority.incremental
        body = await r.aread()
        assert body.endswith(b"data: [DONE]\n\n")


async def test_tcp_client_disconnect_cancels_the_upstream_request():
    async with FakeBackend(token_delay_s=0.5) as fake, fake_gateway(fake) as gw:
        tls = ssl.create_default_context(cafile=gw.cafile)
        async with httpx.AsyncClient(verify=tls, http2=True) as h:
            with pytest.raises(httpx.ReadTimeout):
                await h.post(f"{gw.url}/v1/chat/completions", timeout=0.3,
                             json={"messages": MESSAGES, "max_tokens": 20})
        for _ in range(100):
            if fake.cancelled and not gw.app.instances[0].load.in_flight:
                break
            await asyncio.sleep(0.02)
        assert fake.cancelled == 1 and gw.app.instances[0].load.in_flight == 0
