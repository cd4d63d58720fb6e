"""The evaluator: predicted mean waiting time of a set of replicas for a workload and arrival rate.

One function, :func:`predict`, scores every plan — the GA's chromosomes, the exhaustive and random
searches, and every baseline — so the comparisons are fair. It is a queueing *formula*, not a
simulation (cheap and deterministic: the GA calls it thousands of times); the simulator checks it.

Inputs
------
Per replica (from :class:`~e2llm_lite.planning.replica_plan.ReplicaPlan`, seconds): its role, prefill
period ``s`` (slowest prefill stage: a prompt's service time), prefill latency (one prompt's trip),
decode trip ``step`` and batch ``B``. Workload: rate ``lam`` (requests/s), mean output ``Om``
tokens, the prefill-time SCV ``cs2`` and the inter-arrival SCV ``ca2``.

The model (ours; symbols in the code)
-------------------------------------
*Decode pool* — the decoder replicas. A prefill replica hands its requests' KV to the decode
pool only (not to colocated replicas): a plan with prefill replicas and no decoder replica is
infeasible, whatever else it has. Each decode slot of replica k (it has ``B_k``) holds a
request for ``Om`` trips of ``step_k``. The pool is an M/M/N queue of slots::

    N = sum_k B_k                     slots
    Lam_d = sum_k B_k / (Om step_k)   requests/s it can finish (its capacity)
    h = N / Lam_d                     mean time a request holds a slot (s)
    Wd(x) = ErlangC(N, x h) h / (N - x h)     mean wait for a free slot at x requests/s

*Prefill servers* — the prefill and "both" replicas, one server each (JSQ routing keeps their
utilisations equal; we take that as exact: every server runs at the same utilisation ``rho``):

* a **prefill** replica is busy ``t_i = s_i + Wd`` per prompt: its period, plus the time its
  finished prompt's KV waits for a decoder slot (the replica reserved room for one prompt's KV,
  so it cannot start another until the hand-off begins — decode congestion blocks prefill);
* a **both** (colocated) replica also decodes its own requests: ``D_j = Om step_j / B_j`` s of
  decode per request. At utilisation rho a share of its time goes to decoding; we charge it to
  each prompt: ``t_j = s_j + rho D_j`` (so at rho -> 1 a request costs its full prefill + decode
  time, and its capacity alone is ``1 / (s_j + D_j)``).

The utilisation solves ``rho * sum_i 1 / t_i(rho, Wd) = lam`` (Newton's method from below: the
left side is increasing and concave in rho) and ``Wd`` solves ``Wd = Wd(lam_pd)`` where
``lam_pd = rho sum_{prefill} 1 / t_i`` is the traffic the prefill replicas send to the decode pool
(bisection: the right side decreases in ``Wd``). With only prefill replicas in front of the pool
every request goes through it, ``lam_pd = lam``, and no iteration is needed.

*Waiting time* (arrival -> prefill start, E2LLM's headline metric): the servers form one
multi-server queue with ``c`` servers of effective rates ``mu_i = 1 / t_i``; we use M/M/c with
their mean rate (``M = sum mu_i``, ``a = c lam / M``) and the Allen-Cunneen correction for
general arrivals and service times::

    Wq = ErlangC(c, a) / (M - lam) * (ca2 + cs2) / 2

*Capacity* — the largest rate the plan sustains (every server busy all the time)::

    capacity = x* + sum_{both} 1 / (s_j + D_j),   x* = sum_{prefill} 1 / (s_i + Wd(x*))

where ``x*`` is the flow the prefill replicas can push through the decode pool while blocked by it
(bisection; 0 without decoders or without prefill replicas; below both ``sum 1 / s_i`` and
``Lam_d``). At ``lam >= capacity`` the
queues grow without bound; the plan is **infeasible** and scored with a large finite penalty
that grows with the overload, so the GA still has a gradient::

    fitness = PENALTY_S * (1 + lam / capacity)        (PENALTY_S = 10^4 s; capacity 0 -> 10^6)

A feasible plan's fitness is its ``Wq`` (or TTFT, with ``objective="ttft"``), capped at
``PENALTY_S`` so every feasible plan beats every infeasible one.

*Other figures* (reported, not optimised by default): request shares ``mu_i / M``;
``ttft_s = Wq + sum_i share_i (prefill latency_i + KV hand-off_i)`` (the first token comes out of
the prefill; the hand-off is the mean over the decoders, weighted by their capacity, and is only
computed when the cluster is given); ``tbt_s`` = the capacity-weighted decode trip (colocated:
``step_j / (1 - lam_j s_j)``, prompts interrupt their batch); ``decode_wait_s = Wd``;
utilisations ``rho`` (prefill servers) and ``lam_pd / Lam_d`` (decode pool).

*KV hand-off* of one prompt from prefill replica p to decoder d: every layer's KV
(``Tm * 1536`` B per layer) goes from the device holding that layer in p to the one holding it in
d; each source device sends its pieces one after another (``latency + bytes / bandwidth`` each),
the sources in parallel: the hand-off takes the slowest source's total.

Approximations worth knowing: heterogeneous servers are summarised by their mean rate; the
blocking and colocation terms are mean-value corrections; micro-batched pipelined decode and the
prefill of several prompts in one batch are not modelled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

from ..split import kv_handoff_ms

__all__ = [
    "OBJECTIVES",
    "PENALTY_S",
    "Prediction",
    "erlang_c",
    "kv_handoff_s",
    "mmc_wait",
    "predict",
]

#: Score unit of an infeasible (overloaded) plan, s: every feasible plan scores below it.
PENALTY_S = 1e4

#: What :func:`predict` can optimise: the mean waiting time (default) or the mean TTFT.
OBJECTIVES = ("waiting", "ttft")


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with offered load ``a = lam / mu``
    (``0 <= a < c``): Erlang's C formula from Erlang's B. B is computed by the stable recursion
    ``B_k = a B_{k-1} / (k + a B_{k-1})`` for c < 64, and for larger c (many decode slots) as
    the Poisson ratio ``P(c) / P(<= c)`` in log space with numpy (the same number, faster)."""
    if a <= 0:
        return 0.0
    if a >= c:
        return 1.0
    if c < 64:
        b = 1.0
        for k in range(1, c + 1):
            b = a * b / (k + a * b)
    else:
        logp = np.arange(c + 1) * math.log(a) - _log_factorials(c)
        top = logp.max()
        b = math.exp(logp[-1] - top) / float(np.exp(logp - top).sum())
    return c * b / (c - a * (1.0 - b))


@lru_cache(maxsize=64)
def _log_factorials(c: int) -> np.ndarray:
    out = np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, c + 1, dtype=float)))))
    out.setflags(write=False)
    return out


def mmc_wait(lam: float, c: int, total_rate: float) -> float:
    """Mean wait in queue (s) of M/M/c with ``c`` servers of total rate ``total_rate`` (1/s)."""
    if lam <= 0:
        return 0.0
    if lam >= total_rate:
        return math.inf
    a = c * lam / total_rate
    return erlang_c(c, a) / (total_rate - lam)


@dataclass(frozen=True)
class Prediction:
    """What :func:`predict` says about a plan at one rate (s, requests/s, fractions).

    ``fitness`` is what the searches minimise (see the module docstring).
    """

    feasible: bool
    fitness: float
    mean_wait_s: float
    ttft_s: float
    tbt_s: float
    capacity_rps: float
    prefill_capacity_rps: float
    decode_capacity_rps: float
    prefill_utilisation: float
    decode_utilisation: float
    decode_wait_s: float
    kv_handoff_s: float | None = None
    shares: tuple[float, ...] = field(default=(), repr=False)
    reason: str = ""

    def to_dict(self) -> dict:
        def r(x):  # 6 significant digits; None for "unbounded"
            if x is None or not math.isfinite(x):
                return None
            return float(f"{float(x):.6g}")

        return {"feasible": self.feasible, "fitness": r(self.fitness),
                "mean_wait_s": r(self.mean_wait_s), "ttft_s": r(self.ttft_s),
                "tbt_s": r(self.tbt_s), "capacity_rps": r(self.capacity_rps),
                "prefill_capacity_rps": r(self.prefill_capacity_rps),
                "decode_capacity_rps": r(self.decode_capacity_rps),
                "utilisation": {"prefill": r(self.prefill_utilisation),
                                "decode": r(self.decode_utilisation)},
                "decode_wait_s": r(self.decode_wait_s), "kv_handoff_s": r(self.kv_handoff_s),
                "reason": self.reason}


def _solve_rho(lam: float, inv_pure: float, s_both: Sequence[float], d_both: Sequence[float]) -> float:
    """rho with rho * (inv_pure + sum_j 1 / (s_j + rho D_j)) = lam; inf if rho >= 1 is needed."""
    def f(r):
        return r * (inv_pure + sum(1.0 / (s + r * d) for s, d in zip(s_both, d_both))) - lam

    if f(1.0) <= 0:
        return math.inf
    if not s_both:
        return lam / inv_pure
    r = 0.0
    for _ in range(60):
        val = f(r)
        if abs(val) <= 1e-13 * lam:
            break
        slope = inv_pure + sum(s / (s + r * d) ** 2 for s, d in zip(s_both, d_both))
        r_new = r - val / slope
        if r_new <= r:  # converged (concave: iterates increase monotonically to the root)
            break
        r = min(r_new, 1.0)
    return r


def kv_handoff_s(prefill, decoder, cluster, tokens: float, kv_bytes_per_token_layer: int = 1536) -> float:
    """Seconds to move one ``tokens``-token prompt's KV from replica ``prefill`` to ``decoder``
    (ReplicaPlans) over ``cluster``'s links (module docstring: sources in parallel, each sending
    its pieces one after another)."""
    ms = kv_handoff_ms(prefill.stages, decoder.stages, lambda a, b, n: cluster.link(a, b).transfer_ms(n),
                       tokens, kv_bytes_per_token_layer)
    return ms / 1e3


def predict(replicas: Sequence, stats, rate: float, *, objective: str = "waiting",
            cluster=None) -> Prediction:
    """Score ``replicas`` (ReplicaPlans, or anything with role / prefill_period_s /
    prefill_latency_s / decode_step_s / batch) for workload ``stats`` (WorkloadStats) at ``rate``
    requests/s. See the module docstring for every formula. ``cluster`` (optional) adds the KV
    hand-off to the TTFT."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    lam = float(rate)
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"rate must be a finite number of requests/s > 0, got {rate!r}")
    Om = float(stats.mean_output)
    pure = [r for r in replicas if r.role == "prefill"]
    both = [r for r in replicas if r.role == "both"]
    dec = [r for r in replicas if r.role == "decoder"]

    N = sum(r.batch for r in dec)
    lam_d = sum(r.batch / (Om * r.decode_step_s) for r in dec)
    h = N / lam_d if lam_d > 0 else math.inf
    s_pure = [r.prefill_period_s for r in pure]
    s_both = [r.prefill_period_s for r in both]
    d_both = [Om * r.decode_step_s / r.batch for r in both]
    cap_pure = sum(1.0 / s for s in s_pure)
    cap_both = sum(1.0 / (s + d) for s, d in zip(s_both, d_both))
    prefill_cap = cap_pure + sum(1.0 / s for s in s_both)

    def wd(x: float) -> float:
        if x <= 0 or not dec:
            return 0.0
        if x >= lam_d:
            return math.inf
        a = x * h
        return erlang_c(N, a) * h / (N - a)

    x_star = 0.0  # the flow the prefill replicas sustain with their blocking: x = sum 1/(s + Wd(x))
    if pure and dec:
        lo, hi = 0.0, min(cap_pure, lam_d)
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            w_mid = wd(mid)
            if math.isfinite(w_mid) and sum(1.0 / (s + w_mid) for s in s_pure) > mid:
                lo = mid
            else:
                hi = mid
            if hi - lo <= 1e-9 * hi:
                break
        x_star = lo
    capacity = x_star + cap_both

    def infeasible(reason: str, ratio: float | None = None) -> Prediction:
        if ratio is None:
            ratio = lam / capacity if capacity > 0 else 1e6
        ratio = min(max(ratio, 1.0), 1e6)
        return Prediction(False, PENALTY_S * (1.0 + ratio), math.inf, math.inf, math.inf, capacity,
                          prefill_cap, lam_d, min(lam / prefill_cap, 1e6) if prefill_cap else math.inf,
                          min(lam / lam_d, 1e6) if lam_d else math.inf, math.inf, None, (), reason)

    if not pure and not both:
        return infeasible("no replica can run prompts (no prefill or colocated replica)")
    if pure and not dec:
        return infeasible("prefill replicas but no decoder replica to hand their requests to",
                          ratio=1e3)
    if lam >= capacity * (1 - 1e-12):
        return infeasible(f"overloaded: {lam:g} requests/s >= capacity {capacity:.4g} requests/s")

    if pure and not both:
        w = wd(lam)
        if not math.isfinite(w):
            return infeasible("the decode pool cannot keep up")
        effective = sum(1.0 / (s + w) for s in s_pure)
        if lam >= effective:
            return infeasible(f"overloaded: prefill replicas blocked {w:.3g} s per prompt by the "
                              f"busy decode pool serve only {effective:.4g} requests/s",
                              ratio=max(lam / effective, 1.0 + 1e-9))
        rho = _solve_rho(lam, effective, [], [])
    elif not pure:
        w = 0.0
        rho = _solve_rho(lam, 0.0, s_both, d_both)
    else:
        def inner(w):
            inv = sum(1.0 / (s + w) for s in s_pure)
            rho = _solve_rho(lam, inv, s_both, d_both)
            return rho, (rho * inv if math.isfinite(rho) else math.inf)

        def g(w):  # wd(lam_pd(w)) - w, decreasing in w
            rho, x = inner(w)
            if not math.isfinite(rho):
                return -math.inf  # w too large: the servers cannot absorb lam
            return wd(x) - w

        lo, hi = 0.0, 1.0
        g_lo = g(lo)
        if g_lo <= 0:
            w = 0.0
        else:
            while g(hi) > 0 and hi < 1e7:
                lo, hi = hi, hi * 4.0
            if hi >= 1e7:
                return infeasible("no balance between prefill blocking and the decode pool")
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                if g(mid) > 0:
                    lo = mid
                else:
                    hi = mid
                if hi - lo <= 1e-9 * max(1.0, hi):
                    break
            w = hi
        rho, _ = inner(w)
    if not math.isfinite(rho) or rho >= 1:
        return infeasible("overloaded once prefill blocking is counted",
                          ratio=max(lam / capacity if capacity else 1e6, 1.0 + 1e-9))

    t_pure = [s + w for s in s_pure]
    t_both = [s + rho * d for s, d in zip(s_both, d_both)]
    mus = [1.0 / t for t in t_pure] + [1.0 / t for t in t_both]
    M = sum(mus)
    c = len(mus)
    wq = mmc_wait(lam, c, M) * (float(stats.arrival_scv) + float(stats.prefill_scv)) / 2.0
    shares = tuple(m / M for m in mus)
    servers = pure + both
    lam_pd = lam * sum(shares[: len(pure)])

    handoff = None
    if cluster is not None and pure and dec:
        weights = [r.batch / r.decode_step_s for r in dec]
        tot = sum(weights)
        per_prefill = [sum(wt / tot * kv_handoff_s(p, d, cluster, stats.mean_prompt)
                           for d, wt in zip(dec, weights)) for p in pure]
        handoff = sum(sh * x for sh, x in zip(shares, per_prefill)) / max(sum(shares[: len(pure)]), 1e-300)
    ttft = wq + sum(sh * r.prefill_latency_s for sh, r in zip(shares, servers))
    if handoff is not None:
        ttft += handoff * sum(shares[: len(pure)])

    tbt = 0.0
    if pure and dec:
        tok = [r.batch / r.decode_step_s for r in dec]
        tbt += sum(shares[: len(pure)]) * sum(t / sum(tok) * r.decode_step_s for t, r in zip(tok, dec))
    for sh, r, s in zip(shares[len(pure):], both, s_both):
        busy = min(lam * sh * s, 0.999)
        tbt += sh * r.decode_step_s / (1.0 - busy)

    fitness = min(wq if objective == "waiting" else ttft, PENALTY_S)
    return Prediction(True, fitness, wq, ttft, tbt, capacity, prefill_cap, lam_d, rho,
                      (lam_pd / lam_d) if lam_d else 0.0, w, handoff, shares, "")
