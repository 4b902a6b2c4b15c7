"""HTTP/3 requests per second through our gateway vs hypercorn's HTTP/3, same client, same run.

    python -m quicgw.bench.throughput [--seconds 8] [--rounds 3] [--concurrency 64]

Two servers, each in its own process (uvloop for both, so the event loop is not the difference):

* **ours**: the real gateway (:class:`~quicgw.gateway.Gateway`: HTTP/3 server, classification,
  rate-limit check, body parsing and validation, routing, admission, metrics) with an
  ``instant`` backend inside the gateway process: the upstream hop is replaced by a canned
  one-token completion, so what is measured is the gateway's own per-request cost;
* **hypercorn**: hypercorn's HTTP/3 (``quic_bind``, also built on aioquic) serving a trivial ASGI
  app that reads the body and answers a fixed JSON body of the same size: the anchor, i.e.
  the cheapest a Python HTTP/3 server on aioquic gets.

One load generator, in this process (never in a server's process): our SDK
(:class:`quicgw.client.AsyncClient`), ``--connections`` QUIC connections carrying
``--concurrency`` closed-loop workers, each POSTing the same small chat completion request
(``{"messages": [...], "max_tokens": 1}``) and reading the whole answer. Rounds alternate
between the servers (ours, hypercorn, ours, ...) so slow drift of a shared machine hits both,
and the median round of each is reported. On a 2-core machine the client and the server share
the CPU; the client is the same for both, so it adds the same cost to both sides of the ratio.

``overhead_p50_ms``: the median latency of one request at a time (``--latency-requests``
sequential requests on one connection, no concurrency) through ours minus through hypercorn:
what the gateway's work adds to a request over the trivial app.

Last line: ``throughput: ours_rps=<x> hypercorn_rps=<x> ratio=<x> overhead_p50_ms=<x>``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from quicgw.bench.load import GatewayProcess, cpu_seconds, percentile
from quicgw.gateway.http import serve_lifespan
from quicgw.runtime import event_loop_factory, stop_event

READY = "quicgw-bench-hypercorn-ready "
BODY = {"messages": [{"role": "user", "content": "Say ok."}], "max_tokens": 1}
# What the gateway's instant backend answers, so both servers send the same bytes.
ANSWER = json.dumps({
    "id": "chatcmpl-instant", "object": "chat.completion", "created": 0, "model": "llama-3.1-8b",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}).encode()


# -- the anchor: hypercorn's HTTP/3 with a trivial ASGI app -----------------------------------

async def trivial_app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        return await serve_lifespan(receive, send)
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": ANSWER})


async def _serve_hypercorn() -> int:
    import logging
    import socket

    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    from quicgw.tls import dev_certificate

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    cert = dev_certificate()
    with socket.socket() as s:  # TCP (hypercorn needs a TCP bind too) and UDP on one number
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.quic_bind = [f"127.0.0.1:{port}"]
    config.certfile, config.keyfile = cert.certfile, cert.keyfile
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    stop = stop_event(exit_with_stdin=True)
    task = asyncio.create_task(serve(trivial_app, config, shutdown_trigger=stop.wait,
                                     mode="asgi"))
    await asyncio.sleep(0.5)
    print(READY + json.dumps({"url": f"https://127.0.0.1:{port}", "port": port,
                              "cafile": cert.cafile}), flush=True)
    await task
    return 0


class HypercornProcess(GatewayProcess):
    def __init__(self, *, nice: int = 0) -> None:
        super().__init__({}, nice=nice)

    def start(self, timeout_s: float = 60.0) -> HypercornProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "quicgw.bench.throughput", "--serve-hypercorn"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
        line = self.proc.stdout.readline()
        if not line.startswith(READY):
            raise RuntimeError(f"hypercorn did not start (exit {self.proc.poll()})")
        info = json.loads(line[len(READY):])
        self.url, self.port, self.cafile = info["url"], info["port"], info["cafile"]
        return self


# -- the client ---------------------------------------------------------------------------------

async def closed_loop(url: str, cafile: str, seconds: float, concurrency: int,
                      connections: int) -> tuple[float, int]:
    """Requests per second over ``seconds`` (after a short warm-up), and errors."""
    from quicgw.client import AsyncClient

    clients = [AsyncClient(url, verify=cafile, timeout=30) for _ in range(connections)]
    await asyncio.gather(*(c.connect() for c in clients))
    done = errors = 0
    measuring = False
    stop_at = time.monotonic() + 1.0 + seconds

    async def worker(client) -> None:
        nonlocal done, errors
        while time.monotonic() < stop_at:
            try:
                r = await client.request("POST", "/v1/chat/completions", BODY)
                ok = r.status == 200
            except Exception:
                ok = False
            if measuring:
                if ok:
                    done += 1
                else:
                    errors += 1

    tasks = [asyncio.create_task(worker(clients[i % connections])) for i in range(concurrency)]
    await asyncio.sleep(1.0)  # warm-up: connections open, caches hot
    measuring, t0 = True, time.monotonic()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    await asyncio.gather(*(c.aclose() for c in clients))
    return done / elapsed, errors


async def sequential_latency(url: str, cafile: str, n: int) -> list[float]:
    from quicgw.client import AsyncClient

    async with AsyncClient(url, verify=cafile, timeout=30) as c:
        for _ in range(20):  # warm-up
            await c.request("POST", "/v1/chat/completions", BODY)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            r = await c.request("POST", "/v1/chat/completions", BODY)
            out.append((time.perf_counter() - t0) * 1000)
            if r.status != 200:
                raise RuntimeError(f"{url} answered {r.status}: {r.content[:200]!r}")
        return out


async def run(seconds: float, rounds: int, concurrency: int, connections: int,
              latency_requests: int, nice: int, say: Callable[[str], None]) -> dict:
    ours = GatewayProcess({
        "gateway": {"host": "127.0.0.1", "port": 0},
        "backends": [{"name": "instant", "model": "llama-3.1-8b", "instant": True}],
    }, nice=nice)
    anchor = HypercornProcess(nice=nice)
    await asyncio.gather(asyncio.to_thread(ours.start), asyncio.to_thread(anchor.start))
    servers = {"ours": ours, "hypercorn": anchor}
    rps: dict[str, list[float]] = {"ours": [], "hypercorn": []}
    cpu: dict[str, list[float]] = {"ours": [], "hypercorn": []}
    errors = 0
    try:
        say(f"servers: ours pid {ours.pid} on {ours.url}, hypercorn pid {anchor.pid} on "
            f"{anchor.url}; client: this process (pid {os.getpid()})")
        for i in range(rounds):
            for name, proc in servers.items():
                c0 = cpu_seconds(proc.pid)
                t0 = time.monotonic()
                r, e = await closed_loop(proc.url, proc.cafile, seconds, concurrency,
                                         connections)
                busy = (cpu_seconds(proc.pid) - c0) / (time.monotonic() - t0)
                rps[name].append(r)
                cpu[name].append(busy)
                errors += e
                say(f"  round {i + 1}/{rounds} {name:9s} {r:8.0f} req/s  (server CPU "
                    f"{busy * 100:.0f}% of a core, {e} errors)")
        lat = {}
        for name, proc in servers.items():
            lat[name] = await sequential_latency(proc.url, proc.cafile, latency_requests)
            say(f"  one at a time   {name:9s} p50 {percentile(lat[name], 50):.3f} ms  "
                f"p99 {percentile(lat[name], 99):.3f} ms")
    finally:
        await asyncio.gather(asyncio.to_thread(ours.stop), asyncio.to_thread(anchor.stop))
    ours_rps, anchor_rps = statistics.median(rps["ours"]), statistics.median(rps["hypercorn"])
    return {
        "ours_rps": ours_rps, "hypercorn_rps": anchor_rps, "ratio": ours_rps / anchor_rps,
        "overhead_p50_ms": percentile(lat["ours"], 50) - percentile(lat["hypercorn"], 50),
        "ours_p50_ms": percentile(lat["ours"], 50),
        "hypercorn_p50_ms": percentile(lat["hypercorn"], 50),
        "rounds": rps, "server_cpu": cpu, "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicgw.bench.throughput", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per server, alternating (median reported)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="concurrent requests in flight (closed loop)")
    parser.add_argument("--connections", type=int, default=4, help="QUIC connections")
    parser.add_argument("--latency-requests", type=int, default=500,
                        help="sequential requests per server for overhead_p50_ms")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the server processes")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--serve-hypercorn", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        if a.serve_hypercorn:
            return runner.run(_serve_hypercorn())

        def say(msg: str) -> None:
            print(msg, flush=True)

        say(f"throughput: {a.rounds} rounds x {a.seconds:g} s per server, {a.concurrency} "
            f"concurrent requests over {a.connections} connections")
        res = runner.run(run(a.seconds, a.rounds, a.concurrency, a.connections,
                             a.latency_requests, a.nice, say))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    if res["errors"]:
        say(f"errors: {res['errors']} requests did not get a 200")
    print(f"throughput: ours_rps={res['ours_rps']:.0f} hypercorn_rps={res['hypercorn_rps']:.0f} "
          f"ratio={res['ratio']:.2f} overhead_p50_ms={res['overhead_p50_ms']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
