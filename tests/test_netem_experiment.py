"""The scheduler experiment end to end: namespaces, the userspace link emulator, our gateway and
client SDK over HTTP/3, and HTTP/2 over TLS/TCP, on the poster's 3g link. Skips locally without
namespaces/TUN, FAILS under CI=true. Also checks that nothing is left behind."""

import json
import os
import re
import subprocess
import sys
import uuid

from netem.bound import FluidLink, class_bound
from netem.cleanup import list_namespaces
from netem.ipcmd import Runner
from netem.names import owner_pid
from netem.profiles import get_profile
from netem.testing import require_namespaces
from netem.workload import POSTER_CLASSES, fluid_requests, make_workload

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAST = re.compile(r"^netem 3g: rt_completion edf=(\d\.\d{3}) rr=(\d\.\d{3}) tcp=(\d\.\d{3}) "
                  r"best=([a-z0-9]+):(\d\.\d{3}) bound=(\d\.\d{3})$")


def test_workload_is_the_posters_and_seeded():
    w = make_workload(80, seed=1)
    assert w == make_workload(80, seed=1) and w != make_workload(80, seed=2)
    assert len(w) == 80 and all(x.offset_s == 0 for x in w)
    sizes = {c.name: (c.size, c.deadline_ms) for c in POSTER_CLASSES}
    assert sizes == {"realtime": (8000, 1000.0), "free": (8000, 2000.0),
                     "bulk": (102400, 7000.0)}
    assert {x.cls for x in w} == set(sizes)
    p = make_workload(80, seed=1, arrivals="poisson", rate=10)
    gaps = [b.offset_s - a.offset_s for a, b in zip(p, p[1:], strict=False)]
    assert min(gaps) >= 0 and 0.05 < sum(gaps) / len(gaps) < 0.2


def test_bound_on_3g_burst():
    # On the fluid 3g link every class alone fits: 80 requests need ~5.1 s of uplink, and even
    # the joint EDF order (real-time, low-priority, long) meets every deadline.
    w = make_workload(80, seed=0)
    b = class_bound(fluid_requests(w), FluidLink.from_profile(get_profile("3g")))
    assert b == {c: sum(1 for x in w if x.cls == c) for c in ("realtime", "free", "bulk")}


def _pids_with_marker(marker: str) -> list[int]:
    """Processes that inherited this run's environment marker (other runs on the machine,
    such as a developer's experiment, carry none)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_quick_experiment_end_to_end(tmp_path):
    require_namespaces()
    marker = f"QGW_TEST_RUN={uuid.uuid4().hex}"
    env = {**os.environ, "QGW_TEST_RUN": marker.split("=", 1)[1]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "netem.experiment", "--profile", "3g", "--quick",
         "--schedulers", "edf,rr,tcp", "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    cp = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    print(cp.stdout[-4000:])
    assert cp.returncode == 0, cp.stderr[-4000:]
    last = cp.stdout.strip().splitlines()[-1]
    m = LAST.match(last)
    assert m, last
    edf, rr, tcp, best, best_x, bound = m.groups()
    assert "emulator userspace" in cp.stdout or "emulator tc" in cp.stdout
    for f in ("results.json", "summary.csv", "requests.csv", "completion.png",
              "latency_cdf.png"):
        assert (tmp_path / f).stat().st_size > 0, f
    res = json.loads((tmp_path / "results.json").read_text())
    assert {r["scheduler"] for r in res["runs"]} == {"edf", "rr", "tcp"}
    tcp_run = next(r for r in res["runs"] if r["scheduler"] == "tcp")
    assert tcp_run["protocol"] == "HTTP/2"
    quic_run = next(r for r in res["runs"] if r["scheduler"] == "edf")
    assert quic_run["protocol"] == "h3"
    for r in res["runs"]:
        # Nothing fails other than by running out of time, and echoes are checked.
        assert all(q["ok"] or q["error"] == "cutoff" for q in r["requests"]), r["scheduler"]
    assert float(bound) == 1.0
    # EDF (both ends) serves the real-time class first: strictly better than round-robin and
    # than HTTP/2 over TLS/TCP on the same link.
    assert float(edf) > float(rr) and float(edf) > float(tcp)
    assert best in ("edf", "rr", "tcp") and float(best_x) == max(map(float, (edf, rr, tcp)))
    # Nothing left behind: no namespace named after the experiment's pid, no process that
    # inherited its environment.
    assert [ns for ns in list_namespaces(Runner()) if owner_pid(ns) == proc.pid] == []
    assert _pids_with_marker(marker) == []
