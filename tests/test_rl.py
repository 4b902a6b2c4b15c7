"""rlrouter: simulator, workloads, network stage, environment, routers, exported policy.

Fast and deterministic: short workloads, no training beyond a tiny smoke run."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

import rlrouter
from quicgw.core.classes import DEFAULT_CLASS_TABLE, DEFAULT_CLASSES
from quicgw.core.features import (
    GLOBAL_DIM,
    INSTANCE_DIM,
    INSTANCE_FEATURES,
    MAX_INSTANCES,
    OBS_DIM,
    RateEstimator,
    observation,
    predicted_latency_s,
)
from quicgw.core.latency import EngineRequest
from quicgw.core.qos import Priority, RequestQoS
from quicgw.core.routing import ClusterView, InstanceLoad, RouteRequest, create_router
from rlrouter.cluster import build_instances, cluster_specs, parse_cluster, random_cluster
from rlrouter.env import ENV_ID, LLMRoutingEnv
from rlrouter.evaluation import Scenario, evaluate, mean_score
from rlrouter.policy import NumpyQPolicy
from rlrouter.routers import (
    TUNED_RESERVE,
    TUNED_RESERVE_MARGINS,
    DQNRouter,
    SlackFitRouter,
    baseline_routers,
)
from rlrouter.sim import Simulator
from rlrouter.workloads import load_trace, make_workload, nominal_capacity_rps

SMALL = {"duration_s": 30.0, "warmup_s": 2.0, "max_steps": 300}


def _arrivals(kind="stable", seed=0, duration=40.0, cluster="poster", scale=1.0):
    inst = build_instances(cluster_specs(cluster))
    return inst, make_workload(kind, np.random.default_rng(seed), duration,
                               nominal_capacity_rps(inst), load_scale=scale)


# -- environment ------------------------------------------------------------------------------

def test_env_registered_and_passes_gymnasium_and_sb3_checks():
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    assert rlrouter.ENV_ID == ENV_ID == "rlrouter/LLMRouting-v0"
    env = gym.make(ENV_ID, config=SMALL)
    gym_check(env.unwrapped, skip_render_check=True)
    sb3_check(LLMRoutingEnv(SMALL), warn=True)
    env = gym.make(ENV_ID, config=dict(SMALL, cluster="random", cluster_size=[2, 16]))
    gym_check(env.unwrapped, skip_render_check=True)


def test_env_config_errors_name_the_key():
    with pytest.raises(ValueError, match="unknown env config keys"):
        LLMRoutingEnv({"clustr": "poster"})
    with pytest.raises(ValueError, match="unknown workload"):
        LLMRoutingEnv({"workload": "bursty"})


def test_env_is_deterministic_given_seed_and_obs_in_bounds():
    def rollout(seed):
        env = gym.make(ENV_ID, config=dict(SMALL, cluster="random", load_scale=[0.5, 1.5]))
        obs, info = env.reset(seed=seed)
        out = [obs]
        rng = np.random.default_rng(3)
        for _ in range(200):
            valid = np.flatnonzero(info["action_mask"])
            obs, r, term, trunc, info = env.step(int(rng.choice(valid)))
            out.append(np.append(obs, r))
            if term or trunc:
                break
        return np.concatenate(out)

    a, b, c = rollout(5), rollout(5), rollout(6)
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    space = LLMRoutingEnv.observation_space
    assert space.shape == (OBS_DIM,)
    obs = a[:OBS_DIM]
    assert np.all(obs >= space.low) and np.all(obs <= space.high)


def test_env_action_mask_and_absent_slot_fallback():
    env = LLMRoutingEnv(dict(SMALL, cluster="poster"))
    obs, info = env.reset(seed=0)
    mask = info["action_mask"]
    assert mask.tolist() == [True] * 4 + [False] * (MAX_INSTANCES - 4)
    inst = obs[GLOBAL_DIM:].reshape(MAX_INSTANCES, INSTANCE_DIM)
    assert np.all(inst[4:] == 0) and np.all(inst[:4, 0] == 1)
    before = env.sim.routed.copy()
    k = env.sim.current_index
    env.step(13)  # absent: routed to the valid slot 13 % 4
    assert before[k] == -1 and env.sim.routed[k] == 13 % 4


@pytest.mark.parametrize("reward", ["shaped", "completion"])
def test_rewards_sum_to_the_weighted_score(reward):
    env = LLMRoutingEnv(dict(duration_s=40.0, warmup_s=0.0, max_steps=0, reward=reward,
                             workload="unpredictable", load_scale=1.5))
    _, info = env.reset(seed=1)
    total, rng = 0.0, np.random.default_rng(0)
    while True:
        _, r, term, trunc, info = env.step(int(rng.integers(4)))
        total += r
        if term or trunc:
            break
    assert term and not trunc
    board = env.sim.board
    assert total == pytest.approx(board.weighted_reward, abs=1e-6)
    assert info["score"] == pytest.approx(board.score)
    assert board.weight_total > 0 and 0 < board.score < 1


# -- simulator and workloads -----------------------------------------------------------------

def test_sim_is_deterministic_and_scores_every_request():
    inst, arr = _arrivals("unpredictable", seed=3)
    a = Simulator(inst, arr).run(SlackFitRouter())
    b = Simulator(inst, arr).run(SlackFitRouter())
    assert a.score == b.score and a.requests == len(arr)
    assert sum(c["requests"] for c in a.board.per_class.values()) == len(arr)


def test_sim_engines_follow_the_core_latency_model():
    """One request on an idle instance takes exactly the latency model's isolated latency."""
    inst = build_instances(parse_cluster("medium"))
    _, arr = _arrivals(duration=5.0)
    arr.time, arr.cls, arr.input_tokens, arr.output_tokens, arr.task = (
        arr.time[:1], arr.cls[:1], arr.input_tokens[:1], arr.output_tokens[:1], arr.task[:1])
    res = Simulator(inst, arr).run(SlackFitRouter())
    expect = inst[0].latency.isolated_latency_s(int(arr.input_tokens[0]), int(arr.output_tokens[0]))
    assert res.latency_p50_s == pytest.approx(expect, rel=1e-9)


def test_workloads_follow_their_schedules():
    inst, stable = _arrivals("stable", seed=0, duration=300.0)
    cap = nominal_capacity_rps(inst)
    for t0, t1, rate in stable.schedule:
        n = np.sum((stable.time >= t0) & (stable.time < t1))
        assert n == pytest.approx(rate * (t1 - t0), rel=0.25)
    assert {round(r / cap, 3) for _, _, r in stable.schedule} <= {0.15, 0.35, 0.6, 0.25, 0.5}
    _, u1 = _arrivals("unpredictable", seed=1, duration=300.0)
    _, u2 = _arrivals("unpredictable", seed=2, duration=300.0)
    assert [s[2] for s in u1.schedule] != [s[2] for s in u2.schedule]
    assert np.all(np.diff(u1.time) >= 0)
    shares = np.bincount(u1.cls, minlength=3) / len(u1)
    assert shares == pytest.approx([0.30, 0.45, 0.25], abs=0.03)


def test_trace_replay(tmp_path):
    p = tmp_path / "trace.csv"
    p.write_text("time_s,class,input_tokens,output_tokens\n"
                 "10.5,free,100,20\n10.0,realtime,,\n11.0,bulk,2000,50\n")
    arr = load_trace(p, np.random.default_rng(0))
    assert arr.time.tolist() == [0.0, 0.5, 1.0]
    assert [arr.class_names[c] for c in arr.cls] == ["realtime", "free", "bulk"]
    assert arr.input_tokens[1:].tolist() == [100, 2000] and arr.input_tokens[0] > 0
    inst = build_instances(cluster_specs("poster"))
    assert Simulator(inst, arr).run(SlackFitRouter()).requests == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("time_s,class\n1.0,vip\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: bad row"):
        load_trace(bad, np.random.default_rng(0))


def test_clusters():
    assert len(build_instances(cluster_specs("poster"))) == 4
    unseen = build_instances(cluster_specs("unseen"))
    assert len(unseen) == 10 and {i.gpu for i in unseen} - {"a100-80gb", "h100-80gb"}
    rng = np.random.default_rng(0)
    sizes = [len(random_cluster(rng)) for _ in range(200)]
    assert min(sizes) == 2 and max(sizes) == MAX_INSTANCES
    with pytest.raises(KeyError):
        parse_cluster("huge@a100-80gb")


# -- network stage ---------------------------------------------------------------------------

def _link(scheduler, loss=0.0):
    from rlrouter.network import Link, NetworkConfig
    return Link(NetworkConfig(scheduler=scheduler, rate_mbps=8.0, delay_ms=20.0, loss=loss),
                np.random.default_rng(0))


def _qos(c, t):
    tc = DEFAULT_CLASSES[c]
    return RequestQoS(tc, t, t + tc.deadline_ms / 1000, Priority(tc.urgency))


@pytest.mark.parametrize("scheduler,realtime_first", [("edf", True), ("abs", True),
                                                      ("fcfs", False), ("tcp", True)])
def test_network_schedulers_order_the_bytes(scheduler, realtime_first):
    """A 100 KB bulk upload starts first; a realtime request follows 1 ms later (tcp:
    HTTP/2 interleaves frames round-robin, so without loss the short one finishes first)."""
    link = _link(scheduler)
    link.open(0.0, 1, 100_000, _qos(2, 0.0))
    link.open(0.001, 2, 8_000, _qos(0, 0.001))
    done = dict(link.run(math.inf))
    assert (done[2] < done[1]) == realtime_first
    assert done[1] >= 100_000 / 1e6 + 0.02  # serialisation + propagation


def test_tcp_head_of_line_blocking_vs_quic_under_loss():
    def times(s):
        link = _link(s, loss=0.05)
        for k in range(20):
            link.open(0.01 * k, k, 20_000, _qos(k % 3, 0.01 * k))
        return np.mean([t for _, t in link.run(math.inf)])

    assert times("tcp") > times("rr")


def test_network_stage_in_the_simulator():
    sc = Scenario("poster", "stable", 30.0, network={"scheduler": "edf", "rate_mbps": 10})
    with_net = sc.run(SlackFitRouter(0.5), 1000)
    without = Scenario("poster", "stable", 30.0).run(SlackFitRouter(0.5), 1000)
    assert with_net.requests == without.requests
    assert with_net.latency_p50_s > without.latency_p50_s
    with pytest.raises(ValueError, match="unknown network scheduler"):
        Scenario("poster", "stable", 5.0, network={"scheduler": "wfq"}).run(SlackFitRouter(), 1)


# -- features, routers, policy ------------------------------------------------------------------

def _view(loads, cluster="poster"):
    inst = build_instances(cluster_specs(cluster))
    return ClusterView(inst, [InstanceLoad(in_flight=a, queued=b) for a, b in loads], 0.0,
                       {c.name: (0.5, 0.4, 0.3) for c in DEFAULT_CLASS_TABLE})


def _request(slack=1.8, inp=200, out=48, cls=0):
    tc = list(DEFAULT_CLASS_TABLE)[cls]
    return RouteRequest(tc.name, tc.priority, cls, slack, tc.deadline_ms / 1000, inp, out,
                        weight=tc.reward_weight)


def test_observation_layout_and_shared_prediction():
    view = _view([(3, 0), (32, 10), (0, 0), (5, 1)])
    req = _request()
    obs = observation(req, view)
    assert obs.shape == (OBS_DIM,) and obs.dtype == np.float32
    assert np.all(np.abs(obs) <= 1)
    inst = obs[GLOBAL_DIM:].reshape(MAX_INSTANCES, INSTANCE_DIM)
    fits = INSTANCE_FEATURES.index("fits")
    for i, load in enumerate(view.loads):
        est = predicted_latency_s(view.instances[i], load.in_flight, load.queued,
                                  req.input_tokens, req.output_tokens)
        assert inst[i, fits] == float(est <= req.slack_s)
    assert obs[0] == 1 and obs[1] == 0  # realtime one-hot


def test_rate_estimator_converges():
    est = RateEstimator()
    for k in range(2000):
        est.observe("free", k * 0.1)
    r = est.rates("free", 200.0)
    assert r[0] == pytest.approx(10, rel=0.1) and r[1] == pytest.approx(10, rel=0.1)


def test_slackfit_picks_the_most_accurate_model_that_meets_the_deadline():
    router = create_router("slackfit")
    assert isinstance(router, SlackFitRouter)
    inst, arr = _arrivals(duration=1.0)
    sim = Simulator(inst, arr)
    large = [i for i, x in enumerate(inst) if x.model == "llama-3.1-70b"][0]
    small = [i for i, x in enumerate(inst) if x.model == "llama-3.2-1b"][0]
    assert router.route(_request(slack=1.8), sim.view) == large
    assert router.route(_request(slack=0.4), sim.view) == small
    # Per-class reserves: the same slack is enough for the large model in one class only.
    per_class = SlackFitRouter((0.0, 0.8))
    assert per_class.route(_request(slack=1.8, cls=0), sim.view) == large
    assert per_class.route(_request(slack=1.8, cls=1), sim.view) != large
    # Load the large instance: its engine predicts a miss, the next best model wins.
    eng = sim.engines[large]
    for k in range(64):
        eng.submit(EngineRequest(("x", k), 200, 150, 0.0))
    assert router.route(_request(slack=1.8), sim.view) != large
    assert create_router("slackfit:0.5").margin == 0.5
    per_class = create_router("slackfit:0.4/0.5/0.7")
    assert per_class.margins == (0.4, 0.5, 0.7) and per_class.margin_for(7) == 0.7
    with pytest.raises(ValueError):
        SlackFitRouter("0.4/1.2")
    tuned = create_router("slackfit:tuned")  # the slackfit-reserve baseline, by name
    assert (tuned.margins, tuned.reserve) == (TUNED_RESERVE_MARGINS, TUNED_RESERVE)
    assert create_router("slackfit:tuned", reserve=0.5).reserve == 0.5
    with pytest.raises(ValueError, match="tuned"):
        SlackFitRouter("fast")


def test_dqn_router_is_registered_and_serves_any_cluster():
    router = create_router("dqn")
    assert isinstance(router, DQNRouter)
    for cluster in ("poster", "unseen", "small*2,large@h100-80gb*14"):
        inst = build_instances(cluster_specs(cluster))
        view = ClusterView(inst, [InstanceLoad() for _ in inst], 0.0,
                           {c.name: (0.0, 0.0, 0.0) for c in DEFAULT_CLASS_TABLE})
        assert 0 <= router.route(_request(), view) < len(inst)
        view.loads[0].healthy = False
        for i in range(1, len(inst)):
            view.loads[i].healthy = i == len(inst) - 1
        assert router.route(_request(), view) == len(inst) - 1


def _sb3_model(**kw):
    from rlrouter.qnet import InstanceDQNPolicy, RoutingDQN
    env = LLMRoutingEnv(dict(SMALL, cluster="random", cluster_size=[2, 16]))
    return RoutingDQN(InstanceDQNPolicy, env, policy_kwargs={"net_arch": [32, 32]}, seed=0,
                      device="cpu", **kw)


def _random_obs(n, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.uniform(-1, 1, size=(n, OBS_DIM)).astype(np.float32)
    inst = obs[:, GLOBAL_DIM:].reshape(n, MAX_INSTANCES, INSTANCE_DIM)
    k = rng.integers(1, MAX_INSTANCES + 1, size=n)
    for j in range(n):
        inst[j, :, 0] = 0.0
        inst[j, :k[j], 0] = 1.0
        inst[j, k[j]:, :] = 0.0
    return obs


def test_numpy_policy_matches_sb3_on_1000_random_observations(tmp_path):
    import torch as th

    from rlrouter.qnet import export_numpy

    model = _sb3_model(learning_starts=50, buffer_size=1000, batch_size=16, train_freq=1,
                       target_update_interval=50)
    model.learn(total_timesteps=200)  # a tiny smoke run: the weights move off their init
    obs = _random_obs(1000)
    policy = export_numpy(model.q_net, {"test": True})
    policy.save(tmp_path / "p.npz")
    loaded = NumpyQPolicy.load(tmp_path / "p.npz")
    sb3_actions, _ = model.predict(obs, deterministic=True)
    with th.no_grad():
        q_torch = model.q_net(th.as_tensor(obs)).numpy()
    q_np = loaded.q_values_batch(obs)
    present = obs[:, GLOBAL_DIM::INSTANCE_DIM][:, :MAX_INSTANCES] > 0.5
    assert np.allclose(q_np[present], q_torch[present], atol=1e-4)
    np_actions = np.array([loaded.act(o) for o in obs])
    assert np.array_equal(np_actions, sb3_actions)
    assert np.array_equal(np.argmax(q_np, axis=1), sb3_actions)
    assert loaded.meta == {"test": True}


def test_qrdqn_quantile_mean_exports_exactly():
    """QR-DQN's greedy action is the argmax of its quantiles' mean; the exported numpy policy
    (the head's mean as its last layer) picks the same on 1,000 random observations."""
    import torch as th

    from rlrouter.qnet import InstanceQRDQNPolicy, RoutingQRDQN, export_numpy

    env = LLMRoutingEnv(dict(SMALL, cluster="random", cluster_size=[2, 16]))
    model = RoutingQRDQN(InstanceQRDQNPolicy, env, policy_kwargs={"net_arch": [32, 32],
                                                                  "n_quantiles": 8},
                         learning_starts=50, buffer_size=1000, batch_size=16, train_freq=1,
                         target_update_interval=50, seed=0, device="cpu")
    model.learn(total_timesteps=200)
    obs = _random_obs(1000, seed=3)
    policy = export_numpy(model.value_net)
    sb3_actions, _ = model.predict(obs, deterministic=True)
    with th.no_grad():
        q_torch = model.value_net(th.as_tensor(obs)).mean(dim=1).numpy()
    q_np = policy.q_values_batch(obs)
    present = obs[:, GLOBAL_DIM::INSTANCE_DIM][:, :MAX_INSTANCES] > 0.5
    assert np.allclose(q_np[present], q_torch[present], atol=1e-4)
    assert np.array_equal(np.argmax(q_np, axis=1), sb3_actions)
    assert np.array_equal([policy.act(o) for o in obs], sb3_actions)


def test_shipped_policy_loads_and_beats_naive_baselines_quickly():
    policy = NumpyQPolicy.load()  # rlrouter/policies/dqn.npz, from the package
    sc = Scenario("poster", "unpredictable", 60.0)
    dqn = mean_score(evaluate(lambda: DQNRouter(policy), sc, (1000,)))
    rr = mean_score(evaluate(lambda: baseline_routers()["round-robin"], sc, (1000,)))
    assert dqn > rr


def test_shipped_policy_argmax_equals_sb3_with_its_weights():
    """The shipped numpy policy, loaded into the SB3 Q-network it was exported from, picks the
    same instance on 1,000 random observations (fast path and masked path alike)."""
    import torch as th

    policy = NumpyQPolicy.load()
    h1, h2 = policy.W1.shape[1], policy.W2.shape[1]
    model = _sb3_model()
    model = type(model)(type(model.policy), model.env, policy_kwargs={"net_arch": [h1, h2]},
                        seed=0, device="cpu")
    q = model.q_net
    with th.no_grad():
        q.l1.weight.copy_(th.as_tensor(policy.W1.T))
        q.l1.bias.copy_(th.as_tensor(policy.b1))
        q.l2.weight.copy_(th.as_tensor(policy.W2.T))
        q.l2.bias.copy_(th.as_tensor(policy.b2))
        q.out.weight.copy_(th.as_tensor(policy.w3[None, :]))
        q.out.bias.fill_(policy.b3)
    obs = _random_obs(1000, seed=1)
    sb3_actions, _ = model.predict(obs, deterministic=True)
    n_present = (obs[:, GLOBAL_DIM::INSTANCE_DIM][:, :MAX_INSTANCES] > 0.5).sum(axis=1)
    ours = [policy.best(o, int(k)) for o, k in zip(obs, n_present, strict=True)]
    assert np.array_equal(np.asarray(ours), sb3_actions)
    assert np.array_equal(np.argmax(policy.q_values_batch(obs), axis=1), sb3_actions)


def test_slackfit_reserve_keeps_the_best_model_for_the_top_class():
    # Poster cluster, order: large, medium, medium, small; the large one is half full.
    view = _view([(20, 0), (0, 0), (0, 0), (0, 0)])
    plain, reserving = SlackFitRouter(0.0), SlackFitRouter(0.0, reserve=0.5)
    assert plain.route(_request(slack=1.8, cls=1), view) == 0
    assert reserving.route(_request(slack=1.8, cls=1), view) != 0
    assert reserving.route(_request(slack=1.8, cls=0), view) == 0
    # Below the reserve the large instance is open to every class.
    assert reserving.route(_request(slack=1.8, cls=1), _view([(8, 0), (0, 0), (0, 0), (0, 0)])) == 0
    # Every instance reserved (a cluster of the best model only): the reservation is ignored.
    only_large = ClusterView(view.instances[:1], [InstanceLoad(in_flight=30)], 0.0, view.rates)
    assert reserving.route(_request(slack=5.0, cls=2), only_large) == 0
    with pytest.raises(ValueError):
        SlackFitRouter(0.0, reserve=0.0)


def test_fork_is_an_independent_copy_of_the_run():
    from rlrouter.workloads import poisson_arrivals

    sc = Scenario("poster", "stable", 20.0)
    sim = Simulator(sc.instances, sc.arrivals(3))
    router = SlackFitRouter(0.5)
    for _ in range(200):
        sim.route(router.route(sim.request, sim.view))
    twin = sim.fork()
    sampled = sim.fork(poisson_arrivals([(sim.now, sim.now + 2.0, 40.0)], np.random.default_rng(1)))
    assert sampled.n < sim.n
    while not sampled.done:  # routing a fork leaves the run alone
        sampled.route(router.route(sampled.request, sampled.view))
    a = sim.run(router)
    b = twin.run(SlackFitRouter(0.5))
    assert a.score == b.score and a.requests == b.requests
    assert a.score == Scenario("poster", "stable", 20.0).run(SlackFitRouter(0.5), 3).score
