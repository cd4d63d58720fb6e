"""Re-planning while serving: a new plan for the devices that are up, warm-started from the
current one (after a device failure or join, or when the workload shifted).

:func:`replan` builds the search problem on the devices up now, for the observed workload (the
scheduler's window of recent prompt / output lengths, as an empirical distribution) or, without
one, the current plan's; then

1. **Current**: the current plan's intact replicas (every device still up), scored as they are —
   the planner's predicted waiting of "keep serving with what is left" (``current_s``; inf if
   nothing is left). A replica whose devices cannot hold one request of the observed workload
   (its 90th-percentile prompt grew past what they hold) is left out of that score, not counted
   as breaking the plan: it still serves the shorter requests, so the score is pessimistic, but
   finite (before, one such replica scored the whole current plan 1e10 s, and every re-plan that
   followed one made for a small sample was adopted, a rolling change each time);
2. **Repair**: the intact replicas as they are, plus each broken replica's surviving devices
   re-split by the DP for its role (when they can hold the model) — only the broken replicas
   change;
3. **GA**: the GA warm-started with those two (and the baselines' groupings), with
   :data:`REPLAN_GA` (a quick GA: re-planning runs beside the service).

The repair is chosen when its predicted waiting is within ``prefer_repair`` (relative) of the
GA's: fewer replicas reloaded for about the same waiting ("DP for the broken replica only when that
suffices"). Predicted waiting is the planner's fitness (:meth:`SearchProblem.score`: the
queueing formula's mean waiting, penalised when a replica saturates). Strategies other than
``e2llm`` re-plan with their own rule (e.g. Splitwise's provisioning) on the devices up.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

from ..errors import InfeasiblePlan
from ..workload import LengthDist
from . import baselines
from .ga import GAConfig, ga_search
from .problem import SearchProblem, canonical
from .workload_stats import WorkloadStats, workload_stats

__all__ = ["REPLAN_GA", "Replanned", "replan"]

#: The GA of a re-plan: small and quick (it runs beside the service).
REPLAN_GA = GAConfig(population=20, generations=40, patience=10)


@dataclass
class Replanned:
    """A re-plan's answer: ``plan`` (None with ``error`` if the devices up cannot hold the
    model), its predicted mean waiting ``predicted_s`` and the current plan's ``current_s`` under
    the same workload and rate (s), ``how`` (``"repair"``, ``"ga"``, or the strategy's rule) and
    the wall seconds it took."""

    plan: object
    predicted_s: float = math.inf
    current_s: float = math.inf
    error: str = ""
    how: str = ""
    planning_s: float = 0.0


def _stats(plan, prompts, outputs, costmodel) -> WorkloadStats:
    if prompts is None or len(prompts) == 0:
        return plan.workload
    dist = LengthDist.from_pairs(list(prompts), list(outputs), name="observed")
    return workload_stats(dist, costmodel, name="observed")


def replan(cluster, devices, plan, *, rate_rps: float, prompts=None, outputs=None, seed: int = 0,
           config: GAConfig | None = None, costmodel=None, prefer_repair: float = 0.1) -> Replanned:
    """A new plan of ``cluster``'s ``devices`` (the names up now) replacing ``plan`` (module
    docstring), for ``rate_rps`` requests/s and the observed ``prompts`` / ``outputs`` lengths
    (tokens; None: the plan's workload)."""
    t0 = time.perf_counter()
    sub = cluster.subset(sorted(devices, key=cluster.names.index), name=cluster.name)
    try:
        stats = _stats(plan, prompts, outputs, costmodel)
        problem = SearchProblem(sub, stats, rate_rps, costmodel=costmodel)
        problem.check_cluster()
    except InfeasiblePlan as e:
        return Replanned(None, error=str(e), planning_s=time.perf_counter() - t0)
    index = {n: i for i, n in enumerate(problem.names)}
    intact = [r for r in plan.replicas if all(d in index for d in r.devices)]
    broken = [r for r in plan.replicas if r not in intact]
    current = canonical((tuple(index[d] for d in r.devices), r.role) for r in intact)
    holding = tuple(x for x in current if problem.planner.cached_plan(*x) is not None)
    current_s = problem.score(holding) if holding else math.inf
    if plan.strategy != "e2llm":
        try:
            new = _baseline(problem, plan.strategy)
        except InfeasiblePlan as e:
            return Replanned(None, current_s=current_s, error=str(e), planning_s=time.perf_counter() - t0)
        return Replanned(new, problem.score(_grouping(new, index)), current_s, how=plan.strategy,
                         planning_s=time.perf_counter() - t0)
    repaired = list(current)
    for r in broken:   # its survivors, re-split by the DP for its role, when they can hold it
        left = tuple(index[d] for d in r.devices if d in index)
        if left and problem.can_serve(left, r.role):
            repaired.append((left, r.role))
    repaired = canonical(repaired)
    repair_s = problem.score(repaired) if repaired else math.inf
    best, best_s, hist = ga_search(problem, config or REPLAN_GA, seed=seed,
                                   initial=[g for g in (current, repaired) if g],
                                   seeds=baselines.seed_groupings)
    search = {"method": "replan", "seed": seed, "evaluations": hist.evaluations[-1],
              "generations": hist.generations, "warm_start": True}
    if repaired and repair_s <= (1.0 + prefer_repair) * best_s:
        keep = [replace(r, name=f"k{k}") for k, r in enumerate(intact)]
        fresh = [problem.planner.plan(g, role, f"n{k}") for k, (g, role) in enumerate(repaired)
                 if (g, role) not in set(current)]
        new = problem.plan_from_replicas(keep + fresh, "e2llm", dict(search, how="repair"),
                                         "re-plan: the broken replicas re-split by the DP")
        how, new_s = "repair", repair_s
    else:
        new = problem.to_plan(best, "e2llm", dict(search, how="ga"),
                              "re-plan: GA warm-started from the current plan")
        how, new_s = "ga", best_s
    new.devices = list(cluster.names)
    return Replanned(new, new_s, current_s, how=how, planning_s=time.perf_counter() - t0)


def _baseline(problem: SearchProblem, strategy: str):
    make = {"splitwise": baselines.splitwise_plan, "pipeline": baselines.pipeline_plan,
            "exo": baselines.exo_plan, "colocated": baselines.colocated_plan}.get(strategy)
    if make is None:
        raise InfeasiblePlan(f"strategy {strategy!r} cannot re-plan")
    return make(problem)


def _grouping(plan, index):
    return canonical((tuple(index[d] for d in r.devices), r.role) for r in plan.replicas)
