"""Link profiles: what one emulated link does to packets, per direction.

Conventions (the same for both emulators):

* ``delay_ms`` is the **one-way** propagation delay added in that direction. A profile with
  ``delay_ms=50`` in both directions adds 100 ms to the round-trip time, on top of the
  serialisation time of each packet at ``rate_mbit``.
* ``jitter_ms`` is the standard deviation of a normal variation of that delay (clipped so the
  delay never goes negative). Packets are not reordered by jitter (a FIFO link), as on a real
  serial link; netem's ``rate`` option keeps order in the same way.
* ``loss`` is applied to each packet as it enters the link (Bernoulli or Gilbert-Elliott).
* ``queue_packets`` bounds the bottleneck buffer: packets waiting to be serialised (not those
  already on the wire, i.e. in the delay line). A packet arriving to a full buffer is tail-dropped.
* "uplink" is client -> gateway (requests, uploads); "downlink" is gateway -> client (responses).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class LossSpec:
    """A loss model's parameters.

    ``kind="none"``; ``kind="bernoulli"`` with ``p`` (probability per packet); or
    ``kind="gilbert"`` (Gilbert-Elliott, as netem's ``loss gemodel p r 1-h 1-k``): ``p`` is the
    good->bad transition probability per packet, ``r`` bad->good, ``loss_bad`` the loss
    probability in the bad state (1-h) and ``loss_good`` in the good state (1-k).
    """

    kind: str = "none"
    p: float = 0.0
    r: float = 1.0
    loss_bad: float = 1.0
    loss_good: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("none", "bernoulli", "gilbert"):
            raise ValueError(f"loss kind must be none, bernoulli or gilbert, not {self.kind!r}")
        for name in ("p", "r", "loss_bad", "loss_good"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"loss {name} must be in [0, 1], got {v}")
        if self.kind == "gilbert" and self.p > 0 and self.r <= 0:
            raise ValueError("gilbert loss needs r > 0 (or the link stays in the bad state)")

    @classmethod
    def bernoulli(cls, p: float) -> LossSpec:
        return cls("bernoulli", p=p) if p > 0 else cls()

    @classmethod
    def gilbert_bursts(cls, mean_loss: float, mean_burst: float) -> LossSpec:
        """Gilbert-Elliott bursts: every packet in the bad state is lost; the bad state lasts
        ``mean_burst`` packets on average and the long-run loss rate is ``mean_loss``."""
        if not 0 < mean_loss < 1 or mean_burst < 1:
            raise ValueError("need 0 < mean_loss < 1 and mean_burst >= 1")
        r = 1.0 / mean_burst
        p = mean_loss * r / (1.0 - mean_loss)
        return cls("gilbert", p=p, r=r, loss_bad=1.0, loss_good=0.0)

    @property
    def mean_loss(self) -> float:
        """Long-run fraction of packets lost."""
        if self.kind == "bernoulli":
            return self.p
        if self.kind == "gilbert":
            if self.p == 0:
                return self.loss_good
            pi_bad = self.p / (self.p + self.r)
            return pi_bad * self.loss_bad + (1 - pi_bad) * self.loss_good
        return 0.0

    def describe(self) -> str:
        if self.kind == "bernoulli":
            return f"{self.p * 100:g}%"
        if self.kind == "gilbert":
            return f"GE {self.mean_loss * 100:.2g}% (burst {1 / self.r:.3g})"
        return "0"


@dataclass(frozen=True, slots=True)
class DirectionProfile:
    """One direction of a link."""

    rate_mbit: float
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: LossSpec = field(default_factory=LossSpec)
    queue_packets: int = 100

    def __post_init__(self) -> None:
        if not self.rate_mbit > 0 or not math.isfinite(self.rate_mbit):
            raise ValueError(f"rate_mbit must be a positive number, got {self.rate_mbit}")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError("delay_ms and jitter_ms must be >= 0")
        if self.queue_packets < 1:
            raise ValueError(f"queue_packets must be >= 1, got {self.queue_packets}")

    @property
    def rate_bps(self) -> float:
        return self.rate_mbit * 1e6

    @property
    def bytes_per_s(self) -> float:
        return self.rate_mbit * 1e6 / 8.0


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """A named link between the client and the gateway host."""

    name: str
    uplink: DirectionProfile  # client -> gateway
    downlink: DirectionProfile  # gateway -> client
    description: str = ""

    def with_queue(self, packets: int) -> LinkProfile:
        return replace(self, uplink=replace(self.uplink, queue_packets=packets),
                       downlink=replace(self.downlink, queue_packets=packets))

    def with_loss(self, loss: LossSpec) -> LinkProfile:
        return replace(self, uplink=replace(self.uplink, loss=loss),
                       downlink=replace(self.downlink, loss=loss))

    @property
    def base_rtt_ms(self) -> float:
        return self.uplink.delay_ms + self.downlink.delay_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinkProfile:
        def direction(x: dict[str, Any]) -> DirectionProfile:
            x = dict(x)
            x["loss"] = LossSpec(**x.get("loss", {}))
            return DirectionProfile(**x)

        return cls(name=d["name"], uplink=direction(d["uplink"]),
                   downlink=direction(d["downlink"]), description=d.get("description", ""))

    def summary(self) -> str:
        def one(x: DirectionProfile) -> str:
            j = f"±{x.jitter_ms:g}" if x.jitter_ms else ""
            return (f"{x.rate_mbit:g} Mbit/s, {x.delay_ms:g}{j} ms one-way, loss "
                    f"{x.loss.describe()}, queue {x.queue_packets} pkts")

        if self.uplink == self.downlink:
            return f"{self.name}: each direction {one(self.uplink)}"
        return f"{self.name}: up {one(self.uplink)}; down {one(self.downlink)}"


def _sym(name: str, d: DirectionProfile, description: str) -> LinkProfile:
    return LinkProfile(name, d, d, description)


# 3g: the source poster's "simulated 3G network - 5 Mbps, 50 ms additional latency, 0.5% packet
# drop". We apply it to both directions (+50 ms one-way each way, so +100 ms RTT), which is the
# harder reading. Queue: 50 packets (~120 ms at 5 Mbit/s, about one bandwidth-delay product);
# netem's default of 1000 packets would be a 2.4 s deep FIFO (see the README's netem section).
THREE_G = _sym("3g", DirectionProfile(5.0, 50.0, 0.0, LossSpec.bernoulli(0.005), 50),
               "the poster's 3G: 5 Mbit/s, +50 ms one-way, 0.5% Bernoulli loss")

# lte: representative LTE numbers (asymmetric: 10 Mbit/s up, 30 Mbit/s down, 25 ms one-way with
# 4 ms jitter, 0.1% loss).
LTE = LinkProfile(
    "lte",
    DirectionProfile(10.0, 25.0, 4.0, LossSpec.bernoulli(0.001), 100),
    DirectionProfile(30.0, 25.0, 4.0, LossSpec.bernoulli(0.001), 200),
    "LTE: 10/30 Mbit/s up/down, 25±4 ms one-way, 0.1% loss",
)

# lossy: the QUIC interop runner's transferloss scenario (ns-3 "drop-rate --delay=15ms
# --bandwidth=10Mbps --queue=25 --rate_to_server=2 --rate_to_client=2 --burst_to_server=3
# --burst_to_client=3"): 2% loss each way in bursts of 1-3 packets (mean 2), modelled as a
# Gilbert-Elliott chain with the same mean loss and mean burst length.
LOSSY = _sym("lossy", DirectionProfile(10.0, 15.0, 0.0, LossSpec.gilbert_bursts(0.02, 2.0), 25),
             "interop-runner transferloss: 10 Mbit/s, 15 ms one-way, 2% loss in bursts, queue 25")

# longrtt: the QUIC interop runner's longrtt scenario (ns-3 "simple-p2p --delay=750ms
# --bandwidth=10Mbps --queue=25"): 1.5 s RTT.
LONGRTT = _sym("longrtt", DirectionProfile(10.0, 750.0, 0.0, LossSpec(), 25),
               "interop-runner longrtt: 10 Mbit/s, 750 ms one-way (1.5 s RTT), queue 25")

# A clean link, for tests and as a reference.
CLEAN = _sym("clean", DirectionProfile(50.0, 5.0, 0.0, LossSpec(), 200),
             "50 Mbit/s, 5 ms one-way, no loss")

PROFILES: dict[str, LinkProfile] = {p.name: p for p in (THREE_G, LTE, LOSSY, LONGRTT, CLEAN)}


def get_profile(name: str) -> LinkProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown link profile {name!r} (known: {', '.join(PROFILES)})") from None
