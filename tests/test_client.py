"""The client SDK against a real gateway on loopback: the sync wrapper, timeouts that cancel
the request upstream, TLS verification options, per-request priority, reconnection."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fake_backend import FakeBackend

from quicgw.client import AsyncClient, Client, RequestTimeout
from quicgw.config import parse_config
from quicgw.gateway import Gateway

pytestmark = pytest.mark.timeout(60)

MESSAGES = [{"role": "user", "content": "hello"}]


def _config(fake: FakeBackend, **gateway):
    return parse_config({
        "gateway": {"host": "127.0.0.1", "port": 0, **gateway},
        "backends": [{"name": "fake", "model": fake.model, "url": fake.url}],
    })


async def test_timeout_cancels_the_request_at_the_backend():
    async with FakeBackend(token_delay_s=0.5) as fake, Gateway(_config(fake)) as gw, \
            AsyncClient(gw.url, verify=gw.cafile) as c:
        with pytest.raises(RequestTimeout):
            await c.chat(MESSAGES, max_tokens=20, timeout=0.3)
        for _ in range(100):  # the reset reaches the gateway, which cancels upstream
            if fake.cancelled:
                break
            await asyncio.sleep(0.02)
        assert fake.cancelled == 1 and fake.active == 0
        with pytest.raises(RequestTimeout):
            async for _ in c.stream_chat(MESSAGES, max_tokens=20, timeout=0.3):
                pass
        r = await c.chat(MESSAGES, max_tokens=1)  # the connection is still good
        assert r.status == 200
        assert gw.app.instances[0].load.in_flight <= 1


async def test_tls_verification_options():
    async with FakeBackend() as fake, Gateway(_config(fake)) as gw:
        async with AsyncClient(gw.url, verify=False) as c:  # development only
            assert (await c.request("GET", "/healthz")).status == 200
        strict = AsyncClient(gw.url, verify=True, connect_timeout=5)  # system CAs: refused
        with pytest.raises(ConnectionError):
            await strict.connect()
        await strict.aclose()
        wrong_name = AsyncClient(host="127.0.0.1", port=gw.port, verify=gw.cafile,
                                 server_name="not-this-host.example", connect_timeout=5)
        with pytest.raises(ConnectionError):
            await wrong_name.connect()
        await wrong_name.aclose()


async def test_client_reconnects_after_the_connection_closes():
    async with FakeBackend() as fake, Gateway(_config(fake)) as gw:
        c = AsyncClient(gw.url, verify=gw.cafile)
        assert (await c.chat(MESSAGES, max_tokens=1)).status == 200
        first = c.connection
        await first.aclose()
        assert (await c.chat(MESSAGES, max_tokens=1)).status == 200
        assert c.connection is not first
        await c.aclose()


def test_sync_client():
    ready = threading.Event()
    stop: asyncio.Event | None = None
    info = {}

    async def serve():
        nonlocal stop
        stop = asyncio.Event()
        async with FakeBackend() as fake, Gateway(_config(fake)) as gw:
            info.update(url=gw.url, cafile=gw.cafile)
            ready.set()
            await stop.wait()

    loop = asyncio.new_event_loop()
    server = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    server.start()
    try:
        assert ready.wait(30)
        with Client(info["url"], verify=info["cafile"], timeout=20) as c:
            r = c.chat(MESSAGES, max_tokens=3, traffic_class="realtime", priority="u=2, i")
            assert r.status == 200 and r.headers["x-quicgw-urgency"] == "2"
            assert list(c.stream_chat(MESSAGES, max_tokens=4)) == ["t0 ", "t1 ", "t2 ", "t3 "]
            assert c.completions("x", max_tokens=2).json()["choices"][0]["text"] == "t0 t1 "
            assert c.request("GET", "/v1/models").status == 200
    finally:
        loop.call_soon_threadsafe(stop.set)
        server.join(30)
        loop.close()
