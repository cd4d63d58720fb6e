"""One replica, planned: the model-level wrapper around the DP (:mod:`e2llm_lite.planning.dp`).

Given a device group and a role (:mod:`~e2llm_lite.planning.replica_plan`), the
:class:`ReplicaPlanner` builds the DP's inputs (:mod:`~e2llm_lite.planning.arrays`), runs the DP,
chooses the decode batch and returns a :class:`~e2llm_lite.planning.replica_plan.ReplicaPlan`
with the figures of its split. Workload figures (``Tm``, ``Om``, ``P``, ``Te``):
:mod:`~e2llm_lite.planning.workload_stats`; the memory reserve:
:mod:`~e2llm_lite.planning.reserve`.

What the planner assumes (ms, tokens, bytes)
--------------------------------------------
Compute (the DP's ``compute[i, j]``, ms of layer j on device i) from :class:`~e2llm_lite.costmodel.CostModel`:

==========  =============================================================  ==================
role        per layer on device i                                          DP objective
==========  =============================================================  ==================
prefill     ``layer_ms(prefill, tokens=Te) / prefill_speed_i``             ``bottleneck``
decoder     ``layer_ms(decode, batch=B, context=C) / decode_speed_i``      ``latency`` (trip)
both        prefill + ``(Om / B) *`` decoder (the work of one request)       ``bottleneck``
==========  =============================================================  ==================

with ``C = round(Tm + Om / 2)`` (a sequence's mean context while it decodes; the decode form is
linear in C so this is exact on average). The embedding (first stage) and norm + lm_head (last
stage) times in the same way. Transfers (``comm[a, b]``): the link formula
(:func:`~e2llm_lite.devices.transfer_ms`) of the hidden state's ``tokens * 576 * 4`` B, tokens =
``round(Tm)`` for a prefill, ``B`` for a decode step ("both": prefill + ``Om / B`` x decode).
Memory: the role's reserve (:func:`~e2llm_lite.planning.reserve.reserve`) through
:func:`~e2llm_lite.planning.arrays.memory_arrays`.

Decode batch ``B`` (decoder and both): ``B_max`` = the largest ``B <= max_batch`` (default 32)
for which some split fits the group's memory (:meth:`ReplicaPlanner.fits_memory`, exact and
without a DP because all layers are the same size). The candidates are the powers of two below
``B_max`` and ``B_max``, in increasing order; the DP is run for each, and its split is then
*filled*: its ``B`` is raised while every stage of that same split still fits (at most
``max_batch``; the DP may have left devices out, so the split can hold more than the candidate),
and the candidates up to the filled ``B`` are skipped (every device's per-layer time scales by the
same factor with ``B``, so the DP would keep that split there, up to the small change in transfer
times). The (split, ``B``) kept is the one with the highest throughput (:meth:`throughput`) —
tokens/s ``B / trip`` for a decoder, requests/s ``1 / (period + Om * trip / B)`` for "both" (the
largest batch is not always best: it may need more, slower devices in the pipeline). No ``B >= 1``
fits: the group cannot be a replica of that role
(:class:`~e2llm_lite.errors.InfeasiblePlan`).

Figures of a split (:class:`~e2llm_lite.planning.replica_plan.SplitFigures`, seconds): each phase
the role runs is timed on the split by the stage-time formula (:func:`e2llm_lite.split.stage_times`):
``prefill_period_s`` = the slowest prefill stage, ``prefill_latency_s`` = their sum,
``decode_step_s`` = the sum of the decode stages at batch ``B``. A "both" replica is split by the
DP on the per-request work (a heuristic: neither max nor sum of it is exactly what the evaluator
uses), then both phases are timed on that split.

Caching: the DP is run once per (device group, role): results are cached by a *signature* — the
role, the (prefill speed, decode speed, memory) of the group's devices in a canonical order (by
their own figures, then by the figures of and links to the others) and the links between them in
that order (latency, bandwidth) — so two groups of identical devices joined by identical links
(e.g. on two sites with the same LAN) share one DP run; the result is mapped back to each group's
own devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..costmodel import CostModel
from ..devices import ms_per_byte
from ..errors import ConfigError, InfeasiblePlan
from ..memory import MIB, stage_need_bytes
from ..split import stage_times
from .arrays import DeviceTable, DPArrays, memory_arrays, phase_arrays
from .dp import MAX_EXACT_DEVICES, partition
from .dp_batched import partition_arrays
from .replica_plan import ReplicaPlan, SplitFigures, check_role
from .reserve import capacities, holds_model, reserve
from .workload_stats import WorkloadStats, workload_stats

__all__ = ["DEFAULT_MAX_BATCH", "ReplicaPlanner", "plan_replica"]

#: Largest decode batch a decoder (or colocated) replica is planned for.
DEFAULT_MAX_BATCH = 32

_OBJECTIVE = {"prefill": "bottleneck", "decoder": "latency", "both": "bottleneck"}


@dataclass
class SolvedSplit:
    """A cached DP result in positions of the signature's sorted order (None = infeasible)."""

    stages: tuple[tuple[int, int, int], ...]
    batch: int
    figures: SplitFigures


class ReplicaPlanner:
    """Plans replicas of one cluster for one workload, with caches; see the module docstring.

    ``plan(devices, role)`` returns a :class:`ReplicaPlan` or raises InfeasiblePlan;
    ``try_plan`` returns None instead; ``cached_plan`` is the unchecked fast path the searches
    use. ``devices``: names or indices of the cluster's devices. ``dp_runs`` counts DP calls
    (cache misses), for benchmarks.
    """

    def __init__(self, cluster, costmodel: CostModel | None = None, stats: WorkloadStats | str = "conv",
                 *, max_batch: int = DEFAULT_MAX_BATCH, max_exact_devices: int = MAX_EXACT_DEVICES):
        self.cluster = cluster
        self.cm = costmodel or CostModel.load()
        self.stats = stats if isinstance(stats, WorkloadStats) else workload_stats(stats, self.cm)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        self.max_batch = max_batch
        self.max_exact_devices = max_exact_devices
        self.anatomy = a = self.cm.anatomy
        self.table = t = DeviceTable.of(cluster)
        self.names = list(t.names)
        self.index = {name: i for i, name in enumerate(self.names)}
        self.mem = t.memory_bytes
        self.sites = list(t.sites)
        n = len(self.names)
        self._spec = [(float(t.prefill_speed[i]), float(t.decode_speed[i]),
                       float(cluster.devices[i].memory_mib)) for i in range(n)]
        inv_bw = ms_per_byte(t.bandwidth_mbps)
        self._link = [[(float(t.latency_ms[i, j]), float(inv_bw[i, j])) for j in range(n)] for i in range(n)]
        st = self.stats
        te = st.prefill_tokens  # prefill timed at Te, its hand-offs at the mean prompt
        self._prefill_ms = (self.cm.layer_ms("prefill", tokens=te), self.cm.embed_ms("prefill", tokens=te),
                            self.cm.head_ms("prefill", tokens=te))
        self._prefill_bytes = self.cm.hidden_state_bytes(max(1, int(round(st.mean_prompt))))
        self._decode_ms: dict[int, tuple[float, float, float]] = {}
        self._sig_cache: dict = {}
        self._caps: dict = {}
        self._group_cache: dict = {}
        self.dp_runs = 0
        self.weights = a.n_layers * a.layer_bytes + 2 * a.embed_bytes + a.norm_bytes

    # ---- the DP's inputs -------------------------------------------------------------------
    def _decode_host_ms(self, batch: int) -> tuple[float, float, float]:
        """Host ms (layer, embed, head) of a decode step at ``batch`` and the mean context."""
        if batch not in self._decode_ms:
            ctx = min(self.stats.decode_context, self.anatomy.max_positions - 1)
            kw = dict(batch=batch, context=ctx)
            self._decode_ms[batch] = (self.cm.layer_ms("decode", **kw), self.cm.embed_ms("decode", **kw),
                                      self.cm.head_ms("decode", **kw))
        return self._decode_ms[batch]

    def phase_times(self, idx: np.ndarray, phase: str, batch: int = 1):
        """``(compute, extra_first_ms, extra_last_ms, comm)`` of one phase for the devices ``idx``:
        a prefill at ``Te``, or a decode step of ``batch`` sequences at the mean context."""
        if phase == "prefill":
            host, nbytes = self._prefill_ms, self._prefill_bytes
        else:
            host, nbytes = self._decode_host_ms(batch), self.cm.hidden_state_bytes(batch)
        return phase_arrays(self.table, idx, phase, host, nbytes, self.anatomy.n_layers)

    def dp_inputs(self, idx, role: str, batch: int) -> DPArrays:
        """The DP's inputs for the devices ``idx`` (indices) as a replica of ``role`` at decode
        batch ``batch``: the role's times (module docstring) and memory reserve."""
        idx = np.asarray(idx, dtype=np.intp)
        if role == "prefill":
            times = self.phase_times(idx, "prefill")
        elif role == "decoder":
            times = self.phase_times(idx, "decode", batch)
        else:
            w = self.stats.mean_output / batch
            pre, dec = self.phase_times(idx, "prefill"), self.phase_times(idx, "decode", batch)
            times = tuple(p + w * d for p, d in zip(pre, dec))
        memory = memory_arrays(self.table, idx, *reserve(role, self.stats, batch), self.anatomy)
        return DPArrays.build([self.names[i] for i in idx], times, memory)

    # ---- memory ------------------------------------------------------------------------------
    def fits_memory(self, idx, role: str, batch: int = 1) -> bool:
        """Exactly whether *some* device order and contiguous split of the layers fits the
        group's memory for ``role`` at ``batch`` (no DP: :mod:`~e2llm_lite.planning.reserve`).
        Per-device capacities are computed once per (role, batch)."""
        key = (role, batch)
        if key not in self._caps:
            every = np.arange(len(self.names))
            layer_mem, device_mem, first, last = memory_arrays(
                self.table, every, *reserve(role, self.stats, batch), self.anatomy)
            self._caps[key] = capacities(layer_mem[0], device_mem, first, last)
        return holds_model(self._caps[key], [int(i) for i in idx], self.anatomy.n_layers)

    def _split_holds(self, idx: np.ndarray, role: str, batch: int, stages) -> bool:
        """Whether every stage of ``stages`` (positions into ``idx``) fits at ``batch``."""
        kv, act, rows = reserve(role, self.stats, batch)
        return all(stage_need_bytes(s, e, kv, act, rows, self.anatomy) <= self.mem[idx[d]]
                   for d, s, e in stages)

    def _fill(self, idx: np.ndarray, role: str, batch: int, stages) -> int:
        """The largest batch (<= max_batch) that the split ``stages`` still holds: the DP's split
        may use fewer devices than the group, whose own room allows more sequences."""
        if role == "prefill":
            return batch
        while batch < self.max_batch and self._split_holds(idx, role, batch + 1, stages):
            batch += 1
        return batch

    def _batch_candidates(self, idx: np.ndarray, role: str) -> list[int]:
        """Decode batches to try, ascending: 1, 2, 4, ... below ``B_max``, then ``B_max`` = the
        largest batch (<= max_batch) for which :meth:`fits_memory` holds; [] if none does."""
        if role == "prefill":
            return [1] if self.fits_memory(idx, role, 1) else []
        lo, hi = 0, self.max_batch  # largest fitting batch by bisection (fit is monotone in B)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits_memory(idx, role, mid):
                lo = mid
            else:
                hi = mid - 1
        out, p = [], 1
        while p < lo:
            out.append(p)
            p <<= 1
        return out + [lo] if lo >= 1 else []

    # ---- figures -----------------------------------------------------------------------------
    def time_split(self, idx, role: str, batch: int, stages, exact: bool = True) -> SplitFigures:
        """The figures of a split (``stages`` = (position in ``idx``, start, end)): each phase the
        role runs, timed by the stage-time formula."""
        idx = np.asarray(idx, dtype=np.intp)
        pre = dec = None
        if role in ("prefill", "both"):
            pre = stage_times(stages, *self.phase_times(idx, "prefill"))
        if role in ("decoder", "both"):
            dec = stage_times(stages, *self.phase_times(idx, "decode", batch))
        return SplitFigures.of_stage_times(pre, dec, exact)

    def throughput(self, role: str, batch: int, figures: SplitFigures) -> float:
        """What the batch choice maximises: prompts/s (prefill), tokens/s (decoder), requests/s
        alone (both)."""
        if role == "prefill":
            return 1.0 / figures.prefill_period_s
        if role == "decoder":
            return batch / figures.decode_step_s
        return 1.0 / (figures.prefill_period_s + self.stats.mean_output * figures.decode_step_s / batch)

    def best_batch(self, idx, role: str, stages, exact: bool = True):
        """``(batch, figures)`` with the highest :meth:`throughput` among the batches (1 ..
        max_batch) that the fixed split ``stages`` holds, or None if it holds none."""
        idx = np.asarray(idx, dtype=np.intp)
        best, best_value = None, -math.inf
        for batch in range(1, (1 if role == "prefill" else self.max_batch) + 1):
            if not self._split_holds(idx, role, batch, stages):
                break
            figures = self.time_split(idx, role, batch, stages, exact)
            value = self.throughput(role, batch, figures)
            if value > best_value * (1 + 1e-12):
                best, best_value = (batch, figures), value
        return best

    # ---- the DP, cached ----------------------------------------------------------------------
    def _signature(self, group: Sequence[int], role: str):
        """(key, devices in the key's order). Equal keys = identical DP problems."""
        spec, link = self._spec, self._link
        profile = {i: (spec[i], tuple(sorted((spec[j], link[i][j]) for j in group if j != i)))
                   for i in group}
        order = sorted(group, key=lambda i: (profile[i], i))
        links = tuple(link[a][b] for a in order for b in order if a != b)
        return (role, tuple(spec[i] for i in order), links), order

    def _solve(self, order: list[int], role: str, objective: str | None = None) -> SolvedSplit | None:
        """The DP over the role's batch candidates (module docstring); None if nothing fits."""
        idx = np.array(order, dtype=np.intp)
        objective = objective or _OBJECTIVE[role]
        best, best_value, filled = None, -math.inf, 0
        for batch in self._batch_candidates(idx, role):
            if batch <= filled:
                continue  # the last split found already holds this batch (module docstring)
            self.dp_runs += 1
            try:
                part = partition_arrays(**self.dp_inputs(idx, role, batch).kwargs(), objective=objective,
                                        max_exact_devices=self.max_exact_devices)
            except InfeasiblePlan:  # only the heuristic above 12 devices can miss a fitting split
                continue
            batch = filled = self._fill(idx, role, batch, part.stages)
            figures = self.time_split(idx, role, batch, part.stages, part.exact)
            value = self.throughput(role, batch, figures)
            if value > best_value * (1 + 1e-12):
                best, best_value = SolvedSplit(part.stages, batch, figures), value
        return best

    def _replica(self, order: Sequence[int], role: str, found: SolvedSplit, name: str) -> ReplicaPlan:
        stages = tuple((self.names[order[d]], s, e) for d, s, e in found.stages)
        return ReplicaPlan.build(role, stages, found.batch, reserve(role, self.stats, found.batch),
                                 found.figures, name)

    def cached_plan(self, group: tuple, role: str, name: str = "r0") -> ReplicaPlan | None:
        """:meth:`try_plan` for a *sorted tuple of valid device indices*, without checks (the
        searches call it tens of thousands of times); cached per (group, role)."""
        gkey = (group, role)
        if gkey not in self._group_cache:
            key, order = self._signature(group, role)
            if key not in self._sig_cache:
                self._sig_cache[key] = self._solve(order, role)
            found = self._sig_cache[key]
            self._group_cache[gkey] = None if found is None else self._replica(order, role, found, "r0")
        rp = self._group_cache[gkey]
        return None if rp is None else (rp if rp.name == name else rp.with_name(name))

    # ---- public ----------------------------------------------------------------------------
    def indices(self, devices: Iterable) -> tuple[int, ...]:
        """Sorted device indices of ``devices`` (names or indices), checked."""
        out = []
        for d in devices:
            if isinstance(d, (int, np.integer)) and not isinstance(d, bool):
                if not 0 <= d < len(self.names):
                    raise ConfigError(f"device index {d} out of range 0..{len(self.names) - 1}")
                out.append(int(d))
            else:
                if d not in self.index:
                    raise ConfigError(f"cluster {self.cluster.name!r} has no device {d!r}; "
                                      f"devices: {', '.join(self.names)}")
                out.append(self.index[d])
        if not out:
            raise ValueError("a replica needs at least one device")
        if len(set(out)) != len(out):
            raise ValueError(f"a device is listed twice in one replica: {[self.names[i] for i in out]}")
        return tuple(sorted(out))

    def try_plan(self, devices: Iterable, role: str, name: str = "r0") -> ReplicaPlan | None:
        """The replica's plan, or None when the group cannot hold the model for ``role``."""
        check_role(role)
        return self.cached_plan(self.indices(devices), role, name)

    def can_serve(self, devices: Iterable, role: str) -> bool:
        """True when the group can hold the model (with its reserve) for ``role``."""
        return self.try_plan(devices, role) is not None

    def plan(self, devices: Iterable, role: str, name: str = "r0") -> ReplicaPlan:
        """Like :meth:`try_plan` but raises InfeasiblePlan with the memory figures."""
        rp = self.try_plan(devices, role, name)
        if rp is None:
            raise self._cannot_hold(self.indices(devices), role)
        return rp

    def _cannot_hold(self, group: Sequence[int], role: str) -> InfeasiblePlan:
        kv, act, rows = reserve(role, self.stats, 1)
        a = self.anatomy
        need = (self.weights + kv * a.n_layers * a.kv_bytes_per_token_layer
                + rows * a.vocab * a.elem_bytes)
        have = float(self.mem[list(group)].sum())
        tokens = self.stats.design_prompt if role != "decoder" else self.stats.context_tokens
        return InfeasiblePlan(
            f"devices {', '.join(self.names[i] for i in group)} cannot hold the model as a "
            f"{role} replica: they have {have / MIB:.1f} MiB, a {role} replica needs at least "
            f"{need / MIB:.1f} MiB (weights {self.weights / MIB:.1f} MiB + KV and activation "
            f"reserve for {tokens}-token sequences) in contiguous layer ranges")

    def retime(self, replica: ReplicaPlan) -> ReplicaPlan:
        """The same replica (devices, layer ranges, role) re-planned for this planner's workload:
        its memory reserve, decode batch (its own if that still fits, else the largest its split
        holds) and its times. For a plan made for one workload evaluated under another.
        Raises InfeasiblePlan when its split cannot hold even one request of this workload."""
        idx = np.array([self.index[d] for d in replica.devices], dtype=np.intp)
        stages = tuple((k, s, e) for k, (_, s, e) in enumerate(replica.stages))
        kv, act, rows = reserve(replica.role, self.stats, 1)
        for k, s, e in stages:
            need = stage_need_bytes(s, e, kv, act, rows, self.anatomy)
            if need > self.mem[idx[k]]:
                raise InfeasiblePlan(
                    f"replica {replica.name}: device {self.names[idx[k]]!r} cannot hold layers "
                    f"{s}..{e - 1} with the reserve of one {self.stats.name} request as a "
                    f"{replica.role} replica ({need / MIB:.1f} MiB > {self.mem[idx[k]] / MIB:.1f} MiB)")
        if self._split_holds(idx, replica.role, replica.batch, stages):
            batch = replica.batch  # its own batch still fits: keep it
        else:
            batch = self._fill(idx, replica.role, 1, stages)
        figures = self.time_split(idx, replica.role, batch, stages, replica.exact)
        return ReplicaPlan.build(replica.role, replica.stages, batch,
                                 reserve(replica.role, self.stats, batch), figures, replica.name)


def plan_replica(cluster, device_names: Iterable, role: str, costmodel: CostModel | None = None,
                 workload_stats: WorkloadStats | str = "conv", objective: str | None = None,
                 *, max_batch: int = DEFAULT_MAX_BATCH) -> ReplicaPlan:
    """Plan one replica of ``role`` on the named devices of ``cluster`` (one-off; see
    :class:`ReplicaPlanner` to plan many with caching).

    ``objective`` overrides the role's DP objective (``"bottleneck"`` or ``"latency"``); by
    default prefill and both use the bottleneck, a decoder the latency (its trip time).
    """
    planner = ReplicaPlanner(cluster, costmodel, workload_stats, max_batch=max_batch)
    if objective is None:
        return planner.plan(device_names, role)
    if objective not in ("bottleneck", "latency"):
        raise ValueError(f"unknown objective {objective!r}; use 'bottleneck' or 'latency'")
    order = list(planner.indices(device_names))
    idx = np.array(order, dtype=np.intp)
    for batch in planner._batch_candidates(idx, check_role(role)):
        try:
            part = partition(**planner.dp_inputs(idx, role, batch).kwargs(), objective=objective)
        except InfeasiblePlan:
            continue
        found = SolvedSplit(part.stages, batch, planner.time_split(idx, role, batch, part.stages, part.exact))
        return planner._replica(order, role, found, "r0")
    return planner.plan(device_names, role)  # raises with the figures
