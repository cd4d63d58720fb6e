"""Planning: who serves what.

The DP splits a replica's layers (:mod:`.dp`, on arrays built by :mod:`.arrays`); the replica
planner turns a device group + role into a planned replica (:mod:`.replica_planner` ->
:mod:`.replica_plan`, with the workload's figures from :mod:`.workload_stats` and the memory
reserve of :mod:`.reserve`); the evaluator predicts the waiting time of a set of replicas
(:mod:`.queueing`); the search space is :mod:`.problem`; the GA forms the groups and roles
(:mod:`.ga`), the exhaustive and random searches referee it (:mod:`.search`), and the baselines
(:mod:`.baselines`) are what it is compared with. :func:`make_plan` is the one entry point;
:class:`~.plan.Plan` is ``plan.json``.
"""

from __future__ import annotations

import time

from . import baselines
from .ga import GAConfig, ga_search
from .plan import PLAN_FORMAT, PLAN_VERSION, STRATEGIES, Plan
from .problem import SearchProblem
from .replica_plan import ROLES, ReplicaPlan, SplitFigures
from .replica_planner import ReplicaPlanner, plan_replica
from .search import exhaustive_search, random_search
from .workload_stats import WorkloadStats, workload_stats

__all__ = [
    "PLAN_FORMAT", "PLAN_VERSION", "ROLES", "STRATEGIES", "Plan", "ReplicaPlan", "ReplicaPlanner",
    "SearchProblem", "SplitFigures", "WorkloadStats", "exhaustive_search", "make_plan",
    "plan_e2llm", "plan_replica", "random_search", "workload_stats",
]


def plan_e2llm(problem: SearchProblem, *, seed: int = 0, config: GAConfig | None = None,
               progress: bool | None = None):
    """The GA's plan for ``problem``, its first population seeded with the baselines' groupings:
    ``(Plan, History)``."""
    cfg = config or GAConfig()
    grouping, fitness, hist = ga_search(problem, cfg, seed=seed, progress=progress,
                                        seeds=baselines.seed_groupings)
    search = {"method": "ga", "seed": seed, "fitness": fitness, "evaluations": hist.evaluations[-1],
              "generations": hist.generations, "stopped_early": hist.stopped_early,
              "seconds": round(hist.seconds, 3), "roles": list(problem.roles),
              "max_replica_devices": problem.max_size, "population": cfg.resolved(problem.n).population,
              "history": {"best": hist.best, "mean": hist.mean, "median": hist.median,
                          "evaluations": hist.evaluations}}
    plan = problem.to_plan(grouping, "e2llm", search,
                           "GA over device groups and roles, DP inside every group")
    return plan, hist


def make_plan(cluster, strategy: str = "e2llm", workload="conv", rate: float = 1.0, *, seed: int = 0,
              costmodel=None, progress: bool | None = None, config: GAConfig | None = None,
              roles=ROLES, objective: str = "waiting", mixed_pool: bool = True,
              max_replica_devices: int = 8, max_batch: int = 32,
              problem: SearchProblem | None = None) -> Plan:
    """Plan ``cluster`` for ``workload`` (``"code"``, ``"conv"``, a Workload, a WorkloadStats) at
    ``rate`` requests/s with ``strategy`` (``e2llm`` = the GA, or a baseline: ``splitwise``,
    ``pipeline``, ``exo``, ``colocated``). Every strategy is scored by the same evaluator.

    Raises InfeasiblePlan when the cluster cannot hold the model (one clear sentence with the
    memory figures) and ValueError for an unknown strategy.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    t0 = time.perf_counter()
    if problem is None:
        problem = SearchProblem(cluster, workload, rate, costmodel=costmodel, roles=roles,
                                objective=objective, max_replica_devices=max_replica_devices,
                                max_batch=max_batch)
    problem.check_cluster()
    if strategy == "e2llm":
        plan, _ = plan_e2llm(problem, seed=seed, config=config, progress=progress)
    elif strategy == "splitwise":
        plan = baselines.splitwise_plan(problem, mixed_pool=mixed_pool)
    elif strategy == "pipeline":
        plan = baselines.pipeline_plan(problem)
    elif strategy == "exo":
        plan = baselines.exo_plan(problem)
    else:
        plan = baselines.colocated_plan(problem)
    plan.search.setdefault("seconds", round(time.perf_counter() - t0, 3))
    return plan
