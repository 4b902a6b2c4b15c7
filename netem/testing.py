"""Helpers for tests that need namespaces: without them a test skips, except under CI=true,
where it FAILS (CI must run the real thing)."""

from __future__ import annotations

import os
import shutil
import subprocess


def namespace_problems() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root (network namespaces need CAP_SYS_ADMIN/CAP_NET_ADMIN)")
    if not shutil.which("ip"):
        problems.append("`ip` (iproute2) not installed: run netem/ensure-system-deps.sh")
        return problems
    probe = f"qgw-{os.getpid():x}-0-nsprobe"
    cp = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if cp.returncode != 0:
        problems.append(f"cannot create a network namespace: {cp.stderr.strip()}")
    else:
        subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    if not os.path.exists("/dev/net/tun"):
        problems.append("/dev/net/tun does not exist")
    else:
        try:
            os.close(os.open("/dev/net/tun", os.O_RDWR))
        except OSError as e:
            problems.append(f"cannot open /dev/net/tun: {e}")
    return problems


def require_namespaces() -> None:
    """Call at the start of a test: skip (locally) or fail (CI=true) without namespaces/TUN."""
    import pytest

    problems = namespace_problems()
    if not problems:
        return
    msg = "netem tests need network namespaces and /dev/net/tun: " + "; ".join(problems)
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg + " (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(msg)
