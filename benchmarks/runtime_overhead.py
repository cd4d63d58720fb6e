"""How much do real processes and gloo messages cost? A 3-device pipeline vs one process.

All speeds 1.0, zero-latency loopback links, dilation 1 (no throttling at all), one torch thread
everywhere. Prints, from one run (the machine is noisy, so ratios are taken within the run):
per-token decode time of the pipeline and of the same model in one process, their ratio
(goal <= 1.15x), and the transport overhead per hop (driver -> 3 workers -> driver = 4 hops).
The rounds alternate one process / pipeline; the ratio is the median of each round's own ratio
(a pair run seconds apart), with the spread of the rounds beside it: this host's speed drifts by
~10 % within minutes, more than the overhead being measured.

    .venv/bin/python benchmarks/runtime_overhead.py [--tokens 40] [--rounds 5]
"""

import argparse
import statistics

import torch

from e2llm_lite.devices import default_cluster
from e2llm_lite.generation import greedy_decode, stages_forward
from e2llm_lite.model import chat_ids, checkpoint_dir, load_tokenizer
from e2llm_lite.runtime.driver import EmulatedCluster
from e2llm_lite.stage import load_stages

PROMPT = "Write a haiku about distributed computing."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = checkpoint_dir(progress=False)
    tok = load_tokenizer(folder)
    ids = chat_ids(tok, PROMPT)
    local = load_stages([(0, 30)], folder)
    single, piped, hops, cpu, wall = [], [], [], [], []
    with EmulatedCluster(default_cluster(3), dilation=1.0) as rt:
        pipe = rt.pipeline([("host-0", 0, 10), ("host-1", 10, 20), ("host-2", 20, 30)])
        pipe.generate(ids, 4)                                      # warm-up both paths
        greedy_decode(stages_forward(local), ids, 4)
        local[0].free()
        for _ in range(args.rounds):                               # interleaved rounds
            g = greedy_decode(stages_forward(local), ids, args.tokens)  # no stop: fixed length
            local[0].free()
            single.append(statistics.median(g.decode_ms))
            rt.free(reset_stats=True)
            g = pipe.generate(ids, args.tokens)
            piped.append(statistics.median(g.decode_ms))
            steps = [r for r in rt.timeline() if r["phase"] == "decode"]
            n = len(g.tokens) - 1
            wall.append(sum((r["end_ms"] - r["start_ms"]) for r in steps) / n)
            cpu.append(sum(r["cpu_ms"] for r in steps) / n)
            hops.append((piped[-1] - wall[-1]) / 4)
    s, p, h = statistics.median(single), statistics.median(piped), statistics.median(hops)
    ratios = sorted(b / a for a, b in zip(single, piped))
    print(f"decode, one process (1 thread)      : {s:6.1f} ms/token (median of {args.rounds} rounds)")
    print(f"decode, 3 worker processes (gloo)   : {p:6.1f} ms/token")
    print(f"  of which stage compute (wall / CPU): {statistics.median(wall):6.1f} / "
          f"{statistics.median(cpu):.1f} ms/token")
    print(f"ratio pipeline / one process        : {statistics.median(ratios):6.3f}x   (goal <= 1.15x; "
          f"median of the rounds' ratios, range {ratios[0]:.3f}-{ratios[-1]:.3f})")
    print(f"transport overhead per hop          : {h:6.2f} ms   (4 hops per token)")


if __name__ == "__main__":
    main()
