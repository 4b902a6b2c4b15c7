"""The ``quicgw`` command. Each subcommand lives in its own module, which exposes
``register(subparsers)`` adding its parser (with ``func`` set as the default); modules are
imported only to build the parser, so ``quicgw --help`` stays fast."""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, what it adds) — one line per subcommand module.
SUBCOMMAND_MODULES = (
    "quicgw.gateway.cli",  # serve
    "quicgw.backends.cli",  # backend
    "quicgw.demo",  # demo
    "netem.cli",  # netem (cleanup, profiles, detect, fidelity, experiment)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quicgw",
        description="A QoS gateway for LLM inference over QUIC (HTTP/3).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue  # subcommand not built yet
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
