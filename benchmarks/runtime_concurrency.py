"""Does the concurrent runtime behave like devices under load? Pipelining, batched decode, KV
hand-offs overlapping compute — measured in one run on emulated devices.

A replica of three equal-speed devices (catalog kind ``host``, layers [0,10) [10,20) [20,30),
gigabit Ethernet between them) and a fourth device holding a whole model (the source of KV
hand-offs), all calibrated (device times follow the cost model's profile) with the dilation
picked for every device computing at once. Prints:

* **prefill throughput** (prompts per second of device time, at steady state) with 1, 3 and 6
  prompts of ``--prompt`` tokens in flight, and the speedup over 1 in flight (goal >= 2.5x at 3:
  ideal 3x, every stage busy; the cost model's stage times for this split cap it at
  ``sum / max``, printed);
* **decode tokens/s** at batch B = 1, 4, 8, 16 (ragged contexts: 32, 72, 112, ... tokens), measured
  step by step, against the simulator's prediction for the same steps
  (:meth:`~e2llm_lite.serving.durations.Durations.iteration_ms`: the cost model on these devices
  and links) — goal within 10 % at each B, and B = 8 >= 4x the tokens/s of B = 1;
* **KV hand-off overlap**: the mean decode step (B = 4) while KV caches of ``--kv-tokens``
  tokens stream into the replica from the fourth device, over the same steps without them
  (goal: slowdown <= 10 %);
* the overruns of every device (a run with overruns is not faithful).

    .venv/bin/python benchmarks/runtime_concurrency.py [--profile FILE] [--steps 10] [--json]

The decode prediction is only as good as the profile's batch term: the shipped reference profile
was measured on another machine, whose batched projections scaled better with B than this host's
(the first line printed compares the two); ``--profile`` takes this host's own profile.
"""

import argparse
import json
import statistics
import sys
import time
from types import SimpleNamespace

import torch

from e2llm_lite.costmodel import CostModel
from e2llm_lite.devices import ETHERNET, make_cluster
from e2llm_lite.runtime.driver import EmulatedCluster
from e2llm_lite.serving.durations import Durations
from e2llm_lite.serving.events import RunIteration
from e2llm_lite.stage import Stage

RANGES = [(0, 10), (10, 20), (20, 30)]


def prompts(n: int, tokens: int, seed: int, spread: int = 0) -> list[list[int]]:
    """``n`` prompts of random token ids (real tokens of the vocabulary), the i-th
    ``tokens + i * spread`` long."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(100, 20000, (tokens + i * spread,), generator=g).tolist() for i in range(n)]


def prefill_throughput(rt, pipe, batch: list[list[int]], in_flight: int, first_id: int) -> float:
    """Prompts per device second at steady state with ``in_flight`` kept outstanding (a new
    prompt submitted as soon as one is back): (N - 1) / (last end - first end), so that the
    pipeline's filling and draining are not counted."""
    todo = list(enumerate(batch))
    ends = []
    live = 0
    while todo or live:
        while todo and live < in_flight:
            i, ids = todo.pop(0)
            pipe.submit(ids, first_id + i)
            live += 1
        for c in rt.poll(120):
            if not c.ok:
                raise c.error
            live -= 1
            ends.append(c.end_s)
    rt.free()
    return (len(ends) - 1) / (max(ends) - min(ends))


def decode_steps(rt, pipe, contexts: list[list[int]], steps: int, first_id: int,
                 during=None) -> tuple[list[float], float]:
    """Prefill the prompts, then ``steps`` batched decode steps one after another; returns each
    step's device seconds (submit -> tokens back) and the mean context of the steps. ``during``
    (if given) is called after the first step and may submit other operations (their
    completions are collected and checked)."""
    last = {first_id + i: pipe.forward(ids, request=first_id + i, logits=False)
            for i, ids in enumerate(contexts)}
    times, ctx = [], []
    other = 0
    for k in range(steps):
        ctx.append(statistics.mean(len(p) + k for p in contexts))
        t = rt.now_s()
        batch = pipe.submit_decode(last)
        if k == 0 and during is not None:
            other += during()
        while True:
            done = None
            for c in rt.poll(120):
                if not c.ok:
                    raise c.error
                if c.request == batch:
                    done = c
                else:
                    other -= 1
            if done is not None:
                break
        times.append(done.end_s - t)
        last = done.tokens
    while other:   # the other operations still in flight
        for c in rt.poll(120):
            if not c.ok:
                raise c.error
            other -= 1
    return times, statistics.mean(ctx)


def batch_scaling(cm, seed: int, steps: int = 6) -> tuple[dict, dict]:
    """How a batched decode step's CPU time grows with B on this host, in this process (stage
    [10, 20), contexts as in the decode measurement), against the cost model's growth: where the
    runtime's decode differs from the cost model, this shows whether the host or the runtime is
    the cause."""
    torch.set_num_threads(1)
    stage = Stage.load(10, 20)
    host, model = {}, {}
    for B in (1, 4, 8, 16):
        host[str(B)] = decode_step_ms(stage, B, steps, torch.Generator().manual_seed(seed))
        model[str(B)] = cm.host_stage_ms(10, 20, "decode", batch=B,
                                         context=int(statistics.mean(decode_contexts(B))))
    return ({b: host[b] / host["1"] for b in host}, {b: model[b] / model["1"] for b in model})


def decode_contexts(batch: int) -> list[int]:
    """The ragged contexts of a measured decode batch: 32, 72, 112, ... tokens."""
    return [32 + 40 * i for i in range(batch)]


def decode_step_ms(stage: Stage, batch: int, steps: int, gen: torch.Generator) -> float:
    """Median CPU ms (this thread) of ``steps`` batched decode steps of ``batch`` sequences at
    :func:`decode_contexts` through ``stage``, in this process; its caches are freed after."""
    ids = list(range(batch))
    for r, c in zip(ids, decode_contexts(batch)):
        stage(torch.randn(1, c, stage.anatomy.hidden, generator=gen), request_id=r)
    times = []
    for _ in range(steps):
        x = torch.randn(batch, 1, stage.anatomy.hidden, generator=gen)
        t = time.thread_time()
        stage.forward_batch(x, ids)
        times.append((time.thread_time() - t) * 1e3)
    stage.free()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompt", type=int, default=96, help="prompt tokens (prefill part)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per prefill measurement")
    ap.add_argument("--steps", type=int, default=10, help="decode steps per batch size")
    ap.add_argument("--kv-tokens", type=int, default=384, help="tokens of each handed-off KV cache")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", help="the cost model's profile (default: the shipped reference, "
                    "measured on another machine; `e2llm-lite profile --quick` measures this host's)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    out = sys.stderr if args.json else sys.stdout
    cm = CostModel.load(args.profile)
    host_scaling, cm_scaling = batch_scaling(cm, args.seed)
    print("a decode step of B sequences over one of 1 sequence, stage [10,20) in this process "
          "(CPU time) vs the cost model: " + ", ".join(
              f"B={b} {host_scaling[b]:.2f}x vs {cm_scaling[b]:.2f}x" for b in host_scaling), file=out)
    cluster = make_cluster(4, name="concurrency", lan=ETHERNET)
    names = cluster.names
    t_wall = time.monotonic()
    with EmulatedCluster(cluster, calibrate=True, costmodel=cm, concurrency="all") as rt:
        pipe = rt.pipeline([(names[i], a, b) for i, (a, b) in enumerate(RANGES)], name="replica")
        src = rt.pipeline([(names[3], 0, 30)], name="source")
        print(f"dilation {rt.dilation:g} (for {rt.concurrency} devices computing at once); "
              f"calibrated host factors: "
              + ", ".join(f"{n} {c['prefill']['factor']:.2f}/{c['decode']['factor']:.2f}"
                          for n, c in rt.calibration.items()), file=out)
        for n, c in rt.calibration.items():   # each decode probe's factor (batch@context): its noise
            print(f"  {n} decode factors: " + " ".join(   # is the cost-model error's floor
                f"{p['batch']}@{p['context']} {p['factor']:.2f}{'*' if p['reprobed'] else ''}"
                for p in c["decode"]["points"]) + "  (*: measured again, a spike)", file=out)
        rt.free(reset_stats=True)

        # 1. prefill pipelining
        thr = {}
        for k, in_flight in enumerate((1, 3, 6)):
            thr[in_flight] = prefill_throughput(
                rt, pipe, prompts(args.prompts, args.prompt, args.seed + k), in_flight, 1000 * (k + 1))
            print(f"prefill, {in_flight} in flight: {thr[in_flight]:.2f} prompts/s (device time)",
                  file=out)
        speedup = {str(k): thr[k] / thr[1] for k in (3, 6)}
        stage_ms = [cm.host_stage_ms(a, b, "prefill", tokens=args.prompt) for a, b in RANGES]
        cap = sum(stage_ms) / max(stage_ms)
        print(f"prefill speedup over 1 in flight: 3 -> {speedup['3']:.2f}x, 6 -> {speedup['6']:.2f}x "
              f"(goal >= 2.5x at 3; ideal 3x; this split's stage times cap it at {cap:.2f}x)", file=out)

        # 2. batched decode vs the cost model
        plan = SimpleNamespace(replicas=[SimpleNamespace(
            name="replica", role="both", stages=[(names[i], a, b) for i, (a, b) in enumerate(RANGES)])])
        durations = Durations(plan, cluster, cm)
        tps, pred, err = {}, {}, {}
        for j, B in enumerate((1, 4, 8, 16)):
            ctxs = prompts(B, 32, args.seed + 10 + j, spread=40)   # ragged contexts
            times, ctx = decode_steps(rt, pipe, ctxs, args.steps, 5000 + 100 * j)
            rt.free()
            it = RunIteration("replica", 0, decode=tuple((r, int(ctx)) for r in range(B)))
            busy, back = durations.iteration_ms(it)
            step = statistics.median(times)
            tps[str(B)] = B / step
            pred[str(B)] = B / ((sum(busy) + back) / 1e3)
            err[str(B)] = tps[str(B)] / pred[str(B)] - 1.0
            print(f"decode B={B:2d} (mean context {ctx:.0f}): {tps[str(B)]:7.2f} tokens/s measured, "
                  f"{pred[str(B)]:7.2f} predicted ({err[str(B)]:+.1%})", file=out)
        print(f"B=8 / B=1 tokens/s: {tps['8'] / tps['1']:.2f}x (goal >= 4x); cost-model error "
              f"max {max(abs(e) for e in err.values()):.1%} (goal <= 10 %)", file=out)

        # 3. KV hand-offs streaming in while the replica decodes
        ctxs = prompts(4, 64, args.seed + 20, spread=110)
        base, _ = decode_steps(rt, pipe, ctxs, args.steps, 7000)
        rt.free()
        sources = prompts(3, args.kv_tokens, args.seed + 21)
        for i, ids in enumerate(sources):
            src.forward(ids, request=9000 + i, logits=False)

        def hand_offs() -> int:
            for i in range(len(sources)):
                rt.submit_move_kv(9000 + i, src, pipe)
            return len(sources)

        loaded, _ = decode_steps(rt, pipe, ctxs, args.steps, 7000, during=hand_offs)
        # the hand-offs are in flight during the steps after the first; compare those
        slowdown = statistics.mean(loaded[1:]) / statistics.mean(base[1:]) - 1.0
        print(f"decode B=4 step {statistics.mean(base[1:]) * 1e3:.1f} ms alone, "
              f"{statistics.mean(loaded[1:]) * 1e3:.1f} ms with {len(sources)} KV hand-offs of "
              f"{args.kv_tokens} tokens streaming in: slowdown {slowdown:+.1%} (goal <= 10 %)", file=out)
        rt.free()
        overruns = {n: int(s["overruns"]) for n, s in rt.stats().items()}
    print(f"overruns per device: {overruns}; wall time {time.monotonic() - t_wall:.0f} s", file=out)
    if args.json:
        print(json.dumps({"prefill_prompts_per_s": {str(k): v for k, v in thr.items()},
                          "prefill_speedup": speedup, "decode_tokens_per_s": tps,
                          "decode_predicted_tokens_per_s": pred, "decode_costmodel_error": err,
                          "kv_overlap_slowdown": slowdown, "overruns": overruns,
                          "prefill_speedup_cap": cap, "host_batch_scaling": host_scaling,
                          "costmodel_batch_scaling": cm_scaling,
                          "dilation": rt.dilation, "profile": args.profile or "reference",
                          "calibration": rt.calibration}, indent=1))


if __name__ == "__main__":
    main()
