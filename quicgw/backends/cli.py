"""``quicgw backend``: run one emulated model instance (also ``python -m quicgw.backends``)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from quicgw.core.catalog import CALIBRATION_WORKLOAD, GPUS, MODELS, SIZE_ALIASES
from quicgw.core.latency import POLICIES
from quicgw.runtime import event_loop_factory, raise_fd_limit, stop_event

READY_MARKER = "quicgw backend: listening on "

DESCRIPTION = """\
Serve one emulated model instance over HTTP/1.1 with the OpenAI API. Timing follows the shared
latency model (quicgw/core/latency.py, numbers from quicgw/core/catalog.py): continuous batching,
prefill per input token, decode step time growing with the batch, at most --max-batch running.

endpoints:
  POST /v1/chat/completions, POST /v1/completions   (stream: true gives server-sent events)
  GET  /v1/models, GET /health
  GET  /load      JSON: running, waiting, completed, cancelled, generated_tokens, model_time_s, ...
  GET  /metrics   Prometheus text with vLLM's names (vllm:num_requests_running/_waiting)

tokens: prompt tokens are estimated as ceil(characters / 4) (quicgw/core/tokens.py); the reply
has exactly max_tokens (or max_completion_tokens, else --default-max-tokens) tokens of filler.
Every finished request reports server-side timings in MODEL milliseconds: the "quicgw_timings"
object (queue_ms, ttft_ms, tpot_ms, e2el_ms, time_scale) in the response / the last SSE chunk,
and x-queue-ms, x-ttft-ms, x-e2el-ms headers on non-streaming responses. Every response carries
x-time-scale, x-running and x-waiting.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "backend", help="run an emulated OpenAI-compatible model instance",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    models = ", ".join([*MODELS, *SIZE_ALIASES])
    parser.add_argument("--model", required=True, metavar="NAME",
                        help=f"catalog model or size alias ({models})")
    parser.add_argument("--gpu", default="a100-80gb", metavar="NAME",
                        help=f"GPU type ({', '.join(GPUS)}; default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000,
                        help="TCP port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--max-batch", type=_positive_int, default=None, metavar="N",
                        help="most requests running at once (default: the catalog's, 32)")
    parser.add_argument("--queue-policy", choices=POLICIES, default="fcfs",
                        help="waiting-queue order: fcfs, or priority (the request's `priority` "
                             "field, lower first, as vLLM) (default: %(default)s)")
    parser.add_argument("--time-scale", type=_positive_float, default=1.0, metavar="F",
                        help="run the model F times faster than real time; reported timings stay "
                             "in model time (default: %(default)s)")
    parser.add_argument("--served-model-name", default=None, metavar="NAME",
                        help="name in /v1/models and responses (default: the catalog name); "
                             "requests may use it, the catalog name or the size alias")
    parser.add_argument("--default-max-tokens", type=_positive_int, default=256, metavar="N",
                        help="output tokens when a request sets no max_tokens (default: %(default)s)")
    # Used by BackendProcess: exit when the parent's end of our stdin closes (parent died).
    parser.add_argument("--exit-with-stdin", action="store_true", help=argparse.SUPPRESS)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    from quicgw.backends.emulated import EmulatedBackend

    try:
        backend = EmulatedBackend(
            args.model, args.gpu, host=args.host, port=args.port, max_batch=args.max_batch,
            queue_policy=args.queue_policy, time_scale=args.time_scale,
            served_model_name=args.served_model_name, default_max_tokens=args.default_max_tokens)
    except ValueError as e:
        print(f"quicgw backend: error: {e}", file=sys.stderr)
        return 2
    raise_fd_limit()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        try:
            return runner.run(_serve(backend, args.exit_with_stdin))
        except OSError as e:
            print(f"quicgw backend: error: cannot listen on {args.host}:{args.port}: {e}",
                  file=sys.stderr)
            return 1


async def _serve(backend, exit_with_stdin: bool) -> int:
    stop = stop_event(exit_with_stdin=exit_with_stdin)
    async with backend:
        lm = backend.latency
        sat = lm.saturation_rps(CALIBRATION_WORKLOAD["input_tokens"],
                                CALIBRATION_WORKLOAD["output_tokens"]) * 60
        print(f"quicgw backend: {backend.catalog_model} on {backend.gpu} as "
              f"{backend.served_model_name!r}: prefill {lm.prefill_s_per_token * 1e3:.4f} ms/token, "
              f"decode step {lm.decode_base_s * 1e3:.2f} + {lm.decode_per_seq_s * 1e3:.3f}*B ms, "
              f"max batch {lm.max_batch}, KV {lm.kv_capacity_tokens} tokens, "
              f"saturation {sat:.1f} RPM (calibration workload), queue {backend.queue_policy}, "
              f"time scale {backend.time_scale:g}", flush=True)
        print(f"{READY_MARKER}{backend.url}", flush=True)
        await stop.wait()
    # One write, so lines of backends stopping together don't interleave (print writes the
    # newline separately).
    sys.stderr.write("quicgw backend: stopped\n")
    sys.stderr.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quicgw.backends", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt:
        return 130
