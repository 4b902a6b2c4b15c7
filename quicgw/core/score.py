"""The score (the poster's reward): a request earns its model's quality if it completed within
its deadline, else 0, times its class weight; a run's score is the weighted mean."""

from __future__ import annotations

from dataclasses import dataclass, field


def request_reward(quality: float, met_deadline: bool, weight: float) -> float:
    return weight * quality if met_deadline else 0.0


@dataclass(slots=True)
class ScoreBoard:
    """Accumulates per-class outcomes and the run's weighted-mean score."""

    weighted_reward: float = 0.0
    weight_total: float = 0.0
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)

    def add(self, class_name: str, weight: float, quality: float, met: bool,
            latency_s: float | None = None) -> None:
        reward = request_reward(quality, met, weight)
        self.weighted_reward += reward
        self.weight_total += weight
        c = self.per_class.get(class_name)
        if c is None:  # (setdefault would build this dict on every call)
            c = self.per_class[class_name] = {
                "requests": 0, "met": 0, "completed": 0, "reward": 0.0, "weight": 0.0}
        c["requests"] += 1
        c["met"] += int(met)
        c["completed"] += int(latency_s is not None)
        c["reward"] += reward
        c["weight"] += weight

    @property
    def score(self) -> float:
        return self.weighted_reward / self.weight_total if self.weight_total else 0.0

    def attainment(self, class_name: str) -> float:
        c = self.per_class.get(class_name)
        return c["met"] / c["requests"] if c and c["requests"] else 0.0
