"""The headline: E2LLM / Splitwise on mixed8 and edge16, code and conv, at 0.3-1.1 x Splitwise's
sustainable rate, several seeds — the paper's claim is a mean-waiting ratio <= 0.5 at high load.

For every cluster x workload (the built-in ``code`` and ``conv`` profiles with Poisson arrivals,
and the Azure LLM inference trace 2023 files replayed with their own arrival times, time-scaled to
each load): :func:`e2llm_lite.compare.compare` of ``e2llm`` and ``splitwise`` (``--seeds`` seeds,
``--requests`` requests per run), printing Splitwise's sustainable rate and, per load, the ratio of
mean waiting, TTFT and E2E (mean over seeds and the per-seed range), "sat." where a strategy's
queue grows. ``--capacity`` also finds E2LLM's own sustainable rate (seed 0), so that a load where
Splitwise is saturated still has a comparison: how much more E2LLM sustains.

    .venv/bin/python benchmarks/headline.py [--seeds 3] [--requests 400] [--json] [--out DIR]

Simulated (virtual clock): the figures are deterministic; the wall time is shown, not asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from e2llm_lite.compare import compare
from e2llm_lite.compare.plots import plot_ratio_vs_load, plot_waiting_vs_load
from e2llm_lite.compare.report import format_table, write_csv
from e2llm_lite.compare.strategies import plan_strategy
from e2llm_lite.devices import preset
from e2llm_lite.planning.workload_stats import workload_stats
from e2llm_lite.serving.saturation import sustainable_rps
from e2llm_lite.workload import workload_from_spec

TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "azure-llm-trace-2023"
WORKLOADS = {"code": "code", "conv": "conv",
             "azure-code": str(TRACES / "AzureLLMInferenceTrace_code.csv"),
             "azure-conv": str(TRACES / "AzureLLMInferenceTrace_conv.csv")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", default="mixed8,edge16")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--loads", default="0.3,0.5,0.7,0.9,1.1")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--capacity", action="store_true", help="also E2LLM's own sustainable rate")
    ap.add_argument("--refined", action="store_true", help="also e2llm-sim (the GA's best re-ranked "
                    "by simulating an independent stream)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--out", help="folder for per-case summary.csv and figures")
    a = ap.parse_args()
    loads = [float(x) for x in a.loads.split(",")]
    out = []
    t_all = time.perf_counter()
    for cname in a.clusters.split(","):
        cluster = preset(cname)
        for wname in a.workloads.split(","):
            spec = WORKLOADS.get(wname, wname)
            if not a.json:
                print(f"\n## {wname} on {cname}", flush=True)
            wl = workload_from_spec(spec, 1.0 if wname in ("code", "conv") else None)
            t0 = time.perf_counter()
            strategies = ("e2llm", "e2llm-sim", "splitwise") if a.refined else ("e2llm", "splitwise")
            comp = compare(cluster, wl, loads=loads, strategies=strategies,
                           seeds=range(a.seeds), n=a.requests)
            case = {"cluster": cname, "workload": wname, "saturation_rps": comp.saturation_rps,
                    "results": comp.results, "seconds": round(time.perf_counter() - t0, 1)}
            if a.capacity:
                stats = workload_stats(wl)
                base = replace(wl, arrival="poisson")   # a trace: its lengths, Poisson arrivals (as compare)
                found = sustainable_rps(lambda r: plan_strategy("e2llm", cluster, stats, r), cluster, base,
                                        n=a.requests, guess=comp.saturation_rps)
                case["e2llm_sustainable_rps"] = found["rate_rps"]
            out.append(case)
            if a.out:
                d = Path(a.out) / f"{cname}_{wname}"
                d.mkdir(parents=True, exist_ok=True)
                write_csv(comp.results, d / "summary.csv")
                plot_waiting_vs_load(comp).savefig(d / "waiting_vs_load.png", dpi=100, bbox_inches="tight")
                plot_ratio_vs_load(comp).savefig(d / "ratio_vs_load.png", dpi=100, bbox_inches="tight")
            if not a.json:
                print(f"Splitwise sustains {comp.saturation_rps:.4g} req/s"
                      + (f"; E2LLM sustains {case['e2llm_sustainable_rps']:.4g} req/s "
                         f"({case['e2llm_sustainable_rps'] / comp.saturation_rps:.2f}x)" if a.capacity else "")
                      + f" ({case['seconds']:.0f} s)")
                print(format_table(comp), flush=True)
    summary = {"cases": out, "seeds": a.seeds, "requests": a.requests, "loads": loads,
               "wall_s": round(time.perf_counter() - t_all, 1)}
    if a.out:
        (Path(a.out) / "headline.json").write_text(json.dumps(summary, indent=1))
    if a.json:
        json.dump({"cases": out, "seeds": a.seeds, "requests": a.requests, "loads": loads,
                   "wall_s": round(time.perf_counter() - t_all, 1)}, sys.stdout, indent=1)
        print()
    else:
        print(f"\n{time.perf_counter() - t_all:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
