"""How many requests per second a plan can serve, measured in the simulator — two figures.

**Sustainable rate** (:func:`sustainable_rps`, what "load" means in the comparison): the highest
Poisson arrival rate at which a plan keeps up with a stream of ``n`` requests of the workload. A
run *keeps up* when its waiting time does not grow over the stream: the least-squares slope of
each request's waiting time (arrival -> prefill start, s) against its arrival time (s) is at most
:data:`GROWTH_LIMIT` = 0.05 (:func:`waiting_growth`, :func:`is_saturated`). Why the slope: above
capacity the queue grows linearly, a request arriving at ``t`` waits about ``(1 - mu / lam) t``
(``mu`` the service rate, ``lam`` the arrival rate), so a slope of 0.05 means arrivals outpace
service by about 5 %; below capacity the waiting time fluctuates around a constant (slope ~ 0).
A run that leaves requests unfinished (the scheduler stalled) is saturated too. The rate is found
by doubling / halving from a first guess until one rate keeps up and one does not, then bisection
(geometric) until they are within ``tolerance`` (2 %). The stream at rate ``lam`` is the same
seed's stream with its times scaled by ``1 / lam`` (Poisson arrivals from one generator), so the
test sees the same requests at every rate; a trace replay keeps its own arrival times, scaled to
the rate (its bursts included). ``plan_for(rate)`` gives the plan at each rate tried:
a strategy tuned for its rate (Splitwise's provisioning, the GA) is re-planned for it.

**Burst throughput** (:func:`burst_throughput_rps`): the completion rate on a burst of ``n``
requests all arriving at once (``n`` / time to the last completion). Cheap and deterministic, and
a fair capacity figure for a plan of *equal* replicas; on unequal replicas it is not: routing at
arrival gives the slowest replica its share of the burst, and the burst ends when that one has
finished (on ``mixed8`` conv, Splitwise's burst throughput is 0.41 requests/s; the rate it
sustains is 2.6). The emulated-device benchmarks (4 equal devices) use it.

Deterministic: the same plan(s), workload and seed give the same figures.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .simulator import simulate_requests

__all__ = ["BURST_RATE", "GROWTH_LIMIT", "burst_throughput_rps", "is_saturated", "sustainable_rps",
           "waiting_growth"]

BURST_RATE = 1e4     # requests/s: arrivals this close together are "all at once" for any plan here
GROWTH_LIMIT = 0.05  # s of extra waiting per s of arrivals above which a run is saturated
TOLERANCE = 0.02     # relative precision of the sustainable rate
MAX_PROBES = 40      # simulations one search may run


def burst_throughput_rps(plan, cluster, workload, *, n: int = 40, costmodel=None) -> float:
    """The plan's completion throughput (requests per second of device time) on a burst of ``n``
    requests with ``workload``'s lengths (a :class:`~e2llm_lite.workload.Workload`; its arrivals
    replaced by Poisson ones at :data:`BURST_RATE`, its seed kept). Raises ValueError if ``n`` < 2 or the plan
    finished no request of the burst."""
    if n < 2:
        raise ValueError(f"a burst throughput needs a burst of at least 2 requests, got {n}")
    burst = replace(workload, rate=BURST_RATE, arrival="poisson", trace=None).generate(n=n)
    m = simulate_requests(plan, cluster, burst, costmodel=costmodel).metrics()
    if not m["requests_done"]:
        raise ValueError("the plan finished no request of the burst: it cannot serve this workload")
    return m["throughput_rps"]


def waiting_growth(records) -> float:
    """Least-squares slope of waiting time (s) against arrival time (s) over the finished
    requests of a run (``records``: the scheduler's per-request records); 0.0 with fewer than 3
    or all arriving at one instant."""
    pts = np.array([(r.arrival_s, r.prefill_start_s - r.arrival_s) for r in records
                    if r.done and r.prefill_start_s is not None], dtype=float).reshape(-1, 2)
    if len(pts) < 3:
        return 0.0
    x = pts[:, 0] - pts[:, 0].mean()
    sxx = float((x * x).sum())
    if sxx <= 0:
        return 0.0
    return float((x * (pts[:, 1] - pts[:, 1].mean())).sum() / sxx)


def is_saturated(records, limit: float = GROWTH_LIMIT) -> bool:
    """True when the run did not keep up: its :func:`waiting_growth` exceeds ``limit`` or a
    request was left unfinished (neither done nor rejected for a reason of its own)."""
    records = list(records)
    if any(not r.done and isinstance(r.rejected, str) and r.rejected.startswith("unfinished")
           for r in records):
        return True
    return waiting_growth(records) > limit


def sustainable_rps(plan_for, cluster, workload, *, n: int = 400, guess: float | None = None,
                    costmodel=None, tolerance: float = TOLERANCE, limit: float = GROWTH_LIMIT,
                    progress=None) -> dict:
    """The highest Poisson rate (requests/s) at which ``plan_for(rate)``'s plan keeps up with
    ``n`` requests of ``workload`` (a :class:`~e2llm_lite.workload.Workload`: its lengths and
    seed, and a trace replay's arrival times; its rate is replaced; other arrivals are Poisson) — see the module docstring.

    Returns ``{"rate_rps", "plan" (the plan at that rate), "probes": [(rate, growth), ...]}``.
    ``guess``: the first rate tried (default: the plan's predicted capacity at rate 1).
    ``progress``: called with each probe's ``(rate, growth)``. Raises ValueError when no rate
    down to 1e-6 requests/s keeps up, or the search does not converge in :data:`MAX_PROBES`.
    """
    if n < 10:
        raise ValueError(f"a sustainable rate needs a stream of at least 10 requests, got {n}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance!r}")
    probes, plans = [], {}

    def keeps_up(rate: float) -> bool:
        plan = plans[rate] = plan_for(rate)
        wl = replace(workload, rate=rate) if workload.arrival == "trace" else \
            replace(workload, rate=rate, arrival="poisson")   # a replay keeps its own timing
        res = simulate_requests(plan, cluster, wl.generate(n=n), costmodel=costmodel)
        growth = waiting_growth(res.records.values())
        sat = is_saturated(res.records.values(), limit)
        probes.append((rate, growth))
        if progress:
            progress(rate, growth)
        return not sat

    if guess is None:
        guess = plan_for(1.0).predicted.get("capacity_rps") or 1.0
    if not (math.isfinite(guess) and guess > 0):
        guess = 1.0
    lo = hi = None
    rate = float(guess)
    while len(probes) < MAX_PROBES:
        if keeps_up(rate):
            lo = rate
        else:
            hi = rate
        if lo is None:
            if rate < 1e-6:
                raise ValueError("the plan keeps up with no arrival rate down to 1e-6 requests/s")
            rate /= 2
        elif hi is None:
            rate *= 2
        elif hi / lo <= 1 + tolerance:
            return {"rate_rps": lo, "plan": plans[lo], "probes": probes}
        else:
            rate = math.sqrt(lo * hi)
    raise ValueError(f"the sustainable-rate search did not converge in {MAX_PROBES} simulations")
