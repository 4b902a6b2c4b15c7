"""Calibration benchmark of the emulated backend: ``python -m quicgw.bench.backend [--quick]``.

Starts an emulated Llama-3.1-8B on an A100-80GB in a subprocess (its own core and event loop,
so the load generator does not steal its time), drives it over real HTTP with open-loop Poisson
arrivals of the calibration workload (``CALIBRATION_WORKLOAD``: 512 prompt and 1,024 output
tokens per request) at several offered rates, and measures per rate:

* achieved throughput: output tokens the instance generated in the measurement window, divided
  by the window's model time and by 1,024 tokens per request (read from the backend's ``/load``
  counters, so it is exact and not quantised by which requests happen to finish in the window);
* queue growth: waiting requests at the end of the window minus at its start, per minute, and
  whether the waiting queue ever emptied in the window (sampled through ``/load``);
* latency: server-reported queue time, TTFT and end-to-end latency of the requests that arrived
  in the window and completed.

A rate is *saturated* when the waiting queue never empties during the window (sampled every 5
model seconds): the batch is full
all the time, so the achieved throughput is the instance's capacity. The measured saturation
RPM is the mean achieved throughput over the saturated rates. The whole run is in compressed time
(``--time-scale``); every number it prints is in MODEL time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import sys
from dataclasses import asdict, dataclass, field

import h11
import httpx

from quicgw.backends.openai_api import filler_text
from quicgw.backends.process import BackendProcess
from quicgw.core.catalog import CALIBRATION_WORKLOAD, latency_model

MODEL, GPU = "llama-3.1-8b", "a100-80gb"
TARGET = (75, 80)  # RPM the IBM paper measured for vLLM on this model and GPU
FULL = {"rates": (40, 60, 70, 85, 100, 120), "warmup_min": 2.0, "window_min": 6.0}
QUICK = {"rates": (60, 110), "warmup_min": 1.5, "window_min": 4.0}
DEFAULT_TIME_SCALE = 40.0
SAMPLE_EVERY_MODEL_S = 5.0  # how often /load is sampled


@dataclass
class RateResult:
    offered_rpm: float
    sent: int = 0
    completed: int = 0
    errors: int = 0
    arrived_rpm: float = math.nan  # requests the backend received in the window, per minute
    achieved_rpm: float = math.nan
    completed_rpm: float = math.nan  # client-side count of completions in the window
    queue_growth_per_min: float = math.nan
    min_waiting: int = 0
    saturated: bool = False
    queue_ms: dict = field(default_factory=dict)
    ttft_ms: dict = field(default_factory=dict)
    e2el_ms: dict = field(default_factory=dict)
    client_e2el_ms: dict = field(default_factory=dict)  # wall time x time scale, incl. HTTP
    max_lag_wall_ms: float = 0.0


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"mean": math.nan, "p50": math.nan, "p95": math.nan}
    values = sorted(values)

    def pick(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {"mean": statistics.fmean(values), "p50": pick(0.5), "p95": pick(0.95)}


class _Request:
    __slots__ = ("sent", "done", "timings")

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.done: float | None = None
        self.timings: dict | None = None


async def post_once(host: str, port: int, path: str, body: bytes) -> tuple[int, dict, bytes]:
    """POST on a fresh connection (closed after the response, or when the task is cancelled).

    The load generator's requests do not go through httpx: its connection pool (httpcore)
    scans every pooled connection for each request and response, which is quadratic in the
    requests in flight. At 120 RPM offered the queue holds ~400 requests, and a profile showed
    the pool taking 34 of 44 s of the generator's CPU, delaying arrivals. One connection per
    request with h11 (the sans-IO HTTP/1.1 library httpx itself uses) costs O(1) each.
    """
    reader, writer = await asyncio.open_connection(host, port)
    try:
        conn = h11.Connection(h11.CLIENT)
        writer.write(conn.send(h11.Request(method="POST", target=path, headers=[
            ("host", f"{host}:{port}"), ("content-type", "application/json"),
            ("content-length", str(len(body))), ("connection", "close")]))
            + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        status, headers, chunks = 0, {}, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                chunks.append(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, headers, b"".join(chunks)
    finally:
        writer.close()


async def _load(client: httpx.AsyncClient, url: str) -> dict:
    r = await client.get(f"{url}/load")
    r.raise_for_status()
    return r.json()


async def run_rate(client: httpx.AsyncClient, url: str, rate_rpm: float, *, warmup_min: float,
                   window_min: float, time_scale: float, seed: int) -> RateResult:
    """Offer ``rate_rpm`` (model time) for warmup + window, measure in the window."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    result = RateResult(rate_rpm)
    body = json.dumps({
        "model": MODEL, "prompt": filler_text(CALIBRATION_WORKLOAD["input_tokens"]),
        "max_tokens": CALIBRATION_WORKLOAD["output_tokens"]}).encode()
    wall = 1.0 / time_scale  # wall seconds per model second
    start = loop.time()
    window_start = start + warmup_min * 60 * wall
    end = window_start + window_min * 60 * wall
    requests: list[_Request] = []
    tasks: set[asyncio.Task] = set()

    host, port = url.removeprefix("http://").rsplit(":", 1)

    async def one(req: _Request) -> None:
        try:
            status, headers, _ = await post_once(host, int(port), "/v1/completions", body)
        except (OSError, h11.ProtocolError):
            result.errors += 1
            return
        if status != 200:
            result.errors += 1
            return
        req.done = loop.time()
        req.timings = {name: float(headers[f"x-{name.replace('_', '-')}"])
                       for name in ("queue_ms", "ttft_ms", "e2el_ms")}

    async def arrivals() -> None:
        t = start
        while True:
            t += rng.expovariate(rate_rpm / 60.0) * wall
            if t >= end:
                return
            await asyncio.sleep(max(0.0, t - loop.time()))
            req = _Request(loop.time())
            requests.append(req)
            task = asyncio.create_task(one(req))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def sample(samples: list[dict]) -> None:
        while True:
            samples.append(await _load(client, url))
            await asyncio.sleep(SAMPLE_EVERY_MODEL_S * wall)

    sender = asyncio.create_task(arrivals())
    await asyncio.sleep(max(0.0, window_start - loop.time()))
    at_start = await _load(client, url)
    samples: list[dict] = [at_start]
    sampler = asyncio.create_task(sample(samples))
    await asyncio.sleep(max(0.0, end - loop.time()))
    at_end = await _load(client, url)
    sampler.cancel()
    await sender
    # Drop what is still in flight: the clients disconnect, which cancels the requests on the
    # backend and frees it for the next rate.
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    while True:
        state = await _load(client, url)
        if state["running"] == 0 and state["waiting"] == 0:
            break
        await asyncio.sleep(0.05)

    model_min = (at_end["model_time_s"] - at_start["model_time_s"]) / 60
    tokens = at_end["generated_tokens"] - at_start["generated_tokens"]
    result.arrived_rpm = (at_end["requests"] - at_start["requests"]) / model_min
    result.achieved_rpm = tokens / CALIBRATION_WORKLOAD["output_tokens"] / model_min
    result.queue_growth_per_min = (at_end["waiting"] - at_start["waiting"]) / model_min
    result.min_waiting = min(s["waiting"] for s in [*samples, at_end])
    result.saturated = result.min_waiting > 0
    result.sent = len(requests)
    result.completed = sum(1 for r in requests if r.done is not None)
    result.completed_rpm = sum(
        1 for r in requests if r.done is not None and window_start <= r.done < end) / model_min
    measured = [r for r in requests if r.done is not None and window_start <= r.sent < end]
    result.queue_ms = _percentiles([r.timings["queue_ms"] for r in measured])
    result.ttft_ms = _percentiles([r.timings["ttft_ms"] for r in measured])
    result.e2el_ms = _percentiles([r.timings["e2el_ms"] for r in measured])
    result.client_e2el_ms = _percentiles(
        [(r.done - r.sent) * time_scale * 1000 for r in measured])
    result.max_lag_wall_ms = state["lag_wall_ms"]["max"]
    return result


def _row(r: RateResult) -> str:
    return (f"{r.offered_rpm:>8.0f} {r.arrived_rpm:>8.1f} {r.sent:>5d} {r.completed:>5d} "
            f"{r.achieved_rpm:>9.1f} "
            f"{r.queue_growth_per_min:>+9.1f} {r.min_waiting:>7d} "
            f"{r.queue_ms['p50'] / 1000:>8.1f} {r.queue_ms['p95'] / 1000:>8.1f} "
            f"{r.ttft_ms['p50'] / 1000:>8.2f} {r.ttft_ms['p95'] / 1000:>8.2f} "
            f"{r.e2el_ms['p50'] / 1000:>8.1f} {r.e2el_ms['p95'] / 1000:>8.1f}  "
            f"{'saturated' if r.saturated else 'not saturated'}")


HEADER = (f"{'offered':>8} {'arrived':>8} {'sent':>5} {'done':>5} {'achieved':>9} {'queue':>9} {'min':>7} "
          f"{'queue s':>8} {'':>8} {'ttft s':>8} {'':>8} {'e2el s':>8} {'':>8}\n"
          f"{'rpm':>8} {'rpm':>8} {'':>5} {'':>5} {'rpm':>9} {'grow/min':>9} {'waiting':>7} "
          f"{'p50':>8} {'p95':>8} {'p50':>8} {'p95':>8} {'p50':>8} {'p95':>8}  state")


async def benchmark(rates: tuple[float, ...], warmup_min: float, window_min: float,
                    time_scale: float, seed: int = 1) -> dict:
    lm = latency_model(MODEL, GPU)
    predicted = lm.saturation_rps(CALIBRATION_WORKLOAD["input_tokens"],
                                  CALIBRATION_WORKLOAD["output_tokens"]) * 60
    model_minutes = len(rates) * (warmup_min + window_min)
    print(f"calibration: emulated {MODEL} on {GPU}, max batch {lm.max_batch}, "
          f"{CALIBRATION_WORKLOAD['input_tokens']} prompt + "
          f"{CALIBRATION_WORKLOAD['output_tokens']} output tokens per request, Poisson arrivals")
    print(f"time scale {time_scale:g}: {model_minutes:g} model minutes in about "
          f"{model_minutes * 60 / time_scale:.0f} s; ALL numbers below are in MODEL time "
          f"(1 wall second = {time_scale:g} model seconds)")
    print(f"each rate: {warmup_min:g} min warm-up, then a {window_min:g} min measurement window\n")
    print(HEADER, flush=True)
    results = []
    async with BackendProcess(MODEL, GPU, time_scale=time_scale) as backend:
        async with httpx.AsyncClient(timeout=30) as c:  # for /load only
            for i, rate in enumerate(rates):
                r = await run_rate(c, backend.url, rate, warmup_min=warmup_min,
                                   window_min=window_min, time_scale=time_scale, seed=seed + i)
                results.append(r)
                print(_row(r), flush=True)
    saturated = [r for r in results if r.saturated]
    saturation = statistics.fmean(r.achieved_rpm for r in saturated) if saturated else math.nan
    print()
    if saturated:
        print(f"saturation: {saturation:.1f} RPM, the mean achieved throughput at the saturated "
              f"rates ({', '.join(f'{r.offered_rpm:g}' for r in saturated)} RPM offered)")
    else:
        print("saturation: no rate saturated the instance; offer higher rates")
    below = [r.offered_rpm for r in results if not r.saturated]
    above = [r.offered_rpm for r in saturated]
    if below and above and max(below) < min(above):
        print(f"the instance saturated between {max(below):g} and {min(above):g} RPM offered")
    print(f"latency model predicts {predicted:.1f} RPM (LatencyModel.saturation_rps)")
    off = [r for r in results if abs(r.arrived_rpm / r.offered_rpm - 1) > 0.1]
    if off:
        print(f"warning: arrivals in the window deviated >10% from the offered rate at "
              f"{', '.join(f'{r.offered_rpm:g}' for r in off)} RPM (Poisson noise, or a busy "
              f"CPU delayed the load generator)")
    errors = sum(r.errors for r in results)
    if errors:
        print(f"warning: {errors} requests failed (connection error or non-200 status)")
    lag = max(r.max_lag_wall_ms for r in results)
    if lag > 250:
        print(f"warning: the backend's step loop ran up to {lag:.0f} wall ms late; the model "
              f"timeline stays exact (catch-up) but arrivals were timestamped late; "
              f"a lower --time-scale is more faithful")
    return {"model": MODEL, "gpu": GPU, "max_batch": lm.max_batch, "time_scale": time_scale,
            "workload": CALIBRATION_WORKLOAD, "warmup_min": warmup_min, "window_min": window_min,
            "units": "model time", "predicted_saturation_rpm": predicted,
            "saturation_rpm": saturation, "target_rpm": TARGET,
            "rates": [asdict(r) for r in results]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quicgw.bench.backend",
        description="Measure the emulated Llama-3.1-8B/A100-80GB backend's saturation rate over "
                    "real HTTP (open-loop Poisson arrivals of the calibration workload). "
                    "All reported numbers are in model time.")
    parser.add_argument("--quick", action="store_true",
                        help=f"two rates {QUICK['rates']} and shorter windows (~20 s)")
    parser.add_argument("--rates", type=lambda s: tuple(float(x) for x in s.split(",")),
                        help=f"offered rates in requests per minute (default {FULL['rates']})")
    parser.add_argument("--time-scale", type=float, default=DEFAULT_TIME_SCALE,
                        help="model seconds per wall second (default: %(default)s)")
    parser.add_argument("--warmup-min", type=float, help="model minutes before each window")
    parser.add_argument("--window-min", type=float, help="model minutes of each window")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    if args.time_scale <= 0:
        parser.error("--time-scale must be > 0")
    try:
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        out = runner.run(benchmark(
            args.rates or preset["rates"], args.warmup_min or preset["warmup_min"],
            args.window_min or preset["window_min"], args.time_scale, args.seed))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
        print(f"results written to {args.json}")
    sat = out["saturation_rpm"]
    print(f"backend: model={MODEL} gpu={GPU} saturation_rpm={sat:.1f} target={TARGET[0]}-{TARGET[1]}")
    return 0 if not math.isnan(sat) else 1


if __name__ == "__main__":
    sys.exit(main())
