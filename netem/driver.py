"""The experiment's client, run inside the client namespace.

``python -m netem.driver`` reads one run per line on stdin (JSON: transport ``quic`` through
the quicgw client SDK with a scheduler, or ``tcp``: HTTP/2 over one TLS/TCP connection with
httpx), issues the workload against the gateway's ``POST /v1/echo``, checks every echo, and
writes one JSON result per line on stdout. The clock of a run starts once the connection is
established (both transports), so the handshake is not counted.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from netem.workload import WorkItem, payload


async def _issue(items: list[WorkItem], bodies: dict[int, bytes], send, cutoff_factor: float
                 ) -> list[dict[str, Any]]:
    t0 = time.monotonic()

    async def one(w: WorkItem) -> dict[str, Any]:
        if w.offset_s > 0:
            await asyncio.sleep(max(0.0, t0 + w.offset_s - time.monotonic()))
        start = t0 + w.offset_s
        limit = w.deadline_ms / 1000.0 * cutoff_factor
        out: dict[str, Any] = {"id": w.id, "cls": w.cls, "offset": w.offset_s,
                               "deadline": w.deadline_ms / 1000.0, "latency": None,
                               "ok": False, "status": None, "error": None}
        try:
            status, content, end = await send(w, max(0.01, start + limit - time.monotonic()))
            out["status"] = status
            if status == 200 and content == bodies[w.id]:
                out["ok"] = True
                out["latency"] = end - start
            elif status == 200:
                out["error"] = f"echo mismatch ({len(content)} of {w.size} bytes)"
            else:
                out["error"] = f"status {status}: {content[:200]!r}"
        except TimeoutError:
            out["error"] = "cutoff"
        except Exception as e:  # recorded, not fatal: the run goes on
            out["error"] = f"{type(e).__name__}: {e}"[:300]
        return out

    # Burst: tasks start in id order (call_soon is FIFO), so requests are issued in that order.
    return list(await asyncio.gather(*(asyncio.create_task(one(w)) for w in items)))


async def run_quic(spec: dict[str, Any], items: list[WorkItem]) -> dict[str, Any]:
    from quicgw.client import AsyncClient, RequestTimeout
    from quicgw.congestion import DEFAULT

    client = AsyncClient(host=spec["host"], port=spec["port"], scheduler=spec["scheduler"],
                         verify=False, timeout=None, server_name="localhost",
                         congestion_control=spec.get("congestion_control", DEFAULT))
    t = time.monotonic()
    await client.connect()
    connect_s = time.monotonic() - t
    bodies = {w.id: payload(spec["seed"], w.id, w.size) for w in items}

    async def send(w: WorkItem, timeout: float):
        try:
            r = await client.request("POST", "/v1/echo", bodies[w.id], traffic_class=w.cls,
                                     deadline_ms=w.deadline_ms, timeout=timeout)
        except RequestTimeout:
            raise TimeoutError from None
        return r.status, r.content, r.timing.completed or time.monotonic()

    cc = None
    try:
        results = await _issue(items, bodies, send, spec["cutoff_factor"])
        conn = client._conn
        if conn is not None:  # the client's side of the connection: what its controller saw
            cc = conn.quic._loss._cc
    finally:
        await client.aclose()
    cc_stats = cc.stats() if cc is not None and hasattr(cc, "stats") else None
    return {"connect_s": connect_s, "protocol": "h3", "requests": results,
            "congestion_control": client.congestion_control, "client_cc": cc_stats}


async def run_tcp(spec: dict[str, Any], items: list[WorkItem]) -> dict[str, Any]:
    import httpx

    base = f"https://{spec['host']}:{spec['port']}"
    bodies = {w.id: payload(spec["seed"], w.id, w.size) for w in items}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(http2=True, verify=False, timeout=None, limits=limits) as client:
        t = time.monotonic()
        r = await client.get(base + "/healthz")  # opens the one TLS/TCP connection (HTTP/2)
        connect_s = time.monotonic() - t
        protocol = r.http_version

        async def send(w: WorkItem, timeout: float):
            r = await asyncio.wait_for(client.post(
                base + "/v1/echo", content=bodies[w.id],
                headers={"x-traffic-class": w.cls, "x-deadline-ms": f"{w.deadline_ms:g}",
                         "content-type": "application/octet-stream"}), timeout)
            return r.status_code, r.content, time.monotonic()

        results = await _issue(items, bodies, send, spec["cutoff_factor"])
    return {"connect_s": connect_s, "protocol": protocol, "requests": results}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    items = [WorkItem(**w) for w in spec["items"]]
    coro = run_quic(spec, items) if spec["transport"] == "quic" else run_tcp(spec, items)
    t = time.monotonic()
    from netem.gateways import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        out = runner.run(coro)
    out["elapsed_s"] = time.monotonic() - t
    return out


def main() -> int:
    import quicgw.client  # noqa: F401  (import cost paid before the first run)

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        spec = json.loads(line)
        if spec.get("op") == "quit":
            break
        try:
            out = run(spec)
        except Exception as e:
            out = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
