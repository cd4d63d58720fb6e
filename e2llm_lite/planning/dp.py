"""DP layer partitioning inside one replica (E2LLM's "split layers with dynamic programming").

Given the devices of one replica, choose a **device order** and **contiguous layer ranges**, one
range per used device, that minimise the pipeline's bottleneck (or, as an option, its latency),
subject to each device's memory. This module works on plain arrays so it can be read, tested and
taught without the rest of the library; the cost model turns a cluster into these arrays.

Inputs (units are the caller's promise; nothing here converts them)
-------------------------------------------------------------------
``compute[i, j]``   ms that layer ``j`` takes on device ``i``            shape (n_devices, n_layers)
``layer_mem[j]``    bytes layer ``j`` needs on whichever device holds it  shape (n_layers,)
``device_mem[i]``   bytes device ``i`` may use                           shape (n_devices,)
``comm[a, b]``      ms to hand the boundary activation from ``a`` to ``b`` shape (n_devices, n_devices)
                    (may be asymmetric; the diagonal is never used)

Optional, because the real model has an embedding before layer 0 and norm + lm_head after the last
layer: ``extra_first_mem`` / ``extra_last_mem`` (bytes added to the memory need of the first / last
stage) and ``extra_first_ms`` / ``extra_last_ms`` (arrays of n_devices ms added to the time of the
first / last stage when that device holds it). A single stage that holds every layer gets both.

Definitions
-----------
A plan is a list of stages ``(device, start, end)`` (layers ``start .. end-1``) in pipeline order,
covering layers ``0 .. n_layers`` without gaps; every device hosts at most one stage, devices may
stay unused, and a stage's memory need (its layers + the extras it carries) must be
``<= device_mem[device]``.

    time(stage s) = sum_{j in s} compute[dev_s, j]  (+ extras)  +  comm[dev_s, dev_{s+1}]

with no transfer after the last stage (:func:`e2llm_lite.split.stage_times`, the one copy of this
formula). ``objective="bottleneck"`` minimises
``max_s time(s)`` (the pipeline's steady-state period, E2LLM's objective);
``objective="latency"`` minimises ``sum_s time(s)`` (one request's trip through the pipeline).

The recurrence (exact over every device order)
----------------------------------------------
The transfer belongs to the *sending* stage, so a stage's time is only known once the *next*
device is known. We therefore build plans from the back (a DP in the style of PipeEdge's
scheduler, over device sets, layer boundaries and one device, but run from the last layer):

    G[S, d, k] = best objective for layers k .. L-1, placed on exactly the devices of the set S,
                 with the first of those stages (the one starting at layer k) on device d in S.

    G[{d}, d, k]  = T[d, k, L]                                   (d takes every remaining layer)
    G[S,   d, k]  = min over  k < m < L,  e in S \\ {d}  of
                        T[d, k, m] + comm[d, e]  (+)  G[S \\ {d}, e, m]        (|S| >= 2)

    answer        = min over S, d in S of  G[S, d, 0]

where ``T[d, k, m]`` is the compute time of layers ``k .. m-1`` on ``d`` plus any extras
(``extra_first_ms[d]`` when ``k == 0``, ``extra_last_ms[d]`` when ``m == L``), and ``+inf`` when
``m <= k`` or the stage does not fit ``device_mem[d]``; ``(+)`` is ``max`` for the bottleneck and
``+`` for latency. Both are monotone, so optimal sub-plans compose into optimal plans. A set S is
only ever built from ``S \\ {d}``, which is numerically smaller, so visiting the bitmasks in
increasing order is a valid evaluation order.

Cost: 2^n · n · (L+1) states, each a min over n · L choices: O(2^n · n² · L²) time and
O(2^n · n · L) memory. The inner min over (e, m) is vectorised with numpy for all d in S at once.

Ties (exact float equality) are broken deterministically: fewest devices first, then the smallest
device-set bitmask (sum of 2**i over the devices used), then the smallest first device; inside that
set, at every stage the earliest end layer, then the smallest next device index.

Size limit
----------
Measured on the course's 2-core machine with 30 layers (``benchmarks/planner_dp.py``, median of 5):
about 1 ms at 4 devices, 4 ms at 6, 16 ms at 8, 80 ms at 10, 0.4 s at 12 (and 0.75 s at 13,
2.2 s at 14: each extra device roughly doubles-to-triples the time). Up to
``MAX_EXACT_DEVICES = 12`` devices :func:`partition` runs the exact DP (``Partition.exact is
True``); pass ``max_exact_devices`` to move the limit (hard cap 20: the table is
2^n · n · (L+1) floats).

Above the limit it uses a documented heuristic that is still *correct* — every plan it returns is
valid, fits memory, and its cost is its true cost — but not necessarily optimal
(``Partition.exact is False``). It returns the cheapest of four candidates:

1. the exact DP over the ``max_exact_devices`` fastest devices only (least total compute);
2.-4. the same recurrence over *subsequences* of one fixed device order over all devices (which
   devices to use and the layer split are still chosen exactly, O(n² · L²) per order) for the
   orders: fastest first; largest memory first; a nearest-neighbour chain over ``comm`` starting
   from the fastest device.

Its time is about that of the exact DP at ``max_exact_devices`` devices (~0.4 s). It can miss a
feasible plan that needs more than ``max_exact_devices`` devices in an order none of the three
candidates allows; it then raises :class:`~e2llm_lite.errors.InfeasiblePlan` saying so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import InfeasiblePlan
from ..split import check_split, stage_times

__all__ = [
    "MAX_EXACT_DEVICES",
    "OBJECTIVES",
    "Partition",
    "evaluate",
    "partition",
]

#: Largest number of devices for which :func:`partition` runs the exact DP over every device order.
MAX_EXACT_DEVICES = 12

# Above this the DP table (2^n · n · (L+1) floats) no longer fits in memory (20 devices, 30
# layers: ~5 GB), whatever the caller asks for.
_HARD_LIMIT = 20

#: The objectives :func:`partition` understands.
OBJECTIVES = ("bottleneck", "latency")


@dataclass(frozen=True)
class Partition:
    """One replica's pipeline: which device runs which contiguous layer range, in pipeline order.

    Attributes:
        stages: tuple of ``(device_index, start_layer, end_layer)`` in pipeline order; ``end`` is
            exclusive and the ranges cover ``0 .. n_layers``.
        cost: the objective's value, ms (``max(stage_times)`` or ``sum(stage_times)``).
        stage_times: ms per stage (compute + extras + transfer to the next stage).
        objective: ``"bottleneck"`` or ``"latency"``.
        exact: True when the plan is optimal over every device order; False when it came from the
            heuristic used above :data:`MAX_EXACT_DEVICES` devices.
    """

    stages: tuple[tuple[int, int, int], ...]
    cost: float
    stage_times: tuple[float, ...]
    objective: str
    exact: bool = True

    @property
    def bottleneck(self) -> float:
        """ms of the slowest stage (the pipeline's period), whatever the objective was."""
        return max(self.stage_times)

    @property
    def latency(self) -> float:
        """ms for one pass through every stage (sum of stage times), whatever the objective was."""
        return float(sum(self.stage_times))

    @property
    def devices(self) -> tuple[int, ...]:
        """Device indices in pipeline order."""
        return tuple(d for d, _, _ in self.stages)


# --------------------------------------------------------------------------------------------
# input checking and the stage table (shared with dp_batched.py and the brute-force referee)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DPProblem:
    """Validated inputs of one partitioning problem (module docstring; shared with the batched DP
    and the brute-force referee)."""

    compute: np.ndarray  # (n, L) ms
    layer_mem: np.ndarray  # (L,) bytes
    device_mem: np.ndarray  # (n,) bytes
    comm: np.ndarray  # (n, n) ms
    objective: str
    extra_first_mem: float
    extra_last_mem: float
    extra_first_ms: np.ndarray  # (n,) ms
    extra_last_ms: np.ndarray  # (n,) ms

    @property
    def n_devices(self) -> int:
        return self.compute.shape[0]

    @property
    def n_layers(self) -> int:
        return self.compute.shape[1]


def _as_array(name: str, value, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of numbers: {exc}") from None
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got a minimum of {arr.min()}")
    return arr


def check_problem(
    compute,
    layer_mem,
    device_mem,
    comm,
    objective,
    extra_first_mem=0,
    extra_last_mem=0,
    extra_first_ms=None,
    extra_last_ms=None,
) -> DPProblem:
    """Validate and normalise the inputs; raise ValueError with a clear message if malformed."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; use one of {OBJECTIVES}")
    try:
        c = np.asarray(compute, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"compute must be an array of numbers: {exc}") from None
    if c.ndim != 2:
        raise ValueError(f"compute must be 2-D (n_devices, n_layers), got shape {c.shape}")
    n, L = c.shape
    if n == 0:
        raise ValueError("there must be at least one device (compute has 0 rows)")
    if L == 0:
        raise ValueError("there must be at least one layer (compute has 0 columns)")
    c = _as_array("compute", c, (n, L))
    lm = _as_array("layer_mem", layer_mem, (L,))
    dm = _as_array("device_mem", device_mem, (n,))
    cm = _as_array("comm", comm, (n, n))
    efm = float(_as_array("extra_first_mem", extra_first_mem, ()))
    elm = float(_as_array("extra_last_mem", extra_last_mem, ()))
    zeros = np.zeros(n)
    efs = zeros if extra_first_ms is None else _as_array("extra_first_ms", extra_first_ms, (n,))
    els = zeros if extra_last_ms is None else _as_array("extra_last_ms", extra_last_ms, (n,))
    return DPProblem(c, lm, dm, cm, objective, efm, elm, efs, els)


def infeasible_error(p: DPProblem, detail: str = "") -> InfeasiblePlan:
    """The InfeasiblePlan error, with the figures a user needs to see why."""
    need = float(p.layer_mem.sum()) + p.extra_first_mem + p.extra_last_mem
    have = float(p.device_mem.sum())
    biggest_layer = int(np.argmax(p.layer_mem))
    msg = (
        f"no placement of the {p.n_layers} layers fits the {p.n_devices} devices' memory: "
        f"devices hold {have:.6g} bytes in total (largest {p.device_mem.max():.6g}), "
        f"the model needs {need:.6g} bytes (layers {p.layer_mem.sum():.6g} + first-stage extra "
        f"{p.extra_first_mem:.6g} + last-stage extra {p.extra_last_mem:.6g}); "
        f"the biggest single layer is layer {biggest_layer} with "
        f"{p.layer_mem[biggest_layer]:.6g} bytes"
    )
    if need > have:
        msg += " — add devices or memory"
    elif p.layer_mem.max() > p.device_mem.max():
        msg += ", which no device can hold"
    else:
        msg += " — the total would suffice, but no split into contiguous ranges fits"
    if detail:
        msg += f" ({detail})"
    return InfeasiblePlan(msg)


# --------------------------------------------------------------------------------------------
# the stage table T[d, k, m]
# --------------------------------------------------------------------------------------------


def stage_table(p: DPProblem) -> np.ndarray:
    """T[d, k, m]: ms of a stage on device d holding layers k..m-1, +inf where impossible.

    Impossible means ``m <= k`` (empty stage) or the stage's memory need (its layers, plus
    ``extra_first_mem`` when k == 0 and ``extra_last_mem`` when m == L) exceeds ``device_mem[d]``.
    Sums are running sums from each start layer, so they equal a plain left-to-right sum.
    """
    n, L = p.n_devices, p.n_layers
    ms = np.full((n, L + 1, L + 1), np.inf)
    need = np.full((L + 1, L + 1), np.inf)
    for k in range(L):
        ms[:, k, k + 1 :] = np.cumsum(p.compute[:, k:], axis=1)
        need[k, k + 1 :] = np.cumsum(p.layer_mem[k:])
    ms[:, 0, :] += p.extra_first_ms[:, None]
    ms[:, :, L] += p.extra_last_ms[:, None]
    need[0, :] += p.extra_first_mem
    need[:, L] += p.extra_last_mem
    fits = need[None, :, :] <= p.device_mem[:, None, None]
    ms[~fits] = np.inf
    return ms


def combine_op(objective: str):
    """The (+) of the recurrence: max for the bottleneck, + for latency."""
    return np.maximum if objective == "bottleneck" else np.add


# --------------------------------------------------------------------------------------------
# exact DP over (device set, first device, first layer)
# --------------------------------------------------------------------------------------------


def _members(mask: int, n: int) -> np.ndarray:
    return np.array([i for i in range(n) if mask >> i & 1], dtype=np.intp)


def _exact(p: DPProblem, T: np.ndarray) -> list[tuple[int, int, int]] | None:
    """The recurrence of the module docstring over every device set; None if nothing fits."""
    n, L = p.n_devices, p.n_layers
    combine = combine_op(p.objective)
    G = np.full((1 << n, n, L + 1), np.inf)  # G[S, d, k]

    def choices(S: int, ds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each d in ds (all in S): value of every (next device e, end layer m), and the e's.

        Returns ``val[d, e, k, m] = T[d, k, m] + comm[d, e] (+) G[S \\ {d}, e, m]`` with e running
        over ``S \\ {d}`` in increasing order, and the matching e indices ``E[d, e]``. |S| stages
        need at least |S| layers, so only k <= L - |S| and m <= L - |S| + 1 are computed; every
        other G[S, d, k] stays +inf.
        """
        members = _members(S, n)
        hi = L - len(members) + 1
        not_d = members[None, :] != ds[:, None]
        E = np.broadcast_to(members, not_d.shape)[not_d].reshape(len(ds), len(members) - 1)
        rest = S ^ (1 << ds)  # S \ {d}, one per d
        after = G[rest[:, None], E, : hi + 1]  # G[S \ {d}, e, m]       (d, e, m)
        hand_off = p.comm[ds[:, None], E]  # comm[d, e]                  (d, e)
        stage = T[ds, :hi, : hi + 1]  # T[d, k, m]                        (d, k, m)
        val = stage[:, None, :, :] + hand_off[:, :, None, None]
        combine(val, after[:, :, None, :], out=val)
        return val, E

    for d in range(n):  # |S| = 1: d takes every remaining layer
        G[1 << d, d, :] = T[d, :, L]
    for S in range(1, 1 << n):
        size = S.bit_count()
        if size < 2 or size > L:  # singletons done; more stages than layers is impossible
            continue
        ds = _members(S, n)
        val, _ = choices(S, ds)
        G[S, ds, : val.shape[2]] = val.min(axis=(1, 3))

    first = G[:, :, 0]  # G[S, d, 0]
    best = first.min()
    if not np.isfinite(best):
        return None
    # ties: fewest devices, then smallest bitmask, then smallest first device
    S, d = min(
        ((int(s), int(dd)) for s, dd in np.argwhere(first == best)),
        key=lambda sd: (sd[0].bit_count(), sd[0], sd[1]),
    )

    stages, k = [], 0
    while S != 1 << d:  # walk the argmins: earliest end layer m, then smallest next device e
        val, E = choices(S, np.array([d]))
        by_m_then_e = val[0, :, k, :].T  # (m, e)
        m, j = np.unravel_index(np.argmin(by_m_then_e), by_m_then_e.shape)
        e = int(E[0, j])
        stages.append((d, k, int(m)))
        S, d, k = S ^ (1 << d), e, int(m)
    stages.append((d, k, L))
    return stages


# --------------------------------------------------------------------------------------------
# heuristic above MAX_EXACT_DEVICES: the same recurrence over subsequences of a fixed order
# --------------------------------------------------------------------------------------------


def _in_order(p: DPProblem, T: np.ndarray, order: Sequence[int]):
    """Exact DP restricted to pipelines whose devices appear in ``order`` (any subsequence).

    Q[i, k] = best objective for layers k..L-1 with the first stage on ``order[i]`` and the later
    stages on devices that come after position i in ``order``:

        Q[i, k] = min( T[d, k, L],                                           (d takes the rest)
                       min over k < m < L, j > i of T[d, k, m] + comm[d, order[j]] (+) Q[j, m] )

    Returns (cost, stages) or None when nothing fits.
    """
    L = p.n_layers
    combine = combine_op(p.objective)
    order = np.asarray(order, dtype=np.intp)
    q = len(order)
    Q = np.full((q, L + 1), np.inf)

    def choices(i: int) -> np.ndarray:
        """val[j, k, m] for the later positions j = i+1 .. q-1."""
        d, later = order[i], order[i + 1 :]
        return combine(T[d][None, :, :] + p.comm[d, later][:, None, None], Q[i + 1 :, None, :])

    for i in reversed(range(q)):
        Q[i] = T[order[i], :, L]
        if i + 1 < q:
            Q[i] = np.minimum(Q[i], choices(i).min(axis=(0, 2)))

    i = int(np.argmin(Q[:, 0]))  # ties: earliest position in the order
    best = float(Q[i, 0])
    if not np.isfinite(best):
        return None
    stages, k = [], 0
    while True:
        d = int(order[i])
        if i + 1 < q:
            by_m_then_j = choices(i)[:, k, :].T  # (m, j)
            m, j = np.unravel_index(np.argmin(by_m_then_j), by_m_then_j.shape)
            if by_m_then_j[m, j] < T[d, k, L]:  # ties: prefer taking the rest (fewer devices)
                stages.append((d, k, int(m)))
                i, k = i + 1 + int(j), int(m)
                continue
        stages.append((d, k, L))
        return best, stages


def _heuristic_orders(p: DPProblem) -> list[list[int]]:
    """Candidate device orders: fastest first, largest memory first, nearest-neighbour on comm."""
    n = p.n_devices
    speed = p.compute.sum(axis=1) + p.extra_first_ms + p.extra_last_ms  # total ms, small = fast
    fastest = sorted(range(n), key=lambda i: (speed[i], i))
    biggest = sorted(range(n), key=lambda i: (-p.device_mem[i], i))
    chain = [fastest[0]]
    while len(chain) < n:
        last = chain[-1]
        chain.append(min((i for i in range(n) if i not in chain), key=lambda i: (p.comm[last, i], i)))
    return [fastest, biggest, chain]


def _fastest_subset(p: DPProblem, T: np.ndarray, size: int):
    """Exact DP over the ``size`` fastest devices only; (cost, stages) in original indices or None."""
    if size < 1:
        return None
    speed = p.compute.sum(axis=1) + p.extra_first_ms + p.extra_last_ms
    keep = np.array(sorted(sorted(range(p.n_devices), key=lambda i: (speed[i], i))[:size]))
    sub = DPProblem(
        p.compute[keep], p.layer_mem, p.device_mem[keep], p.comm[np.ix_(keep, keep)], p.objective,
        p.extra_first_mem, p.extra_last_mem, p.extra_first_ms[keep], p.extra_last_ms[keep],
    )  # fmt: skip
    stages = _exact(sub, T[keep])
    if stages is None:
        return None
    stages = [(int(keep[d]), s, e) for d, s, e in stages]
    return partition_of(p, stages, exact=False).cost, stages


def _heuristic(p: DPProblem, T: np.ndarray, size: int) -> list[tuple[int, int, int]] | None:
    """Best of: the exact DP over the ``size`` fastest devices, and the three restricted orders."""
    candidates = [_fastest_subset(p, T, size)]
    candidates += [_in_order(p, T, order) for order in _heuristic_orders(p)]
    found = [c for c in candidates if c is not None]
    if not found:
        return None
    return min(found, key=lambda c: c[0])[1]  # ties: first candidate in the order above


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def partition_of(p: DPProblem, stages, exact: bool) -> Partition:
    """Check ``stages`` against problem ``p`` and return the Partition with its true times."""
    n = p.n_devices
    stages = tuple((int(d), int(s), int(e)) for d, s, e in stages)
    check_split(stages, p.n_layers)
    for i, (d, s, e) in enumerate(stages):
        if not 0 <= d < n:
            raise ValueError(f"device index {d} out of range 0..{n - 1}")
        need = float(p.layer_mem[s:e].sum())
        if i == 0:
            need += p.extra_first_mem
        if i == len(stages) - 1:
            need += p.extra_last_mem
        if need > p.device_mem[d]:
            raise InfeasiblePlan(
                f"stage {i} (layers {s}..{e - 1}) needs {need:.6g} bytes but device {d} "
                f"has {p.device_mem[d]:.6g}"
            )
    times = stage_times(stages, p.compute, p.extra_first_ms, p.extra_last_ms, p.comm)
    cost = max(times) if p.objective == "bottleneck" else float(sum(times))
    return Partition(stages, cost, tuple(times), p.objective, exact)


def evaluate(
    stages,
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
    """The :class:`Partition` (stage times, cost) of a given plan, e.g. one built by hand.

    Raises ValueError if ``stages`` is not a valid plan (not contiguous, not covering every layer,
    a device used twice, an index out of range) and InfeasiblePlan if a stage does not fit its
    device's memory. ``exact`` is set to False: nothing claims this plan is optimal.
    """
    p = check_problem(
        compute, layer_mem, device_mem, comm, objective,
        extra_first_mem, extra_last_mem, extra_first_ms, extra_last_ms,
    )  # fmt: skip
    return partition_of(p, stages, exact=False)


def partition(
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
    max_exact_devices: int = MAX_EXACT_DEVICES,
) -> Partition:
    """Split the layers over (a subset of) the devices, in the best order, optimally.

    Args:
        compute: ms of layer j on device i, shape (n_devices, n_layers).
        layer_mem: bytes layer j needs, shape (n_layers,).
        device_mem: bytes device i may use, shape (n_devices,).
        comm: ms to hand the boundary activation from device a to device b, shape
            (n_devices, n_devices); may be asymmetric, diagonal ignored.
        objective: ``"bottleneck"`` (minimise the slowest stage's time) or ``"latency"``
            (minimise the sum of stage times).
        extra_first_mem, extra_last_mem: bytes added to the first / last stage's memory need
            (embedding / norm + lm_head). Default 0.
        extra_first_ms, extra_last_ms: ms per device added to the first / last stage's time when
            that device holds it, shape (n_devices,). Default: zeros.
        max_exact_devices: above this many devices the heuristic of the module docstring is used
            instead of the exact DP (``Partition.exact`` tells which). At most 20 when it applies.

    Returns:
        The optimal :class:`Partition` (ties broken as the module docstring says).

    Raises:
        ValueError: malformed input (shapes, NaN/inf, negatives, no devices or layers, unknown
            objective).
        InfeasiblePlan: no plan fits the devices' memory (with the totals in the message).
    """
    p = check_problem(
        compute, layer_mem, device_mem, comm, objective,
        extra_first_mem, extra_last_mem, extra_first_ms, extra_last_ms,
    )  # fmt: skip
    T = stage_table(p)
    exact = p.n_devices <= max_exact_devices
    if exact and p.n_devices > _HARD_LIMIT:
        raise ValueError(
            f"the exact DP over {p.n_devices} devices would need 2^{p.n_devices} device sets; "
            f"use max_exact_devices <= {_HARD_LIMIT}"
        )
    stages = _exact(p, T) if exact else _heuristic(p, T, min(max_exact_devices, _HARD_LIMIT))
    if stages is None:
        detail = "" if exact else (
            f"heuristic search over {p.n_devices} > {max_exact_devices} devices: only the "
            f"{max_exact_devices} fastest devices and three device orders were tried, an exact "
            "search might still find a plan"
        )
        raise infeasible_error(p, detail)
    return partition_of(p, stages, exact)
