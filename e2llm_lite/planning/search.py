"""The GA's referees: exhaustive search (the optimum, small clusters) and random search (its
yardstick at equal evaluations), over the search space of :mod:`~e2llm_lite.planning.problem`.

:func:`exhaustive_search` is the referee for small clusters (at most 8 devices): it scores every
set of disjoint groups that can each hold the model, with every role per group — nothing is
pruned except groups that cannot hold the model for their role (those are not replicas), so its
answer is the optimum of the search space. :func:`random_search` draws random groupings (the GA's
initialiser + repair) for the GA-vs-random comparison at equal evaluations.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..errors import InfeasiblePlan
from .problem import Grouping, SearchProblem, canonical, random_grouping

__all__ = ["MAX_EXHAUSTIVE_DEVICES", "exhaustive_search", "random_search"]

#: Largest cluster :func:`exhaustive_search` accepts.
MAX_EXHAUSTIVE_DEVICES = 8


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
            if problem.fits_memory(members, role) and problem.can_serve(members, role):
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
    (:func:`e2llm_lite.planning.problem.random_grouping`, repaired). Returns (grouping, fitness,
    best-so-far after each distinct evaluation)."""
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
