"""How steady is this host? The same decode step, timed again and again: the floor under every
"measured vs cost model" figure.

Calibration (``EmulatedCluster.calibrate``) measures this host against the cost model's profile
once, then a run's device times follow the profile only as well as the host keeps the speed it
had while it was probed. This script times one stage's decode step (layers [10, 20), one thread,
CPU time, in this process: no workers, no sleeping, no other device) for ``--rounds`` rounds of
``--steps`` steps each, for each batch size, and prints each round's median and their spread:

* ``spread`` = slowest round's median / fastest round's median - 1, per batch size;
* ``cv`` = standard deviation / mean of the round medians;
* ``next_round`` = the median and the largest ``|next round's median / this round's - 1|``
  per batch size: how far off a factor calibrated one round (~8 s) before would be;
* ``ratio_spread`` = the same spread for each batch size's median over the first batch size's
  median *of the same round* (seconds apart): what is left of the drift when a step is compared
  with a reference re-measured right beside it, as a calibration repeated before every
  measurement would.

A spread of s between rounds means a factor calibrated in one round can be off by up to s in
another, whatever the runtime does: a cost-model error goal tighter than that cannot be met
reliably on this host.

    .venv/bin/python benchmarks/host_drift.py [--rounds 6] [--steps 15] [--json]
"""

import argparse
import json
import statistics
import sys
import time

import torch

from e2llm_lite.stage import Stage
from runtime_concurrency import decode_step_ms   # (this folder: the same step it measures)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="rounds (each times every batch size)")
    ap.add_argument("--steps", type=int, default=15, help="decode steps per batch size and round")
    ap.add_argument("--batches", default="1,4,16", help="batch sizes, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.rounds < 2 or args.steps < 1 or not batches or min(batches) < 1:
        sys.exit("host_drift: need --rounds >= 2, --steps >= 1 and batch sizes >= 1")
    out = sys.stderr if args.json else sys.stdout
    torch.set_num_threads(1)
    stage = Stage.load(10, 20)
    gen = torch.Generator().manual_seed(args.seed)
    decode_step_ms(stage, 1, 3, gen)                                    # warm up
    rounds = {b: [] for b in batches}
    t0 = time.monotonic()
    for k in range(args.rounds):
        for b in batches:
            rounds[b].append(decode_step_ms(stage, b, args.steps, gen))
        print(f"round {k + 1} ({time.monotonic() - t0:5.1f} s): " + ", ".join(
            f"B={b} {rounds[b][-1]:.1f} ms" for b in batches), file=out)
    spread = {str(b): max(v) / min(v) - 1 for b, v in rounds.items()}
    cv = {str(b): statistics.stdev(v) / statistics.mean(v) for b, v in rounds.items()}
    nxt = {str(b): sorted(abs(y / x - 1) for x, y in zip(v, v[1:])) for b, v in rounds.items()}
    next_round = {b: {"median": statistics.median(v), "max": v[-1]} for b, v in nxt.items()}
    ref = batches[0]
    ratios = {str(b): [x / r for x, r in zip(rounds[b], rounds[ref])] for b in batches[1:]}
    ratio_spread = {b: max(v) / min(v) - 1 for b, v in ratios.items()}
    for b in batches:
        print(f"B={b:2d}: round medians {min(rounds[b]):.1f}-{max(rounds[b]):.1f} ms, spread "
              f"{spread[str(b)]:+.1%}, cv {cv[str(b)]:.1%}; next round off by "
              f"{next_round[str(b)]['median']:.1%} median, {next_round[str(b)]['max']:.1%} at most",
              file=out)
    for b, v in ratios.items():
        print(f"B={b:>2} over B={ref} of the same round: {min(v):.2f}-{max(v):.2f}x, spread "
              f"{ratio_spread[b]:+.1%}", file=out)
    print(f"{args.rounds} rounds in {time.monotonic() - t0:.0f} s", file=out)
    if args.json:
        print(json.dumps({"round_ms": {str(b): v for b, v in rounds.items()}, "spread": spread,
                          "cv": cv, "ratio_spread": ratio_spread,
                          "next_round": next_round, "steps": args.steps}, indent=1))


if __name__ == "__main__":
    main()
