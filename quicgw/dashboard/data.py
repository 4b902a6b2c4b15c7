"""What the dashboard's JSON endpoints return: pure functions over the gateway's metric samples
(``/dashboard/api/live``) and over a directory of ILP profile and plan files
(``/dashboard/api/benchmarks``).

The live view is built from :meth:`quicgw.metrics.GatewayMetrics.samples`, the very samples
``/metrics`` exposes, so the page can only show numbers Prometheus would also see. Percentiles
are left to the page (it estimates them from the histogram buckets, over all time and over its
own sliding window), so the JSON carries the cumulative buckets.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Sample = tuple[str, dict[str, str], float]

# Benchmark files larger than this are skipped (a profile with raw samples is a few MB).
MAX_FILE_BYTES = 64 << 20
MAX_FILES = 2000
QUANTILE_STEP = 2.0  # raw samples: their distribution on a 2-percentile grid


@dataclass(frozen=True, slots=True)
class ClassInfo:
    name: str
    priority: int
    deadline_ms: float
    reward_weight: float = 1.0


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    name: str
    model: str
    gpu: str
    capacity: int


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """What does not change while the gateway runs."""

    classes: tuple[ClassInfo, ...]
    instances: tuple[InstanceInfo, ...]
    scheduler: str
    router: str
    started_unix: float
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_QUIC_KEYS = {"quicgw_quic_connections": "connections",
              "quicgw_quic_connections_total": "connections_total",
              "quicgw_quic_packets_sent_total": "packets_sent",
              "quicgw_quic_packets_lost_total": "packets_lost"}


def _new_hist() -> dict[str, Any]:
    return {"buckets": {}, "sum": 0.0, "count": 0.0}


def _finish_hist(h: dict[str, Any]) -> dict[str, Any]:
    items = sorted(h["buckets"].items(), key=lambda kv: kv[0])
    return {"le": [("+Inf" if math.isinf(b) else b) for b, _ in items],
            "cumulative": [c for _, c in items], "sum": h["sum"], "count": h["count"]}


def live_view(samples: Iterable[Sample], info: GatewayInfo, now_unix: float) -> dict[str, Any]:
    """The dashboard's live JSON: totals per class and per instance, histograms per class
    (summed over instances), router decisions, scheduler bytes, QUIC and protocol counts."""
    class_names = [c.name for c in info.classes]
    per_class: dict[str, dict[str, Any]] = {
        c.name: {"name": c.name, "priority": c.priority, "deadline_ms": c.deadline_ms,
                 "reward_weight": c.reward_weight, "started": 0.0, "finished": 0.0,
                 "failed": 0.0, "failed_by_reason": {}, "met": 0.0, "missed": 0.0,
                 "ttft": _new_hist(), "duration": _new_hist(), "queue_wait": _new_hist(),
                 "sent_bytes": 0.0, "lost_bytes": 0.0}
        for c in info.classes}
    per_instance: dict[str, dict[str, Any]] = {
        i.name: {"name": i.name, "model": i.model, "gpu": i.gpu, "capacity": i.capacity,
                 "started": 0.0, "finished": 0.0, "failed": 0.0, "in_flight": 0.0,
                 "queued": 0.0, "up": 0.0}
        for i in info.instances}
    decisions: dict[str, dict[str, float]] = {}
    protocols: dict[str, float] = {}
    rejected: dict[str, float] = {}
    quic: dict[str, float] = {}
    unclassified_bytes = 0.0
    counters = {"quicgw_requests_started_total": "started",
                "quicgw_requests_finished_total": "finished",
                "quicgw_requests_failed_total": "failed",
                "quicgw_deadline_met_total": "met",
                "quicgw_deadline_missed_total": "missed"}
    histograms = {"quicgw_ttft_seconds": "ttft", "quicgw_request_duration_seconds": "duration",
                  "quicgw_queue_wait_seconds": "queue_wait"}
    gauges = {"quicgw_in_flight_requests": "in_flight", "quicgw_queue_depth": "queued",
              "quicgw_backend_up": "up"}
    for name, labels, value in samples:
        key = counters.get(name)
        if key is not None:
            c = per_class.get(labels.get("class", ""))
            if c is not None:
                c[key] += value
                if key == "failed":
                    reasons = c["failed_by_reason"]
                    reasons[labels["reason"]] = reasons.get(labels["reason"], 0.0) + value
            inst = per_instance.get(labels.get("instance", ""))
            if inst is not None and key in ("started", "finished", "failed"):
                inst[key] += value
            continue
        base, _, suffix = name.rpartition("_")
        hist_key = histograms.get(base)
        if hist_key is not None:
            c = per_class.get(labels.get("class", ""))
            if c is None:
                continue
            h = c[hist_key]
            if suffix == "bucket":
                le = float(labels["le"])
                h["buckets"][le] = h["buckets"].get(le, 0.0) + value
            elif suffix in ("sum", "count"):
                h[suffix] += value
            continue
        gauge_key = gauges.get(name)
        if gauge_key is not None:
            inst = per_instance.get(labels.get("instance", ""))
            if inst is not None:
                inst[gauge_key] = value
        elif name == "quicgw_router_decisions_total":
            router = decisions.setdefault(labels["router"], {})
            router[labels["target"]] = router.get(labels["target"], 0.0) + value
        elif name == "quicgw_http_requests_total":
            p = labels["protocol"]
            protocols[p] = protocols.get(p, 0.0) + value
        elif name == "quicgw_requests_rejected_total":
            rejected[labels["code"]] = value
        elif name in ("quicgw_scheduler_sent_bytes_total", "quicgw_quic_lost_bytes_total"):
            field_name = "sent_bytes" if "sent" in name else "lost_bytes"
            c = per_class.get(labels["class"])
            if c is not None:
                c[field_name] += value
            elif field_name == "sent_bytes":
                unclassified_bytes += value
        elif name in _QUIC_KEYS:
            quic[_QUIC_KEYS[name]] = value
    classes = []
    for name in class_names:
        c = per_class[name]
        for h in ("ttft", "duration", "queue_wait"):
            c[h] = _finish_hist(c[h])
        judged = c["met"] + c["missed"]
        c["attainment"] = (c["met"] / judged) if judged else None
        classes.append(c)
    total_decisions: dict[str, float] = {i.name: 0.0 for i in info.instances}
    for targets in decisions.values():
        for target, n in targets.items():
            total_decisions[target] = total_decisions.get(target, 0.0) + n
    return {
        "time": now_unix,
        "uptime_s": max(0.0, now_unix - info.started_unix),
        "scheduler": info.scheduler,
        "router": info.router,
        "version": info.version,
        "classes": classes,
        "instances": [per_instance[i.name] for i in info.instances],
        "decisions": {"by_router": decisions, "by_target": total_decisions},
        "protocols": protocols,
        "rejected": rejected,
        "quic": quic,
        "unclassified_sent_bytes": unclassified_bytes,
        **info.extra,
    }


# -- the benchmark browser --------------------------------------------------------------------

def _finite(x: Any) -> float | None:
    if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None


def _quantiles(values: list[float], step: float = QUANTILE_STEP) -> list[list[float]]:
    """[percentile, value] pairs of raw samples on a fixed percentile grid (nearest rank)."""
    xs = sorted(v for v in values if math.isfinite(v))
    n = len(xs)
    if not n:
        return []
    out = []
    p = step
    while p < 100.0 + 1e-9:
        rank = min(n - 1, max(0, math.ceil(p / 100.0 * n) - 1))
        out.append([round(p, 6), xs[rank]])
        p += step
    return out


def profile_view(profile: Any, file_id: str) -> dict[str, Any]:
    """One :class:`ilp.profile.Profile` as the page draws it: metadata, and per rate the
    percentiles of every metric and its distribution as a quantile curve ([percentile, value]
    pairs: from the raw samples when the profile kept them, else the stored percentiles)."""
    points = []
    for pt in profile.points:
        metrics = {}
        for name, s in pt.metrics.items():
            pct = {f"p{p:g}": _finite(v) for p, v in s.percentiles.items()}
            samples = pt.samples.get(name) or []
            if samples:
                quantiles, source = _quantiles(samples), "samples"
            else:
                ladder = sorted({**{50.0: s.median}, **s.percentiles}.items())
                quantiles = [[p, v] for p, v in ladder if _finite(v) is not None]
                source = "percentiles"
            metrics[name] = {"n": s.n, "mean": _finite(s.mean), "median": _finite(s.median),
                             "std": _finite(s.std), **pct, "quantiles": quantiles,
                             "quantiles_from": source}
        points.append({
            "rate_rpm": pt.rate_rpm, "achieved_rpm": _finite(pt.achieved_rpm),
            "requests": pt.requests, "completed": pt.completed, "failed": pt.failed,
            "request_throughput": _finite(pt.request_throughput),
            "output_throughput": _finite(pt.output_throughput),
            "goodput": _finite(pt.goodput), "mean_batch": _finite(pt.mean_batch),
            "saturated": pt.saturated, "metrics": metrics})
    return {
        "id": file_id, "label": profile.label, "engine": profile.engine, "model": profile.model,
        "gpu": profile.gpu, "mode": profile.mode, "workload": profile.workload,
        "arrival": profile.arrival, "saturation_rpm": _finite(profile.saturation_rpm),
        "capacity_rpm": _finite(profile.capacity_rpm), "slo": profile.slo,
        "source": profile.source, "notes": profile.notes, "points": points,
    }


def plan_view(plan: Any, file_id: str) -> dict[str, Any]:
    """One :class:`ilp.plan.Plan` as JSON (its own format) with the file it came from."""
    return {"id": file_id, **plan.to_json()}


def evaluation_view(data: dict[str, Any], file_id: str) -> dict[str, Any] | None:
    """An rlrouter evaluation (``training/evaluate.py``'s evaluate.json: per cluster, per
    router, per workload the mean score over test seeds), or None if ``data`` is not one."""
    tables = data.get("tables")
    if not isinstance(tables, dict) or not isinstance(data.get("workloads"), list):
        return None
    clusters = {}
    for cluster, routers in tables.items():
        if not isinstance(routers, dict):
            return None
        rows = {}
        for router, by_workload in routers.items():
            if not isinstance(by_workload, dict):
                return None
            rows[str(router)] = {
                str(w): {k: _finite(d.get(k)) for k in ("mean", "std", "min", "max")}
                for w, d in by_workload.items() if isinstance(d, dict)}
        clusters[str(cluster)] = rows
    layout = data.get("poster_layout") if isinstance(data.get("poster_layout"), dict) else {}
    return {"id": file_id, "workloads": [str(w) for w in data["workloads"]],
            "seeds": data.get("seeds"), "duration_s": _finite(data.get("duration_s")),
            "clusters": clusters,
            "poster_layout": {str(w): {str(r): {str(k): _finite(v) for k, v in cols.items()}
                                       for r, cols in rows.items() if isinstance(cols, dict)}
                              for w, rows in layout.items() if isinstance(rows, dict)}}


def _json_files(directory: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for f in sorted(files):
            if f.endswith(".json"):
                found.append(Path(root) / f)
                if len(found) >= MAX_FILES:
                    return found
    return found


def load_benchmarks(directories: Iterable[Path]) -> dict[str, Any]:
    """Every ILP profile and plan JSON file under ``directories`` (recursively), parsed with
    ilp's own types, and rlrouter evaluation results; other files are ignored, broken ones
    listed under ``skipped`` with the reason."""
    from ilp.plan import PLAN_KIND, Plan, PlanError
    from ilp.profile import Profile, ProfileError

    profiles, plans, evaluations, skipped, dirs = [], [], [], [], []
    for directory in directories:
        directory = Path(directory)
        dirs.append(str(directory))
        if not directory.is_dir():
            skipped.append({"file": str(directory), "error": "not a directory"})
            continue
        for path in _json_files(directory):
            file_id = f"{directory.name}/{path.relative_to(directory)}"
            try:
                if path.stat().st_size > MAX_FILE_BYTES:
                    skipped.append({"file": file_id, "error": "larger than 64 MiB"})
                    continue
                data = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                skipped.append({"file": file_id, "error": f"not readable JSON: {e}"})
                continue
            if not isinstance(data, dict):
                continue
            try:
                if data.get("kind") == PLAN_KIND:
                    plans.append(plan_view(Plan.from_json(data, file_id), file_id))
                elif "points" in data and "model" in data and "gpu" in data:
                    profiles.append(profile_view(Profile.from_json(data, file_id), file_id))
                elif (evaluation := evaluation_view(data, file_id)) is not None:
                    evaluations.append(evaluation)
            except (ProfileError, PlanError, KeyError, TypeError, ValueError) as e:
                skipped.append({"file": file_id, "error": str(e)})
    return {"directories": dirs, "profiles": profiles, "plans": plans,
            "evaluations": evaluations, "skipped": skipped}


class BenchmarkLibrary:
    """:func:`load_benchmarks` cached until a file under the directories changes (size or
    modification time), so polling the page costs a directory walk, not a parse."""

    def __init__(self, directories: Iterable[str | Path]) -> None:
        self.directories = [Path(d) for d in directories]
        self._signature: tuple | None = None
        self._body: bytes = b""

    def _current_signature(self) -> tuple:
        sig = []
        for d in self.directories:
            if not d.is_dir():
                sig.append((str(d), None))
                continue
            for p in _json_files(d):
                try:
                    st = p.stat()
                except OSError:
                    continue
                sig.append((str(p), st.st_mtime_ns, st.st_size))
        return tuple(sig)

    def body(self) -> bytes:
        """The JSON document (bytes), rebuilt only when the files changed. Blocking: run it in
        a thread from the event loop."""
        sig = self._current_signature()
        if sig != self._signature:
            self._body = json.dumps(load_benchmarks(self.directories),
                                    allow_nan=False).encode()
            self._signature = sig
        return self._body


def default_benchmark_dirs() -> list[Path]:
    """Without ``gateway.dashboard_data_dir``: the profiles shipped with ilp (examples)."""
    try:
        import ilp
    except ImportError:
        return []
    examples = Path(ilp.__file__).parent / "examples" / "profiles"
    return [examples] if examples.is_dir() else []
