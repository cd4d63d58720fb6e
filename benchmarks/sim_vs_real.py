"""Does the simulator agree with reality? The same request stream served for real on the emulated
devices and in the simulator, per strategy.

A plan of ``--cluster`` (default: four ``host`` devices) for the conv workload with prompts and
outputs scaled by ``--prompt-scale``; its capacity for that stream is measured in the simulator
(every request arriving at once: the throughput it sustains); then ``--requests`` requests arrive
as Poisson at ``--load`` x that capacity and are served twice — by the real runtime (calibrated
devices, the dilation for every device computing at once) and by the simulator (the same cost
model, the same requests). Prints real vs simulated mean and P90 of waiting, TTFT and end-to-end
(goal: means within 10 %) and the real run's overruns (a run with overruns does not count).

    .venv/bin/python benchmarks/sim_vs_real.py [--requests 40] [--load 0.5] [--strategies e2llm,splitwise]
"""

import argparse
import json
import sys
import time

from e2llm_lite.costmodel import CostModel
from e2llm_lite.devices import default_cluster, load_cluster
from e2llm_lite.model import checkpoint_dir, load_tokenizer
from e2llm_lite.planning import make_plan
from e2llm_lite.planning.ga import GAConfig
from e2llm_lite.runtime.driver import EmulatedCluster
from e2llm_lite.serving.emulated import serve_requests
from e2llm_lite.serving.fidelity import METRICS, error_table
from e2llm_lite.serving.prompts import prompt_ids
from e2llm_lite.serving.saturation import burst_throughput_rps
from e2llm_lite.serving.simulator import simulate_requests
from e2llm_lite.workload import workload_from_spec


def workload(rate: float, scale: float, seed: int):
    return workload_from_spec("conv", rate, seed=seed, prompt_scale=scale, output_scale=scale)


def stream(rate: float, n: int, scale: float, seed: int):
    return workload(rate, scale, seed).generate(n=n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cluster", help="cluster file or preset (default: 4 host devices)")
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--load", type=float, default=0.5, help="fraction of the simulated capacity")
    ap.add_argument("--prompt-scale", type=float, default=0.05)
    ap.add_argument("--strategies", default="e2llm,splitwise")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dilation", type=float, help="default: picked for every device computing at once")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = sys.stderr if args.json else sys.stdout
    cm = CostModel.load()
    cluster = load_cluster(args.cluster) if args.cluster else default_cluster(4)
    tok = load_tokenizer(checkpoint_dir(progress=False))
    results = {}
    for strategy in args.strategies.split(","):
        kw = dict(roles=("prefill", "decoder")) if strategy == "e2llm" else {}
        plan = make_plan(cluster, strategy, workload(1.0, args.prompt_scale, args.seed), 1.0,
                         seed=args.seed, costmodel=cm,
                         config=GAConfig(population=16, generations=10, patience=4), **kw)
        capacity = burst_throughput_rps(plan, cluster, workload(1.0, args.prompt_scale, args.seed),
                                  n=args.requests, costmodel=cm)
        rate = args.load * capacity
        requests = stream(rate, args.requests, args.prompt_scale, args.seed)
        prompts = {r.id: prompt_ids(tok, r.prompt_tokens, r.id) for r in requests}
        sim = simulate_requests(plan, cluster, requests, costmodel=cm).metrics()
        t0 = time.monotonic()
        with EmulatedCluster(cluster, calibrate=True, costmodel=cm, concurrency="all",
                             dilation=args.dilation) as rt:
            pipes = rt.load_plan(plan)
            rt.free(reset_stats=True)
            res = serve_requests(rt, pipes, plan, cluster, requests, prompts, costmodel=cm)
        real = res.metrics()
        roles = ", ".join(f"{r.name} {r.role} {[d for d, _, _ in r.stages]}" for r in plan.replicas)
        print(f"{strategy}: {roles}; simulated capacity {capacity:.3f} req/s, served at {rate:.3f} "
              f"({args.load:g}x), {len(requests)} requests; real run {time.monotonic() - t0:.0f} s wall, "
              f"dilation {res.dilation:g}, overruns {sum(res.overruns.values())}", file=out)
        row = {"capacity_rps": capacity, "rate_rps": rate, "overruns": res.overruns,
               "done_real": real["requests_done"], "done_sim": sim["requests_done"]}
        table = error_table(real, sim)
        for m in METRICS:
            r, s, err = table[m]["real"], table[m]["sim"], table[m]["error"]
            row[m] = table[m]
            fmt = lambda e: "n/a" if e is None else f"{e:+.1%}"   # noqa: E731
            print(f"  {m[:-2]:8s} mean real {r['mean']:.3f} s sim {s['mean']:.3f} s ({fmt(err['mean'])}); "
                  f"P90 real {r['p90']:.3f} sim {s['p90']:.3f} ({fmt(err['p90'])})", file=out)
        results[strategy] = row
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
