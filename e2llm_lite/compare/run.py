"""The comparison: every strategy on the same devices, the same request streams, the same loads.

Steps (all on the simulator's virtual clock, so the figures are deterministic):

1. **Saturation.** Splitwise's sustainable rate ``S`` (requests/s) for the workload:
   :func:`~e2llm_lite.serving.saturation.sustainable_rps` with Splitwise re-provisioned for every
   rate tried, on the stream of seed ``seeds[0]`` (Poisson arrivals; for a trace, its lengths
   with Poisson arrivals: the capacity for its requests, whatever their timing).
2. **Streams.** For each seed and load ``x``: ``n`` requests of the workload at rate ``x * S``
   (profiles: Poisson arrivals drawn from the seed; a trace: its own arrival times, time-scaled
   to that mean rate, window ``k`` of ``n`` consecutive rows for the ``k``-th seed).
3. **Plans.** Each strategy plans the cluster for the workload at that rate (GA seed = the
   seed): a strategy tuned for its rate — the GA, Splitwise's pool sizes — is tuned for every load.
4. **Serve.** The same stream through each plan in the simulator (each strategy's own scheduler
   policy: Splitwise's for ``splitwise``, E2LLM's for the others).

A run is **saturated** when its waiting time grows over the stream
(:func:`~e2llm_lite.serving.saturation.is_saturated`: slope > 0.05) or the strategy cannot plan
the cluster at all. A trace replay's bursts make its waiting time rise and fall whatever the
capacity (the Azure code trace's inter-arrival CV is ~13: a burst late in a window looks like
growth, one early like decline), so for a trace the verdict comes from a Poisson stream of the
same seed, rate and lengths served by the same plan (``growth``; the replay's own slope is
``replay_growth``) and the latency figures from the replay; a strategy × load is saturated when any seed's run is, and then it carries no
latency figures (its queue has no steady state, so a mean would only measure the stream length).

Per strategy × load (:attr:`Comparison.results`): the mean over seeds of each run's mean / P50 /
P90 / P99 of waiting, TTFT, TBT and E2E (s), of its throughput (requests/s) and the share of seeds
whose slowdown SLOs were all met; ``seed_spread``: min and max over seeds of each run's mean;
``ratio_vs_splitwise``: this strategy's (seed-averaged) mean over Splitwise's at the same load, for
waiting, TTFT and E2E (None when either is saturated), and ``ratio_spread`` the min / max of the
per-seed ratios.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..costmodel import CostModel
from ..errors import InfeasiblePlan
from ..planning.workload_stats import workload_stats
from ..serving.saturation import GROWTH_LIMIT, is_saturated, sustainable_rps, waiting_growth
from ..serving.simulator import simulate_requests
from ..workload import Workload
from .strategies import DEFAULT_STRATEGIES, REFINED, plan_strategy

__all__ = ["Comparison", "DEFAULT_LOADS", "DEFAULT_REQUESTS", "RATIO_METRICS", "compare"]

DEFAULT_LOADS = (0.3, 0.5, 0.7, 0.9, 1.1)
DEFAULT_REQUESTS = 400
STATS = ("waiting_s", "ttft_s", "tbt_s", "e2e_s")
RATIO_METRICS = ("waiting_s", "ttft_s", "e2e_s")
BASELINE = "splitwise"
REFINE_SEED_OFFSET = 1000   # e2llm-sim's planning stream: seed + this, never a judged stream


@dataclass
class Comparison:
    """A finished comparison (module docstring). ``runs``: one dict per strategy x load x seed;
    ``results``: one per strategy x load; ``plans``: strategy -> the plan at the highest load of
    the first seed; ``records``: (strategy, load) -> the first seed's per-request records."""

    cluster: str
    workload: str
    saturation_rps: float
    loads: tuple
    strategies: tuple
    seeds: tuple
    requests: int
    runs: list = field(default_factory=list)
    results: list = field(default_factory=list)
    plans: dict = field(default_factory=dict)
    records: dict = field(default_factory=dict, repr=False)
    saturation_probes: list = field(default_factory=list)
    saturation_by_seed: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"cluster": self.cluster, "workload": self.workload,
                "saturation_rps": self.saturation_rps, "saturation_strategy": BASELINE,
                "saturation_rule": f"highest Poisson rate whose waiting grows <= {GROWTH_LIMIT} s/s",
                "saturation_probes": [{"rate_rps": r, "growth": g} for r, g in self.saturation_probes],
                "saturation_rps_by_seed": {str(k): v for k, v in self.saturation_by_seed.items()},
                "loads": list(self.loads), "strategies": list(self.strategies),
                "seeds": list(self.seeds), "requests": self.requests, "results": self.results,
                "runs": self.runs, "seconds": round(self.seconds, 1)}

    def result(self, strategy: str, load: float) -> dict:
        for r in self.results:
            if r["strategy"] == strategy and math.isclose(r["load"], load):
                return r
        raise KeyError((strategy, load))


def _window(workload: Workload, k: int, n: int) -> Workload:
    """A trace replay's ``k``-th window of ``n`` consecutive rows (wrapping round the trace)."""
    tr = workload.trace
    if len(tr) < n:
        raise ValueError(f"the trace has {len(tr)} requests; a comparison stream needs {n}")
    start = (k * n) % max(1, len(tr) - n + 1)
    return replace(workload, trace=tr.window(float(tr.arrival_s[start] - tr.arrival_s[0]), n))


def _stream(workload: Workload, rate: float, seed: int, k: int, n: int):
    """The ``k``-th seed's stream of ``n`` requests at mean rate ``rate`` (module docstring)."""
    if workload.arrival == "trace":
        return replace(_window(workload, k, n), rate=rate, seed=seed).generate(n=n)
    return replace(workload, rate=rate, seed=seed).generate(n=n)


def _run(plan, cluster, requests, costmodel) -> tuple[dict, list]:
    res = simulate_requests(plan, cluster, requests, costmodel=costmodel)
    recs = list(res.records.values())
    m = res.metrics()
    sat = is_saturated(recs)
    row = {"saturated": sat, "growth": waiting_growth(recs), "throughput_rps": m["throughput_rps"],
           "requests_done": m["requests_done"], "rejected": len(m["rejected"]),
           "slo_met": bool(m.get("slo", {}).get("all_met", False))}
    row.update({k: m["summary"][k] for k in STATS})
    return row, recs


def _aggregate(runs: list, strategies, loads) -> list:
    """One entry per strategy x load from the per-seed runs (module docstring)."""
    out = []
    by = {}
    for r in runs:
        by.setdefault((r["strategy"], r["load"]), []).append(r)
    for load in loads:
        base = by.get((BASELINE, load))
        base_sat = base is None or any(r["saturated"] for r in base)
        for s in strategies:
            rs = by[(s, load)]
            e = {"strategy": s, "load": load, "rate_rps": float(np.mean([r["rate_rps"] for r in rs])),
                 "saturated": any(r["saturated"] for r in rs),
                 "seeds_saturated": sum(r["saturated"] for r in rs), "seeds": len(rs),
                 "growth": float(np.mean([r["growth"] for r in rs])),
                 "throughput_rps": float(np.mean([r.get("throughput_rps", 0.0) for r in rs])),
                 "rejected": int(sum(r.get("rejected", 0) for r in rs))}
            if any("error" in r for r in rs):
                e["error"] = next(r["error"] for r in rs if "error" in r)
            if not e["saturated"]:
                for k in STATS:
                    e[k] = {q: _mean([r[k][q] for r in rs]) for q in ("mean", "p50", "p90", "p99")}
                e["seed_spread"] = {k: [_min([r[k]["mean"] for r in rs]), _max([r[k]["mean"] for r in rs])]
                                    for k in STATS}
                e["slo_met_share"] = float(np.mean([r["slo_met"] for r in rs]))
            ratio, spread = {}, {}
            for k in RATIO_METRICS:
                if e["saturated"] or base_sat:
                    ratio[k] = None
                    spread[k] = None
                    continue
                b = _mean([r[k]["mean"] for r in base])
                ratio[k] = (e[k]["mean"] / b) if b else None
                per = [a[k]["mean"] / c[k]["mean"] for a, c in zip(sorted(rs, key=lambda r: r["seed"]),
                                                                   sorted(base, key=lambda r: r["seed"]))
                       if a[k]["mean"] is not None and c[k]["mean"]]
                spread[k] = [min(per), max(per)] if per else None
            e["ratio_vs_splitwise"] = ratio
            e["ratio_spread"] = spread
            out.append(e)
    return out


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def _min(xs):
    xs = [x for x in xs if x is not None]
    return float(min(xs)) if xs else None


def _max(xs):
    xs = [x for x in xs if x is not None]
    return float(max(xs)) if xs else None


def compare(cluster, workload: Workload, *, loads=DEFAULT_LOADS, strategies=DEFAULT_STRATEGIES,
            seeds=(0,), n: int = DEFAULT_REQUESTS, costmodel=None, saturation_rps: float | None = None,
            progress=None, keep_records: bool = False) -> Comparison:
    """Run the comparison of the module docstring.

    ``workload``: a :class:`~e2llm_lite.workload.Workload` (its lengths and arrival process; its
    rate and seed are replaced). ``loads``: fractions of Splitwise's sustainable rate.
    ``saturation_rps``: skip the search and use this rate (requests/s). ``progress``: a callable
    ``(done, total, text)`` or None. ``keep_records``: keep the first seed's per-request records
    (for CDFs). Splitwise is always planned (it defines the load) but reported only if listed.
    """
    loads = tuple(float(x) for x in loads)
    if not loads or any(not (math.isfinite(x) and x > 0) for x in loads):
        raise ValueError(f"loads must be positive numbers (fractions of the saturation rate), got {loads!r}")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("give at least one seed")
    if n < 10:
        raise ValueError(f"a comparison stream needs at least 10 requests, got {n}")
    strategies = tuple(dict.fromkeys(strategies))
    if not strategies:
        raise ValueError("give at least one strategy")
    cm = costmodel or CostModel.load()
    t0 = time.perf_counter()
    stats = workload_stats(workload, cm)
    run_strats = strategies if BASELINE in strategies else (BASELINE,) + strategies
    first = replace(workload, seed=seeds[0])
    total = len(seeds) * len(loads) * len(run_strats)
    done = 0

    def tick(text):
        if progress:
            progress(done, total, text)

    def search(seed: int):
        base = replace(first, arrival="poisson") if first.arrival == "trace" else first
        tick(f"finding Splitwise's sustainable rate (seed {seed})")
        return sustainable_rps(lambda r: plan_strategy(BASELINE, cluster, stats, r, seed=seed, costmodel=cm),
                               cluster, base, n=n, costmodel=cm,
                               progress=lambda r, g: tick(f"saturation probe {r:.3g} req/s: growth {g:.3f}"))

    probes = []
    if saturation_rps is None:
        found = search(seeds[0])
        saturation_rps, probes = found["rate_rps"], found["probes"]
    by_seed = {seeds[0]: float(saturation_rps)}
    comp = Comparison(cluster=cluster.name, workload=stats.name, saturation_rps=float(saturation_rps),
                      loads=loads, strategies=strategies, seeds=seeds, requests=n,
                      saturation_probes=probes, saturation_by_seed=by_seed)
    for k, seed in enumerate(seeds):
        by_seed.setdefault(seed, float(saturation_rps))
        for load in loads:
            rate = load * by_seed[seed]
            requests = _stream(workload, rate, seed, k, n)
            for s in run_strats:
                tick(f"seed {seed}, load {load:g}: {s}")
                run = {"strategy": s, "load": load, "seed": seed, "rate_rps": rate}
                try:
                    refine = None
                    if s == REFINED:   # an independent stream (another seed), Poisson, at most 200
                        refine = replace(workload, rate=rate, seed=seed + REFINE_SEED_OFFSET,
                                         arrival="poisson").generate(n=min(n, 200))
                    plan = plan_strategy(s, cluster, stats, rate, seed=seed, costmodel=cm,
                                         refine_requests=refine)
                except InfeasiblePlan as exc:
                    run.update({"saturated": True, "growth": math.inf, "error": str(exc)})
                else:
                    row, recs = _run(plan, cluster, requests, cm)
                    if workload.arrival == "trace":   # saturation is a matter of capacity, not bursts
                        poisson = replace(workload, rate=rate, seed=seed, arrival="poisson").generate(n=n)
                        cap, _ = _run(plan, cluster, poisson, cm)
                        row.update(replay_growth=row["growth"], saturated=cap["saturated"],
                                   growth=cap["growth"])
                    run.update(row)
                    if k == 0:
                        comp.plans[s] = plan
                        if keep_records:
                            comp.records[(s, load)] = recs
                comp.runs.append(run)
                done += 1
    tick("done")
    comp.results = _aggregate(comp.runs, strategies, loads)
    comp.runs = [r for r in comp.runs if r["strategy"] in strategies]
    comp.seconds = time.perf_counter() - t0
    return comp
