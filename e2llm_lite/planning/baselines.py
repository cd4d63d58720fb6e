"""The baselines E2LLM is compared with — each a function ``(problem) -> Plan`` scored by the very
same evaluator (:func:`~e2llm_lite.planning.queueing.predict`) and, except exo, split by the very
same DP, so that only the *grouping and role* rules differ.

``exo`` — one pipeline over every device, layers in proportion to memory (exo's
    ``RingMemoryWeightedPartitioningStrategy``): devices sorted by memory, largest first (ties: name,
    descending, as exo sorts ``(memory, id)`` in reverse); device i gets the fraction
    ``[start_i, end_i)`` of the model with ``end_i = round(start_i + mem_i / total, 5)``; its layers
    are ``int(start_i * 30) .. int(end_i * 30)`` (the last device runs to layer 30); devices whose
    share rounds to no layer are left out. exo's ring can start at any device (the one a request
    arrives at); we start it at the largest device and, if a share does not fit, at the next one,
    and so on (the last stage carries the lm_head copy, which exo's shares do not count, so a small
    device at the end of the ring often cannot hold it). The replica colocates prefill and decode (role
    ``both``); its decode batch is the one with the best throughput among those its split holds
    (at most ``max_batch``). exo checks no memory: if no start of the ring gives shares that fit
    (weights + the reserve of one sequence), exo would run out of memory — we raise
    :class:`~e2llm_lite.errors.InfeasiblePlan` naming the device.

``pipeline`` — one pipeline over every device (EdgeShard / PipeEdge style): the DP chooses the
    order, the subset of devices and the layer split, role ``both`` (the DP's objective is the
    per-request work of the replica module). Exact up to 12 devices, the DP's heuristic above.

``colocated`` — replicas without roles: the devices are grouped by :func:`simple_groups` and every
    replica does prefill and decode (role ``both``), as colocated serving (vLLM / Orca) does.

``splitwise`` — Splitwise (Patel et al., ISCA 2024) on the same :func:`simple_groups`: each group is
    one "machine" holding a full model copy. Splitwise's **provisioning** chooses how many machines
    go to the prompt pool and how many to the token pool for the workload; here: rank the groups by
    ``prefill rate as a prompt machine / request rate as a token machine`` (most prompt-suited
    first), and for every split — the first ``n_p`` groups in the prompt pool (role ``prefill``),
    the last ``n_t`` in the token pool (``decoder``) and, with ``mixed_pool`` (default True),
    the ``n_m = k - n_p - n_t`` in between in Splitwise's **mixed pool** (role ``both``) — score
    the plan with the evaluator and keep the best (``n_m = 0`` is always tried, so the mixed pool
    is used only when it helps). Requests are routed JSQ (the evaluator's equal-utilisation
    model) and the KV cache is handed off from prompt to token machines. One group: it serves
    alone (role ``both``). This searches all ``O(k^2)`` pool sizes with our own predictor, so
    Splitwise is tuned for each workload and rate — a fair baseline, not a straw man.

:func:`simple_groups` — the grouping rule shared by colocated and Splitwise ("each machine just
    fits the model"): sites are taken in the order they first appear in the cluster; inside a site
    the devices are sorted by memory, largest first (ties: cluster order), and a group is filled
    largest-first until it can serve *any* role (the colocated reserve: the model + one design
    prompt + one sequence's KV, so a group can be put in either pool); then the next group starts.
    A site's devices that form no complete group are pooled with the other sites' leftovers and
    grouped by the same rule (a group across sites); devices still left over then join, largest
    first, the group of their own site with the least memory (else the group with the least
    memory) — the DP may leave them idle, but they are never wasted by the rule.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InfeasiblePlan
from ..memory import MIB, stage_need_bytes
from .plan import Plan
from .problem import Grouping, SearchProblem, canonical
from .replica_plan import ReplicaPlan
from .reserve import reserve

__all__ = [
    "colocated_grouping",
    "colocated_plan",
    "exo_plan",
    "exo_stages",
    "pipeline_grouping",
    "pipeline_plan",
    "seed_groupings",
    "simple_groups",
    "splitwise_grouping",
    "splitwise_plan",
    "splitwise_roles",
]


# --------------------------------------------------------------------------------------------
# the simple grouping rule
# --------------------------------------------------------------------------------------------


def simple_groups(problem: SearchProblem) -> list[tuple[int, ...]]:
    """Groups of device indices by the rule of the module docstring (no role yet)."""
    mem = problem.mem
    sites = list(dict.fromkeys(problem.planner.sites))

    def holds(g):
        return problem.fits_memory(g, "both") and problem.can_serve(tuple(sorted(g)), "both")

    def greedy(devices):
        groups, cur = [], []
        for d in sorted(devices, key=lambda i: (-mem[i], i)):
            cur.append(d)
            if holds(cur):
                groups.append(cur)
                cur = []
        return groups, cur

    groups, leftovers = [], []
    for site in sites:
        g, rest = greedy([i for i in range(problem.n) if problem.planner.sites[i] == site])
        groups += g
        leftovers += rest
    if leftovers:
        g, rest = greedy(leftovers)
        groups += g
        leftovers = rest
    if not groups:
        problem.check_cluster()  # raises with the figures if nothing can hold the model
        raise InfeasiblePlan(f"the simple grouping rule finds no group of cluster "
                             f"{problem.cluster.name!r} that can serve as a colocated replica")
    site_of = problem.planner.sites
    for d in sorted(leftovers, key=lambda i: (-mem[i], i)):
        same = [g for g in groups if any(site_of[x] == site_of[d] for x in g)]
        pool = same or groups
        target = min(pool, key=lambda g: (mem[list(g)].sum(), groups.index(g)))
        target.append(d)
    return [tuple(sorted(g)) for g in groups]


# --------------------------------------------------------------------------------------------
# groupings (also used to seed the GA)
# --------------------------------------------------------------------------------------------


def colocated_grouping(problem: SearchProblem) -> Grouping:
    """:func:`simple_groups`, every group role ``both``."""
    return canonical((g, "both") for g in simple_groups(problem))


def pipeline_grouping(problem: SearchProblem) -> Grouping:
    """One group of every device, role ``both``."""
    return canonical([(tuple(range(problem.n)), "both")])


def splitwise_grouping(problem: SearchProblem, mixed_pool: bool = True) -> Grouping:
    """:func:`simple_groups` with the roles of Splitwise's provisioning (module docstring)."""
    return splitwise_roles(problem, simple_groups(problem), mixed_pool)


def splitwise_roles(problem: SearchProblem, groups, mixed_pool: bool = True) -> Grouping:
    """Splitwise's provisioning (module docstring) on the given ``groups`` (tuples of device
    indices, each able to hold the model): prompt / mixed / token pools, the best split by the
    evaluator."""
    groups = [tuple(sorted(g)) for g in groups]
    k = len(groups)
    if k == 1:
        return canonical([(groups[0], "both")])
    Om = problem.stats.mean_output

    def suit(g):
        pre = problem.replica(g, "prefill")
        dec = problem.replica(g, "decoder")
        p = pre.prefill_rate if pre else 0.0
        t = dec.tokens_per_s / Om if dec else 0.0
        return p / t if t > 0 else math.inf

    ranked = sorted(range(k), key=lambda i: (-suit(groups[i]), i))
    best, best_f = None, math.inf
    for n_p in range(0, k + 1):
        for n_t in range(0, k - n_p + 1):
            n_m = k - n_p - n_t
            if n_m and not mixed_pool:
                continue
            roles = ["prefill"] * n_p + ["both"] * n_m + ["decoder"] * n_t
            cand = canonical((groups[i], r) for i, r in zip(ranked, roles))
            if not all(problem.can_serve(g, r) for g, r in cand):
                continue
            f = problem.score(cand)
            if f < best_f * (1 - 1e-12):
                best, best_f = cand, f
    if best is None:
        raise InfeasiblePlan("no Splitwise pool split is possible on this cluster")
    return best


# --------------------------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------------------------


def seed_groupings(problem: SearchProblem) -> list[Grouping]:
    """The groupings of the Splitwise (tuned roles), colocated and single-pipeline baselines —
    those that apply to this cluster — for the GA's first population (``ga_search(seeds=...)``)."""
    out = []
    for make in (splitwise_grouping, colocated_grouping, pipeline_grouping):
        try:
            out.append(make(problem))
        except InfeasiblePlan:  # a baseline that does not apply seeds nothing
            continue
    return out


def _plan(problem: SearchProblem, grouping: Grouping, strategy: str, notes: str) -> Plan:
    return problem.to_plan(grouping, strategy, {"rule": strategy}, notes)


def colocated_plan(problem: SearchProblem) -> Plan:
    """Replicas without roles (module docstring)."""
    return _plan(problem, colocated_grouping(problem), "colocated",
                 "simple groups (largest memory first, per site), every replica prefill + decode")


def pipeline_plan(problem: SearchProblem) -> Plan:
    """One pipeline over all devices with the DP (module docstring)."""
    g = pipeline_grouping(problem)
    if not problem.can_serve(g[0][0], "both"):
        problem.check_cluster()
        problem.planner.plan(g[0][0], "both")  # raises with the figures
    return _plan(problem, g, "pipeline", "one DP-split pipeline over all devices, prefill + decode")


def splitwise_plan(problem: SearchProblem, mixed_pool: bool = True) -> Plan:
    """Splitwise: simple groups, prompt / token (/ mixed) pools by provisioning (module docstring)."""
    g = splitwise_grouping(problem, mixed_pool)
    pools = {r: sum(1 for _, x in g if x == r) for r in ("prefill", "decoder", "both")}
    return _plan(problem, g, "splitwise",
                 f"simple groups; provisioning chose {pools['prefill']} prompt, {pools['decoder']} "
                 f"token and {pools['both']} mixed-pool machine(s)"
                 + ("" if mixed_pool else " (mixed pool off)"))


def exo_stages(memory, n_layers: int, names=None, rotation: int = 0) -> list[tuple[int, int, int]]:
    """exo's split (module docstring): one pipeline over every device, layers in proportion to
    ``memory`` (any unit), as ``(device index, start, end)`` in pipeline order.

    exo's ``RingMemoryWeightedPartitioningStrategy``, with its arithmetic: devices sorted by
    ``(memory, name)`` in reverse — largest memory first, ties by name descending (by index
    descending when ``names`` is None); the ring starts at position ``rotation`` of that order;
    device ``i`` gets the fraction ``[start_i, end_i)`` of the model with
    ``end_i = round(start_i + mem_i / total, 5)``, i.e. the layers ``int(start_i * L) ..
    int(end_i * L) - 1``; the last device runs to layer ``L``. The truncation is exo's: a third of
    30 layers is ``int(0.33333 * 30) = 9``. Speeds and links are ignored, and so is whether a
    stage fits (check with :func:`~e2llm_lite.planning.dp.evaluate`). A device whose share
    truncates to no layer is left out.
    """
    mem = np.asarray(memory, dtype=float)
    if mem.ndim != 1 or len(mem) == 0 or not np.all(np.isfinite(mem)) or np.any(mem <= 0):
        raise ValueError("memory must be a non-empty 1-D array of positive numbers")
    if isinstance(n_layers, bool) or not isinstance(n_layers, (int, np.integer)) or n_layers < 1:
        raise ValueError(f"n_layers must be an integer >= 1, got {n_layers!r}")
    keys = list(range(len(mem))) if names is None else list(names)
    if len(keys) != len(mem):
        raise ValueError(f"names has {len(keys)} entries for {len(mem)} devices")
    ring = sorted(range(len(mem)), key=lambda i: (mem[i], keys[i]), reverse=True)
    order = ring[rotation:] + ring[:rotation]
    total = sum(float(m) for m in mem)  # a plain sum in index order
    stages, start = [], 0.0
    for k, i in enumerate(order):
        end = round(start + float(mem[i]) / total, 5)
        s, e = int(start * n_layers), (n_layers if k == len(order) - 1 else int(end * n_layers))
        if e > s:
            stages.append((int(i), s, e))
        start = end
    return stages


def exo_plan(problem: SearchProblem) -> Plan:
    """exo's single memory-proportional pipeline (module docstring)."""
    pl = problem.planner
    memory = [d.memory_mib for d in problem.cluster.devices]
    first_error = None
    for rotation in range(problem.n):
        stages = exo_stages(memory, pl.anatomy.n_layers, problem.names, rotation)
        idx = [d for d, _, _ in stages]
        pos = [(k, s, e) for k, (_, s, e) in enumerate(stages)]
        best = pl.best_batch(idx, "both", pos, exact=False)
        if best is not None:
            break
        first_error = first_error or _exo_out_of_memory(pl, stages)
    else:
        raise InfeasiblePlan(f"{first_error}, whichever device the ring starts at")
    batch, figures = best
    rp = ReplicaPlan.build("both", tuple((pl.names[d], s, e) for d, s, e in stages), batch,
                           reserve("both", pl.stats, batch), figures)
    return problem.plan_from_replicas([rp], "exo", {"rule": "exo"},
                                      "one pipeline, layers in proportion to memory (exo), "
                                      f"prefill + decode; ring started at device "
                                      f"{pl.names[stages[0][0]]!r}")


def _exo_out_of_memory(pl, stages) -> str:
    """Which device of exo's split cannot hold its share with the room for one request."""
    kv, act, rows = reserve("both", pl.stats, 1)
    for d, s, e in stages:
        need = stage_need_bytes(s, e, kv, act, rows, pl.anatomy)
        if need > pl.mem[d]:
            return (f"exo's memory-proportional split gives device {pl.names[d]!r} layers {s}..{e - 1}, "
                    f"which need {need / MIB:.1f} MiB with the room for one request, but it has "
                    f"{pl.mem[d] / MIB:.1f} MiB; exo would run out of memory")
    raise AssertionError("exo's split holds one request")  # best_batch found none, so one does not fit
