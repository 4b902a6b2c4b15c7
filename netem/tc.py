"""The tc-netem emulator: the exact ``tc qdisc ... netem`` commands, and detection.

Each direction of the client <-> gateway veth pair gets a netem qdisc at the root of the
sending end's egress (client end: uplink; gateway end: downlink). netem's ``limit`` counts every
packet it holds, including those only waiting out their delay, so to give the same bottleneck
buffer as the userspace emulator (``queue_packets`` waiting for the transmitter), the limit is
``queue_packets`` plus the packets the delay line holds at full rate.
"""

from __future__ import annotations

import math
import os

from netem.ipcmd import NetemError, Runner
from netem.names import PREFIX
from netem.profiles import DirectionProfile, LossSpec

MTU = 1500


def _num(x: float) -> str:
    """A number as tc likes it: no exponent, no trailing zeros."""
    s = f"{x:.6f}".rstrip("0").rstrip(".")
    return s or "0"


def netem_limit(d: DirectionProfile) -> int:
    in_delay_line = d.bytes_per_s * (d.delay_ms + 2 * d.jitter_ms) / 1000.0 / MTU
    return d.queue_packets + math.ceil(in_delay_line)


def loss_args(loss: LossSpec) -> list[str]:
    if loss.kind == "bernoulli":
        return ["loss", "random", f"{_num(loss.p * 100)}%"]
    if loss.kind == "gilbert":
        # netem: loss gemodel PERCENT [R [1-H [1-K]]]: p, r, loss in bad, loss in good.
        return ["loss", "gemodel", f"{_num(loss.p * 100)}%", f"{_num(loss.r * 100)}%",
                f"{_num(loss.loss_bad * 100)}%", f"{_num(loss.loss_good * 100)}%"]
    return []


def netem_args(d: DirectionProfile) -> list[str]:
    """The netem options of one direction (after ``netem``)."""
    args = ["limit", str(netem_limit(d)), "delay", f"{_num(d.delay_ms)}ms"]
    if d.jitter_ms:
        args += [f"{_num(d.jitter_ms)}ms", "distribution", "normal"]
    args += loss_args(d.loss)
    args += ["rate", f"{_num(d.rate_mbit * 1000)}kbit"]
    return args


def qdisc_command(ns: str, dev: str, d: DirectionProfile) -> list[str]:
    return ["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "netem",
            *netem_args(d)]


def netem_available(runner: Runner | None = None) -> tuple[bool, str]:
    """Whether this kernel has sch_netem: try it on the loopback of a throwaway namespace of
    our own (no effect on the host). Returns (available, reason)."""
    runner = runner or Runner()
    ns = f"{PREFIX}{os.getpid():x}-0-probe"
    try:
        runner.run(["ip", "netns", "add", ns])
    except NetemError as e:
        return False, f"cannot create a network namespace: {e}"
    try:
        cp = runner.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root",
                         "netem", "delay", "1ms"], check=False)
        if cp.returncode == 0:
            return True, "sch_netem is available"
        return False, f"sch_netem unavailable: {(cp.stderr or cp.stdout).strip()}"
    finally:
        runner.run(["ip", "netns", "delete", ns], check=False)
