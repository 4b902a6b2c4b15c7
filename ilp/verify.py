"""Check a plan by simulation before deploying it.

The ILP trusts the paper's latency model: a class's latency on an instance is the FCFS profile's
percentile at the load of the classes at or above its priority. Two things it leaves out are
real: the lowest class of a priority instance waits longer than an FCFS request would at the
same total load (priority moves waiting down, it does not remove it), and a high-priority request
still shares the batch, so its decode runs at the speed of the *whole* batch. When the measured
instance's latency model is known (profiles that ``ilp.bench`` wrote for an emulated backend or
``--simulate``, and analytic modes) this replays the plan on it: every instance with its classes'
Poisson streams at the planned rates, priority or FCFS as the plan says, the profile's run
length and trimming, several seeds; each class's percentile is pooled over its instances, as its
users see it. Sans-IO (the fast-forwarded :class:`~quicgw.core.latency.BatchEngine`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ilp.plan import Plan
from ilp.problem import Problem
from ilp.sim import ClassLoad, simulate_instance
from ilp.stats import percentile


@dataclass(slots=True)
class ClassCheck:
    name: str
    stat: float | str
    metric: str
    bound_ms: float
    values_ms: list[float] = field(default_factory=list)  # one per seed

    @property
    def passed(self) -> int:
        return sum(1 for v in self.values_ms if v <= self.bound_ms)

    @property
    def worst_ms(self) -> float:
        return max(self.values_ms) if self.values_ms else math.nan

    @property
    def median_ms(self) -> float:
        return percentile(sorted(self.values_ms), 50.0) if self.values_ms else math.nan


@dataclass(slots=True)
class VerifyReport:
    seeds: int
    policy: str
    classes: list[ClassCheck]
    skipped: list[str]

    @property
    def ok(self) -> bool:
        return not self.skipped and all(c.passed == len(c.values_ms) for c in self.classes)

    def summary(self) -> str:
        lines = [f"verification by simulation ({self.seeds} seed(s), {self.policy} at every "
                 f"instance, shared latency model):"]
        for c in self.classes:
            stat = "mean" if c.stat == "mean" else f"p{float(c.stat):g}"
            lines.append(f"  {c.name:<14} {stat} {c.metric}: median {c.median_ms / 1e3:.1f} s, "
                         f"worst {c.worst_ms / 1e3:.1f} s, bound {c.bound_ms / 1e3:g} s -> "
                         f"met in {c.passed}/{len(c.values_ms)} seeds")
        if self.skipped:
            lines.append("  not simulated (no latency model for the mode): " + ", ".join(self.skipped))
        return "\n".join(lines)


def _metric_value(rec, metric: str) -> float | None:
    if metric == "e2el_ms":
        return None if rec.e2el_s is None else rec.e2el_s * 1e3
    if metric == "ttft_ms":
        return None if rec.ttft_s is None else rec.ttft_s * 1e3
    if metric == "queue_ms":
        return None if rec.queue_s is None else rec.queue_s * 1e3
    if metric == "tpot_ms":
        tp = rec.tpot_s
        return None if tp is None else tp * 1e3
    return None


def verify_plan(problem: Problem, plan: Plan, seeds: int = 5) -> VerifyReport:
    policy = "priority" if plan.approach == "priority" else "fcfs"
    modes = {(m.gpu_type, m.name): m for m in problem.modes}
    prio = {c.name: c.priority for c in plan.classes}
    checks = {c.name: ClassCheck(c.name, c.stat, c.metric, c.latency_ms) for c in plan.classes}
    skipped = []
    runnable = []
    for inst in plan.instances:
        m = modes.get((inst.gpu_type, inst.mode))
        if m is None or m.sim_model is None or m.sim_workload is None:
            skipped.append(inst.name)
        else:
            runnable.append((inst, m))
    for seed in range(seeds):
        samples: dict[str, list[float]] = {c: [] for c in checks}
        for k, (inst, m) in enumerate(runnable):
            loads = [ClassLoad(c, v / 60.0, prio[c], m.sim_workload)
                     for c, v in inst.load_rpm.items() if v > 0]
            duration, warm, cool = m.sim_window
            recs = simulate_instance(m.sim_model, loads, duration, policy=policy,
                                     seed=seed * 7919 + k)
            for r in recs:
                if warm <= r.arrival_s < duration - cool and r.ok:
                    v = _metric_value(r, checks[r.klass].metric)
                    if v is not None:
                        samples[r.klass].append(v)
        for name, vals in samples.items():
            if not vals:
                continue
            c = checks[name]
            vals.sort()
            c.values_ms.append(sum(vals) / len(vals) if c.stat == "mean"
                               else percentile(vals, float(c.stat)))
    return VerifyReport(seeds, policy, list(checks.values()), skipped)
