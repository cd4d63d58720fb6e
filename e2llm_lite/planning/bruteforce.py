"""Brute-force referee for :func:`e2llm_lite.planning.dp.partition`.

It tries every ordered choice of devices (every permutation of every subset) and every way to cut
the layers into that many non-empty contiguous ranges, and keeps the cheapest plan that fits.
Deliberately naive — plain Python loops, no shared tables with the DP — so that agreement between
the two means something. Its cost grows like sum_p n!/(n-p)! · C(L-1, p-1): use it only on tiny
instances (tests, notebook 02).
"""

from __future__ import annotations

from itertools import combinations, permutations

from .dp import Partition, check_problem, infeasible_error

__all__ = ["brute_force_partition"]


def brute_force_partition(
    compute,
    layer_mem,
    device_mem,
    comm,
    objective: str = "bottleneck",
    *,
    extra_first_mem: float = 0,
    extra_last_mem: float = 0,
    extra_first_ms=None,
    extra_last_ms=None,
) -> Partition:
    """Same arguments, errors and result as :func:`~e2llm_lite.planning.dp.partition`, by enumeration.

    Among plans of equal cost it returns the first one met: fewer devices first, then device
    orders in ``itertools.permutations`` order, then cut positions in ``itertools.combinations``
    order (which need not be the DP's tie-break; compare costs, not stages).
    """
    p = check_problem(
        compute, layer_mem, device_mem, comm, objective,
        extra_first_mem, extra_last_mem, extra_first_ms, extra_last_ms,
    )  # fmt: skip
    n, L = p.n_devices, p.n_layers
    compute, layer_mem, device_mem, comm = (
        p.compute.tolist(), p.layer_mem.tolist(), p.device_mem.tolist(), p.comm.tolist()
    )  # fmt: skip

    best = None  # (cost, stages, times)
    for n_stages in range(1, min(n, L) + 1):
        for cuts in combinations(range(1, L), n_stages - 1):
            bounds = (0, *cuts, L)
            ranges = list(zip(bounds[:-1], bounds[1:]))
            needs = [sum(layer_mem[s:e]) for s, e in ranges]
            needs[0] += p.extra_first_mem
            needs[-1] += p.extra_last_mem
            for order in permutations(range(n), n_stages):
                if any(need > device_mem[d] for need, d in zip(needs, order)):
                    continue
                times = []
                for i, (d, (s, e)) in enumerate(zip(order, ranges)):
                    t = sum(compute[d][s:e])
                    if i == 0:
                        t += p.extra_first_ms[d]
                    if i == n_stages - 1:
                        t += p.extra_last_ms[d]
                    else:
                        t += comm[d][order[i + 1]]
                    times.append(float(t))
                cost = max(times) if objective == "bottleneck" else sum(times)
                if best is None or cost < best[0]:
                    stages = tuple((d, s, e) for d, (s, e) in zip(order, ranges))
                    best = (cost, stages, tuple(times))
    if best is None:
        raise infeasible_error(p, "brute force")
    cost, stages, times = best
    return Partition(stages, float(cost), times, objective, exact=True)
