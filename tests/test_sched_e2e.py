"""End to end over real loopback sockets: the gateway and the client SDK, both on
ScheduledQuicConnection, with each scheduler: the poster's three request classes as uploads
echoed back, a token stream, a reprioritisation, and no scheduler state left behind."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from fake_backend import FakeBackend

from quicgw.client import AsyncClient
from quicgw.config import parse_config
from quicgw.core.qos import Priority
from quicgw.gateway import Gateway
from quicgw.scheduling import SCHEDULERS, ScheduledQuicConnection

pytestmark = pytest.mark.timeout(120)

# The poster's network experiment: real-time short (8 KB), free-tier short (8 KB) and long
# input (102.4 KB) requests, echoed back.
WORKLOAD = [("realtime", 8_000)] * 6 + [("free", 8_000)] * 6 + [("bulk", 102_400)] * 3


def gateway_config(fake: FakeBackend, scheduler: str):
    return parse_config({
        "gateway": {"host": "127.0.0.1", "port": 0, "health_interval_s": 0.5,
                    "scheduler": scheduler, "echo_endpoint": True},
        "backends": [{"name": "fake", "model": fake.model, "url": fake.url}],
    })


async def settle(predicate, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.02)
    return True


@pytest.mark.parametrize("scheduler", SCHEDULERS)
async def test_gateway_and_sdk_with_each_scheduler(scheduler):
    rng = random.Random(scheduler)
    async with FakeBackend(token_delay_s=0.002) as fake, \
            Gateway(gateway_config(fake, scheduler)) as gw, \
            AsyncClient(gw.url, verify=gw.cafile, scheduler=scheduler) as client:
        bodies = [rng.randbytes(size) for _, size in WORKLOAD]
        responses = await asyncio.gather(*(
            client.request("POST", "/v1/echo", body, traffic_class=cls,
                           headers={"content-type": "application/octet-stream"})
            for (cls, _), body in zip(WORKLOAD, bodies, strict=True)
        ))
        for (cls, _), body, r in zip(WORKLOAD, bodies, responses, strict=True):
            assert r.status == 200, r.content[:200]
            assert r.content == body
            assert r.headers["x-quicgw-class"] == cls

        # A token stream: the response stream turns ready and idle once per token.
        tokens = [t async for t in client.stream_chat(
            [{"role": "user", "content": "hi"}], max_tokens=20, traffic_class="realtime")]
        assert len(tokens) == 20

        # Reprioritise a streamed response mid-way with PRIORITY_UPDATE.
        response = await client.stream("POST", "/v1/echo", b"z" * 50_000, traffic_class="free",
                                       priority=Priority(5))
        response.reprioritise(Priority(4, True))
        assert await response.aread() == b"z" * 50_000

        (server,) = set(gw.h3.connections.values())
        quic = server.quic
        assert isinstance(quic, ScheduledQuicConnection) and quic.scheduler_name == scheduler
        conn = await client._connection()
        assert conn.quic.scheduler_name == scheduler
        # Everything delivered and acknowledged: no request stream left in either scheduler.
        for side in (quic, conn.quic):
            assert await settle(lambda side=side: not [
                sid for sid in side.scheduler._entries if sid % 4 in (0, 1)
            ]), side.scheduler._entries
            assert side.scheduler.ready_count == 0
            assert not side._parked_stream_credit and not side._parked_connection_credit
