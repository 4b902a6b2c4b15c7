"""Process-level plumbing shared by every long-running quicgw process (gateway, backends,
benchmark servers): the event loop, the file limit, and how a child process learns to stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import subprocess
from collections.abc import Callable


def stop_process(proc: subprocess.Popen, timeout_s: float, *,
                 ask: Callable[[subprocess.Popen], None] = subprocess.Popen.terminate,
                 kill_timeout_s: float | None = None) -> int | None:
    """Stop a child process: ``ask`` it (SIGTERM by default), give it ``timeout_s``, then
    SIGKILL (and wait ``kill_timeout_s``, forever by default); close its pipes. Returns its exit
    code (None only if it outlived ``kill_timeout_s``)."""
    if proc.poll() is None:
        ask(proc)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(kill_timeout_s)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    return proc.returncode


def raise_fd_limit() -> None:
    """Allow ~1,000 concurrent connections where the default soft limit is 1,024 files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def event_loop_factory():
    """uvloop's loop when installed (faster sockets and timers), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def stop_event(*, exit_with_stdin: bool) -> asyncio.Event:
    """An event set on SIGINT/SIGTERM and, with ``exit_with_stdin``, when standard input
    reaches EOF: a child whose parent holds its stdin pipe never outlives the parent."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if exit_with_stdin:
        def on_stdin() -> None:
            try:
                data = os.read(0, 65536)
            except OSError:
                data = b""
            if not data:  # EOF: the parent is gone
                loop.remove_reader(0)
                stop.set()
        loop.add_reader(0, on_stdin)
    return stop
