"""The provisioning problem: classes with rates and latency bounds, GPU types with modes.

A problem file is YAML (or JSON)::

    name: motivation
    objective: instances            # instances | power | cost
    classes:
      - {name: user1, rate_rpm: 15, latency_s: 204, percentile: 95}
      - {name: user2, rate_rpm: 18, latency_s: 301, percentile: 95}
    profiles:
      llama8b-a100: profiles/llama8b_a100.json     # relative to the problem file
    gpus:
      - name: a100-80gb
        count: 8
        modes:
          - {name: 15rpm, profile: llama8b-a100, rate_rpm: 15, power_w: 400}
      - name: a100-mig-3g.40gb                     # MIG slices are GPU types of their own ...
        gpu: a100-80gb
        partition_of: {gpu: a100-80gb, per_gpu: 2}  # ... that use up part of a physical GPU
        modes:
          - {name: 6rpm, profile: llama8b-mig3g, rate_rpm: 6}

A class's priority defaults to the order of its latency bound (tighter bound, higher priority;
0 is the highest), as in the paper. A mode either names a profile or gives ``analytic:`` (the
shared latency model of a catalog model on a catalog GPU with a workload) for the analytic
queueing capacity. Errors name the field: ``classes[1].latency_s: must be > 0``.

Sans-IO apart from :func:`load_problem` reading the file and the profiles it names.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ilp.capacity import AnalyticCapacity, CapacityFunction, ProfileCapacity
from ilp.profile import METRICS, Profile, ProfileError
from ilp.workload import Workload
from quicgw.core.catalog import GPUS, latency_model, resolve_model
from quicgw.core.latency import LatencyModel

OBJECTIVES = ("instances", "power", "cost")


class ProblemError(ValueError):
    """The problem file is wrong; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassSpec(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    rate_rpm: float = Field(gt=0)
    latency_s: float | None = Field(default=None, gt=0)
    latency_ms: float | None = Field(default=None, gt=0)
    percentile: float | Literal["mean"] = 95.0
    metric: str = "e2el_ms"
    priority: int | None = Field(default=None, ge=0, le=63)
    model: str | None = None
    # The SLO holds if this fraction of the class may still miss (documentation only).
    description: str = ""

    @field_validator("percentile")
    @classmethod
    def _pct(cls, v: float | str) -> float | str:
        if v != "mean" and not 0 < float(v) < 100:
            raise ValueError("must be in (0, 100) or 'mean'")
        return v

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(f"unknown metric {v!r} (choose from {', '.join(METRICS)})")
        return v

    @model_validator(mode="after")
    def _one_bound(self) -> ClassSpec:
        if (self.latency_s is None) == (self.latency_ms is None):
            raise ValueError("give exactly one of latency_s or latency_ms")
        return self

    @property
    def bound_ms(self) -> float:
        return self.latency_ms if self.latency_ms is not None else self.latency_s * 1e3


class AnalyticSpec(_Strict):
    model: str | None = None  # default: the mode's model
    gpu: str | None = None  # default: the GPU type's catalog GPU
    max_batch: int | None = Field(default=None, ge=1)
    input_tokens: int | list[int] = 512
    output_tokens: int | list[int] = 128


class ModeSpec(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    profile: str | None = None
    analytic: AnalyticSpec | None = None
    model: str | None = None  # default: the profile's model
    rate_rpm: float | None = Field(default=None, gt=0)  # operating rate A_ij
    frequency_mhz: float | None = Field(default=None, gt=0)
    power_w: float | None = Field(default=None, ge=0)
    latency_scale: float = Field(default=1.0, gt=0)
    rate_scale: float = Field(default=1.0, gt=0)
    max_batch: int | None = Field(default=None, ge=1)  # for the emitted gateway config
    exclude_saturated: bool = False

    @model_validator(mode="after")
    def _source(self) -> ModeSpec:
        if (self.profile is None) == (self.analytic is None):
            raise ValueError("give exactly one of profile or analytic")
        return self


class PartitionSpec(_Strict):
    gpu: str = Field(min_length=1)
    per_gpu: int = Field(ge=1, le=7)


class GPUSpec(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    # How many of this type exist. A partition type (MIG) may omit it: then only its parent's
    # count limits it.
    count: int | None = Field(default=None, ge=0)
    gpu: str | None = None  # catalog GPU for the gateway config (default: name if in catalog)
    partition_of: PartitionSpec | None = None
    hourly_cost: float | None = Field(default=None, ge=0)
    modes: list[ModeSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_modes(self) -> GPUSpec:
        if self.count is None and self.partition_of is None:
            raise ValueError("count: missing")
        names = [m.name for m in self.modes]
        if len(set(names)) != len(names):
            raise ValueError("duplicate mode name")
        return self


class ProblemSpec(_Strict):
    name: str = "problem"
    objective: Literal["instances", "power", "cost"] = "instances"
    interpolation: Literal["linear", "pchip"] = "linear"
    classes: list[ClassSpec] = Field(min_length=1)
    profiles: dict[str, str | dict[str, Any]] = Field(default_factory=dict)
    gpus: list[GPUSpec] = Field(min_length=1)
    description: str = ""

    @model_validator(mode="after")
    def _cross(self) -> ProblemSpec:
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("classes: duplicate class name")
        gnames = [g.name for g in self.gpus]
        if len(set(gnames)) != len(gnames):
            raise ValueError("gpus: duplicate GPU type name")
        for i, g in enumerate(self.gpus):
            if g.partition_of is not None and g.partition_of.gpu not in gnames:
                raise ValueError(f"gpus[{i}].partition_of.gpu: unknown GPU type {g.partition_of.gpu!r}")
            if g.partition_of is not None and g.partition_of.gpu == g.name:
                raise ValueError(f"gpus[{i}].partition_of.gpu: a GPU type cannot partition itself")
            for j, m in enumerate(g.modes):
                if m.profile is not None and m.profile not in self.profiles:
                    raise ValueError(f"gpus[{i}].modes[{j}].profile: unknown profile {m.profile!r} "
                                     f"(profiles: {', '.join(self.profiles) or 'none'})")
                if self.objective == "power" and m.power_w is None:
                    raise ValueError(f"gpus[{i}].modes[{j}].power_w: required when objective is power")
        return self


# -- the resolved problem the model builder uses ------------------------------------------------

@dataclass(slots=True)
class Klass:
    name: str
    rate_rpm: float
    bound_ms: float
    stat: float | str
    metric: str
    priority: int
    model: str | None


@dataclass(slots=True)
class Mode:
    gpu_type: str
    name: str
    model: str
    rate_cap_rpm: float
    capacity: CapacityFunction
    power_w: float | None
    frequency_mhz: float | None
    max_batch: int | None
    source: str  # "profile:<name>" or "analytic"
    # Per metric/stat, a capacity function (classes may use different percentiles/metrics).
    curves: dict[tuple[str, float | str], CapacityFunction] = field(default_factory=dict)
    # The instance's latency model and workload when known: lets a plan be verified by
    # simulation (ilp.verify); the run length and trimming of the profile's runs.
    sim_model: LatencyModel | None = None
    sim_workload: Workload | None = None
    sim_window: tuple[float, float, float] = (2400.0, 480.0, 180.0)

    @property
    def key(self) -> str:
        return f"{self.gpu_type}/{self.name}"


@dataclass(slots=True)
class GPUType:
    name: str
    count: int | None
    catalog_gpu: str | None
    hourly_cost: float
    parent: str | None
    per_parent: int
    modes: list[Mode]


@dataclass(slots=True)
class Problem:
    name: str
    objective: str
    classes: list[Klass]
    gpu_types: list[GPUType]
    profiles: dict[str, Profile]
    _caps: dict[tuple[str, str], float] = field(default_factory=dict)

    def klass(self, name: str) -> Klass:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def modes(self) -> list[Mode]:
        return [m for g in self.gpu_types for m in g.modes]

    def eligible(self, c: Klass, m: Mode) -> bool:
        return c.model is None or c.model == m.model

    def capacity(self, c: Klass, m: Mode) -> float:
        """C_ij(L_u): the highest load (RPM) of class ``c`` and the classes above it that mode
        ``m`` can carry with ``c``'s latency percentile within its bound; 0 if ineligible."""
        key = (c.name, m.key)
        if key not in self._caps:
            if not self.eligible(c, m):
                cap = 0.0
            else:
                cap = min(m.rate_cap_rpm, m.curves[(c.metric, c.stat)].capacity_rpm(c.bound_ms))
            self._caps[key] = max(0.0, cap)
        return self._caps[key]

    def predicted_ms(self, c: Klass, m: Mode, load_rpm: float) -> float:
        return m.curves[(c.metric, c.stat)].latency_ms(load_rpm)

    @property
    def total_rate_rpm(self) -> float:
        return sum(c.rate_rpm for c in self.classes)


def _format_errors(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ""
        for part in err["loc"]:
            if isinstance(part, int):
                loc += f"[{part}]"
            else:
                loc += f".{part}" if loc else str(part)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "missing"
        lines.append(f"{loc or '(top level)'}: {msg}")
    return "\n  ".join(lines)


def parse_problem(data: Any, base_dir: Path | None = None, where: str = "problem",
                  profiles: dict[str, Profile] | None = None) -> Problem:
    """Validate and resolve a problem (profiles named by path are read relative to
    ``base_dir``; ``profiles`` supplies already loaded ones by name)."""
    if not isinstance(data, dict):
        raise ProblemError(f"{where}: expected a mapping at the top level")
    try:
        spec = ProblemSpec.model_validate(data)
    except ValidationError as e:
        raise ProblemError(f"{where}: invalid problem:\n  {_format_errors(e)}") from None
    return resolve(spec, base_dir, where, profiles or {})


def resolve(spec: ProblemSpec, base_dir: Path | None, where: str,
            preloaded: dict[str, Profile]) -> Problem:
    loaded: dict[str, Profile] = {}
    for pname, ref in spec.profiles.items():
        if pname in preloaded:
            loaded[pname] = preloaded[pname]
            continue
        try:
            if isinstance(ref, dict) and "points" in ref:
                loaded[pname] = Profile.from_json(ref, f"{where}: profiles.{pname}")
            else:
                path = ref["file"] if isinstance(ref, dict) else ref
                if not isinstance(path, str):
                    raise ProblemError(f"{where}: profiles.{pname}: expected a path or {{file: path}}")
                p = Path(path)
                if not p.is_absolute() and base_dir is not None:
                    p = base_dir / p
                loaded[pname] = Profile.load(p)
        except ProfileError as e:
            raise ProblemError(f"{where}: profiles.{pname}: {e}") from None

    # Models: resolve aliases so a class's model matches a mode's.
    def model_name(v: str, loc: str) -> str:
        try:
            return resolve_model(v).name
        except KeyError:
            return v  # not in our catalog (e.g. granite-3b from the paper): keep as given

    classes_sorted = sorted(spec.classes, key=lambda c: c.bound_ms)
    default_prio = {}
    level = -1
    last = None
    for c in classes_sorted:
        if c.bound_ms != last:
            level += 1
            last = c.bound_ms
        default_prio[c.name] = level
    classes = [
        Klass(c.name, c.rate_rpm, c.bound_ms, c.percentile if c.percentile == "mean" else float(c.percentile),
              c.metric, c.priority if c.priority is not None else default_prio[c.name],
              model_name(c.model, f"classes[{i}].model") if c.model else None)
        for i, c in enumerate(spec.classes)
    ]
    stats = {(c.metric, c.stat) for c in classes}

    gpu_types: list[GPUType] = []
    for gi, g in enumerate(spec.gpus):
        gloc = f"gpus[{gi}]"
        catalog_gpu = g.gpu or (g.name if g.name in GPUS else None)
        if g.gpu is not None and g.gpu not in GPUS:
            raise ProblemError(f"{where}: {gloc}.gpu: unknown GPU {g.gpu!r} (known: {', '.join(GPUS)})")
        cost = g.hourly_cost
        if cost is None:
            cost = GPUS[catalog_gpu].hourly_cost if catalog_gpu else 1.0
            if g.partition_of is not None:
                cost = cost / g.partition_of.per_gpu
        modes: list[Mode] = []
        for mi, m in enumerate(g.modes):
            mloc = f"{gloc}.modes[{mi}]"
            curves: dict[tuple[str, float | str], CapacityFunction] = {}
            if m.profile is not None:
                prof = loaded[m.profile]
                model = model_name(m.model or prof.model, f"{mloc}.model")
                cap = m.rate_rpm if m.rate_rpm is not None else prof.rates[-1] * m.rate_scale
                for metric, stat in stats:
                    try:
                        curves[(metric, stat)] = ProfileCapacity.from_profile(
                            prof, metric, stat, spec.interpolation, cap, m.exclude_saturated,
                            m.latency_scale, m.rate_scale)
                    except (KeyError, ValueError) as e:
                        msg = e.args[0] if e.args else str(e)
                        raise ProblemError(f"{where}: {mloc}.profile: {m.profile}: {msg}") from None
                source = f"profile:{m.profile}"
                max_batch = m.max_batch or _int_or_none(prof.workload.get("max_batch"))
                sim_model, sim_workload = _profile_instance(prof)
                if m.latency_scale != 1.0 or m.rate_scale != 1.0:
                    sim_model = None  # a derived mode: no instance to simulate
                window = (prof.duration_s or 2400.0, prof.warmup_s, prof.cooldown_s)
            else:
                a = m.analytic
                model = model_name(m.model or a.model or "", f"{mloc}.model")
                if not model:
                    raise ProblemError(f"{where}: {mloc}.analytic.model: missing (or give {mloc}.model)")
                cat_gpu = a.gpu or catalog_gpu
                if cat_gpu is None:
                    raise ProblemError(f"{where}: {mloc}.analytic.gpu: missing ({g.name!r} is not a catalog GPU)")
                try:
                    lm = latency_model(model, cat_gpu, max_batch=a.max_batch)
                    wl = Workload.of({"input_tokens": a.input_tokens, "output_tokens": a.output_tokens})
                except (KeyError, ValueError) as e:
                    raise ProblemError(f"{where}: {mloc}.analytic: {e.args[0]}") from None
                if m.latency_scale != 1.0 or m.rate_scale != 1.0:
                    lm = lm.scaled(1.0 / m.latency_scale)
                cap = m.rate_rpm
                for metric, stat in stats:
                    try:
                        curves[(metric, stat)] = AnalyticCapacity(lm, wl, metric, stat, cap)
                    except ValueError as e:
                        raise ProblemError(f"{where}: {mloc}.analytic: {e.args[0]}") from None
                probe = next(iter(curves.values()))
                cap = probe.max_rate_rpm
                source = "analytic"
                max_batch = m.max_batch or lm.max_batch
                sim_model, sim_workload, window = lm, wl, (2400.0, 480.0, 180.0)
            modes.append(Mode(g.name, m.name, model, float(cap), next(iter(curves.values())),
                              m.power_w, m.frequency_mhz, max_batch, source, curves,
                              sim_model, sim_workload, window))
        gpu_types.append(GPUType(
            g.name, g.count, catalog_gpu, float(cost),
            g.partition_of.gpu if g.partition_of else None,
            g.partition_of.per_gpu if g.partition_of else 1, modes))
    for i, c in enumerate(classes):
        if not any(c.model is None or c.model == m.model for g in gpu_types for m in g.modes):
            raise ProblemError(f"{where}: classes[{i}].model: no GPU mode serves model {c.model!r}")
    return Problem(spec.name, spec.objective, classes, gpu_types, loaded)


def _profile_instance(prof: Profile) -> tuple[LatencyModel | None, Workload | None]:
    """The measured instance's latency model and workload, if the profile records them."""
    inst = prof.instance or {}
    try:
        wl = Workload.of({k: v for k, v in prof.workload.items()
                          if k in ("input_tokens", "output_tokens")})
    except ValueError:
        return None, None
    lm_d = inst.get("latency_model")
    try:
        if isinstance(lm_d, dict):
            return LatencyModel(**lm_d), wl
        if inst.get("model") and inst.get("gpu"):
            return latency_model(inst["model"], inst["gpu"], _int_or_none(inst.get("max_batch"))), wl
    except (KeyError, TypeError, ValueError):
        pass
    return None, None


def _int_or_none(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def load_problem(path: str | Path) -> Problem:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ProblemError(f"problem file not found: {path}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ProblemError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {e}") from None
    return parse_problem(data, path.parent, str(path))
