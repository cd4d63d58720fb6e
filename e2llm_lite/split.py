"""A split: the model's layers cut into contiguous ranges, one per device, in pipeline order.

The rules every part that handles splits shares (torch-free): the planner's DP and its plans, the
in-process and emulated pipelines, the simulator.

* :func:`even_split` — ``n`` ranges of (nearly) equal size.
* :func:`check_split` — what makes a split valid: at least one stage, ranges ``[start, end)``
  non-empty and contiguous from layer 0 to the last layer, each device at most once.
* :func:`stage_times` — **the stage-time formula** of a split: a stage takes the compute time of
  its layers (+ the embedding on the first stage, + norm and lm_head on the last) + the transfer of
  its output to the next stage; the last stage sends nothing on. Its maximum is the pipeline's
  period (bottleneck), its sum one request's trip (latency).
* :func:`kv_pieces`, :func:`kv_handoff_ms` — the KV hand-off between two splits of the same model
  (PREFILL -> DECODER): every layer's KV goes from the device that holds that layer in the source
  split to the one that holds it in the destination split, one piece per (source, destination)
  pair of overlapping stages; each source sends its pieces one after another, the sources in
  parallel, so the hand-off takes the slowest source's total (each piece ``latency + bytes /
  bandwidth``, :func:`~e2llm_lite.devices.transfer_ms`).

A stage is ``(device, start, end)``: a device (an index or a name), layers ``start .. end - 1``.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["check_split", "even_split", "kv_handoff_ms", "kv_handoff_per_source_ms", "kv_pieces",
           "stage_times"]


def even_split(n_stages: int, n_layers: int = 30) -> list[tuple[int, int]]:
    """``n_stages`` contiguous ranges covering ``n_layers`` layers, sizes differing by at most 1."""
    if not isinstance(n_stages, int) or not 1 <= n_stages <= n_layers:
        raise ValueError(f"number of stages must be an integer in 1..{n_layers}, got {n_stages!r}")
    bounds = [round(i * n_layers / n_stages) for i in range(n_stages + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def check_split(stages: Sequence, n_layers: int) -> None:
    """Raise ``ValueError`` unless ``stages`` split ``n_layers`` layers (module docstring).

    ``stages``: ``(device, start, end)`` triples, or bare ``(start, end)`` ranges (then only the
    ranges are checked). Whether each device exists is the caller's to check.
    """
    stages = list(stages)
    if not stages:
        raise ValueError("a split needs at least one stage (layer range)")
    ranges = [tuple(s)[-2:] for s in stages]
    expected = 0
    for start, end in ranges:
        if start != expected or end <= start:
            raise ValueError(f"layer ranges must be contiguous, non-empty and start at 0, got {stages}")
        expected = end
    if expected != n_layers:
        raise ValueError(f"layer ranges cover layers 0..{expected}, not the model's 0..{n_layers}: {stages}")
    devices = [s[0] for s in stages if len(s) == 3]
    twice = sorted({d for d in devices if devices.count(d) > 1}, key=str)
    if twice:
        raise ValueError(f"device {twice[0]!r} holds more than one stage of the split {stages}")


def stage_times(stages: Sequence[tuple[int, int, int]], compute, first_ms, last_ms, comm) -> list[float]:
    """ms of each stage of ``stages`` (``(device index, start, end)`` in pipeline order): the sum of
    ``compute[device, start:end]`` (ms of each layer on that device), + ``first_ms[device]``
    (embedding) on the first stage, + ``last_ms[device]`` (norm + lm_head) on the last, +
    ``comm[device, next device]`` (the hand-off to the next stage) on every stage but the last.
    Arrays as :func:`e2llm_lite.planning.dp.partition` takes them (numpy)."""
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


def kv_pieces(src: Sequence[tuple], dst: Sequence[tuple]) -> list[tuple]:
    """The pieces of a KV hand-off from split ``src`` to split ``dst`` (both ``(device, start,
    end)`` stages of the same model): ``(source device, destination device, start, end)`` for
    every pair of overlapping stages, layers ``[start, end)``, in source then destination order."""
    out = []
    for s_dev, s_start, s_end in src:
        for d_dev, d_start, d_end in dst:
            a, b = max(s_start, d_start), min(s_end, d_end)
            if a < b:
                out.append((s_dev, d_dev, a, b))
    return out


def kv_handoff_per_source_ms(src: Sequence[tuple], dst: Sequence[tuple], link_ms, tokens: float,
                             kv_bytes_per_token_layer: int) -> dict:
    """Source device -> ms its pieces of a KV hand-off take (one after another): the KV of
    ``tokens`` tokens from split ``src`` to split ``dst``; ``link_ms(a, b, nbytes)`` times one
    piece from device ``a`` to ``b`` (0 when ``a == b``)."""
    per_source: dict = {}
    for a, b, start, end in kv_pieces(src, dst):
        nbytes = tokens * (end - start) * kv_bytes_per_token_layer
        per_source[a] = per_source.get(a, 0.0) + (0.0 if a == b else link_ms(a, b, nbytes))
    return per_source


def kv_handoff_ms(src: Sequence[tuple], dst: Sequence[tuple], link_ms, tokens: float,
                  kv_bytes_per_token_layer: int) -> float:
    """ms to hand the KV of ``tokens`` tokens from split ``src`` to split ``dst`` (module
    docstring): each source's pieces add up (:func:`kv_handoff_per_source_ms`), the sources send
    in parallel, the slowest decides."""
    return max(kv_handoff_per_source_ms(src, dst, link_ms, tokens, kv_bytes_per_token_layer).values(),
               default=0.0)
