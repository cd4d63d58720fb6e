"""How much do real processes and gloo messages cost? A 3-device pipeline vs one process.

All speeds 1.0, zero-latency loopback links, dilation 1 (no throttling at all), one torch thread
everywhere. Prints, from one run (the machine is noisy, so ratios are taken within the run):
per-token decode time of the pipeline and of the same model in one process, their ratio
(goal <= 1.15x), and the transport overhead per hop (driver -> 3 workers -> driver = 4 hops).

The two generations run in lockstep: each decode step of the one process is paired with the same
step of the pipeline, run right after or right before it (the order alternates), so both see
the host at the same speed. This host's speed drifts by ~10 % within minutes (see
``benchmarks/host_drift.py``), more than the overhead being measured: rounds that ran one whole
generation after the other (until 2026-12-04) spread their ratios over 1.03-1.41x. A round's ratio
is the sum of its pipeline steps over the sum of its one-process steps; the run's is their median,
with the rounds' range beside it.

    .venv/bin/python benchmarks/runtime_overhead.py [--tokens 40] [--rounds 5]
"""

import argparse
import statistics
import time

import torch

from e2llm_lite.devices import default_cluster
from e2llm_lite.generation import greedy_decode, next_token, stages_forward
from e2llm_lite.model import chat_ids, checkpoint_dir, load_tokenizer
from e2llm_lite.runtime.driver import EmulatedCluster
from e2llm_lite.stage import load_stages

PROMPT = "Write a haiku about distributed computing."


def lockstep(local, pipeline, ids, tokens: int) -> tuple[list[float], list[float]]:
    """Greedy generation of ``tokens`` tokens by ``local`` (logits) and ``pipeline`` (a token id)
    side by side, step by step, the order alternating; returns each one's decode step times (ms).
    The two must give the same tokens (the pipeline's guarantee)."""
    def timed(fn, *a):
        t0 = time.perf_counter()
        out = fn(*a)
        return out, (time.perf_counter() - t0) * 1e3

    a, b = next_token(local(ids)), pipeline(ids, "prefill")
    one, two = [], []
    for step in range(tokens - 1):
        if a != b:
            raise AssertionError(f"step {step}: the pipeline gave token {b}, one process {a}")
        if step % 2:
            (b, tb), (out_a, ta) = timed(pipeline, [b], "decode"), timed(local, [a])
        else:
            (out_a, ta), (b, tb) = timed(local, [a]), timed(pipeline, [b], "decode")
        a = next_token(out_a)
        one.append(ta)
        two.append(tb)
    return one, two


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
    single, piped, ratios, hops, cpu, wall = [], [], [], [], [], []
    with EmulatedCluster(default_cluster(3), dilation=1.0) as rt:
        pipe = rt.pipeline([("host-0", 0, 10), ("host-1", 10, 20), ("host-2", 20, 30)])
        pipe.generate(ids, 4)                                      # warm-up both paths
        greedy_decode(stages_forward(local), ids, 4)
        local[0].free()
        for _ in range(args.rounds):
            rt.free(reset_stats=True)
            one, two = lockstep(stages_forward(local), lambda t, ph: pipe.forward(t, 0, ph, logits=False),
                                ids, args.tokens)
            local[0].free()
            single.append(statistics.median(one))
            piped.append(statistics.median(two))
            ratios.append(sum(two) / sum(one))
            steps = [r for r in rt.timeline() if r["phase"] == "decode"]
            wall.append(sum((r["end_ms"] - r["start_ms"]) for r in steps) / len(two))
            cpu.append(sum(r["cpu_ms"] for r in steps) / len(two))
            hops.append((sum(two) / len(two) - wall[-1]) / 4)
    s, p, h = statistics.median(single), statistics.median(piped), statistics.median(hops)
    ratios.sort()
    print(f"decode, one process (1 thread)      : {s:6.1f} ms/token (median of {args.rounds} rounds)")
    print(f"decode, 3 worker processes (gloo)   : {p:6.1f} ms/token")
    print(f"  of which stage compute (wall / CPU): {statistics.median(wall):6.1f} / "
          f"{statistics.median(cpu):.1f} ms/token")
    print(f"ratio pipeline / one process        : {statistics.median(ratios):6.3f}x   (goal <= 1.15x; "
          f"steps paired in lockstep; median of {args.rounds} rounds, range {ratios[0]:.3f}-{ratios[-1]:.3f})")
    print(f"transport overhead per hop          : {h:6.2f} ms   (4 hops per token)")


if __name__ == "__main__":
    main()
