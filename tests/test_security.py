"""Tenants bound to classes (issue 8): rate limits (sans-IO buckets, then 429 + Retry-After over
HTTP/3), no self-promotion by deadline, urgency or PRIORITY_UPDATE, keys never in logs or
metrics."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import pytest
from fake_backend import FakeBackend

from quicgw.client import AsyncClient
from quicgw.config import ConfigError, parse_config
from quicgw.core.classes import DEFAULT_CLASS_TABLE
from quicgw.gateway import Gateway
from quicgw.gateway.classify import Classifier
from quicgw.gateway.health import DOWN, UP, HealthState
from quicgw.gateway.http import HTTPError
from quicgw.gateway.ratelimit import RateLimited, RateLimiter, TokenBucket

pytestmark = pytest.mark.timeout(60)

MESSAGES = [{"role": "user", "content": "hello"}]
KEY_A = "sk-tenant-a-0123456789"
KEY_B = "sk-tenant-b-9876543210"


def tenants(**a) -> list[dict]:
    return [{"name": "a", "api_key": KEY_A, "classes": ["free", "bulk"], **a},
            {"name": "b", "api_key_sha256": hashlib.sha256(KEY_B.encode()).hexdigest(),
             "classes": ["free", "bulk"]}]


# -- sans-IO cores ---------------------------------------------------------------------------

def test_token_bucket_bursts_a_minute_then_refills_at_the_rate():
    b = TokenBucket.per_minute(60, now=0.0)  # one a second, burst of 60
    assert all(b.take(1, 0.0) == 0.0 for _ in range(60))
    assert b.take(1, 0.0) == pytest.approx(1.0)  # empty: one more in a second
    assert b.take(1, 0.5) == pytest.approx(0.5)
    assert b.take(1, 1.0) == 0.0
    assert b.take(61, 1000.0) is None  # more than the capacity: never
    assert b.take(30, 1000.0) == 0.0 and b.level == pytest.approx(30)
    b.give_back(100, 1000.0)
    assert b.level == 60  # never above capacity


def test_rate_limiter_per_tenant_requests_and_tokens():
    limiter = RateLimiter({"a": (2, 100), "b": (None, None)}, now=0.0)
    limiter.request("a", 0.0)
    limiter.request("a", 0.0)
    with pytest.raises(RateLimited) as e:
        limiter.request("a", 0.0)
    assert e.value.retry_after_header == b"30" and "2 requests per minute" in str(e.value)
    for _ in range(100):
        limiter.request("b", 0.0)  # no limit
    assert limiter.reserve_tokens("a", 80, 0.0) == 80
    with pytest.raises(RateLimited) as e:
        limiter.reserve_tokens("a", 30, 0.0)
    assert e.value.retry_after_s == pytest.approx(6.0)  # 10 missing at 100/60 a second
    limiter.give_back_tokens("a", 60, 0.0)  # the request used less than it reserved
    assert limiter.reserve_tokens("a", 30, 0.0) == 30
    with pytest.raises(RateLimited) as e:
        limiter.reserve_tokens("a", 500, 0.0)
    assert e.value.retry_after_s is None and e.value.retry_after_header is None
    assert "can never be served" in str(e.value)


def test_health_state_machine_fall_rise_and_passive_down():
    h = HealthState(fall=2, rise=2)
    assert h.probe(False, 1.0) is None and h.healthy  # one failure is not enough
    assert h.probe(True, 2.0) is None
    assert h.probe(False, 3.0) is None
    assert h.request_answered(3.2) is None  # it answered meanwhile: slow probes, not dead
    assert h.probe(False, 3.5) is None
    assert h.probe(False, 4.0) == DOWN and not h.healthy and h.since == 4.0
    assert h.probe(True, 5.0) is None
    assert h.probe(True, 6.0) == UP and h.healthy
    assert h.request_failed(7.0, "connection refused") == DOWN
    assert h.reason == "connection refused"
    assert h.request_failed(7.5, "again") is None
    assert h.request_answered(8.0) == UP and h.healthy  # an answer is proof enough


def _classify(config: dict, headers: dict[str, str], now: float = 100.0):
    return Classifier(parse_config(config)).classify(
        {k.encode(): v.encode() for k, v in headers.items()}, now)


def test_deadline_never_tighter_than_the_class_floor():
    cfg = {"tenants": tenants()}
    free = DEFAULT_CLASS_TABLE["free"]
    auth = {"authorization": f"Bearer {KEY_A}", "x-traffic-class": "free"}
    q = _classify(cfg, {**auth, "x-deadline-ms": "1"})
    assert q.deadline == pytest.approx(100 + free.deadline_ms / 1000)  # clamped
    q = _classify(cfg, {**auth, "x-deadline-ms": "60000"})
    assert q.deadline == pytest.approx(160.0)  # relaxing is always allowed
    # An explicit floor lets clients tighten down to it, no further.
    classes = [{"name": "free", "priority": 1, "deadline_ms": 2000, "min_deadline_ms": 500},
               {"name": "bulk", "priority": 2, "deadline_ms": 7000}]
    cfg = {"classes": classes, "tenants": tenants()}
    assert _classify(cfg, {**auth, "x-deadline-ms": "700"}).deadline == pytest.approx(100.7)
    assert _classify(cfg, {**auth, "x-deadline-ms": "100"}).deadline == pytest.approx(100.5)
    # An open gateway (no tenants, no identities) honours per-request deadlines (netem's
    # experiment sends its own), down to an explicit floor.
    assert _classify({}, {"x-traffic-class": "realtime",
                          "x-deadline-ms": "1000"}).deadline == pytest.approx(101.0)
    assert _classify({"classes": classes}, {"x-traffic-class": "free",
                                            "x-deadline-ms": "10"}).deadline == 100.5
    with pytest.raises(ConfigError, match="min_deadline_ms"):
        parse_config({"classes": [{"name": "x", "priority": 0, "deadline_ms": 100,
                                   "min_deadline_ms": 200}]})


def test_urgency_and_class_cannot_be_raised_by_headers():
    cfg = {"tenants": tenants(on_forbidden_class="downgrade", default_class="bulk")}
    q = _classify(cfg, {"authorization": f"Bearer {KEY_A}", "x-traffic-class": "realtime",
                        "priority": "u=0"})
    assert q.class_name == "bulk"  # downgraded to its default, never promoted
    assert q.priority.urgency == DEFAULT_CLASS_TABLE["bulk"].urgency
    with pytest.raises(HTTPError) as e:
        _classify({"tenants": tenants()}, {"authorization": f"Bearer {KEY_B}",
                                           "x-traffic-class": "realtime"})
    assert e.value.status == 403


# -- over HTTP/3 -------------------------------------------------------------------------------

def _config(fake: FakeBackend, tenant_list: list[dict], **gateway):
    return parse_config({
        "gateway": {"host": "127.0.0.1", "port": 0, **gateway},
        "tenants": tenant_list,
        "backends": [{"name": "fake", "model": fake.model, "url": fake.url, "max_batch": 1}],
    })


async def test_rate_limits_answer_429_with_retry_after_per_tenant():
    tl = tenants(requests_per_minute=3, tokens_per_minute=2000)
    async with FakeBackend() as fake, Gateway(_config(fake, tl)) as gw:
        async with AsyncClient(gw.url, verify=gw.cafile, api_key=KEY_A) as a, \
                AsyncClient(gw.url, verify=gw.cafile, api_key=KEY_B) as b:
            for _ in range(3):
                assert (await a.chat(MESSAGES, max_tokens=2)).status == 200
            r = await a.request("POST", "/v1/chat/completions",
                                {"messages": MESSAGES, "max_tokens": 2})
            assert r.status == 429 and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "requests_per_minute_exceeded"
            assert (await b.chat(MESSAGES, max_tokens=2)).status == 200  # b is not limited
        tl = tenants(tokens_per_minute=100)
        async with Gateway(_config(fake, tl)) as gw2, \
                AsyncClient(gw2.url, verify=gw2.cafile, api_key=KEY_A) as a:
            r = await a.request("POST", "/v1/chat/completions",
                                {"messages": MESSAGES, "max_tokens": 5000})
            assert r.status == 429 and "can never be served" in r.json()["error"]["message"]
            assert (await a.chat(MESSAGES, max_tokens=40)).status == 200
            r = await a.request("POST", "/v1/chat/completions",
                                {"messages": MESSAGES, "max_tokens": 70})
            assert r.status == 429 and "retry-after" in r.headers
            assert r.json()["error"]["code"] == "tokens_per_minute_exceeded"


async def test_tighter_deadline_does_not_jump_the_queue():
    # One slot, busy. Tenant a queues a free request; then tenant b queues another free one
    # asking for a 1 ms deadline. Clamped to the class deadline, b stays behind a.
    async with FakeBackend(token_delay_s=0.1) as fake, Gateway(_config(fake, tenants())) as gw:
        async with AsyncClient(gw.url, verify=gw.cafile, api_key=KEY_A) as a, \
                AsyncClient(gw.url, verify=gw.cafile, api_key=KEY_B) as b:
            blocker = asyncio.create_task(a.chat([{"role": "user", "content": "blocker"}],
                                                 max_tokens=4, traffic_class="free"))
            while not fake.received:
                await asyncio.sleep(0.01)
            first = asyncio.create_task(a.chat([{"role": "user", "content": "a"}],
                                               max_tokens=1, traffic_class="free"))
            while not gw.app.instances[0].load.queued:
                await asyncio.sleep(0.01)
            second = asyncio.create_task(b.chat([{"role": "user", "content": "b"}],
                                                max_tokens=1, traffic_class="free",
                                                deadline_ms=1, priority="u=0"))
            r_b = await second
            await asyncio.gather(blocker, first)
            assert [d["messages"][0]["content"] for d in fake.received] == ["blocker", "a", "b"]
            free = DEFAULT_CLASS_TABLE["free"]
            assert r_b.headers["x-quicgw-deadline-ms"] == str(int(free.deadline_ms))
            assert r_b.headers["x-quicgw-urgency"] == str(free.urgency)


async def test_api_keys_never_appear_in_logs_metrics_or_errors(caplog):
    caplog.set_level(logging.DEBUG)
    wrong = "sk-wrong-key-should-not-leak-42"
    async with FakeBackend() as fake, Gateway(_config(fake, tenants())) as gw:
        async with AsyncClient(gw.url, verify=gw.cafile, api_key=KEY_A) as a:
            assert (await a.chat(MESSAGES, max_tokens=1)).status == 200
            bodies = [(await a.request("GET", path)).content
                      for path in ("/healthz", "/v1/models", "/metrics")]
        async with AsyncClient(gw.url, verify=gw.cafile, api_key=wrong) as bad:
            r = await bad.request("POST", "/v1/chat/completions", {"messages": MESSAGES})
            assert r.status == 401
            bodies.append(r.content)
        config_text = repr(gw.config) + str(gw.config.tenants)
    logs = "\n".join(f"{rec.getMessage()} {rec.args}" for rec in caplog.records)
    for secret in (KEY_A, KEY_B, wrong):
        assert secret not in logs and secret not in config_text
        assert all(secret.encode() not in body for body in bodies)
    try:
        parse_config({"tenants": [{"name": "x", "api_key": KEY_A, "classes": ["nope"]}]})
    except ConfigError as e:
        assert KEY_A not in str(e)


def test_anonymous_users_share_the_anonymous_limits():
    from quicgw.gateway.app import GatewayApp

    app = GatewayApp(parse_config({
        "gateway": {"anonymous_class": "bulk", "anonymous_requests_per_minute": 2},
        "tenants": tenants(),
    }), clock=lambda: 5.0)
    statuses = [app.open("POST", "/v1/chat/completions", {}).error for _ in range(3)]
    assert statuses[0] is None and statuses[1] is None
    assert statuses[2].status == 429 and (b"retry-after", b"30") in statuses[2].headers
    keyed = app.open("POST", "/v1/chat/completions",
                     {b"authorization": f"Bearer {KEY_A}".encode()})
    assert keyed.error is None  # tenants have their own buckets
