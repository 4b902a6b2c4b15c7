"""Soak test: many concurrent HTTP/3 streams through the gateway for a while.

    python -m quicgw.bench.load --streams 1000 --connections 50 --seconds 60

What runs where (2-core machines in mind):

* the gateway in its own process (``python -m quicgw.bench.load --serve-gateway``, uvloop, the
  real :class:`~quicgw.gateway.Gateway`), whose resident memory is sampled from ``/proc`` every
  second;
* ``--backends`` emulated OpenAI backends (llama-3.2-1b on an A100, each its own process, time
  compressed ``--time-scale`` times, ``--max-batch`` slots);
* this process: the load generator, ``--connections`` QUIC connections of the SDK carrying
  ``--streams`` closed-loop workers in total; each worker sends a request, reads the whole
  answer, and sends the next, so ``--streams`` requests are open at every moment. Requests
  alternate between streamed and plain chat completions of ``--max-tokens`` tokens, class
  ``bulk`` with a relaxed deadline (``x-deadline-ms`` 120 s) so the gateway's deadline-derived
  timeouts never cut a request that is merely queued behind the other 999.

Every ``--progress`` seconds a progress line shows requests done, the rate, errors and the
gateway's RSS. Memory growth is measured from the end of the warm-up (``--warmup`` seconds, by
when every stream is open and every buffer pool has grown to its working size) to the end of
the run: ``rss_growth_pct = (rss_end - rss_after_warmup) / rss_after_warmup * 100``; the RSS at
start-up is printed too. An error is any request that did not end in a complete 200 answer
(status, transport error, stream without [DONE], timeout).

Last line: ``load: streams=<n> req_per_s=<x> p99_ms=<x> rss_growth_pct=<x> errors=<n>``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from quicgw.runtime import event_loop_factory, raise_fd_limit, stop_event, stop_process

READY = "quicgw-bench-gateway-ready "


# -- helpers shared by the bench tools (chaos, throughput) ------------------------------------

def rss_kb(pid: int) -> int:
    """Resident set size of a process, in KiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[k]


class GatewayProcess:
    """The gateway in a child process serving ``config`` (a dict for ``parse_config``; port 0
    picks a free one). ``url``, ``port``, ``cafile``, ``pid`` once started. It exits when this
    process closes its stdin (so it never outlives us) or on :meth:`stop`."""

    def __init__(self, config: dict, *, nice: int = 0) -> None:
        self.config = config
        self.nice = nice
        self.proc: subprocess.Popen | None = None
        self.url = self.cafile = ""
        self.port = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, timeout_s: float = 60.0) -> GatewayProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "quicgw.bench.load", "--serve-gateway",
             json.dumps(self.config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the gateway process exited with {self.proc.wait()} before "
                                   f"it was ready (its stderr says why)")
            if line.startswith(READY):
                info = json.loads(line[len(READY):])
                self.url, self.port, self.cafile = info["url"], info["port"], info["cafile"]
                return self
        self.stop()
        raise TimeoutError("the gateway process did not start in time")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        # Graceful: stdin EOF makes the gateway send GOAWAY and drain.
        return stop_process(proc, timeout_s, ask=lambda p: p.stdin.close())

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def _serve_gateway(config_json: str) -> int:
    import logging

    from quicgw.config import parse_config
    from quicgw.gateway import Gateway

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="gateway %(levelname)s %(name)s: %(message)s")
    logging.getLogger("quicgw.gateway").setLevel(
        logging.WARNING if os.environ.get("QUICGW_BENCH_VERBOSE") else logging.ERROR)
    config = parse_config(json.loads(config_json))
    loop = asyncio.get_running_loop()
    stop = stop_event(exit_with_stdin=True)
    async with Gateway(config) as gw:
        loop.add_signal_handler(signal.SIGUSR1, _dump_state, gw)  # kill -USR1: state to stderr
        print(READY + json.dumps({"url": gw.url, "port": gw.port, "cafile": gw.cafile}),
              flush=True)
        await stop.wait()
    return 0


def _dump_state(gw) -> None:
    out = sys.stderr
    for inst in gw.app.instances:
        print(f"instance {inst.backend.name}: healthy={inst.load.healthy} "
              f"in_flight={inst.load.in_flight} queued={inst.load.queued}", file=out)
        pool = getattr(getattr(getattr(inst.upstream, "client", None), "_transport", None),
                       "_pool", None)
        if pool is not None:
            print(f"  upstream pool: {len(pool._requests)} waiting, connections: "
                  f"{[repr(c) for c in pool._connections]}", file=out)
    for conn in set(gw.h3.connections.values()) if gw.h3 else ():
        q = conn.quic
        print(f"connection: requests={len(conn.streams)} blocked_writers={len(conn.blocked)} "
              f"unsent={conn.unsent()} remote_max_data={q._remote_max_data} "
              f"used={q._remote_max_data_used} quic_streams={len(q._streams)} "
              f"cwnd={q._loss.congestion_window} in_flight_bytes={q._loss.bytes_in_flight} "
              f"timer={q.get_timer()} now={asyncio.get_running_loop().time()}", file=out)
    shown = set()
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        chain = []
        while coro is not None:  # follow the awaits down (print_stack stops at generators)
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_name}:{frame.f_lineno}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        where = " -> ".join(chain)
        if where not in shown:
            shown.add(where)
            print(f"task {task.get_name()}: {where}", file=out)
    out.flush()


def serve_gateway_main(config_json: str) -> int:
    raise_fd_limit()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(_serve_gateway(config_json))


# -- the soak test ----------------------------------------------------------------------------

async def _quic_counters(client) -> dict[str, float]:
    """The gateway's QUIC packet counters from its /metrics (empty if it has none)."""
    wanted = ("quicgw_quic_packets_sent_total", "quicgw_quic_packets_lost_total")
    try:
        r = await client.request("GET", "/metrics", timeout=10)
    except Exception:
        return {}
    out = {}
    for line in r.text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[name.removeprefix("quicgw_quic_").removesuffix("_total")] = float(value)
    return out


MESSAGES = [{"role": "user", "content": "Tell me something about QUIC stream scheduling."}]


@dataclass
class Counters:
    done: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


async def _worker(client, index: int, stop_at: float, measure_from: float, c: Counters,
                  max_tokens: int) -> None:
    from quicgw.client import APIError, StreamError

    streamed = index % 2 == 0
    body = {"messages": MESSAGES, "max_tokens": max_tokens}
    while time.monotonic() < stop_at:
        t0 = time.monotonic()
        try:
            if streamed:
                n = 0
                async for _ in client.stream_chat(MESSAGES, max_tokens=max_tokens,
                                                  traffic_class="bulk", deadline_ms=120_000):
                    n += 1
                ok = n == max_tokens
            else:
                r = await client.request("POST", "/v1/chat/completions", body,
                                         traffic_class="bulk", deadline_ms=120_000)
                ok = r.status == 200 and r.json()["choices"][0]["message"]["content"]
                if r.status != 200:
                    c.error(f"status {r.status}")
                    continue
        except (APIError, StreamError, ConnectionError, TimeoutError) as e:
            c.error(type(e).__name__)
            continue
        t1 = time.monotonic()
        if not ok:
            c.error("incomplete")
        elif t0 >= measure_from:
            c.done += 1
            c.latencies_ms.append((t1 - t0) * 1000)


async def run_load(streams: int, connections: int, seconds: float, warmup: float,
                   backends: int, max_batch: int, time_scale: float, max_tokens: int,
                   progress_every: float, nice: int,
                   say: Callable[[str], None]) -> dict:
    from quicgw.backends.process import BackendProcess
    from quicgw.client import AsyncClient

    procs = [BackendProcess("llama-3.2-1b", "a100-80gb", max_batch=max_batch,
                            time_scale=time_scale, nice=nice) for _ in range(backends)]
    await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
    config = {
        "gateway": {"host": "127.0.0.1", "port": 0,
                    "max_streams_per_connection": max(100, 2 * streams // connections)},
        "backends": [{"name": f"b{i}", "model": "llama-3.2-1b", "url": p.url,
                      "max_batch": max_batch} for i, p in enumerate(procs)],
    }
    gw = GatewayProcess(config, nice=nice)
    await asyncio.to_thread(gw.start)
    clients: list = []
    try:
        rss_start = rss_kb(gw.pid)
        say(f"gateway pid {gw.pid} on {gw.url}, RSS {rss_start / 1024:.1f} MiB at start; "
            f"{backends} emulated backend(s) x {max_batch} slots, time scale {time_scale:g}")
        clients = [AsyncClient(gw.url, verify=gw.cafile, timeout=180) for _ in range(connections)]
        await asyncio.gather(*(c.connect() for c in clients))
        c = Counters()
        cpu_pids = {"gateway": [gw.pid], "load generator": [os.getpid()],
                    "backends": [p.pid for p in procs]}
        cpu0 = {k: sum(cpu_seconds(p) for p in v) for k, v in cpu_pids.items()}
        t_start = time.monotonic()
        measure_from = t_start + warmup
        stop_at = measure_from + seconds
        tasks = [asyncio.create_task(_worker(clients[i % connections], i, stop_at, measure_from,
                                             c, max_tokens)) for i in range(streams)]
        samples: list[tuple[float, int]] = []
        rss_warm = None
        last_done, last_t = 0, time.monotonic()
        next_report = t_start + progress_every
        while not all(t.done() for t in tasks):
            await asyncio.sleep(1.0)
            now = time.monotonic()
            rss = rss_kb(gw.pid)
            samples.append((now - t_start, rss))
            if rss_warm is None and now >= measure_from:
                rss_warm = rss
            if now >= next_report:
                rate = (c.done - last_done) / (now - last_t)
                last_done, last_t = c.done, now
                next_report += progress_every
                phase = "warm-up" if now < measure_from else f"{now - measure_from:.0f}/{seconds:g} s"
                say(f"  [{phase}] done={c.done} rate={rate:.0f}/s errors={c.errors} "
                    f"gateway RSS {rss / 1024:.1f} MiB")
        await asyncio.gather(*tasks)
        elapsed = min(time.monotonic(), stop_at) - measure_from
        wall = time.monotonic() - t_start
        cpu = {k: (sum(cpu_seconds(p) for p in v) - cpu0[k]) / wall for k, v in cpu_pids.items()}
        quic = await _quic_counters(clients[0])
        rss_end = rss_kb(gw.pid)
        rss_warm = rss_warm or rss_end
        return {
            "streams": streams, "connections": connections,
            "req_per_s": c.done / elapsed if elapsed > 0 else 0.0,
            "p50_ms": percentile(c.latencies_ms, 50), "p99_ms": percentile(c.latencies_ms, 99),
            "rss_start_kb": rss_start, "rss_after_warmup_kb": rss_warm, "rss_end_kb": rss_end,
            "rss_max_kb": max(r for _, r in samples) if samples else rss_end,
            "rss_growth_pct": (rss_end - rss_warm) / rss_warm * 100,
            "errors": c.errors, "error_kinds": c.error_kinds, "completed": c.done,
            "rss_samples": samples, "gateway_quic": quic, "cpu_cores": cpu,
        }
    finally:
        await asyncio.gather(*(cl.aclose() for cl in clients), return_exceptions=True)
        await asyncio.to_thread(gw.stop)
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicgw.bench.load", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=1000,
                        help="concurrent request streams held open (default 1000)")
    parser.add_argument("--connections", type=int, default=50,
                        help="QUIC connections they are spread over (default 50)")
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="measured duration after the warm-up (default 60)")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds before measuring (and before the RSS baseline)")
    parser.add_argument("--backends", type=int, default=2, help="emulated backends (default 2)")
    parser.add_argument("--max-batch", type=int, default=256,
                        help="slots per backend; the rest queue in the gateway (default 256)")
    parser.add_argument("--time-scale", type=float, default=20.0,
                        help="emulated backends run this many times faster than real time")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per answer")
    parser.add_argument("--progress", type=float, default=5.0, help="seconds between progress")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness of the gateway and backend processes")
    parser.add_argument("--json", metavar="PATH", help="also write the results (with the RSS "
                                                       "time series) as JSON")
    parser.add_argument("--serve-gateway", metavar="CONFIG_JSON", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.serve_gateway is not None:
        return serve_gateway_main(a.serve_gateway)
    if a.streams < 1 or a.connections < 1 or a.connections > a.streams:
        parser.error("need 1 <= --connections <= --streams")

    def say(msg: str) -> None:
        print(msg, flush=True)

    say(f"load: {a.streams} streams over {a.connections} connections, {a.warmup:g} s warm-up "
        f"+ {a.seconds:g} s measured")
    raise_fd_limit()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        res = runner.run(run_load(a.streams, a.connections, a.seconds, a.warmup, a.backends,
                                  a.max_batch, a.time_scale, a.max_tokens, a.progress, a.nice,
                                  say))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    say(f"completed {res['completed']} requests; p50 {res['p50_ms']:.0f} ms; gateway RSS "
        f"{res['rss_start_kb'] / 1024:.1f} MiB at start, {res['rss_after_warmup_kb'] / 1024:.1f} "
        f"MiB after warm-up, {res['rss_end_kb'] / 1024:.1f} MiB at the end (max "
        f"{res['rss_max_kb'] / 1024:.1f}); errors by kind: {res['error_kinds'] or 'none'}")
    say("CPU (cores busy on average): " + ", ".join(f"{k} {v:.2f}"
                                                    for k, v in res["cpu_cores"].items()))
    quic = res["gateway_quic"]
    if quic:
        say(f"gateway QUIC packets: {quic.get('packets_sent', 0):.0f} sent, "
            f"{quic.get('packets_lost', 0):.0f} declared lost")
    print(f"load: streams={res['streams']} req_per_s={res['req_per_s']:.1f} "
          f"p99_ms={res['p99_ms']:.1f} rss_growth_pct={res['rss_growth_pct']:.1f} "
          f"errors={res['errors']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
