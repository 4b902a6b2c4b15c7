"""Turning the experiment's raw runs into the table, JSON, CSV, plots and the last line (sans-IO
except the file writers)."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from netem.workload import POSTER_CLASSES

TCP = "tcp"
CLASS_ORDER = [c.name for c in POSTER_CLASSES]
SHORT = {"realtime": "rt", "free": "free", "bulk": "bulk"}


@dataclass(slots=True)
class ClassSummary:
    scheduler: str
    cls: str
    requests: int  # over all seeds
    on_time: int
    completed: int  # echoed correctly, in time or late (before the cutoff)
    bound: int  # the fluid bound's count, summed over seeds
    completion: float  # mean over seeds of on_time / requests
    completion_sd: float
    latency_ms: float | None  # mean over seeds of the mean latency of completed requests
    latency_sd_ms: float | None
    p95_latency_ms: float | None  # pooled over seeds
    of_bound: float | None  # on_time / bound (pooled)


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(runs: list[dict[str, Any]], bounds: dict[int, dict[str, int]]
              ) -> list[ClassSummary]:
    """One row per (scheduler, class), over seeds."""
    out = []
    schedulers = list(dict.fromkeys(r["scheduler"] for r in runs))
    for sched in schedulers:
        mine = [r for r in runs if r["scheduler"] == sched]
        for cls in CLASS_ORDER:
            rates, lat_means, lats = [], [], []
            n = on_time = completed = bound = 0
            for r in mine:
                reqs = [q for q in r["requests"] if q["cls"] == cls]
                if not reqs:
                    continue
                ok = [q for q in reqs if q["ok"]]
                ot = [q for q in ok if q["latency"] <= q["deadline"]]
                n += len(reqs)
                on_time += len(ot)
                completed += len(ok)
                bound += bounds.get(r["seed"], {}).get(cls, 0)
                rates.append(len(ot) / len(reqs))
                if ok:
                    lat_means.append(statistics.fmean(q["latency"] for q in ok) * 1000)
                    lats += [q["latency"] * 1000 for q in ok]
            if not n:
                continue
            c, c_sd = _mean_sd(rates)
            lm, l_sd = _mean_sd(lat_means) if lat_means else (None, None)
            p95 = sorted(lats)[min(len(lats) - 1, int(0.95 * len(lats)))] if lats else None
            out.append(ClassSummary(sched, cls, n, on_time, completed, bound, c, c_sd, lm, l_sd,
                                    p95, on_time / bound if bound else None))
    return out


def bound_rates(bounds: dict[int, dict[str, int]], counts: dict[int, dict[str, int]]
                ) -> dict[str, float]:
    """Per class: the bound as a completion rate (pooled over seeds)."""
    out = {}
    for cls in CLASS_ORDER:
        b = sum(bounds[s].get(cls, 0) for s in bounds)
        n = sum(counts[s].get(cls, 0) for s in counts)
        if n:
            out[cls] = b / n
    return out


def rt_completion(rows: list[ClassSummary]) -> dict[str, float]:
    return {r.scheduler: r.completion for r in rows if r.cls == "realtime"}


def last_line(profile: str, rows: list[ClassSummary], bound_rt: float) -> str:
    rt = rt_completion(rows)

    def f(name: str) -> str:
        return f"{rt[name]:.3f}" if name in rt else "na"

    if rt:
        best = max(rt, key=lambda k: (rt[k], k != TCP))
        best_s = f"{best}:{rt[best]:.3f}"
    else:
        best_s = "na"
    return (f"netem {profile}: rt_completion edf={f('edf')} rr={f('rr')} tcp={f(TCP)} "
            f"best={best_s} bound={bound_rt:.3f}")


def format_table(rows: list[ClassSummary], bound_by_class: dict[str, float],
                 reference: dict[str, float] | None = None) -> str:
    def pct(x: float | None) -> str:
        return "   -  " if x is None or math.isnan(x) else f"{x * 100:5.1f}%"

    head = f"{'scheduler':<10}"
    for cls in CLASS_ORDER:
        head += f" | {cls + ' done':>13} {'lat ms':>12} {'/bound':>6}"
    lines = [head, "-" * len(head)]
    bline = f"{'bound':<10}"
    for cls in CLASS_ORDER:
        bline += f" | {pct(bound_by_class.get(cls)):>13} {'':>12} {'':>6}"
    lines.append(bline)
    if reference and any(reference.get(c, 1.0) < bound_by_class.get(c, 1.0) for c in reference):
        rline = f"{'ref':<10}"
        for cls in CLASS_ORDER:
            rline += f" | {pct(reference.get(cls)):>13} {'':>12} {'':>6}"
        lines.append(rline)
    by = {(r.scheduler, r.cls): r for r in rows}
    for sched in dict.fromkeys(r.scheduler for r in rows):
        line = f"{sched:<10}"
        for cls in CLASS_ORDER:
            r = by.get((sched, cls))
            if r is None:
                line += f" | {'':>13} {'':>12} {'':>6}"
                continue
            done = f"{pct(r.completion)}±{r.completion_sd * 100:4.1f}"
            lat = ("-" if r.latency_ms is None
                   else f"{r.latency_ms:6.0f}±{r.latency_sd_ms:<4.0f}")
            line += f" | {done:>13} {lat:>12} {pct(r.of_bound):>6}"
        lines.append(line)
    return "\n".join(lines)


def write_csv(path: Path, rows: list[ClassSummary]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ClassSummary.__slots__))
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))


def write_requests_csv(path: Path, runs: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scheduler", "seed", "id", "cls", "offset_s", "deadline_s", "latency_s",
                    "ok", "on_time", "status", "error"])
        for r in runs:
            for q in r["requests"]:
                on_time = q["ok"] and q["latency"] <= q["deadline"]
                w.writerow([r["scheduler"], r["seed"], q["id"], q["cls"], f"{q['offset']:.6f}",
                            q["deadline"], "" if q["latency"] is None else f"{q['latency']:.6f}",
                            int(q["ok"]), int(on_time), q["status"], q["error"] or ""])


def plot(out_dir: Path, title: str, rows: list[ClassSummary], runs: list[dict[str, Any]],
         bound_by_class: dict[str, float]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    schedulers = list(dict.fromkeys(r.scheduler for r in rows))
    by = {(r.scheduler, r.cls): r for r in rows}
    palette = plt.get_cmap("tab10").colors
    color = {s: palette[i % len(palette)] for i, s in enumerate(schedulers)}
    paths = []

    fig, ax = plt.subplots(figsize=(10, 4.8))
    width = 0.8 / max(1, len(schedulers))
    for i, sched in enumerate(schedulers):
        xs, ys, es = [], [], []
        for j, cls in enumerate(CLASS_ORDER):
            r = by.get((sched, cls))
            if r is None:
                continue
            xs.append(j + (i - (len(schedulers) - 1) / 2) * width)
            ys.append(r.completion * 100)
            es.append(r.completion_sd * 100)
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=sched, color=color[sched],
               hatch="//" if sched == TCP else None)
    for j, cls in enumerate(CLASS_ORDER):
        if cls in bound_by_class:
            ax.hlines(bound_by_class[cls] * 100, j - 0.45, j + 0.45, colors="k",
                      linestyles="dashed", label="bound" if j == 0 else None)
    ax.set_xticks(range(len(CLASS_ORDER)), [f"{c}" for c in CLASS_ORDER])
    ax.set_ylabel("completed within deadline (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"{title}: completion per class")
    ax.legend(ncol=5, fontsize=8, loc="lower left")
    fig.tight_layout()
    p = out_dir / "completion.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)

    fig, axes = plt.subplots(1, len(CLASS_ORDER), figsize=(14, 4.2))
    for ax, cls in zip(axes, CLASS_ORDER, strict=True):
        deadline = None
        for sched in schedulers:
            lats = sorted(q["latency"] * 1000 for r in runs if r["scheduler"] == sched
                          for q in r["requests"] if q["cls"] == cls and q["ok"])
            total = sum(1 for r in runs if r["scheduler"] == sched
                        for q in r["requests"] if q["cls"] == cls)
            for r in runs:
                for q in r["requests"]:
                    if q["cls"] == cls:
                        deadline = q["deadline"] * 1000
            if lats and total:
                ys = [(i + 1) / total for i in range(len(lats))]
                ax.step(lats, ys, where="post", label=sched, color=color[sched],
                        linestyle="--" if sched == TCP else "-")
        if deadline:
            ax.axvline(deadline, color="k", linewidth=0.8, linestyle=":")
        ax.set_title(f"{cls}")
        ax.set_xlabel("latency (ms)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of requests completed")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"{title}: latency CDFs (dotted: deadline; curves end at the fraction completed)")
    fig.tight_layout()
    p = out_dir / "latency_cdf.png"
    fig.savefig(p, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths
