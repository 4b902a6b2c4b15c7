"""The shared core: latency model and engine, catalog calibration, score, routing registry,
priority parsing and config validation."""

import math
import random

import pytest

from quicgw.config import ConfigError, load_config, parse_config
from quicgw.core.catalog import CALIBRATION_WORKLOAD, MODELS, latency_model
from quicgw.core.latency import BatchEngine, EngineRequest
from quicgw.core.qos import Priority, parse_priority
from quicgw.core.routing import (
    ClusterView,
    InstanceInfo,
    InstanceLoad,
    NoInstanceAvailable,
    RouteRequest,
    create_router,
)
from quicgw.core.score import ScoreBoard


def _step_to_completion(engine: BatchEngine, requests, arrivals):
    """Reference: iteration-by-iteration stepping, as the emulated backend does."""
    pending = sorted(zip(arrivals, requests, strict=True), key=lambda p: p[0])
    now = 0.0
    while pending or engine.busy:
        while pending and pending[0][0] <= now:
            engine.submit(pending.pop(0)[1])
        it = engine.start_iteration(now)
        if it is None:
            now = pending[0][0]
            continue
        engine.finish_iteration()
        now = it.end


def test_fast_forward_matches_iteration_stepping():
    lm = latency_model("llama-3.1-8b", "a100-80gb", max_batch=4)
    rng = random.Random(7)
    arrivals = sorted(rng.uniform(0, 5) for _ in range(40))
    sizes = [(rng.randint(10, 600), rng.randint(1, 80)) for _ in arrivals]

    stepped = [EngineRequest(i, a, b, t) for i, ((a, b), t) in enumerate(zip(sizes, arrivals, strict=True))]
    _step_to_completion(BatchEngine(lm), stepped, arrivals)

    fast = [EngineRequest(i, a, b, t) for i, ((a, b), t) in enumerate(zip(sizes, arrivals, strict=True))]
    engine = BatchEngine(lm)
    for r in fast:
        engine.advance_to(r.arrival)
        engine.submit(r)
    engine.advance_to(math.inf)
    for s, f in zip(stepped, fast, strict=True):
        assert f.finished == pytest.approx(s.finished, abs=1e-9)
        assert f.first_token == pytest.approx(s.first_token, abs=1e-9)


def test_priority_policy_serves_lower_priority_value_first():
    lm = latency_model("llama-3.1-8b", "a100-80gb", max_batch=1)
    engine = BatchEngine(lm, policy="priority")
    blocker = EngineRequest("blocker", 10, 5, 0.0)
    engine.submit(blocker)
    engine.advance_to(0.001)
    low = EngineRequest("low", 10, 5, 0.001, priority=2)
    high = EngineRequest("high", 10, 5, 0.002, priority=0)
    engine.submit(low)
    engine.submit(high)
    engine.advance_to(math.inf)
    assert high.finished < low.finished


def test_cancel_frees_slot():
    lm = latency_model("llama-3.1-8b", "a100-80gb", max_batch=1)
    engine = BatchEngine(lm)
    a, b = EngineRequest("a", 10, 1000, 0.0), EngineRequest("b", 10, 5, 0.0)
    engine.submit(a)
    engine.submit(b)
    engine.advance_to(0.1)
    engine.cancel(a)
    engine.advance_to(math.inf)
    assert a.finished is None and b.finished is not None


def test_calibration_llama8b_a100_saturates_in_ibm_range():
    lm = latency_model("llama-3.1-8b", "a100-80gb")
    rpm = 60 * lm.saturation_rps(**CALIBRATION_WORKLOAD)
    assert 75 <= rpm <= 80


def test_catalog_quality_grows_with_size():
    q = sorted(MODELS.values(), key=lambda m: m.params_b)
    assert [m.size for m in q] == ["small", "medium", "large"]
    assert q[0].quality["general"] < q[1].quality["general"] < q[2].quality["general"]


def test_score_weighted_mean():
    board = ScoreBoard()
    board.add("realtime", 2.0, 0.7, True, 1.0)
    board.add("free", 1.0, 0.7, False, 3.0)
    assert board.score == pytest.approx(2 * 0.7 / 3)
    assert board.attainment("realtime") == 1.0


@pytest.mark.parametrize(
    "value,expected",
    [
        ("u=1", Priority(1, False)),
        ("u=5, i", Priority(5, True)),
        ("i=?0, u=0", Priority(0, False)),
        ("u=9", Priority(3, False)),  # out of range: ignored
        ("u=abc", Priority(3, False)),  # wrong type: ignored
        ("u=2, i=7", Priority(2, False)),  # wrong type for i: ignored
        ("@@@", Priority(3, False)),  # unparseable: defaults
        ("", Priority(3, False)),
        (None, Priority(3, False)),
        ("u=4, foo=bar", Priority(4, False)),  # unknown members ignored
    ],
)
def test_parse_priority(value, expected):
    assert parse_priority(value) == expected


def _cluster():
    insts = [
        InstanceInfo(f"{m}-0", m, "a100-80gb", latency_model(m, "a100-80gb"), MODELS[m].quality)
        for m in MODELS
    ]
    return ClusterView(insts, [InstanceLoad(in_flight=i) for i in range(len(insts))])


def test_routers_from_registry():
    cluster = _cluster()
    req = RouteRequest("realtime", 0, 0, 1.8, 1.8, 100, 50)
    assert cluster.instances[create_router("static:medium").route(req, cluster)].model == "llama-3.1-8b"
    assert create_router("jsq").route(req, cluster) == 0
    cluster.loads[0].healthy = False
    assert create_router("jsq").route(req, cluster) == 1
    with pytest.raises(KeyError, match="unknown router"):
        create_router("nope")
    for load in cluster.loads:
        load.healthy = False
    with pytest.raises(NoInstanceAvailable):
        create_router("rr").route(req, cluster)


def test_example_config_loads():
    config = load_config("examples/gateway.toml")
    assert [c.name for c in config.class_table] == ["realtime", "free", "bulk"]


@pytest.mark.parametrize(
    "data,where",
    [
        ({"gateway": {"prot": 1}}, "gateway.prot: unknown key"),
        ({"gateway": {"port": -1}}, "gateway.port"),
        ({"backends": [{"name": "x", "model": "nope", "url": "http://a"}]}, "backends[0].model"),
        ({"classes": [{"name": "a", "priority": 0, "deadline_ms": -5}]}, "classes[0].deadline_ms"),
        ({"tenants": [{"name": "t", "api_key": "12345678", "classes": ["vip"]}]}, "unknown class 'vip'"),
    ],
)
def test_config_errors_name_the_key(data, where):
    with pytest.raises(ConfigError, match=__import__("re").escape(where)):
        parse_config(data)
