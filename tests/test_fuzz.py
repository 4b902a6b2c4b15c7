"""Property-based fuzzing (hypothesis, seeded by its database-free default profile here): request
parsing, priority parsing, classification, the application's request entry point and config
loading never fail other than with their documented, explicit errors."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicgw.config import ConfigError, load_config, parse_config
from quicgw.core.classes import DEFAULT_CLASS_TABLE
from quicgw.core.qos import Priority, parse_priority
from quicgw.gateway.app import GatewayApp, parse_body
from quicgw.gateway.classify import Classifier
from quicgw.gateway.http import HTTPError
from quicgw.gateway.ratelimit import TokenBucket

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
keys = st.sampled_from(["model", "messages", "prompt", "stream", "max_tokens",
                        "max_completion_tokens", "role", "content", "temperature"])
bodies = st.dictionaries(keys, json_values, max_size=6)
parts = st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", 1])},
                                       optional={"text": json_values}) | json_values, max_size=3)
messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]),
     "content": st.text(max_size=40) | parts | json_values}),
    min_size=1, max_size=3)


@FUZZ
@given(st.binary(max_size=200))
def test_parse_body_bytes(raw):
    for endpoint in ("chat", "completions"):
        try:
            parsed = parse_body(endpoint, raw, 16)
        except HTTPError as e:
            assert e.status == 400 and e.message
        else:
            assert parsed.input_tokens >= 0 and parsed.output_tokens >= 1


@settings(FUZZ, max_examples=150)
@given(bodies, messages)
def test_parse_body_json(body, msgs):
    for endpoint, extra in (("chat", {"messages": msgs}), ("completions", {"prompt": "x"})):
        for data in (body, {**extra, **body}, {**body, **extra}):
            try:
                parsed = parse_body(endpoint, json.dumps(data).encode(), 16)
            except HTTPError as e:
                assert e.status == 400 and e.message
            else:
                assert isinstance(parsed.model, str) and parsed.model
                assert isinstance(parsed.stream, bool) and parsed.output_tokens >= 1


@FUZZ
@given(st.binary(max_size=60) | st.text(max_size=60).map(str.encode),
       st.integers(0, 7), st.booleans())
def test_parse_priority_never_fails_and_stays_in_range(raw, u, i):
    base = Priority(u, i)
    p = parse_priority(raw, base)
    assert 0 <= p.urgency <= 7 and isinstance(p.incremental, bool)
    assert parse_priority(Priority(u, i).header_value()) == Priority(u, i)


CLASSIFIER_CONFIG = parse_config({
    "gateway": {"anonymous_class": "bulk"},
    "tenants": [{"name": "t", "api_key": "sk-fuzz-key-123", "classes": ["free", "bulk"],
                 "on_forbidden_class": "downgrade"}],
})
header_names = st.sampled_from([b"authorization", b"x-traffic-class", b"x-deadline-ms",
                                b"priority", b"x-task", b"content-type"])
header_values = (st.binary(max_size=30)
                 | st.sampled_from([b"Bearer sk-fuzz-key-123", b"realtime", b"free", b"1",
                                    b"-5", b"1e309", b"nan", b"u=0, i", b"u=9"]))


@FUZZ
@given(st.dictionaries(header_names, header_values, max_size=6))
def test_classification_errors_are_explicit_and_never_promote(headers):
    classifier = Classifier(CLASSIFIER_CONFIG)
    try:
        qos = classifier.classify(headers, now=50.0)
    except HTTPError as e:
        assert e.status in (400, 401, 403) and e.message
        return
    assert qos.class_name in ("free", "bulk")  # realtime is never reachable
    tc = qos.traffic_class
    assert qos.priority.urgency >= tc.urgency
    assert qos.deadline - 50.0 >= tc.deadline_ms / 1000.0 - 1e-9


APP = GatewayApp(parse_config({
    "gateway": {"echo_endpoint": True},
    "backends": [{"name": "b", "model": "llama-3.1-8b", "url": "http://127.0.0.1:9"}],
}))


@FUZZ
@given(st.sampled_from(["GET", "POST", "HEAD", "PUT", "", "\x00"]) | st.text(max_size=8),
       st.sampled_from(["/v1/chat/completions", "/v1/echo", "/healthz", "/v1/models"])
       | st.text(max_size=30),
       st.dictionaries(header_names, header_values, max_size=5))
def test_gateway_open_never_raises(method, path, headers):
    ex = APP.open(method, path, headers, now=10.0)
    assert (ex.error is None) != (ex.error is not None and ex.error.status >= 400)
    if ex.error is not None:
        assert json.loads(ex.error.body)["error"]["message"]


scalar = st.none() | st.booleans() | st.integers(-10, 10**6) | st.floats() | st.text(max_size=12)
config_trees = st.recursive(
    scalar, lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(string.ascii_lowercase + "_", max_size=14), children, max_size=4),
    max_leaves=15)
sections = st.fixed_dictionaries({}, optional={
    "gateway": st.dictionaries(st.sampled_from(
        ["host", "port", "scheduler", "max_body_bytes", "anonymous_class", "health_fall",
         "deadline_timeout_factor", "stream_buffer_bytes", "bogus"]), scalar, max_size=4),
    "tenants": st.lists(st.dictionaries(st.sampled_from(
        ["name", "api_key", "classes", "requests_per_minute", "on_forbidden_class"]),
        scalar | st.just(["free"]) | st.just("sk-secret-fuzz-key"), max_size=5), max_size=2),
    "classes": st.lists(st.dictionaries(st.sampled_from(
        ["name", "priority", "deadline_ms", "min_deadline_ms", "urgency"]), scalar,
        max_size=5), max_size=2),
    "backends": st.lists(config_trees, max_size=2),
})


@FUZZ
@given(sections | config_trees)
def test_parse_config_gives_config_or_config_error(data):
    if not isinstance(data, dict):
        data = {"gateway": data}
    try:
        parse_config(data)
    except ConfigError as e:
        assert str(e).startswith("invalid configuration:")
        assert "sk-secret-fuzz-key" not in str(e)  # keys never echoed back


@pytest.fixture(scope="module")
def toml_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-config")


@FUZZ
@given(st.text(max_size=200) | st.sampled_from([
    '[gateway]\nport = 70000\n', '[gateway]\nport = "x"\n', '[[tenants]]\nname = 1\n',
    '[gateway]\nhost = "127.0.0.1"\n', 'gateway = 3\n', '[[backends]]\nname="b"\n']))
def test_load_config_text(toml_dir, text):
    path = toml_dir / "gateway.toml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as e:
        assert str(path) in str(e)


@FUZZ
@given(st.floats(1, 1e6), st.lists(st.tuples(st.floats(0, 100), st.floats(0, 1e6)), max_size=30))
def test_token_bucket_level_stays_in_bounds(per_minute, ops):
    b = TokenBucket.per_minute(per_minute, 0.0)
    now = 0.0
    for dt, amount in ops:
        now += dt
        wait = b.take(amount, now)
        assert wait is None or wait >= 0
        assert -1e-6 <= b.level <= b.capacity + 1e-6


def test_default_classes_used_here_exist():
    assert {"realtime", "free", "bulk"} <= set(DEFAULT_CLASS_TABLE.classes)
