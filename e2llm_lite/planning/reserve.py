"""The memory a replica is planned with: its role's reserve, and whether a group can hold it.

A stage on device i holding layers ``[s, e)`` needs (:func:`e2llm_lite.memory.stage_need_bytes`,
the rule the device workers enforce)::

    weights(s, e)                         (layers + embedding if s == 0 + norm + lm_head copy if e == 30)
    + kv_tokens * (e - s) * 1536          (KV reserve: K and V, 3 kv-heads x 64 x 4 B, per token per layer)
    + act_tokens * 4 * (2*576 + 3*1536)   (working memory of the largest step)
    + logit_rows * 49152 * 4  if e == 30  (the logits rows of the last stage)

and this must be ``<= memory_mib * 2^20``. The **reserve** depends on the role (:func:`reserve`;
``P`` the design prompt, ``Tm`` / ``Om`` the mean prompt / output, ``B`` the decode batch, see
:mod:`~e2llm_lite.planning.workload_stats`):

=========  ==============================  ==============  ==========
role       kv_tokens (per layer)           act_tokens      logit_rows
=========  ==============================  ==============  ==========
prefill    ``P``                           ``P``           1
decoder    ``B * ceil(Tm + Om)``           ``B``           ``B``
both       ``B * ceil(Tm + Om) + P``       ``max(P, B)``   ``B``
=========  ==============================  ==============  ==========

(a prefill stage holds the KV of the one prompt it is working on, handed off layer by layer as
Splitwise does; a decoder keeps the KV of its ``B`` sequences at their full mean length.) For the
DP this becomes :func:`~e2llm_lite.planning.arrays.memory_arrays`.

**Does a group hold the model?** (:func:`capacities`, :func:`holds_model`; exact, no DP.) Every
layer needs the same bytes ``m``, so device i can hold ``floor(M_i / m)`` layers in the middle of
the pipeline, ``floor((M_i - first extra) / m)`` as the first stage and
``floor((M_i - last extra) / m)`` as the last (``M_i`` its room after the working memory); some
order and contiguous split of the layers fits iff one device holds everything, or for the best
choice of two different first and last devices these capacities add up to the number of layers.
The DP finds a split exactly when this test passes (checked in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .replica_plan import check_role
from .workload_stats import WorkloadStats

__all__ = ["Capacities", "capacities", "holds_model", "reserve"]


def reserve(role: str, stats: WorkloadStats, batch: int) -> tuple[int, int, int]:
    """``(kv_tokens, act_tokens, logit_rows)`` of a replica of ``role`` at decode batch ``batch``
    (module docstring)."""
    check_role(role)
    P, ctx = stats.design_prompt, stats.context_tokens
    if role == "prefill":
        return P, P, 1
    if role == "decoder":
        return batch * ctx, batch, batch
    return batch * ctx + P, max(P, batch), batch


@dataclass(frozen=True)
class Capacities:
    """Layers each device can hold under one reserve (module docstring), per device index:
    ``middle`` layers as a middle stage; ``first_gain`` / ``last_gain`` how many more (usually
    fewer: negative) as the first / last stage, None when it cannot hold even one layer there;
    ``alone`` layers as the only stage (first and last at once)."""

    middle: tuple[float, ...]
    first_gain: tuple[float | None, ...]
    last_gain: tuple[float | None, ...]
    alone: tuple[float, ...]


def capacities(layer_mem: float, device_mem: np.ndarray, first_mem: float, last_mem: float) -> Capacities:
    """:class:`Capacities` of devices with room ``device_mem`` (bytes, after the working memory)
    for layers of ``layer_mem`` bytes (KV reserve included) and the first / last stage's extras."""
    m = float(layer_mem)
    mid = np.floor(device_mem / m)
    first, last = np.floor((device_mem - first_mem) / m), np.floor((device_mem - last_mem) / m)
    alone = np.floor((device_mem - first_mem - last_mem) / m)

    def gain(end):
        return tuple(c - k if c >= 1 else None for c, k in zip(end.tolist(), mid.tolist()))

    return Capacities(tuple(mid.tolist()), gain(first), gain(last), tuple(alone.tolist()))


def holds_model(caps: Capacities, group: Sequence[int], n_layers: int) -> bool:
    """Whether some order and contiguous split of ``n_layers`` layers over the devices ``group``
    fits (module docstring)."""
    if len(group) == 0:
        return False
    if any(caps.alone[i] >= n_layers for i in group):
        return True
    total = sum(caps.middle[i] for i in group)
    gf, gl = caps.first_gain, caps.last_gain
    best = None
    for f in group:
        if gf[f] is None:
            continue
        for last in group:
            if last != f and gl[last] is not None and (best is None or gf[f] + gl[last] > best):
                best = gf[f] + gl[last]
    return best is not None and total + best >= n_layers
