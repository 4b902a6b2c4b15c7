"""The Plan: the ILP's output (DESIGN.md's shared concept), as the gateway loads it.

A plan lists instances (GPU type, catalog GPU, mode, model, operating rate, the load of each
class on it and the latency the profile predicts for it there) and, per class, the fractions of
its traffic each instance takes. JSON on disk; :meth:`Plan.summary` is the readable form.
Sans-IO apart from :meth:`Plan.load`/:meth:`Plan.save`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilp.model import Solution
from ilp.problem import Problem

PLAN_KIND = "quicgw.ilp.plan"
PLAN_VERSION = 1


class PlanError(ValueError):
    """A plan file is malformed; the message names the field."""


@dataclass(slots=True)
class PlanClass:
    name: str
    priority: int
    rate_rpm: float
    latency_ms: float
    stat: float | str
    metric: str

    @property
    def stat_label(self) -> str:
        return "mean" if self.stat == "mean" else f"p{float(self.stat):g}"


@dataclass(slots=True)
class PlanInstance:
    name: str
    gpu_type: str
    gpu: str | None  # catalog GPU (for the gateway config), None if the type is not in the catalog
    mode: str
    model: str
    rate_cap_rpm: float
    load_rpm: dict[str, float]
    predicted_ms: dict[str, float] = field(default_factory=dict)
    max_batch: int | None = None
    power_w: float | None = None
    frequency_mhz: float | None = None

    @property
    def total_rpm(self) -> float:
        return sum(self.load_rpm.values())


@dataclass(slots=True)
class Plan:
    problem: str
    approach: str
    objective: str
    objective_value: float
    classes: list[PlanClass]
    instances: list[PlanInstance]
    solver: str = ""
    solve_s: float = 0.0
    optimal: bool = True
    baselines: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # -- routing view ------------------------------------------------------------------------
    def routes(self) -> dict[str, list[tuple[str, float]]]:
        """Per class: (instance name, fraction of the class's traffic), fractions summing to 1."""
        out: dict[str, list[tuple[str, float]]] = {}
        for c in self.classes:
            loads = [(i.name, i.load_rpm.get(c.name, 0.0)) for i in self.instances]
            total = sum(v for _, v in loads)
            if total <= 0:
                out[c.name] = []
                continue
            out[c.name] = [(n, v / total) for n, v in loads if v > 0]
        return out

    def klass(self, name: str) -> PlanClass:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(name)

    # -- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "kind": PLAN_KIND,
            "version": PLAN_VERSION,
            "problem": self.problem,
            "approach": self.approach,
            "objective": self.objective,
            "objective_value": self.objective_value,
            "instances_total": len(self.instances),
            "solver": self.solver,
            "solve_s": round(self.solve_s, 6),
            "optimal": self.optimal,
            "baselines": self.baselines,
            "classes": [{"name": c.name, "priority": c.priority, "rate_rpm": c.rate_rpm,
                         "latency_ms": c.latency_ms, "stat": c.stat, "metric": c.metric}
                        for c in self.classes],
            "instances": [{"name": i.name, "gpu_type": i.gpu_type, "gpu": i.gpu, "mode": i.mode,
                           "model": i.model, "rate_cap_rpm": i.rate_cap_rpm,
                           "max_batch": i.max_batch, "power_w": i.power_w,
                           "frequency_mhz": i.frequency_mhz,
                           "load_rpm": {k: round(v, 9) for k, v in i.load_rpm.items()},
                           "predicted_ms": {k: (round(v, 3) if math.isfinite(v) else None)
                                            for k, v in i.predicted_ms.items()}}
                          for i in self.instances],
            "routes": {c: [{"instance": n, "fraction": round(f, 9)} for n, f in r]
                       for c, r in self.routes().items()},
            "notes": self.notes,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps() + "\n")

    @classmethod
    def from_json(cls, d: Any, where: str = "plan") -> Plan:
        if not isinstance(d, dict):
            raise PlanError(f"{where}: expected a JSON object")
        if d.get("kind") != PLAN_KIND:
            raise PlanError(f"{where}.kind: expected {PLAN_KIND!r}, got {d.get('kind')!r}")
        try:
            classes = [PlanClass(c["name"], int(c["priority"]), float(c["rate_rpm"]),
                                 float(c["latency_ms"]), c.get("stat", 95.0), c.get("metric", "e2el_ms"))
                       for c in d["classes"]]
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"{where}.classes: malformed ({e!r})") from None
        instances = []
        names = set()
        for k, i in enumerate(d.get("instances") or []):
            loc = f"{where}.instances[{k}]"
            if not isinstance(i, dict):
                raise PlanError(f"{loc}: expected an object")
            for key in ("name", "model", "load_rpm"):
                if key not in i:
                    raise PlanError(f"{loc}.{key}: missing")
            if i["name"] in names:
                raise PlanError(f"{loc}.name: duplicate instance {i['name']!r}")
            names.add(i["name"])
            loads = i["load_rpm"]
            if not isinstance(loads, dict) or any(
                    not isinstance(v, int | float) or v < 0 for v in loads.values()):
                raise PlanError(f"{loc}.load_rpm: expected class -> rate >= 0")
            unknown = set(loads) - {c.name for c in classes}
            if unknown:
                raise PlanError(f"{loc}.load_rpm: unknown class {sorted(unknown)[0]!r}")
            instances.append(PlanInstance(
                name=str(i["name"]), gpu_type=str(i.get("gpu_type", i.get("gpu") or "")),
                gpu=i.get("gpu"), mode=str(i.get("mode", "")), model=str(i["model"]),
                rate_cap_rpm=float(i.get("rate_cap_rpm", 0.0) or 0.0),
                load_rpm={k2: float(v) for k2, v in loads.items()},
                predicted_ms={k2: (math.inf if v is None else float(v))
                              for k2, v in (i.get("predicted_ms") or {}).items()},
                max_batch=i.get("max_batch"), power_w=i.get("power_w"),
                frequency_mhz=i.get("frequency_mhz")))
        if not instances:
            raise PlanError(f"{where}.instances: the plan has no instances")
        return cls(
            problem=str(d.get("problem", "")), approach=str(d.get("approach", "priority")),
            objective=str(d.get("objective", "instances")),
            objective_value=float(d.get("objective_value", len(instances))),
            classes=classes, instances=instances, solver=str(d.get("solver", "")),
            solve_s=float(d.get("solve_s", 0.0)), optimal=bool(d.get("optimal", True)),
            baselines=dict(d.get("baselines") or {}), notes=list(d.get("notes") or []))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise PlanError(f"plan file not found: {path}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise PlanError(f"{path}: not valid JSON: {e}") from None
        return cls.from_json(data, str(path))

    # -- readable ----------------------------------------------------------------------------
    def summary(self) -> str:
        lines = [f"plan for {self.problem!r}: {len(self.instances)} instance(s), approach "
                 f"{self.approach}, objective {self.objective} = {self.objective_value:g} "
                 f"({'optimal' if self.optimal else 'feasible, not proven optimal'}; "
                 f"{self.solver}, {self.solve_s:.3f} s)"]
        if self.baselines:
            lines.append("  baselines: " + ", ".join(f"{k} {v}" for k, v in self.baselines.items()))
        lines.append("  classes (priority 0 is the highest):")
        for c in sorted(self.classes, key=lambda c: (c.priority, c.name)):
            lines.append(f"    {c.name:<14} priority {c.priority}  {c.rate_rpm:8.3f} RPM  "
                         f"{c.stat_label} {c.metric} <= {c.latency_ms / 1e3:g} s")
        lines.append("  instances:")
        for i in self.instances:
            extra = []
            if i.power_w is not None:
                extra.append(f"{i.power_w:g} W")
            if i.frequency_mhz is not None:
                extra.append(f"{i.frequency_mhz:g} MHz")
            lines.append(f"    {i.name:<24} {i.model} on {i.gpu_type}, mode {i.mode} "
                         f"(<= {i.rate_cap_rpm:g} RPM{', ' + ', '.join(extra) if extra else ''}): "
                         f"load {i.total_rpm:.3f} RPM")
            for c in sorted(self.classes, key=lambda c: (c.priority, c.name)):
                v = i.load_rpm.get(c.name, 0.0)
                if v <= 0:
                    continue
                pred = i.predicted_ms.get(c.name)
                ptxt = ("" if pred is None else
                        f"; profile predicts {c.stat_label} {pred / 1e3:.1f} s <= {c.latency_ms / 1e3:g} s")
                lines.append(f"      {c.name:<14} {v:8.3f} RPM{ptxt}")
        lines.append("  routes (fraction of each class's traffic per instance):")
        for c, r in self.routes().items():
            lines.append(f"    {c:<14} " + ", ".join(f"{n} {f:.3f}" for n, f in r))
        return "\n".join(lines)


def plan_from_solution(problem: Problem, sol: Solution, baselines: dict[str, int] | None = None) -> Plan:
    """Expand pools into instances (a pool's load split evenly over its instances)."""
    classes = [PlanClass(c.name, c.priority, c.rate_rpm, c.bound_ms, c.stat, c.metric)
               for c in problem.classes]
    instances: list[PlanInstance] = []
    counters: dict[str, int] = {}

    def add(g, m, loads: dict[str, float]) -> None:
        base = f"{g.name}-{m.name}"
        k = counters.get(base, 0)
        counters[base] = k + 1
        inst = PlanInstance(
            name=f"{base}-{k}", gpu_type=g.name, gpu=g.catalog_gpu, mode=m.name, model=m.model,
            rate_cap_rpm=m.rate_cap_rpm, load_rpm=loads, max_batch=m.max_batch,
            power_w=m.power_w, frequency_mhz=m.frequency_mhz)
        inst.predicted_ms = predict(problem, sol.approach, m, loads)
        instances.append(inst)

    if sol.formulation == "per-gpu":
        for g, _k, m, loads in sol.gpus:
            add(g, m, dict(loads))
    else:
        for r in sol.pools:
            if r.count <= 0:
                continue
            per = {c: v / r.count for c, v in r.load_rpm.items()}
            for _ in range(r.count):
                add(r.pool.gpu_type, r.pool.mode, dict(per))
    notes = []
    if sol.approach == "priority":
        notes.append("each instance serves its classes by priority (0 first); a class's latency "
                     "is predicted from the load of the classes at or above its priority")
    return Plan(problem.name, sol.approach, sol.objective, sol.objective_value, classes, instances,
                sol.solver, sol.solve_s, sol.optimal, dict(baselines or {}), notes)


def predict(problem: Problem, approach: str, mode, loads: dict[str, float]) -> dict[str, float]:
    """The latency the mode's capacity curve predicts for each class present."""
    out = {}
    for name, v in loads.items():
        if v <= 0:
            continue
        c = problem.klass(name)
        if approach == "priority":
            seen = sum(x for n2, x in loads.items() if problem.klass(n2).priority <= c.priority)
        else:
            seen = sum(loads.values())
        out[name] = problem.predicted_ms(c, mode, seen)
    return out
