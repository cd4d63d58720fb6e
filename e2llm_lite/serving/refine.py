"""Re-rank the GA's final candidates by simulation (``e2llm-lite plan --refine-sim K``).

The GA's fitness is the queueing formula (:mod:`e2llm_lite.planning.queueing`): fast enough to score
thousands of groupings, but it does not see chunked prefill, the iteration token budget, the
decoders' memory admission or bursts, and ``benchmarks/fitness_vs_sim.py`` shows where it ranks plans
differently from the simulator. So the planner can hand its ``K`` best distinct candidates to the
simulator, which serves the same request stream with each; the candidate with the lowest simulated
mean of the objective (waiting time, or TTFT) wins. The search record of the returned plan keeps the
table (``plan.search["refine_sim"]``).
"""

from __future__ import annotations

import math

from .simulator import simulate_requests

__all__ = ["refine_by_simulation"]


def refine_by_simulation(problem, candidates, requests, k: int, *, search: dict | None = None,
                         costmodel=None, notes: str = ""):
    """``candidates``: ``[(grouping, fitness), ...]`` best first (the GA's ``History.final``);
    ``problem``: their :class:`~e2llm_lite.planning.problem.SearchProblem`. Simulates the first
    ``k`` on ``requests`` and returns ``(plan, table)`` — the winner's Plan and one row per
    candidate (formula fitness, simulated mean waiting and TTFT, requests rejected)."""
    if k < 1:
        raise ValueError(f"--refine-sim needs K >= 1 candidates, got {k}")
    metric = "ttft_s" if problem.objective == "ttft" else "waiting_s"
    table, best = [], None
    for rank, (grouping, fitness) in enumerate(candidates[:k]):
        plan = problem.to_plan(grouping, "e2llm", search, notes)
        m = simulate_requests(plan, problem.cluster, requests, costmodel=costmodel).metrics()
        value = m["summary"][metric]["mean"]
        value = math.inf if value is None or m["rejected"] else value
        row = {"formula_rank": rank, "formula_fitness": fitness,
               "simulated_waiting_s": m["summary"]["waiting_s"]["mean"],
               "simulated_ttft_s": m["summary"]["ttft_s"]["mean"],
               "rejected": len(m["rejected"]),
               "replicas": [f"{r.role}:{'+'.join(r.devices)}" for r in plan.replicas]}
        table.append(row)
        if best is None or value < best[0]:
            best = (value, plan, rank)
    _, plan, rank = best
    plan.search["refine_sim"] = {"metric": metric, "requests": len(requests), "chosen": rank,
                                 "candidates": table}
    return plan, table
