"""Do emulated devices run at their speed? Measured stage times vs targets.

Three devices with speeds 1.0, 0.5 and 0.25 (both phases) hold layers [0,10) [10,20) [20,30);
the link from the second to the third is slow (20 Mbit/s, 5 ms). One prompt, then decode steps.
Prints, per device, the relative error of the measured step time (device time = wall / dilation)
against two targets:

* **target**: the worker's own ``cpu / speed`` (how precisely it sleeps), and
* **reference**: the same stage's median time measured separately in this process, unthrottled,
  divided by the speed (what the device *should* take: this also catches compute that runs slower
  inside a worker than alone),

and the link's measured gap (next stage start - this stage end) against ``latency + bytes / bw``.
Goal: median error within 5 %.

    .venv/bin/python benchmarks/emulation_fidelity.py [--tokens 40]
"""

import argparse
import statistics
import time

import numpy as np
import torch

from e2llm_lite.devices import Cluster, transfer_ms
from e2llm_lite.model import ANATOMY, chat_ids, checkpoint_dir, load_tokenizer
from e2llm_lite.runtime.driver import EmulatedCluster
from e2llm_lite.runtime.protocol import message_bytes
from e2llm_lite.stage import load_stages

SPEEDS = [1.0, 0.5, 0.25]
RANGES = [(0, 10), (10, 20), (20, 30)]
SLOW = {"bandwidth_mbps": 20.0, "latency_ms": 5.0}
PROMPT = "Write a haiku about distributed computing."


def cluster() -> Cluster:
    devs = [{"name": f"dev{i}", "kind": "host", "prefill_speed": s, "decode_speed": s}
            for i, s in enumerate(SPEEDS)]
    return Cluster.from_dict({"format": "e2llm-lite/cluster", "version": 1, "name": "fidelity",
                              "devices": devs,
                              "links": {"lan": {"host": {"bandwidth_mbps": 1000, "latency_ms": 0.2}},
                                        "pairs": [{"a": "dev1", "b": "dev2", **SLOW}]}})


def reference_ms(ids, tokens):
    """Unthrottled per-stage step times (ms) in this process: prefill once, then decode medians."""
    torch.set_num_threads(1)
    stages = load_stages(RANGES, checkpoint_dir(progress=False))
    for s in stages:  # warm-up
        h = torch.tensor([ids])
        for st in stages:
            h = st(h, request_id=-1)
    for s in stages:
        s.free()
    times = {i: {"prefill": [], "decode": []} for i in range(3)}
    for rep in range(3):
        x, phase = torch.tensor([ids]), "prefill"
        for step in range(tokens):
            h = x
            for i, st in enumerate(stages):
                t = time.thread_time()
                h = st(h, request_id=rep)
                times[i][phase].append((time.thread_time() - t) * 1e3)
            x, phase = h[0, -1].argmax().reshape(1, 1), "decode"
        for st in stages:
            st.free()
    return {i: {ph: statistics.median(v) for ph, v in d.items()} for i, d in times.items()}


def rel(measured, target):
    return abs(measured / target - 1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=40)
    args = ap.parse_args()
    tok = load_tokenizer(checkpoint_dir(progress=False))
    ids = chat_ids(tok, PROMPT)
    ref = reference_ms(ids, args.tokens)
    cl = cluster()
    with EmulatedCluster(cl) as rt:
        pipe = rt.pipeline([(f"dev{i}", a, b) for i, (a, b) in enumerate(RANGES)])
        pipe.generate(ids, 4)                     # warm-up
        rt.free(reset_stats=True)
        pipe.generate(ids, args.tokens)
        rows, stats = rt.timeline(), rt.stats()
    print(f"dilation {rt.dilation:g}; overruns per device: "
          f"{ {n: int(s['overruns']) for n, s in stats.items()} }")
    print(f"{'device':8s} {'speed':>5s} {'phase':8s} {'steps':>5s} {'vs own target':>22s} "
          f"{'vs reference/speed':>22s}")
    all_t, all_r = [], []
    for i, speed in enumerate(SPEEDS):
        for phase in ("prefill", "decode"):
            mine = [r for r in rows if r["device"] == f"dev{i}" and r["phase"] == phase]
            e_t = [rel(r["end_ms"] - r["start_ms"], r["target_ms"]) for r in mine]
            e_r = [rel(r["end_ms"] - r["start_ms"], ref[i][phase] / speed) for r in mine]
            all_t += e_t
            all_r += e_r
            print(f"dev{i:<5d} {speed:5.2f} {phase:8s} {len(mine):5d} "
                  f"median {np.median(e_t):6.1%} P90 {np.percentile(e_t, 90):6.1%} "
                  f"median {np.median(e_r):6.1%} P90 {np.percentile(e_r, 90):6.1%}")
    print(f"all steps: vs own target median {np.median(all_t):.1%} P90 {np.percentile(all_t, 90):.1%}; "
          f"vs reference median {np.median(all_r):.1%} P90 {np.percentile(all_r, 90):.1%}  (goal: median <= 5 %)")
    # the slow link dev1 -> dev2: gap between dev1's step end and dev2's step start
    d1 = [r for r in rows if r["device"] == "dev1"]
    d2 = [r for r in rows if r["device"] == "dev2"]
    gaps, want = [], []
    for a, b in zip(d1, d2):
        gaps.append(b["start_ms"] - a["end_ms"])
        nbytes = message_bytes(torch.empty(b["tokens"], ANATOMY.hidden))   # the hidden state sent
        want.append(transfer_ms(nbytes, SLOW["latency_ms"], SLOW["bandwidth_mbps"]))
    e_l = [rel(g, w) for g, w in zip(gaps, want)]
    print(f"slow link dev1->dev2 ({SLOW['bandwidth_mbps']:g} Mbit/s, {SLOW['latency_ms']:g} ms): "
          f"prefill gap {gaps[0]:.2f} ms vs {want[0]:.2f} ms; decode gaps median {np.median(gaps[1:]):.2f} ms "
          f"vs {np.median(want[1:]):.2f} ms; relative error median {np.median(e_l):.1%} "
          f"P90 {np.percentile(e_l, 90):.1%}")


if __name__ == "__main__":
    main()
