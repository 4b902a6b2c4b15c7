"""Per-packet send cost: stock aioquic vs ScheduledQuicConnection with each scheduler.

    python -m quicgw.bench.packet [--quick] [--json PATH]

Setup (in memory, simulated clock, no sockets): a client opens N streams to a stock aioquic
server; N - 1 of them sent one byte and stay open but idle (like requests whose responses wait
for tokens), one is busy with bulk data. Only the client's ``datagrams_to_send`` is timed,
divided by the packets it produced; ACKs flow back between calls so the congestion window keeps
opening. Time is CPU time of this process (``time.process_time``), so being descheduled on a
shared machine does not count; each configuration is measured ``--repeat`` times in interleaved
sweeps and the fastest run kept (noise only ever adds time). Streams carry the three default traffic classes, so
the class-aware schedulers do real work. The server's stream limit is raised to N so every
stream is really open (aioquic allows 128 by default).

The last line is machine-readable:
``packet: stock_5000_vs_1=<r> ours_5000_vs_1=<worst over schedulers> speedup_5000=<stock / our worst>``
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable

from aioquic.quic.connection import QuicConnection

from quicgw.core.classes import DEFAULT_CLASSES
from quicgw.core.qos import RequestQoS
from quicgw.scheduling import SCHEDULERS, ScheduledQuicConnection
from quicgw.scheduling.sim import CLIENT_ADDR, SERVER_ADDR, SimulatedLink

STREAM_COUNTS = (1, 100, 1000, 5000)
STEP = 0.0005  # simulated seconds between the client's send and the server's ACKs


def _connection_factory(impl: str) -> Callable[..., QuicConnection]:
    if impl == "stock":
        return QuicConnection
    return functools.partial(ScheduledQuicConnection, scheduler=impl)


def measure(impl: str, streams: int, packets: int, warmup: int = 60) -> float:
    """Microseconds the client spends in ``datagrams_to_send`` per packet it sends."""
    link = SimulatedLink.pair(_connection_factory(impl), QuicConnection, delay=STEP)
    link.server._local_max_streams_bidi.value = streams + 16
    link.connect()
    client, server = link.client, link.server
    now = link.now

    def qos(i: int) -> RequestQoS:
        cls = DEFAULT_CLASSES[i % len(DEFAULT_CLASSES)]
        return RequestQoS(cls, arrival=now, deadline=now + 3600 + cls.deadline_ms / 1000 + i * 1e-6)

    for i in range(streams - 1):
        stream_id = client.get_next_available_stream_id()
        if isinstance(client, ScheduledQuicConnection):
            client.set_stream_qos(stream_id, qos(i))
        client.send_stream_data(stream_id, b"?")
    busy = client.get_next_available_stream_id()
    if isinstance(client, ScheduledQuicConnection):
        client.set_stream_qos(busy, qos(0))
    link.run(max_time=0.05)  # deliver the idle streams' bytes and their ACKs
    _drain(client), _drain(server)
    now = link.now

    chunk = b"y" * 32768
    cost = 0.0
    sent = 0
    total = 0
    perf_counter = time.process_time
    while sent < packets:
        client.send_stream_data(busy, chunk)
        t0 = perf_counter()
        datagrams = client.datagrams_to_send(now)
        elapsed = perf_counter() - t0
        total += len(datagrams)
        if total > warmup:
            cost += elapsed
            sent += len(datagrams)
        for data, _ in datagrams:
            server.receive_datagram(data, CLIENT_ADDR, now)
        _drain(server)
        now += STEP
        for data, _ in server.datagrams_to_send(now):
            client.receive_datagram(data, SERVER_ADDR, now)
        _drain(client)
        now += STEP
        timer = client.get_timer()
        if timer is not None and timer <= now:
            client.handle_timer(now)
    return cost / sent * 1e6


def _drain(conn: QuicConnection) -> None:
    while conn.next_event() is not None:
        pass


def run(quick: bool, repeat: int | None, progress=None) -> dict:
    packets = 150 if quick else 600
    repeat = repeat if repeat is not None else (2 if quick else 3)
    impls = ("stock", *SCHEDULERS)
    results: dict[str, dict[int, float]] = {impl: {} for impl in impls}
    measure("stock", 1, 60)  # warm caches and allocators: the first run is always slower
    # Repeats are interleaved (whole sweeps), so a burst of load from another process hits one
    # run of every configuration rather than every run of one.
    for rep in range(repeat):
        for streams in STREAM_COUNTS:
            for impl in impls:
                # Stock at 5000 streams costs milliseconds per packet: fewer packets suffice.
                n = packets if impl != "stock" or streams < 1000 else max(40, packets // 3)
                cost = measure(impl, streams, n)
                best = results[impl].get(streams)
                results[impl][streams] = cost if best is None else min(best, cost)
                if progress is not None:
                    progress(f"run {rep + 1}/{repeat} {impl:>9} {streams:>5} streams: "
                             f"{cost:8.1f} us/packet")
    return results


def summarise(results: dict[str, dict[int, float]]) -> dict[str, float]:
    ours = [impl for impl in results if impl != "stock"]
    low, high = STREAM_COUNTS[0], STREAM_COUNTS[-1]
    worst_high = max(results[impl][high] for impl in ours)
    return {
        "stock_5000_vs_1": results["stock"][high] / results["stock"][low],
        "ours_5000_vs_1": max(results[impl][high] / results[impl][low] for impl in ours),
        "speedup_5000": results["stock"][high] / worst_high,
        "ours_1_vs_stock_1": max(results[impl][low] for impl in ours) / results["stock"][low],
    }


def table(results: dict[str, dict[int, float]]) -> str:
    header = f"{'impl':>9} | " + " | ".join(f"{n:>6} str" for n in STREAM_COUNTS) + " | 5000/1"
    lines = [
        "per-packet send cost, microseconds (client datagrams_to_send / packets sent)",
        header,
        "-" * len(header),
    ]
    for impl, row in results.items():
        cells = " | ".join(f"{row[n]:>10.1f}" for n in STREAM_COUNTS)
        lines.append(f"{impl:>9} | {cells} | {row[STREAM_COUNTS[-1]] / row[STREAM_COUNTS[0]]:6.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer packets, one run (< 30 s)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per configuration (best kept)")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    results = run(args.quick, args.repeat, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    summary = summarise(results)
    print(table(results))
    print(
        f"ours at 1 stream vs stock: {summary['ours_1_vs_stock_1']:.2f}x (worst scheduler); "
        f"{time.perf_counter() - started:.1f} s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"us_per_packet": results, "summary": summary}, f, indent=2)
    print(
        f"packet: stock_5000_vs_1={summary['stock_5000_vs_1']:.2f} "
        f"ours_5000_vs_1={summary['ours_5000_vs_1']:.2f} "
        f"speedup_5000={summary['speedup_5000']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
