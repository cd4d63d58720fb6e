"""The search space shared by the GA, the exhaustive referee, random search and the baselines.

A **grouping** is a set of disjoint device groups, each with a role; devices in no group are
unused. :class:`SearchProblem` holds everything needed to score one: the cluster, the workload
figures, the arrival rate, the :class:`~e2llm_lite.planning.replica.ReplicaPlanner` (DP results
cached per group and role) and the evaluator (:func:`~e2llm_lite.planning.evaluate.predict`), with
a cache of scores per grouping. ``evaluations`` counts *distinct* groupings scored — the unit in
which the GA and random search are compared.

A grouping is written canonically as a sorted tuple of ``(sorted device indices, role)``, so two
ways of writing the same plan are one entry in every cache.

:func:`exhaustive_search` is the referee for small clusters (at most 8 devices): it scores every
set of disjoint groups that can each hold the model, with every role per group — nothing is
pruned except groups that cannot hold the model for their role (those are not replicas), so its
answer is the optimum of the search space. :func:`random_search` draws random groupings (the GA's
initialiser + repair) for the GA-vs-random comparison at equal evaluations.
"""

from __future__ import annotations

import math
import time
from typing import Iterable, Sequence

import numpy as np

from ..costmodel import CostModel
from ..errors import ConfigError, InfeasiblePlan
from .evaluate import OBJECTIVES, PENALTY_S, Prediction, predict
from .plan import Plan
from .replica import DEFAULT_MAX_BATCH, ROLES, ReplicaPlanner, WorkloadStats, workload_stats

__all__ = [
    "DEFAULT_MAX_REPLICA_DEVICES",
    "MAX_EXHAUSTIVE_DEVICES",
    "SearchProblem",
    "exhaustive_search",
    "random_search",
]

#: Largest group the GA and the exhaustive search form (the DP stays exact and fast: ~16 ms).
DEFAULT_MAX_REPLICA_DEVICES = 8

#: Largest cluster :func:`exhaustive_search` accepts.
MAX_EXHAUSTIVE_DEVICES = 8

Grouping = tuple  # tuple of (tuple[int, ...], role), sorted


def canonical(groups: Iterable) -> Grouping:
    """The canonical form of ``groups`` (iterable of (devices, role)); empty groups dropped."""
    return tuple(sorted((tuple(sorted(int(d) for d in g)), role) for g, role in groups if len(g)))


class SearchProblem:
    """Everything needed to score groupings of one cluster for one workload and rate.

    Args:
        cluster: a :class:`~e2llm_lite.devices.Cluster`.
        workload: a :class:`WorkloadStats`, a Workload / LengthDist, or ``"code"`` / ``"conv"``.
        rate: arrival rate, requests/s.
        costmodel: default: the shipped reference profile.
        roles: the roles a replica may take (default all three: prefill, decoder, both).
        objective: ``"waiting"`` (mean waiting time, default) or ``"ttft"``.
        max_replica_devices: largest group (default 8).
        max_batch: largest decode batch (default 32).
    """

    def __init__(self, cluster, workload="conv", rate: float = 1.0, *, costmodel: CostModel | None = None,
                 roles: Sequence[str] = ROLES, objective: str = "waiting",
                 max_replica_devices: int = DEFAULT_MAX_REPLICA_DEVICES,
                 max_batch: int = DEFAULT_MAX_BATCH, planner: ReplicaPlanner | None = None):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise ConfigError(f"rate must be a finite number of requests/s > 0, got {rate!r}")
        roles = tuple(roles)
        if not roles or any(r not in ROLES for r in roles) or len(set(roles)) != len(roles):
            raise ValueError(f"roles must be distinct values from {ROLES}, got {roles!r}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
        if isinstance(max_replica_devices, bool) or not isinstance(max_replica_devices, int) \
                or max_replica_devices < 1:
            raise ValueError(f"max_replica_devices must be an integer >= 1, got {max_replica_devices!r}")
        self.cluster = cluster
        self.cm = costmodel or (planner.cm if planner else CostModel.load())
        if planner is None:
            stats = workload if isinstance(workload, WorkloadStats) else workload_stats(workload, self.cm)
            planner = ReplicaPlanner(cluster, self.cm, stats, max_batch=max_batch)
        self.planner = planner
        self.stats = planner.stats
        self.rate = float(rate)
        self.roles = roles
        self.objective = objective
        self.max_size = max_replica_devices
        self.n = len(cluster.devices)
        self.mem = planner.mem.copy()
        self.names = planner.names
        self._scores: dict[Grouping, float] = {}
        self.evaluations = 0

    # ---- feasibility --------------------------------------------------------------------------
    def replica(self, group: Sequence[int], role: str, name: str = "r0"):
        """The group's ReplicaPlan for ``role``, or None if it cannot hold the model."""
        return self.planner._try(tuple(sorted(int(d) for d in group)), role, name)

    def can_serve(self, group: Sequence[int], role: str) -> bool:
        return len(group) > 0 and self.replica(group, role) is not None

    def roughly_fits(self, group: Sequence[int], role: str) -> bool:
        """Whether some split of the model fits the group's memory for ``role`` (exact, no DP:
        :meth:`ReplicaPlanner.fits_memory`)."""
        return self.planner.fits_memory(tuple(int(d) for d in group), role)

    def check_cluster(self) -> None:
        """Raise InfeasiblePlan (with the figures) when no group of at most
        ``max_replica_devices`` devices (the largest-memory ones) can hold one replica of any
        allowed role."""
        everything = tuple(range(self.n))
        best = tuple(sorted(sorted(everything, key=lambda i: (-self.mem[i], i))[: self.max_size]))
        for role in self.roles:  # the exact memory test, no DP: a split fits iff it passes
            if self.roughly_fits(best, role):
                return
        a = self.planner.anatomy
        total = float(self.mem.sum()) / 2 ** 20
        need = self.planner.weights / 2 ** 20
        raise InfeasiblePlan(
            f"cluster {self.cluster.name!r} cannot hold the model: its {self.n} devices have "
            f"{total:.1f} MiB in total (largest {self.mem.max() / 2 ** 20:.1f} MiB); one replica "
            f"needs {need:.1f} MiB of weights (30 layers x {a.layer_bytes / 2 ** 20:.1f} MiB + "
            f"embedding + lm_head copy) plus room for the KV cache of the workload "
            f"({self.stats.name}: {self.stats.context_tokens} tokens x "
            f"{a.n_layers * a.kv_bytes_per_token_layer / 2 ** 10:.0f} KiB per sequence) — "
            f"add devices or memory")

    # ---- scoring ------------------------------------------------------------------------------
    def replicas(self, grouping: Grouping) -> list | None:
        out = []
        for k, (g, role) in enumerate(grouping):
            rp = self.planner._try(g, role, f"r{k}")
            if rp is None:
                return None
            out.append(rp)
        return out

    def score(self, grouping: Grouping) -> float:
        """Fitness of a canonical grouping (lower is better); cached; counts evaluations."""
        f = self._scores.get(grouping)
        if f is None:
            self.evaluations += 1
            reps = self.replicas(grouping) if grouping else None
            if not reps:
                f = PENALTY_S * (1.0 + 1e6)
            else:
                f = predict(reps, self.stats, self.rate, objective=self.objective).fitness
            self._scores[grouping] = f
        return f

    def predict(self, grouping: Grouping, with_handoff: bool = True) -> Prediction:
        reps = self.replicas(grouping)
        if not reps:
            raise InfeasiblePlan("a group of this grouping cannot hold the model for its role")
        return predict(reps, self.stats, self.rate, objective=self.objective,
                       cluster=self.cluster if with_handoff else None)

    def to_plan(self, grouping: Grouping, strategy: str, search: dict | None = None,
                notes: str = "") -> Plan:
        """The :class:`Plan` of a grouping (replicas ordered prefill, both, decoder; named r0..)."""
        order = {"prefill": 0, "both": 1, "decoder": 2}
        ordered = sorted(grouping, key=lambda gr: (order[gr[1]], gr[0]))
        reps = [self.planner.plan(g, role, f"r{k}") for k, (g, role) in enumerate(ordered)]
        return self.plan_from_replicas(reps, strategy, search, notes)

    def plan_from_replicas(self, reps: list, strategy: str, search: dict | None = None,
                           notes: str = "") -> Plan:
        pred = predict(reps, self.stats, self.rate, objective=self.objective, cluster=self.cluster)
        search = dict(search or {})
        search.setdefault("objective", self.objective)
        return Plan(strategy=strategy, cluster=self.cluster.name, replicas=list(reps),
                    workload=self.stats, rate=self.rate, predicted=pred.to_dict(), search=search,
                    devices=list(self.names), notes=notes)


# --------------------------------------------------------------------------------------------
# exhaustive search (the referee)
# --------------------------------------------------------------------------------------------


def exhaustive_search(problem: SearchProblem, *, progress: bool | None = None) -> tuple[Grouping, float, dict]:
    """The optimum over every grouping of a cluster of at most 8 devices.

    Enumeration: first every non-empty subset of at most ``max_replica_devices`` devices is
    tried for every allowed role (the DP plans it; subsets that cannot hold the model are dropped:
    they are not replicas). Then every collection of pairwise disjoint (subset, role) blocks is
    scored (devices in no block are unused): a depth-first walk over the devices in index order
    where the lowest undecided device is either left unused or opens one of the blocks whose
    lowest device it is. Each collection is met exactly once.

    Returns ``(grouping, fitness, info)`` with info = {"blocks", "groupings", "seconds"}.
    Raises ValueError above :data:`MAX_EXHAUSTIVE_DEVICES` devices and InfeasiblePlan when no
    grouping is feasible at all.
    """
    n = problem.n
    if n > MAX_EXHAUSTIVE_DEVICES:
        raise ValueError(f"exhaustive search is for at most {MAX_EXHAUSTIVE_DEVICES} devices, "
                         f"the cluster has {n}; use the GA")
    t0 = time.perf_counter()
    by_low: list[list[tuple[int, tuple[int, ...], str]]] = [[] for _ in range(n)]
    n_blocks = 0
    for mask in range(1, 1 << n):
        members = tuple(i for i in range(n) if mask >> i & 1)
        if len(members) > problem.max_size:
            continue
        for role in problem.roles:
            if problem.roughly_fits(members, role) and problem.can_serve(members, role):
                by_low[members[0]].append((mask, members, role))
                n_blocks += 1
    best: list = [math.inf, None]
    count = [0]

    def walk(i: int, used: int, chosen: list) -> None:
        while i < n and used >> i & 1:
            i += 1
        if i == n:
            if chosen:
                count[0] += 1
                g = canonical(chosen)
                f = problem.score(g)
                if f < best[0]:
                    best[0], best[1] = f, g
            return
        walk(i + 1, used, chosen)  # device i unused
        for mask, members, role in by_low[i]:
            if not mask & used:
                chosen.append((members, role))
                walk(i + 1, used | mask, chosen)
                chosen.pop()

    walk(0, 0, [])
    if best[1] is None:
        problem.check_cluster()
        raise InfeasiblePlan(f"no group of cluster {problem.cluster.name!r} can hold the model for "
                             f"the roles {problem.roles}")
    info = {"blocks": n_blocks, "groupings": count[0], "seconds": time.perf_counter() - t0}
    return best[1], best[0], info


# --------------------------------------------------------------------------------------------
# random search (the GA's yardstick)
# --------------------------------------------------------------------------------------------


def random_search(problem: SearchProblem, evaluations: int, seed: int = 0,
                  max_draws: int | None = None) -> tuple[Grouping, float, list[float]]:
    """Best of random groupings until ``evaluations`` distinct ones were scored (or
    ``max_draws`` draws, default 20 x evaluations). Each draw is the GA's random individual
    (:func:`e2llm_lite.planning.ga.random_grouping`, repaired). Returns (grouping, fitness,
    best-so-far after each distinct evaluation)."""
    from .ga import random_grouping

    rng = np.random.default_rng(seed)
    start = problem.evaluations
    best, best_f, trace = None, math.inf, []
    draws, cap = 0, max_draws or 20 * evaluations
    seen = set()
    while problem.evaluations - start < evaluations and draws < cap:
        draws += 1
        g = random_grouping(problem, rng)
        f = problem.score(g)
        if g not in seen:
            seen.add(g)
            if f < best_f:
                best, best_f = g, f
            trace.append(best_f)
    if best is None:
        raise InfeasiblePlan("random search found no grouping")
    return best, best_f, trace
