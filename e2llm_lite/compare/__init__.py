"""E2LLM against Splitwise (and the other baselines, and E2LLM's ablations) on the simulator.

:func:`~.run.compare` runs every strategy on the same devices and request streams at loads given
as fractions of Splitwise's sustainable rate; :mod:`.strategies` names what can be compared;
:mod:`.report` writes ``summary.md`` / ``summary.csv``; :mod:`.plots` draws the figures;
:mod:`.loadmap` maps the E2LLM / Splitwise waiting ratio over load x workload mix.
"""

from .run import DEFAULT_LOADS, DEFAULT_REQUESTS, Comparison, compare
from .strategies import ALL_STRATEGIES, DEFAULT_STRATEGIES, plan_strategy

__all__ = ["ALL_STRATEGIES", "Comparison", "DEFAULT_LOADS", "DEFAULT_REQUESTS", "DEFAULT_STRATEGIES",
           "compare", "plan_strategy"]
