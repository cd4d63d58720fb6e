"""How many requests per second a plan can serve: its **saturation rate**, measured in the simulator.

A plan's saturation rate for a workload is the completion throughput it reaches when it always has
more work than it can do: ``n`` requests of the workload's lengths all arriving at once (a burst),
served by the scheduler on the cost model's clock, divided by the time until the last one
finished (requests / s). It counts what a formula misses — memory that limits how many prompts a
replica holds, KV hand-offs, the batch a decoder really reaches — because it is the same simulator
that serves every experiment. Loads are then fractions of it ("0.5 x capacity"), so that "half
load" means the same thing for every plan.

Deterministic: the same plan, workload and seed give the same figure.
"""

from __future__ import annotations

from dataclasses import replace

from .simulator import simulate_requests

__all__ = ["BURST_RATE", "saturation_rps"]

BURST_RATE = 1e4     # requests/s: arrivals this close together are "all at once" for any plan here


def saturation_rps(plan, cluster, workload, *, n: int = 40, costmodel=None) -> float:
    """The plan's completion throughput (requests per second of device time) on a burst of ``n``
    requests with ``workload``'s lengths (a :class:`~e2llm_lite.workload.Workload`; its arrivals
    replaced by Poisson ones at :data:`BURST_RATE`, its seed kept). Raises ValueError if ``n`` < 2 or the plan
    finished no request of the burst."""
    if n < 2:
        raise ValueError(f"a saturation rate needs a burst of at least 2 requests, got {n}")
    burst = replace(workload, rate=BURST_RATE, arrival="poisson", trace=None).generate(n=n)
    m = simulate_requests(plan, cluster, burst, costmodel=costmodel).metrics()
    if not m["requests_done"]:
        raise ValueError("the plan finished no request of the burst: it cannot serve this workload")
    return m["throughput_rps"]
