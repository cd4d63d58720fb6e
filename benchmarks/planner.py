"""Planner benchmark: DP time, GA time, GA vs the exhaustive optimum, GA vs random search.

Run:  .venv/bin/python benchmarks/planner.py [--quick] [--seeds 5]

Prints (wall times on this machine; the project's is a shared 2-core VM):

1. DP time for 30 layers x 8 and x 12 devices (benchmarks/planner_dp.py's seeded instances),
   ``dp.partition`` and the batched variant the planner uses (identical results). Goal <= 0.1 s at 8.
2. GA time to plan 8 (the ``mixed8`` preset), 32 and 128 devices (:func:`synthetic_cluster`) for
   the ``conv`` workload at a high load (below), with the predicted mean waiting time of the GA's
   plan and of the baselines. Goal: 32 devices <= 10 s.
3. On 6-, 7- and 8-device clusters (5 seeded synthetic clusters of each size + ``mixed8``, workloads
   ``conv`` and ``code``): the share of GA seeds whose plan reaches the exhaustive optimum (equal
   within 0.01 % + 0.1 ms, the GA's own improvement threshold), the median gap otherwise, and the
   exhaustive search's time. Goal >= 95 %.
4. GA vs random search at equal numbers of distinct evaluations (the GA here without the
   baseline seeds in its first population, so both start from random groupings).

The load: ``rate = 0.85 x`` the largest capacity among the colocated, Splitwise and single-pipeline
baselines (each planned for a rate equal to the colocated plan's capacity) — busy enough for the waiting time to
depend on the plan. The planner's DP cache is shared between the GA runs on one cluster (as it
would be inside one planning session); every GA run counts its own evaluations.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from planner_dp import instance  # noqa: E402

from e2llm_lite.devices import preset  # noqa: E402
from e2llm_lite.errors import InfeasiblePlan  # noqa: E402
from e2llm_lite.planning import SearchProblem, exhaustive_search, random_search  # noqa: E402
from e2llm_lite.planning import baselines  # noqa: E402
from e2llm_lite.planning.dp import partition  # noqa: E402
from e2llm_lite.planning.dp_batched import partition_arrays  # noqa: E402
from e2llm_lite.planning.ga import GAConfig, ga_search  # noqa: E402
from e2llm_lite.planning.synthetic import synthetic_cluster  # noqa: E402

BASELINES = {"colocated": baselines.colocated_plan, "splitwise": baselines.splitwise_plan,
             "pipeline": baselines.pipeline_plan, "exo": baselines.exo_plan}


def same(f: float, opt: float) -> bool:
    return f <= opt * (1 + 1e-4) + 1e-4


def high_load_rate(cluster, workload: str) -> tuple[float, SearchProblem] | None:
    """The benchmark's rate (module docstring) and a problem at that rate (shares the DP cache)."""
    p0 = SearchProblem(cluster, workload, 1.0)
    try:
        cap = baselines.colocated_plan(p0).predicted["capacity_rps"]
    except InfeasiblePlan:
        return None
    p1 = SearchProblem(cluster, workload, cap, planner=p0.planner)
    caps = []
    for name in ("colocated", "splitwise", "pipeline"):
        try:
            caps.append(BASELINES[name](p1).predicted["capacity_rps"])
        except InfeasiblePlan:
            pass
    rate = round(0.85 * max(caps), 3)
    return rate, SearchProblem(cluster, workload, rate, planner=p0.planner)


def dp_times(repeats: int) -> None:
    print("1. DP partitioning, 30 layers (median of %d runs)" % repeats)
    print(f"   {'devices':>7} {'dp.partition s':>15} {'batched s':>10} {'same plan':>9}")
    for n in (8, 12):
        inst = instance(n, 30, seed=n)
        a = {k: np.asarray(v, dtype=float) for k, v in inst.items()}
        row = []
        for fn in (lambda: partition(**inst),
                   lambda: partition_arrays(a["compute"], a["layer_mem"], a["device_mem"], a["comm"],
                                            "bottleneck", float(a["extra_first_mem"]),
                                            float(a["extra_last_mem"]), a["extra_first_ms"],
                                            a["extra_last_ms"])):
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                plan = fn()
                ts.append(time.perf_counter() - t0)
            row.append((statistics.median(ts), plan))
        print(f"   {n:>7} {row[0][0]:>15.4f} {row[1][0]:>10.4f} "
              f"{str(row[0][1].stages == row[1][1].stages and row[0][1].cost == row[1][1].cost):>9}")


def ga_times(sizes, seeds) -> None:
    print("\n2. GA planning time, workload conv at 0.85 x the best baseline's capacity")
    print(f"   {'devices':>7} {'rate':>6} {'GA s (median)':>13} {'gens':>5} {'evals':>6} "
          f"{'GA wait s':>10} {'splitwise':>10} {'colocated':>10} {'pipeline':>10} {'exo':>8}")
    for n in sizes:
        cluster = preset("mixed8") if n == 8 else synthetic_cluster(n, seed=1)
        rate, prob = high_load_rate(cluster, "conv")
        base = {}
        for name, fn in BASELINES.items():
            try:
                p = fn(prob).predicted
                base[name] = p["mean_wait_s"] if p["feasible"] else float("inf")
            except InfeasiblePlan:
                base[name] = float("nan")
        times, fits, gens, evals = [], [], [], []
        for seed in seeds:
            # a fresh DP cache per seed: the time includes every DP run the GA needs
            p = SearchProblem(cluster, "conv", rate)
            t0 = time.perf_counter()
            _, f, hist = ga_search(p, seed=seed, progress=False, seeds=baselines.seed_groupings)
            times.append(time.perf_counter() - t0)
            fits.append(f)
            gens.append(hist.generations)
            evals.append(hist.evaluations[-1])
        print(f"   {n:>7} {rate:>6.3g} {statistics.median(times):>13.2f} {int(statistics.median(gens)):>5} "
              f"{int(statistics.median(evals)):>6} {statistics.median(fits):>10.4g} "
              f"{base['splitwise']:>10.4g} {base['colocated']:>10.4g} {base['pipeline']:>10.4g} "
              f"{base['exo']:>8.4g}")
        sys.stdout.flush()


def small_cases(quick: bool):
    cases = [preset("mixed8")]
    per_size = 2 if quick else 5
    for n in (6, 7, 8):
        for s in range(per_size):
            cases.append(synthetic_cluster(n, seed=100 * n + s, sites=1 + s % 3,
                                           fog_every=None if s % 3 else n))
    return cases


def ga_vs_exhaustive(seeds, quick: bool) -> None:
    print("\n3. GA vs the exhaustive optimum on 6-8 devices (seeds %s)" % list(seeds))
    print(f"   {'cluster':>16} {'workload':>8} {'rate':>6} {'optimum s':>10} {'groupings':>9} "
          f"{'exhaustive s':>12} {'GA hits':>7} {'GA s':>5}")
    hits = total = 0
    gaps, ex_times, ga_times = [], [], []
    for cluster in small_cases(quick):
        for workload in ("conv", "code"):
            got = high_load_rate(cluster, workload)
            if got is None:
                continue
            rate, prob = got
            t0 = time.perf_counter()
            _, opt, info = exhaustive_search(prob)
            ex_times.append(time.perf_counter() - t0)
            h, ts = 0, []
            for seed in seeds:
                p = SearchProblem(cluster, workload, rate, planner=prob.planner)
                t0 = time.perf_counter()
                _, f, _ = ga_search(p, seed=seed, progress=False, seeds=baselines.seed_groupings)
                ts.append(time.perf_counter() - t0)
                if same(f, opt):
                    h += 1
                else:
                    gaps.append(f / opt - 1)
            hits += h
            total += len(seeds)
            ga_times += ts
            print(f"   {cluster.name:>16} {workload:>8} {rate:>6.3g} {opt:>10.4g} {info['groupings']:>9} "
                  f"{ex_times[-1]:>12.2f} {h:>4}/{len(seeds)} {statistics.median(ts):>5.2f}")
            sys.stdout.flush()
    print(f"   GA reached the optimum in {hits}/{total} runs = {100 * hits / total:.1f} % "
          f"(goal >= 95 %); median gap otherwise: "
          + (f"{100 * statistics.median(gaps):.1f} %" if gaps else "none")
          + f"; exhaustive search {statistics.median(ex_times):.2f} s median, {max(ex_times):.2f} s max; "
          f"GA {statistics.median(ga_times):.2f} s median")


def ga_vs_random(seeds) -> None:
    print("\n4. GA (first population random) vs random search, equal distinct evaluations")
    print(f"   {'cluster':>16} {'workload':>8} {'rate':>6} {'evals':>6} {'GA wait s':>10} "
          f"{'random wait s':>13} {'GA better':>9}")
    cfg = GAConfig()  # no seeds: the first population is random, as random search's draws
    for cluster in (preset("mixed8"), synthetic_cluster(8, seed=802, sites=3, fog_every=None),
                    synthetic_cluster(32, seed=1)):
        for workload in ("conv", "code"):
            rate, prob = high_load_rate(cluster, workload)
            wins, rows = 0, []
            for seed in seeds:
                p = SearchProblem(cluster, workload, rate, planner=prob.planner)
                _, f, hist = ga_search(p, cfg, seed=seed, progress=False)
                q = SearchProblem(cluster, workload, rate, planner=prob.planner)
                _, fr, _ = random_search(q, hist.evaluations[-1], seed=seed)
                rows.append((hist.evaluations[-1], f, fr))
                wins += f < fr * (1 - 1e-4) - 1e-4
            ev = int(statistics.median(r[0] for r in rows))
            print(f"   {cluster.name:>16} {workload:>8} {rate:>6.3g} {ev:>6} "
                  f"{statistics.median(r[1] for r in rows):>10.4g} "
                  f"{statistics.median(r[2] for r in rows):>13.4g} {wins:>6}/{len(rows)}")
            sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer clusters and seeds, no 128 devices")
    ap.add_argument("--seeds", type=int, default=5, help="GA seeds per case (default 5)")
    args = ap.parse_args()
    seeds = range(2 if args.quick else args.seeds)
    t0 = time.perf_counter()
    dp_times(repeats=3 if args.quick else 5)
    ga_times((8, 32) if args.quick else (8, 32, 128), range(1 if args.quick else 3))
    ga_vs_exhaustive(seeds, args.quick)
    ga_vs_random(range(2 if args.quick else 3))
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
