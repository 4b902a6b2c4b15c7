"""The same workload through the live gateway and through the simulator, for one router.

    .venv/bin/python -m rlrouter.live --router dqn --workload stable --duration 60 --seed 1000

Starts one emulated backend process per instance of the cluster (the shared latency model, real
time, priority queue), the gateway in this process with the chosen router, and replays the
workload's arrivals over HTTP/3 with the SDK: each request is a ``/v1/completions`` call whose
prompt is ``input_tokens`` token ids and whose ``max_tokens`` is its output length, sent at its
arrival time with its traffic class. A request scores its serving model's quality (times its
class weight) if the client has the whole answer within the class deadline. The simulator runs
the same arrivals with the same router. The last line is::

    live: router=<r> requests=<n> live_score=<x> sim_score=<y> ratio=<x/y>

Real time on shared CPUs: keep the run short and the machine otherwise quiet; the gateway's
own overhead (HTTP/3, JSON, admission) is in the live figure and not in the simulator's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

import numpy as np

from quicgw.core.classes import DEFAULT_CLASS_TABLE
from quicgw.core.routing import create_router
from quicgw.core.score import ScoreBoard
from rlrouter.cluster import cluster_specs
from rlrouter.evaluation import Scenario


async def run_live(router: str, scenario: Scenario, seed: int, scheduler: str = "edf",
                   progress=print, router_options: dict | None = None) -> tuple[ScoreBoard, int]:
    from quicgw.backends.process import BackendProcess, running_backends
    from quicgw.client import APIError, AsyncClient, RequestTimeout
    from quicgw.config import parse_config
    from quicgw.gateway.server import Gateway

    arrivals = scenario.arrivals(seed)
    specs = cluster_specs(scenario.cluster)
    instances = scenario.instances
    classes = list(DEFAULT_CLASS_TABLE)
    procs = [BackendProcess(s.model, s.gpu, max_batch=s.max_batch, queue_policy="priority")
             for s in specs]
    board = ScoreBoard()
    by_model = {i.model: i for i in instances}
    errors = 0
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_backends(procs))
        config = parse_config({
            "gateway": {"host": "127.0.0.1", "port": 0, "scheduler": scheduler,
                        "router": router, "router_options": router_options or {}},
            "backends": [{"name": inst.name, "model": inst.model, "gpu": inst.gpu, "url": p.url}
                         for inst, p in zip(instances, procs, strict=True)],
        })
        gw = await stack.enter_async_context(Gateway(config))
        client = await stack.enter_async_context(
            AsyncClient(gw.url, verify=gw.cafile, scheduler=scheduler, timeout=30.0))
        await client.connect()
        n = len(arrivals)
        progress(f"live: {n} requests over {scenario.duration_s:.0f} s through {gw.url} "
                 f"(router {router}, {len(procs)} emulated backends)")
        t0 = time.monotonic() + 0.5

        async def one(k: int) -> None:
            nonlocal errors
            c = classes[int(arrivals.cls[k])]
            await asyncio.sleep(max(0.0, t0 + float(arrivals.time[k]) - time.monotonic()))
            start = time.monotonic()
            task = arrivals.tasks[int(arrivals.task[k])]
            model = None
            try:
                r = await client.request(
                    "POST", "/v1/completions",
                    {"model": "auto", "prompt": [1] * int(arrivals.input_tokens[k]),
                     "max_tokens": int(arrivals.output_tokens[k])},
                    headers={"x-task": task}, traffic_class=c.name)
                latency = time.monotonic() - start
                if r.status == 200:
                    model = r.headers.get("x-quicgw-model")
                else:
                    errors += 1
            except (APIError, RequestTimeout, ConnectionError):
                latency = None
                errors += 1
            met = model is not None and latency is not None and latency <= c.deadline_ms / 1000
            q = by_model[model].task_quality(task) if model in by_model else 0.0
            board.add(c.name, c.reward_weight, q, met, latency)

        await asyncio.gather(*(one(k) for k in range(n)))
    return board, errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="live gateway vs simulator, same workload")
    ap.add_argument("--router", default="dqn")
    ap.add_argument("--cluster", default="poster")
    ap.add_argument("--workload", default="stable")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--load-scale", type=float, default=1.0)
    ap.add_argument("--router-option", action="append", default=[], metavar="KEY=VALUE",
                    help="router keyword option, as the gateway's router_options (e.g. "
                         "--router slackfit:0.35/0.35/0.8 --router-option reserve=0.625)")
    args = ap.parse_args(argv)
    options = {}
    for kv in args.router_option:
        key, sep, value = kv.partition("=")
        if not sep:
            ap.error(f"--router-option wants KEY=VALUE, got {kv!r}")
        try:
            options[key] = float(value)
        except ValueError:
            options[key] = value
    sc = Scenario(args.cluster, args.workload, args.duration, load_scale=args.load_scale)
    sim = sc.run(create_router(args.router, **options), args.seed)
    board, errors = asyncio.run(run_live(args.router, sc, args.seed, router_options=options))
    live = board.score
    print(f"simulator: score {sim.score:.4f}; live: score {live:.4f}, "
          f"attainment {', '.join(f'{c} {board.attainment(c):.2f}' for c in board.per_class)}, "
          f"{errors} errors")
    ratio = live / sim.score if sim.score else float("nan")
    print(f"live: router={args.router} requests={sim.requests} live_score={live:.4f} "
          f"sim_score={sim.score:.4f} ratio={ratio:.3f}")
    return 0 if np.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
