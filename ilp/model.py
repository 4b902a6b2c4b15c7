"""The provisioning ILP (the paper's model, in PuLP) and its two baselines, built by one code path.

Paper (per GPU i, mode j, class u; ``G_ij`` binary, ``X_uij`` rates)::

    minimise   sum_ij G_ij                       (or power, or cost)
    s.t.       sum_j G_ij <= 1                   one mode per GPU
               sum_ij X_uij = Q_u                every class's rate is served
               sum_u X_uij <= A_ij G_ij          the mode's operating rate
               f_ij(sum_{k <= u} X_kij) <= L_u   latency of u depends on the load at or above it

Because ``f_ij`` is nondecreasing, the last line is the linear ``sum_{k <= u} X_kij <=
C_ij(L_u) G_ij`` (:mod:`ilp.capacity`), so the whole model is a MILP.

Default formulation (``aggregated``): identical GPUs are interchangeable, so instead of one binary
per GPU and mode we use one integer ``n_p`` per *pool* (GPU type, mode) and the pool's total class
rates ``Y_up``. This is exact: the latency constraints are linear per instance, so spreading a
pool's load evenly over its ``n_p`` instances is feasible whenever any uneven split is, and the
evenly split solution is what the plan deploys. It has no symmetry between identical GPUs at all
and its size does not grow with the number of GPUs. The paper's per-GPU binary model is kept
(``per-gpu``) with symmetry breaking (GPUs of a type are used in order, in nonincreasing mode
index) to cross-check it.

The same builder gives the baselines by changing what a pool may hold:

* ``priority`` (the paper's approach 2): a pool per (GPU type, mode); every class may use it;
  per priority level ``l``: ``sum of Y of classes at levels <= l <= C(L_l) n`` (the cumulative
  sums are chained through auxiliary variables so the model stays sparse).
* ``fcfs`` (multiplexing without priority): all classes on an instance see the same latency
  ``f(total load)``, so an instance's load is limited by the tightest class it holds. Pools are
  (GPU type, mode, level): instances of level ``c`` hold only classes whose capacity is at least
  ``c`` and carry at most ``c`` in total. Exact, and still aggregated.
* ``dedicated`` (approach 1): a pool per (GPU type, mode, class) holding only that class.

Capacity from a class whose own bound cannot be met in a mode even at the lowest measured rate is
0: it is not placed there, and its constraint is dropped for that mode (it carries no load
there). Otherwise every class's constraint applies in every pool, as in the paper; when a
class's priority does not follow its bound this is conservative (it also binds where the class
is absent).

Sans-IO: builds a :class:`pulp.LpProblem` and reads the solution; the solver runs in process
(HiGHS through highspy) unless CBC is asked for.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pulp

from ilp.problem import GPUType, Klass, Mode, Problem

APPROACHES = ("priority", "fcfs", "dedicated")
FORMULATIONS = ("aggregated", "per-gpu")
SOLVERS = ("highs", "cbc", "auto")
EPS = 1e-7


class InfeasibleProblem(RuntimeError):
    """No plan meets every bound with the GPUs given; the message says what binds."""


@dataclass(slots=True)
class Level:
    classes: list[Klass]
    cap_rpm: float  # the cumulative load up to this level may not exceed cap * n


@dataclass(slots=True)
class Pool:
    gpu_type: GPUType
    mode: Mode
    tag: str  # "" for priority pools, the level for fcfs, the class for dedicated
    levels: list[Level]

    @property
    def classes(self) -> list[Klass]:
        return [c for lv in self.levels for c in lv.classes]

    @property
    def key(self) -> str:
        return f"{self.mode.key}" + (f"[{self.tag}]" if self.tag else "")


@dataclass(slots=True)
class PoolResult:
    pool: Pool
    count: int
    load_rpm: dict[str, float]  # total over the pool's instances, per class


@dataclass(slots=True)
class Solution:
    approach: str
    objective: str
    formulation: str
    status: str
    optimal: bool
    objective_value: float
    instances: int
    solver: str
    solve_s: float
    build_s: float
    pools: list[PoolResult] = field(default_factory=list)
    variables: int = 0
    constraints: int = 0
    # per-GPU formulation: one entry per used GPU (gpu type, index, mode, per-class loads)
    gpus: list[tuple[GPUType, int, Mode, dict[str, float]]] = field(default_factory=list)


def make_solver(name: str = "highs", time_limit: float | None = None, msg: bool = False,
                threads: int | None = None) -> tuple[pulp.LpSolver, str]:
    """The PuLP solver and its display name. ``highs`` is HiGHS in process (``pulp.HiGHS``
    over highspy, no executable); ``cbc`` is the CBC binary PuLP ships; ``auto`` takes HiGHS
    when highspy imports, else CBC."""
    if name not in SOLVERS:
        raise ValueError(f"unknown solver {name!r} (choose from {', '.join(SOLVERS)})")
    if name in ("highs", "auto"):
        s = pulp.HiGHS(msg=msg, timeLimit=time_limit, threads=threads)
        if s.available():
            return s, "HiGHS"
        if name == "highs":
            raise RuntimeError("HiGHS is not available (pip install highspy)")
    s = pulp.COIN_CMD(msg=msg, timeLimit=time_limit, threads=threads)
    if not s.available():
        import warnings

        with warnings.catch_warnings():  # PuLP 3 deprecates its bundled binary; use it anyway
            warnings.simplefilter("ignore", DeprecationWarning)
            s = pulp.PULP_CBC_CMD(msg=msg, timeLimit=time_limit, threads=threads)
    if not s.available():
        raise RuntimeError("CBC is not available (pip install 'pulp[cbc]')")
    return s, "CBC"


def solver_version(display: str) -> str:
    if display == "HiGHS":
        try:
            import highspy

            h = highspy.Highs()
            return f"HiGHS {h.version()} (in process, highspy)"
        except Exception:  # version lookup only
            return "HiGHS (in process, highspy)"
    return "CBC (PuLP's bundled binary)"


# -- pools ---------------------------------------------------------------------------------------

def build_pools(problem: Problem, approach: str) -> list[Pool]:
    if approach not in APPROACHES:
        raise ValueError(f"unknown approach {approach!r} (choose from {', '.join(APPROACHES)})")
    pools: list[Pool] = []
    for g in problem.gpu_types:
        for m in g.modes:
            usable = [c for c in problem.classes if problem.capacity(c, m) > EPS]
            if not usable:
                continue
            if approach == "priority":
                by_level: dict[int, list[Klass]] = {}
                for c in usable:
                    by_level.setdefault(c.priority, []).append(c)
                levels = [Level(cs, min(problem.capacity(c, m) for c in cs))
                          for _, cs in sorted(by_level.items())]
                pools.append(Pool(g, m, "", levels))
            elif approach == "fcfs":
                caps = sorted({round(problem.capacity(c, m), 9) for c in usable})
                for cap in caps:
                    members = [c for c in usable if problem.capacity(c, m) >= cap - 1e-9]
                    pools.append(Pool(g, m, f"fcfs<={cap:g}rpm", [Level(members, cap)]))
            else:
                for c in usable:
                    pools.append(Pool(g, m, c.name, [Level([c], problem.capacity(c, m))]))
    return pools


def _check_servable(problem: Problem) -> None:
    for c in problem.classes:
        caps = [(problem.capacity(c, m), m) for m in problem.modes if problem.eligible(c, m)]
        if not caps or max(cap for cap, _ in caps) <= EPS:
            best = min((m.curves[(c.metric, c.stat)].latency_ms(0.0), m.key)
                       for _, m in caps) if caps else None
            hint = (f"; the lowest latency any mode measures is {best[0] / 1e3:.3g} s on {best[1]}"
                    if best else "")
            stat = c.stat if c.stat == "mean" else f"p{c.stat:g}"
            raise InfeasibleProblem(
                f"class {c.name!r}: {stat} {c.metric} <= {c.bound_ms / 1e3:g} s cannot be met in "
                f"any mode{hint}")


def _objective_coef(problem: Problem, g: GPUType, m: Mode) -> float:
    if problem.objective == "power":
        return float(m.power_w or 0.0)
    if problem.objective == "cost":
        return g.hourly_cost
    return 1.0


def solve(problem: Problem, approach: str = "priority", solver: str = "highs",
          time_limit: float | None = None, formulation: str = "aggregated", msg: bool = False,
          symmetry_breaking: bool = True, threads: int | None = None) -> Solution:
    if formulation not in FORMULATIONS:
        raise ValueError(f"unknown formulation {formulation!r} (choose from {', '.join(FORMULATIONS)})")
    _check_servable(problem)
    if formulation == "per-gpu":
        if approach != "priority":
            raise ValueError("the per-gpu formulation models the priority approach only")
        return _solve_per_gpu(problem, solver, time_limit, msg, symmetry_breaking, threads)
    t0 = time.perf_counter()
    pools = build_pools(problem, approach)
    lp = pulp.LpProblem(f"{problem.name}_{approach}", pulp.LpMinimize)
    n: list[pulp.LpVariable] = []
    y: list[dict[str, pulp.LpVariable]] = []
    by_type: dict[str, list[int]] = {}
    for pi, p in enumerate(pools):
        ub = _pool_upper_bound(problem, p)
        n.append(lp.add_variable(f"n_{pi}", 0, ub, cat=pulp.LpInteger))
        y.append({c.name: lp.add_variable(f"y_{pi}_{ci}", 0, c.rate_rpm)
                  for ci, c in enumerate(p.classes)})
        by_type.setdefault(p.gpu_type.name, []).append(pi)
    lp += pulp.lpSum(_objective_coef(problem, p.gpu_type, p.mode) * n[pi]
                     for pi, p in enumerate(pools))
    # Every class's rate is served.
    for ci, c in enumerate(problem.classes):
        lp += (pulp.lpSum(y[pi][c.name] for pi in range(len(pools)) if c.name in y[pi])
               == c.rate_rpm, f"demand_{ci}")
    # Latency (capacity) constraints, cumulative over priority levels, and the mode's rate.
    for pi, p in enumerate(pools):
        if len(p.levels) == 1:
            lv = p.levels[0]
            lp += (pulp.lpSum(y[pi][c.name] for c in lv.classes) <= lv.cap_rpm * n[pi], f"cap_{pi}")
            continue
        prev = None
        for li, lv in enumerate(p.levels):
            s = lp.add_variable(f"s_{pi}_{li}", 0)
            own = pulp.lpSum(y[pi][c.name] for c in lv.classes)
            lp += (s == (own + prev if prev is not None else own), f"cum_{pi}_{li}")
            lp += (s <= lv.cap_rpm * n[pi], f"cap_{pi}_{li}")
            prev = s
        lp += (prev <= p.mode.rate_cap_rpm * n[pi], f"rate_{pi}")
    # GPU counts, with MIG slices using up part of their parent GPU.
    _count_constraints(problem, lp, lambda t: [(n[pi], 1) for pi in by_type.get(t, [])])
    # A valid cut: every instance carries at most the highest operating rate.
    amax = max(p.mode.rate_cap_rpm for p in pools)
    if problem.objective == "instances":
        lp += (pulp.lpSum(n) >= math.ceil(problem.total_rate_rpm / amax - 1e-9), "lb_instances")
    build_s = time.perf_counter() - t0
    display, status, solve_s = _solve(lp, problem, approach, solver, time_limit, msg, threads)
    results = []
    for pi, p in enumerate(pools):
        cnt = int(round(n[pi].value() or 0))
        loads = {k: max(0.0, v.value() or 0.0) for k, v in y[pi].items()}
        loads = {k: v for k, v in loads.items() if v > 1e-6}
        if cnt > 0 or loads:
            results.append(PoolResult(p, cnt, loads))
    return Solution(
        approach=approach, objective=problem.objective, formulation=formulation, status=status,
        optimal=lp.sol_status == pulp.LpSolutionOptimal,
        objective_value=float(pulp.value(lp.objective) or 0.0),
        instances=sum(r.count for r in results), solver=display, solve_s=solve_s, build_s=build_s,
        pools=results, variables=lp.numVariables(), constraints=lp.numConstraints())


def _pool_upper_bound(problem: Problem, p: Pool) -> int | None:
    """A pool never needs more instances than carrying all its classes' rate at its tightest
    positive capacity takes, nor more than its GPU type has."""
    tight = min(lv.cap_rpm for lv in p.levels)
    need = math.ceil(sum(c.rate_rpm for c in p.classes) / tight - 1e-9) if tight > EPS else 0
    avail = _type_limit(problem, p.gpu_type)
    return need if avail is None else min(need, avail)


def _type_limit(problem: Problem, g: GPUType) -> int | None:
    limits = []
    if g.count is not None:
        limits.append(g.count)
    if g.parent is not None:
        parent = next(t for t in problem.gpu_types if t.name == g.parent)
        if parent.count is not None:
            limits.append(parent.count * g.per_parent)
    return min(limits) if limits else None


def _count_constraints(problem: Problem, lp: pulp.LpProblem, terms) -> None:
    """``terms(type name)`` -> [(variable, weight)] of instances of that type."""
    for ti, g in enumerate(problem.gpu_types):
        own = terms(g.name)
        if g.count is not None and own:
            lp += (pulp.lpSum(v * w for v, w in own) <= g.count, f"count_{ti}")
        children = [c for c in problem.gpu_types if c.parent == g.name]
        if children and g.count is not None:
            lcm = 1
            for c in children:
                lcm = lcm * c.per_parent // math.gcd(lcm, c.per_parent)
            expr = [v * (w * lcm) for v, w in own]
            for c in children:
                expr += [v * (w * lcm // c.per_parent) for v, w in terms(c.name)]
            if expr:
                lp += (pulp.lpSum(expr) <= g.count * lcm, f"partition_{ti}")


def _solve(lp: pulp.LpProblem, problem: Problem, approach: str, solver: str,
           time_limit: float | None, msg: bool, threads: int | None) -> tuple[str, str, float]:
    """Solve ``lp`` in place; returns (solver name, status, seconds). A problem with no feasible
    plan raises :class:`InfeasibleProblem` saying what to change."""
    s, display = make_solver(solver, time_limit, msg, threads)
    t1 = time.perf_counter()
    lp.solve(s)
    solve_s = time.perf_counter() - t1
    status = pulp.LpStatus[lp.status]
    if lp.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        raise InfeasibleProblem(_infeasible_message(problem, approach, status))
    return display, status, solve_s


def _infeasible_message(problem: Problem, approach: str, status: str) -> str:
    gpus = ", ".join(f"{g.name} x{g.count if g.count is not None else '(partitions)'}"
                     for g in problem.gpu_types)
    return (f"{approach}: no plan meets every bound with the GPUs given ({gpus}); solver status "
            f"{status}. Add GPUs, modes with higher rates, or relax the tightest bounds.")


# -- the paper's per-GPU formulation ---------------------------------------------------------

def _solve_per_gpu(problem: Problem, solver: str, time_limit: float | None, msg: bool,
                   symmetry_breaking: bool, threads: int | None) -> Solution:
    if any(g.parent is not None for g in problem.gpu_types):
        raise ValueError("the per-gpu formulation does not model MIG partitions; use aggregated")
    if any(g.count is None for g in problem.gpu_types):
        raise ValueError("the per-gpu formulation needs a count for every GPU type")
    t0 = time.perf_counter()
    lp = pulp.LpProblem(f"{problem.name}_per_gpu", pulp.LpMinimize)
    G: dict[tuple[int, int], pulp.LpVariable] = {}
    X: dict[tuple[str, int, int], pulp.LpVariable] = {}
    gpus: list[tuple[GPUType, int]] = []
    for g in problem.gpu_types:
        for k in range(g.count):
            gpus.append((g, k))
    obj = []
    for i, (g, _k) in enumerate(gpus):
        for j, m in enumerate(g.modes):
            usable = [c for c in problem.classes if problem.capacity(c, m) > EPS]
            if not usable:
                continue
            G[i, j] = lp.add_variable(f"G_{i}_{j}", 0, 1, cat=pulp.LpBinary)
            obj.append(_objective_coef(problem, g, m) * G[i, j])
            for ci, c in enumerate(usable):
                X[c.name, i, j] = lp.add_variable(f"X_{ci}_{i}_{j}", 0, c.rate_rpm)
            levels: dict[int, list[Klass]] = {}
            for c in usable:
                levels.setdefault(c.priority, []).append(c)
            cum: list[Klass] = []
            for li, (_lvl, cs) in enumerate(sorted(levels.items())):
                cum = cum + cs
                cap = min(problem.capacity(c, m) for c in cs)
                lp += (pulp.lpSum(X[c.name, i, j] for c in cum) <= cap * G[i, j], f"lat_{i}_{j}_{li}")
            lp += (pulp.lpSum(X[c.name, i, j] for c in usable) <= m.rate_cap_rpm * G[i, j], f"rate_{i}_{j}")
    lp += pulp.lpSum(obj)
    for i, (g, _k) in enumerate(gpus):
        modes_i = [G[i, j] for j in range(len(g.modes)) if (i, j) in G]
        if modes_i:
            lp += (pulp.lpSum(modes_i) <= 1, f"one_mode_{i}")
    for ci, c in enumerate(problem.classes):
        lp += (pulp.lpSum(v for (cn, _i, _j), v in X.items() if cn == c.name) == c.rate_rpm, f"demand_{ci}")
    if symmetry_breaking:
        # Identical GPUs are used in order, in nonincreasing mode index (0 = unused).
        for i in range(len(gpus) - 1):
            (g1, _), (g2, _) = gpus[i], gpus[i + 1]
            if g1.name != g2.name:
                continue
            v1 = pulp.lpSum((j + 1) * G[i, j] for j in range(len(g1.modes)) if (i, j) in G)
            v2 = pulp.lpSum((j + 1) * G[i + 1, j] for j in range(len(g2.modes)) if (i + 1, j) in G)
            lp += (v1 >= v2, f"sym_{i}")
    build_s = time.perf_counter() - t0
    display, status, solve_s = _solve(lp, problem, "priority", solver, time_limit, msg, threads)
    used = []
    for (i, j), v in G.items():
        if (v.value() or 0) > 0.5:
            g, k = gpus[i]
            m = g.modes[j]
            loads = {cn: X[cn, ii, jj].value() or 0.0 for (cn, ii, jj) in X if ii == i and jj == j}
            used.append((g, k, m, {cn: x for cn, x in loads.items() if x > 1e-6}))
    return Solution(
        approach="priority", objective=problem.objective, formulation="per-gpu", status=status,
        optimal=lp.sol_status == pulp.LpSolutionOptimal,
        objective_value=float(pulp.value(lp.objective) or 0.0), instances=len(used),
        solver=display, solve_s=solve_s, build_s=build_s, variables=lp.numVariables(),
        constraints=lp.numConstraints(), gpus=used)
