"""``python -m ilp.bench``: sweep offered rates against an OpenAI-compatible endpoint (or the
shared latency model with ``--simulate``) and write a profile.

Examples::

    # an emulated backend running 20x faster than the A100 it emulates
    quicgw backend --model llama-3.1-8b --gpu a100-80gb --max-batch 48 --time-scale 20 --port 8001
    python -m ilp.bench --target http://127.0.0.1:8001 --time-scale 20 --rates 1:16:1 \\
        --input-tokens 512 --output-tokens 5900 --out results/ilp/bench/llama8b

    # the same sweep on the latency model alone (no sockets, seconds)
    python -m ilp.bench --simulate --sim-model llama-3.1-8b --sim-gpu a100-80gb --max-batch 48 \\
        --rates 1:16:1 --input-tokens 512 --output-tokens 5900

Durations are model time; the paper ran 40 minutes per rate and dropped the first 8 and the last
3 (the defaults). The last line is ``bench: rates=<n> saturation_rpm=<x> capacity_rpm=<x>
profile=<path>``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ilp.arrivals import ARRIVALS, load_trace
from ilp.bench.load import ENDPOINTS, PROTOCOLS, Stream, Target
from ilp.bench.report import write_sweep
from ilp.bench.sweep import (
    SweepConfig,
    parse_duration,
    parse_rates,
    parse_slo,
    run_sweep_live,
    run_sweep_sim,
)
from ilp.workload import Workload


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ilp.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", help="base URL of an OpenAI-compatible server or the gateway")
    where.add_argument("--simulate", action="store_true",
                       help="no server: run the shared latency model (quicgw.core.latency)")
    p.add_argument("--rates", required=True,
                   help="offered rates in requests per minute: 1,2,5 or 1:16:0.5 (inclusive)")
    p.add_argument("--duration", default="40m", help="per rate, model time (default 40m)")
    p.add_argument("--warmup", default="8m", help="trimmed from the start (default 8m)")
    p.add_argument("--cooldown", default="3m", help="trimmed from the end (default 3m)")
    p.add_argument("--arrival", choices=ARRIVALS, default="poisson")
    p.add_argument("--burstiness", type=float, default=1.0,
                   help="gamma shape: 1 is Poisson, < 1 burstier (vLLM's convention)")
    p.add_argument("--trace", help="arrival timestamps to replay (CSV/text/JSON, seconds)")
    p.add_argument("--input-tokens", default="512", help="N or MIN-MAX")
    p.add_argument("--output-tokens", default="128", help="N or MIN-MAX")
    p.add_argument("--slo", help="goodput SLOs, e.g. ttft_ms=2000,e2el_ms=30000")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output directory (default results/ilp/bench/<model>-<gpu>)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-samples", action="store_true",
                   help="do not store raw samples in the profile (smaller file, fixed percentiles)")
    p.add_argument("--mode", help="a name for the GPU mode this profile describes")
    live = p.add_argument_group("live target")
    live.add_argument("--protocol", choices=PROTOCOLS, default="http1")
    live.add_argument("--endpoint", choices=ENDPOINTS, default="completions")
    live.add_argument("--model", help="model name to request (default: the first /v1/models id)")
    live.add_argument("--api-key")
    live.add_argument("--traffic-class", help="x-traffic-class to send (through the gateway)")
    live.add_argument("--priority", type=int, help="vLLM's priority body field")
    live.add_argument("--no-stream", action="store_true",
                      help="non-streaming requests (TTFT from server timings when reported)")
    live.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    live.add_argument("--cafile", help="CA file to verify the target's certificate")
    live.add_argument("--time-scale", type=float, default=1.0,
                      help="the emulated backends' time scale; results are in model time")
    live.add_argument("--request-timeout", default="24h",
                      help="give up on one request after this long (model time; default 24h)")
    live.add_argument("--drain-timeout", help="give up on responses this long after the last "
                                              "arrival (model time; default: wait)")
    live.add_argument("--label-model", help="model name to record in the profile")
    live.add_argument("--label-gpu", help="GPU name to record in the profile")
    live.add_argument("--max-batch", type=int, help="the instance's max batch (saturation "
                                                    "detection; --simulate: the engine's)")
    sim = p.add_argument_group("--simulate")
    sim.add_argument("--sim-model", default="llama-3.1-8b")
    sim.add_argument("--sim-gpu", default="a100-80gb")
    sim.add_argument("--queue-policy", choices=("fcfs", "priority"), default="fcfs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        workload = Workload.parse(args.input_tokens, args.output_tokens)
        cfg = SweepConfig(
            rates_rpm=parse_rates(args.rates), duration_s=parse_duration(args.duration),
            warmup_s=parse_duration(args.warmup), cooldown_s=parse_duration(args.cooldown),
            workload=workload, arrival=args.arrival, burstiness=args.burstiness,
            trace=load_trace(args.trace) if args.trace else None, seed=args.seed,
            slo_ms=parse_slo(args.slo), keep_samples=not args.no_samples)
        if args.arrival == "trace" and cfg.trace is None:
            raise ValueError("--arrival trace needs --trace FILE")
    except (ValueError, OSError) as e:
        print(f"ilp.bench: {e}", file=sys.stderr)
        return 2
    if args.simulate:
        from quicgw.core.catalog import latency_model

        try:
            lm = latency_model(args.sim_model, args.sim_gpu, args.max_batch)
        except (KeyError, ValueError) as e:
            print(f"ilp.bench: {e.args[0]}", file=sys.stderr)
            return 2
        print(f"ilp.bench: simulating {args.sim_model} on {args.sim_gpu} (max batch "
              f"{lm.max_batch}), {workload.describe()}, {len(cfg.rates_rpm)} rate(s) x "
              f"{cfg.duration_s / 60:g} min model time")
        res = run_sweep_sim(lm, cfg, model_name=args.sim_model, gpu=args.sim_gpu,
                            policy=args.queue_policy, mode=args.mode)
    else:
        verify: bool | str = not args.insecure
        if args.cafile:
            verify = args.cafile
        target = Target(args.target, args.protocol, args.endpoint, args.model, args.api_key,
                        stream=not args.no_stream, verify=verify, time_scale=args.time_scale,
                        timeout_s=parse_duration(args.request_timeout))
        stream = Stream("load", 0.0, workload, args.traffic_class, args.priority)
        try:
            res = run_sweep_live(
                target, cfg, stream=stream, model_name=args.label_model, gpu=args.label_gpu,
                mode=args.mode, max_batch=args.max_batch,
                drain_timeout_s=parse_duration(args.drain_timeout) if args.drain_timeout else None)
        except (ValueError, RuntimeError, OSError) as e:
            print(f"ilp.bench: {e}", file=sys.stderr)
            return 1
    prof = res.profile
    out = Path(args.out or f"results/ilp/bench/{prof.model}-{prof.gpu}")
    paths = write_sweep(prof, res.records, out, plots=not args.no_plots)
    print(f"{'rate':>7} {'done':>5} {'fail':>4} {'achieved':>8} {'e2el p50':>9} {'p95':>9} "
          f"{'p99':>9} {'ttft p95':>9} {'queue p95':>9} sat")
    for pt in prof.points:
        e = pt.metrics.get("e2el_ms")
        t = pt.metrics.get("ttft_ms")
        q = pt.metrics.get("queue_ms")

        def s(x, p):
            return f"{x.percentiles.get(p, math.nan) / 1e3:9.2f}" if x else f"{'-':>9}"
        print(f"{pt.rate_rpm:7g} {pt.completed:5d} {pt.failed:4d} {pt.achieved_rpm:8.2f} "
              f"{s(e, 50.0)} {s(e, 95.0)} {s(e, 99.0)} {s(t, 95.0)} {s(q, 95.0)} "
              f"{'yes' if pt.saturated else 'no'}")
    print("(seconds, model time" + (f"; time scale {prof.time_scale:g}" if prof.time_scale != 1 else "")
          + f"; window {cfg.window[0] / 60:g}-{cfg.window[1] / 60:g} min of each "
          f"{cfg.duration_s / 60:g}-min run)")
    for p in paths:
        print(f"wrote {p}")
    sat = "none" if prof.saturation_rpm is None else f"{prof.saturation_rpm:g}"
    rng = "" if not prof.saturation_range_rpm else \
        f" saturation_range={prof.saturation_range_rpm[0]:g}-{prof.saturation_range_rpm[1]:g}"
    print(f"bench: rates={len(prof.points)} saturation_rpm={sat}{rng} "
          f"capacity_rpm={prof.capacity_rpm or 0:.2f} profile={paths[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
