"""Wall time of the exact DP partitioner (e2llm_lite.planning.dp.partition) vs number of devices.

Run:  python benchmarks/planner_dp.py [--layers 30] [--devices 4 6 8 10 12] [--repeats 5]

Each instance is random but seeded: heterogeneous devices (speeds spread over 20x), per-layer
times with some jitter, memory budgets such that no single device holds the whole model, an
asymmetric comm matrix with cheap LAN pairs and expensive WAN pairs, and the embedding / lm_head
extras of the real model. Prints the median of ``--repeats`` runs per size for both objectives.
Goal: <= 0.1 s at 8 devices x 30 layers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from e2llm_lite.planning.dp import MAX_EXACT_DEVICES, partition


def instance(n_devices: int, n_layers: int, seed: int = 0) -> dict:
    """A random heterogeneous replica as plain arrays (ms, bytes)."""
    rng = np.random.default_rng(seed)
    speed = rng.uniform(0.05, 1.0, n_devices)  # relative to the host
    layer_ms = rng.uniform(0.8, 1.2, n_layers) * 2.0  # ms per layer on the host
    compute = layer_ms[None, :] / speed[:, None]
    layer_mem = np.full(n_layers, 19 * 2**20)  # ~19 MiB per layer (SmolLM2-135M-ish, fp32)
    model = layer_mem.sum()
    # budgets between 15 % and 60 % of the model: nobody holds it alone, together they do
    device_mem = np.maximum(rng.uniform(0.15, 0.6, n_devices) * model, layer_mem.max() * 2)
    site = rng.integers(0, 2, n_devices)
    same_site = site[:, None] == site[None, :]
    comm = np.where(same_site, rng.uniform(0.1, 0.5, (n_devices,) * 2), rng.uniform(2, 8, (n_devices,) * 2))
    return dict(
        compute=compute,
        layer_mem=layer_mem,
        device_mem=device_mem,
        comm=comm,
        extra_first_mem=28 * 2**20,
        extra_last_mem=28 * 2**20,
        extra_first_ms=0.3 / speed,
        extra_last_ms=3.0 / speed,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--devices", type=int, nargs="+", default=[4, 6, 8, 10, 12])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    print(f"exact DP, {args.layers} layers, median of {args.repeats} runs "
          f"(exact up to {MAX_EXACT_DEVICES} devices)")
    print(f"{'devices':>7} {'bottleneck s':>13} {'latency s':>10} {'stages':>7} {'exact':>6}")
    for n in args.devices:
        inst = instance(n, args.layers, seed=n)
        row = []
        for objective in ("bottleneck", "latency"):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                plan = partition(**inst, objective=objective)
                times.append(time.perf_counter() - t0)
            row.append(statistics.median(times))
        print(f"{n:>7} {row[0]:>13.4f} {row[1]:>10.4f} {len(plan.stages):>7} {str(plan.exact):>6}")


if __name__ == "__main__":
    main()
