"""E2LLM against Splitwise on the real emulated devices: the simulator's verdict, checked for real.

:func:`real_pair` takes one small setting — a cluster, a workload whose prompt and output lengths
are scaled by ``prompt_scale`` (real SmolLM2 forwards on a 2-core host are slow), ``n_requests``
requests — and serves it twice per strategy:

1. **Rate.** Splitwise's sustainable rate ``S`` for the scaled workload, found in the simulator
   (:func:`~e2llm_lite.serving.saturation.sustainable_rps`, Splitwise re-provisioned at every
   rate tried, a stream of ``max(60, n_requests)`` requests); the requests arrive as Poisson at
   ``load * S`` (a trace workload: its own arrivals, time-scaled to that mean rate).
2. **Plans.** Each strategy plans the cluster for the scaled workload at that rate
   (:func:`~.strategies.plan_strategy`, GA seed ``seed``).
3. **Real.** The same ``n_requests`` requests, with real prompts
   (:func:`~e2llm_lite.serving.prompts.prompt_ids`), served by worker processes running the model
   (as ``e2llm-lite serve``: calibrated devices, every device computing at once, ``dilation``
   None = picked for that), greedy tokens out.
4. **Simulated.** The very same requests through the same plan in the simulator, same cost model.

Returned (JSON-ready): per strategy the real and simulated means of waiting (arrival -> prefill
start), TTFT and end-to-end, in seconds of *device* time (the emulated devices' clock: wall time
/ dilation), both full summaries, the dilation, the real run's overruns per device (steps that took
longer than their device time allows; a run with many does not measure the plan), its wall time
(s, loading and calibration included), the decoded texts of the first ``texts`` requests, and its
counts; then ``ratio_real`` / ``ratio_sim``: E2LLM's mean over Splitwise's per metric (< 1: E2LLM
is better; None if a mean is missing or 0, or a strategy was not run) and ``agree``: whether both
ratios fall on the same side of 1 (None when either ratio is None).

Cost (2-core host, conv, 12 requests, scale 0.05): each strategy starts its workers, loads its
stages and calibrates them (most of the time), then serves; ``default_cluster(2)`` with
``dilation=4`` took 177 s in all (the automatic dilation 2 took 133 s but its steps overran),
``preset("home4")`` 280 s, ``default_cluster(4)`` 374 s (and overran: 4 workers on 2 cores). On
``host`` clusters both strategies place the same replicas; only their scheduling differs.

Every worker process is stopped when the function returns, fails or is interrupted (Ctrl-C): the
:class:`~e2llm_lite.runtime.driver.EmulatedCluster` context manager does it.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

from ..costmodel import CostModel
from ..model import checkpoint_dir, load_tokenizer
from ..runtime.driver import EmulatedCluster
from ..serving.emulated import serve_requests
from ..serving.prompts import prompt_ids
from ..serving.saturation import sustainable_rps
from ..serving.simulator import simulate_requests
from ..workload import workload_from_spec
from .strategies import plan_strategy

__all__ = ["METRICS", "real_pair"]

METRICS = ("waiting_s", "ttft_s", "e2e_s")


def _means(summary: dict) -> dict:
    return {m: summary["summary"][m]["mean"] for m in METRICS}


def _ratios(means: dict) -> dict:
    """E2LLM's mean over Splitwise's per metric; None where either is missing or Splitwise's is 0."""
    a, b = means.get("e2llm"), means.get("splitwise")
    if a is None or b is None:
        return {m: None for m in METRICS}
    return {m: a[m] / b[m] if a[m] is not None and b[m] else None for m in METRICS}


def _serve(plan, cluster, requests, prompts, tok, cm, dilation, texts, progress, calibrate) -> dict:
    """One plan served for real and simulated on ``requests`` (module docstring, steps 3-4)."""
    t0 = time.perf_counter()
    with EmulatedCluster(cluster, dilation=dilation, calibrate=calibrate, costmodel=cm,
                         concurrency="all") as rt:
        pipes = rt.load_plan(plan)
        rt.free(reset_stats=True)
        res = serve_requests(rt, pipes, plan, cluster, requests, prompts, costmodel=cm,
                             progress=progress)
    wall = time.perf_counter() - t0
    real = res.metrics()
    sim = simulate_requests(plan, cluster, requests, costmodel=cm).metrics()
    return {"real": _means(real), "sim": _means(sim), "real_summary": real, "sim_summary": sim,
            "replicas": [[r.name, r.role, [d for d, _, _ in r.stages]] for r in plan.replicas],
            "dilation": res.dilation, "overruns": res.overruns, "wall_s": round(wall, 3),
            "texts": {str(r): tok.decode(t) for r, t in sorted(res.tokens.items())[:texts]},
            "requests_done": real["requests_done"], "rejected": real["rejected"]}


def real_pair(cluster, workload="conv", *, load=0.9, n_requests=12, prompt_scale=0.05, seed=0,
              strategies=("e2llm", "splitwise"), dilation=None, costmodel=None, progress=False,
              texts=3, calibrate: bool = True) -> dict:
    """Serve ``strategies``' plans of ``cluster`` (a :class:`~e2llm_lite.devices.Cluster`) for
    real and in the simulator on the same ``n_requests`` requests of ``workload`` ("code",
    "conv", "mix" or a trace CSV path; lengths scaled by ``prompt_scale``) at ``load`` x
    Splitwise's sustainable rate, and compare (module docstring). ``dilation``: the runtime's
    clock stretch (None: picked automatically); ``costmodel``: default the shipped profile;
    ``progress``: report each step on stderr and show a bar while serving; ``texts``: how many
    requests' decoded answers to keep; ``calibrate``: measure this host per device first (as
    ``serve`` does; False = trust the reference profile: faster, less faithful timings)."""
    cm = costmodel or CostModel.load()
    say = (lambda text: print(text, file=sys.stderr, flush=True)) if progress else (lambda text: None)
    wl = workload_from_spec(workload, 1.0, seed=seed, prompt_scale=prompt_scale,
                            output_scale=prompt_scale)
    say(f"finding Splitwise's sustainable rate on {cluster.name} ...")
    saturation = sustainable_rps(
        lambda r: plan_strategy("splitwise", cluster, wl, r, seed=seed, costmodel=cm),
        cluster, wl, n=max(60, n_requests), costmodel=cm)["rate_rps"]
    rate = load * saturation
    requests = replace(wl, rate=rate).generate(n=n_requests)
    tok = load_tokenizer(checkpoint_dir(progress=False))
    prompts = {r.id: prompt_ids(tok, r.prompt_tokens, r.id) for r in requests}
    out = {"cluster": cluster.name, "workload": str(workload), "load": load, "rate_rps": rate,
           "saturation_rps": saturation, "prompt_scale": prompt_scale, "requests": len(requests),
           "calibrated": bool(calibrate),
           "strategies": {}}
    for name in dict.fromkeys(strategies):
        say(f"{name}: planning at {rate:.3g} requests/s, then serving {len(requests)} requests for real")
        plan = plan_strategy(name, cluster, wl, rate, seed=seed, costmodel=cm)
        out["strategies"][name] = _serve(plan, cluster, requests, prompts, tok, cm, dilation,
                                         texts, progress, calibrate)
    for kind in ("real", "sim"):
        out[f"ratio_{kind}"] = _ratios({s: v[kind] for s, v in out["strategies"].items()})
    out["agree"] = {m: None if out["ratio_real"][m] is None or out["ratio_sim"][m] is None
                    else (out["ratio_real"][m] < 1) == (out["ratio_sim"][m] < 1) for m in METRICS}
    return out
