"""Clusters: which model instances (model x GPU) the simulator serves with.

A cluster is a list of :class:`InstanceSpec`; :func:`build_instances` turns it into the core's
:class:`~quicgw.core.routing.InstanceInfo` with the catalog's latency model and quality, the
same objects the gateway builds from its backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quicgw.core.catalog import (
    GPUS,
    MODELS,
    latency_model,
    resolve_gpu,
    resolve_model,
    tensor_parallel,
)
from quicgw.core.features import MAX_INSTANCES
from quicgw.core.routing import InstanceInfo


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    model: str
    gpu: str = "a100-80gb"
    max_batch: int | None = None

    def label(self) -> str:
        return f"{resolve_model(self.model).size}@{self.gpu}"


def parse_cluster(text: str) -> list[InstanceSpec]:
    """``"large@h100-80gb, medium@a100-80gb*2, small"`` -> specs (``*k`` repeats)."""
    specs: list[InstanceSpec] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        count = 1
        if "*" in part:
            part, _, k = part.partition("*")
            count = int(k)
        model, _, gpu = part.partition("@")
        spec = InstanceSpec(resolve_model(model.strip()).name, resolve_gpu(gpu.strip() or "a100-80gb").name)
        specs.extend([spec] * count)
    if not specs:
        raise ValueError(f"empty cluster {text!r}")
    return specs


# The evaluation cluster (the poster's small/medium/large hybrid) and, for the "one policy for
# any cluster" check, a cluster never used in training: another size and model mix, and A10G
# GPUs, which random training clusters never draw (they use TRAINING_GPUS only).
CLUSTERS: dict[str, str] = {
    "poster": "large@h100-80gb, medium@a100-80gb*2, small@a100-80gb",
    "unseen": ("large@h100-80gb*2, large@a100-80gb*2, medium@h100-80gb*2, medium@a100-80gb, "
               "small@a10g-24gb*2, small@h100-80gb"),
}


def cluster_specs(cluster: str | Sequence[InstanceSpec]) -> list[InstanceSpec]:
    if isinstance(cluster, str):
        return parse_cluster(CLUSTERS.get(cluster, cluster))
    return list(cluster)


def build_instances(specs: Sequence[InstanceSpec]) -> tuple[InstanceInfo, ...]:
    if len(specs) > MAX_INSTANCES:
        raise ValueError(f"at most {MAX_INSTANCES} instances, got {len(specs)}")
    out = []
    for k, s in enumerate(specs):
        m = resolve_model(s.model)
        out.append(InstanceInfo(
            name=f"{m.size}-{k}", model=m.name, gpu=s.gpu,
            latency=latency_model(m.name, s.gpu, s.max_batch), quality=dict(m.quality)))
    return tuple(out)


def _feasible_pairs() -> list[tuple[str, str]]:
    pairs = []
    for m in MODELS.values():
        for g in GPUS.values():
            try:
                tensor_parallel(m, g)
            except ValueError:
                continue
            pairs.append((m.name, g.name))
    return pairs


FEASIBLE_PAIRS: tuple[tuple[str, str], ...] = tuple(_feasible_pairs())
# Training clusters draw from the datacenter GPUs: an 8B model on an L4 never meets a 2 s
# deadline, which teaches nothing but "avoid it" (the feature set still covers it).
TRAINING_GPUS = ("a100-80gb", "h100-80gb")


def random_cluster(rng: np.random.Generator, n_min: int = 2, n_max: int = MAX_INSTANCES,
                   gpus: Sequence[str] = TRAINING_GPUS) -> list[InstanceSpec]:
    """A random cluster of ``n_min..n_max`` instances with at least two model sizes."""
    pairs = [p for p in FEASIBLE_PAIRS if p[1] in gpus]
    n = int(rng.integers(n_min, n_max + 1))
    while True:
        idx = rng.integers(0, len(pairs), size=n)
        specs = [InstanceSpec(*pairs[i]) for i in idx]
        if len({resolve_model(s.model).size for s in specs}) >= 2:
            return specs
