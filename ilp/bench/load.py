"""The live load generator: open-loop request streams against an OpenAI-compatible endpoint.

Arrivals are fixed in advance (:mod:`ilp.arrivals`) and sent at their time whatever happens to
earlier requests (open loop: a slow server does not slow the offered load down, as it would with
a fixed pool of concurrent users). Protocols: HTTP/1.1 and HTTP/2 with httpx; HTTP/3 with the
project's SDK (:mod:`quicgw.client`).

Time scale: an emulated backend run with ``time_scale`` s runs s times faster than the model it
emulates. The generator then sends arrivals s times faster and multiplies every wall-clock
duration it measures by s, so everything it reports is in *model time*; server timings
(``quicgw_timings``) are already in model time. Overheads outside the emulated model (the
gateway, loopback, Python) are scaled too, which overstates them by s; at the scales used here
they stay far below a percent of the latencies measured.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ilp.arrivals import arrival_times
from ilp.profile import RequestRecord
from ilp.workload import Workload
from quicgw.client.sse import SSEParser

PROTOCOLS = ("http1", "http2", "http3")
ENDPOINTS = ("completions", "chat")
_FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "


@dataclass(slots=True)
class Stream:
    """One open-loop request stream: a user or traffic class at a rate."""

    name: str
    rate_rpm: float
    workload: Workload = field(default_factory=Workload)
    traffic_class: str | None = None  # sent as x-traffic-class (the gateway's class)
    priority: int | None = None  # vLLM's `priority` body field (direct to a backend)
    headers: dict[str, str] = field(default_factory=dict)
    arrival: str = "poisson"
    burstiness: float = 1.0
    trace: Sequence[float] | None = None


@dataclass(slots=True)
class Target:
    url: str
    protocol: str = "http1"
    endpoint: str = "completions"
    model: str | None = None  # None: the first id /v1/models lists
    api_key: str | None = None
    stream: bool = True  # SSE: measures TTFT and inter-token latency at the client
    verify: bool | str = True
    time_scale: float = 1.0
    timeout_s: float = 86_400.0  # per request, model time

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r} (choose from {', '.join(PROTOCOLS)})")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {self.endpoint!r} (choose from {', '.join(ENDPOINTS)})")
        if not self.time_scale > 0:
            raise ValueError("time scale must be > 0")
        self.url = self.url.rstrip("/")


def prompt_text(tokens: int) -> str:
    """Text that the project's token estimate (4 characters a token) counts as ``tokens``."""
    n = 4 * max(1, tokens)
    reps = n // len(_FILLER) + 1
    return (_FILLER * reps)[:n]


def request_body(target: Target, model: str, input_tokens: int, output_tokens: int,
                 priority: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": output_tokens, "temperature": 0,
                            "ignore_eos": True}  # vLLM: generate exactly max_tokens
    if target.endpoint == "chat":
        # The chat template costs 10 tokens (quicgw.core.tokens); the text makes up the rest.
        body["messages"] = [{"role": "user", "content": prompt_text(max(1, input_tokens - 10))}]
    else:
        body["prompt"] = prompt_text(input_tokens)
    if target.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if priority is not None:
        body["priority"] = priority
    return body


class _Transport:
    """post(path, body, headers) -> (status, headers, json or None, token times) over one
    protocol; token times are monotonic instants of streamed content chunks."""

    def __init__(self, target: Target, concurrency: int) -> None:
        self.target = target
        self._h3 = None
        self._http: httpx.AsyncClient | None = None
        self._concurrency = concurrency

    async def __aenter__(self) -> _Transport:
        t = self.target
        if t.protocol == "http3":
            from quicgw.client import AsyncClient

            self._h3 = AsyncClient(t.url, verify=t.verify, api_key=t.api_key, timeout=None)
            await self._h3.connect()
        else:
            limits = httpx.Limits(max_connections=self._concurrency,
                                  max_keepalive_connections=self._concurrency)
            self._http = httpx.AsyncClient(
                http1=t.protocol == "http1", http2=t.protocol == "http2", verify=t.verify,
                limits=limits, timeout=httpx.Timeout(None, connect=30.0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._h3 is not None:
            await self._h3.aclose()
        if self._http is not None:
            await self._http.aclose()

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        h = {"content-type": "application/json", **extra}
        if self.target.api_key and self._h3 is None:
            h["authorization"] = f"Bearer {self.target.api_key}"
        return h

    async def get_json(self, path: str) -> Any:
        if self._h3 is not None:
            r = await self._h3.request("GET", path)
            return r.json() if r.status == 200 else None
        r = await self._http.get(self.target.url + path, headers=self._headers({}))
        if r.status_code != 200:
            return None
        try:
            return r.json()
        except ValueError:
            return r.text

    async def post(self, path: str, body: dict, headers: dict[str, str],
                   traffic_class: str | None) -> tuple[int, dict[str, str], Any, list[float], str]:
        """(status, response headers, final JSON object, content chunk times, error text)."""
        data = json.dumps(body).encode()
        token_times: list[float] = []
        final: Any = None
        parser = SSEParser()

        def on_events(events: list[str]) -> None:
            nonlocal final
            now = time.monotonic()
            for ev in events:
                if ev.strip() == "[DONE]":
                    continue
                try:
                    obj = json.loads(ev)
                except ValueError:
                    continue
                for ch in obj.get("choices") or []:
                    text = ch.get("text")
                    if text is None:
                        text = (ch.get("delta") or {}).get("content")
                    if text:
                        token_times.append(now)
                if "quicgw_timings" in obj or obj.get("usage"):
                    final = {**(final or {}), **obj}

        if self._h3 is not None:
            h = {**headers, "content-type": "application/json"}
            if self.target.stream:
                resp = await self._h3.stream("POST", path, data, h, traffic_class=traffic_class)
                hdrs = dict(resp.headers)
                if resp.status != 200:
                    content = await resp.aread()
                    return resp.status, hdrs, None, [], content[:300].decode("utf-8", "replace")
                async for chunk in resp.aiter_bytes():
                    on_events(parser.feed(chunk))
                return 200, hdrs, final, token_times, ""
            r = await self._h3.request("POST", path, data, h, traffic_class=traffic_class)
            hdrs = dict(r.headers)
            if r.status != 200:
                return r.status, hdrs, None, [], r.content[:300].decode("utf-8", "replace")
            return 200, hdrs, r.json(), [], ""
        url = self.target.url + path
        h = self._headers(headers)
        if traffic_class is not None:
            h["x-traffic-class"] = traffic_class
        if self.target.stream:
            async with self._http.stream("POST", url, content=data, headers=h) as r:
                hdrs = dict(r.headers)
                if r.status_code != 200:
                    content = await r.aread()
                    return r.status_code, hdrs, None, [], content[:300].decode("utf-8", "replace")
                async for chunk in r.aiter_raw():
                    on_events(parser.feed(chunk))
                return 200, hdrs, final, token_times, ""
        r = await self._http.post(url, content=data, headers=h)
        hdrs = dict(r.headers)
        if r.status_code != 200:
            return r.status_code, hdrs, None, [], r.text[:300]
        return 200, hdrs, r.json(), [], ""


async def discover(target: Target) -> dict[str, Any]:
    """What the target says about itself: model ids, and for our emulated backend its GPU,
    max batch, queue policy and time scale (``/v1/models``'s ``quicgw`` member)."""
    async with _Transport(target, 4) as t:
        models = await t.get_json("/v1/models")
        info: dict[str, Any] = {"models": [], "quicgw": None}
        if isinstance(models, dict):
            for m in models.get("data") or []:
                if isinstance(m, dict) and "id" in m:
                    info["models"].append(m["id"])
                    if isinstance(m.get("quicgw"), dict) and info["quicgw"] is None:
                        info["quicgw"] = {**m["quicgw"], "catalog_model": m.get("root") or m["id"]}
        load = await t.get_json("/load")
        if isinstance(load, dict):
            info["load"] = load
        return info


@dataclass(slots=True)
class LoadSample:
    t_s: float  # model time from the start of the run
    running: float
    waiting: float


async def _poll_load(t: _Transport, t0: float, scale: float, out: list[LoadSample],
                     every_s: float, stop: asyncio.Event) -> None:
    """Sample the server's running batch and queue: /load (our backend), /healthz (the
    gateway), or /metrics (vLLM's Prometheus names)."""
    source = None
    while not stop.is_set():
        sample = None
        try:
            if source in (None, "load"):
                d = await t.get_json("/load")
                if isinstance(d, dict) and "running" in d:
                    source = "load"
                    sample = (float(d["running"]), float(d["waiting"]))
            if sample is None and source in (None, "healthz"):
                d = await t.get_json("/healthz")
                if isinstance(d, dict) and isinstance(d.get("instances"), list):
                    source = "healthz"
                    sample = (float(sum(i.get("in_flight", 0) for i in d["instances"])),
                              float(sum(i.get("queued", 0) for i in d["instances"])))
            if sample is None and source in (None, "metrics"):
                d = await t.get_json("/metrics")
                if isinstance(d, str) and "vllm:num_requests_running" in d:
                    source = "metrics"
                    vals = {}
                    for line in d.splitlines():
                        if line.startswith("vllm:num_requests_running") or line.startswith(
                                "vllm:num_requests_waiting"):
                            name, _, v = line.rpartition(" ")
                            key = "running" if "running" in name else "waiting"
                            vals[key] = vals.get(key, 0.0) + float(v)
                    sample = (vals.get("running", 0.0), vals.get("waiting", 0.0))
            if sample is None and source is None:
                return  # nothing to poll
        except (httpx.HTTPError, OSError, ValueError):
            pass
        if sample is not None:
            out.append(LoadSample((time.monotonic() - t0) * scale, *sample))
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass


async def run_load(target: Target, streams: Sequence[Stream], duration_s: float, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None,
                   poll_s: float | None = 1.0, drain_timeout_s: float | None = None,
                   ) -> tuple[list[RequestRecord], list[LoadSample]]:
    """Run the streams for ``duration_s`` of model time; wait for every response (drain).

    Returns one record per request (model time, seconds from the run's start) and the
    server's load over the run when it can be polled. ``progress(done, total)`` is called as
    responses arrive.
    """
    scale = target.time_scale
    plan: list[tuple[float, Stream, int, int]] = []
    for si, s in enumerate(streams):
        if s.rate_rpm <= 0:
            continue
        times = arrival_times(s.arrival, s.rate_rpm / 60.0, duration_s,
                              seed=random.Random(f"{seed}:{si}:{s.name}").getrandbits(32),
                              burstiness=s.burstiness, trace=s.trace)
        rng = random.Random(f"{seed}:{si}:{s.name}:sizes")
        for t in times:
            i, o = s.workload.sample(rng)
            plan.append((t, s, i, o))
    plan.sort(key=lambda p: p[0])
    total = len(plan)
    records: list[RequestRecord] = []
    samples: list[LoadSample] = []
    path = "/v1/chat/completions" if target.endpoint == "chat" else "/v1/completions"
    concurrency = max(64, min(4096, total))
    done = 0
    async with _Transport(target, concurrency) as tr:
        model = target.model
        if model is None:
            ids = await tr.get_json("/v1/models")
            try:
                model = ids["data"][0]["id"]
            except (TypeError, KeyError, IndexError):
                raise RuntimeError(f"{target.url}/v1/models lists no model; give --model") from None
        stop = asyncio.Event()
        t0 = time.monotonic()
        poller = (asyncio.create_task(_poll_load(tr, t0, scale, samples, poll_s / scale, stop))
                  if poll_s else None)

        async def one(t_model: float, s: Stream, inp: int, out: int) -> None:
            nonlocal done
            body = request_body(target, model, inp, out, s.priority)
            start = time.monotonic()
            rec = RequestRecord(arrival_s=(start - t0) * scale, ok=False, input_tokens=inp,
                                output_tokens=out, klass=s.name)
            try:
                status, hdrs, final, token_times, err = await asyncio.wait_for(
                    tr.post(path, body, s.headers, s.traffic_class), target.timeout_s / scale)
                end = time.monotonic()
                if status != 200:
                    rec.error = f"HTTP {status}: {err}"
                else:
                    rec.ok = True
                    rec.e2el_s = (end - start) * scale
                    usage = (final or {}).get("usage") or {}
                    if usage.get("completion_tokens"):
                        rec.output_tokens = int(usage["completion_tokens"])
                    if usage.get("prompt_tokens"):
                        rec.input_tokens = int(usage["prompt_tokens"])
                    timings = (final or {}).get("quicgw_timings")
                    if token_times:
                        rec.ttft_s = (token_times[0] - start) * scale
                        rec.itl_s = [(b - a) * scale for a, b in zip(token_times, token_times[1:],
                                                                     strict=False)]
                    if isinstance(timings, dict) and "e2el_ms" in timings:
                        rec.server_e2el_s = timings["e2el_ms"] / 1e3
                        rec.server_queue_s = timings.get("queue_ms", 0.0) / 1e3
                        service = (timings["e2el_ms"] - timings.get("queue_ms", 0.0)) / 1e3
                        rec.queue_s = max(0.0, rec.e2el_s - service)
                        if rec.ttft_s is None and "ttft_ms" in timings:
                            # Non-streaming: the server's TTFT, shifted by the wait in front of it.
                            rec.ttft_s = rec.e2el_s - (timings["e2el_ms"] - timings["ttft_ms"]) / 1e3
                    if "x-running" in hdrs:
                        try:
                            rec.batch = float(hdrs["x-running"])
                        except ValueError:
                            pass
                    rec.instance = hdrs.get("x-quicgw-instance")
            except asyncio.CancelledError:
                rec.error = "cancelled: still running at the drain timeout"
                records.append(rec)
                raise
            except TimeoutError:
                rec.error = "timeout"
            except (httpx.HTTPError, OSError, ConnectionError, RuntimeError) as e:
                rec.error = f"{type(e).__name__}: {e}"
            except Exception as e:  # the SDK's errors; one request never ends the run
                rec.error = f"{type(e).__name__}: {e}"
            records.append(rec)
            done += 1
            if progress:
                progress(done, total)

        tasks = []
        for t_model, s, inp, out in plan:
            delay = t0 + t_model / scale - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(t_model, s, inp, out)))
        if tasks:
            timeout = None if drain_timeout_s is None else drain_timeout_s / scale
            finished, pending = await asyncio.wait(tasks, timeout=timeout)
            for p in pending:
                p.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        stop.set()
        if poller is not None:
            await poller
    records.sort(key=lambda r: r.arrival_s)
    return records, samples
