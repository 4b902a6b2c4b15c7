"""netem's sans-IO cores: profiles, loss models, the link model, the fluid bound, tc commands."""

import itertools
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netem.bound import FluidLink, FluidRequest, class_bound, feasible, max_on_time, preemptive_edf
from netem.link import LinkDirection
from netem.loss import LossModel
from netem.profiles import PROFILES, DirectionProfile, LinkProfile, LossSpec, get_profile
from netem.tc import netem_args, netem_limit, qdisc_command

# -- profiles -------------------------------------------------------------------------------


def test_profiles_exist_and_roundtrip():
    for name in ("3g", "lte", "lossy", "longrtt"):
        p = get_profile(name)
        assert LinkProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    g3 = PROFILES["3g"]
    assert g3.uplink.rate_mbit == 5 and g3.uplink.delay_ms == 50 and g3.uplink.loss.p == 0.005
    assert g3.base_rtt_ms == 100  # one-way delay per direction: +100 ms RTT
    lossy = PROFILES["lossy"]
    assert lossy.uplink.loss.kind == "gilbert"
    assert lossy.uplink.loss.mean_loss == pytest.approx(0.02)
    with pytest.raises(KeyError, match="known: 3g"):
        get_profile("5g")


def test_bad_profiles_are_clear_errors():
    with pytest.raises(ValueError, match="rate_mbit"):
        DirectionProfile(0)
    with pytest.raises(ValueError, match="queue_packets"):
        DirectionProfile(1, queue_packets=0)
    with pytest.raises(ValueError, match="loss p"):
        LossSpec("bernoulli", p=1.5)
    with pytest.raises(ValueError, match="loss kind"):
        LossSpec("uniform")


# -- loss models ----------------------------------------------------------------------------


def test_bernoulli_rate_and_determinism():
    a = LossModel(LossSpec.bernoulli(0.05), seed=7)
    b = LossModel(LossSpec.bernoulli(0.05), seed=7)
    xs = [a.lose() for _ in range(40000)]
    assert xs == [b.lose() for _ in range(40000)]
    assert sum(xs) / len(xs) == pytest.approx(0.05, abs=0.005)


def test_gilbert_elliott_mean_and_bursts():
    spec = LossSpec.gilbert_bursts(0.02, 2.0)
    m = LossModel(spec, seed=3)
    xs = [m.lose() for _ in range(200000)]
    assert sum(xs) / len(xs) == pytest.approx(0.02, rel=0.1)
    bursts = [len(list(g)) for k, g in itertools.groupby(xs) if k]
    assert sum(bursts) / len(bursts) == pytest.approx(2.0, rel=0.1)
    # Bernoulli at the same rate has mean burst ~1.02: GE losses really come in bursts.
    mb = LossModel(LossSpec.bernoulli(0.02), seed=3)
    ys = [mb.lose() for _ in range(200000)]
    b_bursts = [len(list(g)) for k, g in itertools.groupby(ys) if k]
    assert sum(b_bursts) / len(b_bursts) < 1.1


# -- link model -----------------------------------------------------------------------------


def test_link_serialises_delays_and_tail_drops():
    # 1 Mbit/s = 125000 B/s: a 1250-byte packet takes 10 ms. Queue of 5.
    link = LinkDirection(DirectionProfile(1.0, delay_ms=50, queue_packets=5), seed=0)
    rel = [link.offer(0.0, 1250) for _ in range(8)]
    assert rel[:5] == pytest.approx([0.06, 0.07, 0.08, 0.09, 0.10])
    assert rel[5:] == [None, None, None]  # buffer full: tail drop
    assert link.stats.queue_drops == 3 and link.stats.delivered == 5
    # 25 ms later two packets have left the buffer: room for two more.
    assert link.offer(0.025, 1250) == pytest.approx(0.11)
    assert link.offer(0.025, 1250) == pytest.approx(0.12)
    assert link.offer(0.025, 1250) is None
    # An idle link sends at once.
    assert link.offer(1.0, 125) == pytest.approx(1.0 + 0.001 + 0.05)


def test_link_rate_over_time_and_loss_before_queue():
    prof = DirectionProfile(5.0, delay_ms=50, loss=LossSpec.bernoulli(0.1), queue_packets=1000)
    link = LinkDirection(prof, seed=1)
    out = [link.offer(i * 0.0001, 1200) for i in range(5000)]  # 48 Mbit/s offered
    delivered = [r for r in out if r is not None]
    span = delivered[-1] - delivered[0]
    assert (len(delivered) - 1) * 1200 / span == pytest.approx(prof.bytes_per_s, rel=1e-6)
    assert link.stats.lost == pytest.approx(500, abs=80)
    assert link.stats.queue_drops > 0


def test_jitter_never_reorders():
    link = LinkDirection(DirectionProfile(10.0, delay_ms=20, jitter_ms=10, queue_packets=10000),
                         seed=5)
    t = 0.0
    rels = []
    for _ in range(3000):
        t += random.Random(1).expovariate(2000)
        rels.append(link.offer(t, 200))
    assert rels == sorted(rels)


# -- the bound ------------------------------------------------------------------------------


def test_preemptive_edf_single_link():
    # B (deadline 1) arrives while A (deadline 5) is being sent and pre-empts it.
    fin = preemptive_edf([(0.0, 5.0, 100.0), (0.5, 1.0, 20.0)], rate=100.0)
    assert fin == pytest.approx([1.2, 0.7])


def test_bound_burst_closed_form():
    # 3g-like: 625000 B/s each way, 50 ms one-way; n requests of 8000 B up and 8000 B down,
    # all at t=0 with a 1 s deadline. Request i's response arrives at
    # (i+1)*s + d + s + d where s = 8000/625000 = 12.8 ms: i+1 <= (1 - 0.1 - 0.0128)/0.0128.
    link = FluidLink(625000, 625000, 0.05, 0.05)
    reqs = [FluidRequest(i, "rt", 0.0, 1.0, 8000, 8000) for i in range(100)]
    assert class_bound(reqs, link) == {"rt": int((1 - 0.1 - 0.0128) / 0.0128)}
    # Few enough: all of them.
    assert class_bound(reqs[:20], link) == {"rt": 20}


def _brute_force(reqs, link):
    best = 0
    for k in range(len(reqs), 0, -1):
        for sub in itertools.combinations(reqs, k):
            if feasible(sorted(sub, key=lambda r: r.deadline), link):
                return k
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 2), st.sampled_from([(8000, 1.0), (102400, 7.0)])),
                min_size=1, max_size=7),
       st.floats(1e5, 1e6))
def test_bound_matches_brute_force_per_class(arrivals, rate):
    link = FluidLink(rate, rate, 0.05, 0.05)
    reqs = [FluidRequest(i, f"c{size}", a, a + dl, size, size)
            for i, (a, (size, dl)) in enumerate(arrivals)]
    got = class_bound(reqs, link)
    for cls in got:
        mine = [r for r in reqs if r.cls == cls]
        assert got[cls] == _brute_force(mine, link)
        chosen = max_on_time(mine, link)
        assert feasible(sorted(chosen, key=lambda r: r.deadline), link)


# -- tc-netem commands ----------------------------------------------------------------------


def test_tc_commands_exact():
    p = PROFILES["3g"]
    # 50 queued + 5 Mbit/s * 50 ms / 1500 B = 20.8 -> 21 packets in the delay line.
    assert netem_limit(p.uplink) == 71
    assert qdisc_command("qgw-1-0-client", "qgw-veth0", p.uplink) == [
        "ip", "netns", "exec", "qgw-1-0-client", "tc", "qdisc", "replace", "dev", "qgw-veth0",
        "root", "netem", "limit", "71", "delay", "50ms", "loss", "random", "0.5%",
        "rate", "5000kbit"]
    lte = PROFILES["lte"]
    assert netem_args(lte.downlink) == [
        # 200 queued + 3.75 MB/s * (25 + 2 * 4) ms / 1500 B in the delay line
        "limit", "283", "delay", "25ms", "4ms", "distribution", "normal",
        "loss", "random", "0.1%", "rate", "30000kbit"]
    lossy = PROFILES["lossy"]
    r = 50
    p_ge = 0.02 * 0.5 / 0.98 * 100
    assert netem_args(lossy.uplink) == [
        "limit", "38", "delay", "15ms", "loss", "gemodel", f"{p_ge:.6f}".rstrip("0") + "%",
        f"{r}%", "100%", "0%", "rate", "10000kbit"]
    assert netem_args(PROFILES["longrtt"].uplink)[:4] == ["limit", str(25 + 625), "delay", "750ms"]


# -- the namespace requirement: skip locally, FAIL under CI=true ----------------------------


def test_missing_namespaces_fail_under_ci(monkeypatch):
    import netem.testing as nt

    monkeypatch.setattr(nt, "namespace_problems", lambda: ["/dev/net/tun does not exist"])
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        nt.require_namespaces()
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        nt.require_namespaces()


def test_loss_limited_reference():
    from netem.bound import mathis_rate

    assert mathis_rate(1200, 0.1, 0.0) == float("inf")
    # 1200 B / 100 ms * sqrt(1.5 / 0.005) = 12000 * 17.32 B/s = 1.66 Mbit/s
    assert mathis_rate(1200, 0.1, 0.005) * 8 / 1e6 == pytest.approx(1.663, abs=0.01)
    ref = FluidLink.loss_limited(PROFILES["3g"])
    assert ref.up_rate < PROFILES["3g"].uplink.bytes_per_s / 3
    clean = FluidLink.loss_limited(PROFILES["clean"])
    assert clean == FluidLink.from_profile(PROFILES["clean"])
