"""The two commands a user runs: `quicgw demo` (its last line) and `quicgw serve` (starts its
emulated backends and the gateway, serves HTTP/3, stops everything on SIGTERM)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from quicgw.client import Client

pytestmark = pytest.mark.timeout(120)

LAST_LINE = re.compile(
    r"^demo: classes=3 requests=(\d+) completed=(\d+) attainment=(\d\.\d{3}) score=(\d\.\d{3})$")


def test_demo_prints_table_and_last_line():
    proc = subprocess.run(
        [sys.executable, "-m", "quicgw.cli", "demo", "--requests", "15", "--rate", "20",
         "--time-scale", "5", "--seed", "3"],
        capture_output=True, text=True, timeout=90, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    m = LAST_LINE.match(lines[-1])
    assert m, lines[-1]
    requests, completed = int(m[1]), int(m[2])
    assert requests == 15 and completed == 15
    assert 0.0 <= float(m[3]) <= 1.0 and 0.0 < float(m[4]) <= 2.0
    assert lines[0].split()[:4] == ["class", "requests", "completed", "attain"]
    assert {line.split()[0] for line in lines[2:5]} == {"realtime", "free", "bulk"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_starts_backends_and_gateway_and_stops_cleanly(tmp_path):
    backend_port = _free_port()
    config = tmp_path / "gw.toml"
    config.write_text(f"""
[gateway]
host = "127.0.0.1"
port = 0
scheduler = "edf"

[[backends]]
name = "small-0"
model = "small"
emulated = true
port = {backend_port}
time_scale = 10
""")
    proc = subprocess.Popen([sys.executable, "-m", "quicgw.cli", "serve", "--config", str(config)],
                            stderr=subprocess.PIPE, text=True)
    try:
        port = None
        deadline = time.monotonic() + 60
        log = []
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            log.append(line)
            if m := re.search(r"HTTP/3 on udp/(\d+)", line):
                port = int(m[1])
        assert port, "".join(log)
        ca = re.search(r"development CA: (\S+)", log[-1])[1]
        with Client(f"https://127.0.0.1:{port}", verify=ca, timeout=20) as c:
            r = c.chat([{"role": "user", "content": "hi"}], max_tokens=4, traffic_class="free")
            assert r.status == 200 and r.json()["usage"]["completion_tokens"] == 4
            assert r.headers["x-quicgw-instance"] == "small-0"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    # the emulated backend went with it
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", backend_port)) != 0
