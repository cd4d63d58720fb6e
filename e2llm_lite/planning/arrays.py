"""From a cluster and the cost model to the plain arrays of :func:`e2llm_lite.planning.dp.partition`.

:mod:`e2llm_lite.planning.dp` works on plain arrays (ms, bytes) so it can be read and tested on its
own. This module builds those arrays for real devices, and gives the exo-style memory-proportional
split that notebook 02 compares the DP with.

What goes into the arrays (units: ms of device time, bytes)
-----------------------------------------------------------
* ``compute[i, j]`` = ms of decoder layer ``j`` on device ``i`` for the phase and shape
  (:meth:`CostModel.compute_matrix`: host ms per layer ÷ the device's speed for that phase).
* ``extra_first_ms[i]`` / ``extra_last_ms[i]`` = the embedding / final norm + lm_head on device
  ``i`` (:meth:`CostModel.end_extras_ms`).
* ``comm[a, b]`` = ms to send the hidden state between two stages over the cluster's link from
  ``a`` to ``b``: ``latency + bytes * 8 / bandwidth`` with ``bytes = n * 576 * 4``, ``n = tokens``
  for a prefill and ``n = batch`` for a decode step (:meth:`CostModel.comm_matrix`).
* ``layer_mem[j]`` = the layer's fp32 weights (14,160,384 B = 13.5 MiB) + its KV cache for
  ``kv_tokens`` tokens (1536 B per token per layer). By default ``kv_tokens`` is the KV cache the
  request leaves behind: ``tokens`` for a prefill, ``batch * (context + 1)`` for a decode step.
  Activations are not counted (a 512-token hidden state is 1.1 MiB, under 1 % of a budget).
* ``extra_first_mem`` = the embedding (108 MiB); ``extra_last_mem`` = the final norm + the last
  stage's own copy of the tied lm_head (108 MiB). A single stage holding everything carries both,
  like :meth:`Anatomy.stage_weight_bytes`.
* ``device_mem[i]`` = the device's budget ``memory_mib * 2**20`` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["MIB", "DPArrays", "dp_arrays", "exo_stages", "replace_device"]

MIB = 2**20  # bytes per MiB


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
        return DPArrays(self.names, self.compute[:, :n_layers], self.layer_mem[:n_layers],
                        self.device_mem, self.comm, self.extra_first_mem, self.extra_last_mem,
                        self.extra_first_ms, self.extra_last_ms)


def dp_arrays(cluster, cm, phase, *, tokens: int | None = None, batch: int = 1, context: int = 0,
              kv_tokens: int | None = None) -> DPArrays:
    """The DP's arrays for every device of ``cluster`` (a :class:`~e2llm_lite.devices.Cluster`).

    Args:
        cm: a :class:`~e2llm_lite.costmodel.CostModel` (e.g. ``CostModel.load()``).
        phase: ``"prefill"`` (give ``tokens``, the prompt length) or ``"decode"`` (one step of
            ``batch`` sequences with ``context`` tokens already cached each).
        kv_tokens: tokens of KV cache to reserve in every layer's memory; default: ``tokens``
            (prefill) or ``batch * (context + 1)`` (decode). ``0`` counts weights only.
    """
    from e2llm_lite.costmodel import Phase

    phase = Phase.of(phase)
    shape = dict(tokens=tokens, batch=batch, context=context)
    devices = list(cluster.devices)
    a = cm.anatomy
    compute = cm.compute_matrix(devices, phase, **shape)  # also validates the shape
    first_ms, last_ms = cm.end_extras_ms(devices, phase, **shape)
    moved = tokens if phase is Phase.PREFILL else batch
    comm = cm.comm_matrix(cluster, cm.hidden_state_bytes(moved))
    if kv_tokens is None:
        kv_tokens = tokens if phase is Phase.PREFILL else batch * (context + 1)
    if isinstance(kv_tokens, bool) or not isinstance(kv_tokens, (int, np.integer)) or kv_tokens < 0:
        raise ValueError(f"kv_tokens must be an integer >= 0, got {kv_tokens!r}")
    per_layer = a.layer_bytes + int(kv_tokens) * a.kv_bytes_per_token_layer
    return DPArrays(
        names=tuple(d.name for d in devices),
        compute=compute,
        layer_mem=np.full(a.n_layers, float(per_layer)),
        device_mem=np.array([d.memory_mib * MIB for d in devices], dtype=float),
        comm=comm,
        extra_first_mem=float(a.embed_bytes),
        extra_last_mem=float(a.embed_bytes + a.norm_bytes),
        extra_first_ms=first_ms,
        extra_last_ms=last_ms,
    )


def exo_stages(device_mem, n_layers: int, names=None) -> list[tuple[int, int, int]]:
    """exo's split: one pipeline over every device, layers in proportion to memory.

    exo's ``RingMemoryWeightedPartitioningStrategy``, with its arithmetic: devices sorted by
    ``(memory, name)`` in reverse — largest memory first, ties by name descending (by index
    descending when ``names`` is None); device ``i`` of that order gets the fraction
    ``[start_i, end_i)`` of the model with ``end_i = round(start_i + mem_i / total, 5)``, i.e. the
    layers ``int(start_i * L) .. int(end_i * L) - 1``; the last device runs to layer ``L``. The
    truncation is exo's: a third of 30 layers is ``int(0.33333 * 30) = 9``. Speeds and links are
    ignored, and so is whether a stage fits (check with :func:`~e2llm_lite.planning.dp.evaluate`).
    A device whose share truncates to no layer is left out. This is the ring started at the
    largest device, as :func:`e2llm_lite.planning.baselines.exo_stages` with ``rotation=0`` (the
    baseline plan also tries other starts when this one does not fit).

    Returns ``[(device_index, start, end), ...]`` in pipeline order, for ``evaluate``.
    """
    mem = np.asarray(device_mem, dtype=float)
    if mem.ndim != 1 or len(mem) == 0 or not np.all(np.isfinite(mem)) or np.any(mem <= 0):
        raise ValueError("device_mem must be a non-empty 1-D array of positive numbers")
    if isinstance(n_layers, bool) or not isinstance(n_layers, (int, np.integer)) or n_layers < 1:
        raise ValueError(f"n_layers must be an integer >= 1, got {n_layers!r}")
    keys = list(range(len(mem))) if names is None else list(names)
    if len(keys) != len(mem):
        raise ValueError(f"names has {len(keys)} entries for {len(mem)} devices")
    order = sorted(range(len(mem)), key=lambda i: (mem[i], keys[i]), reverse=True)
    total = float(mem.sum())
    stages, start = [], 0.0
    for k, i in enumerate(order):
        end = round(start + float(mem[i]) / total, 5)
        s, e = int(start * n_layers), (n_layers if k == len(order) - 1 else int(end * n_layers))
        if e > s:
            stages.append((int(i), s, e))
        start = end
    return stages


def replace_device(cluster, name: str, *, speed: float = 1.0, memory: float = 1.0, **fields):
    """A copy of ``cluster`` in which device ``name`` has both speeds multiplied by ``speed`` and
    its memory budget by ``memory``; other DeviceSpec ``fields`` (e.g. ``memory_mib=120``) are set
    as given. The links stay the same. For "what if this device were faster / had less memory?"."""
    dev = cluster.device(name)
    changes = {"prefill_speed": dev.prefill_speed * speed, "decode_speed": dev.decode_speed * speed,
               "memory_mib": dev.memory_mib * memory} | fields
    devices = [replace(d, **changes) if d.name == dev.name else d for d in cluster.devices]
    return replace(cluster, devices=devices)
