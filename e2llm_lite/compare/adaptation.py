"""Adapting to a workload shift: a plan fixed for the first workload, the adaptive scheduler
(``adapt``: re-plans when the workload drifts, :mod:`~e2llm_lite.serving.adapt`), and an oracle
that serves each phase with the plan made for it.

A **phased stream** (:func:`phased_requests`): Poisson arrivals at one rate throughout; the
lengths of each phase drawn from its profile (e.g. ``code`` then ``conv`` then ``code``), so
only the mix changes. :func:`adaptation` serves it three ways, in the simulator:

* **fixed**: the E2LLM plan for the first phase's workload, all along;
* **adaptive**: the same starting plan with ``adapt`` on (re-plans, rolled in while serving);
* **oracle**: the same stream, one run, with the plan made for each phase's workload at that rate
  rolled in at the moment the phase starts (:class:`~e2llm_lite.serving.events.SwitchPlan`: the
  same rolling change an adopted re-plan makes) — what a planner that knew the phases in advance
  would get: no detection delay and no planning error about the new workload, but the same
  backlog carried over and the same reloading;
* **oracle at detection**: the same, but each phase's plan rolled in when the adaptive
  scheduler's first workload re-plan of that phase was ready (never, in a phase where none was
  asked): the adaptive scheduler's detection delay with the oracle's plan. It splits the gap
  between adaptive and oracle in two: oracle at detection / oracle is what the delay costs
  (arrivals served by the old plan while the shift is told apart), adaptive / oracle at
  detection what planning from the observed arrivals costs (a plan made for a small sample);
* **oracle from empty** (a reference; not a strict bound, since an oracle's old replicas still
  serve while its new ones load): each phase served on its own by its plan, from an empty system
  (arrival times shifted to start at 0): no backlog carried over, no reloading.

Mean waiting time (s) per phase (requests by arrival) for each; re-plans counted per phase.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..planning.ga import GAConfig
from ..serving.adapt import AdaptConfig
from ..serving.simulator import simulate_requests
from ..traces import Request
from ..workload import PROFILES, LengthDist
from .strategies import COMPARE_GA, plan_strategy

__all__ = ["adaptation", "phased_requests"]


def phased_requests(phases, rate: float, seed: int = 0) -> tuple[list[Request], list[float]]:
    """``phases``: ``[(profile, n), ...]``; Poisson arrivals at ``rate`` requests/s. Returns the
    requests and each phase's start time (s)."""
    rng = np.random.default_rng(seed)
    reqs, starts, t, rid = [], [], 0.0, 0
    for name, n in phases:
        if name not in PROFILES or name == "mix":
            raise ValueError(f"a phase is a profile ({', '.join(p for p in PROFILES if p != 'mix')}), "
                             f"got {name!r}")
        if n < 1:
            raise ValueError(f"a phase needs at least one request, got {n}")
        starts.append(t)
        prompts, outputs = LengthDist.profile(name).sample(n, rng)
        for p, o in zip(prompts, outputs):
            t += float(rng.exponential(1.0 / rate))
            reqs.append(Request(rid, t, int(p), int(o)))
            rid += 1
    return reqs, starts


def _phase_means(records, bounds) -> list[float | None]:
    out = []
    for lo, hi in bounds:
        w = [r.prefill_start_s - r.arrival_s for r in records if lo <= r.id < hi
             and r.prefill_start_s is not None]
        out.append(float(np.mean(w)) if w else None)
    return out


def adaptation(cluster, phases, rate: float, *, seed: int = 0, adapt: AdaptConfig | None = None,
               config: GAConfig | None = None, costmodel=None) -> dict:
    """Fixed vs adaptive vs oracle on a phased stream (module docstring). Returns
    ``{"phases", "rate_rps", "waiting": {"fixed"|"adaptive"|"oracle"|"oracle_at_detection"|"oracle_from_empty":
    [per-phase mean s]}, "detected_s": [per phase: when oracle at detection switched, s, or None],
    "replans": [...], "replans_per_phase": [...], "adopted_per_phase": [...], "plans": {...},
    "done": {...}, "results": {who: SimResult}, "plan_objects": {profile: Plan}}``."""
    cfg = config or COMPARE_GA
    reqs, starts = phased_requests(phases, rate, seed)
    ids, bounds = 0, []
    for _, n in phases:
        bounds.append((ids, ids + n))
        ids += n
    plans = {}
    for name, _ in phases:
        if name not in plans:
            plans[name] = plan_strategy("e2llm", cluster, name, rate, seed=seed, costmodel=costmodel,
                                        config=cfg)
    first = plans[phases[0][0]]
    fixed = simulate_requests(first, cluster, reqs, costmodel=costmodel)
    adaptive = simulate_requests(first, cluster, reqs, costmodel=costmodel,
                                 adapt=adapt or AdaptConfig(), seed=seed)
    switches = [(t0, plans[name]) for (name, _), t0, (prev, _) in zip(phases[1:], starts[1:], phases)
                if name != prev]
    oracle = simulate_requests(first, cluster, reqs, costmodel=costmodel, switch=switches)
    late, detected = [], [None]
    for (name, _), (prev, _), t0, t1 in zip(phases[1:], phases, starts[1:], starts[2:] + [float("inf")]):
        ready = [r["ready_s"] for r in adaptive.replans if r["reason"] == "workload"
                 and t0 <= r["asked_s"] < t1 and r.get("ready_s") is not None]
        detected.append(min(ready) if name != prev and ready else None)
        if detected[-1] is not None:
            late.append((detected[-1], plans[name]))
    at_detection = simulate_requests(first, cluster, reqs, costmodel=costmodel, switch=late)
    empty = []
    for (name, _), (lo, hi), t0 in zip(phases, bounds, starts):
        part = [replace(r, id=r.id - lo, arrival_s=r.arrival_s - t0) for r in reqs[lo:hi]]
        res = simulate_requests(plans[name], cluster, part, costmodel=costmodel)
        empty.append(_phase_means(res.records.values(), [(0, hi - lo)])[0])
    ends = starts[1:] + [float("inf")]
    per_phase = [sum(1 for r in adaptive.replans if a <= r["asked_s"] < b) for a, b in zip(starts, ends)]
    adopted = [sum(1 for r in adaptive.replans if r.get("adopted") and a <= r["asked_s"] < b)
               for a, b in zip(starts, ends)]
    roles = {name: p.roles() for name, p in plans.items()}
    return {
        "phases": [{"profile": n, "requests": k, "start_s": s} for (n, k), s in zip(phases, starts)],
        "rate_rps": rate,
        "waiting": {"fixed": _phase_means(fixed.records.values(), bounds),
                    "adaptive": _phase_means(adaptive.records.values(), bounds),
                    "oracle": _phase_means(oracle.records.values(), bounds),
                    "oracle_at_detection": _phase_means(at_detection.records.values(), bounds),
                    "oracle_from_empty": empty},
        "detected_s": detected,
        "replans": adaptive.replans, "replans_per_phase": per_phase, "adopted_per_phase": adopted,
        "marks": adaptive.marks,
        "plans": {name: {"roles": roles[name], "summary": p.summary()} for name, p in plans.items()},
        "done": {"fixed": sum(r.done for r in fixed.records.values()),
                 "adaptive": sum(r.done for r in adaptive.records.values()),
                 "oracle": sum(r.done for r in oracle.records.values()),
                 "oracle_at_detection": sum(r.done for r in at_detection.records.values()),
                 "in": len(reqs)},
        "results": {"fixed": fixed, "adaptive": adaptive, "oracle": oracle,
                    "oracle_at_detection": at_detection},
        "plan_objects": plans,
    }
