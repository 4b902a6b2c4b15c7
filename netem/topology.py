"""Topologies: client, gateway and backend hosts in their own network namespaces.

::

    [client ns] 10.201.0.1 ==emulated link== 10.201.0.2 [gateway ns] 10.202.0.1 --veth-- 10.202.0.2 [backend ns]

The client <-> gateway link is where the impairments are:

* ``tc``: a veth pair with a netem qdisc on each end's egress (needs ``sch_netem``);
* ``userspace``: two TUN devices (``qgw-tun0`` in the client namespace, ``qgw-tun1`` in the
  gateway namespace) joined by our emulator process (``netem.userspace``), which runs in a
  fourth namespace of its own (``...-emu``) so that every process we start lives in a
  namespace we own.

``with Topology(profile) as topo:`` creates everything and always removes it: on normal exit,
on exceptions, on Ctrl-C (KeyboardInterrupt), on SIGTERM/SIGHUP (turned into SystemExit while a
topology is up) and at interpreter exit (atexit). Every process started through
:meth:`Topology.spawn` gets PR_SET_PDEATHSIG=SIGKILL, so even a SIGKILLed experiment leaves no
process running; its namespaces are removed by the next run (stale ones, by owner pid) or by
``python -m netem cleanup``.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from netem import names
from netem.cleanup import cleanup, namespace_pids, remove_namespace
from netem.ipcmd import NetemError, Runner, die_with_parent, require_tool
from netem.profiles import LinkProfile
from netem.tc import netem_available, qdisc_command
from quicgw.runtime import stop_process

EMULATORS = ("auto", "tc", "userspace")
TUN_TXQUEUELEN = 10000

_LIVE: weakref.WeakSet[Topology] = weakref.WeakSet()
_handlers_installed = False


def _teardown_all() -> None:
    for topo in list(_LIVE):
        try:
            topo.down()
        except Exception:
            pass


def _on_signal(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(_teardown_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)


def tun_available() -> tuple[bool, str]:
    if not os.path.exists("/dev/net/tun"):
        return False, "/dev/net/tun does not exist"
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return False, f"cannot open /dev/net/tun: {e}"
    return True, "/dev/net/tun is usable"


def choose_emulator(requested: str, runner: Runner | None = None) -> tuple[str, str]:
    """Resolve ``auto``: tc-netem where the kernel has it, else the userspace emulator.
    Returns (emulator, reason)."""
    if requested not in EMULATORS:
        raise ValueError(f"emulator must be one of {', '.join(EMULATORS)}, not {requested!r}")
    if requested == "userspace":
        return "userspace", "requested"
    ok, why = netem_available(runner)
    if requested == "tc":
        if not ok:
            raise NetemError(f"--emulator tc: {why}")
        return "tc", "requested"
    if ok:
        return "tc", why
    tun_ok, tun_why = tun_available()
    if not tun_ok:
        raise NetemError(f"no emulator available: {why}; {tun_why}")
    return "userspace", f"{why}; using the userspace emulator"


class Topology:
    """Namespaces, links and processes of one emulated network. See the module docstring."""

    def __init__(self, profile: LinkProfile, emulator: str = "auto", seed: int = 0, *,
                 backend: bool = True, log: Callable[[str], None] | None = None,
                 verbose: bool = False, runner: Runner | None = None) -> None:
        self.profile = profile
        self.requested_emulator = emulator
        self.emulator: str | None = None
        self.emulator_reason = ""
        self.seed = seed
        self.with_backend = backend
        self.log = log or (lambda s: None)
        self.runner = runner or Runner(self.log if verbose else None)
        self.run_id = names.new_run_id()
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self._emu: subprocess.Popen | None = None
        self._emu_lock = threading.Lock()
        self._up = False

    # -- names and addresses ---------------------------------------------------------------

    def ns(self, role: str) -> str:
        return names.namespace(self.run_id, role)

    client_ip = names.CLIENT_IP
    gateway_ip = names.GATEWAY_IP
    gateway_backend_ip = names.GATEWAY_BACKEND_IP
    backend_ip = names.BACKEND_IP

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> Topology:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        if self._up:
            return
        require_tool("ip")
        _install_handlers()
        _LIVE.add(self)
        self._up = True
        try:
            removed = cleanup(all_runs=False, runner=Runner())
            if removed["namespaces"] or removed["links"]:
                self.log(f"netem: removed leftovers of earlier runs: {removed}")
            self.emulator, self.emulator_reason = choose_emulator(self.requested_emulator)
            self.log(f"netem: emulator {self.emulator} ({self.emulator_reason})")
            roles = ["client", "gateway"] + (["backend"] if self.with_backend else [])
            if self.emulator == "userspace":
                roles.append("emu")
            for role in roles:
                self._add_namespace(self.ns(role))
            if self.emulator == "tc":
                self._link_tc()
            else:
                self._link_userspace()
            if self.with_backend:
                self._link_backend()
        except BaseException:
            self.down()
            raise

    def _add_namespace(self, ns: str) -> None:
        r = self.runner
        r.run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        r.run(["ip", "-n", ns, "link", "set", "dev", "lo", "up"])
        if shutil.which("sysctl") or os.path.exists("/usr/sbin/sysctl"):
            # No IPv6 chatter (router solicitations, DAD) on the emulated link.
            r.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                   "net.ipv6.conf.default.disable_ipv6=1"], check=False)

    def _veth(self, a_ns: str, a_dev: str, a_ip: str, b_ns: str, b_dev: str, b_ip: str) -> None:
        r = self.runner
        r.run(["ip", "-n", a_ns, "link", "add", a_dev, "type", "veth", "peer", "name", b_dev,
               "netns", b_ns])
        for ns, dev, ip in ((a_ns, a_dev, a_ip), (b_ns, b_dev, b_ip)):
            r.run(["ip", "-n", ns, "addr", "add", f"{ip}/30", "dev", dev])
            r.run(["ip", "-n", ns, "link", "set", "dev", dev, "up"])

    def _link_backend(self) -> None:
        self._veth(self.ns("gateway"), names.VETH_GW_BACKEND, self.gateway_backend_ip,
                   self.ns("backend"), names.VETH_BACKEND, self.backend_ip)

    def _link_tc(self) -> None:
        c, g = self.ns("client"), self.ns("gateway")
        self._veth(c, names.VETH_CLIENT, self.client_ip, g, names.VETH_GATEWAY, self.gateway_ip)
        if shutil.which("ethtool"):
            # netem must see wire-sized packets, not 64 KB GSO/TSO super-packets.
            for ns, dev in ((c, names.VETH_CLIENT), (g, names.VETH_GATEWAY)):
                self.runner.run(["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tso", "off",
                                 "gso", "off", "gro", "off"], check=False)
        self.apply_tc(self.profile)

    def tc_commands(self, profile: LinkProfile) -> list[list[str]]:
        return [qdisc_command(self.ns("client"), names.VETH_CLIENT, profile.uplink),
                qdisc_command(self.ns("gateway"), names.VETH_GATEWAY, profile.downlink)]

    def apply_tc(self, profile: LinkProfile) -> None:
        for cmd in self.tc_commands(profile):
            self.runner.run(cmd)

    def _link_userspace(self) -> None:
        import sys

        emu_ns, c, g = self.ns("emu"), self.ns("client"), self.ns("gateway")
        argv = [sys.executable, "-m", "netem.userspace", "--profile-json",
                json.dumps(self.profile.to_dict()), "--seed", str(self.seed)]
        self._emu = self.spawn("emu", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, bufsize=1)
        ready = self._emu_readline(timeout=15.0)
        if not ready or not json.loads(ready).get("ready"):
            raise NetemError(f"userspace emulator did not start (said {ready!r}); "
                             f"exit code {self._emu.poll()}")
        r = self.runner
        for ns, dev, ip, peer in ((c, names.TUN_CLIENT, self.client_ip, self.gateway_ip),
                                  (g, names.TUN_GATEWAY, self.gateway_ip, self.client_ip)):
            r.run(["ip", "-n", emu_ns, "link", "set", "dev", dev, "netns", ns])
            r.run(["ip", "-n", ns, "addr", "add", ip, "peer", peer, "dev", dev])
            # A deep device ring: if the emulator is descheduled for a moment, packets wait
            # for it instead of being dropped outside the link model.
            r.run(["ip", "-n", ns, "link", "set", "dev", dev, "mtu", "1500", "txqueuelen",
                   str(TUN_TXQUEUELEN), "up"])

    def _emu_readline(self, timeout: float) -> str | None:
        assert self._emu is not None and self._emu.stdout is not None
        fd = self._emu.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            return None
        return self._emu.stdout.readline().strip() or None

    def _emu_call(self, msg: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        with self._emu_lock:
            if self._emu is None or self._emu.poll() is not None:
                raise NetemError("userspace emulator is not running")
            assert self._emu.stdin is not None
            self._emu.stdin.write(json.dumps(msg) + "\n")
            self._emu.stdin.flush()
            line = self._emu_readline(timeout)
            if line is None:
                raise NetemError(f"userspace emulator did not answer {msg.get('op')!r}")
            reply = json.loads(line)
            if "error" in reply:
                raise NetemError(f"userspace emulator: {reply['error']}")
            return reply

    def set_link(self, profile: LinkProfile | None = None, seed: int | None = None) -> None:
        """Apply a (new) profile and seed; the userspace emulator also starts from an empty
        link with zeroed counters (tc: counters are not reset, and netem takes no seed here)."""
        profile = profile or self.profile
        self.profile = profile
        if seed is not None:
            self.seed = seed
        if self.emulator == "tc":
            self.apply_tc(profile)
        else:
            self._emu_call({"op": "reset", "seed": self.seed, "profile": profile.to_dict()})

    def tun_drops(self) -> dict[str, int]:
        """Packets the kernel dropped at our TUN devices (outside the link model), per side."""
        out = {}
        for role, dev in (("client", names.TUN_CLIENT), ("gateway", names.TUN_GATEWAY)):
            cp = self.runner.run(["ip", "-n", self.ns(role), "-s", "-j", "link", "show", "dev",
                                  dev], check=False)
            try:
                out[role] = int(json.loads(cp.stdout)[0]["stats64"]["tx"]["dropped"])
            except (ValueError, KeyError, IndexError):
                out[role] = -1
        return out

    def link_stats(self) -> dict[str, Any]:
        if self.emulator == "userspace":
            return self._emu_call({"op": "stats"})
        out = {}
        for role, dev in (("uplink", names.VETH_CLIENT), ("downlink", names.VETH_GATEWAY)):
            ns = self.ns("client" if role == "uplink" else "gateway")
            cp = self.runner.run(["ip", "netns", "exec", ns, "tc", "-s", "-j", "qdisc", "show",
                                  "dev", dev], check=False)
            try:
                out[role] = json.loads(cp.stdout or "[]")
            except json.JSONDecodeError:
                out[role] = cp.stdout
        return out

    # -- processes -------------------------------------------------------------------------

    def spawn(self, role: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen:
        """Start ``argv`` inside the ``role`` namespace. It is stopped by :meth:`down` and
        killed by the kernel if this process dies."""
        if not self._up:
            raise NetemError("topology is not up")
        popen.setdefault("start_new_session", True)  # Ctrl-C reaches us, and we stop them
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(role), *argv],
                                preexec_fn=die_with_parent, **popen)
        self.procs.append(proc)
        return proc

    def run_in(self, role: str, argv: Sequence[str], timeout: float = 60.0,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` to completion inside the ``role`` namespace."""
        proc = self.spawn(role, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            raise NetemError(f"timed out after {timeout}s in {role}: {' '.join(argv)}") from None
        finally:
            if proc in self.procs:
                self.procs.remove(proc)
        cp = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check and proc.returncode != 0:
            raise NetemError(f"failed ({proc.returncode}) in {role}: {' '.join(argv)}\n"
                             f"{err.strip()[-3000:]}")
        return cp

    @staticmethod
    def stop(proc: subprocess.Popen, grace: float = 3.0) -> None:
        stop_process(proc, grace, kill_timeout_s=5)

    def down(self) -> None:
        """Stop every process and remove every namespace (and so every link) of this run.
        Idempotent; safe to call from signal handlers' SystemExit and atexit."""
        if not self._up:
            return
        self._up = False
        errors = []
        if self._emu is not None and self._emu.poll() is None and self._emu.stdin:
            try:
                self._emu.stdin.write('{"op": "quit"}\n')
                self._emu.stdin.flush()
            except (OSError, ValueError):
                pass
        for proc in reversed(self.procs):
            try:
                self.stop(proc)
            except Exception as e:  # keep going: the namespaces must go
                errors.append(e)
        self.procs.clear()
        self._emu = None
        runner = Runner()
        for ns in reversed(self.namespaces):
            remove_namespace(runner, ns)
        left = [ns for ns in self.namespaces if os.path.exists(f"/run/netns/{ns}")]
        self.namespaces.clear()
        _LIVE.discard(self)
        if left:
            raise NetemError(f"could not remove namespaces {left}")
        if errors:
            raise NetemError(f"errors while stopping processes: {errors}")

    def leftovers(self) -> dict[str, list]:
        """What of this run still exists (for tests): namespaces and processes."""
        runner = Runner()
        out: dict[str, list] = {"namespaces": [], "pids": []}
        for role in names.ROLES:
            ns = self.ns(role)
            if os.path.exists(f"/run/netns/{ns}"):
                out["namespaces"].append(ns)
                out["pids"] += namespace_pids(runner, ns)
        return out

