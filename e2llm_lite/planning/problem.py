"""The search space shared by the GA, the exhaustive referee, random search and the baselines.

A **grouping** is a set of disjoint device groups, each with a role; devices in no group are
unused. :class:`SearchProblem` holds everything needed to score one: the cluster, the workload
figures, the arrival rate, the :class:`~e2llm_lite.planning.replica_planner.ReplicaPlanner` (DP
results cached per group and role) and the evaluator
(:func:`~e2llm_lite.planning.queueing.predict`), with a cache of scores per grouping.
``evaluations`` counts *distinct* groupings scored — the unit in which the GA and random search are
compared.

A grouping is written canonically as a sorted tuple of ``(sorted device indices, role)``, so two
ways of writing the same plan are one entry in every cache.

Groupings that are replicas
---------------------------
The helpers every search uses to stay inside the space of groups that can hold the model:

* :func:`fits` — a group can hold the model for its role: the exact memory test of
  :meth:`~e2llm_lite.planning.replica_planner.ReplicaPlanner.fits_memory` (no DP; the DP finds a
  split exactly when it passes, up to 12 devices), within ``max_replica_devices`` (default 8).
* :func:`random_grouping` — a random individual (the GA's initial population, random search):
  devices in random order fill a group with a random role until the group can hold the model for
  that role, then — with probability 0.3 — one more device; each device is skipped (left unused)
  with probability 0.15; the unfinished last group is dropped.
* :func:`repair` — a group larger than ``max_replica_devices`` drops its smallest-memory devices;
  a group that cannot hold the model for its role receives unused devices (the largest-memory
  one, or — with probability 1/2 — a random one) until it can; if it still cannot (no unused
  devices or the size cap), it is merged with the smallest group it can join within the cap,
  keeping its own role; failing that it is dissolved (devices unused).
* :func:`swap_devices` — exchange two devices between their groups.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

from ..costmodel import CostModel
from ..errors import ConfigError, InfeasiblePlan
from ..memory import MIB
from .plan import Plan
from .queueing import OBJECTIVES, PENALTY_S, Prediction, predict
from .replica_plan import ROLES
from .replica_planner import DEFAULT_MAX_BATCH, ReplicaPlanner
from .workload_stats import WorkloadStats, workload_stats

__all__ = ["DEFAULT_MAX_REPLICA_DEVICES", "Grouping", "SearchProblem", "canonical", "fits",
           "random_grouping", "repair", "swap_devices"]

#: Largest group the GA and the exhaustive search form (the DP stays exact and fast: ~16 ms).
DEFAULT_MAX_REPLICA_DEVICES = 8

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
        return self.planner.cached_plan(tuple(sorted(int(d) for d in group)), role, name)

    def can_serve(self, group: Sequence[int], role: str) -> bool:
        return len(group) > 0 and self.replica(group, role) is not None

    def fits_memory(self, group: Sequence[int], role: str) -> bool:
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
            if self.fits_memory(best, role):
                return
        a = self.planner.anatomy
        total = float(self.mem.sum()) / MIB
        need = self.planner.weights / MIB
        raise InfeasiblePlan(
            f"cluster {self.cluster.name!r} cannot hold the model: its {self.n} devices have "
            f"{total:.1f} MiB in total (largest {self.mem.max() / MIB:.1f} MiB); one replica "
            f"needs {need:.1f} MiB of weights (30 layers x {a.layer_bytes / MIB:.1f} MiB + "
            f"embedding + lm_head copy) plus room for the KV cache of the workload "
            f"({self.stats.name}: {self.stats.context_tokens} tokens x "
            f"{a.n_layers * a.kv_bytes_per_token_layer / 2 ** 10:.0f} KiB per sequence) — "
            f"add devices or memory")

    # ---- scoring ------------------------------------------------------------------------------
    def replicas(self, grouping: Grouping) -> list | None:
        out = []
        for k, (g, role) in enumerate(grouping):
            rp = self.planner.cached_plan(g, role, f"r{k}")
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
# groupings that are replicas
# --------------------------------------------------------------------------------------------


def fits(problem: SearchProblem, group, role) -> bool:
    """Whether the group can hold the model for ``role`` — by the exact memory test, without
    running the DP (which finds a plan exactly when this test passes, up to 12 devices)."""
    g = tuple(sorted(group))
    return bool(g) and len(g) <= problem.max_size and problem.fits_memory(g, role)


def random_grouping(problem: SearchProblem, rng: np.random.Generator) -> Grouping:
    """A random feasible grouping (module docstring); repaired, never empty if any group fits."""
    roles = problem.roles
    groups: list[list] = []
    cur: list[int] = []
    role = roles[rng.integers(len(roles))]
    for d in rng.permutation(problem.n):
        if rng.random() < 0.15:
            continue
        cur.append(int(d))
        if len(cur) >= problem.max_size and not fits(problem, cur, role):
            cur, role = [], roles[rng.integers(len(roles))]
            continue
        if fits(problem, cur, role):
            if rng.random() < 0.3:
                continue  # one more device (the next one closes it)
            groups.append([set(cur), role])
            cur, role = [], roles[rng.integers(len(roles))]
    if cur and fits(problem, cur, role):
        groups.append([set(cur), role])
    return repair(problem, groups, rng)


def repair(problem: SearchProblem, groups: list, rng: np.random.Generator) -> Grouping:
    """Make every group a replica (module docstring). ``groups``: list of [set, role]."""
    mem = problem.mem
    groups = [[set(g), r] for g, r in groups if g]
    used = set().union(*(g for g, _ in groups)) if groups else set()
    unused = set(range(problem.n)) - used
    for g, _ in groups:  # size cap: drop the smallest devices
        while len(g) > problem.max_size:
            d = min(g, key=lambda i: (mem[i], i))
            g.discard(d)
            unused.add(d)
    order = list(rng.permutation(len(groups)))
    alive = [True] * len(groups)
    for k in order:
        if not alive[k]:
            continue
        g, role = groups[k]
        while not fits(problem, g, role) and len(g) < problem.max_size and unused:
            if rng.random() < 0.5:
                d = max(sorted(unused), key=lambda i: mem[i])
            else:
                d = sorted(unused)[rng.integers(len(unused))]
            g.add(d)
            unused.discard(d)
        if fits(problem, g, role):
            continue
        partners = sorted((j for j in range(len(groups)) if j != k and alive[j]
                           and len(groups[j][0]) + len(g) <= problem.max_size),
                          key=lambda j: (mem[list(groups[j][0])].sum(), j))
        merged = False
        for j in partners:
            if fits(problem, g | groups[j][0], role):
                groups[j] = [g | groups[j][0], role]
                alive[k] = False
                merged = True
                break
        if not merged:
            alive[k] = False
            unused |= g
    out = [(g, r) for (g, r), a in zip(groups, alive) if a]
    if not out:
        return ()
    return canonical(out)


def swap_devices(groups, where, x: int, y: int) -> None:
    """Exchange devices ``x`` and ``y`` between their groups (either may be unused: ``where`` lacks it)."""
    kx, ky = where.get(x), where.get(y)
    if kx is not None:
        groups[kx][0].discard(x)
        groups[kx][0].add(y)
    if ky is not None:
        groups[ky][0].discard(y)
        groups[ky][0].add(x)
