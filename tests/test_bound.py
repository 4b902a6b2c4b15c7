"""training/bound.py: the LP upper bound is above every router's simulated score, below the
perfect score, exact when the load is trivially light, and its per-request charge (step 4 of
its docstring) holds on the real engine. Fast: short workloads."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from quicgw.core.catalog import TASKS
from quicgw.core.latency import BatchEngine, EngineRequest
from rlrouter.evaluation import Scenario
from rlrouter.routers import DQNRouter, SlackFitRouter, baseline_routers
from rlrouter.sim import Simulator
from rlrouter.workloads import Arrivals

_spec = importlib.util.spec_from_file_location(
    "training_bound", Path(__file__).resolve().parents[1] / "training" / "bound.py")
bound = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bound  # dataclasses look their module up
_spec.loader.exec_module(bound)


@pytest.mark.parametrize("workload", ["stable", "unpredictable"])
@pytest.mark.parametrize("seed", [1000, 1003])
def test_bound_above_every_router_and_below_perfect(workload, seed):
    scenario = Scenario("poster", workload, 40.0)
    res = bound.upper_bound(scenario.instances, scenario.arrivals(seed))
    assert res.status == "Optimal"
    routers = {**baseline_routers(), "dqn": DQNRouter()}
    scores = {name: scenario.run(r, seed).score for name, r in routers.items()}
    for name, s in scores.items():
        assert s <= res.bound + 1e-6, (name, s, res.bound)
    assert res.bound <= res.perfect_feasible + 1e-6 <= res.perfect + 2e-6


def _light_arrivals() -> Arrivals:
    # One request every 5 s (nothing ever overlaps), every class and task, and one bulk
    # request too long for the 70B and the 8B models even alone (the 1B meets it).
    rng = np.random.default_rng(7)
    k = 24
    cls = np.arange(k) % 3
    inp = np.where(cls == 2, rng.integers(256, 3000, k), rng.integers(16, 800, k))
    out = rng.integers(8, 120, k)
    inp[-1], out[-1], cls[-1] = 6144, 192, 2
    task = np.arange(k) % len(TASKS)
    return Arrivals(np.arange(k) * 5.0, cls.astype(np.int64), inp.astype(np.int64),
                    out.astype(np.int64), task.astype(np.int64), ("realtime", "free", "bulk"))


def test_light_load_bound_is_exact():
    scenario = Scenario("poster")
    arrivals = _light_arrivals()
    res = bound.upper_bound(scenario.instances, arrivals)
    # Every request alone on its best feasible model: that is the bound, and slack-fit (margin
    # 0, the engine's exact prediction of an idle instance) reaches it.
    assert res.perfect_feasible < res.perfect
    assert res.bound == pytest.approx(res.perfect_feasible, abs=1e-7)
    score = Simulator(scenario.instances, arrivals).run(SlackFitRouter()).score
    assert score == pytest.approx(res.bound, abs=1e-7)
    reserve = Simulator(scenario.instances, arrivals).run(
        baseline_routers()["slackfit-reserve"]).score
    assert reserve <= res.bound + 1e-9  # its class margins send some to smaller models


def test_charges_hold_on_the_engine():
    """Step 4 and 5 on the real engine: run a loaded 70B instance iteration by iteration,
    charge each iteration to its batch as the docstring does, and check every met request's
    charge is at least min_charge and every window's met charges fit in the window."""
    scenario = Scenario("poster")
    model = scenario.instances[0].latency
    rng = np.random.default_rng(3)
    n = 400
    t = np.sort(rng.uniform(0, 40, n))
    cls = rng.integers(0, 3, n)
    inp = np.where(cls == 2, rng.integers(256, 2500, n), rng.integers(16, 600, n))
    out = rng.integers(8, 100, n)
    dl = np.array([1.8, 1.8, 2.3])[cls]
    engine = BatchEngine(model, "priority")
    reqs = [EngineRequest(k, int(inp[k]), int(out[k]), float(t[k]), int(cls[k])) for k in range(n)]
    charge = np.zeros(n)
    nxt, now = 0, 0.0
    while nxt < n or engine.busy:
        while nxt < n and t[nxt] <= now:
            engine.submit(reqs[nxt])
            nxt += 1
        it = engine.start_iteration(now)
        if it is None:
            now = float(t[nxt])
            continue
        decode = model.decode_step_s(len(it.batch))
        assert it.end - it.start == pytest.approx(
            decode + model.prefill_s(sum(r.input_tokens for r in it.admitted)))
        for r in it.batch:
            charge[r.rid] += decode / len(it.batch)
        for r in it.admitted:
            charge[r.rid] += model.prefill_s(r.input_tokens)
        engine.finish_iteration()
        now = it.end
    fin = np.array([r.finished for r in reqs])
    met = fin - t <= dl + 1e-9
    assert 0.2 < met.mean() < 1.0  # loaded: the check is not vacuous
    low = bound.min_charge(model, inp, out, dl)
    assert np.all(charge[met] >= low[met] - 1e-12)
    assert np.all(np.isinf(low) <= ~met)  # infeasible alone never met
    for length in (2.5, 4.0, 10.0):
        for u in np.arange(0, 40, length / 4):
            inside = met & (t >= u) & (t + dl + 1e-9 <= u + length)
            assert charge[inside].sum() <= length + 1e-9
            assert low[inside].sum() <= length + 1e-9


def test_min_charge_isolated_feasibility():
    model = Scenario("poster").instances[0].latency
    d = 2.3
    # Exactly the isolated latency: feasible; charged its own prefill and its decode at B >= 1.
    c = bound.min_charge(model, np.array([1000, 6144]), np.array([50, 192]), np.array([d, d]))
    assert math.isfinite(c[0]) and math.isinf(c[1])
    assert model.isolated_latency_s(6144, 192) > d
    assert c[0] >= 50 * (model.decode_per_seq_s + model.decode_base_s / model.max_batch) + \
        model.prefill_s(1000) - 1e-12
