"""``python -m ilp.solve --problem FILE``: the fewest instances (or least power or cost) that meet
every class's latency bound, with the dedicated and FCFS-multiplexed baselines computed by the
same model, a plan JSON the gateway's ``ilp`` router loads and a readable summary.

The last line is exactly::

    ilp: instances=<n> dedicated=<n> fcfs_multiplexed=<n> solver=<name> solve_s=<x>

where ``solve_s`` is the solver's time on the priority model (baselines are timed separately in
the summary). A baseline that cannot be met with the GPUs given prints as ``infeasible``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ilp.emit import EmitError, backends_toml
from ilp.model import FORMULATIONS, SOLVERS, InfeasibleProblem, solve, solver_version
from ilp.plan import plan_from_solution
from ilp.problem import ProblemError, load_problem


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ilp.solve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--problem", required=True, help="problem file (YAML or JSON)")
    p.add_argument("--solver", choices=SOLVERS, default="highs",
                   help="highs: HiGHS in process via highspy (default); cbc: PuLP's CBC binary")
    p.add_argument("--objective", choices=("instances", "power", "cost"),
                   help="override the problem's objective")
    p.add_argument("--formulation", choices=FORMULATIONS, default="aggregated",
                   help="aggregated: integer instance counts per GPU type and mode (default); "
                        "per-gpu: the paper's binary per GPU, with symmetry breaking")
    p.add_argument("--no-symmetry-breaking", action="store_true", help="(per-gpu only)")
    p.add_argument("--time-limit", type=float, help="seconds per solve")
    p.add_argument("--plan", "--plan-out", dest="plan_out",
                   help="write the plan JSON here (default results/ilp/plans/<problem>.json)")
    p.add_argument("--emit-gateway-config", metavar="FILE",
                   help="write the gateway's [[backends]] section for the plan ('-': stdout)")
    p.add_argument("--base-port", type=int, default=9201, help="first port of emulated backends")
    p.add_argument("--url-template", help="real backends: e.g. http://gpu-{index}:8000")
    p.add_argument("--time-scale", type=float, default=1.0, help="emulated backends' time scale")
    p.add_argument("--verify", type=int, default=0, metavar="SEEDS",
                   help="simulate the plan on the profiled instances with this many seeds")
    p.add_argument("--quiet", action="store_true", help="only the last line")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    say = (lambda *_: None) if args.quiet else print
    try:
        problem = load_problem(args.problem)
    except ProblemError as e:
        print(f"ilp.solve: {e}", file=sys.stderr)
        return 2
    if args.objective:
        problem.objective = args.objective
        if args.objective == "power" and any(m.power_w is None for m in problem.modes):
            print("ilp.solve: --objective power needs power_w on every mode", file=sys.stderr)
            return 2
    try:
        sol = solve(problem, "priority", args.solver, args.time_limit, args.formulation,
                    symmetry_breaking=not args.no_symmetry_breaking)
    except InfeasibleProblem as e:
        print(f"ilp.solve: {e}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as e:
        print(f"ilp.solve: {e}", file=sys.stderr)
        return 2
    baselines: dict[str, int | str] = {}
    timings = {}
    for approach, key in (("dedicated", "dedicated"), ("fcfs", "fcfs_multiplexed")):
        try:
            b = solve(problem, approach, args.solver, args.time_limit)
            baselines[key] = b.instances
            timings[key] = b.solve_s
        except InfeasibleProblem:
            baselines[key] = "infeasible"
    plan = plan_from_solution(problem, sol, {k: v for k, v in baselines.items() if isinstance(v, int)})
    out = Path(args.plan_out or f"results/ilp/plans/{problem.name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    plan.save(out)
    say(plan.summary())
    say(f"  model: {sol.formulation} formulation, {sol.variables} variables, {sol.constraints} "
        f"constraints; built in {sol.build_s:.3f} s; {solver_version(sol.solver)}; status "
        f"{sol.status}{'' if sol.optimal else ' (not proven optimal)'}")
    for key, v in baselines.items():
        t = f" (solved in {timings[key]:.3f} s)" if key in timings else ""
        say(f"  baseline {key}: {v} instance(s){t}")
    if isinstance(baselines.get("dedicated"), int) and baselines["dedicated"] > 0:
        saving = 1 - sol.instances / baselines["dedicated"]
        say(f"  multiplexing with priority saves {saving:.0%} of the dedicated instances")
    say(f"wrote {out}")
    if args.verify:
        from ilp.verify import verify_plan

        say(verify_plan(problem, plan, args.verify).summary())
    if args.emit_gateway_config:
        try:
            text = backends_toml(plan, base_port=args.base_port, url_template=args.url_template,
                                 time_scale=args.time_scale, plan_path=str(out))
        except EmitError as e:
            print(f"ilp.solve: --emit-gateway-config: {e}", file=sys.stderr)
            return 2
        if args.emit_gateway_config == "-":
            print(text)
        else:
            Path(args.emit_gateway_config).write_text(text + "\n")
            say(f"wrote {args.emit_gateway_config}")
    print(f"ilp: instances={sol.instances} dedicated={baselines['dedicated']} "
          f"fcfs_multiplexed={baselines['fcfs_multiplexed']} solver={sol.solver} "
          f"solve_s={sol.solve_s:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
