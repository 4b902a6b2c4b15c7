"""Simulator and router speed: ``python -m rlrouter.bench``.

* ``steps_per_s``: ``env.step`` calls per second of ``rlrouter/LLMRouting-v0`` (made with
  ``gymnasium.make``, default config: poster cluster, mixed workloads, shaped reward), with
  random valid actions, resets included, one process. Only time spent inside ``step``/``reset``
  counts (the action draw is outside). Random actions overload instances (long queues, full
  batches), the slowest regime; the figure with the shipped policy's actions is printed too.
* ``decision_us_p50``: median wall time of one ``DQNRouter.route`` call on the poster cluster,
  with the shipped policy: the request and live counts packed into a buffer, one compiled
  call (numba: the shared observation kernel and the hidden layers; see rlrouter.policy), then
  numpy's last layer and argmax.

The compiled kernels are loaded (or, the first time after an edit, compiled: a few seconds)
before anything is timed. The last line printed is ``sim: steps_per_s=<x> decision_us_p50=<x>``.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time

import gymnasium as gym
import numpy as np

import rlrouter  # noqa: F401  (registers the env)
from rlrouter.env import ENV_ID
from rlrouter.evaluation import Scenario
from rlrouter.routers import DQNRouter
from rlrouter.sim import Simulator


def bench_env(steps: int, seed: int = 0, config: dict | None = None,
              policy: DQNRouter | None = None) -> float:
    """env steps/s; actions random among the valid ones, or the ``policy``'s (its decision
    time is not counted)."""
    env = gym.make(ENV_ID, config=config or {})
    rng = np.random.default_rng(seed)
    _, info = env.reset(seed=seed)
    valid = np.flatnonzero(info["action_mask"])
    actions = rng.integers(0, 1 << 30, size=steps)
    sim = env.unwrapped
    n = 0
    spent = 0.0
    clock = time.perf_counter
    gc.disable()
    try:
        while n < steps:
            if policy is not None:
                a = policy.route(sim.sim.request, sim.sim.view)
            else:
                a = int(valid[actions[n] % len(valid)])
            t = clock()
            _, _, term, trunc, info = env.step(a)
            if term or trunc:
                _, info = env.reset()
            spent += clock() - t
            if term or trunc:
                valid = np.flatnonzero(info["action_mask"])
            n += 1
    finally:
        gc.enable()
    env.close()
    return n / spent


def bench_decision(decisions: int, seed: int = 1000) -> np.ndarray:
    router = DQNRouter()
    sc = Scenario("poster", "stable", 300.0)
    sim = Simulator(sc.instances, sc.arrivals(seed))
    times = []
    clock = time.perf_counter
    gc.disable()
    try:
        while not sim.done and len(times) < decisions:
            t = clock()
            a = router.route(sim.request, sim.view)
            times.append(clock() - t)
            sim.route(a)
    finally:
        gc.enable()
    return np.asarray(times) * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="simulator and router speed")
    ap.add_argument("--steps", type=int, default=50_000)
    ap.add_argument("--decisions", type=int, default=5_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs (shared CPUs)")
    args = ap.parse_args(argv)
    sps = max(bench_env(args.steps, seed=r) for r in range(args.repeat))
    sps_dqn = max(bench_env(args.steps, seed=r, policy=DQNRouter()) for r in range(args.repeat))
    lat = min((bench_decision(args.decisions) for _ in range(args.repeat)),
              key=lambda x: float(np.median(x)))
    print(f"env: {args.steps} steps, best of {args.repeat}: {sps:,.0f} steps/s with random "
          f"valid actions, {sps_dqn:,.0f} steps/s with the shipped policy's actions")
    print(f"dqn decision: p50 {np.median(lat):.1f} us, p90 {np.percentile(lat, 90):.1f} us, "
          f"p99 {np.percentile(lat, 99):.1f} us over {len(lat)} decisions")
    print(f"sim: steps_per_s={sps:.0f} decision_us_p50={np.median(lat):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
