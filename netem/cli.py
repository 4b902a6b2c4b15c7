"""``python -m netem`` and ``quicgw netem``: cleanup, profiles, detect, fidelity, experiment."""

from __future__ import annotations

import argparse
import json
import sys

from netem.profiles import PROFILES


def _cleanup(args: argparse.Namespace) -> int:
    from netem.cleanup import cleanup

    removed = cleanup(all_runs=args.all, log=print)
    print(f"netem cleanup: removed {len(removed['namespaces'])} namespace(s) and "
          f"{len(removed['links'])} link(s)"
          + (f"; kept {len(removed['kept'])} of runs still going (use --all)"
             if removed["kept"] else ""))
    return 0


def _profiles(args: argparse.Namespace) -> int:
    for p in PROFILES.values():
        print(p.summary())
        if args.json:
            print("  " + json.dumps(p.to_dict()))
    return 0


def _detect(args: argparse.Namespace) -> int:
    from netem.topology import choose_emulator

    emulator, why = choose_emulator(args.emulator)
    print(f"netem: emulator {emulator} ({why})")
    return 0


def _delegate(module: str):
    def run(args: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(module).main(args.rest)
    return run


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cleanup", help="remove leftover qgw- namespaces, links and processes")
    p.add_argument("--all", action="store_true", help="also those of runs still going")
    p.set_defaults(func=_cleanup)
    p = sub.add_parser("profiles", help="list the link profiles")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_profiles)
    p = sub.add_parser("detect", help="say which emulator --emulator would use")
    p.add_argument("--emulator", default="auto", choices=("auto", "tc", "userspace"))
    p.set_defaults(func=_detect)
    for name, module in (("fidelity", "netem.fidelity"), ("experiment", "netem.experiment")):
        p = sub.add_parser(name, help=f"see python -m {module} --help", add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(module))


def build_parser(prog: str = "python -m netem") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Emulated-network experiments.")
    add_commands(ap.add_subparsers(dest="netem_command", metavar="COMMAND", required=True))
    return ap


def register(subparsers: argparse._SubParsersAction) -> None:
    """``quicgw netem ...``"""
    p = subparsers.add_parser("netem", help="emulated-network experiments (namespaces, tc-netem, "
                                            "userspace link emulator)")
    add_commands(p.add_subparsers(dest="netem_command", metavar="COMMAND", required=True))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
