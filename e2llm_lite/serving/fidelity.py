"""Does the simulator agree with reality? Comparing a real run with a simulated one.

A real run (:func:`~e2llm_lite.serving.emulated.serve_requests`) and a simulated run
(:func:`~e2llm_lite.serving.simulator.simulate_requests`) of the very same requests on the same
plan have the same records (the scheduler's), so they compare request by request:

* :func:`paired` — per request, real and simulated waiting, TTFT and end-to-end (s);
* :func:`error_table` — mean and P90 of each metric in both runs and the relative error
  ``real / simulated - 1``;
* :func:`step_errors` — each step the emulated devices ran (their timeline, device ms) against the
  cost model's time for the same step: where the two clocks part.

Torch-free; all times in seconds of device time unless a name says ms.
"""

from __future__ import annotations

import numpy as np

from .metrics import request_rows

__all__ = ["METRICS", "error_table", "paired", "step_errors"]

METRICS = ("waiting_s", "ttft_s", "e2e_s")


def paired(real, sim) -> list[dict]:
    """One row per request of the real run: id, prompt and output tokens, and per metric
    ``{metric: (real, simulated)}`` (None where a run did not finish the request) — from
    :func:`~e2llm_lite.serving.metrics.request_rows` of both runs."""
    sims = {r["request"]: r for r in request_rows(sim.records.values())}
    rows = []
    for a in request_rows(real.records.values()):
        b = sims.get(a["request"], {})
        finished = lambda row: row.get("e2e_s") is not None    # noqa: E731 - done, not rejected
        row = {"id": a["request"], "prompt_tokens": a["prompt_tokens"],
               "output_tokens": a["output_tokens"], "replica": a["prefill_replica"]}
        for m in METRICS:
            row[m] = (a[m] if finished(a) else None, b.get(m) if finished(b) else None)
        rows.append(row)
    return rows


def error_table(real_metrics: dict, sim_metrics: dict) -> dict:
    """Per metric: ``{"real": {mean, p90}, "sim": {mean, p90}, "error": {mean, p90}}`` from two
    :func:`~e2llm_lite.serving.metrics.summarize` results; an error is ``real / sim - 1``
    (None when the simulated figure is 0 or missing)."""
    out = {}
    for m in METRICS:
        r, s = real_metrics["summary"][m], sim_metrics["summary"][m]
        out[m] = {"real": {k: r[k] for k in ("mean", "p90")}, "sim": {k: s[k] for k in ("mean", "p90")},
                  "error": {k: (r[k] / s[k] - 1 if s[k] and r[k] is not None else None)
                            for k in ("mean", "p90")}}
    return out


def step_errors(rows, placements: dict, cluster, costmodel, context: int = 64) -> list[dict]:
    """Each step of an emulated run's timeline (``EmulatedCluster.timeline()`` rows) with the
    cost model's time for it: ``placements`` maps a device to its ``(start, end)`` layers; a
    prefill step of ``tokens`` tokens is timed as a prompt of that length, a decode step of
    ``tokens`` sequences at the mean context the row records (tokens cached per sequence before
    the step; ``context`` for rows without one). Returns rows of device, phase, size,
    real_ms, model_ms, error (real / model - 1)."""
    out = []
    for r in rows:
        start, end = placements[r["device"]]
        dev = cluster.device(r["device"])
        kw = (dict(tokens=r["tokens"]) if r["phase"] == "prefill"
              else dict(batch=r["tokens"], context=max(1, round(r.get("context") or context))))
        model = costmodel.stage_ms(dev, start, end, r["phase"], **kw)
        real = r["end_ms"] - r["start_ms"]
        out.append({"device": r["device"], "phase": r["phase"], "size": r["tokens"],
                    "real_ms": real, "model_ms": model, "error": real / model - 1})
    return out


def median_error_by_size(steps: list[dict], phase: str) -> dict[int, float]:
    """Median step error per size (prompt tokens or decode batch) of one phase."""
    sizes = sorted({s["size"] for s in steps if s["phase"] == phase})
    return {n: float(np.median([s["error"] for s in steps if s["phase"] == phase and s["size"] == n]))
            for n in sizes}
