"""Widget glue for the notebooks: computed prose, and explorers that leave a picture behind.

* :func:`say` — show Markdown written from computed values, so a sentence with a figure in it is
  an *output* of the notebook and cannot go stale when the profile changes.
* :func:`explorer` — a widget for "what if?": it first draws the default state once as an
  ordinary output (a reader who opens the committed notebook without running it sees that
  picture), then shows the controls; moving one redraws below them. Controls must not update
  continuously (``continuous_update=False``: one redraw per release, not per pixel).
"""

from __future__ import annotations

from typing import Callable

import ipywidgets as ipw
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from . import viz
from .errors import InfeasiblePlan
from .planning import baselines
from .planning.arrays import dp_arrays, replace_device
from .planning.baselines import exo_stages
from .planning.dp import evaluate, partition
from .planning.ga import GAConfig, ga_search
from .planning.search import exhaustive_search

__all__ = ["Explorer", "dp_what_if", "dp_what_if_view", "explorer", "ga_run", "ga_view", "say"]


def say(text: str) -> None:
    """Display ``text`` as Markdown (computed prose: write it as an f-string of the figures)."""
    display(Markdown(text))


class Explorer:
    """The controls and output of :func:`explorer`; displays as the widget, and as a one-line
    description where widgets cannot be shown (a notebook viewer without a kernel)."""

    def __init__(self, fn: Callable, controls: dict, description: str):
        self.fn, self.controls, self.description = fn, controls, description
        self.output = ipw.Output()
        for c in controls.values():
            c.observe(self._redraw, names="value")
        self.box = ipw.VBox([ipw.HBox(list(controls.values()), layout=ipw.Layout(flex_flow="row wrap")),
                             self.output])

    @property
    def values(self) -> dict:
        return {k: c.value for k, c in self.controls.items()}

    def _redraw(self, _change=None) -> None:
        with self.output:
            self.output.clear_output(wait=True)
            self.fn(**self.values)
            plt.show()

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data["text/plain"] = (f"[widget: {self.description} — run the notebook to move it; the "
                              f"picture above is its default state]")
        return bundle


def explorer(fn: Callable, description: str, **controls) -> Explorer:
    """Draw ``fn(**defaults)`` now (a static picture of the default state), then return the widget
    whose ``controls`` (ipywidgets, keyword = ``fn``'s parameter) redraw ``fn`` below them.

    Raises ValueError for a control that updates continuously.
    """
    for name, c in controls.items():
        if getattr(c, "continuous_update", False):
            raise ValueError(f"control {name!r} must have continuous_update=False")
    ex = Explorer(fn, controls, description)
    fn(**ex.values)
    plt.show()
    return ex


# ---------------------------------------------------------------- notebook 02: what if?

def dp_what_if(cluster, cm, device: str, speed: float = 1.0, memory: float = 1.0,
               phase: str = "prefill", tokens: int = 512) -> dict:
    """The plans of notebook 02's explorer, without drawing: ``cluster`` with ``device``'s speeds
    multiplied by ``speed`` and its memory by ``memory``, for a ``tokens``-token prefill or one
    decode step at that context. Returns {"home (DP)", "yours (DP)", "yours (exo)", "arrays"}:
    Partitions (None when nothing fits; exo's stages when its split does not fit)."""

    shape = dict(tokens=tokens) if phase == "prefill" else dict(batch=1, context=tokens)
    base = dp_arrays(cluster, cm, phase, **shape)
    mine = dp_arrays(replace_device(cluster, device, speed=speed, memory=memory), cm, phase, **shape)
    out = {"home (DP)": partition(**base.kwargs()), "arrays": mine}
    try:
        out["yours (DP)"] = partition(**mine.kwargs())
    except InfeasiblePlan:
        out["yours (DP)"] = None
    stages = exo_stages(mine.device_mem, cm.n_layers, mine.names)
    try:
        out["yours (exo)"] = evaluate(stages, **mine.kwargs())
    except InfeasiblePlan:
        out["yours (exo)"] = stages
    return out


def dp_what_if_view(cluster, cm, device="orin", speed=1.0, memory=1.0, phase="prefill") -> None:
    """Notebook 02's explorer: the layer maps of :func:`dp_what_if` and the stage bars of the DP's
    plan for the changed cluster, with the bottlenecks."""
    r = dp_what_if(cluster, cm, device, speed, memory, phase)
    names = list(r["arrays"].names)
    if r["yours (DP)"] is None:
        print(f"no plan fits: {device} at {memory:g}x memory leaves the cluster too little room")
        return
    rows = {k: r[k] for k in ("home (DP)", "yours (DP)", "yours (exo)")}
    viz.plot_layer_map(rows, names, cm.n_layers,
                       title=f"{phase}: {device} at {speed:g}x speed, {memory:g}x memory")
    plt.show()
    viz.plot_partition(r["yours (DP)"], names, r["arrays"].comm)
    plt.show()
    exo = r["yours (exo)"]
    exo_text = f"exo {exo.bottleneck:.2f} ms" if hasattr(exo, "bottleneck") else "exo's split does not fit"
    print(f"DP bottleneck {r['yours (DP)'].bottleneck:.2f} ms, home4 {r['home (DP)'].bottleneck:.2f} ms, {exo_text}")


# ---------------------------------------------------------------- notebook 03: the GA's knobs

def ga_run(problem_at, population: int = 20, mutation_rate: float = 0.7, rate: float = 3.0,
           seed: int = 0, generations: int = 30) -> dict:
    """Notebook 03's explorer without drawing: the GA (first population seeded with the baselines)
    with a small budget on ``problem_at(rate)`` (a function giving a fresh SearchProblem), and the
    exhaustive optimum at that rate. Returns {"grouping", "fitness", "history", "plan", "optimum"}."""
    prob = problem_at(rate)
    best, f, hist = ga_search(prob, GAConfig(population=population, mutation_rate=mutation_rate,
                                             generations=generations), seed=seed,
                              seeds=baselines.seed_groupings)
    opt = exhaustive_search(problem_at(rate))[1]
    return {"grouping": best, "fitness": f, "history": hist, "plan": prob.to_plan(best, "e2llm"),
            "optimum": opt}


def ga_view(problem_at, population=20, mutation_rate=0.7, rate=3.0, seed=0) -> None:
    """Notebook 03's explorer: :func:`ga_run`'s convergence and plan, and its gap to the optimum."""
    r = ga_run(problem_at, population, mutation_rate, rate, seed)
    viz.plot_convergence(r["history"], title=f"population {population}, mutation {mutation_rate:g}, "
                                             f"{rate:g} req/s")
    plt.show()
    viz.plot_plan(r["plan"])
    plt.show()
    gap = ("= the optimum" if abs(r["fitness"] - r["optimum"]) <= 1e-9 * r["optimum"]
           else f"optimum {r['optimum']:.4g} s")
    print(f"GA best {r['fitness']:.4g} s after {r['history'].evaluations[-1]} evaluations ({gap})")
