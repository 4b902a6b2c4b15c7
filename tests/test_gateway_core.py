"""The gateway's sans-IO parts without sockets: classification, admission order, body
validation, the SSE parser, development certificates."""

import pytest
from cryptography import x509

from quicgw.client.sse import SSEParser
from quicgw.config import parse_config
from quicgw.core.classes import DEFAULT_CLASS_TABLE
from quicgw.core.qos import RequestQoS
from quicgw.core.routing import InstanceLoad
from quicgw.gateway.admission import ADMITTED, CANCELLED, WAITING, AdmissionQueue
from quicgw.gateway.app import parse_body
from quicgw.gateway.classify import Classifier
from quicgw.gateway.http import HTTPError
from quicgw.tls import dev_certificate

TENANTS = {
    "gateway": {"anonymous_class": None},
    "tenants": [
        {"name": "app", "api_key": "sk-test-interactive", "classes": ["realtime", "free"],
         "default_class": "realtime"},
        {"name": "batch", "api_key": "sk-test-batch", "classes": ["bulk", "free"],
         "default_class": "bulk", "on_forbidden_class": "downgrade"},
    ],
}


def _classify(headers: dict[str, str], config=TENANTS, now: float = 100.0) -> RequestQoS:
    c = Classifier(parse_config(config))
    return c.classify({k.encode(): v.encode() for k, v in headers.items()}, now)


def _status(headers: dict[str, str], config=TENANTS) -> int:
    with pytest.raises(HTTPError) as e:
        _classify(headers, config)
    return e.value.status


def test_tenant_key_gives_default_class_and_its_deadline():
    q = _classify({"authorization": "Bearer sk-test-interactive"})
    assert (q.class_name, q.tenant) == ("realtime", "app")
    assert q.deadline == pytest.approx(100.0 + DEFAULT_CLASS_TABLE["realtime"].deadline_ms / 1e3)
    assert q.priority.urgency == DEFAULT_CLASS_TABLE["realtime"].urgency
    q = _classify({"authorization": "Bearer sk-test-batch"})
    assert (q.class_name, q.tenant) == ("bulk", "batch")


def test_header_class_deadline_and_errors():
    q = _classify({"authorization": "Bearer sk-test-interactive", "x-traffic-class": "free",
                   "x-deadline-ms": "2500"})
    assert q.class_name == "free" and q.deadline == pytest.approx(102.5)
    # Tighter than the class deadline: clamped to it (no self-promotion; issue 8).
    q = _classify({"authorization": "Bearer sk-test-interactive", "x-traffic-class": "free",
                   "x-deadline-ms": "250"})
    assert q.deadline == pytest.approx(100.0 + DEFAULT_CLASS_TABLE["free"].deadline_ms / 1e3)
    assert _status({}) == 401  # no key, no anonymous class
    assert _status({"authorization": "Bearer sk-wrong-key"}) == 401
    assert _status({"authorization": "Basic abc"}) == 401
    assert _status({"authorization": "Bearer sk-test-interactive",
                    "x-traffic-class": "bulk"}) == 403
    assert _status({"authorization": "Bearer sk-test-interactive",
                    "x-traffic-class": "gold"}) == 400
    for bad in ("0", "-5", "nan", "inf", "soon", "1e12"):
        assert _status({"authorization": "Bearer sk-test-interactive",
                        "x-deadline-ms": bad}) == 400
    # A downgrading tenant asking for a class it may not use gets its default instead.
    q = _classify({"authorization": "Bearer sk-test-batch", "x-traffic-class": "realtime"})
    assert q.class_name == "bulk"


def test_priority_can_lower_but_never_raise_urgency():
    key = {"authorization": "Bearer sk-test-interactive", "x-traffic-class": "free"}
    free_urgency = DEFAULT_CLASS_TABLE["free"].urgency
    q = _classify({**key, "priority": "u=0, i"})
    assert q.priority.urgency == free_urgency and q.priority.incremental
    assert _classify({**key, "priority": "u=6"}).priority.urgency == 6
    assert _classify({**key, "priority": "u=9"}).priority.urgency == free_urgency  # ignored
    assert _classify({**key, "priority": "garbage=("}).priority.urgency == free_urgency


def test_anonymous_and_open_gateways():
    anon = {**TENANTS, "gateway": {"anonymous_class": "free"}}
    assert _classify({}, anon).class_name == "free"
    assert _classify({"x-traffic-class": "realtime"}, anon).class_name == "free"  # downgraded
    open_gateway = {}
    q = _classify({}, open_gateway)
    assert (q.class_name, q.tenant) == ("bulk", "anonymous")  # least urgent by default
    assert _classify({"x-traffic-class": "realtime"}, open_gateway).class_name == "realtime"


def test_admission_orders_by_class_then_deadline_then_arrival():
    load = InstanceLoad()
    q = AdmissionQueue(2, load)
    a, b = q.submit((1, 5.0, 0.0)), q.submit((2, 9.0, 0.1))
    assert a.state == b.state == ADMITTED and load.in_flight == 2
    bulk = q.submit((2, 3.0, 0.2))
    free_late = q.submit((1, 8.0, 0.3))
    free_early = q.submit((1, 4.0, 0.4))
    rt = q.submit((0, 9.0, 0.5))
    assert load.queued == 4 and all(t.state == WAITING for t in (bulk, free_late, rt))
    assert q.waiting() == [rt, free_early, free_late, bulk]
    assert q.release(free_late) == [] and free_late.state == CANCELLED and load.queued == 3
    assert q.release(a) == [rt]
    assert q.release(b) == [free_early]
    assert q.release(b) == []  # twice: harmless
    assert (load.in_flight, load.queued) == (2, 1)
    assert q.release(rt) == [bulk] and (load.in_flight, load.queued) == (2, 0)


def test_body_validation_messages():
    ok = parse_body("chat", b'{"messages": [{"role": "user", "content": "hello there"}]}', 99)
    assert ok.model == "auto" and ok.output_tokens == 99 and not ok.max_tokens_given
    assert ok.input_tokens > 0
    assert parse_body("completions", b'{"prompt": [1, 2, 3], "max_tokens": 7}', 9).input_tokens == 3
    cases = {
        b"{not json": "not valid JSON",
        b"[1, 2]": "JSON object",
        b'{"messages": []}': "'messages'",
        b'{"messages": [{"content": "x"}]}': "messages[0]",
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}': "'max_tokens'",
        b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}': "'stream'",
        b'{"messages": [{"role": "user", "content": "x"}], "model": 5}': "'model'",
    }
    for body, needle in cases.items():
        with pytest.raises(HTTPError) as e:
            parse_body("chat", body, 16)
        assert e.value.status == 400 and needle in e.value.message, body
    with pytest.raises(HTTPError):
        parse_body("completions", b'{"prompt": {"a": 1}}', 16)


def test_sse_parser_reassembles_split_events():
    p = SSEParser()
    stream = b'data: {"a": 1}\r\n\r\n: comment\n\ndata: line1\ndata: line2\n\nevent: x\ndata: [DONE]\n\n'
    events = []
    for i in range(len(stream)):  # one byte at a time: the worst split
        events += p.feed(stream[i:i + 1])
    assert events == ['{"a": 1}', "line1\nline2", "[DONE]"]


def test_dev_certificate_is_cached_and_signed_by_its_ca(tmp_path):
    files = dev_certificate(tmp_path)
    assert dev_certificate(tmp_path) == files  # second call: the cached set
    cert = x509.load_pem_x509_certificate(open(files.certfile, "rb").read())
    ca = x509.load_pem_x509_certificate(open(files.cafile, "rb").read())
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)


def test_router_latency_model_follows_the_backend_time_scale():
    from quicgw.core.catalog import latency_model
    from quicgw.gateway.app import GatewayApp

    config = parse_config({"backends": [{"name": "fast", "model": "llama-3.2-1b",
                                         "url": "http://127.0.0.1:9", "time_scale": 10}]})
    info = GatewayApp(config).instances[0].info
    base = latency_model("llama-3.2-1b", "a100-80gb")
    assert info.latency.decode_base_s == pytest.approx(base.decode_base_s / 10)
    assert info.latency.max_batch == base.max_batch
