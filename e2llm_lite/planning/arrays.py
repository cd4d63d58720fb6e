"""From devices and the cost model to the plain arrays of :func:`e2llm_lite.planning.dp.partition`.

:mod:`e2llm_lite.planning.dp` works on plain arrays (ms, bytes) so it can be read and tested on its
own. This module is the **one builder** of those arrays for real devices: the replica planner
(:class:`~e2llm_lite.planning.replica_planner.ReplicaPlanner`) and notebook 02 (:func:`dp_arrays`)
call the same two functions, only with different shapes and memory reserves.

What goes into the arrays (units: ms of device time, bytes)
-----------------------------------------------------------
:func:`phase_arrays` — time, for one phase:

* ``compute[i, j]`` = ms of decoder layer ``j`` on device ``i``: host ms per layer (the cost
  model's ``layer_ms``) ÷ the device's speed for that phase;
* ``extra_first_ms[i]`` / ``extra_last_ms[i]`` = the embedding / final norm + lm_head on device
  ``i``, likewise;
* ``comm[a, b]`` = ms to send the hidden state between two stages over the link from ``a`` to
  ``b``: :func:`~e2llm_lite.devices.transfer_ms` of ``tokens * 576 * 4`` B (``tokens`` = the
  prompt for a prefill, the batch for a decode step); 0 on the diagonal.

:func:`memory_arrays` — memory, for a reserve of ``kv_tokens`` tokens of KV cache and a step of
``act_tokens`` tokens producing ``logit_rows`` logits rows (:mod:`e2llm_lite.memory`):

* ``layer_mem[j]`` = the layer's fp32 weights (14,160,384 B = 13.5 MiB) + its KV cache for
  ``kv_tokens`` tokens (1536 B per token per layer);
* ``device_mem[i]`` = the device's budget ``memory_mib * 2**20`` − the step's working memory
  (:func:`~e2llm_lite.memory.working_bytes` of ``act_tokens`` tokens; never below 0);
* ``extra_first_mem`` = the embedding (108 MiB); ``extra_last_mem`` = the final norm + the last
  stage's own copy of the tied lm_head (108 MiB) + ``logit_rows`` rows of logits. A single stage
  holding everything carries both, like :meth:`Anatomy.stage_weight_bytes`.

Together these are exactly :func:`e2llm_lite.memory.stage_need_bytes`: a stage fits the DP's
``device_mem`` iff it fits the device's budget with that reserve.

How notebook 02's arrays differ from the planner's
--------------------------------------------------
Same functions, other arguments. :func:`dp_arrays` (notebook 02) times one request of the given
shape and reserves the KV that request leaves behind (``kv_tokens`` = ``tokens`` for a prefill,
``batch * (context + 1)`` for a decode step), with no working memory and no logits rows. The
planner times a prefill at the workload's effective prompt ``Te`` (hand-offs at the mean prompt),
a decode step at its batch ``B`` and mean context, and reserves its role's memory
(:func:`~e2llm_lite.planning.reserve.reserve`: the 90th-percentile prompt, ``B`` full sequences,
the working memory and the logits rows). :meth:`ReplicaPlanner.dp_inputs` shows the planner's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..costmodel import Phase
from ..devices import transfer_ms
from ..memory import MIB, working_bytes
from ..model import Anatomy

__all__ = ["MIB", "DPArrays", "DeviceTable", "dp_arrays", "memory_arrays", "phase_arrays",
           "replace_device"]


@dataclass(frozen=True)
class DeviceTable:
    """A cluster's devices as arrays, in cluster order: names, speeds per phase (relative to one
    host thread), memory budgets (bytes), sites, and the link matrices ``latency_ms[a, b]`` and
    ``bandwidth_mbps[a, b]`` (a device to itself: 0 ms, infinite bandwidth)."""

    names: tuple[str, ...]
    prefill_speed: np.ndarray
    decode_speed: np.ndarray
    memory_bytes: np.ndarray
    sites: tuple[str, ...]
    latency_ms: np.ndarray
    bandwidth_mbps: np.ndarray

    @classmethod
    def of(cls, cluster) -> "DeviceTable":
        devs = list(cluster.devices)
        n = len(devs)
        lat, bw = np.zeros((n, n)), np.full((n, n), np.inf)
        for i in range(n):
            for j in range(n):
                if i != j:
                    link = cluster.link(i, j)
                    lat[i, j], bw[i, j] = link.latency_ms, link.bandwidth_mbps
        return cls(names=tuple(d.name for d in devs),
                   prefill_speed=np.array([d.prefill_speed for d in devs], float),
                   decode_speed=np.array([d.decode_speed for d in devs], float),
                   memory_bytes=np.array([d.memory_mib * MIB for d in devs], float),
                   sites=tuple(d.site for d in devs), latency_ms=lat, bandwidth_mbps=bw)

    def speed(self, phase) -> np.ndarray:
        """Every device's speed for ``phase``."""
        return self.prefill_speed if Phase.of(phase) is Phase.PREFILL else self.decode_speed


def phase_arrays(table: DeviceTable, idx: np.ndarray, phase, host_ms: tuple[float, float, float],
                 nbytes: float, n_layers: int):
    """``(compute (n, L), extra_first_ms (n,), extra_last_ms (n,), comm (n, n))`` for the devices
    ``idx`` of ``table`` (module docstring). ``host_ms``: host ms of (one layer, the embedding,
    norm + lm_head) for the step; ``nbytes``: the hidden state one stage hands the next."""
    layer, embed, head = host_ms
    speed = table.speed(phase)[idx]
    ix = np.ix_(idx, idx)
    comm = transfer_ms(nbytes, table.latency_ms[ix], table.bandwidth_mbps[ix])
    return np.repeat((layer / speed)[:, None], n_layers, axis=1), embed / speed, head / speed, comm


def memory_arrays(table: DeviceTable, idx: np.ndarray, kv_tokens: int, act_tokens: int,
                  logit_rows: int, anatomy: Anatomy):
    """``(layer_mem (L,), device_mem (n,), extra_first_mem, extra_last_mem)`` for the devices
    ``idx`` of ``table`` and the reserve (module docstring)."""
    a = anatomy
    layer_mem = np.full(a.n_layers, a.layer_bytes + int(kv_tokens) * a.kv_bytes_per_token_layer, float)
    device_mem = np.maximum(table.memory_bytes[idx] - working_bytes(act_tokens, anatomy=a), 0.0)
    last = a.embed_bytes + a.norm_bytes + working_bytes(0, logit_rows, True, a)
    return layer_mem, device_mem, float(a.embed_bytes), float(last)


@dataclass(frozen=True)
class DPArrays:
    """The inputs of :func:`~e2llm_lite.planning.dp.partition` for one group of devices.

    ``names`` are the device names in index order; the other fields are the arguments of
    ``partition`` / ``evaluate`` / ``brute_force_partition`` with the same names (ms, bytes).
    """

    names: tuple[str, ...]
    compute: np.ndarray  # (n, L) ms
    layer_mem: np.ndarray  # (L,) bytes
    device_mem: np.ndarray  # (n,) bytes
    comm: np.ndarray  # (n, n) ms
    extra_first_mem: float  # bytes
    extra_last_mem: float  # bytes
    extra_first_ms: np.ndarray  # (n,) ms
    extra_last_ms: np.ndarray  # (n,) ms

    @classmethod
    def build(cls, names, times, memory) -> "DPArrays":
        """From :func:`phase_arrays`' and :func:`memory_arrays`' results."""
        compute, first_ms, last_ms, comm = times
        layer_mem, device_mem, first_mem, last_mem = memory
        return cls(tuple(names), compute, layer_mem, device_mem, comm, first_mem, last_mem,
                   first_ms, last_ms)

    def kwargs(self) -> dict:
        """Keyword arguments for ``partition(**a.kwargs(), objective=...)`` (and evaluate, brute force)."""
        return {
            "compute": self.compute, "layer_mem": self.layer_mem, "device_mem": self.device_mem,
            "comm": self.comm, "extra_first_mem": self.extra_first_mem,
            "extra_last_mem": self.extra_last_mem, "extra_first_ms": self.extra_first_ms,
            "extra_last_ms": self.extra_last_ms,
        }  # fmt: skip

    def head(self, n_layers: int) -> "DPArrays":
        """The same devices and model ends with only the first ``n_layers`` decoder layers (a small
        instance for the brute-force referee; the last kept layer is followed by the head)."""
        if not 1 <= n_layers <= self.compute.shape[1]:
            raise ValueError(f"n_layers must be in 1..{self.compute.shape[1]}, got {n_layers!r}")
        return replace(self, compute=self.compute[:, :n_layers], layer_mem=self.layer_mem[:n_layers])


def dp_arrays(cluster, cm, phase, *, tokens: int | None = None, batch: int = 1, context: int = 0,
              kv_tokens: int | None = None) -> DPArrays:
    """The DP's arrays for every device of ``cluster`` (a :class:`~e2llm_lite.devices.Cluster`),
    one request of the given shape (module docstring: how the planner's differ).

    Args:
        cm: a :class:`~e2llm_lite.costmodel.CostModel` (e.g. ``CostModel.load()``).
        phase: ``"prefill"`` (give ``tokens``, the prompt length) or ``"decode"`` (one step of
            ``batch`` sequences with ``context`` tokens already cached each).
        kv_tokens: tokens of KV cache to reserve in every layer's memory; default: ``tokens``
            (prefill) or ``batch * (context + 1)`` (decode). ``0`` counts weights only.
    """
    phase = Phase.of(phase)
    shape = dict(tokens=tokens, batch=batch, context=context)
    host_ms = (cm.layer_ms(phase, **shape), cm.embed_ms(phase, **shape), cm.head_ms(phase, **shape))
    moved = tokens if phase is Phase.PREFILL else batch
    if kv_tokens is None:
        kv_tokens = tokens if phase is Phase.PREFILL else batch * (context + 1)
    if isinstance(kv_tokens, bool) or not isinstance(kv_tokens, (int, np.integer)) or kv_tokens < 0:
        raise ValueError(f"kv_tokens must be an integer >= 0, got {kv_tokens!r}")
    table = DeviceTable.of(cluster)
    idx = np.arange(len(table.names))
    return DPArrays.build(table.names,
                          phase_arrays(table, idx, phase, host_ms, cm.hidden_state_bytes(moved), cm.n_layers),
                          memory_arrays(table, idx, kv_tokens, 0, 0, cm.anatomy))


def replace_device(cluster, name: str, *, speed: float = 1.0, memory: float = 1.0, **fields):
    """A copy of ``cluster`` in which device ``name`` has both speeds multiplied by ``speed`` and
    its memory budget by ``memory``; other DeviceSpec ``fields`` (e.g. ``memory_mib=120``) are set
    as given. The links stay the same. For "what if this device were faster / had less memory?"."""
    dev = cluster.device(name)
    changes = {"prefill_speed": dev.prefill_speed * speed, "decode_speed": dev.decode_speed * speed,
               "memory_mib": dev.memory_mib * memory} | fields
    devices = [replace(d, **changes) if d.name == dev.name else d for d in cluster.devices]
    return replace(cluster, devices=devices)
