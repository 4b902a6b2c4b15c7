"""``quicgw demo`` (what ``make demo`` runs): the whole path on one machine.

It starts three emulated backends (small, medium and large models, each in its own process),
the gateway in this process on an ephemeral port, and sends a seeded mixed workload of the
source poster's three classes through HTTP/3 with the SDK, all on one QUIC connection:

* ``realtime``: short chat requests, streamed token by token;
* ``free``: short chat requests, answered whole;
* ``bulk``: long-input requests (several KB of text), answered whole.

Arrivals are Poisson at ``--rate`` requests/s. A request meets its deadline if it completes
within its class's deadline; its score is the quality of the model that served it (from the
catalog) if it met the deadline, times the class weight (:mod:`quicgw.core.score`). The last
line is::

    demo: classes=3 requests=N completed=N attainment=<realtime attainment> score=<score>

Everything it started is stopped on exit, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from quicgw.core.catalog import DEFAULT_TASK, quality
from quicgw.core.classes import DEFAULT_CLASS_TABLE
from quicgw.core.score import ScoreBoard

DEMO_BACKENDS = (  # (name, model, gpu)
    ("small-0", "llama-3.2-1b", "a100-80gb"),
    ("medium-0", "llama-3.1-8b", "a100-80gb"),
    ("large-0", "llama-3.1-70b", "h100-80gb"),
)
CLASS_MIX = ("realtime", "free", "bulk")  # picked uniformly at random, as in the poster
REQUEST_TIMEOUT_S = 30.0
_WORDS = ("network", "packet", "stream", "deadline", "model", "quality", "latency", "token",
          "gateway", "priority", "schedule", "batch", "request", "answer", "serve", "route")


@dataclass(slots=True)
class Outcome:
    traffic_class: str
    model: str | None
    latency_s: float | None  # None: it did not complete
    error: str | None = None


@dataclass(slots=True)
class DemoResult:
    requests: int
    completed: int
    attainment: float
    score: float
    board: ScoreBoard
    outcomes: list[Outcome]

    def last_line(self) -> str:
        return (f"demo: classes={len(CLASS_MIX)} requests={self.requests} "
                f"completed={self.completed} attainment={self.attainment:.3f} "
                f"score={self.score:.3f}")


def _text(rng: random.Random, n_chars: int) -> str:
    words: list[str] = []
    size = 0
    while size < n_chars:
        w = rng.choice(_WORDS)
        words.append(w)
        size += len(w) + 1
    return " ".join(words)[:n_chars]


def make_workload(n: int, rate: float, seed: int) -> list[tuple[float, str, str, int]]:
    """Seeded (arrival offset s, class, prompt, max_tokens) for ``n`` requests."""
    rng = random.Random(seed)
    t = 0.0
    out = []
    for _ in range(n):
        t += rng.expovariate(rate)
        cls = rng.choice(CLASS_MIX)
        if cls == "bulk":
            prompt = _text(rng, rng.randint(8_000, 24_000))  # ~2k-6k tokens of input
            max_tokens = rng.randint(16, 48)
        else:
            prompt = _text(rng, rng.randint(200, 800))
            max_tokens = rng.randint(16, 64)
        out.append((t, cls, prompt, max_tokens))
    return out


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summarise(outcomes: list[Outcome]) -> DemoResult:
    board = ScoreBoard()
    for o in outcomes:
        tc = DEFAULT_CLASS_TABLE[o.traffic_class]
        met = o.latency_s is not None and o.latency_s * 1000.0 <= tc.deadline_ms
        q = quality(o.model, DEFAULT_TASK) if o.model else 0.0
        board.add(tc.name, tc.reward_weight, q, met, o.latency_s)
    completed = sum(1 for o in outcomes if o.latency_s is not None)
    return DemoResult(len(outcomes), completed, board.attainment("realtime"), board.score,
                      board, outcomes)


def format_table(result: DemoResult) -> str:
    head = (f"{'class':<10}{'requests':>9}{'completed':>10}{'attain':>8}{'mean ms':>9}"
            f"{'p95 ms':>9}{'score':>7}  models")
    lines = [head, "-" * len(head)]
    for name in CLASS_MIX:
        mine = [o for o in result.outcomes if o.traffic_class == name]
        stats = result.board.per_class.get(name)
        if not mine or stats is None:
            continue
        lat = [o.latency_s * 1000 for o in mine if o.latency_s is not None]
        models: dict[str, int] = {}
        for o in mine:
            if o.model:
                models[o.model] = models.get(o.model, 0) + 1
        mix = " ".join(f"{m}:{k}" for m, k in sorted(models.items()))
        score = stats["reward"] / stats["weight"] if stats["weight"] else 0.0
        mean = f"{sum(lat) / len(lat):9.0f}" if lat else f"{'-':>9}"
        p95 = f"{_p95(lat):9.0f}" if lat else f"{'-':>9}"
        lines.append(f"{name:<10}{len(mine):>9}{int(stats['completed']):>10}"
                     f"{result.board.attainment(name):>8.3f}{mean}{p95}{score:>7.3f}  {mix}")
    errors = [o.error for o in result.outcomes if o.error]
    if errors:
        lines.append(f"errors: {len(errors)} (first: {errors[0]})")
    return "\n".join(lines)


async def _one(client, cls: str, prompt: str, max_tokens: int) -> Outcome:
    from quicgw.client import APIError, RequestTimeout

    messages = [{"role": "user", "content": prompt}]
    start = time.monotonic()
    try:
        if cls == "realtime":
            async with client.stream_chat(messages, max_tokens=max_tokens, traffic_class=cls,
                                          timeout=REQUEST_TIMEOUT_S) as tokens:
                async for _ in tokens:
                    pass
            model = tokens.response.headers.get("x-quicgw-model")
        else:
            r = await client.chat(messages, max_tokens=max_tokens, traffic_class=cls,
                                  timeout=REQUEST_TIMEOUT_S)
            model = r.headers.get("x-quicgw-model")
        return Outcome(cls, model, time.monotonic() - start)
    except (APIError, RequestTimeout, ConnectionError) as e:
        return Outcome(cls, None, None, f"{type(e).__name__}: {e}")


async def run_demo(requests: int = 120, rate: float = 8.0, seed: int = 0,
                   scheduler: str = "edf", router: str = "slackfit:tuned", time_scale: float = 1.0,
                   progress: Callable[[str], None] | None = None) -> DemoResult:
    """Start backends and gateway, run the workload, stop everything; returns the outcome."""
    from quicgw.backends.process import BackendProcess, running_backends
    from quicgw.client import AsyncClient
    from quicgw.config import parse_config
    from quicgw.gateway.server import Gateway

    say = progress or (lambda _msg: None)
    workload = make_workload(requests, rate, seed)
    procs = [BackendProcess(model, gpu, time_scale=time_scale, queue_policy="priority")
             for _, model, gpu in DEMO_BACKENDS]
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(running_backends(procs))
        config = parse_config({
            "gateway": {"host": "127.0.0.1", "port": 0, "scheduler": scheduler,
                        "router": router},
            "backends": [{"name": name, "model": model, "gpu": gpu, "url": p.url}
                         for (name, model, gpu), p in zip(DEMO_BACKENDS, procs, strict=True)],
        })
        gw = await stack.enter_async_context(Gateway(config))
        say(f"demo: gateway {gw.url} (scheduler {scheduler}, router {router}); backends "
            + ", ".join(f"{m}@{p.url}" for (_, m, _), p in zip(DEMO_BACKENDS, procs,
                                                                  strict=True)))
        client = await stack.enter_async_context(
            AsyncClient(gw.url, verify=gw.cafile, scheduler=scheduler))
        say(f"demo: sending {requests} requests at {rate:g}/s over one HTTP/3 connection "
            f"(seed {seed})")
        t0 = time.monotonic()
        done = 0
        marks = {math.ceil(requests * f / 4) for f in (1, 2, 3, 4)}

        async def fire(offset: float, cls: str, prompt: str, max_tokens: int) -> Outcome:
            nonlocal done
            await asyncio.sleep(max(0.0, t0 + offset - time.monotonic()))
            outcome = await _one(client, cls, prompt, max_tokens)
            done += 1
            if done in marks:
                say(f"demo: {done}/{requests} done ({time.monotonic() - t0:.1f} s)")
            return outcome

        outcomes = await asyncio.gather(*(fire(*w) for w in workload))
    return summarise(list(outcomes))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run emulated backends + gateway and a mixed three-class HTTP/3 workload",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=120, help="requests to send (%(default)s)")
    parser.add_argument("--rate", type=float, default=8.0,
                        help="Poisson arrival rate, requests/s (%(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (%(default)s)")
    parser.add_argument("--scheduler", default="edf", help="QUIC stream scheduler (%(default)s)")
    parser.add_argument("--router", default="slackfit:tuned",
                        help="router spec (%(default)s: the most accurate model that still "
                             "meets the deadline, with tuned margins; try jsq to compare)")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="run the emulated models this many times faster (%(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from quicgw.runtime import event_loop_factory

    if args.requests < 1 or not args.rate > 0 or not args.time_scale > 0:
        print("quicgw demo: --requests must be >= 1, --rate and --time-scale > 0",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

    def progress(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        result = runner.run(run_demo(args.requests, args.rate, args.seed, args.scheduler,
                                     args.router, args.time_scale, progress))
    print(format_table(result))
    print(result.last_line(), flush=True)
    return 0
