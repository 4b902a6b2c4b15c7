"""Run an emulated backend in its own process (its own core, its own event loop).

    with BackendProcess("llama-3.1-8b", "a100-80gb", time_scale=20) as b:   # or `async with`
        httpx.get(f"{b.url}/load")

The child is ``python -m quicgw.backends ... --port 0 --exit-with-stdin``: it binds a free port
and prints its URL on stdout, which :meth:`BackendProcess.start` waits for. Its stdin is a pipe
held by this process; if this process dies without stopping it, the pipe closes and the child
exits, so no backend outlives the program that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence

from quicgw.backends.cli import READY_MARKER
from quicgw.runtime import stop_process


class BackendProcess:
    def __init__(self, model: str, gpu: str = "a100-80gb", *, host: str = "127.0.0.1",
                 port: int = 0, max_batch: int | None = None, queue_policy: str = "fcfs",
                 time_scale: float = 1.0, served_model_name: str | None = None,
                 default_max_tokens: int | None = None, startup_timeout_s: float = 30.0,
                 nice: int = 0, stderr: int | None = None) -> None:
        self.args = [sys.executable, "-m", "quicgw.backends", "--model", model, "--gpu", gpu,
                     "--host", host, "--port", str(port), "--queue-policy", queue_policy,
                     "--time-scale", repr(float(time_scale)), "--exit-with-stdin"]
        if max_batch is not None:
            self.args += ["--max-batch", str(max_batch)]
        if served_model_name is not None:
            self.args += ["--served-model-name", served_model_name]
        if default_max_tokens is not None:
            self.args += ["--default-max-tokens", str(default_max_tokens)]
        self.startup_timeout_s = startup_timeout_s
        self.nice = nice
        self.stderr = stderr
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.banner = ""  # the child's description of its latency model

    @property
    def port(self) -> int:
        if self.url is None:
            raise RuntimeError("backend process not started")
        return int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> str:
        """Start the child and wait until it listens; returns its base URL."""
        if self.proc is not None:
            raise RuntimeError("backend process already started")
        self.proc = subprocess.Popen(
            self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
        try:
            self.url = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_ready(self) -> str:
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + self.startup_timeout_s
        buf = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"emulated backend did not start within "
                                   f"{self.startup_timeout_s:g} s: {' '.join(self.args)}")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                code = self.proc.wait()
                raise RuntimeError(f"emulated backend exited with code {code} before it was "
                                   f"ready (its stderr says why): {' '.join(self.args)}")
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if line.startswith(READY_MARKER):
                    return line[len(READY_MARKER):].strip()
                self.banner = line

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """Stop the child (SIGTERM, then SIGKILL after ``timeout_s``); returns its exit code."""
        proc, self.proc = self.proc, None
        return None if proc is None else stop_process(proc, timeout_s)

    def __enter__(self) -> BackendProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> BackendProcess:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)


@contextlib.asynccontextmanager
async def running_backends(procs: Sequence[BackendProcess]) -> AsyncIterator[Sequence[BackendProcess]]:
    """Start ``procs`` concurrently and stop every one of them on exit, also when a start fails,
    on error and on cancellation."""
    try:
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
        yield procs
    finally:
        await asyncio.gather(*(asyncio.to_thread(p.stop) for p in procs), return_exceptions=True)
