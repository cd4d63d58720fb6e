"""Serving soak: many short requests through a 6-device E2LLM plan for real; does memory leak?

An E2LLM plan (PREFILL + DECODER replicas) of six ``host`` devices for the conv workload with
prompts and outputs scaled by ``--prompt-scale``; ``--requests`` requests arrive as Poisson at
``--load`` x the plan's simulated capacity and are served by the real runtime (calibrated, the
dilation for every device computing at once). The resident memory (RSS) of the driver and of every
worker is sampled when the 50th, 100th, ... request has finished; the leak figure is the growth
from request 50 to the last (goal: within 10 % for the driver and every worker). After the run the
workers must be gone: an **orphan** is a worker process still alive 5 s after the cluster closed.

    .venv/bin/python benchmarks/serve_soak.py [--requests 200] [--load 0.7] [--json]
"""

import argparse
import json
import sys
import time

import psutil

from e2llm_lite.costmodel import CostModel
from e2llm_lite.devices import default_cluster
from e2llm_lite.model import checkpoint_dir, load_tokenizer
from e2llm_lite.planning import make_plan
from e2llm_lite.planning.ga import GAConfig
from e2llm_lite.runtime.driver import EmulatedCluster
from e2llm_lite.serving.emulated import serve_requests
from e2llm_lite.serving.prompts import prompt_ids
from e2llm_lite.serving.saturation import burst_throughput_rps
from e2llm_lite.workload import workload_from_spec

MIB = 2 ** 20
GRACE_S = 5.0


def rss_mib(pids) -> list[float]:
    """Resident set size of each process, MiB (nan if it is gone)."""
    out = []
    for p in pids:
        try:
            out.append(psutil.Process(p).memory_info().rss / MIB)
        except psutil.NoSuchProcess:
            out.append(float("nan"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--devices", type=int, default=6)
    ap.add_argument("--load", type=float, default=0.7, help="fraction of the simulated capacity")
    ap.add_argument("--prompt-scale", type=float, default=0.02)
    ap.add_argument("--every", type=int, default=50, help="sample RSS every this many finished")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = sys.stderr if args.json else sys.stdout
    cm = CostModel.load()
    cluster = default_cluster(args.devices)
    tok = load_tokenizer(checkpoint_dir(progress=False))

    def wl(rate):
        return workload_from_spec("conv", rate, seed=args.seed, prompt_scale=args.prompt_scale,
                                  output_scale=args.prompt_scale)

    plan = make_plan(cluster, "e2llm", wl(1.0), 1.0, seed=args.seed, costmodel=cm,
                     config=GAConfig(population=16, generations=10, patience=4),
                     roles=("prefill", "decoder"))
    capacity = burst_throughput_rps(plan, cluster, wl(1.0), n=args.requests, costmodel=cm)
    requests = wl(args.load * capacity).generate(n=args.requests)
    prompts = {r.id: prompt_ids(tok, r.prompt_tokens, r.id) for r in requests}
    wanted = {r.id: r.output_tokens for r in requests}
    got: dict[int, int] = {}
    samples: list[dict] = []
    t0 = time.monotonic()
    with EmulatedCluster(cluster, calibrate=True, costmodel=cm, concurrency="all") as rt:
        pids = [p.pid for p in rt.procs]
        pipes = rt.load_plan(plan)
        rt.free(reset_stats=True)

        def on_token(rid, _tok):
            got[rid] = got.get(rid, 0) + 1
            if got[rid] == wanted[rid]:
                done = sum(got[r] == wanted[r] for r in got)
                if done % args.every == 0 or done == len(requests):
                    samples.append({"done": done, "wall_s": time.monotonic() - t0,
                                    "driver_mib": rss_mib([psutil.Process().pid])[0],
                                    "workers_mib": rss_mib(pids)})

        res = serve_requests(rt, pipes, plan, cluster, requests, prompts, costmodel=cm,
                             on_token=on_token, progress=not args.json)
    closed = time.monotonic()
    while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
              for p in pids) and time.monotonic() - closed < GRACE_S:
        time.sleep(0.1)
    orphans = [p for p in pids if psutil.pid_exists(p)
               and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    m = res.metrics()
    first, last = samples[0], samples[-1]
    growth = {"driver": last["driver_mib"] / first["driver_mib"] - 1,
              "workers": [b / a - 1 for a, b in zip(first["workers_mib"], last["workers_mib"])]}
    roles = ", ".join(f"{r.name} {r.role} {[d for d, _, _ in r.stages]}" for r in plan.replicas)
    print(f"plan: {roles}; simulated capacity {capacity:.3f} req/s, served at "
          f"{args.load * capacity:.3f} ({args.load:g}x)", file=out)
    print(f"{m['requests_done']}/{len(requests)} done, {len(m['rejected'])} rejected; "
          f"{res.wall_s:.0f} s wall, dilation {res.dilation:g}, overruns {sum(res.overruns.values())}",
          file=out)
    for s in samples:
        print(f"  after {s['done']:4d} requests ({s['wall_s']:5.0f} s): driver {s['driver_mib']:.0f} MiB, "
              f"workers " + " ".join(f"{w:.0f}" for w in s["workers_mib"]) + " MiB", file=out)
    print(f"RSS growth from request {first['done']} to {last['done']}: driver {growth['driver']:+.1%}, "
          f"workers " + " ".join(f"{g:+.1%}" for g in growth["workers"])
          + f" (worst {max(growth['workers'] + [growth['driver']]):+.1%}; goal within 10 %)", file=out)
    print(f"orphan worker processes {GRACE_S:g} s after the cluster closed: {len(orphans)}", file=out)
    for p in orphans:
        psutil.Process(p).kill()
    if args.json:
        print(json.dumps({"plan": roles, "capacity_rps": capacity, "metrics": m["summary"],
                          "requests_done": m["requests_done"], "overruns": res.overruns,
                          "wall_s": res.wall_s, "samples": samples, "growth": growth,
                          "orphans": len(orphans)}, indent=1))


if __name__ == "__main__":
    main()
