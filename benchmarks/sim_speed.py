"""How fast the simulator serves the whole Azure conv trace (19,366 requests) on an edge16 plan.

The plan: E2LLM's GA (quick settings) for edge16 at the trace's lengths; the trace is replayed with
its own arrival times stretched so its mean rate is ``--load`` x the plan's predicted capacity
(edge devices are far slower than Azure's GPUs). Prints wall seconds, simulated requests per wall
second and events per wall second (goal: <= 30 s on 2 cores). Usage:

    .venv/bin/python benchmarks/sim_speed.py [--load 0.6] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from e2llm_lite.devices import preset
from e2llm_lite.planning import make_plan
from e2llm_lite.planning.ga import GAConfig
from e2llm_lite.serving.simulator import simulate_requests
from e2llm_lite.workload import Workload, read_trace

TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "azure-llm-trace-2023" / \
    "AzureLLMInferenceTrace_conv.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--load", type=float, default=0.6, help="trace rate / predicted capacity")
    ap.add_argument("--trace", default=str(TRACE))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cluster = preset("edge16")
    trace = read_trace(a.trace)
    wl0 = Workload.from_trace(trace)
    plan = make_plan(cluster, "e2llm", wl0, wl0.rate, config=GAConfig(population=20, generations=30,
                                                                      patience=10), progress=False)
    capacity = plan.predicted["capacity_rps"]
    wl = Workload.from_trace(trace, rate_scale=a.load * capacity / trace.rate)
    requests = wl.generate()
    t0 = time.perf_counter()
    res = simulate_requests(plan, cluster, requests)
    wall = time.perf_counter() - t0
    m = res.metrics()
    out = {"requests": len(requests), "rate_rps": wl.rate, "predicted_capacity_rps": capacity,
           "time_scale": trace.rate / wl.rate, "wall_s": round(wall, 2),
           "requests_per_wall_s": round(len(requests) / wall), "events": res.events,
           "events_per_wall_s": round(res.events / wall), "requests_done": m["requests_done"],
           "rejected": len(m["rejected"]), "simulated_s": round(m["duration_s"], 1),
           "mean_waiting_s": m["summary"]["waiting_s"]["mean"],
           "throughput_rps": m["throughput_rps"], "goal_wall_s": 30}
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print(plan.summary())
    print(f"\nwhole conv trace: {out['requests']} requests at {out['rate_rps']:.3g} req/s "
          f"(trace time x {out['time_scale']:.1f}; {a.load:g} of the predicted capacity "
          f"{capacity:.3g} req/s)")
    print(f"simulated {out['simulated_s']:.0f} s of device time in {wall:.1f} s of wall time: "
          f"{out['requests_per_wall_s']} requests/s, {out['events_per_wall_s']} events/s "
          f"(goal <= 30 s: {'met' if wall <= 30 else 'MISSED'})")
    print(f"done {out['requests_done']}, rejected {out['rejected']}; throughput "
          f"{out['throughput_rps']:.3g} req/s; mean waiting {out['mean_waiting_s']:.3g} s")


if __name__ == "__main__":
    main()
