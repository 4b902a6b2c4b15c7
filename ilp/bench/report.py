"""Writing a sweep out: profile JSON, CSV tables, and plots a person can read."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from ilp.profile import METRICS, Profile, RequestRecord
from ilp.stats import PERCENTILES, ecdf


def _pw(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p)


def write_points_csv(profile: Profile, path: Path) -> None:
    cols = ["rate_rpm", "achieved_rpm", "requests", "completed", "failed", "request_throughput",
            "output_throughput", "request_goodput", "mean_batch", "queue_slope", "saturated"]
    for m in METRICS:
        cols += [f"mean_{m}", f"ci_lo_mean_{m}", f"ci_hi_mean_{m}"]
        for p in PERCENTILES:
            cols += [f"p{_pw(p)}_{m}", f"ci_lo_p{_pw(p)}_{m}", f"ci_hi_p{_pw(p)}_{m}"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for pt in profile.points:
            row = [pt.rate_rpm, round(pt.achieved_rpm, 4), pt.requests, pt.completed, pt.failed,
                   pt.request_throughput, pt.output_throughput, pt.goodput, pt.mean_batch,
                   pt.queue_slope, pt.saturated]
            for m in METRICS:
                s = pt.metrics.get(m)
                if s is None:
                    row += [""] * (3 + 3 * len(PERCENTILES))
                    continue
                row += [_f(s.mean), _f(s.mean_ci[0]), _f(s.mean_ci[1])]
                for p in PERCENTILES:
                    ci = s.percentile_ci.get(p, (math.nan, math.nan))
                    row += [_f(s.percentiles.get(p, math.nan)), _f(ci[0]), _f(ci[1])]
            w.writerow(row)


def write_requests_csv(records: dict[float, list[RequestRecord]], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rate_rpm", "class", "instance", "arrival_s", "ok", "input_tokens",
                    "output_tokens", "ttft_s", "e2el_s", "queue_s", "server_queue_s",
                    "server_e2el_s", "error"])
        for rate, recs in sorted(records.items()):
            for r in recs:
                w.writerow([rate, r.klass or "", r.instance or "", round(r.arrival_s, 4), int(r.ok),
                            r.input_tokens, r.output_tokens, _f(r.ttft_s), _f(r.e2el_s),
                            _f(r.queue_s), _f(r.server_queue_s), _f(r.server_e2el_s), r.error])


def _f(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return f"{x:.6g}"


def plot_cdfs(series: Sequence[tuple[str, Sequence[float]]], path: Path, title: str,
              xlabel: str = "end-to-end latency (s, model time)",
              bounds: Sequence[tuple[str, float]] = ()) -> None:
    """One empirical CDF per labelled sample set (the paper's Figures 2, 8 and 9)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cmap = plt.get_cmap("viridis")
    n = max(1, len(series))
    for k, (label, values) in enumerate(series):
        if not values:
            continue
        xs, ys = ecdf(values)
        ax.step(xs, ys, where="post", label=label, color=cmap(k / max(1, n - 1)) if n > 3 else None)
    for label, x in bounds:
        ax.axvline(x, linestyle="--", linewidth=1, color="grey")
        ax.text(x, 0.02, f" {label}", rotation=90, va="bottom", fontsize=8, color="grey")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.01)
    ax.grid(True, alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right", ncol=2 if n > 8 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_profile(profile: Profile, path: Path, metric: str = "e2el_ms") -> None:
    """Latency percentiles (p95 with its confidence interval) and throughput vs offered rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [p for p in profile.points if metric in p.metrics]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    rates = [p.rate_rpm for p in pts]
    for pc in PERCENTILES:
        ys = [p.metrics[metric].percentiles.get(pc, math.nan) / 1e3 for p in pts]
        if pc == 95.0:
            lo = [y - p.metrics[metric].percentile_ci.get(pc, (math.nan,) * 2)[0] / 1e3
                  for y, p in zip(ys, pts, strict=True)]
            hi = [p.metrics[metric].percentile_ci.get(pc, (math.nan,) * 2)[1] / 1e3 - y
                  for y, p in zip(ys, pts, strict=True)]
            ax.errorbar(rates, ys, yerr=[[max(0, v) for v in lo], [max(0, v) for v in hi]],
                        marker="o", capsize=3, label=f"p{_pw(pc)} (95% CI)")
        else:
            ax.plot(rates, ys, marker=".", label=f"p{_pw(pc)}")
    ax.plot(rates, [p.metrics[metric].mean / 1e3 for p in pts], "k--", label="mean")
    if profile.saturation_rpm:
        ax.axvline(profile.saturation_rpm, color="red", linestyle=":", label="saturation")
    ax.set_xlabel("offered rate (requests per minute)")
    ax.set_ylabel(f"{metric.removesuffix('_ms')} (s, model time)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{profile.label}: latency percentiles", fontsize=10)
    ax2.plot(rates, [p.achieved_rpm for p in pts], "o-", label="completed (achieved)")
    ax2.plot(rates, rates, "k:", label="offered")
    for p in pts:
        if p.saturated:
            ax2.plot([p.rate_rpm], [p.achieved_rpm], "rx", markersize=10)
    if profile.saturation_rpm:
        ax2.axvline(profile.saturation_rpm, color="red", linestyle=":", label="saturation")
    ax2.set_xlabel("offered rate (requests per minute)")
    ax2.set_ylabel("requests per minute")
    ax2.grid(True, alpha=0.3)
    ax2.legend(fontsize=8)
    ax2.set_title("throughput (x: saturated)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_sweep(profile: Profile, records: dict[float, list[RequestRecord]], out: Path,
                plots: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "profile.json", out / "points.csv", out / "requests.csv"]
    profile.save(paths[0])
    write_points_csv(profile, paths[1])
    write_requests_csv(records, paths[2])
    if plots:
        t0, t1 = profile.warmup_s, (profile.duration_s or 0) - profile.cooldown_s
        series = []
        for rate, recs in sorted(records.items()):
            vals = [r.e2el_s for r in recs if r.ok and r.e2el_s is not None and t0 <= r.arrival_s < t1]
            series.append((f"{rate:g} RPM", vals))
        cdf = out / "cdf_e2el.png"
        plot_cdfs(series, cdf, f"{profile.label}: e2e latency CDF per offered rate\n"
                               f"(first {profile.warmup_s / 60:g} and last "
                               f"{profile.cooldown_s / 60:g} min of each run dropped)")
        pct = out / "percentiles.png"
        plot_profile(profile, pct)
        paths += [cdf, pct]
    return paths
