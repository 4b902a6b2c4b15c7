"""ilp over real loopback sockets: the load generator against an emulated backend (a rate sweep
into a profile, in model time), and the ILP router inside the real gateway splitting classes by
the plan over HTTP/3."""

from __future__ import annotations

import contextlib

import pytest

from ilp.bench.load import Stream, Target, run_load
from ilp.bench.report import write_sweep
from ilp.bench.sweep import SweepConfig, run_sweep_live
from ilp.plan import Plan, PlanClass, PlanInstance
from ilp.profile import Profile
from ilp.sim import ClassLoad, simulate_instance
from ilp.workload import Workload
from quicgw.backends.emulated import EmulatedBackend
from quicgw.backends.process import BackendProcess
from quicgw.config import parse_config
from quicgw.core.catalog import latency_model
from quicgw.gateway import Gateway

pytestmark = pytest.mark.timeout(90)

MODEL = "llama-3.2-1b"


def test_bench_sweep_against_an_emulated_backend(tmp_path):
    """Two rates, streaming over HTTP/1.1, 20x time scale: a profile in model time whose
    latencies match what the backend itself reports."""
    with BackendProcess(MODEL, "a100-80gb", max_batch=4, time_scale=20) as b:
        target = Target(b.url, "http1", "completions", stream=True, time_scale=20)
        cfg = SweepConfig(rates_rpm=[60.0, 240.0], duration_s=60.0, warmup_s=10.0, cooldown_s=5.0,
                          workload=Workload((200, 400), (20, 40)), seed=3)
        res = run_sweep_live(target, cfg, progress_bar=False, poll_s=2.0, log=lambda *_: None)
    prof = res.profile
    assert prof.engine == "emulated" and prof.instance["max_batch"] == 4
    assert prof.time_scale == 20 and prof.model == MODEL
    for pt in prof.points:
        assert pt.completed > 0 and pt.failed == 0
        for m in ("ttft_ms", "tpot_ms", "itl_ms", "e2el_ms", "queue_ms"):
            assert m in pt.metrics, m
        assert pt.achieved_rpm == pytest.approx(pt.rate_rpm, rel=0.5)
    # Client-side end-to-end latency (wall x 20) tracks the server's own model-time timings.
    recs = [r for r in res.records[60.0] if r.ok]
    gaps = sorted(r.e2el_s - r.server_e2el_s for r in recs)
    assert 0 <= gaps[len(gaps) // 2] < 1.0  # median overhead under 50 ms of wall time
    # Output files, and the profile reloads.
    paths = write_sweep(prof, res.records, tmp_path / "out", plots=True)
    assert all(p.exists() for p in paths)
    assert Profile.load(tmp_path / "out" / "profile.json").points[1].rate_rpm == 240.0


async def test_live_backend_matches_the_simulation_on_the_same_arrivals():
    """The same streams and seed, live on the emulated backend and fast-forwarded on the shared
    engine: the same requests, nearly the same latencies (light load: no queue to amplify
    scheduling jitter)."""
    wl = Workload((300, 300), (30, 30))
    lm = latency_model(MODEL, "a100-80gb", 8)
    async with EmulatedBackend(MODEL, "a100-80gb", max_batch=8, time_scale=20) as b:
        target = Target(b.url, "http1", "completions", stream=False, time_scale=20)
        live, _ = await run_load(target, [Stream("a", 120.0, wl)], 30.0, seed=5, poll_s=None)
    sim = simulate_instance(lm, [ClassLoad("a", 2.0, 0, wl)], 30.0, seed=5)
    assert len(live) == len(sim) > 30
    live_e2el = sorted(r.server_e2el_s for r in live)
    sim_e2el = sorted(r.e2el_s for r in sim)
    med = len(sim_e2el) // 2
    assert live_e2el[med] == pytest.approx(sim_e2el[med], rel=0.1)
    assert [round(r.arrival_s, 1) for r in sim][:5] == pytest.approx(
        [round(r.arrival_s, 1) for r in live][:5], abs=0.3)


@contextlib.asynccontextmanager
async def _plan_gateway(tmp_path, plan: Plan):
    async with contextlib.AsyncExitStack() as stack:
        backends = []
        for inst in plan.instances:
            b = await stack.enter_async_context(EmulatedBackend(
                MODEL, "a100-80gb", port=0, time_scale=50, max_batch=8, queue_policy="priority"))
            backends.append({"name": inst.name, "model": MODEL, "url": b.url, "max_batch": 8})
        path = tmp_path / "plan.json"
        plan.save(path)
        cfg = parse_config({
            "gateway": {"host": "127.0.0.1", "port": 0, "router": "ilp",
                        "router_options": {"plan": str(path)}},
            "classes": [{"name": c.name, "priority": c.priority, "deadline_ms": 60_000}
                        for c in plan.classes],
            "backends": backends,
        })
        yield await stack.enter_async_context(Gateway(cfg))


async def test_ilp_router_in_the_gateway_splits_by_the_plan(tmp_path):
    plan = Plan(
        "t", "priority", "instances", 2,
        classes=[PlanClass("gold", 0, 30.0, 10_000, 95.0, "e2el_ms"),
                 PlanClass("bronze", 1, 10.0, 60_000, 95.0, "e2el_ms")],
        instances=[PlanInstance("i0", "a100-80gb", "a100-80gb", "m", MODEL, 60.0,
                                {"gold": 22.5, "bronze": 0.0}),
                   PlanInstance("i1", "a100-80gb", "a100-80gb", "m", MODEL, 60.0,
                                {"gold": 7.5, "bronze": 10.0})])
    async with _plan_gateway(tmp_path, plan) as gw:
        target = Target(gw.url, "http3", "completions", model="auto", stream=False,
                        verify=gw.cafile, time_scale=50)
        wl = Workload((50, 50), (5, 5))
        streams = [Stream("gold", 600.0, wl, traffic_class="gold"),
                   Stream("bronze", 300.0, wl, traffic_class="bronze")]
        recs, _ = await run_load(target, streams, 8.0, seed=1, poll_s=None)
    assert recs and all(r.ok for r in recs), [r.error for r in recs if not r.ok][:3]
    gold = [r.instance for r in recs if r.klass == "gold"]
    bronze = [r.instance for r in recs if r.klass == "bronze"]
    assert set(bronze) == {"i1"}
    # smooth weighted round-robin: within one request of 3/4 : 1/4
    assert abs(gold.count("i0") - 0.75 * len(gold)) <= 1.0
