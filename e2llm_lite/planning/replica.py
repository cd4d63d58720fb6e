"""One replica, planned: the model-level wrapper around the DP (:mod:`e2llm_lite.planning.dp`).

A **replica** is a group of devices that together hold one whole copy of the model, split into
contiguous layer ranges (a pipeline), with one **role**:

* ``"prefill"`` (E2LLM's PREFILL, Splitwise's prompt machine): runs prompts only. Prompts are
  pipelined — a new prompt enters the first stage as soon as it is free — so the replica's
  **period** (seconds between two prompts it can start) is its slowest stage's time.
* ``"decoder"`` (E2LLM's DECODER, Splitwise's token machine): generates tokens for up to ``B``
  sequences at once (continuous batching). The batch of ``B`` circulates through the stages; one
  trip emits one token for every sequence, so the replica emits ``B / trip`` tokens per second
  (micro-batching several batches through the pipeline at once is *not* modelled).
* ``"both"`` (colocated, no role separation): prompts and the decode batch share the devices.

What the planner assumes (all units: ms, tokens, bytes; every number below is documented here
and nowhere else)
--------------------------------------------------------------------------------------------------
From the workload (:class:`WorkloadStats`): mean prompt ``Tm`` and output ``Om`` tokens, the
**design prompt** ``P`` = the 90th percentile prompt (the prompt a replica reserves memory for;
longer ones wait or are refused by the runtime's memory accounting), and the **effective prompt**
``Te``: the length whose per-layer prefill time equals the *mean* prefill time over the
distribution (``p(Te) = E[p(T)]`` with ``p(T) = p0 + p1 T + p2 T^2`` the cost model's form; the
quadratic attention term makes the mean time longer than the time of the mean prompt).

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
stage) times come from ``end_extras_ms`` in the same way. Transfers (``comm[a, b]``):
``latency_ms + bytes * 8 / bandwidth`` with the hidden state's bytes ``tokens * 576 * 4``,
tokens = ``round(Tm)`` for a prefill, ``B`` for a decode step ("both": prefill + ``Om / B`` x decode).

Memory: a stage on device i holding layers ``[s, e)`` needs (:func:`stage_need_bytes`)::

    weights(s, e)                         (layers + embedding if s == 0 + norm + lm_head copy if e == 30)
    + kv_tokens * (e - s) * 1536          (KV reserve: K and V, 3 kv-heads x 64 x 4 B, per token per layer)
    + act_tokens * 4 * (2*576 + 3*1536)   (activations of the largest step, as the runtime accounts them)
    + logit_rows * 49152 * 4  if e == 30  (the logits rows of the last stage)

and this must be ``<= memory_mib * 2^20``. The reserve depends on the role:

=========  ==============================  ==============  ==========
role       kv_tokens (per layer)           act_tokens      logit_rows
=========  ==============================  ==============  ==========
prefill    ``P``                           ``P``           1
decoder    ``B * ceil(Tm + Om)``           ``B``           ``B``
both       ``B * ceil(Tm + Om) + P``       ``max(P, B)``   ``B``
=========  ==============================  ==============  ==========

(a prefill stage holds the KV of the one prompt it is working on, handed off layer by layer as
Splitwise does; a decoder keeps the KV of its ``B`` sequences at their full mean length.) For the
DP this becomes ``layer_mem[j] = layer_bytes + kv_tokens * 1536`` (the KV scales with the number
of layers a stage holds), ``device_mem[i] = memory_mib * 2^20 - activations``,
``extra_first_mem = embedding bytes`` and ``extra_last_mem = lm_head copy + norm + logits``.

Decode batch ``B`` (decoder and both): ``B_max`` = the largest ``B <= max_batch`` (default 32)
for which some split fits the group's memory (:meth:`ReplicaPlanner.fits_memory`, exact and
without a DP because all layers are the same size). The candidates are the powers of two below
``B_max`` and ``B_max``, in increasing order; the DP is run for each, and its split is then *filled*: its
``B`` is raised while every stage of that same split still fits (at most ``max_batch``; the DP may
have left devices out, so the split can hold more than the candidate), and the candidates up to
the filled ``B`` are skipped (every device's per-layer time scales by the same factor with ``B``,
so the DP would keep that split there, up to the small change in transfer times). The (split, ``B``) kept is the
one with the highest throughput — tokens/s ``B / trip`` for a decoder, requests/s
``1 / (period + Om * trip / B)`` for "both" (the largest batch is not always best: it may need
more, slower devices in the pipeline). No ``B >= 1`` fits: the group cannot be a replica of that role
(:class:`~e2llm_lite.errors.InfeasiblePlan`).

Figures of a replica (:class:`ReplicaPlan`), seconds:
``prefill_period_s`` = the split's slowest prefill stage (its prefill service time),
``prefill_latency_s`` = the sum of its prefill stages (one prompt's trip: part of the TTFT),
``decode_step_s`` = the sum of its decode stages at batch ``B`` (one decode trip = the time
between two tokens of a sequence). A "both" replica is split by the DP on the per-request work
(a heuristic: neither max nor sum of it is exactly what the evaluator uses), then both phases are
timed on that split.

Caching: the DP is run once per (device group, role): results are cached by a *signature* — the
role, the (prefill speed, decode speed, memory) of the group's devices in a canonical order (by
their own figures, then by the figures of and links to the others) and the links between them in
that order (latency, bandwidth) — so two groups of identical devices joined by identical links
(e.g. on two sites with the same LAN) share one DP run; the result is mapped back to each group's
own devices.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from ..costmodel import CostModel
from ..errors import ConfigError, InfeasiblePlan
from ..model import ANATOMY, Anatomy
from ..workload import LengthDist, Workload
from .dp import MAX_EXACT_DEVICES, partition
from .dp_batched import partition_arrays

__all__ = [
    "DEFAULT_MAX_BATCH",
    "ROLES",
    "ReplicaPlan",
    "ReplicaPlanner",
    "WorkloadStats",
    "plan_replica",
    "stage_need_bytes",
    "workload_stats",
]

MIB = 2 ** 20

#: The roles a replica can have.
ROLES = ("prefill", "decoder", "both")

#: Largest decode batch a decoder (or colocated) replica is planned for.
DEFAULT_MAX_BATCH = 32

_STATS_SAMPLES = 50_000  # draws used to estimate E[p(T)] and the SCV of a lognormal's prefill time
_STATS_SEED = 20240521


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
    return role


# --------------------------------------------------------------------------------------------
# workload figures the planner needs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadStats:
    """What the planner reads from a workload (tokens; dimensionless SCVs).

    ``mean_prompt``/``mean_output``: mean tokens; ``design_prompt``: the 90th-percentile prompt
    (memory reserve of a prefill stage); ``prefill_tokens``: the effective prompt ``Te`` with
    ``p(Te) = E[p(T)]`` (see the module docstring); ``prefill_scv``: squared coefficient of
    variation of one prompt's prefill time (Var / mean^2 of ``p(T)``), the service-time SCV of the
    queueing formula; ``arrival_scv``: the inter-arrival SCV (1 Poisson, ``cv^2`` bursty, measured
    for a trace replay). ``name``: where it came from (``"code"``, ``"conv"``, a file name).
    """

    name: str
    mean_prompt: float
    mean_output: float
    design_prompt: int
    prefill_tokens: int
    prefill_scv: float = 1.0
    arrival_scv: float = 1.0

    def __post_init__(self):
        for f in ("mean_prompt", "mean_output", "prefill_scv", "arrival_scv"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"workload {f} must be a finite number >= 0, got {v!r}")
        if self.mean_prompt < 1 or self.mean_output < 1:
            raise ConfigError("workload mean prompt and output must be >= 1 token")
        for f in ("design_prompt", "prefill_tokens"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"workload {f} must be a whole number >= 1, got {v!r}")

    @property
    def context_tokens(self) -> int:
        """``ceil(Tm + Om)``: KV tokens a decoding sequence reserves (its mean full length)."""
        return int(math.ceil(self.mean_prompt + self.mean_output))

    @property
    def decode_context(self) -> int:
        """``round(Tm + Om / 2)``: a sequence's mean context while it decodes."""
        return int(round(self.mean_prompt + self.mean_output / 2))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WorkloadStats":
        if not isinstance(d, dict):
            raise ConfigError(f"workload must be a JSON object, got {type(d).__name__}")
        keys = {"name", "mean_prompt", "mean_output", "design_prompt", "prefill_tokens",
                "prefill_scv", "arrival_scv"}
        if missing := sorted({"name", "mean_prompt", "mean_output", "design_prompt",
                              "prefill_tokens"} - d.keys()):
            raise ConfigError(f"workload is missing {', '.join(map(repr, missing))}")
        return cls(**{k: v for k, v in d.items() if k in keys})


def _effective_prompt(prompts: np.ndarray, coef, limit: int) -> tuple[int, float]:
    """(Te, SCV of p(T)) for the prefill-layer form ``p0 + p1 T + p2 T^2``."""
    p0, p1, p2 = (float(c) for c in coef)
    t = prompts.astype(float)
    times = p0 + p1 * t + p2 * t * t
    mean = float(times.mean())
    scv = float(times.var() / mean ** 2) if mean > 0 else 0.0
    if p2 > 0:
        te = (-p1 + math.sqrt(p1 * p1 - 4 * p2 * (p0 - mean))) / (2 * p2)
    elif p1 > 0:
        te = (mean - p0) / p1
    else:
        te = float(t.mean())
    return int(min(max(1, round(te)), limit)), scv


def workload_stats(workload, costmodel: CostModel | None = None, name: str | None = None) -> WorkloadStats:
    """The :class:`WorkloadStats` of a :class:`~e2llm_lite.workload.Workload`, a
    :class:`~e2llm_lite.workload.LengthDist`, or a profile name (``"code"``/``"conv"``).

    Means and the 90th percentile come from ``LengthDist.stats()`` (what the workload serves);
    ``Te`` and the prefill-time SCV from the shaped pairs (empirical) or 50,000 fixed-seed draws
    (lognormal); the arrival SCV from the workload's arrival process.
    """

    cm = costmodel or CostModel.load()
    arrival_scv = 1.0
    if isinstance(workload, str):
        workload = LengthDist.profile(workload)
    if isinstance(workload, Workload):
        lengths = workload.lengths
        if workload.arrival == "bursty":
            arrival_scv = float(workload.cv) ** 2
        elif workload.arrival == "trace" and workload.trace is not None and len(workload.trace) > 2:
            gaps = np.diff(workload.trace.arrival_s)
            if gaps.mean() > 0:
                arrival_scv = float(gaps.var() / gaps.mean() ** 2)
    elif isinstance(workload, LengthDist):
        lengths = workload
    else:
        raise TypeError(f"workload_stats needs a Workload, a LengthDist or a profile name, "
                        f"got {type(workload).__name__}")
    st = lengths.stats()
    if lengths.kind == "empirical":
        prompts, _ = lengths.shape(lengths.prompts, lengths.outputs)
    else:
        prompts, _ = lengths.sample(_STATS_SAMPLES, _STATS_SEED)
    limit = cm.anatomy.max_positions - 1
    te, scv = _effective_prompt(prompts, cm.coef["prefill_layer"], limit)
    return WorkloadStats(
        name=name or lengths.name,
        mean_prompt=float(st["prompt_mean"]),
        mean_output=float(st["output_mean"]),
        design_prompt=int(min(max(1, math.ceil(st["prompt_p90"])), limit)),
        prefill_tokens=te,
        prefill_scv=scv,
        arrival_scv=arrival_scv,
    )


# --------------------------------------------------------------------------------------------
# memory of a stage
# --------------------------------------------------------------------------------------------


def activation_bytes(tokens: int, anatomy: Anatomy = ANATOMY) -> int:
    """Activations a stage reserves for a step of ``tokens`` tokens: ``tokens * 4 * (2h + 3i)``
    (residual in and out, MLP gate / up / product; the runtime's memory accounting uses the same)."""
    a = anatomy
    return int(tokens) * a.elem_bytes * (2 * a.hidden + 3 * a.intermediate)


def stage_need_bytes(start: int, end: int, kv_tokens: int, act_tokens: int, logit_rows: int,
                     anatomy: Anatomy = ANATOMY) -> int:
    """Bytes a stage holding layers ``[start, end)`` needs with a replica's reserve (module docstring)."""
    a = anatomy
    need = a.stage_weight_bytes(start, end)
    need += int(kv_tokens) * (end - start) * a.kv_bytes_per_token_layer
    need += activation_bytes(act_tokens, a)
    if end == a.n_layers:
        need += int(logit_rows) * a.vocab * a.elem_bytes
    return need


def reserve(role: str, stats: WorkloadStats, batch: int) -> tuple[int, int, int]:
    """``(kv_tokens, act_tokens, logit_rows)`` of a replica of ``role`` at decode batch ``batch``."""
    P, ctx = stats.design_prompt, stats.context_tokens
    if role == "prefill":
        return P, P, 1
    if role == "decoder":
        return batch * ctx, batch, batch
    return batch * ctx + P, max(P, batch), batch


# --------------------------------------------------------------------------------------------
# the plan of one replica
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaPlan:
    """One replica: its devices in pipeline order with their layer ranges, its role and figures.

    ``stages``: ``((device name, start, end), ...)`` (``end`` exclusive, covering 0..30).
    ``batch``: decode batch B (1 for a prefill replica). ``kv_tokens``, ``act_tokens``,
    ``logit_rows``: the memory reserve it was planned with (module docstring).
    ``prefill_period_s``, ``prefill_latency_s``: slowest prefill stage / sum of prefill stages (s);
    ``decode_step_s``: one decode trip at batch B (s; None for a prefill replica).
    ``prefill_stage_ms`` / ``decode_stage_ms``: per-stage times (ms) of each phase on this split.
    ``exact``: the DP was exact (False above 12 devices). ``name``: e.g. ``"r0"``.
    """

    role: str
    stages: tuple[tuple[str, int, int], ...]
    batch: int
    kv_tokens: int
    act_tokens: int
    logit_rows: int
    prefill_period_s: float | None
    prefill_latency_s: float | None
    decode_step_s: float | None
    prefill_stage_ms: tuple[float, ...] | None = None
    decode_stage_ms: tuple[float, ...] | None = None
    exact: bool = True
    name: str = "r0"

    @property
    def devices(self) -> tuple[str, ...]:
        """Device names in pipeline order."""
        return tuple(d for d, _, _ in self.stages)

    @property
    def prefill_rate(self) -> float:
        """Prompts per second it can start (1 / period); 0 for a decoder."""
        if self.role == "decoder" or not self.prefill_period_s:
            return 0.0
        return 1.0 / self.prefill_period_s

    @property
    def tokens_per_s(self) -> float:
        """Decode tokens per second (B / trip); 0 for a prefill replica."""
        if self.role == "prefill" or not self.decode_step_s:
            return 0.0
        return self.batch / self.decode_step_s

    def with_name(self, name: str) -> "ReplicaPlan":
        return _replace(self, name=name)

    def with_role(self, role: str) -> "ReplicaPlan":
        return _replace(self, role=_check_role(role))

    def to_dict(self) -> dict:
        """The JSON form (exact floats: a plan read back is the same plan)."""
        def tup(x):
            return None if x is None else list(x)

        return {
            "name": self.name, "role": self.role,
            "stages": [{"device": d, "start": s, "end": e} for d, s, e in self.stages],
            "batch": self.batch, "kv_tokens": self.kv_tokens, "act_tokens": self.act_tokens,
            "logit_rows": self.logit_rows, "exact": self.exact,
            "predicted": {
                "prefill_period_s": self.prefill_period_s,
                "prefill_latency_s": self.prefill_latency_s,
                "decode_step_s": self.decode_step_s,
                "prefill_rate_rps": self.prefill_rate, "tokens_per_s": self.tokens_per_s,
                "prefill_stage_ms": tup(self.prefill_stage_ms),
                "decode_stage_ms": tup(self.decode_stage_ms),
            },
        }

    @classmethod
    def from_dict(cls, d, what: str = "replica") -> "ReplicaPlan":
        if not isinstance(d, dict):
            raise ConfigError(f"{what} must be a JSON object, got {type(d).__name__}")
        for k in ("role", "stages", "batch", "kv_tokens", "act_tokens", "logit_rows"):
            if k not in d:
                raise ConfigError(f"{what} is missing {k!r}")
        if d["role"] not in ROLES:
            raise ConfigError(f"{what}: role must be one of {', '.join(ROLES)}, got {d['role']!r}")
        if not isinstance(d["stages"], list) or not d["stages"]:
            raise ConfigError(f"{what}: stages must be a non-empty JSON list")
        stages = []
        for i, s in enumerate(d["stages"]):
            if not isinstance(s, dict) or not {"device", "start", "end"} <= s.keys():
                raise ConfigError(f"{what}: stages[{i}] must be an object with device, start, end")
            if not isinstance(s["device"], str) or not all(
                    isinstance(s[k], int) and not isinstance(s[k], bool) for k in ("start", "end")):
                raise ConfigError(f"{what}: stages[{i}] needs a device name and integer start/end")
            stages.append((s["device"], s["start"], s["end"]))
        for k in ("batch", "kv_tokens", "act_tokens", "logit_rows"):
            if isinstance(d[k], bool) or not isinstance(d[k], int) or d[k] < 0:
                raise ConfigError(f"{what}: {k} must be a whole number >= 0, got {d[k]!r}")
        p = d.get("predicted") or {}

        def num(k):
            v = p.get(k)
            return None if v is None else float(v)

        def tup(k):
            v = p.get(k)
            return None if v is None else tuple(float(x) for x in v)

        return cls(role=d["role"], stages=tuple(stages), batch=d["batch"], kv_tokens=d["kv_tokens"],
                   act_tokens=d["act_tokens"], logit_rows=d["logit_rows"],
                   prefill_period_s=num("prefill_period_s"), prefill_latency_s=num("prefill_latency_s"),
                   decode_step_s=num("decode_step_s"), prefill_stage_ms=tup("prefill_stage_ms"),
                   decode_stage_ms=tup("decode_stage_ms"), exact=bool(d.get("exact", True)),
                   name=str(d.get("name", "r0")))


def _replace(rp: ReplicaPlan, **kw) -> ReplicaPlan:
    from dataclasses import replace

    return replace(rp, **kw)


# --------------------------------------------------------------------------------------------
# the planner: cost arrays per (group, role), cached
# --------------------------------------------------------------------------------------------


@dataclass
class _Cached:
    """A cached DP result in positions of the signature's sorted order (or None = infeasible)."""

    stages: tuple[tuple[int, int, int], ...]
    batch: int
    figures: tuple  # (period_s, latency_s, step_s, prefill_stage_ms, decode_stage_ms, exact)


class ReplicaPlanner:
    """Plans replicas of one cluster for one workload, with caches; see the module docstring.

    ``plan(devices, role)`` returns a :class:`ReplicaPlan` or raises InfeasiblePlan;
    ``try_plan`` returns None instead. ``devices``: names or indices of the cluster's devices.
    ``dp_runs`` counts DP calls (cache misses), for benchmarks.
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
        self.anatomy = self.cm.anatomy
        a = self.anatomy
        devs = cluster.devices
        n = len(devs)
        self.names = [d.name for d in devs]
        self.index = {d.name: i for i, d in enumerate(devs)}
        self.speed_p = np.array([d.prefill_speed for d in devs], float)
        self.speed_d = np.array([d.decode_speed for d in devs], float)
        self.mem = np.array([d.memory_mib * MIB for d in devs], float)
        self.sites = [d.site for d in devs]
        lat = np.zeros((n, n))
        inv_bw = np.zeros((n, n))  # ms per byte
        for i in range(n):
            for j in range(n):
                if i != j:
                    link = cluster.link(i, j)
                    lat[i, j] = link.latency_ms
                    inv_bw[i, j] = 8.0 / (link.bandwidth_mbps * 1e6) * 1e3
        self.lat_ms, self.ms_per_byte = lat, inv_bw
        self._spec = [(float(d.prefill_speed), float(d.decode_speed), float(d.memory_mib))
                      for d in devs]
        self._link = [[(float(lat[i, j]), float(inv_bw[i, j])) for j in range(n)] for i in range(n)]
        st = self.stats
        # host ms per layer / end extras, prefill at Te (comm at Tm)
        self._pre_layer = self.cm.layer_ms("prefill", tokens=st.prefill_tokens)
        self._pre_embed = self.cm.embed_ms("prefill", tokens=st.prefill_tokens)
        self._pre_head = self.cm.head_ms("prefill", tokens=st.prefill_tokens)
        self._pre_act = self.cm.hidden_state_bytes(max(1, int(round(st.mean_prompt))))
        self._dec_cache: dict[int, tuple[float, float, float]] = {}
        self._sig_cache: dict = {}
        self._caps: dict = {}
        self._group_cache: dict = {}
        self.dp_runs = 0
        self.weights = a.n_layers * a.layer_bytes + 2 * a.embed_bytes + a.norm_bytes

    # ---- cost pieces ---------------------------------------------------------------------
    def _dec(self, batch: int) -> tuple[float, float, float]:
        """Host ms (layer, embed, head) of a decode step at ``batch`` and the mean context."""
        if batch not in self._dec_cache:
            ctx = min(self.stats.decode_context, self.anatomy.max_positions - 1)
            kw = dict(batch=batch, context=ctx)
            self._dec_cache[batch] = (self.cm.layer_ms("decode", **kw), self.cm.embed_ms("decode", **kw),
                                      self.cm.head_ms("decode", **kw))
        return self._dec_cache[batch]

    def _phase_arrays(self, idx: np.ndarray, phase: str, batch: int):
        """(compute (n, L), extra_first_ms (n,), extra_last_ms (n,), comm (n, n)) for one phase."""
        L = self.anatomy.n_layers
        if phase == "prefill":
            layer, emb, head = self._pre_layer, self._pre_embed, self._pre_head
            speed, nbytes = self.speed_p[idx], self._pre_act
        else:
            layer, emb, head = self._dec(batch)
            speed, nbytes = self.speed_d[idx], self.cm.hidden_state_bytes(batch)
        per = layer / speed
        comm = self.lat_ms[np.ix_(idx, idx)] + nbytes * self.ms_per_byte[np.ix_(idx, idx)]
        return np.repeat(per[:, None], L, axis=1), emb / speed, head / speed, comm

    def _arrays(self, idx: np.ndarray, role: str, batch: int):
        if role == "prefill":
            return self._phase_arrays(idx, "prefill", 1)
        if role == "decoder":
            return self._phase_arrays(idx, "decode", batch)
        w = self.stats.mean_output / batch
        cp, fp, lp, mp = self._phase_arrays(idx, "prefill", 1)
        cd, fd, ld, md = self._phase_arrays(idx, "decode", batch)
        return cp + w * cd, fp + w * fd, lp + w * ld, mp + w * md

    def _memory(self, idx: np.ndarray, role: str, batch: int):
        a = self.anatomy
        kv, act, rows = reserve(role, self.stats, batch)
        layer_mem = np.full(a.n_layers, a.layer_bytes + kv * a.kv_bytes_per_token_layer, float)
        device_mem = np.maximum(self.mem[idx] - activation_bytes(act, a), 0.0)
        last = a.embed_bytes + a.norm_bytes + rows * a.vocab * a.elem_bytes
        return layer_mem, device_mem, float(a.embed_bytes), float(last), (kv, act, rows)

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
        b_max = lo
        out, p = [], 1
        while p < b_max:
            out.append(p)
            p <<= 1
        return out + [b_max] if b_max >= 1 else []

    def fits_memory(self, idx, role: str, batch: int = 1) -> bool:
        """Exactly whether *some* device order and contiguous split of the layers fits the
        group's memory for ``role`` at ``batch`` (no DP needed: every layer needs the same bytes
        ``m``, so device i can hold ``floor(M_i / m)`` layers in the middle of the pipeline,
        ``floor((M_i - first extra) / m)`` as the first stage and ``floor((M_i - last extra) / m)``
        as the last; the split fits iff for the best choice of first and last device these
        capacities add up to the number of layers, or one device holds everything)."""
        if batch == 1 and isinstance(idx, tuple):
            return self._fits_one(idx, role)
        idx = np.asarray(idx, dtype=np.intp)
        if len(idx) == 0:
            return False
        layer_mem, device_mem, first_mem, last_mem, _ = self._memory(idx, role, batch)
        m, L = float(layer_mem[0]), self.anatomy.n_layers
        if np.any(np.floor((device_mem - first_mem - last_mem) / m) >= L):
            return True
        if len(idx) < 2:
            return False
        cap = np.floor(device_mem / m)
        gain_f = np.where(np.floor((device_mem - first_mem) / m) >= 1,
                          np.floor((device_mem - first_mem) / m) - cap, -np.inf)
        gain_l = np.where(np.floor((device_mem - last_mem) / m) >= 1,
                          np.floor((device_mem - last_mem) / m) - cap, -np.inf)
        of, ol = np.argsort(-gain_f, kind="stable")[:2], np.argsort(-gain_l, kind="stable")[:2]
        best = max((gain_f[f] + gain_l[l] for f in of for l in ol if f != l), default=-np.inf)
        return bool(cap.sum() + best >= L)

    def _fits_one(self, group: tuple, role: str) -> bool:
        """:meth:`fits_memory` at batch 1 for a tuple of device indices, from per-device
        capacities computed once per role (the GA asks this tens of thousands of times)."""
        if role not in self._caps:
            every = np.arange(len(self.names))
            layer_mem, device_mem, first_mem, last_mem, _ = self._memory(every, role, 1)
            m = float(layer_mem[0])
            cap = np.floor(device_mem / m)
            cf, cl = np.floor((device_mem - first_mem) / m), np.floor((device_mem - last_mem) / m)
            alone = np.floor((device_mem - first_mem - last_mem) / m)
            self._caps[role] = (cap.astype(int).tolist(),
                                [c - k if c >= 1 else None for c, k in zip(cf.tolist(), cap.tolist())],
                                [c - k if c >= 1 else None for c, k in zip(cl.tolist(), cap.tolist())],
                                alone.tolist())
        cap, gf, gl, alone = self._caps[role]
        L = self.anatomy.n_layers
        if not group:
            return False
        if any(alone[i] >= L for i in group):
            return True
        total = sum(cap[i] for i in group)
        best = None
        for f in group:
            if gf[f] is None:
                continue
            for l in group:
                if l != f and gl[l] is not None and (best is None or gf[f] + gl[l] > best):
                    best = gf[f] + gl[l]
        return best is not None and total + best >= L

    # ---- signatures ------------------------------------------------------------------------
    def _signature(self, group: Sequence[int], role: str):
        """(key, devices in the key's order). Equal keys = identical DP problems."""
        spec, link = self._spec, self._link
        profile = {i: (spec[i], tuple(sorted((spec[j], link[i][j]) for j in group if j != i)))
                   for i in group}
        order = sorted(group, key=lambda i: (profile[i], i))
        links = tuple(link[a][b] for a in order for b in order if a != b)
        return (role, tuple(spec[i] for i in order), links), order

    def _solve(self, order: list[int], role: str) -> _Cached | None:
        idx = np.array(order, dtype=np.intp)
        objective = "bottleneck" if role in ("prefill", "both") else "latency"
        best, best_value, filled = None, -math.inf, 0
        for batch in self._batch_candidates(idx, role):
            if batch <= filled:
                continue  # the last split found already holds this batch (module docstring)
            compute, first_ms, last_ms, comm = self._arrays(idx, role, batch)
            layer_mem, device_mem, first_mem, last_mem, _ = self._memory(idx, role, batch)
            self.dp_runs += 1
            try:
                part = partition_arrays(compute, layer_mem, device_mem, comm, objective,
                                        first_mem, last_mem, first_ms, last_ms,
                                        max_exact_devices=self.max_exact_devices)
            except InfeasiblePlan:  # only the heuristic above 12 devices can miss a fitting split
                continue
            batch = filled = self._fill(idx, role, batch, part.stages)
            figures = self._figures(idx, role, batch, part)
            value = self._batch_value(role, batch, figures)
            if value > best_value * (1 + 1e-12):
                best, best_value = _Cached(part.stages, batch, figures), value
        return best

    def _fill(self, idx: np.ndarray, role: str, batch: int, stages) -> int:
        """The largest batch (<= max_batch) that the split ``stages`` still holds: the DP's split
        may use fewer devices than the group, whose own room allows more sequences."""
        if role == "prefill":
            return batch
        while batch < self.max_batch:
            kv, act, rows = reserve(role, self.stats, batch + 1)
            if any(stage_need_bytes(s, e, kv, act, rows, self.anatomy) > self.mem[idx[d]]
                   for d, s, e in stages):
                break
            batch += 1
        return batch

    def _batch_value(self, role: str, batch: int, figures) -> float:
        """What the batch choice maximises: tokens/s (decoder), requests/s alone (both)."""
        period, _, step, *_ = figures
        if role == "prefill":
            return 1.0 / period
        if role == "decoder":
            return batch / step
        return 1.0 / (period + self.stats.mean_output * step / batch)

    def _figures(self, idx, role, batch, part):
        """Time both phases of a split (s) and the per-stage ms."""
        stages = part.stages
        pre = dec = None
        if role in ("prefill", "both"):
            pre = _stage_times(stages, *self._phase_arrays(idx, "prefill", 1))
        if role in ("decoder", "both"):
            dec = _stage_times(stages, *self._phase_arrays(idx, "decode", batch))
        return (None if pre is None else max(pre) / 1e3,
                None if pre is None else sum(pre) / 1e3,
                None if dec is None else sum(dec) / 1e3,
                None if pre is None else tuple(pre),
                None if dec is None else tuple(dec),
                part.exact)

    # ---- public ----------------------------------------------------------------------------
    def _indices(self, devices: Iterable) -> tuple[int, ...]:
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
        _check_role(role)
        return self._try(self._indices(devices), role, name)

    def _try(self, group: tuple, role: str, name: str = "r0") -> ReplicaPlan | None:
        """:meth:`try_plan` for a sorted tuple of valid device indices (no checks)."""
        gkey = (group, role)
        if gkey in self._group_cache:
            rp = self._group_cache[gkey]
        else:
            key, order = self._signature(group, role)
            if key not in self._sig_cache:
                self._sig_cache[key] = self._solve(order, role)
            cached = self._sig_cache[key]
            rp = None
            if cached is not None:
                kv, act, rows = reserve(role, self.stats, cached.batch)
                period, lat, step, pre_ms, dec_ms, exact = cached.figures
                rp = ReplicaPlan(
                    role=role, stages=tuple((self.names[order[d]], s, e) for d, s, e in cached.stages),
                    batch=cached.batch, kv_tokens=kv, act_tokens=act, logit_rows=rows,
                    prefill_period_s=period, prefill_latency_s=lat, decode_step_s=step,
                    prefill_stage_ms=pre_ms, decode_stage_ms=dec_ms, exact=exact)
            self._group_cache[gkey] = rp
        return None if rp is None else (rp if rp.name == name else rp.with_name(name))

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
        kv, act, rows = reserve(replica.role, self.stats, replica.batch)
        if all(stage_need_bytes(s, e, kv, act, rows, self.anatomy) <= self.mem[idx[k]]
               for k, s, e in stages):
            batch = replica.batch  # its own batch still fits: keep it
        else:
            batch = self._fill(idx, replica.role, 1, stages)

        class _Split:  # what _figures reads
            pass

        part = _Split()
        part.stages, part.exact = stages, replica.exact
        period, lat, step, pre_ms, dec_ms, _ = self._figures(idx, replica.role, batch, part)
        kv, act, rows = reserve(replica.role, self.stats, batch)
        return _replace(replica, batch=batch, kv_tokens=kv, act_tokens=act, logit_rows=rows,
                        prefill_period_s=period, prefill_latency_s=lat, decode_step_s=step,
                        prefill_stage_ms=pre_ms, decode_stage_ms=dec_ms)

    def can_serve(self, devices: Iterable, role: str) -> bool:
        """True when the group can hold the model (with its reserve) for ``role``."""
        return self.try_plan(devices, role) is not None

    def plan(self, devices: Iterable, role: str, name: str = "r0") -> ReplicaPlan:
        """Like :meth:`try_plan` but raises InfeasiblePlan with the memory figures."""
        rp = self.try_plan(devices, role, name)
        if rp is None:
            group = self._indices(devices)
            kv, act, rows = reserve(role, self.stats, 1)
            a = self.anatomy
            need = (self.weights + kv * a.n_layers * a.kv_bytes_per_token_layer
                    + rows * a.vocab * a.elem_bytes)
            have = float(self.mem[list(group)].sum())
            raise InfeasiblePlan(
                f"devices {', '.join(self.names[i] for i in group)} cannot hold the model as a "
                f"{role} replica: they have {have / MIB:.1f} MiB, a {role} replica needs at least "
                f"{need / MIB:.1f} MiB (weights {self.weights / MIB:.1f} MiB + KV and activation "
                f"reserve for {self.stats.design_prompt if role != 'decoder' else self.stats.context_tokens}"
                f"-token sequences) in contiguous layer ranges")
        return rp


def _stage_times(stages, compute, first_ms, last_ms, comm) -> list[float]:
    """ms of each stage (compute + embedding / head + transfer to the next), as dp.py defines it."""
    out = []
    for i, (d, s, e) in enumerate(stages):
        t = float(compute[d, s:e].sum())
        if i == 0:
            t += float(first_ms[d])
        if i == len(stages) - 1:
            t += float(last_ms[d])
        else:
            t += float(comm[d, stages[i + 1][0]])
        out.append(t)
    return out


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
    group = planner._indices(device_names)
    order = list(group)
    idx = np.array(order, dtype=np.intp)
    for batch in planner._batch_candidates(idx, _check_role(role)):
        compute, first_ms, last_ms, comm = planner._arrays(idx, role, batch)
        layer_mem, device_mem, first_mem, last_mem, (kv, act, rows) = planner._memory(idx, role, batch)
        try:
            part = partition(compute, layer_mem, device_mem, comm, objective,
                             extra_first_mem=first_mem, extra_last_mem=last_mem,
                             extra_first_ms=first_ms, extra_last_ms=last_ms)
        except InfeasiblePlan:
            continue
        period, lat, step, pre_ms, dec_ms, exact = planner._figures(idx, role, batch, part)
        return ReplicaPlan(role=role, stages=tuple((planner.names[order[d]], s, e) for d, s, e in part.stages),
                           batch=batch, kv_tokens=kv, act_tokens=act, logit_rows=rows,
                           prefill_period_s=period, prefill_latency_s=lat, decode_step_s=step,
                           prefill_stage_ms=pre_ms, decode_stage_ms=dec_ms, exact=exact)
    return planner.plan(device_names, role)  # raises with the figures
