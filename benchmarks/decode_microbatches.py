"""Does keeping several decode micro-batches in flight pay on multi-stage DECODER replicas?

A GA plan of ``edge16`` (conv, planned at 1 request/s; its decoders are 3-4-stage pipelines), the
same Poisson request stream served with ``decode_microbatches`` k = 1 (one batch circulates, as the
planner assumes), 2, 3, 4, at three rates. Prints throughput, mean waiting, TBT and end-to-end per
k (simulator, device time). Usage: ``.venv/bin/python benchmarks/decode_microbatches.py [--json]``
"""

from __future__ import annotations

import argparse
import json

from e2llm_lite.devices import preset
from e2llm_lite.planning import make_plan
from e2llm_lite.planning.ga import GAConfig
from e2llm_lite.serving.simulator import simulate_requests
from e2llm_lite.workload import workload_from_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cluster = preset("edge16")
    plan = make_plan(cluster, "e2llm", "conv", 1.0, config=GAConfig(population=20, generations=30,
                                                                     patience=10), progress=False)
    rows = []
    for rate in (0.7, 1.0, 1.3):
        reqs = workload_from_spec("conv", rate, seed=0).generate(n=a.requests)
        for k in (1, 2, 3, 4):
            m = simulate_requests(plan, cluster, reqs, decode_microbatches=k).metrics()
            rows.append({"rate_rps": rate, "microbatches": k, "throughput_rps": m["throughput_rps"],
                         "waiting_s": m["summary"]["waiting_s"]["mean"],
                         "tbt_s": m["summary"]["tbt_s"]["mean"], "e2e_s": m["summary"]["e2e_s"]["mean"]})
    if a.json:
        print(json.dumps({"plan": plan.to_dict()["replicas"], "rows": rows}, indent=1))
        return
    print(plan.summary())
    print(f"\n{'req/s':>6s} {'k':>2s} {'served/s':>9s} {'waiting s':>10s} {'TBT s':>8s} {'E2E s':>8s}")
    for r in rows:
        print(f"{r['rate_rps']:6.1f} {r['microbatches']:2d} {r['throughput_rps']:9.3f} "
              f"{r['waiting_s']:10.3f} {r['tbt_s']:8.4f} {r['e2e_s']:8.2f}")


if __name__ == "__main__":
    main()
