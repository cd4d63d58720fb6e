"""The baselines E2LLM is compared with — each a function ``(problem) -> Plan`` scored by the very
same evaluator (:func:`~e2llm_lite.planning.evaluate.predict`) and, except exo, split by the very
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
from .dp import evaluate as dp_evaluate
from .plan import Plan
from .replica import ReplicaPlan, reserve, stage_need_bytes
from .search import Grouping, SearchProblem, canonical

__all__ = [
    "colocated_grouping",
    "colocated_plan",
    "exo_plan",
    "exo_stages",
    "pipeline_grouping",
    "pipeline_plan",
    "simple_groups",
    "splitwise_grouping",
    "splitwise_plan",
]


# --------------------------------------------------------------------------------------------
# the simple grouping rule
# --------------------------------------------------------------------------------------------


def simple_groups(problem: SearchProblem) -> list[tuple[int, ...]]:
    """Groups of device indices by the rule of the module docstring (no role yet)."""
    mem = problem.mem
    sites = list(dict.fromkeys(problem.planner.sites))

    def holds(g):
        return problem.roughly_fits(g, "both") and problem.can_serve(tuple(sorted(g)), "both")

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
    groups = simple_groups(problem)
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


def exo_stages(problem: SearchProblem, rotation: int = 0) -> list[tuple[int, int, int]]:
    """exo's memory-proportional split: (device index, start, end) in pipeline order, with the
    ring of devices (memory descending) started at position ``rotation``."""
    names = problem.names
    mem = [problem.cluster.devices[i].memory_mib for i in range(problem.n)]
    ring = sorted(range(problem.n), key=lambda i: (mem[i], names[i]), reverse=True)
    order = ring[rotation:] + ring[:rotation]
    total = sum(mem)
    L = problem.planner.anatomy.n_layers
    stages, start = [], 0.0
    for k, i in enumerate(order):
        end = round(start + mem[i] / total, 5)
        s = int(start * L)
        e = L if k == len(order) - 1 else int(end * L)
        if e > s:
            stages.append((i, s, e))
        start = end
    return stages


def exo_plan(problem: SearchProblem) -> Plan:
    """exo's single memory-proportional pipeline (module docstring)."""
    pl = problem.planner
    first_error = None
    for rotation in range(problem.n):
        stages = exo_stages(problem, rotation)
        try:
            best = _exo_batch(pl, stages)
            break
        except InfeasiblePlan as e:
            first_error = first_error or e
    else:
        raise InfeasiblePlan(f"{first_error}, whichever device the ring starts at")
    batch, figures, kv, act, rows = best
    period, lat, step, pre_ms, dec_ms, _ = figures
    rp = ReplicaPlan(role="both", stages=tuple((pl.names[d], s, e) for d, s, e in stages),
                     batch=batch, kv_tokens=kv, act_tokens=act, logit_rows=rows,
                     prefill_period_s=period, prefill_latency_s=lat, decode_step_s=step,
                     prefill_stage_ms=pre_ms, decode_stage_ms=dec_ms, exact=False, name="r0")
    return problem.plan_from_replicas([rp], "exo", {"rule": "exo"},
                                      "one pipeline, layers in proportion to memory (exo), "
                                      f"prefill + decode; ring started at device "
                                      f"{pl.names[stages[0][0]]!r}")


def _exo_batch(pl, stages):
    """(batch, figures, kv, act, rows) of the best batch exo's fixed split holds, or raise."""
    idx = np.array([d for d, _, _ in stages], dtype=np.intp)
    pos = [(k, s, e) for k, (_, s, e) in enumerate(stages)]
    best, best_value = None, -math.inf
    for batch in range(1, pl.max_batch + 1):
        kv, act, rows = reserve("both", pl.stats, batch)
        too_big = [(pl.names[d], s, e) for d, s, e in stages
                   if stage_need_bytes(s, e, kv, act, rows, pl.anatomy) > pl.mem[d]]
        if too_big:
            if batch == 1:
                d, s, e = too_big[0]
                need = stage_need_bytes(s, e, kv, act, rows, pl.anatomy) / 2 ** 20
                raise InfeasiblePlan(
                    f"exo's memory-proportional split gives device {d!r} layers {s}..{e - 1}, which "
                    f"need {need:.1f} MiB with the room for one request, but it has "
                    f"{pl.mem[pl.index[d]] / 2 ** 20:.1f} MiB; exo would run out of memory")
            break
        compute, first_ms, last_ms, comm = pl._arrays(idx, "both", batch)
        part = dp_evaluate(pos, compute, np.zeros(compute.shape[1]), np.full(len(idx), 1e30), comm,
                           extra_first_ms=first_ms, extra_last_ms=last_ms)
        figures = pl._figures(idx, "both", batch, part)
        value = pl._batch_value("both", batch, figures)
        if value > best_value * (1 + 1e-12):
            best, best_value = (batch, figures, kv, act, rows), value
    return best
