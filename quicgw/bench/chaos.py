"""Chaos test: requests over HTTP/3 through the gateway while backends are killed and restarted.

    python -m quicgw.bench.chaos --requests 2000 [--seed 0] [--concurrency 48]

Set-up: ``--backends`` emulated OpenAI backends (llama-3.2-1b, each its own process, time
compressed ``--time-scale`` times), the gateway in its own process (health probes every 0.25 s,
two failed probes or one refused connection mark an instance down, one passed probe brings it
back), and this process as
the client: ``--concurrency`` workers on ``--connections`` SDK connections send ``--requests``
requests in total, a seeded mix of streamed and plain chat completions of 16-128 tokens in the
three default classes.

Chaos (seeded by ``--seed``): every 0.2-0.8 s one backend is killed with SIGKILL (in the middle of
whatever it is generating), and each killed backend is restarted on its port 0.5-2 s later (plus
its start-up time, about a second).
At least one backend is kept alive (``--allow-all-down`` lifts that: then requests get 503).

Every request must end in exactly one of:

* ok: a 200 with a complete answer (a JSON completion; a token stream that ended with
  ``[DONE]``);
* errors: an explicit error: an error status (502 backend failed, 503 no instance, 504 expired,
  ...), an error event inside a token stream, or a stream reset with an HTTP/3 error code;
* lost: anything else (a stream that ended without ``[DONE]`` and without an error, a 200 with a
  broken body, the gateway's connection dying): an answer silently dropped or cut;
* hung: no outcome within ``--hang-timeout`` seconds.

Progress every 2 s. Last line: ``chaos: sent=<n> ok=<n> errors=<n> lost=<n> hung=<n>``
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable

from quicgw.bench.load import GatewayProcess, percentile
from quicgw.runtime import event_loop_factory, raise_fd_limit

MODEL = "llama-3.2-1b"
CLASSES = ("realtime", "free", "bulk")


class Backend:
    """One emulated backend process that can be killed and brought back on its port."""

    def __init__(self, name: str, time_scale: float, max_batch: int, nice: int) -> None:
        self.name = name
        self.time_scale = time_scale
        self.max_batch = max_batch
        self.nice = nice
        self.port = 0
        self.proc = None
        self.url = ""

    def start(self) -> None:
        from quicgw.backends.process import BackendProcess

        proc = BackendProcess(MODEL, "a100-80gb", port=self.port, max_batch=self.max_batch,
                              time_scale=self.time_scale, queue_policy="priority",
                              nice=self.nice)
        self.url = proc.start()
        self.port = proc.port
        self.proc = proc  # alive (and killable) only once it listens

    def kill(self) -> None:
        proc = self.proc
        self.proc = None
        if proc is not None and proc.proc is not None:
            proc.proc.kill()  # SIGKILL: no goodbye to anyone
            proc.stop()

    @property
    def alive(self) -> bool:
        return self.proc is not None


async def _one(client, rng: random.Random, hang_timeout: float) -> tuple[str, str]:
    """One request: (outcome, detail)."""
    from quicgw.client import APIError, RequestTimeout, StreamError, StreamResetError
    from quicgw.client.connection import ConnectionLost

    cls = rng.choice(CLASSES)
    n = rng.randint(16, 128)
    messages = [{"role": "user", "content": f"chaos request of class {cls}"}]
    try:
        if rng.random() < 0.5:
            got = 0
            tokens = client.stream_chat(messages, max_tokens=n, traffic_class=cls,
                                        timeout=hang_timeout)
            async for _ in tokens:
                got += 1
            # A clean end means [DONE] arrived (TokenStream raises StreamError otherwise).
            return ("ok", "") if got == n else ("lost", f"{got} of {n} tokens")
        r = await client.request("POST", "/v1/chat/completions",
                                 {"messages": messages, "max_tokens": n}, traffic_class=cls,
                                 timeout=hang_timeout)
        if r.status != 200:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                return "lost", f"{r.status} without an explanation"
            return (("errors", f"{r.status} ({message[:60]})") if message
                    else ("lost", f"{r.status}, empty"))
        try:
            body = r.json()
            ok = body["choices"][0]["message"]["content"] and body["usage"]["completion_tokens"]
        except (ValueError, KeyError, TypeError, IndexError):
            return "lost", "200 with a broken body"
        return ("ok", "") if ok == n else ("lost", "200, wrong length")
    except RequestTimeout:
        return "hung", ""
    except APIError as e:
        return "errors", f"{e.status} in stream ({e.message[:60]})"
    except StreamResetError as e:
        return "errors", f"reset 0x{e.error_code:x}"
    except (StreamError, ConnectionLost) as e:
        return "lost", type(e).__name__
    except Exception as e:
        return "lost", f"{type(e).__name__}: {e}"


async def run_chaos(requests: int, seed: int, concurrency: int, connections: int,
                    n_backends: int, time_scale: float, max_batch: int, hang_timeout: float,
                    allow_all_down: bool, nice: int, say: Callable[[str], None],
                    kill: bool = True) -> Counter:
    from quicgw.client import AsyncClient

    rng = random.Random(seed)
    backends = [Backend(f"b{i}", time_scale, max_batch, nice) for i in range(n_backends)]
    await asyncio.gather(*(asyncio.to_thread(b.start) for b in backends))
    gw = GatewayProcess({
        "gateway": {"host": "127.0.0.1", "port": 0, "health_interval_s": 0.25,
                    "health_fall": 2, "health_rise": 1, "health_timeout_s": 1.0},
        "backends": [{"name": b.name, "model": MODEL, "url": b.url, "max_batch": max_batch}
                     for b in backends],
    }, nice=nice)
    await asyncio.to_thread(gw.start)
    say(f"gateway pid {gw.pid} on {gw.url}; backends on ports "
        f"{', '.join(str(b.port) for b in backends)}")
    outcomes: Counter = Counter()
    details: Counter = Counter()
    latencies: dict[str, list[float]] = {k: [] for k in ("ok", "errors", "lost", "hung")}
    sent = 0
    kills = restarts = 0
    clients = [AsyncClient(gw.url, verify=gw.cafile, timeout=hang_timeout)
               for _ in range(connections)]
    done = asyncio.Event()
    restarting: set[asyncio.Task] = set()

    async def restart_later(b: Backend, delay: float) -> None:
        nonlocal restarts
        await asyncio.sleep(delay)
        await asyncio.to_thread(b.start)
        restarts += 1

    async def chaos() -> None:
        nonlocal kills
        while not done.is_set():
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            alive = [b for b in backends if b.alive]
            if not alive or (len(alive) < 2 and not allow_all_down) or not kill:
                continue
            victim = rng.choice(alive)
            victim.kill()
            kills += 1
            task = asyncio.create_task(restart_later(victim, rng.uniform(0.5, 2.0)))
            restarting.add(task)
            task.add_done_callback(restarting.discard)

    async def worker(i: int) -> None:
        nonlocal sent
        wrng = random.Random(seed * 1_000_003 + i)
        while sent < requests:
            sent += 1
            t0 = time.monotonic()
            outcome, detail = await _one(clients[i % connections], wrng, hang_timeout)
            outcomes[outcome] += 1
            latencies[outcome].append(time.monotonic() - t0)
            if detail:
                details[f"{outcome}: {detail}"] += 1

    async def progress() -> None:
        t0 = time.monotonic()
        while not done.is_set():
            await asyncio.sleep(2.0)
            say(f"  [{time.monotonic() - t0:5.1f} s] sent={sent} ok={outcomes['ok']} "
                f"errors={outcomes['errors']} lost={outcomes['lost']} hung={outcomes['hung']} "
                f"kills={kills} restarts={restarts} alive={sum(b.alive for b in backends)}")

    try:
        await asyncio.gather(*(c.connect() for c in clients))
        side = [asyncio.create_task(chaos()), asyncio.create_task(progress())]
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        done.set()
        for t in side:
            t.cancel()
        await asyncio.gather(*side, return_exceptions=True)
        await asyncio.gather(*restarting, return_exceptions=True)
        outcomes["sent"] = sent
        outcomes["kills"], outcomes["restarts"] = kills, restarts
        for k, v in latencies.items():
            if v:
                say(f"{k}: {len(v)} requests, p50 {percentile(v, 50):.2f} s, p99 "
                    f"{percentile(v, 99):.2f} s, max {max(v):.2f} s")
        say("outcomes by kind: " + (", ".join(f"{k} x{v}" for k, v in details.most_common())
                                     or "none"))
        return outcomes
    finally:
        done.set()
        for t in list(restarting):
            t.cancel()
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
        await asyncio.to_thread(gw.stop)
        for b in backends:
            await asyncio.to_thread(b.kill)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicgw.bench.chaos", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests to send in total")
    parser.add_argument("--seed", type=int, default=0, help="seeds the chaos and the requests")
    parser.add_argument("--concurrency", type=int, default=48, help="requests in flight")
    parser.add_argument("--connections", type=int, default=4, help="QUIC connections")
    parser.add_argument("--backends", type=int, default=3, help="emulated backends")
    parser.add_argument("--time-scale", type=float, default=2.0,
                        help="emulated backends run this many times faster than real time")
    parser.add_argument("--max-batch", type=int, default=16, help="slots per backend")
    parser.add_argument("--hang-timeout", type=float, default=30.0,
                        help="seconds without an outcome after which a request counts as hung")
    parser.add_argument("--allow-all-down", action="store_true",
                        help="let the chaos kill the last live backend too")
    parser.add_argument("--no-kills", action="store_true",
                        help="baseline: the same requests, no backend killed")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness of the gateway and backend processes")
    a = parser.parse_args(argv)
    if a.requests < 1 or a.concurrency < 1 or a.connections < 1 or a.backends < 1:
        parser.error("--requests, --concurrency, --connections and --backends must be >= 1")

    def say(msg: str) -> None:
        print(msg, flush=True)

    say(f"chaos: {a.requests} requests, {a.concurrency} in flight, {a.backends} backends "
        f"killed and restarted at random (seed {a.seed})")
    raise_fd_limit()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        res = runner.run(run_chaos(a.requests, a.seed, a.concurrency, a.connections, a.backends,
                                   a.time_scale, a.max_batch, a.hang_timeout, a.allow_all_down,
                                   a.nice, say, kill=not a.no_kills))
    say(f"{res['kills']} kills, {res['restarts']} restarts")
    print(f"chaos: sent={res['sent']} ok={res['ok']} errors={res['errors']} lost={res['lost']} "
          f"hung={res['hung']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
