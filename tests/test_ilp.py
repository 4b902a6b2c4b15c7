"""ilp's sans-IO parts: stats, profiles, capacity functions, problem validation, the MILP and its
baselines, plans, the gateway-config emitter, the ILP router, the generators."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

from ilp.arrivals import arrival_times
from ilp.capacity import AnalyticCapacity, ProfileCapacity, erlang_c
from ilp.emit import backends_toml
from ilp.generate import scale_problem, suite_problem
from ilp.model import InfeasibleProblem, solve
from ilp.plan import Plan, PlanError, plan_from_solution
from ilp.problem import ProblemError, load_problem, parse_problem
from ilp.profile import (
    Profile,
    ProfileError,
    RatePoint,
    RequestRecord,
    build_point,
    detect_saturation,
)
from ilp.router import ILPRouter, SmoothWRR
from ilp.stats import MetricSummary, percentile, percentile_ci, summarize
from ilp.workload import Workload
from quicgw.config import parse_config
from quicgw.core.catalog import latency_model
from quicgw.core.routing import (
    ClusterView,
    InstanceInfo,
    InstanceLoad,
    NoInstanceAvailable,
    RouteRequest,
    create_router,
)

pytestmark = pytest.mark.timeout(60)

MOTIVATION = Path(__file__).resolve().parent.parent / "ilp" / "examples" / "motivation.yaml"


def _profile(points: list[tuple[float, float]], model: str = "llama-3.1-8b") -> Profile:
    """A profile whose p95 e2el (seconds) at each rate is given."""
    pts = []
    for r, v in points:
        pts.append(RatePoint(r, 1740.0, 100, 100, request_throughput=r / 60,
                             metrics={"e2el_ms": MetricSummary(100, v * 800, 1.0, v * 700,
                                                               {50.0: v * 700, 95.0: v * 1e3})}))
    return Profile(model, "a100-80gb", points=pts)


PAPERISH = _profile([(3, 60), (5, 120), (7.5, 190), (9, 250), (11, 290), (12, 310), (14, 345),
                     (15, 420)])


def _motivation_data(**mode) -> dict:
    return {
        "name": "mot",
        "classes": [{"name": "user1", "rate_rpm": 15, "latency_s": 204},
                    {"name": "user2", "rate_rpm": 18, "latency_s": 301},
                    {"name": "user3", "rate_rpm": 9, "latency_s": 352}],
        "profiles": {"p": {}},
        "gpus": [{"name": "a100-80gb", "count": 8,
                  "modes": [{"name": "15rpm", "profile": "p", "rate_rpm": 15, **mode}]}],
    }


# -- stats and profiles ---------------------------------------------------------------------------

def test_percentiles_match_numpy_linear_and_cis_bracket():
    vals = sorted(float(x) for x in range(1, 101))
    assert percentile(vals, 50) == pytest.approx(50.5)
    assert percentile(vals, 95) == pytest.approx(95.05)
    lo, hi = percentile_ci(vals, 95)
    assert lo <= 95.05 <= hi
    s = summarize(list(range(200)))
    assert s.mean_ci[0] < s.mean < s.mean_ci[1]
    assert s.at(90.0) == s.percentiles[90.0]
    assert s.at(85.0) == pytest.approx((s.percentiles[80.0] + s.percentiles[90.0]) / 2)


def test_profile_json_roundtrip_uses_vllm_names():
    recs = [RequestRecord(arrival_s=t, ok=True, input_tokens=10, output_tokens=5, ttft_s=0.1,
                          e2el_s=1.0 + t / 100, itl_s=[0.2] * 4, queue_s=0.05) for t in range(100)]
    pt = build_point(6.0, recs, (10, 90), slo_ms={"e2el_ms": 1500}, keep_samples=True)
    prof = Profile("llama-3.1-8b", "a100-80gb", points=[pt])
    d = json.loads(prof.dumps())
    keys = d["points"][0]
    for k in ("mean_ttft_ms", "median_tpot_ms", "p99_itl_ms", "p95_e2el_ms", "std_e2el_ms",
              "ci_p95_e2el_ms", "request_throughput", "request_goodput"):
        assert k in keys, k
    back = Profile.loads(prof.dumps())
    assert back.points[0].value("e2el_ms", 95) == pytest.approx(pt.value("e2el_ms", 95))
    assert back.points[0].metrics["ttft_ms"].mean == pytest.approx(100.0)
    assert pt.requests == 80 and pt.goodput == pytest.approx(41 / 80)  # e2el <= 1.5 s for t = 10..50


def test_profile_errors_name_the_field():
    with pytest.raises(ProfileError, match=r"points\[0\]\.rate_rpm: must be > 0"):
        Profile.from_json({"model": "m", "gpu": "g", "points": [{"rate_rpm": 0, "mean_e2el_ms": 1}]})
    with pytest.raises(ProfileError, match=r"profile\.gpu: missing"):
        Profile.from_json({"model": "m", "points": []})
    with pytest.raises(ProfileError, match=r"mean_e2el_ms: expected a number"):
        Profile.from_json({"model": "m", "gpu": "g", "points": [{"rate_rpm": 1, "mean_e2el_ms": "x"}]})


def test_saturation_needs_a_growing_queue_and_a_second_sign():
    def pt(rate, achieved, slope, batch=None):
        return RatePoint(rate, 1000.0, 100, 100, request_throughput=achieved / 60,
                         metrics={"e2el_ms": MetricSummary(100, 10e3, 1, 10e3, {95.0: 12e3}),
                                  "queue_ms": MetricSummary(100, 1e3, 1, 1e3, {95.0: 2e3})},
                         queue_slope=slope, mean_batch=batch)
    pts = [pt(10, 10, 0.0), pt(14, 14, 0.001, 20), pt(16, 15.9, 0.05, 31), pt(18, 16, 0.2)]
    detect_saturation(pts, max_batch=32)
    assert [p.saturated for p in pts] == [False, False, True, True]


def test_arrival_processes_have_the_right_rate():
    for kind in ("poisson", "gamma", "constant"):
        t = arrival_times(kind, 2.0, 2000.0, seed=1, burstiness=0.5)
        assert len(t) == pytest.approx(4000, rel=0.08), kind
    assert arrival_times("poisson", 1.0, 100, seed=3) == arrival_times("poisson", 1.0, 100, seed=3)
    assert arrival_times("trace", 0, 10, trace=[5, 6, 8, 20]) == [0, 1, 3]


# -- capacity ---------------------------------------------------------------------------------------

def test_profile_capacity_is_monotone_and_inverts_f():
    prof = _profile([(1, 50), (5, 60), (8, 58), (10, 100), (12, 200)])  # noise at 8 RPM
    for interp in ("linear", "pchip"):
        c = ProfileCapacity.from_profile(prof, "e2el_ms", 95.0, interp)
        xs = [1 + i * 0.05 for i in range(220)]
        ys = [c.latency_ms(x) for x in xs]
        assert all(b >= a - 1e-9 for a, b in zip(ys, ys[1:], strict=False)), interp
        for bound_s in (55, 60, 80, 150):
            r = c.capacity_rpm(bound_s * 1e3)
            assert c.latency_ms(r) <= bound_s * 1e3 + 1e-6
            assert c.latency_ms(r + 0.01) > bound_s * 1e3 - 1e-6
        assert c.capacity_rpm(40e3) == 0.0  # misses even at the lowest rate
        assert c.capacity_rpm(1e9) == 12.0  # never beyond what was measured
    assert ProfileCapacity.from_profile(prof, cap_rpm=9).capacity_rpm(1e9) == 9


def test_analytic_capacity_saturates_where_the_latency_model_says():
    lm = latency_model("llama-3.1-8b", "a100-80gb", max_batch=8)
    wl = Workload((512, 512), (256, 256))
    a = AnalyticCapacity(lm, wl, "e2el_ms", 95.0)
    assert a.latency_ms(0) == pytest.approx(lm.isolated_latency_s(512, 256) * 1e3, rel=0.01)
    assert a.latency_ms(a.saturation_rpm * 1.01) == math.inf
    r = a.capacity_rpm(a.latency_ms(0) * 2)
    assert 0 < r < a.saturation_rpm
    assert erlang_c(1, 0.5) == pytest.approx(0.5)


# -- problems ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["classes"][1].update(latency_s=-3), r"classes\[1\]\.latency_s"),
    (lambda d: d["classes"][0].update(percentile=100), r"classes\[0\]\.percentile"),
    (lambda d: d["classes"][0].update(bogus=1), r"classes\[0\]\.bogus: unknown key"),
    (lambda d: d["gpus"][0]["modes"][0].update(profile="nope"), r"gpus\[0\]\.modes\[0\]\.profile"),
    (lambda d: d["classes"][2].update(metric="latency"), r"classes\[2\]\.metric: .*unknown metric"),
    (lambda d: d["gpus"][0].pop("count"), r"gpus\[0\]: .*count: missing"),
])
def test_bad_problem_files_name_the_field(mutate, match):
    d = _motivation_data()
    mutate(d)
    with pytest.raises(ProblemError, match=match):
        parse_problem(d, profiles={"p": PAPERISH})


def test_unmeetable_class_is_named():
    d = _motivation_data()
    d["classes"][0]["latency_s"] = 10
    problem = parse_problem(d, profiles={"p": PAPERISH})
    with pytest.raises(InfeasibleProblem, match="class 'user1'.*cannot be met in any mode"):
        solve(problem)


# -- the MILP -----------------------------------------------------------------------------------------

def test_paper_motivation_shape_gives_3_multiplexed_5_dedicated():
    problem = parse_problem(_motivation_data(), profiles={"p": PAPERISH})
    assert solve(problem, "priority").instances == 3
    assert solve(problem, "dedicated").instances == 5
    assert solve(problem, "fcfs").instances == 5
    assert solve(problem, "priority", formulation="per-gpu").instances == 3
    assert solve(problem, "priority", solver="cbc").instances == 3


def test_shipped_motivation_example():
    problem = load_problem(MOTIVATION)
    sol = solve(problem)
    assert sol.optimal and sol.instances == 3
    assert solve(problem, "dedicated").instances == 5
    plan = plan_from_solution(problem, sol)
    for route in plan.routes().values():
        assert sum(f for _, f in route) == pytest.approx(1.0)
    # every instance's cumulative load respects each class's capacity
    for inst in plan.instances:
        assert inst.total_rpm <= inst.rate_cap_rpm + 1e-6
        for name, pred in inst.predicted_ms.items():
            assert pred <= plan.klass(name).latency_ms + 1e-6


def test_aggregated_and_per_gpu_formulations_agree_on_random_problems():
    feasible = 0
    for seed in range(6):
        data, profiles = scale_problem(4, 12, 4, seed=seed)
        problem = parse_problem(data, profiles=profiles)
        try:
            a = solve(problem, "priority")
        except InfeasibleProblem:
            with pytest.raises(InfeasibleProblem):
                solve(problem, "priority", formulation="per-gpu")
            continue
        feasible += 1
        b = solve(problem, "priority", formulation="per-gpu")
        c = solve(problem, "priority", formulation="per-gpu", symmetry_breaking=False)
        assert a.objective_value == pytest.approx(b.objective_value) == pytest.approx(c.objective_value)
    assert feasible >= 3


def test_priority_never_needs_more_than_fcfs_or_dedicated():
    for k in range(8):
        data, profiles = suite_problem(k, seed=7)
        problem = parse_problem(data, profiles=profiles)
        p = solve(problem, "priority").instances
        assert p <= solve(problem, "fcfs").instances <= solve(problem, "dedicated").instances


def test_mig_slices_use_up_their_parent_gpu():
    small = _profile([(1, 10), (8, 20), (9, 40)])
    big = _profile([(1, 10), (14, 20), (16, 40)])
    data = {
        "classes": [{"name": "a", "rate_rpm": 30, "latency_s": 25}],
        "profiles": {"big": {}, "small": {}},
        "gpus": [
            {"name": "a100-80gb", "count": 2, "modes": [{"name": "full", "profile": "big"}]},
            {"name": "mig", "gpu": "a100-80gb", "partition_of": {"gpu": "a100-80gb", "per_gpu": 2},
             "modes": [{"name": "slice", "profile": "small"}]},
        ],
    }
    problem = parse_problem(data, profiles={"big": big, "small": small})
    # Two whole A100s carry 2 x 14.5 < 30; one whole + two slices of the other carry 31.
    sol = solve(problem)
    counts = {r.pool.gpu_type.name: r.count for r in sol.pools}
    assert counts.get("a100-80gb", 0) + counts.get("mig", 0) / 2 <= 2
    assert counts.get("mig", 0) >= 1
    data["classes"][0]["rate_rpm"] = 40
    with pytest.raises(InfeasibleProblem, match="no plan meets every bound"):
        solve(parse_problem(data, profiles={"big": big, "small": small}))


def test_power_objective_prefers_the_low_power_mode():
    d = _motivation_data(power_w=400)
    d["gpus"][0]["modes"].append({"name": "eco", "profile": "p", "rate_rpm": 15, "power_w": 250,
                                  "latency_scale": 1.05})
    d["objective"] = "power"
    problem = parse_problem(d, profiles={"p": PAPERISH})
    sol = solve(problem)
    assert sol.objective_value <= 3 * 400
    assert any(r.pool.mode.name == "eco" and r.count > 0 for r in sol.pools)


def test_analytic_modes_need_no_profile():
    data = {
        "classes": [{"name": "chat", "rate_rpm": 120, "latency_s": 12, "percentile": 95},
                    {"name": "batch", "rate_rpm": 60, "latency_s": 60, "percentile": 90}],
        "gpus": [{"name": "a100-80gb", "count": 8, "modes": [
            {"name": "b16", "model": "llama-3.1-8b",
             "analytic": {"max_batch": 16, "input_tokens": 512, "output_tokens": [64, 256]}}]}],
    }
    problem = parse_problem(data)
    mode = problem.modes[0]
    assert mode.sim_model is not None and mode.rate_cap_rpm > 0
    sol = solve(problem)
    assert sol.optimal and sol.instances >= math.ceil(180 / mode.rate_cap_rpm)
    assert sol.instances <= solve(problem, "dedicated").instances


def test_scale_50x64x8_is_optimal_within_two_seconds():
    data, profiles = scale_problem(50, 64, 8, seed=0)
    problem = parse_problem(data, profiles=profiles)
    t0 = time.perf_counter()
    sol = solve(problem, threads=1)
    assert sol.optimal
    assert sol.solve_s <= 2.0 and time.perf_counter() - t0 < 10


# -- plans, config emission ------------------------------------------------------------------------

def _plan() -> Plan:
    problem = parse_problem(_motivation_data(max_batch=48), profiles={"p": PAPERISH})
    return plan_from_solution(problem, solve(problem), {"dedicated": 5})


def test_plan_roundtrip_and_errors(tmp_path):
    plan = _plan()
    path = tmp_path / "plan.json"
    plan.save(path)
    back = Plan.load(path)
    for c, route in plan.routes().items():
        assert dict(back.routes()[c]) == pytest.approx(dict(route))
    assert [i.name for i in back.instances] == [i.name for i in plan.instances]
    d = json.loads(path.read_text())
    d["instances"][0]["load_rpm"]["nobody"] = 1.0
    with pytest.raises(PlanError, match=r"instances\[0\]\.load_rpm: unknown class 'nobody'"):
        Plan.from_json(d)
    with pytest.raises(PlanError, match="kind"):
        Plan.from_json({"kind": "other"})


def test_emitted_backends_validate_with_the_gateway_config():
    import tomllib

    text = backends_toml(_plan(), base_port=9300, time_scale=20)
    data = tomllib.loads(text)
    cfg = parse_config(data)
    assert [b.port for b in cfg.backends] == [9300, 9301, 9302]
    assert all(b.max_batch == 48 and b.time_scale == 20 for b in cfg.backends)
    real = tomllib.loads(backends_toml(_plan(), url_template="http://gpu-{index}:8000"))
    assert real["backends"][2]["url"] == "http://gpu-2:8000"


# -- the router ----------------------------------------------------------------------------------

def test_smooth_wrr_tracks_fractions_and_spreads_picks():
    w = SmoothWRR({"a": 5, "b": 1, "c": 1})
    picks = [w.pick() for _ in range(7)]
    assert picks == ["a", "a", "b", "a", "c", "a", "a"]  # nginx's documented sequence for 5:1:1
    assert w.pick({"b", "c"}) in {"b", "c"} and w.pick(set()) is None


def _cluster(names, healthy=None):
    lm = latency_model("llama-3.1-8b", "a100-80gb", 48)
    infos = [InstanceInfo(n, "llama-3.1-8b", "a100-80gb", lm, {}) for n in names]
    loads = [InstanceLoad(healthy=(healthy is None or n in healthy)) for n in names]
    return ClusterView(infos, loads)


def _req(cls: str, prio: int = 0) -> RouteRequest:
    return RouteRequest(cls, prio, 0, 10.0, 10.0, 100, 10)


def test_ilp_router_splits_by_plan_fractions(tmp_path):
    problem = parse_problem(_motivation_data(max_batch=48), profiles={"p": PAPERISH})
    plan = plan_from_solution(problem, solve(problem))
    # make the split uneven to see the weights
    plan.instances[0].load_rpm["user1"] = 10.0
    path = tmp_path / "plan.json"
    plan.save(path)
    router = create_router("ilp", plan=str(path))
    assert isinstance(router, ILPRouter)
    names = ["other"] + [i.name for i in plan.instances]
    cluster = _cluster(names)
    counts = {n: 0 for n in names}
    for k in range(200):
        counts[names[router.route(_req("user1"), cluster)]] += 1
        if k % 20 == 19:  # within one request of the fractions at every point
            total = k + 1
            for n, f in router.fractions("user1").items():
                assert abs(counts[n] - f * total) <= 1.0 + 1e-9
    assert counts["other"] == 0
    # an instance goes down: its share goes to the class's other instances
    down = plan.instances[0].name
    cluster = _cluster(names, healthy=set(names) - {down})
    assert all(names[router.route(_req("user1"), cluster)] != down for _ in range(50))
    # unknown class: least loaded plan instance (jsq), or refused
    assert names[router.route(_req("nobody"), cluster)] in {i.name for i in plan.instances}
    strict = ILPRouter(plan=plan, fallback="reject")
    with pytest.raises(NoInstanceAvailable):
        strict.route(_req("nobody"), cluster)
    dead = _cluster(names, healthy={"other"})
    with pytest.raises(NoInstanceAvailable):
        ILPRouter(plan=plan, spill=False).route(_req("user1"), dead)


def test_ilp_router_needs_a_plan():
    with pytest.raises(ValueError, match="needs a plan"):
        ILPRouter()
    with pytest.raises(PlanError, match="not found"):
        ILPRouter(plan="/nonexistent/plan.json")
