"""Evaluate the learned router against the baselines on held-out workload seeds.

    .venv/bin/python training/evaluate.py              # full: test seeds, both clusters, network table
    .venv/bin/python training/evaluate.py --quick      # < 60 s: fewer seeds, shorter runs
    .venv/bin/python training/evaluate.py --trace azure.csv
    .venv/bin/python training/evaluate.py --tune-slackfit   # re-derive the tuned slackfit baselines' margins and reserve

Every router runs the same arrivals (same cluster, workload and seed) in the same simulator.
``dqn`` is every shipped policy ``rlrouter/policies/dqn_seed*.npz`` (one per training seed),
each run on every test seed; its figure is the mean over training seeds, with the spread over
training seeds. Baselines' spreads are over test seeds. Writes JSON, CSV and a PNG plot to
``--out-dir``; the last line printed is::

    evaluate: stable dqn=<x> best_baseline=<name>:<x> unpredictable dqn=<x> best_baseline=<name>:<x>
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from quicgw.core.classes import DEFAULT_CLASS_TABLE
from rlrouter.evaluation import TEST_SEEDS, VALIDATION_SEEDS, Scenario, evaluate, mean_score
from rlrouter.network import NETWORK_SCHEDULERS
from rlrouter.policy import NumpyQPolicy
from rlrouter.routers import DQNRouter, SlackFitRouter, baseline_routers

ROOT = Path(__file__).resolve().parents[1]
POLICY_DIR = ROOT / "rlrouter" / "policies"
WORKLOADS = ("stable", "unpredictable")
POSTER_ROUTERS = ("static-large", "static-medium", "slackfit", "slackfit-tuned", "slackfit-class",
                  "slackfit-reserve", "dqn")


def policy_files(pattern: str | None) -> list[Path]:
    if pattern:
        files = ([Path(f) for f in sorted(glob.glob(pattern))] if any(c in pattern for c in "*?[")
                 else [Path(pattern)])
    else:
        files = sorted(POLICY_DIR.glob("dqn_seed*.npz")) or [POLICY_DIR / "dqn.npz"]
    if not files or not all(f.exists() for f in files):
        raise SystemExit(f"no policy files ({pattern or POLICY_DIR}); train with training/train_dqn.py --ship")
    return files


def router_factories(policies: list[NumpyQPolicy]) -> dict[str, list[Callable]]:
    """name -> one factory per variant (dqn: one per training seed; baselines: one)."""
    names = list(baseline_routers())
    out: dict[str, list[Callable]] = {n: [lambda n=n: baseline_routers()[n]] for n in names}
    out["dqn"] = [lambda p=p: DQNRouter(p) for p in policies]
    return out


def run_table(factories: dict[str, list[Callable]], scenarios: dict[str, Scenario],
              seeds: tuple[int, ...], only: tuple[str, ...] | None = None) -> dict:
    table: dict[str, dict[str, dict]] = {}
    for wname, sc in scenarios.items():
        for rname, variants in factories.items():
            if only and rname not in only:
                continue
            per_variant = []
            runs = []
            for make in variants:
                res = evaluate(make, sc, seeds)
                per_variant.append(mean_score(res))
                runs.append([r.as_dict() for r in res])
            scores = [r["score"] for v in runs for r in v]
            spread_src = per_variant if len(per_variant) > 1 else scores
            table.setdefault(rname, {})[wname] = {
                "mean": float(np.mean(per_variant)),
                "std": float(np.std(spread_src)),
                "min": float(np.min(spread_src)),
                "max": float(np.max(spread_src)),
                "spread_over": "training seeds" if len(per_variant) > 1 else "test seeds",
                "per_variant": per_variant,
                "model_share": _mean_share(runs),
                "attainment": _mean_attainment(runs),
            }
    return table


def _mean_share(runs: list[list[dict]]) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for v in runs:
        for r in v:
            for m, s in r["model_share"].items():
                acc.setdefault(m, []).append(s)
    return {m: float(np.mean(s)) for m, s in acc.items()}


def _mean_attainment(runs: list[list[dict]]) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for v in runs:
        for r in v:
            for c, d in r["per_class"].items():
                acc.setdefault(c, []).append(d["attainment"])
    return {c: float(np.mean(s)) for c, s in acc.items()}


def best_baseline(table: dict, workload: str) -> tuple[str, float]:
    cands = [(n, d[workload]["mean"]) for n, d in table.items() if n != "dqn" and workload in d]
    return max(cands, key=lambda x: x[1])


def format_table(table: dict, workloads: list[str], title: str) -> str:
    lines = [title, f"{'router':<16}" + "".join(f"{w:>34}" for w in workloads)]
    for rname, row in table.items():
        cells = []
        for w in workloads:
            d = row.get(w)
            cells.append(f"{d['mean']:.4f} ± {d['std']:.4f} [{d['min']:.3f},{d['max']:.3f}]"
                         if d else "-")
        lines.append(f"{rname:<16}" + "".join(f"{c:>34}" for c in cells))
    for w in workloads:
        if "dqn" in table and w in table["dqn"]:
            name, x = best_baseline(table, w)
            lines.append(f"  {w}: dqn / best baseline ({name}) = {table['dqn'][w]['mean'] / x:.3f}")
    return "\n".join(lines)


def poster_table(factories, workloads, seeds, duration, link: dict) -> dict:
    """The poster's layout: routers x network schedulers, per workload."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for w in workloads:
        for sched in NETWORK_SCHEDULERS:
            sc = Scenario("poster", w, duration, network=dict(link, scheduler=sched))
            for rname in POSTER_ROUTERS:
                scores = [mean_score(evaluate(make, sc, seeds)) for make in factories[rname]]
                out.setdefault(w, {}).setdefault(rname, {})[sched] = float(np.mean(scores))
    return out


def format_poster(pt: dict) -> str:
    lines = []
    for w, rows in pt.items():
        lines.append(f"poster layout, {w} workload (score; columns: network scheduler)")
        lines.append(f"{'router':<16}" + "".join(f"{s:>10}" for s in NETWORK_SCHEDULERS))
        for r, cols in rows.items():
            lines.append(f"{r:<16}" + "".join(f"{cols[s]:>10.3f}" for s in NETWORK_SCHEDULERS))
    return "\n".join(lines)


def write_outputs(out_dir: Path, result: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluate.json").write_text(json.dumps(result, indent=1))
    with (out_dir / "evaluate.csv").open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["cluster", "workload", "router", "mean", "std", "min", "max", "spread_over"])
        for cluster, table in result["tables"].items():
            for rname, row in table.items():
                for w, d in row.items():
                    wr.writerow([cluster, w, rname, f"{d['mean']:.5f}", f"{d['std']:.5f}",
                                 f"{d['min']:.5f}", f"{d['max']:.5f}", d["spread_over"]])
        for w, rows in result.get("poster_layout", {}).items():
            for r, cols in rows.items():
                for s, x in cols.items():
                    wr.writerow([f"poster+{s}", w, r, f"{x:.5f}", "", "", "", "network"])
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    tables = result["tables"]
    fig, axes = plt.subplots(1, len(tables), figsize=(7 * len(tables), 4.5), squeeze=False)
    for ax, (cluster, table) in zip(axes[0], tables.items(), strict=True):
        names = list(table)
        ws = [w for w in result["workloads"] if all(w in table[n] for n in names)]
        x = np.arange(len(names))
        width = 0.8 / max(1, len(ws))
        for k, w in enumerate(ws):
            means = [table[n][w]["mean"] for n in names]
            errs = [table[n][w]["std"] for n in names]
            ax.bar(x + k * width, means, width, yerr=errs, label=w, capsize=2)
        ax.set_xticks(x + width * (len(ws) - 1) / 2, names, rotation=35, ha="right")
        ax.set_ylabel("score (weighted quality within deadline)")
        ax.set_title(f"cluster: {cluster}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "evaluate.png", dpi=110)
    plt.close(fig)


def tune_slackfit(duration: float) -> None:
    """Grid-search slackfit's reserve on the validation seeds (never the test seeds): one margin
    for all classes (slackfit-tuned), then one per class by coordinate ascent from it
    (slackfit-class), then the best model's reservation for the top class (slackfit-reserve)."""
    grid = [float(m) for m in np.round(np.arange(0.0, 0.9, 0.05), 2)]

    def validation(margins: tuple[float, ...], reserve: float | None = None) -> float:
        return float(np.mean([mean_score(evaluate(lambda: SlackFitRouter(margins, reserve),
                                                  Scenario("poster", w, duration), VALIDATION_SEEDS))
                              for w in WORKLOADS]))

    scores = {m: validation((m,)) for m in grid}
    for m, x in scores.items():
        print(f"margin {m:.2f}: mean validation score {x:.4f}", flush=True)
    single = max(scores, key=scores.get)
    print(f"best single margin {single:.2f} ({scores[single]:.4f}): TUNED_MARGIN", flush=True)
    n_classes = len(DEFAULT_CLASS_TABLE)  # the workloads' classes

    def ascend(params: list, choices: list[list], best: float) -> tuple[list, float]:
        """Coordinate ascent: two passes, one parameter at a time over its grid."""
        for _ in range(2):
            for k, grid_k in enumerate(choices):
                for v in grid_k:
                    trial = params[:k] + [v] + params[k + 1:]
                    x = validation(tuple(trial[:n_classes]), *trial[n_classes:])
                    if x > best + 1e-6:
                        params, best = trial, x
                        print(f"  {trial}: {best:.4f}", flush=True)
        return params, best

    margins, best = ascend([single] * n_classes, [grid] * n_classes, scores[single])
    print(f"best per-class margins {'/'.join(f'{v:.2f}' for v in margins)} ({best:.4f}): "
          f"TUNED_CLASS_MARGINS", flush=True)
    # The reservation changes which margins are best: tune them together, from slackfit-class.
    reserves = [None, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    joint, best_r = ascend([*margins, None], [grid] * n_classes + [reserves], best)
    print(f"best with reservation: margins {'/'.join(f'{v:.2f}' for v in joint[:n_classes])} "
          f"reserve {joint[-1]} ({best_r:.4f}): TUNED_RESERVE_MARGINS, TUNED_RESERVE; set them "
          f"in rlrouter/routers.py")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 test seeds, 120 s runs, no network table")
    ap.add_argument("--policies", default=None, help="policy file or glob (default: shipped seeds)")
    ap.add_argument("--seeds", type=int, default=None, help="number of test seeds")
    ap.add_argument("--duration", type=float, default=None, help="simulated seconds per run")
    ap.add_argument("--clusters", nargs="+", default=None, help="default: poster unseen (quick: poster)")
    ap.add_argument("--trace", type=Path, default=None, help="also replay this CSV trace")
    ap.add_argument("--network-table", action=argparse.BooleanOptionalAction, default=None,
                    help="the poster's routers x network schedulers table (default: on unless --quick)")
    ap.add_argument("--link", default="rate_mbps=10,delay_ms=50,loss=0.005",
                    help="network link for the poster table, k=v,...")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "results" / "rlrouter")
    ap.add_argument("--tune-slackfit", action="store_true")
    args = ap.parse_args(argv)

    if args.tune_slackfit:
        tune_slackfit(args.duration or 150.0)
        return 0
    t0 = time.perf_counter()
    n_seeds = args.seeds or (2 if args.quick else len(TEST_SEEDS))
    seeds = tuple(TEST_SEEDS[:n_seeds]) if n_seeds <= len(TEST_SEEDS) else tuple(
        range(TEST_SEEDS[0], TEST_SEEDS[0] + n_seeds))
    duration = args.duration or (120.0 if args.quick else 300.0)
    clusters = args.clusters or (["poster"] if args.quick else ["poster", "unseen"])
    files = policy_files(args.policies)
    policies = [NumpyQPolicy.load(f) for f in files]
    factories = router_factories(policies)
    workloads = list(WORKLOADS)
    print(f"policies: {', '.join(str(f.relative_to(ROOT)) if f.is_absolute() and ROOT in f.parents else str(f) for f in files)}")
    print(f"test seeds {seeds}, {duration:.0f} s per run")

    result: dict = {"seeds": list(seeds), "duration_s": duration, "workloads": workloads,
                    "policies": [str(f) for f in files], "tables": {}}
    for cluster in clusters:
        scenarios = {w: Scenario(cluster, w, duration) for w in workloads}
        if args.trace is not None:
            scenarios["trace"] = Scenario(cluster, "trace", duration, trace=str(args.trace))
        table = run_table(factories, scenarios, seeds)
        result["tables"][cluster] = table
        print(format_table(table, list(scenarios), f"\ncluster {cluster}: score, mean ± std [min,max]"),
              flush=True)
    if args.trace is not None:
        result["workloads"].append("trace")
    if args.network_table if args.network_table is not None else not args.quick:
        link = {k: float(v) for k, v in (kv.split("=") for kv in args.link.split(",") if kv)}
        pt = poster_table(factories, workloads, seeds[:2], min(duration, 150.0), link)
        result["poster_layout"] = pt
        result["link"] = link
        print("\n" + format_poster(pt))
    result["seconds"] = time.perf_counter() - t0
    write_outputs(args.out_dir, result)
    print(f"\nwrote {args.out_dir}/evaluate.{{json,csv,png}} in {result['seconds']:.0f} s")
    main_table = result["tables"][clusters[0]]
    parts = []
    for w in WORKLOADS:
        name, x = best_baseline(main_table, w)
        parts.append(f"{w} dqn={main_table['dqn'][w]['mean']:.4f} best_baseline={name}:{x:.4f}")
    print("evaluate: " + " ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
