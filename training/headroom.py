"""How much better than a given router can routing get on this workload? A rollout estimate.

    .venv/bin/python training/headroom.py                          # slackfit-reserve, 60 s, seed 500
    .venv/bin/python training/headroom.py --base slackfit-class --duration 150 --samples 4

One step of policy improvement by simulation (Bertsekas' rollout): at every decision, each
instance is tried on a copy of the simulator (:meth:`rlrouter.sim.Simulator.fork`), the base
router serves the next ``--horizon`` seconds of arrivals, and the instance whose rollout earns
the most (the shaped reward, which telescopes to the score) is chosen. Two flavours:

* ``clairvoyant``: the rollouts see the run's real future arrivals, an upper reference no
  online router can reach (it knows the next few seconds of traffic);
* ``sampled``: the rollouts see ``--samples`` futures drawn from the workload's current rate
  (the same futures for every instance, so their comparison is fair), which an online router
  with a perfect model of the arrival process could do, at a cost of ``instances x samples``
  simulations per decision.

Runs on validation seeds by default (never the test seeds). Slow by design (one rollout per
instance per decision): about 2-8 minutes per simulated minute on one core.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from rlrouter.evaluation import VALIDATION_SEEDS, Scenario
from rlrouter.routers import baseline_routers
from rlrouter.sim import Simulator
from rlrouter.workloads import poisson_arrivals


def _rate_at(schedule: list[tuple[float, float, float]], t: float) -> float:
    for t0, t1, rate in schedule:
        if t0 <= t < t1:
            return rate
    return schedule[-1][2] if schedule else 0.0


def rollout_run(scenario: Scenario, seed: int, base_name: str, horizon_s: float,
                samples: int, rng: np.random.Generator | None) -> float:
    """Score of the rollout router (``rng`` None: clairvoyant, else ``samples`` sampled futures)."""
    base = baseline_routers()[base_name]
    sim = Simulator(scenario.instances, scenario.arrivals(seed))
    n = len(scenario.instances)
    while not sim.done:
        if rng is None:
            futures = [None]
        else:
            rate = _rate_at(sim.arrivals.schedule, sim.now)
            futures = [poisson_arrivals([(sim.now, sim.now + horizon_s, rate)], rng)
                       for _ in range(samples)]
        values = np.zeros(n)
        for a in range(n):
            if not sim.loads[a].healthy:
                values[a] = -np.inf
                continue
            for future in futures:
                fork = sim.fork(future)
                value = fork.route(a)
                end = sim.now + horizon_s
                # Sampled futures end at the horizon; the real one is cut there.
                while not fork.done and (future is not None or fork.now < end):
                    value += fork.route(base.route(fork.request, fork.view))
                values[a] += value
        sim.route(int(np.argmax(values)))
    return sim.result().score


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="slackfit-reserve", help="base router (a baseline name)")
    ap.add_argument("--cluster", default="poster")
    ap.add_argument("--workloads", nargs="+", default=["stable", "unpredictable"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[VALIDATION_SEEDS[0]])
    ap.add_argument("--duration", type=float, default=60.0, help="simulated seconds per run")
    ap.add_argument("--horizon", type=float, default=3.0, help="rollout horizon (s)")
    ap.add_argument("--samples", type=int, default=4, help="sampled futures per decision")
    ap.add_argument("--no-clairvoyant", action="store_true", help="skip the clairvoyant rollouts")
    ap.add_argument("--no-sampled", action="store_true", help="skip the sampled rollouts")
    args = ap.parse_args(argv)
    if args.no_clairvoyant and args.no_sampled:
        ap.error("--no-clairvoyant and --no-sampled together leave nothing to run")
    if args.base not in baseline_routers():
        ap.error(f"unknown base router {args.base!r} (choose from {', '.join(baseline_routers())})")
    ratios: dict[str, list[float]] = {}
    for w in args.workloads:
        sc = Scenario(args.cluster, w, args.duration)
        for seed in args.seeds:
            t0 = time.perf_counter()
            base = sc.run(baseline_routers()[args.base], seed).score
            row = {"base": base}
            if not args.no_clairvoyant:
                row["clairvoyant"] = rollout_run(sc, seed, args.base, args.horizon, 1, None)
            if not args.no_sampled:
                row["sampled"] = rollout_run(sc, seed, args.base, args.horizon, args.samples,
                                             np.random.default_rng(seed + 1))
            for k, x in row.items():
                if k != "base":
                    ratios.setdefault(f"{w}:{k}", []).append(x / base)
            print(f"{w} seed {seed}: " + " ".join(f"{k}={x:.4f}" for k, x in row.items())
                  + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("headroom: " + " ".join(f"{k}={np.mean(v):.3f}" for k, v in ratios.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
