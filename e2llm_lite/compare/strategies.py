"""The strategies a comparison plans: the planner's five and E2LLM's four ablations, by one name.

``plan_strategy(name, ...)`` plans ``cluster`` for a workload at a rate with that strategy:
``e2llm`` (the GA with the :data:`COMPARE_GA` configuration), ``splitwise`` (its provisioning tuned
for the workload and rate, mixed pool on), ``colocated``, ``pipeline``, ``exo``
(:func:`~e2llm_lite.planning.make_plan`), or an ablation
(:func:`~e2llm_lite.planning.ablations.ablation_plan`). A strategy that cannot hold the model on
the cluster raises :class:`~e2llm_lite.errors.InfeasiblePlan`.

:data:`COMPARE_GA`: 20 individuals, at most 60 generations, stop after 15 without improvement
(``plan --quick``).

``e2llm-sim``: E2LLM's GA, then its :data:`REFINE_CANDIDATES` best distinct groupings re-ranked by
simulating a stream of the workload (``plan --refine-sim``; :mod:`e2llm_lite.serving.refine`) —
the comparison gives it a stream *independent* of the one it is judged on (another seed), so the
planner sees queueing the formula misses without seeing the test. On ``edge16`` it takes ~10 s per plan instead of ~65 s, and reached the same
fitness as the default GA for code and conv at 1 request/s (measured when this was written); a
comparison plans E2LLM once per load and seed.
"""

from __future__ import annotations

from dataclasses import replace

from ..planning import STRATEGIES, SearchProblem, make_plan, plan_e2llm
from ..planning.ablations import ABLATIONS, ablation_plan
from ..planning.ga import GAConfig
from ..serving.refine import refine_by_simulation

__all__ = ["ALL_STRATEGIES", "COMPARE_GA", "DEFAULT_STRATEGIES", "REFINED", "REFINE_CANDIDATES",
           "plan_strategy"]

COMPARE_GA = GAConfig(population=20, generations=60, patience=15)
DEFAULT_STRATEGIES = ("e2llm", "splitwise", "colocated", "pipeline", "exo")
REFINED = "e2llm-sim"
REFINE_CANDIDATES = 4
ALL_STRATEGIES = tuple(STRATEGIES) + ABLATIONS + (REFINED,)


def plan_strategy(name: str, cluster, workload, rate: float, *, seed: int = 0, costmodel=None,
                  config: GAConfig | None = None, refine_requests=None):
    """The plan of strategy ``name`` (module docstring) for ``workload`` (a Workload,
    WorkloadStats, LengthDist or profile name) at ``rate`` requests/s; GA seed ``seed``.
    ``refine_requests``: the requests ``e2llm-sim`` simulates its candidates on (required for it)."""
    cfg = config or COMPARE_GA
    if name == REFINED:
        if not refine_requests:
            raise ValueError(f"{REFINED} simulates its candidates: give refine_requests")
        problem = SearchProblem(cluster, workload, rate, costmodel=costmodel)
        problem.check_cluster()
        plan, hist = plan_e2llm(problem, seed=seed, config=cfg, progress=False)
        plan, _ = refine_by_simulation(problem, hist.final, refine_requests, REFINE_CANDIDATES,
                                       search=plan.search, costmodel=costmodel, notes=plan.notes)
        return replace(plan, strategy=REFINED)
    if name in ABLATIONS:
        return ablation_plan(name, cluster, workload, rate, seed=seed, costmodel=costmodel, config=cfg)
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(ALL_STRATEGIES)}")
    return make_plan(cluster, name, workload, rate, seed=seed, costmodel=costmodel, progress=False,
                     config=cfg)
