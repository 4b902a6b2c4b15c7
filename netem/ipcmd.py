"""Running ``ip``/``tc`` commands (iproute2) and processes inside namespaces.

We call the ``ip`` and ``tc`` programs rather than pyroute2: the commands are the documented,
stable interface every Linux user already has, each one is logged so a run can be reproduced
by hand, the tc-netem path must emit exactly the commands a user would type, and it needs no
extra Python dependency (pyroute2's netns support forks helper processes of its own, which
would be more processes to account for at teardown).
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence

PR_SET_PDEATHSIG = 1


class NetemError(RuntimeError):
    """A network set-up step failed; the message has the command and its error output."""


def require_tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if not path:
        raise NetemError(
            f"`{name}` not found: install iproute2 (Debian/Ubuntu: apt-get install -y iproute2; "
            "see netem/ensure-system-deps.sh)")
    return path


def die_with_parent() -> None:
    """preexec_fn: have the kernel SIGKILL the child when its parent dies (even by SIGKILL),
    so a crashed experiment leaves no process behind. ``ip netns exec`` execs the command
    itself, and the setting survives exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Runner:
    """Runs commands for real; ``log`` (if given) receives each command line."""

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self.log = log
        self.history: list[list[str]] = []

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 20.0
            ) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.history.append(argv)
        if self.log:
            self.log("$ " + " ".join(argv))
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError as e:
            raise NetemError(f"{argv[0]}: not found ({e})") from None
        except subprocess.TimeoutExpired:
            raise NetemError(f"timed out after {timeout}s: {' '.join(argv)}") from None
        if check and cp.returncode != 0:
            raise NetemError(f"command failed ({cp.returncode}): {' '.join(argv)}\n"
                             f"{cp.stderr.strip() or cp.stdout.strip()}")
        return cp


class DryRunner(Runner):
    """Records commands without running them (tests of the exact commands)."""

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 20.0
            ) -> subprocess.CompletedProcess[str]:
        self.history.append(list(argv))
        return subprocess.CompletedProcess(list(argv), 0, "", "")
