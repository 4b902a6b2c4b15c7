"""``python -m ilp.suite``: the seeded suite of random problems derived from the paper's
profiles (:func:`ilp.generate.suite_problem`): instances the ILP needs with priority
multiplexing versus dedicated instances per class (the paper's Approach 1) and FCFS
multiplexing, all from the same model.

The last line is::

    ilp-suite: problems=<n> ilp_mean=<x> dedicated_mean=<x> fcfs_mean=<x> saving_vs_dedicated=<x%> solve_s=<x>

``saving_vs_dedicated`` is the mean over problems of ``1 - ilp / dedicated``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from ilp.generate import suite_problem
from ilp.model import InfeasibleProblem, solve
from ilp.problem import parse_problem


def run_suite(n: int = 100, seed: int = 0, engines: tuple[str, ...] = ("tgis", "vllm"),
              solver: str = "highs", progress: bool = True, mixed_models: bool = False,
              ) -> list[dict]:
    rows = []
    it = range(n)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="suite", unit="problem", leave=False)
    for k in it:
        data, profiles = suite_problem(k, seed, engines, mixed_models)
        problem = parse_problem(data, profiles=profiles)
        row = {"problem": k, "classes": len(problem.classes),
               "rate_rpm": round(problem.total_rate_rpm, 3)}
        t = 0.0
        for approach in ("priority", "dedicated", "fcfs"):
            try:
                s = solve(problem, approach, solver, time_limit=60, threads=1)
                row[approach] = s.instances
                row[f"{approach}_optimal"] = s.optimal
                t += s.solve_s
            except InfeasibleProblem:
                row[approach] = None
        row["solve_s"] = round(t, 4)
        rows.append(row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ilp.suite", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problems", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--engines", default="tgis,vllm",
                   help="which of the paper's profiles to offer as modes: tgis, vllm or both")
    p.add_argument("--mixed-models", action="store_true",
                   help="every class picks its own model (default: one model per problem)")
    p.add_argument("--solver", default="highs", choices=("highs", "cbc", "auto"))
    p.add_argument("--csv", help="per-problem results (default results/ilp/suite.csv)")
    p.add_argument("--verbose", action="store_true", help="a line per problem")
    args = p.parse_args(argv)
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    t0 = time.perf_counter()
    rows = run_suite(args.problems, args.seed, engines, args.solver, mixed_models=args.mixed_models)
    wall = time.perf_counter() - t0
    ok = [r for r in rows if r["priority"] is not None and r["dedicated"] is not None]
    bad = len(rows) - len(ok)
    if args.verbose:
        print(f"{'#':>3} {'classes':>7} {'RPM':>8} {'ILP':>4} {'dedicated':>9} {'fcfs':>5}")
        for r in rows:
            print(f"{r['problem']:>3} {r['classes']:>7} {r['rate_rpm']:>8.1f} {r['priority']!s:>4} "
                  f"{r['dedicated']!s:>9} {r['fcfs']!s:>5}")
    out = Path(args.csv or "results/ilp/suite.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    if not ok:
        print("ilp.suite: no problem was feasible", file=sys.stderr)
        return 1
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    ilp = mean([r["priority"] for r in ok])
    ded = mean([r["dedicated"] for r in ok])
    fc = [r["fcfs"] for r in ok if r["fcfs"] is not None]
    fcm = mean(fc) if fc else float("nan")
    saving = mean([1 - r["priority"] / r["dedicated"] for r in ok])
    saving_f = mean([1 - r["priority"] / r["fcfs"] for r in ok if r["fcfs"]]) if fc else float("nan")
    n_opt = sum(1 for r in ok if r.get("priority_optimal"))
    worse = sum(1 for r in ok if r["priority"] > r["dedicated"])
    print(f"suite of {len(rows)} problems (seed {args.seed}, paper profiles: {', '.join(engines)}, "
          f"{'a model per class' if args.mixed_models else 'one model per problem'}), "
          f"{bad} infeasible; {n_opt}/{len(ok)} priority solves proven optimal; wall {wall:.1f} s")
    print(f"  instances per problem (mean): ILP with priority {ilp:.2f}, dedicated {ded:.2f}, "
          f"FCFS multiplexed {fcm:.2f}")
    print(f"  ILP needs {saving:.1%} fewer instances than dedicated on average "
          f"(ratio of totals: {1 - sum(r['priority'] for r in ok) / sum(r['dedicated'] for r in ok):.1%}), "
          f"{saving_f:.1%} fewer than FCFS multiplexing; never more than dedicated: {worse == 0}")
    print(f"  per-problem results: {out}")
    print(f"ilp-suite: problems={len(ok)} ilp_mean={ilp:.2f} dedicated_mean={ded:.2f} "
          f"fcfs_mean={fcm:.2f} saving_vs_dedicated={saving:.1%} "
          f"solve_s={sum(r['solve_s'] for r in rows):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
