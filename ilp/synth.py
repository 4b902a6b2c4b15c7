"""Synthetic profiles for generated problems (the scale test and the 100-problem suite).

A generated problem needs a latency-vs-load curve per GPU mode. Rather than invent a formula we
reuse the *shape* of a measured profile (the shipped Llama-3.1-8B / A100 sweep of the motivating
example: latency percentiles from 1 RPM to past saturation) and rescale it: the rate axis to the
mode's saturation rate, the latency axis to the mode's zero-load latency. The paper's profiles
give the saturation rates (its "Benchmarking" list); zero-load latencies come from the model size
and GPU (assumptions stated in :data:`PAPER_PROFILES`).

Sans-IO and deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ilp.profile import Profile, RatePoint
from ilp.stats import MetricSummary

SHAPE_PROFILE = "llama8b-a100-longgen.json"
SHAPE_PERCENTILES = (50.0, 80.0, 90.0, 95.0, 99.0)


@dataclass(frozen=True, slots=True)
class PaperProfile:
    """One line of the paper's benchmarking list, plus our latency-scale assumption."""

    name: str
    model: str
    gpu: str  # the GPU type (a MIG slice is a type of its own)
    engine: str
    saturation_rpm: tuple[float, float]  # the paper's range
    latency_scale: float  # zero-load latency relative to Llama-8B on an A100 with TGIS

    @property
    def saturation_mid(self) -> float:
        return sum(self.saturation_rpm) / 2


# The paper's "Benchmarking" section (shared/seeds/000). Latency scales are our assumptions:
# decode time grows with model size (3B ~ half of 8B, 760M ~ a quarter), a 3g.40gb MIG slice
# (3/7 of the SMs, half the memory bandwidth) is 1.6x slower than the whole A100, and vLLM's
# kernels are 0.8x TGIS's per token.
PAPER_PROFILES: tuple[PaperProfile, ...] = (
    PaperProfile("llama8b-a100-tgis", "llama-8b", "a100-80gb", "tgis", (13, 15), 1.0),
    PaperProfile("llama8b-mig3g-tgis", "llama-8b", "a100-mig-3g.40gb", "tgis", (5, 8), 1.6),
    PaperProfile("granite3b-a100-tgis", "granite-3b", "a100-80gb", "tgis", (55, 60), 0.5),
    PaperProfile("bloom760-a100-tgis", "bloom-760m", "a100-80gb", "tgis", (135, 140), 0.25),
    PaperProfile("bloom760-mig3g-tgis", "bloom-760m", "a100-mig-3g.40gb", "tgis", (65, 70), 0.4),
    PaperProfile("granite3b-a100-vllm", "granite-3b", "a100-80gb", "vllm", (280, 300), 0.4),
    PaperProfile("llama8b-a100-vllm", "llama-8b", "a100-80gb", "vllm", (75, 80), 0.8),
)


@lru_cache(maxsize=1)
def shape() -> Profile:
    return Profile.load(Path(__file__).parent / "examples" / "profiles" / SHAPE_PROFILE)


def _shape_saturation() -> float:
    s = shape()
    lo, hi = s.saturation_range_rpm or (s.saturation_rpm, s.saturation_rpm)
    return (lo + hi) / 2


def scaled_profile(name: str, model: str, gpu: str, saturation_rpm: float, latency_scale: float,
                   engine: str = "synthetic") -> Profile:
    """The shape profile with its rates scaled to ``saturation_rpm`` and latencies by
    ``latency_scale``."""
    base = shape()
    rx = saturation_rpm / _shape_saturation()
    points = []
    for p in base.points:
        e = p.metrics["e2el_ms"]
        pct = {q: e.at(q) * latency_scale for q in SHAPE_PERCENTILES}
        points.append(RatePoint(
            rate_rpm=round(p.rate_rpm * rx, 6), duration_s=p.duration_s, requests=p.requests,
            completed=p.completed, request_throughput=p.request_throughput * rx,
            metrics={"e2el_ms": MetricSummary(e.n, e.mean * latency_scale, e.std * latency_scale,
                                              pct[50.0], pct)},
            saturated=p.saturated))
    return Profile(model=model, gpu=gpu, engine=engine, mode=name, points=points,
                   saturation_rpm=saturation_rpm, workload=dict(base.workload),
                   source=f"synthetic: shape of {SHAPE_PROFILE}, rates x{rx:.3g}, "
                          f"latencies x{latency_scale:.3g}")


def paper_profile(p: PaperProfile) -> Profile:
    return scaled_profile(p.name, p.model, p.gpu, p.saturation_mid, p.latency_scale, p.engine)
