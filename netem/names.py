"""Names of everything netem creates. All start with ``qgw-`` so ``netem cleanup`` can find
our leftovers, and only ours. A namespace's name carries its owner's pid, so a cleanup can tell
leftovers of a dead run from the namespaces of a run still going."""

from __future__ import annotations

import itertools
import os
import re

PREFIX = "qgw-"
ROLES = ("client", "gateway", "backend", "emu")

# Interface names (at most 15 characters). Interfaces live inside our namespaces, so these
# fixed names never collide with the host's or another run's.
TUN_CLIENT = "qgw-tun0"  # client side of the emulated link (userspace emulator)
TUN_GATEWAY = "qgw-tun1"  # gateway side
VETH_CLIENT = "qgw-veth0"  # client side of the emulated link (tc emulator)
VETH_GATEWAY = "qgw-veth1"  # gateway side
VETH_GW_BACKEND = "qgw-veth2"  # gateway <-> backend (not impaired)
VETH_BACKEND = "qgw-veth3"

# Addresses (each namespace has its own stack, so every run can use the same ones).
CLIENT_IP = "10.201.0.1"
GATEWAY_IP = "10.201.0.2"
GATEWAY_BACKEND_IP = "10.202.0.1"
BACKEND_IP = "10.202.0.2"

_NS_RE = re.compile(r"^qgw-([0-9a-f]+)-(\d+)-([a-z]+)$")
_counter = itertools.count()


def new_run_id() -> str:
    """``<pid hex>-<n>``: unique among the runs of this machine that are alive."""
    return f"{os.getpid():x}-{next(_counter)}"


def namespace(run_id: str, role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    return f"{PREFIX}{run_id}-{role}"


def owner_pid(ns_name: str) -> int | None:
    """The pid of the process that created the namespace, or None if it is not one of ours
    in the current naming scheme (still ours by prefix: cleanup removes it)."""
    m = _NS_RE.match(ns_name)
    return int(m.group(1), 16) if m else None
