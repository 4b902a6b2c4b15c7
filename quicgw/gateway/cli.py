"""``quicgw serve --config FILE``: the gateway on UDP (HTTP/3) and TCP (HTTP/1.1 + HTTP/2 over
TLS) on one port number, plus the emulated backends the config declares ``emulated = true``
(each in its own process, stopped with the gateway)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

log = logging.getLogger("quicgw.serve")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the gateway (HTTP/3 on UDP, HTTP/1.1 + HTTP/2 on TLS/TCP)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="TOML configuration (see examples/gateway.toml)")
    parser.add_argument("--host", default=None, help="override gateway.host")
    parser.add_argument("--port", type=int, default=None,
                        help="override gateway.port (UDP and TCP; 0 picks a free one)")
    parser.add_argument("--scheduler", default=None, help="override gateway.scheduler")
    parser.add_argument("--router", default=None, help="override gateway.router")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(func=run)


def _apply_overrides(config, args: argparse.Namespace):
    from quicgw.config import parse_config

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port),
                                   ("scheduler", args.scheduler), ("router", args.router))
                 if v is not None}
    if not overrides:
        return config
    data = config.model_dump(exclude_none=True)
    data["gateway"].update(overrides)
    return parse_config(data)


def run(args: argparse.Namespace) -> int:
    from quicgw.config import ConfigError, load_config
    from quicgw.runtime import event_loop_factory, raise_fd_limit

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s: %(message)s")
    # No per-request or per-connection lines at INFO: aioquic logs every connection, httpx every
    # upstream request (and health probe).
    for noisy in ("quic", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = _apply_overrides(load_config(args.config), args)
    except ConfigError as e:
        print(f"quicgw serve: {e}", file=sys.stderr)
        return 2
    raise_fd_limit()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        try:
            return runner.run(serve(config))
        except OSError as e:
            print(f"quicgw serve: error: {e}", file=sys.stderr)
            return 1


@contextlib.asynccontextmanager
async def emulated_backends(config):
    """Start the config's ``emulated = true`` backends as processes on their ports; stop them
    on exit, whatever happens."""
    from quicgw.backends.process import BackendProcess

    procs = [
        BackendProcess(b.model, b.gpu, port=b.port, max_batch=b.max_batch,
                       time_scale=b.time_scale, served_model_name=b.served_model_name,
                       queue_policy="priority" if b.forward_priority else "fcfs",
                       default_max_tokens=config.gateway.default_max_tokens)
        for b in config.backends if b.emulated and b.url is None
    ]
    try:
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
        for p in procs:
            log.info("emulated backend %s at %s", p.banner.removeprefix("quicgw backend: "), p.url)
        yield procs
    finally:
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs),
                             return_exceptions=True)


async def serve(config) -> int:
    from quicgw.gateway.server import Gateway

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with emulated_backends(config), Gateway(config) as gw:
        log.info("quicgw gateway on %s: HTTP/3 on udp/%d, HTTP/1.1 + HTTP/2 on tcp/%d; "
                 "%d backend(s); development CA: %s", gw.url, gw.port, gw.port,
                 len(config.backends), gw.cafile or "(operator certificate)")
        await stop.wait()
        log.info("shutting down")
    return 0
