"""Runs the quicgw gateway for the experiment inside the gateway namespace: one
:class:`quicgw.gateway.server.Gateway` per scheduler, in one process, each on its own port
(HTTP/3 on UDP and HTTP/1.1 + HTTP/2 over TLS/TCP on the same number), ``/v1/echo`` enabled.
Only one is busy at a time, so they do not compete; one process saves the start-up cost.

``python -m netem.gateways --host IP --base-port P --schedulers rr,edf,...``
prints ``{"ready": true, "ports": {"rr": P, "edf": P+1, ...}}`` and serves until stdin closes
or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from quicgw import congestion
from quicgw.config import parse_config
from quicgw.gateway.server import Gateway


def experiment_config(host: str, port: int, scheduler: str,
                      congestion_control: str = congestion.DEFAULT) -> dict:
    # No tenants: an open gateway; each request names its class and deadline in headers.
    return {"gateway": {"host": host, "port": port, "scheduler": scheduler,
                        "congestion_control": congestion_control,
                        "echo_endpoint": True, "max_body_bytes": 4 << 20,
                        "shutdown_grace_s": 1.0}}


async def serve(host: str, base_port: int, schedulers: list[str],
                congestion_control: str = congestion.DEFAULT) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_reader(sys.stdin.fileno(), lambda: stop.set() if not sys.stdin.readline() else None)
    gateways: list[Gateway] = []
    ports = {}
    try:
        for i, name in enumerate(schedulers):
            gw = Gateway(parse_config(experiment_config(host, base_port + i, name,
                                                        congestion_control)))
            await gw.start()
            gateways.append(gw)
            ports[name] = gw.port
        print(json.dumps({"ready": True, "ports": ports}), flush=True)
        await stop.wait()
    finally:
        for gw in gateways:
            try:
                await asyncio.wait_for(gw.stop(), 5)
            except Exception:
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netem.gateways")
    ap.add_argument("--host", required=True)
    ap.add_argument("--base-port", type=int, default=8440)
    ap.add_argument("--schedulers", required=True, help="comma-separated")
    ap.add_argument("--congestion-control", default=congestion.DEFAULT)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(a.host, a.base_port, [s for s in a.schedulers.split(",") if s],
                         a.congestion_control))
    return 0


def loop_factory():
    """uvloop when installed (as `quicgw serve` uses), else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
