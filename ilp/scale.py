"""``python -m ilp.scale --classes 50 --gpus 64 --modes 8``: solve a seeded random problem of
that size (see :func:`ilp.generate.scale_problem`) and time the solver.

The last line is exactly::

    ilp-scale: classes=<n> gpus=<n> modes=<n> solve_s=<x> optimal=<true|false>

``solve_s`` is the solver's wall time on the priority model (HiGHS in process by default); the
time to build the model and derive capacities is printed above it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from ilp.generate import scale_problem
from ilp.model import FORMULATIONS, SOLVERS, InfeasibleProblem, solve, solver_version
from ilp.problem import parse_problem


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ilp.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=50)
    p.add_argument("--gpus", type=int, default=64)
    p.add_argument("--modes", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--solver", choices=SOLVERS, default="highs")
    p.add_argument("--formulation", choices=FORMULATIONS, default="aggregated")
    p.add_argument("--objective", choices=("instances", "power", "cost"), default="instances")
    p.add_argument("--time-limit", type=float, default=60.0)
    p.add_argument("--threads", type=int, default=1,
                   help="solver threads (default 1: the machine is shared)")
    p.add_argument("--write", metavar="DIR", help="also write the problem and its profiles here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        data, profiles = scale_problem(args.classes, args.gpus, args.modes, args.seed)
    except ValueError as e:
        print(f"ilp.scale: {e}", file=sys.stderr)
        return 2
    data["objective"] = args.objective
    if args.write:
        out = Path(args.write)
        out.mkdir(parents=True, exist_ok=True)
        (out / "problem.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        for name, prof in profiles.items():
            prof.save(out / f"{name}.json")
    problem = parse_problem(data, profiles=profiles)
    gen_s = time.perf_counter() - t0
    n_modes = sum(len(g.modes) for g in problem.gpu_types)
    print(f"problem {data['name']}: {len(problem.classes)} classes "
          f"({problem.total_rate_rpm:.0f} RPM in all), {args.gpus} GPUs in "
          f"{len(problem.gpu_types)} types, {n_modes} GPU modes; generated in {gen_s:.3f} s")
    try:
        sol = solve(problem, "priority", args.solver, args.time_limit, args.formulation,
                    threads=args.threads)
    except InfeasibleProblem as e:
        print(f"ilp.scale: {e}", file=sys.stderr)
        print(f"ilp-scale: classes={args.classes} gpus={args.gpus} modes={args.modes} "
              f"solve_s=nan optimal=false")
        return 1
    print(f"  {sol.formulation} formulation: {sol.variables} variables, {sol.constraints} "
          f"constraints, capacities + model built in {sol.build_s:.3f} s")
    print(f"  {solver_version(sol.solver)}: status {sol.status}, "
          f"{'optimal' if sol.optimal else 'not proven optimal'}, objective "
          f"{sol.objective_value:g} ({sol.instances} instances) in {sol.solve_s:.3f} s")
    by_type: dict[str, int] = {}
    for r in sol.pools:
        by_type[r.pool.gpu_type.name] = by_type.get(r.pool.gpu_type.name, 0) + r.count
    for g, n in by_type.items():
        print(f"    {g}: {n} instance(s)")
    print(f"ilp-scale: classes={args.classes} gpus={args.gpus} modes={args.modes} "
          f"solve_s={sol.solve_s:.3f} optimal={'true' if sol.optimal else 'false'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
