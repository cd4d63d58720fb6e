"""E2LLM with one of its ideas taken away — what each idea buys (``compare --ablations``).

E2LLM = GA grouping + DP layer split + PREFILL/DECODER roles. Each ablation removes one and keeps
the others, and every plan is scored by the same evaluator and served by the same (E2LLM)
scheduler, so a difference between E2LLM and an ablation is that idea's contribution:

``e2llm-no-ga``
    The baseline's grouping (:func:`~.baselines.simple_groups`: each group just holds the model),
    then E2LLM's roles for those groups: every assignment of prefill / decoder / both to the
    groups (those :attr:`SearchProblem.roles` allows) is scored by the evaluator and the best kept
    (``3^k`` assignments; above :data:`MAX_EXHAUSTIVE_GROUPS` groups, coordinate descent from
    all-``both``: each group's role in turn set to its best, until nothing changes). Layers: DP.
``e2llm-no-dp``
    The GA forms groups and roles, but every group's layers are split **evenly**
    (:func:`~e2llm_lite.split.even_split`) instead of by the DP: :class:`EvenSplitPlanner`. The
    devices in order of memory, largest first; the split is over all of them if every share fits,
    else over the largest ``m`` whose even shares fit (the rest left idle, as the DP may leave a
    device idle); a group where not even one device holds the model cannot be a replica.
``e2llm-no-roles``
    The GA's groups with every replica colocated (``roles=("both",)``): grouping and DP, no roles.
``e2llm-splitwise-roles``
    The GA's groups (of the full E2LLM plan) with the roles of Splitwise's provisioning
    (:func:`~.baselines.splitwise_roles`: rank by prompt / token suitability, best pool split).

Each function takes the arguments of :func:`~e2llm_lite.planning.make_plan` that matter and
returns a :class:`~.plan.Plan` whose ``strategy`` is the ablation's name.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..split import even_split
from . import baselines
from .ga import GAConfig, ga_search
from .plan import Plan
from .problem import SearchProblem, canonical
from .replica_planner import ReplicaPlanner, SolvedSplit

__all__ = ["ABLATIONS", "EvenSplitPlanner", "MAX_EXHAUSTIVE_GROUPS", "ablation_plan"]

ABLATIONS = ("e2llm-no-ga", "e2llm-no-dp", "e2llm-no-roles", "e2llm-splitwise-roles")
MAX_EXHAUSTIVE_GROUPS = 6  # 3^6 = 729 role assignments scored at most


class EvenSplitPlanner(ReplicaPlanner):
    """A :class:`ReplicaPlanner` that splits a group's layers evenly (over as many of its devices,
    largest memory first, as hold an even share; module docstring) instead of running the DP; the
    decode batch is the best the split holds (:meth:`ReplicaPlanner.best_batch`)."""

    def _solve(self, order: list[int], role: str, objective: str | None = None) -> SolvedSplit | None:
        order = sorted(order, key=lambda i: (-self.mem[i], i))
        idx = np.array(order, dtype=np.intp)
        self.dp_runs += 1
        for m in range(min(len(order), self.anatomy.n_layers), 0, -1):
            ranges = even_split(m, self.anatomy.n_layers)
            stages = tuple((k, s, e) for k, (s, e) in enumerate(ranges))
            best = self.best_batch(idx, role, stages)
            if best is not None:
                batch, figures = best
                return SolvedSplit(stages, batch, figures)
        return None

    def _replica(self, order, role, found, name):
        # _solve re-ordered the devices: map its positions through the same order
        return super()._replica(sorted(order, key=lambda i: (-self.mem[i], i)), role, found, name)


def _ga(problem: SearchProblem, seed: int, config: GAConfig | None, name: str, notes: str) -> Plan:
    grouping, fitness, hist = ga_search(problem, config or GAConfig(), seed=seed, progress=False,
                                        seeds=baselines.seed_groupings)
    return problem.to_plan(grouping, name, {"method": "ga", "seed": seed, "fitness": fitness,
                                            "ablation": name}, notes)


def _best_roles(problem: SearchProblem, groups) -> tuple:
    """The best role assignment of ``groups`` by the evaluator (module docstring)."""
    roles = problem.roles
    usable = [[r for r in roles if problem.can_serve(g, r)] for g in groups]
    if any(not u for u in usable):
        raise ValueError("a group of the simple grouping can take none of the allowed roles")
    if len(groups) <= MAX_EXHAUSTIVE_GROUPS:
        cands = (canonical(zip(groups, rs)) for rs in itertools.product(*usable))
        return min(cands, key=problem.score)
    current = ["both" if "both" in u else u[0] for u in usable]
    improved = True
    while improved:
        improved = False
        for k, u in enumerate(usable):
            def with_role(r, k=k):
                return canonical(zip(groups, current[:k] + [r] + current[k + 1:]))
            best = min(u, key=lambda r: problem.score(with_role(r)))
            if problem.score(with_role(best)) < problem.score(with_role(current[k])) * (1 - 1e-12):
                current[k] = best
                improved = True
    return canonical(zip(groups, current))


def ablation_plan(name: str, cluster, workload, rate: float, *, seed: int = 0, costmodel=None,
                  config: GAConfig | None = None, max_batch: int = 32) -> Plan:
    """The plan of ablation ``name`` (one of :data:`ABLATIONS`; module docstring) for
    ``workload`` (as :func:`~e2llm_lite.planning.make_plan` takes it) at ``rate`` requests/s."""
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; use one of {', '.join(ABLATIONS)}")
    problem = SearchProblem(cluster, workload, rate, costmodel=costmodel, max_batch=max_batch)
    problem.check_cluster()
    if name == "e2llm-no-ga":
        groups = baselines.simple_groups(problem)
        return problem.to_plan(_best_roles(problem, groups), name, {"rule": name},
                               "simple groups (no GA), E2LLM's best roles for them, DP splits")
    if name == "e2llm-no-roles":
        flat = SearchProblem(cluster, problem.stats, rate, costmodel=problem.cm, roles=("both",),
                             planner=problem.planner)
        return _ga(flat, seed, config, name, "GA groups, every replica prefill + decode (no roles), DP splits")
    if name == "e2llm-no-dp":
        planner = EvenSplitPlanner(cluster, problem.cm, problem.stats, max_batch=max_batch)
        even = SearchProblem(cluster, problem.stats, rate, planner=planner)
        return _ga(even, seed, config, name, "GA groups and roles, layers split evenly (no DP)")
    grouping, _, _ = ga_search(problem, config or GAConfig(), seed=seed, progress=False,
                               seeds=baselines.seed_groupings)
    groups = [g for g, _ in grouping]
    return problem.to_plan(baselines.splitwise_roles(problem, groups), name, {"rule": name, "seed": seed},
                           "the GA's groups, roles by Splitwise's provisioning, DP splits")
