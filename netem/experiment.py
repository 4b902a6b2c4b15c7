"""The poster's network scheduling experiment on an emulated link, through our gateway and SDK.

``python -m netem.experiment --profile 3g [--quick] [--arrivals burst|poisson --rate R]``

For each seed the client (in the client namespace) sends the poster's workload (80 requests,
each class chosen at random: real-time short 8 KB / 1 s, low-priority short 8 KB / 2 s, long
input 102.4 KB / 7 s) to the gateway's ``POST /v1/echo`` (in the gateway namespace) across the
emulated link, once per QUIC stream scheduler (the same scheduler orders the client's uploads
and the gateway's responses) and once over TLS/TCP (HTTP/2 on one TCP connection to the
gateway's TCP listener: the same application). Each run starts on an established connection
and a fresh link (same seed: the same loss draws for every scheduler). Every QUIC run uses the
same congestion controller at both ends (``--congestion-control``, default
:data:`quicgw.congestion.DEFAULT`); TCP uses the kernel's, which is read in both namespaces and
reported.

Reported per scheduler and class: completion within deadline and mean latency, mean ± standard
deviation over seeds, and the fraction of the bound (``netem.bound``: the most requests of the
class any schedule could complete on the fluid link). Writes ``results.json``, ``summary.csv``,
``requests.csv``, ``completion.png`` and ``latency_cdf.png`` under ``--out``; the last line is
``netem <profile>: rt_completion edf=<x> rr=<x> tcp=<x> best=<name>:<x> bound=<x>``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from netem import analysis
from netem.bound import FluidLink, class_bound
from netem.ipcmd import NetemError
from netem.profiles import LossSpec, get_profile
from netem.topology import Topology
from netem.workload import make_workload
from quicgw import congestion

ALL_SCHEDULERS = ("rr", "fcfs", "edf", "abs", "ml", "rfc9218", "adaptive")
QUICK_SCHEDULERS = ("edf", "rr", "abs")
BASE_PORT = 8440


def _read_json_line(proc: subprocess.Popen, timeout: float, what: str) -> dict[str, Any]:
    import select

    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise NetemError(f"{what}: no answer within {timeout:.0f} s")
    line = proc.stdout.readline()
    if not line:
        raise NetemError(f"{what}: process ended (exit code {proc.poll()}); see its log")
    return json.loads(line)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _kernel_tcp_cc(topo: Topology, role: str) -> str:
    """The TCP congestion control the kernel uses in ``role``'s namespace."""
    for argv in (["sysctl", "-n", "net.ipv4.tcp_congestion_control"],
                 ["cat", "/proc/sys/net/ipv4/tcp_congestion_control"]):
        try:
            cp = topo.run_in(role, argv, timeout=10, check=False)
        except (NetemError, OSError):
            continue
        if cp.returncode == 0 and cp.stdout.strip():
            return cp.stdout.strip()
    return "unknown"


def run_experiment(a: argparse.Namespace, log=_log) -> dict[str, Any]:
    profile = get_profile(a.profile)
    if a.queue_limit:
        profile = profile.with_queue(a.queue_limit)
    if a.loss is not None:
        profile = profile.with_loss(LossSpec.bernoulli(a.loss / 100.0))
    transports = [s for s in a.schedulers if s != analysis.TCP]
    with_tcp = analysis.TCP in a.schedulers
    seeds = list(range(a.seed_base, a.seed_base + a.seeds))
    workloads = {s: make_workload(a.requests, s, a.arrivals, a.rate) for s in seeds}
    link = FluidLink.from_profile(profile)
    from netem.workload import fluid_requests

    bounds = {s: class_bound(fluid_requests(workloads[s]), link) for s in seeds}
    cc_link = FluidLink.loss_limited(profile)
    cc_bounds = {s: class_bound(fluid_requests(workloads[s]), cc_link) for s in seeds}
    counts = {s: {c: sum(1 for w in workloads[s] if w.cls == c) for c in analysis.CLASS_ORDER}
              for s in seeds}
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    t_start = time.monotonic()
    gw_log = open(out_dir / "gateway.log", "w")
    drv_log = open(out_dir / "client.log", "w")
    try:
        with Topology(profile, a.emulator, seed=seeds[0], backend=True, log=log,
                      verbose=a.verbose) as topo:
            gw_schedulers = transports or ["rr"]
            tcp_cc = {role: _kernel_tcp_cc(topo, role) for role in ("client", "gateway")}
            log(f"congestion control: QUIC {a.congestion_control} (client SDK and gateway), "
                f"TCP {tcp_cc['client']} (client kernel) / {tcp_cc['gateway']} (gateway kernel)")
            gw = topo.spawn("gateway", [sys.executable, "-m", "netem.gateways", "--host",
                                        topo.gateway_ip, "--base-port", str(BASE_PORT),
                                        "--schedulers", ",".join(gw_schedulers),
                                        "--congestion-control", a.congestion_control],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=gw_log,
                            text=True)
            drv = topo.spawn("client", [sys.executable, "-m", "netem.driver"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=drv_log,
                             text=True, bufsize=1)
            ports = _read_json_line(gw, 60, "gateway")["ports"]
            _read_json_line(drv, 60, "client driver")
            order = [(s, "quic") for s in transports] + ([(analysis.TCP, "tcp")] if with_tcp
                                                          else [])
            total = len(order) * len(seeds)
            k = 0
            for seed in seeds:
                items = [w.to_dict() for w in workloads[seed]]
                for name, transport in order:
                    k += 1
                    topo.set_link(seed=seed)  # fresh link, same loss draws for everyone
                    spec = {"transport": transport, "scheduler": name if transport == "quic"
                            else "rr", "host": topo.gateway_ip,
                            "port": ports.get(name, ports[gw_schedulers[0]]), "seed": seed,
                            "items": items, "cutoff_factor": a.cutoff_factor,
                            "congestion_control": a.congestion_control}
                    t = time.monotonic()
                    assert drv.stdin is not None
                    drv.stdin.write(json.dumps(spec) + "\n")
                    drv.stdin.flush()
                    res = _read_json_line(drv, 60 + 8 * a.cutoff_factor * 2, f"run {name}")
                    if "error" in res:
                        raise NetemError(f"run {name} seed {seed}: {res['error']}")
                    res.update(scheduler=name, seed=seed, transport=transport,
                               link=topo.link_stats() if topo.emulator == "userspace" else None)
                    runs.append(res)
                    per = []
                    for cls in analysis.CLASS_ORDER:
                        qs = [q for q in res["requests"] if q["cls"] == cls]
                        ot = sum(1 for q in qs if q["ok"] and q["latency"] <= q["deadline"])
                        per.append(f"{analysis.SHORT[cls]} {ot}/{len(qs)}")
                    errs = sum(1 for q in res["requests"] if q["error"] and q["error"] != "cutoff")
                    extra = ""
                    if res["link"]:
                        up, down = res["link"]["uplink"], res["link"]["downlink"]
                        extra = (f" | link up: {up['lost']} lost {up['queue_drops']} q-drops "
                                 f"max q {up['max_backlog']}; down: {down['lost']} lost "
                                 f"{down['queue_drops']} q-drops max q {down['max_backlog']}")
                    log(f"[{k}/{total}] seed {seed} {name:<8} {', '.join(per)}"
                        f"{f', {errs} errors' if errs else ''} ({time.monotonic() - t:.1f} s)"
                        f"{extra}")
            for p in (drv, gw):
                try:
                    assert p.stdin is not None
                    p.stdin.close()
                except OSError:
                    pass
            emulator, reason = topo.emulator, topo.emulator_reason
    finally:
        gw_log.close()
        drv_log.close()
    rows = analysis.summarize(runs, bounds)
    bound_by_class = analysis.bound_rates(bounds, counts)
    result = {
        "profile": profile.to_dict(), "profile_summary": profile.summary(),
        "emulator": emulator, "emulator_reason": reason,
        "congestion_control": {"quic": a.congestion_control, "tcp": tcp_cc},
        "arrivals": a.arrivals, "rate": a.rate if a.arrivals == "poisson" else None,
        "requests": a.requests, "seeds": seeds, "cutoff_factor": a.cutoff_factor,
        "bounds": {str(s): b for s, b in bounds.items()},
        "class_counts": {str(s): c for s, c in counts.items()},
        "bound_rate": bound_by_class,
        "loss_limited_reference": {
            "up_mbit": cc_link.up_rate * 8 / 1e6, "down_mbit": cc_link.down_rate * 8 / 1e6,
            "counts": {str(s): b for s, b in cc_bounds.items()},
            "rate": analysis.bound_rates(cc_bounds, counts)},
        "summary": [analysis.asdict(r) for r in rows],
        "runs": runs, "elapsed_s": time.monotonic() - t_start,
    }
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m netem.experiment",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="3g")
    ap.add_argument("--emulator", default="auto", choices=("auto", "tc", "userspace"))
    ap.add_argument("--schedulers", default=None,
                    help=f"comma-separated, from {','.join(ALL_SCHEDULERS)},tcp (default: all)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3)")
    ap.add_argument("--seed-base", type=int, default=0)
    ap.add_argument("--requests", type=int, default=80)
    ap.add_argument("--arrivals", default="burst", choices=("burst", "poisson"))
    ap.add_argument("--rate", type=float, default=10.0, help="Poisson arrivals per second")
    ap.add_argument("--queue-limit", type=int, default=None,
                    help="bottleneck buffer in packets (default: the profile's)")
    ap.add_argument("--loss", type=float, default=None,
                    help="Bernoulli loss in percent, each direction (default: the profile's)")
    ap.add_argument("--cutoff-factor", type=float, default=None,
                    help="give up on a request after this many deadlines (default 2, quick 1)")
    ap.add_argument("--out", default=None, help="output directory (default results/netem/...)")
    ap.add_argument("--quick", action="store_true",
                    help=f"one seed, schedulers {','.join(QUICK_SCHEDULERS)},tcp: under a minute")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--from-json", metavar="RESULTS_JSON",
                    help="do not run: report again from an earlier run's results.json")
    ap.add_argument("--congestion-control", default=congestion.DEFAULT,
                    help=f"QUIC congestion controller at both ends, for every QUIC scheduler "
                         f"(default {congestion.DEFAULT}; also: reno, cubic). TCP uses the "
                         f"kernel's, reported")
    ap.add_argument("--verbose", action="store_true", help="log every ip/tc command")
    a = ap.parse_args(argv)
    try:
        congestion.check_algorithm(a.congestion_control)
    except ValueError as e:
        ap.error(str(e))
    if a.schedulers:
        a.schedulers = [s.strip() for s in a.schedulers.split(",") if s.strip()]
    else:
        a.schedulers = list(QUICK_SCHEDULERS if a.quick else ALL_SCHEDULERS) + [analysis.TCP]
    unknown = [s for s in a.schedulers if s not in ALL_SCHEDULERS + (analysis.TCP,)]
    if unknown:
        ap.error(f"unknown scheduler(s) {', '.join(unknown)}")
    a.seeds = a.seeds or (1 if a.quick else 3)
    a.cutoff_factor = a.cutoff_factor or (1.0 if a.quick else 2.0)
    if a.requests < 1:
        ap.error("--requests must be >= 1")
    if not a.out:
        tag = f"{a.profile}-{a.arrivals}" + ("-quick" if a.quick else "")
        a.out = str(Path("results") / "netem" / tag)
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.from_json:
        res = json.loads(Path(a.from_json).read_text())
        a.profile, a.arrivals, a.requests = res["profile"]["name"], res["arrivals"], res["requests"]
        a.out = str(Path(a.from_json).parent)
    else:
        try:
            res = run_experiment(a)
        except NetemError as e:
            print(f"netem.experiment: {e}", file=sys.stderr)
            return 1
    out = Path(a.out)
    rows = [analysis.ClassSummary(**r) for r in res["summary"]]
    bound_by_class = res["bound_rate"]
    title = f"netem {a.profile} ({res['emulator']}, {a.arrivals}, {a.requests} req, " \
            f"{len(res['seeds'])} seed{'s' if len(res['seeds']) > 1 else ''})"
    print()
    print(f"{title}: {res['profile_summary']}")
    cc = res.get("congestion_control")
    if cc:
        print(f"congestion control: QUIC {cc['quic']} at both ends (every QUIC scheduler); "
              f"TCP {cc['tcp']['client']} (client kernel) / {cc['tcp']['gateway']} "
              f"(gateway kernel)")
    print("completion within deadline (mean±sd over seeds), mean latency of completed requests "
          "(ms, mean±sd over seeds), on-time as a fraction of the bound")
    ref = res.get("loss_limited_reference")
    print(analysis.format_table(rows, bound_by_class, ref["rate"] if ref else None))
    if ref and ref["up_mbit"] < res["profile"]["uplink"]["rate_mbit"]:
        print(f"bound: offline EDF on the fluid link; ref: the same with each direction capped at "
              f"a Reno sender's loss-limited rate (Mathis: {ref['up_mbit']:.2f} up / "
              f"{ref['down_mbit']:.2f} down Mbit/s), what any schedule can reach on top of "
              f"loss-based congestion control (reno, cubic; not a limit for bbr)")
    with open(out / "results.json", "w") as f:
        json.dump(res, f, indent=1)
    analysis.write_csv(out / "summary.csv", rows)
    analysis.write_requests_csv(out / "requests.csv", res["runs"])
    files = ["results.json", "summary.csv", "requests.csv"]
    if not a.no_plots:
        files += [p.name for p in analysis.plot(out, title, rows, res["runs"], bound_by_class)]
    print(f"wrote {', '.join(files)} to {out}/ ({res['elapsed_s']:.0f} s)")
    print(analysis.last_line(a.profile, rows, bound_by_class.get("realtime", float("nan"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
