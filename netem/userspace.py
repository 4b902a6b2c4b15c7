"""The userspace link emulator: forwards real IP packets between two TUN devices.

``python -m netem.userspace --profile-json JSON [--seed N]`` creates two TUN devices in the
namespace it runs in (``qgw-tun0``: client side, ``qgw-tun1``: gateway side) and prints
``ready`` on stdout. The caller moves them into the client and gateway namespaces and gives
them addresses (``netem.topology`` does); from then on every IP packet the client's kernel
routes to the gateway (UDP/QUIC, TCP, anything) is read here, passed through the uplink's
:class:`~netem.link.LinkDirection` (loss, bottleneck queue with tail drop, serialisation at the
link rate, one-way delay and jitter) and written into the gateway's TUN at its release time;
the reverse direction likewise. TCP therefore sees the same losses and queueing as QUIC.

The loop is a single-threaded ``select`` loop with a heap of release times, so the cost per
packet is two syscalls and O(log n) (enough for 50 Mbit/s in CPython). The TUN devices are not
persistent: when this process dies they vanish with it.

Control: one JSON object per line on stdin, one reply per line on stdout:
``{"op": "stats"}``, ``{"op": "reset", "seed": N, "profile": {...}}`` (new link state and
counters, queued packets dropped), ``{"op": "quit"}``. End of stdin also ends the process.
"""

from __future__ import annotations

import argparse
import fcntl
import heapq
import json
import os
import select
import signal
import struct
import sys
import time

from netem.link import LinkDirection
from netem.names import TUN_CLIENT, TUN_GATEWAY
from netem.profiles import LinkProfile

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_READS_PER_WAKEUP = 64
MTU = 1500
NICENESS = -10  # see _raise_priority


def _raise_priority() -> int:
    """Run ahead of the traffic we carry, where allowed. netem works in softirq context, which
    preempts every process; this loop competes with the client, gateway and probes for the same
    cores, and a late wake-up stamps a burst of packets with one arrival time, which can overflow
    the emulated queue. Returns the niceness in effect (unchanged without CAP_SYS_NICE)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, NICENESS)
    except OSError:
        pass
    return os.getpriority(os.PRIO_PROCESS, 0)


def open_tun(name: str) -> int:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    except OSError as e:
        raise SystemExit(f"netem.userspace: cannot open /dev/net/tun: {e}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as e:
        os.close(fd)
        raise SystemExit(f"netem.userspace: cannot create TUN device {name}: {e}") from None
    return fd


class Forwarder:
    """The I/O shell around two :class:`LinkDirection` models."""

    def __init__(self, profile: LinkProfile, seed: int, client_fd: int, gateway_fd: int) -> None:
        self.client_fd = client_fd
        self.gateway_fd = gateway_fd
        self.heap: list[tuple[float, int, int, bytes]] = []  # (release, seq, out fd, packet)
        self.seq = 0
        self.write_errors = 0
        self.reset(profile, seed)

    def reset(self, profile: LinkProfile, seed: int) -> None:
        self.profile = profile
        self.seed = seed
        self.up = LinkDirection(profile.uplink, seed=seed * 2)
        self.down = LinkDirection(profile.downlink, seed=seed * 2 + 1)
        self.heap.clear()
        self.write_errors = 0
        self.started = time.monotonic()
        self.cpu_started = time.process_time()

    def stats(self) -> dict:
        return {"profile": self.profile.name, "seed": self.seed,
                "elapsed_s": time.monotonic() - self.started,
                "cpu_s": time.process_time() - self.cpu_started,
                "uplink": self.up.stats.as_dict(), "downlink": self.down.stats.as_dict(),
                "in_flight": len(self.heap), "write_errors": self.write_errors}

    def _read(self, fd: int, link: LinkDirection, out_fd: int) -> None:
        heap = self.heap
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                pkt = os.read(fd, 65535)
            except BlockingIOError:
                return
            except OSError:
                return
            release = link.offer(time.monotonic(), len(pkt))
            if release is not None:
                self.seq += 1
                heapq.heappush(heap, (release, self.seq, out_fd, pkt))

    def _release_due(self) -> float | None:
        heap = self.heap
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, fd, pkt = heapq.heappop(heap)
            try:
                os.write(fd, pkt)
            except OSError:
                self.write_errors += 1
        return heap[0][0] - now if heap else None

    def _control(self, line: str) -> bool:
        try:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "stats":
                reply = self.stats()
            elif op == "reset":
                self.reset(LinkProfile.from_dict(msg["profile"]) if "profile" in msg
                           else self.profile, int(msg.get("seed", self.seed)))
                reply = {"ok": True}
            elif op == "quit":
                return False
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as e:  # a bad control line must not kill the link
            reply = {"error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        return True

    def serve(self, control_fd: int | None) -> None:
        fds = [self.client_fd, self.gateway_fd]
        if control_fd is not None:
            fds.append(control_fd)
        buf = b""
        timeout: float | None = None
        while True:
            try:
                readable, _, _ = select.select(fds, [], [], timeout)
            except InterruptedError:
                readable = []
            for fd in readable:
                if fd == self.client_fd:
                    self._read(fd, self.up, self.gateway_fd)
                elif fd == self.gateway_fd:
                    self._read(fd, self.down, self.client_fd)
                else:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        return
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        if line.strip() and not self._control(line.decode()):
                            return
            timeout = self._release_due()
            if timeout is not None and timeout < 0:
                timeout = 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netem.userspace", description=__doc__.split("\n")[0])
    ap.add_argument("--profile-json", required=True, help="a LinkProfile as JSON")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-control", action="store_true", help="ignore stdin")
    args = ap.parse_args(argv)
    profile = LinkProfile.from_dict(json.loads(args.profile_json))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    client_fd = open_tun(TUN_CLIENT)
    gateway_fd = open_tun(TUN_GATEWAY)
    fwd = Forwarder(profile, args.seed, client_fd, gateway_fd)
    niceness = _raise_priority()
    sys.stdout.write(json.dumps({"ready": True, "pid": os.getpid(), "niceness": niceness,
                                 "devices": [TUN_CLIENT, TUN_GATEWAY]}) + "\n")
    sys.stdout.flush()
    try:
        fwd.serve(None if args.no_control else sys.stdin.fileno())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
