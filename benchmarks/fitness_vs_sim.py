"""The planner's formula against the simulator: predicted vs simulated mean waiting time and TTFT.

For the e2llm, splitwise and colocated plans of ``mixed8`` and ``edge16`` (conv workload, planned at
``--plan-rate``), at 30-90 % of the smallest predicted capacity of the three (so every plan is
feasible by the formula at every rate), Poisson arrivals: the formula's figures
(:func:`e2llm_lite.planning.queueing.predict` at that rate) against the simulator's (the scheduler on
the virtual clock, ``--requests`` requests, one seed). Prints the error table (simulated / predicted)
and, per rate, whether the two rank the three plans the same way by mean waiting time. Usage:

    .venv/bin/python benchmarks/fitness_vs_sim.py [--requests 1500] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

from e2llm_lite.costmodel import CostModel
from e2llm_lite.devices import preset
from e2llm_lite.planning import make_plan, workload_stats
from e2llm_lite.planning.ga import GAConfig
from e2llm_lite.planning.queueing import predict
from e2llm_lite.serving.simulator import simulate_requests
from e2llm_lite.workload import workload_from_spec

STRATEGIES = ("e2llm", "splitwise", "colocated")
LOADS = (0.3, 0.5, 0.7, 0.9)


def ratio(a, b):
    return a / b if b and math.isfinite(b) and b > 0 and a is not None else math.nan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--plan-rate", type=float, default=1.0)
    ap.add_argument("--clusters", default="mixed8,edge16")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cm = CostModel.load()
    rows, rankings = [], []
    t0 = time.perf_counter()
    for name in a.clusters.split(","):
        cluster = preset(name)
        wl = workload_from_spec("conv", a.plan_rate, seed=0)
        stats = workload_stats(wl, cm)
        plans = {s: make_plan(cluster, s, stats, a.plan_rate, config=GAConfig(population=20,
                                                                               generations=30,
                                                                               patience=10),
                              costmodel=cm, progress=False) for s in STRATEGIES}
        cap = min(predict(p.replicas, stats, a.plan_rate, cluster=cluster).capacity_rps
                  for p in plans.values())
        for load in LOADS:
            rate = load * cap
            reqs = workload_from_spec("conv", rate, seed=1).generate(n=a.requests)
            pred_wait, sim_wait = {}, {}
            for s, plan in plans.items():
                pred = predict(plan.replicas, stats, rate, cluster=cluster)
                m = simulate_requests(plan, cluster, reqs, costmodel=cm).metrics()
                sw, st = m["summary"]["waiting_s"]["mean"], m["summary"]["ttft_s"]["mean"]
                pred_wait[s], sim_wait[s] = pred.mean_wait_s, sw
                rows.append({"cluster": name, "strategy": s, "load": load, "rate_rps": rate,
                             "predicted_wait_s": pred.mean_wait_s, "simulated_wait_s": sw,
                             "wait_ratio": ratio(sw, pred.mean_wait_s),
                             "predicted_ttft_s": pred.ttft_s, "simulated_ttft_s": st,
                             "ttft_ratio": ratio(st, pred.ttft_s),
                             "simulated_throughput_rps": m["throughput_rps"],
                             "rejected": len(m["rejected"])})
            by_pred = sorted(STRATEGIES, key=lambda s: pred_wait[s])
            by_sim = sorted(STRATEGIES, key=lambda s: sim_wait[s])
            rankings.append({"cluster": name, "load": load, "rate_rps": rate,
                             "formula": by_pred, "simulator": by_sim, "agree": by_pred == by_sim})
    out = {"requests": a.requests, "rows": rows, "rankings": rankings,
           "wall_s": round(time.perf_counter() - t0, 1)}
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(f"conv workload, {a.requests} Poisson requests per point; rates = load x the smallest "
          "predicted capacity of the three plans\n")
    print(f"{'cluster':8s} {'plan':10s} {'load':>5s} {'req/s':>7s} | {'wait pred':>10s} "
          f"{'wait sim':>10s} {'sim/pred':>9s} | {'TTFT pred':>10s} {'TTFT sim':>10s} {'sim/pred':>9s}")
    for r in rows:
        print(f"{r['cluster']:8s} {r['strategy']:10s} {r['load']:5.1f} {r['rate_rps']:7.3f} | "
              f"{r['predicted_wait_s']:10.4g} {r['simulated_wait_s']:10.4g} {r['wait_ratio']:9.3g} | "
              f"{r['predicted_ttft_s']:10.4g} {r['simulated_ttft_s']:10.4g} {r['ttft_ratio']:9.3g}")
    print("\nranking of the plans by mean waiting time (best first):")
    for k in rankings:
        print(f"  {k['cluster']:8s} load {k['load']:.1f}: formula {' < '.join(k['formula'])}; "
              f"simulator {' < '.join(k['simulator'])}  -> {'agree' if k['agree'] else 'DISAGREE'}")
    n_agree = sum(k["agree"] for k in rankings)
    print(f"\nrankings agree at {n_agree} of {len(rankings)} points ({out['wall_s']} s)")


if __name__ == "__main__":
    main()
