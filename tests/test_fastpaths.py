"""The fast paths agree with the plain definitions, to the bit.

* ``BatchEngine.advance_to`` (tokens counted per iteration, not per request) against its rule
  applied request by request with ``start_iteration`` / ``finish_iteration``, with priorities
  and cancellations;
* the engine's queue totals and latency prediction against the waiting list itself;
* the observation (the compiled kernel, and the router's buffered copy) against the feature
  definitions, on simulator states and synthetic ones;
* the compiled hidden layers against numpy's matrix products;
* the dqn router's decision against the argmax of the policy's Q-values.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from quicgw.core.catalog import latency_model
from quicgw.core.features import (  # _values: the float64 entries, before packing
    GLOBAL_DIM,
    GLOBAL_FEATURES,
    INSTANCE_DIM,
    INSTANCE_FEATURES,
    MAX_CLASSES,
    MAX_INSTANCES,
    MAX_WEIGHT,
    N_WINDOWS,
    OBS_DIM,
    RATIO_CLIP,
    REF_INPUT_TOKENS,
    REF_OUTPUT_TOKENS,
    _values,
    observation,
    observation_into,
    predicted_latency_s,
)
from quicgw.core.latency import BatchEngine, EngineRequest
from quicgw.core.routing import ClusterView, InstanceLoad, NoInstanceAvailable, RouteRequest
from rlrouter.evaluation import Scenario
from rlrouter.policy import NEG, NumpyQPolicy
from rlrouter.routers import DQNRouter
from rlrouter.sim import Simulator


def _state(reqs: list[EngineRequest]) -> list[tuple]:
    return [(r.admitted, r.first_token, r.finished, r.generated, r.cancelled) for r in reqs]


def _stepped_to(engine: BatchEngine, t: float) -> list[EngineRequest]:
    """Reference: ``advance_to(t)``'s rule, request by request. Iterations run one by one; after
    one that leaves nothing to admit, the identical ones before the next completion (or ``t``)
    are jumped in one step (``now += k * step``, as advance_to does)."""
    done: list[EngineRequest] = []
    while True:
        it = engine.current or engine.start_iteration(engine.now)
        if it is None:
            engine.now = max(engine.now, t)
            return done
        if it.end > t:
            return done
        done += engine.finish_iteration()
        if not engine.running or engine._can_admit():
            continue
        step = engine.model.decode_step_s(len(engine.running))
        k = min(r.remaining for r in engine.running) - 1
        if t != math.inf:
            k = min(k, int((t - engine.now) / step))
        if k > 0:
            for r in engine.running:
                r.generated += k
            engine._iters += k  # the engine's own iteration count stays consistent
            engine.now += k * step


@pytest.mark.parametrize("seed", range(12))
def test_advance_to_is_iteration_stepping_bit_for_bit(seed: int) -> None:
    rng = random.Random(seed)
    lm = latency_model(rng.choice(["llama-3.1-8b", "llama-3.2-1b"]), "a100-80gb",
                       max_batch=rng.choice([1, 3, 8, 32]))
    policy = rng.choice(["fcfs", "priority"])
    fast, slow = BatchEngine(lm, policy), BatchEngine(lm, policy)
    lazy = BatchEngine(lm, policy)  # advance_to(sync=False): generated read via the engine
    rf: list[EngineRequest] = []
    rs: list[EngineRequest] = []
    rl: list[EngineRequest] = []
    t = 0.0
    for k in range(300):
        t += rng.expovariate(rng.choice([5.0, 60.0, 400.0]))
        done_f, done_s = fast.advance_to(t), _stepped_to(slow, t)
        done_l = lazy.advance_to(t, sync=False)
        assert [r.rid for r in done_f] == [r.rid for r in done_s] == [r.rid for r in done_l]
        assert fast.now == slow.now == lazy.now
        assert _state(rf) == _state(rs)
        synced = [(*s[:3], lazy.generated(r), s[4]) for s, r in zip(_state(rl), rl, strict=True)]
        assert synced == _state(rf)
        assert [r.rid for r in fast.running] == [r.rid for r in slow.running]
        if rng.random() < 0.1 and rf:
            j = rng.randrange(len(rf))
            fast.cancel(rf[j])
            slow.cancel(rs[j])
            lazy.cancel(rl[j])
        size = (rng.randint(1, 2000), rng.randint(1, 400), rng.randint(0, 3))
        rf.append(EngineRequest(k, size[0], size[1], t, priority=size[2]))
        rs.append(EngineRequest(k, size[0], size[1], t, priority=size[2]))
        rl.append(EngineRequest(k, size[0], size[1], t, priority=size[2]))
        fast.submit(rf[-1])
        slow.submit(rs[-1])
        lazy.submit(rl[-1])
    fast.advance_to(math.inf)
    _stepped_to(slow, math.inf)
    assert fast.now == slow.now and _state(rf) == _state(rs)
    assert all(r.finished is not None or r.cancelled for r in rf)


def _estimate_reference(engine: BatchEngine, input_tokens: int, output_tokens: int,
                        priority: int) -> float:
    """estimate_latency_s's docstring, computed from the waiting list itself."""
    m = engine.model
    ahead = [r for r in engine.waiting() if engine.policy == "fcfs" or r.priority <= priority]
    occupied = len(engine.running) + len(ahead)
    step = m.decode_step_s(min(m.max_batch, occupied + 1))
    wait = 0.0
    if occupied >= m.max_batch:
        remaining = sorted(r.remaining for r in engine.running)
        need = occupied - m.max_batch + 1
        pool = remaining + [r.output_tokens for r in ahead]
        if need <= len(remaining):
            wait = remaining[need - 1] * step
        else:
            wait = (remaining[-1] if remaining else 0) * step + (
                (need - len(remaining)) / m.max_batch) * (sum(pool) / len(pool)) * step
    return wait + m.prefill_s(input_tokens) + max(output_tokens, 1) * step


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_queue_totals_and_prediction_follow_the_waiting_list(policy: str) -> None:
    rng = random.Random(3)
    engine = BatchEngine(latency_model("llama-3.1-8b", "a100-80gb", max_batch=8), policy)
    reqs: list[EngineRequest] = []
    t = 0.0
    for k in range(400):
        t += rng.expovariate(80.0)
        engine.advance_to(t)
        if rng.random() < 0.1 and reqs:
            engine.cancel(rng.choice(reqs))
        r = EngineRequest(k, rng.randint(1, 2000), rng.randint(1, 300), t,
                          priority=rng.randint(0, 2))
        engine.submit(r)
        reqs.append(r)
        for p in (0, 1, 2, math.inf):
            ahead = [r for r in engine.waiting() if r.priority <= p]
            assert engine.queued_ahead(p) == (len(ahead), sum(r.input_tokens for r in ahead),
                                              sum(r.output_tokens for r in ahead))
        for p in (0, 1, 2):
            args = (rng.randint(1, 3000), rng.randint(0, 300), p)
            assert engine.estimate_latency_s(*args) == _estimate_reference(engine, *args)


# -- observation and decision -----------------------------------------------------------------

def _clip(x: float, lo: float = 0.0) -> float:
    return lo if x < lo else 1.0 if x > 1.0 else x


def _observation_reference(req: RouteRequest, view: ClusterView) -> list[float]:
    """The observation's entries for the instances present (float64, before the float32
    packing), feature by feature and by name from GLOBAL_FEATURES / INSTANCE_FEATURES: the
    formulas of quicgw.core.features, written out plainly."""
    n = len(view.instances)
    caps = [i.latency.saturation_rps(REF_INPUT_TOKENS, REF_OUTPUT_TOKENS) for i in view.instances]
    cap = sum(caps) or 1.0
    dl = req.deadline_s if req.deadline_s > 0 else 1.0
    out = max(req.output_tokens, 1)
    healthy = [ld.healthy for ld in view.loads]
    qual = [i.quality.get(req.task, min(i.quality.values())) for i in view.instances]
    qmax = max((q for q, h in zip(qual, healthy, strict=True) if h), default=0.0)
    rows = []
    for info, load, q, share in zip(view.instances, view.loads, qual, caps, strict=True):
        if not load.healthy:
            rows.append(dict.fromkeys(INSTANCE_FEATURES, 0.0))
            continue
        m = info.latency
        est = predicted_latency_s(info, load.in_flight, load.queued, req.input_tokens, out)
        pre = m.prefill_s(req.input_tokens)
        full = pre + out * m.decode_step_s(m.max_batch)
        rows.append({
            "present": 1.0, "quality": q, "quality_gap": max(q - qmax, -1.0),
            "isolated_latency": _clip((pre + out * m.decode_step_s(1)) * (1 / dl / RATIO_CLIP)),
            "full_batch_latency": _clip(full * (1 / dl / RATIO_CLIP)),
            "in_flight": _clip(load.in_flight / m.max_batch),
            "queued": _clip(load.queued / m.max_batch / RATIO_CLIP),
            "predicted_latency": _clip(est / req.slack_s / RATIO_CLIP) if req.slack_s > 0 else 1.0,
            "fits": float(est <= req.slack_s),
            "margin": _clip((req.slack_s - est) * (1 / dl), -1.0),
            "capacity_share": share / cap,
            "tail_latency": _clip((est + full - pre) * (1 / dl / RATIO_CLIP)),
        })
    g = dict.fromkeys(GLOBAL_FEATURES, 0.0)
    if 0 <= req.class_index < MAX_CLASSES:
        g[f"class_{req.class_index}"] = 1.0
    g["weight"] = _clip(req.weight / MAX_WEIGHT)
    g["slack_frac"] = _clip(req.slack_s * (1 / dl), -1.0)
    g["deadline_s"] = _clip(dl / 5.0)
    g["log_input_tokens"] = _clip(math.log1p(req.input_tokens) / math.log1p(8192))
    g["log_output_tokens"] = _clip(math.log1p(out) / math.log1p(2048))
    k = 1.0 / (2.0 * cap)
    totals = [0.0] * N_WINDOWS
    for c, rates in enumerate(view.rates.values()):
        for w in range(N_WINDOWS):
            totals[w] += rates[w] * k
            if c < MAX_CLASSES:
                g[f"rate_c{c}_w{w}"] = _clip(rates[w] * k)
    for w in range(N_WINDOWS):
        g[f"rate_total_w{w}"] = _clip(totals[w])
    present = [r for r in rows if r["present"]]
    fit = [r["quality"] for r in present if r["fits"]]
    mb = sum(i.latency.max_batch for i, h in zip(view.instances, healthy, strict=True) if h)
    g["n_instances"] = n / MAX_INSTANCES
    g["best_fit_quality"] = max(fit, default=0.0)
    g["fit_fraction"] = len(fit) / len(present) if present else 0.0
    if mb:
        g["cluster_in_flight"] = sum(ld.in_flight for ld in view.loads if ld.healthy) / mb
        g["cluster_queued"] = _clip(sum(ld.queued for ld in view.loads if ld.healthy) / mb
                                    / RATIO_CLIP)
    return list(g.values()) + [v for r in rows for v in r.values()]


def _random_states(count: int, seed: int):
    """(request, view) pairs from simulator runs, with loads and health scrambled."""
    rng = random.Random(seed)
    router = DQNRouter()
    for cluster in ("poster", "unseen", "small*2,large@h100-80gb*14", "medium@a10g-24gb"):
        sc = Scenario(cluster, rng.choice(["stable", "unpredictable"]), 20.0)
        sim = Simulator(sc.instances, sc.arrivals(rng.randrange(1000)))
        while not sim.done and count > 0:
            req, view = sim.request, sim.view
            sim.route(router.route(req, view))
            if rng.random() < 0.2:
                continue
            count -= 1
            loads = [InstanceLoad(rng.randint(0, 60), rng.choice([0, rng.randint(0, 300)]),
                                  rng.random() < 0.9) for _ in view.loads]
            scrambled = ClusterView(view.instances, loads, view.now, view.rates)
            yield req, rng.choice([view, scrambled])


def test_observation_equals_the_feature_definitions():
    compared = 0
    for req, view in _random_states(600, seed=1):
        ref = _observation_reference(req, view)
        assert _values(req, view) == ref  # float64, before the float32 rounding hides slips
        obs = observation(req, view)
        padded = np.zeros(OBS_DIM, np.float32)
        padded[:len(ref)] = ref
        assert obs.dtype == np.float32 and np.array_equal(obs, padded)
        n = len(view.instances)
        buf = np.full(OBS_DIM, 9.0, np.float32)  # observation_into leaves the padding alone
        assert observation_into(req, view, buf) == n
        m = GLOBAL_DIM + n * INSTANCE_DIM
        assert np.array_equal(buf[:m], obs[:m]) and np.all(buf[m:] == 9.0)
        compared += 1
    assert compared == 600


def _synthetic_states(count: int, seed: int):
    """(request, view) pairs far from the simulator's: random sizes (0 output tokens, huge
    inputs), slacks (negative, zero), deadlines (zero), weights, class indices (out of the
    table too), counts, health, and rate tables of 0 to 7 classes."""
    rng = random.Random(seed)
    clusters = [Scenario(c, "stable", 1.0).instances
                for c in ("poster", "unseen", "small*2,large@h100-80gb*14", "medium@a10g-24gb")]
    tasks = ["general", "code", "math", "chat", "no-such-task"]
    for _ in range(count):
        instances = rng.choice(clusters)
        deadline = rng.choice([0.0, 0.25, 1.0, 2.3, 7.0, rng.uniform(0.01, 10.0)])
        slack = rng.choice([0.0, -0.5, deadline, rng.uniform(-2.0, 1.1) * (deadline or 1.0)])
        req = RouteRequest(
            "c", rng.randint(0, 3), rng.choice([-1, 0, 1, 2, 3, 4, 9]), slack, deadline,
            rng.choice([0, 1, rng.randint(1, 9000), rng.randint(1, 200_000)]),
            rng.choice([0, 1, rng.randint(1, 3000), rng.randint(1, 100_000)]),
            rng.choice(tasks), rng.choice([0.0, 0.5, 1.0, 3.0, rng.uniform(-1.0, 3.0)]))
        loads = [InstanceLoad(rng.randint(0, 300), rng.choice([0, rng.randint(0, 3000)]),
                              rng.random() < 0.85) for _ in instances]
        rates = {f"c{c}": tuple(rng.choice([0.0, rng.uniform(0, 5), rng.uniform(0, 500)])
                                for _ in range(N_WINDOWS)) for c in range(rng.randint(0, 7))}
        yield req, ClusterView(instances, loads, 0.0, rates)


def test_compiled_observation_equals_the_definitions_on_synthetic_states():
    """The compiled kernel's float64 arithmetic is Python's, entry by entry (log1p included),
    and its float32 stores round like numpy's cast, far from the simulator's states too."""
    for req, view in _synthetic_states(4000, seed=5):
        ref = _observation_reference(req, view)
        assert _values(req, view) == ref
        padded = np.zeros(OBS_DIM, np.float32)
        padded[:len(ref)] = ref
        assert np.array_equal(observation(req, view), padded)
    req, view = next(_synthetic_states(1, seed=8))
    req.input_tokens = 100.0  # counts are packed as integers
    with pytest.raises(TypeError, match="integers"):
        observation(req, view)
    # log1p of every size below the clip (numba calls the C library's log1p, as math does;
    # numpy's own vectorised log1p would not do: it differs in the last bit here and there).
    req, view = next(_synthetic_states(1, seed=7))
    for k in range(8192 + 2):
        req.input_tokens = req.output_tokens = k
        v = _values(req, view)
        assert v[7] == min(math.log1p(k) / math.log1p(8192), 1.0)
        assert v[8] == min(math.log1p(max(k, 1)) / math.log1p(2048), 1.0)


def _hidden_reference(policy: NumpyQPolicy, obs: np.ndarray, n: int) -> np.ndarray:
    """The hidden layers of the all-present forward as plain numpy (BLAS) products with the
    packed weights (b1 on the "present" row, b2 on an always-1 unit, W2c / n)."""
    w = policy.packed(n)
    r2 = INSTANCE_DIM + GLOBAL_DIM
    h1, h2 = w.shape[0] - r2, policy.W2.shape[1]
    g, x = obs[:GLOBAL_DIM], obs[GLOBAL_DIM:GLOBAL_DIM + n * INSTANCE_DIM].reshape(n, INSTANCE_DIM)
    w1i, w1g = np.ascontiguousarray(w[:INSTANCE_DIM, :h1]), np.ascontiguousarray(w[INSTANCE_DIM:r2, :h1])
    w2h, w2c = np.ascontiguousarray(w[r2:, :h2]), np.ascontiguousarray(w[r2:, h2:2 * h2])
    h = np.maximum(x.dot(w1i) + g.dot(w1g), np.float32(0))
    c = h.dot(w2c)
    return np.maximum(h.dot(w2h) + np.ones(n, np.float32).dot(c), np.float32(0))


def test_compiled_hidden_layers_match_numpy_products():
    """The compiled layers compute numpy's products. Fused multiply-adds in input order are how
    OpenBLAS's AVX2 sgemm/sgemv sum, so on such a machine (this project's CI) they are equal to
    the bit (n >= 2; one slot makes numpy take a matrix-vector path that sums in lanes, which
    cannot change a one-slot decision) and the shipped figures did not move (119,468 decisions
    compared when this was written); another BLAS kernel (OpenBLAS picks one per CPU) may sum
    in another order, so the test asks for float32 agreement only."""
    policy = NumpyQPolicy.load()
    rng = np.random.default_rng(6)
    for n in range(2, MAX_INSTANCES + 1):
        z, _ = policy.buffers(n)
        for _ in range(150):
            obs = rng.uniform(-1, 1, OBS_DIM).astype(np.float32)
            obs[GLOBAL_DIM:GLOBAL_DIM + n * INSTANCE_DIM:INSTANCE_DIM] = 1.0
            q = policy.q_all_present(obs, n)
            ref = _hidden_reference(policy, obs, n)
            np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(q, ref.dot(policy.w3), rtol=1e-5, atol=1e-5)


def test_dqn_decision_is_the_argmax_of_q_values():
    """DQNRouter.route (buffered observation, fused forward) picks what the plain path picks:
    argmax of NumpyQPolicy.q_values(observation(...)) over the healthy slots."""
    policy = NumpyQPolicy.load()
    router = DQNRouter(policy)
    for req, view in _random_states(1500, seed=2):
        n = len(view.instances)
        healthy = np.array([ld.healthy for ld in view.loads])
        if not healthy.any():
            with pytest.raises(NoInstanceAvailable):
                router.route(req, view)
            continue
        q = policy.q_values(observation(req, view), n)
        assert router.route(req, view) == int(np.argmax(np.where(healthy, q, NEG)))


def test_fast_forward_computes_the_network_definition():
    """The all-present forward pass (folded biases, pre-divided pooling weights, reused
    buffers) computes what the plain batched formula does, for any slot count."""
    policy = NumpyQPolicy.load()
    rng = np.random.default_rng(4)
    for n in (1, 2, 4, 10, 16):
        obs = rng.uniform(-1, 1, (200, OBS_DIM)).astype(np.float32)
        inst = obs[:, GLOBAL_DIM:].reshape(200, MAX_INSTANCES, INSTANCE_DIM)
        inst[:, :n, 0] = 1.0
        inst[:, n:, :] = 0.0
        fast = np.stack([policy.q_values(o, n) for o in obs])
        np.testing.assert_allclose(fast, policy.q_values_batch(obs)[:, :n], rtol=1e-5, atol=1e-5)
