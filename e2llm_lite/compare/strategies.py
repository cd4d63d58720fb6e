"""The strategies a comparison plans: the planner's five and E2LLM's four ablations, by one name.

``plan_strategy(name, ...)`` plans ``cluster`` for a workload at a rate with that strategy:
``e2llm`` (the GA with the :data:`COMPARE_GA` configuration), ``splitwise`` (its provisioning tuned
for the workload and rate, mixed pool on), ``colocated``, ``pipeline``, ``exo``
(:func:`~e2llm_lite.planning.make_plan`), or an ablation
(:func:`~e2llm_lite.planning.ablations.ablation_plan`). A strategy that cannot hold the model on
the cluster raises :class:`~e2llm_lite.errors.InfeasiblePlan`.

:data:`COMPARE_GA`: 20 individuals, at most 60 generations, stop after 15 without improvement
(``plan --quick``). On ``edge16`` it takes ~10 s per plan instead of ~65 s, and reached the same
fitness as the default GA for code and conv at 1 request/s (measured when this was written); a
comparison plans E2LLM once per load and seed.
"""

from __future__ import annotations

from ..planning import STRATEGIES, make_plan
from ..planning.ablations import ABLATIONS, ablation_plan
from ..planning.ga import GAConfig

__all__ = ["ALL_STRATEGIES", "COMPARE_GA", "DEFAULT_STRATEGIES", "plan_strategy"]

COMPARE_GA = GAConfig(population=20, generations=60, patience=15)
DEFAULT_STRATEGIES = ("e2llm", "splitwise", "colocated", "pipeline", "exo")
ALL_STRATEGIES = tuple(STRATEGIES) + ABLATIONS


def plan_strategy(name: str, cluster, workload, rate: float, *, seed: int = 0, costmodel=None,
                  config: GAConfig | None = None):
    """The plan of strategy ``name`` (module docstring) for ``workload`` (a Workload,
    WorkloadStats, LengthDist or profile name) at ``rate`` requests/s; GA seed ``seed``."""
    cfg = config or COMPARE_GA
    if name in ABLATIONS:
        return ablation_plan(name, cluster, workload, rate, seed=seed, costmodel=costmodel, config=cfg)
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; use one of {', '.join(ALL_STRATEGIES)}")
    return make_plan(cluster, name, workload, rate, seed=seed, costmodel=costmodel, progress=False,
                     config=cfg)
