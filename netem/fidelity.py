"""How faithfully an emulator reproduces a profile: achieved rate, one-way delay, jitter and loss
per direction vs configured, and a TCP transfer through the same link.

``python -m netem.fidelity --profile 3g [--emulator auto|tc|userspace] [--json FILE]``

Measured with real sockets in the namespaces (``netem.probe``): one-way delay from CLOCK_MONOTONIC
stamps (shared by all namespaces of a host) of light UDP traffic, minus nothing (the expected
value is the configured delay plus the serialisation time of the probe packet); rate as IP bytes
per second delivered under 1.3x overload; loss from sequence gaps of UDP traffic at half the
link rate (no queue drops); TCP goodput of a bulk transfer.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from typing import Any

from netem.ipcmd import NetemError
from netem.profiles import DirectionProfile, get_profile
from netem.topology import Topology

PORT_UP = 9001
PORT_DOWN = 9002
PROBE_SMALL = 100  # UDP payload bytes of loss probes
PROBE_DELAY = 200
PROBE_BULK = 1200
IP_UDP = 28
LOSS_MAX_BURST = 4  # back-to-back loss probes after a late wake-up; far below any queue limit


def _start_sink(topo: Topology, role: str, argv: list[str]) -> subprocess.Popen:
    proc = topo.spawn(role, [sys.executable, "-m", "netem.probe", *argv],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        err = proc.stderr.read() if proc.stderr else ""
        raise NetemError(f"probe sink in {role} did not start: {line!r} {err[-2000:]}")
    return proc


def _finish(topo: Topology, proc: subprocess.Popen, timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        topo.stop(proc)
        raise NetemError("probe did not finish in time") from None
    finally:
        if proc in topo.procs:
            topo.procs.remove(proc)
    if proc.returncode != 0:
        raise NetemError(f"probe failed ({proc.returncode}): {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _udp_phase(topo: Topology, pps_up: float, pps_down: float, size: int, duration: float,
               max_burst: int | None = None) -> dict[str, dict[str, Any]]:
    """UDP from client to gateway and from gateway to client at the same time."""
    burst = [] if max_burst is None else ["--max-burst", str(max_burst)]
    idle = 1.0 + 2 * max(topo.profile.uplink.delay_ms, topo.profile.downlink.delay_ms) / 1000
    timeout = duration + 10 * idle + 10
    sink_up = _start_sink(topo, "gateway", ["udp-sink", "--bind", f"{topo.gateway_ip}:{PORT_UP}",
                                            "--idle", str(idle), "--timeout", str(timeout)])
    sink_down = _start_sink(topo, "client", ["udp-sink", "--bind", f"{topo.client_ip}:{PORT_DOWN}",
                                             "--idle", str(idle), "--timeout", str(timeout)])
    srcs = {
        "uplink": topo.spawn("client", [sys.executable, "-m", "netem.probe", "udp-source", "--dst",
                                        f"{topo.gateway_ip}:{PORT_UP}", "--pps", str(pps_up),
                                        "--size", str(size), "--duration", str(duration), *burst],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "downlink": topo.spawn("gateway", [sys.executable, "-m", "netem.probe", "udp-source",
                                           "--dst", f"{topo.client_ip}:{PORT_DOWN}", "--pps",
                                           str(pps_down), "--size", str(size), "--duration",
                                           str(duration), *burst],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }
    sent = {k: _finish(topo, p, timeout) for k, p in srcs.items()}
    got = {"uplink": _finish(topo, sink_up, timeout), "downlink": _finish(topo, sink_down, timeout)}
    return {k: {**got[k], "sent": sent[k]["sent"]} for k in got}


def _loss_ci(n: int, p: float) -> float:
    """Half-width of a ~99.9% normal interval of a loss fraction over n packets."""
    return 3.3 * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def measure(topo: Topology, duration: float = 3.0, tcp: bool = True) -> dict[str, Any]:
    prof = topo.profile
    dirs: dict[str, DirectionProfile] = {"uplink": prof.uplink, "downlink": prof.downlink}
    report: dict[str, Any] = {"profile": prof.name, "emulator": topo.emulator,
                              "summary": prof.summary(), "uplink": {}, "downlink": {}}

    # 1. Delay and jitter: light traffic (never queues), 50 packets/s.
    topo.set_link(seed=101)
    res = _udp_phase(topo, 50, 50, PROBE_DELAY, max(2.0, duration * 0.7))
    for k, d in dirs.items():
        ser = (PROBE_DELAY + IP_UDP) / d.bytes_per_s
        r = res[k]
        report[k].update({
            "delay_cfg_ms": d.delay_ms, "delay_expected_ms": d.delay_ms + ser * 1000,
            "delay_meas_ms": r["delay_s"]["mean"] * 1000, "delay_p50_ms": r["delay_s"]["p50"] * 1000,
            "delay_p99_ms": r["delay_s"]["p99"] * 1000,
            "jitter_cfg_ms": d.jitter_ms, "jitter_meas_ms": r["delay_s"]["std"] * 1000,
        })

    # 2. Rate: 1.3x overload with full-size packets; the link runs flat out.
    topo.set_link(seed=102)
    pps = {k: 1.3 * d.bytes_per_s / (PROBE_BULK + IP_UDP) for k, d in dirs.items()}
    res = _udp_phase(topo, pps["uplink"], pps["downlink"], PROBE_BULK, duration)
    if topo.emulator == "userspace":
        st = topo.link_stats()
        packets = st["uplink"]["offered"] + st["downlink"]["offered"]
        report["emulator_cpu"] = {"packets": packets, "cpu_s": st["cpu_s"],
                                  "us_per_packet": st["cpu_s"] / max(1, packets) * 1e6,
                                  "cpu_fraction": st["cpu_s"] / st["elapsed_s"]}
    for k, d in dirs.items():
        meas = res[k].get("rate_bps", 0.0)
        report[k].update({"rate_cfg_mbit": d.rate_mbit, "rate_meas_mbit": meas / 1e6,
                          "rate_err": meas / d.rate_bps - 1})

    # 3. Loss: small packets at half the link rate, many samples. The sources never catch up on
    # a late wake-up with a burst: 10 ms of oversleep at 3000 pps would be 30 packets back to
    # back, more than a 25-packet queue holds, and the queue drops would count as loss.
    topo.set_link(seed=103)
    pps = {k: 0.5 * d.bytes_per_s / (PROBE_SMALL + IP_UDP) for k, d in dirs.items()}
    pps = {k: min(v, 3000.0) for k, v in pps.items()}
    before = topo.link_stats() if topo.emulator == "userspace" else None
    res = _udp_phase(topo, pps["uplink"], pps["downlink"], PROBE_SMALL, duration,
                     max_burst=LOSS_MAX_BURST)
    after = topo.link_stats() if topo.emulator == "userspace" else None
    if topo.emulator == "userspace":
        report["tun_drops"] = topo.tun_drops()
    for k, d in dirs.items():
        r = res[k]
        n = r["sent"]
        lost = n - r["received"]
        cfg = d.loss.mean_loss
        entry = {"loss_cfg": cfg, "loss_meas": lost / n if n else float("nan"), "loss_n": n,
                 "loss_ci": _loss_ci(n, cfg)}
        if after is not None:
            delta = {f: after[k][f] - (before or after)[k][f]
                     for f in ("offered", "lost", "queue_drops", "delivered")}
            # The loss model's own draws: what the profile asks for, whatever the machine's
            # scheduling did to the queue (a stalled emulator reads a backlog of packets at one
            # instant, and the emulated queue may tail-drop some; those are queue_drops).
            entry["loss_link"] = delta["lost"] / delta["offered"] if delta["offered"] else 0.0
            entry["link_lost"] = delta["lost"]
            entry["queue_drops"] = delta["queue_drops"]
            entry["link_delivered"] = delta["delivered"]
            entry["received"] = r["received"]
            # Sent but never offered to the link model: lost outside the emulated link.
            entry["outside_drops"] = n - delta["offered"]
        report[k].update(entry)

    # 4. TCP bulk transfer client -> gateway through the same link.
    if tcp:
        topo.set_link(seed=104)
        stats0 = topo.link_stats() if topo.emulator == "userspace" else None
        sink = _start_sink(topo, "gateway", ["tcp-sink", "--bind", f"{topo.gateway_ip}:{PORT_UP}",
                                             "--timeout", str(duration + 60)])
        src = topo.spawn("client", [sys.executable, "-m", "netem.probe", "tcp-source", "--dst",
                                    f"{topo.gateway_ip}:{PORT_UP}", "--duration", str(duration)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _finish(topo, src, duration + 60)
        got = _finish(topo, sink, 10)
        t = {"goodput_mbit": got["goodput_bps"] / 1e6, "bytes": got["bytes"],
             "rate_cfg_mbit": prof.uplink.rate_mbit}
        if stats0 is not None:
            s1 = topo.link_stats()
            for k in ("uplink", "downlink"):
                t[f"{k}_lost"] = s1[k]["lost"] - stats0[k]["lost"]
                t[f"{k}_queue_drops"] = s1[k]["queue_drops"] - stats0[k]["queue_drops"]
                t[f"{k}_packets"] = s1[k]["offered"] - stats0[k]["offered"]
        report["tcp"] = t
    return report


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"fidelity: {rep['summary']} [emulator: {rep['emulator']}]",
             f"{'direction':<9} {'rate cfg':>9} {'rate meas':>9} {'err':>6}  "
             f"{'delay exp':>9} {'delay meas':>10} {'p99':>7}  {'jit cfg':>7} {'jit meas':>8}  "
             f"{'loss cfg':>8} {'loss meas':>9} {'±ci':>6} {'n':>6}"]
    for k in ("uplink", "downlink"):
        r = rep[k]
        lines.append(
            f"{k:<9} {r['rate_cfg_mbit']:>9.3f} {r['rate_meas_mbit']:>9.3f} {r['rate_err']*100:>5.1f}%  "
            f"{r['delay_expected_ms']:>8.2f}m {r['delay_meas_ms']:>9.2f}m {r['delay_p99_ms']:>6.1f}m  "
            f"{r['jitter_cfg_ms']:>6.2f}m {r['jitter_meas_ms']:>7.2f}m  "
            f"{r['loss_cfg']*100:>7.2f}% {r['loss_meas']*100:>8.2f}% {r['loss_ci']*100:>5.2f}% "
            f"{r['loss_n']:>6}")
    if "tun_drops" in rep:
        up, down = rep["uplink"], rep["downlink"]
        lines.append(f"loss      of which the loss model: {up['loss_link'] * 100:.2f}% up, "
                     f"{down['loss_link'] * 100:.2f}% down; tail drops of the emulated queue: "
                     f"{up['queue_drops']} up, {down['queue_drops']} down (a stalled emulator "
                     "reads a backlog at one instant)")
        lines.append(f"outside   lost before the link model: {up['outside_drops']} up, "
                     f"{down['outside_drops']} down (TUN ring drops: {rep['tun_drops']})")
    if "emulator_cpu" in rep:
        c = rep["emulator_cpu"]
        lines.append(f"emulator  {c['us_per_packet']:.1f} us CPU per packet ({c['packets']} packets "
                     f"in the rate phase, {c['cpu_fraction'] * 100:.0f}% of a core)")
    if "tcp" in rep:
        t = rep["tcp"]
        extra = ""
        if "uplink_lost" in t:
            extra = (f"; the emulator dropped {t['uplink_lost']} (loss) + {t['uplink_queue_drops']}"
                     f" (queue) of {t['uplink_packets']} TCP packets up, {t['downlink_lost']} of "
                     f"{t['downlink_packets']} ACKs down")
        lines.append(f"tcp       goodput {t['goodput_mbit']:.3f} Mbit/s of {t['rate_cfg_mbit']:g}"
                     f"{extra}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netem.fidelity", description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="3g")
    ap.add_argument("--emulator", default="auto", choices=("auto", "tc", "userspace"))
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--no-tcp", action="store_true")
    ap.add_argument("--json", help="write the report here")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    with Topology(get_profile(a.profile), a.emulator, backend=False, log=print) as topo:
        rep = measure(topo, a.duration, tcp=not a.no_tcp)
    print(format_report(rep))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rep, f, indent=2)
    print(f"fidelity {a.profile}: emulator={rep['emulator']} "
          f"rate_err_up={rep['uplink']['rate_err']*100:.1f}% "
          f"delay_up={rep['uplink']['delay_meas_ms']:.1f}ms/{rep['uplink']['delay_expected_ms']:.1f}ms "
          f"loss_up={rep['uplink']['loss_meas']*100:.2f}%/{rep['uplink']['loss_cfg']*100:.2f}% "
          f"({time.monotonic() - t0:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
