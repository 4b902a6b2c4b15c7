"""Remove netem leftovers: our namespaces (and the processes inside them) and links in the
host namespace, found by our name prefix (``qgw-``) only. Nothing else is touched.

``python -m netem cleanup`` removes the leftovers of runs whose owner process is gone;
``--all`` removes every ``qgw-`` namespace and link, including those of runs still going.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from netem.ipcmd import NetemError, Runner
from netem.names import PREFIX, owner_pid


def list_namespaces(runner: Runner) -> list[str]:
    cp = runner.run(["ip", "netns", "list"], check=False)
    names = []
    for line in cp.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX):
            names.append(name)
    # `ip netns list` reads /run/netns; a bind-mount file left without its mount still shows.
    return names


def host_links(runner: Runner) -> list[str]:
    cp = runner.run(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in cp.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@", 1)[0]
            if name.startswith(PREFIX):
                names.append(name)
    return names


def namespace_pids(runner: Runner, ns: str) -> list[int]:
    cp = runner.run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in cp.stdout.split() if x.isdigit()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_namespace_processes(runner: Runner, ns: str, grace: float = 2.0) -> int:
    """SIGTERM every process in ``ns``, then SIGKILL what is left after ``grace`` seconds."""
    me = os.getpid()
    pids = [p for p in namespace_pids(runner, ns) if p != me]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.05)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def remove_namespace(runner: Runner, ns: str) -> None:
    kill_namespace_processes(runner, ns)
    runner.run(["ip", "netns", "delete", ns], check=False)


def cleanup(all_runs: bool = False, runner: Runner | None = None,
            log: Callable[[str], None] | None = None) -> dict[str, list[str]]:
    """Remove leftovers; returns what was removed."""
    runner = runner or Runner()
    removed: dict[str, list[str]] = {"namespaces": [], "links": [], "kept": []}
    for ns in list_namespaces(runner):
        pid = owner_pid(ns)
        if not all_runs and pid is not None and _alive(pid):
            removed["kept"].append(ns)
            continue
        remove_namespace(runner, ns)
        removed["namespaces"].append(ns)
        if log:
            log(f"removed namespace {ns}")
    for link in host_links(runner):
        try:
            runner.run(["ip", "link", "delete", link])
            removed["links"].append(link)
            if log:
                log(f"removed link {link}")
        except NetemError as e:
            if log:
                log(f"could not remove link {link}: {e}")
    return removed
