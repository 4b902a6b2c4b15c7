"""Seeded random provisioning problems: the scale test and the paper-profile suite.

Both return a problem *file* (a dict, the YAML schema of :mod:`ilp.problem`) and its profiles,
so a generated problem can be written out and solved with ``ilp.solve`` like any other.
Generation choices are fixed here, in one place, and documented; nothing is tuned per instance.
"""

from __future__ import annotations

import math
import random
from typing import Any

from ilp.profile import Profile
from ilp.synth import PAPER_PROFILES, paper_profile, scaled_profile
from quicgw.core.catalog import latency_model

SUITE_PERCENTILES = (50.0, 80.0, 90.0, 95.0, 99.0)
GPU_POWER_W = {"a100-80gb": 400.0, "h100-80gb": 700.0, "l4-24gb": 72.0, "a10g-24gb": 150.0,
               "a100-mig-3g.40gb": 200.0}


def _bound_ms(prof: Profile, p: float, rate_rpm: float) -> float:
    from ilp.capacity import ProfileCapacity

    return ProfileCapacity.from_profile(prof, "e2el_ms", p).latency_ms(rate_rpm)


# -- the suite: problems derived from the paper's profiles ------------------------------------------

def suite_problem(k: int, seed: int = 0, engines: tuple[str, ...] = ("tgis", "vllm"),
                  mixed_models: bool = False) -> tuple[dict[str, Any], dict[str, Profile]]:
    """Problem ``k`` of the suite.

    * GPUs: 32 A100-80GB, each usable whole or as two MIG 3g.40gb slices.
    * Modes: one per paper profile (of the given engines) on its GPU type, operating at the top
      of the profile's saturation range (the paper's "A100 operating at 15 RPM"), with power.
    * One model per problem, as the paper formulates it ("approaches for providing QoS
      guarantees (per LLM Model)"): Llama-8B, Granite-3B or Bloom-760M, uniformly; with
      ``mixed_models`` every class picks its own model instead.
    * Classes: 3 to 8; a class's rate is log-uniform between 0.2x and 3x the saturation rate of
      its model on an A100 with TGIS;
      its percentile is one of p50, p80, p90, p95, p99; its bound is the latency of that
      percentile on that A100 TGIS profile at a load drawn uniformly between 30% and 100% of
      saturation (so every class can be served by dedicated A100 TGIS instances).
    * Priority follows the bound (tighter first), as in the paper.
    """
    rng = random.Random(f"ilp-suite:{seed}:{k}")
    chosen = [p for p in PAPER_PROFILES if p.engine in engines]
    profiles = {p.name: paper_profile(p) for p in chosen}
    anchors = {p.model: p for p in PAPER_PROFILES if p.gpu == "a100-80gb" and p.engine == "tgis"}
    classes = []
    problem_model = rng.choice(sorted(anchors))
    for c in range(rng.randint(3, 8)):
        model = rng.choice(sorted(anchors)) if mixed_models else problem_model
        anchor = anchors[model]
        rate = anchor.saturation_mid * math.exp(rng.uniform(math.log(0.2), math.log(3.0)))
        pct = rng.choice(SUITE_PERCENTILES)
        load = rng.uniform(0.3, 1.0) * anchor.saturation_mid
        bound = _bound_ms(profiles.get(anchor.name) or paper_profile(anchor), pct, load)
        classes.append({"name": f"c{c}", "rate_rpm": round(rate, 4),
                        "latency_ms": round(bound, 1), "percentile": pct, "model": model})
    gpus: dict[str, dict[str, Any]] = {
        "a100-80gb": {"name": "a100-80gb", "count": 32, "modes": []},
        "a100-mig-3g.40gb": {"name": "a100-mig-3g.40gb", "gpu": "a100-80gb",
                             "partition_of": {"gpu": "a100-80gb", "per_gpu": 2}, "modes": []},
    }
    for p in chosen:
        gpus[p.gpu]["modes"].append({
            "name": p.name, "profile": p.name, "model": p.model,
            "rate_rpm": float(p.saturation_rpm[1]), "power_w": GPU_POWER_W[p.gpu]})
    data = {"name": f"suite-{seed}-{k}", "objective": "instances", "classes": classes,
            "profiles": {n: {"file": f"{n}.json"} for n in profiles},
            "gpus": [g for g in gpus.values() if g["modes"]]}
    return data, profiles


# -- the scale test ---------------------------------------------------------------------------------

SCALE_GPU_TYPES = ("a100-80gb", "h100-80gb", "l4-24gb", "a10g-24gb")
SCALE_MODELS = ("llama-3.1-8b", "llama-3.2-1b")
SCALE_WORKLOAD = (512, 1024)


def scale_problem(n_classes: int, n_gpus: int, n_modes: int, seed: int = 0
                  ) -> tuple[dict[str, Any], dict[str, Profile]]:
    """A random problem of the given size.

    * GPU types: the catalog's A100, H100, L4 and A10G, ``n_gpus`` split 3:2:2:1 (rounded).
    * ``n_modes`` modes per GPU type, cycling over the two catalog Llama models (1B, 8B), two
      clocks (nominal; a low-power clock at 0.75x power, 1.15x latency, 0.87x rate) and two
      operating rates (100% and 80% of saturation, the latter at 0.9x power).
    * Each mode's profile: the shape profile rescaled to the catalog latency model's saturation
      rate and isolated latency for that model and GPU (512 input, 1,024 output tokens).
    * Classes: a model each; rate uniform in 0.1-1.2x the model's A100 saturation rate;
      percentile from p50-p99; bound = that percentile on the model's A100 profile at 30-100%
      of saturation. Priority follows the bound.
    """
    if min(n_classes, n_gpus, n_modes) < 1:
        raise ValueError("classes, gpus and modes must be >= 1")
    rng = random.Random(f"ilp-scale:{seed}:{n_classes}:{n_gpus}:{n_modes}")
    shares = [3, 2, 2, 1]
    counts = [n_gpus * s // sum(shares) for s in shares]
    counts[0] += n_gpus - sum(counts)
    ref = latency_model("llama-3.1-8b", "a100-80gb")
    ref_iso = ref.isolated_latency_s(*SCALE_WORKLOAD)
    profiles: dict[str, Profile] = {}
    base: dict[tuple[str, str], tuple[float, float]] = {}
    for g in SCALE_GPU_TYPES:
        for m in SCALE_MODELS:
            lm = latency_model(m, g)
            sat = lm.saturation_rps(*SCALE_WORKLOAD) * 60
            base[(g, m)] = (sat, lm.isolated_latency_s(*SCALE_WORKLOAD) / ref_iso)
    gpus = []
    for g, count in zip(SCALE_GPU_TYPES, counts, strict=True):
        if count <= 0:
            continue
        modes = []
        for j in range(n_modes):
            model = SCALE_MODELS[j % 2]
            low_clock = (j // 2) % 2 == 1
            cap_frac = 1.0 if (j // 4) % 2 == 0 else 0.8
            extra = j // 8  # more than 8 modes: further operating rates
            cap_frac *= 0.9 ** extra
            sat, lat = base[(g, model)]
            if low_clock:
                sat, lat = sat * 0.87, lat * 1.15
            pname = f"{g}-{model}-{'low' if low_clock else 'nom'}"
            if pname not in profiles:
                profiles[pname] = scaled_profile(pname, model, g, sat, lat)
            power = GPU_POWER_W[g] * (0.75 if low_clock else 1.0) * (0.9 if cap_frac < 1 else 1.0)
            modes.append({"name": f"m{j}", "profile": pname, "model": model,
                          "rate_rpm": round(sat * cap_frac, 4), "power_w": round(power, 1),
                          "frequency_mhz": 1100.0 if low_clock else 1410.0})
        gpus.append({"name": g, "count": count, "modes": modes})
    classes = []
    for c in range(n_classes):
        model = rng.choice(SCALE_MODELS)
        sat, lat = base[("a100-80gb", model)]
        anchor = profiles.get(f"a100-80gb-{model}-nom") or scaled_profile(
            "anchor", model, "a100-80gb", sat, lat)
        pct = rng.choice(SUITE_PERCENTILES)
        bound = _bound_ms(anchor, pct, rng.uniform(0.3, 1.0) * sat)
        classes.append({"name": f"c{c}", "rate_rpm": round(rng.uniform(0.1, 1.2) * sat, 4),
                        "latency_ms": round(bound, 1), "percentile": pct, "model": model})
    data = {"name": f"scale-{n_classes}x{n_gpus}x{n_modes}-{seed}", "objective": "instances",
            "classes": classes, "profiles": {n: {"file": f"{n}.json"} for n in profiles},
            "gpus": gpus}
    return data, profiles
