"""The exact DP of :mod:`e2llm_lite.planning.dp`, vectorised over all device sets of one size.

Same recurrence, same tie-breaks, same floating-point operations in the same order — so the same
plan and cost as :func:`~e2llm_lite.planning.dp.partition` (the tests check it) — but instead of
one numpy evaluation per device set (2^n of them, each paying numpy's call overhead) it evaluates
all ``C(n, s)`` sets of size ``s`` at once: n evaluations in all. The GA plans thousands of small
groups, where that overhead is most of the time: about 5x faster at 8 devices.

    G[S, d, k] = min over k < m, e in S \\ {d} of  T[d, k, m] + comm[d, e]  (+)  G[S \\ {d}, e, m]

computed for every S of size s from the sets of size s - 1 (see dp.py for the meaning of every
symbol). Work is done in chunks of at most ``_CHUNK`` floats so memory stays small.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np

from .dp import (MAX_EXACT_DEVICES, DPProblem, Partition, combine_op, infeasible_error, partition_of,
                 stage_table)
from .dp import partition as _partition

__all__ = ["partition_arrays"]

_CHUNK = 4_000_000  # floats per vectorised block (32 MB)


@lru_cache(maxsize=None)
def _sets(n: int, size: int):
    """(members (C, s) ascending, bitmasks (C,), E (C, s, s-1)): every device set of ``size``
    out of ``n``, and for each member position a the other members in increasing order."""
    members = np.array(list(combinations(range(n), size)), dtype=np.intp)
    masks = (1 << members).sum(axis=1)
    E = np.stack([np.delete(members, a, axis=1) for a in range(size)], axis=1)
    for arr in (members, masks, E):
        arr.setflags(write=False)
    return members, masks, E


def _exact_batched(p: DPProblem, T: np.ndarray):
    n, L = p.n_devices, p.n_layers
    combine = combine_op(p.objective)
    G = np.full((1 << n, n, L + 1), np.inf)
    for d in range(n):
        G[1 << d, d, :] = T[d, :, L]
    for size in range(2, min(n, L) + 1):
        members, masks, E = _sets(n, size)
        hi = L - size + 1
        per_set = size * (size - 1) * hi * (hi + 1)
        step = max(1, _CHUNK // per_set)
        for c0 in range(0, len(members), step):
            D = members[c0:c0 + step]  # (c, s)
            Ec = E[c0:c0 + step]  # (c, s, s-1)
            rest = masks[c0:c0 + step, None] ^ (1 << D)  # (c, s)
            after = G[rest[:, :, None], Ec, : hi + 1]  # (c, s, s-1, m)
            hand = p.comm[D[:, :, None], Ec]  # (c, s, s-1)
            stage = T[D, :hi, : hi + 1]  # (c, s, k, m)
            # one successor position e at a time (arrays that stay in cache); a min is exact in
            # any order, so the values are dp.py's whatever the order
            best = combine(stage + hand[:, :, 0, None, None], after[:, :, 0, None, :])  # (c, s, k, m)
            val = np.empty_like(best)
            for j in range(1, size - 1):
                np.add(stage, hand[:, :, j, None, None], out=val)
                combine(val, after[:, :, j, None, :], out=val)
                np.minimum(best, val, out=best)
            G[masks[c0:c0 + step, None], D, :hi] = best.min(axis=3)

    first = G[:, :, 0]
    best = first.min()
    if not np.isfinite(best):
        return None
    S, d = min(((int(s), int(dd)) for s, dd in np.argwhere(first == best)),
               key=lambda sd: (sd[0].bit_count(), sd[0], sd[1]))
    stages, k = [], 0
    while S != 1 << d:
        others = np.array([i for i in range(n) if S >> i & 1 and i != d], dtype=np.intp)
        size = S.bit_count()
        hi = L - size + 1
        rest = S ^ (1 << d)
        val = T[d, k, : hi + 1][None, :] + p.comm[d, others][:, None]  # (e, m)
        combine(val, G[rest, others, : hi + 1], out=val)
        by_m_then_e = val.T
        m, j = np.unravel_index(np.argmin(by_m_then_e), by_m_then_e.shape)
        stages.append((d, k, int(m)))
        S, d, k = rest, int(others[j]), int(m)
    stages.append((d, k, L))
    return stages


def partition_arrays(compute: np.ndarray, layer_mem: np.ndarray, device_mem: np.ndarray,
                     comm: np.ndarray, objective: str, extra_first_mem: float, extra_last_mem: float,
                     extra_first_ms: np.ndarray, extra_last_ms: np.ndarray,
                     max_exact_devices: int = MAX_EXACT_DEVICES) -> Partition:
    """:func:`~e2llm_lite.planning.dp.partition` for inputs that are already float64 numpy arrays
    of the right shapes (no validation: the replica planner builds them); exact up to
    ``max_exact_devices`` devices by the batched recurrence, dp.py's heuristic above."""
    n = compute.shape[0]
    if n > max_exact_devices:
        return _partition(compute, layer_mem, device_mem, comm, objective,
                          extra_first_mem=extra_first_mem, extra_last_mem=extra_last_mem,
                          extra_first_ms=extra_first_ms, extra_last_ms=extra_last_ms,
                          max_exact_devices=max_exact_devices)
    p = DPProblem(compute, layer_mem, device_mem, comm, objective, float(extra_first_mem),
                 float(extra_last_mem), extra_first_ms, extra_last_ms)
    stages = _exact_batched(p, stage_table(p))
    if stages is None:
        raise infeasible_error(p)
    return partition_of(p, stages, exact=True)
