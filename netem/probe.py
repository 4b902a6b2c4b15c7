"""Test traffic for measuring an emulated link (runs inside the namespaces; stdlib only).

``python -m netem.probe udp-sink --bind IP:PORT [--idle S] [--timeout S]``
``python -m netem.probe udp-source --dst IP:PORT --pps N --size BYTES --duration S [--max-burst N]``
``python -m netem.probe tcp-sink --bind IP:PORT [--timeout S]``
``python -m netem.probe tcp-source --dst IP:PORT --duration S``

UDP packets carry a sequence number and the sender's CLOCK_MONOTONIC time, which every
namespace of one host shares, so the sink measures true one-way delay. Sinks print ``ready``
once bound, then one JSON summary line when done.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import struct
import sys
import time

HDR = struct.Struct("!Qd")  # seq, send time
IP_UDP_OVERHEAD = 28  # IPv4 + UDP headers: the bytes the link carries beyond the payload


def _addr(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host, int(port)


def _stats(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}
    ys = sorted(xs)
    n = len(ys)
    mean = sum(ys) / n
    var = sum((y - mean) ** 2 for y in ys) / n
    return {"mean": mean, "std": math.sqrt(var), "min": ys[0], "p50": ys[n // 2],
            "p99": ys[min(n - 1, int(n * 0.99))], "max": ys[-1]}


def udp_sink(bind: str, idle: float, timeout: float) -> dict:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(_addr(bind))
    print("ready", flush=True)
    start = time.monotonic()
    arrivals: list[tuple[float, int, int, float]] = []  # (recv, seq, size, send)
    s.settimeout(timeout)
    while True:
        try:
            data = s.recv(65535)
        except TimeoutError:
            break
        now = time.monotonic()
        seq, sent = HDR.unpack_from(data)
        arrivals.append((now, seq, len(data), sent))
        s.settimeout(idle)
        if now - start > timeout:
            break
    out: dict = {"received": len(arrivals)}
    if arrivals:
        seqs = {a[1] for a in arrivals}
        out["max_seq"] = max(seqs)
        out["missing"] = max(seqs) + 1 - len(seqs)
        out["delay_s"] = _stats([a[0] - a[3] for a in arrivals])
        if len(arrivals) > 1:
            # Goodput of the link in IP bytes, first to last arrival.
            t0, t1 = arrivals[0][0], arrivals[-1][0]
            ip_bytes = sum(a[2] + IP_UDP_OVERHEAD for a in arrivals[1:])
            out["rate_bps"] = ip_bytes * 8 / (t1 - t0) if t1 > t0 else 0.0
            out["duration_s"] = t1 - t0
    return out


def udp_source(dst: str, pps: float, size: int, duration: float,
               max_burst: int | None = None) -> dict:
    """Send ``pps`` packets/s for ``duration`` s. A late wake-up (the sleep overshot) catches up
    in a burst so the offered rate is right, unless ``max_burst`` caps the burst: then the
    schedule restarts from now, the rate falls a little short, and the traffic stays smooth
    (the loss probe must not overflow the emulated queue with its own bursts)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    addr = _addr(dst)
    pad = b"\0" * max(0, size - HDR.size)
    interval = 1.0 / pps
    start = next_due = time.monotonic()
    n = 0
    errors = 0
    while True:
        now = time.monotonic()
        if now - start >= duration:
            break
        if next_due > now:
            time.sleep(next_due - now)
        burst = 0
        while next_due <= time.monotonic() and next_due - start < duration:
            try:
                s.sendto(HDR.pack(n, time.monotonic()) + pad, addr)
            except OSError:
                errors += 1
            n += 1
            burst += 1
            next_due += interval
            if max_burst is not None and burst >= max_burst:
                next_due = max(next_due, time.monotonic())  # forget the backlog
                break
    return {"sent": n, "errors": errors}


def tcp_sink(bind: str, timeout: float) -> dict:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(_addr(bind))
    srv.listen(1)
    srv.settimeout(timeout)
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(timeout)
    total = 0
    t0 = t1 = time.monotonic()
    first = None
    while True:
        data = conn.recv(1 << 16)
        if not data:
            break
        t1 = time.monotonic()
        if first is None:
            first = t1
        total += len(data)
    t0 = first or t0
    return {"bytes": total, "duration_s": t1 - t0,
            "goodput_bps": total * 8 / (t1 - t0) if t1 > t0 else 0.0}


def tcp_source(dst: str, duration: float) -> dict:
    s = socket.create_connection(_addr(dst), timeout=10)
    chunk = b"x" * 65536
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < duration:
        sent += s.send(chunk)
    s.shutdown(socket.SHUT_WR)
    s.settimeout(30)
    try:
        s.recv(1)  # wait for the sink to close: everything was delivered
    except OSError:
        pass
    s.close()
    return {"sent": sent}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netem.probe")
    sub = ap.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("udp-sink")
    p.add_argument("--bind", required=True)
    p.add_argument("--idle", type=float, default=1.5)
    p.add_argument("--timeout", type=float, default=30.0)
    p = sub.add_parser("udp-source")
    p.add_argument("--dst", required=True)
    p.add_argument("--pps", type=float, required=True)
    p.add_argument("--size", type=int, default=1200)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--max-burst", type=int, default=None,
                   help="packets sent back to back after a late wake-up (default: as many as "
                        "it takes to catch up with the schedule)")
    p = sub.add_parser("tcp-sink")
    p.add_argument("--bind", required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    p = sub.add_parser("tcp-source")
    p.add_argument("--dst", required=True)
    p.add_argument("--duration", type=float, default=3.0)
    a = ap.parse_args(argv)
    if a.mode == "udp-sink":
        out = udp_sink(a.bind, a.idle, a.timeout)
    elif a.mode == "udp-source":
        out = udp_source(a.dst, a.pps, a.size, a.duration, a.max_burst)
    elif a.mode == "tcp-sink":
        out = tcp_sink(a.bind, a.timeout)
    else:
        out = tcp_source(a.dst, a.duration)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
