"""Serving metrics, the same for both clocks: computed from the scheduler's
:class:`~e2llm_lite.serving.scheduler.RequestRecord` s, whoever drove it (seconds of device time).

Per request:

* **waiting** = prefill start − arrival (E2LLM's headline metric: the time before any device
  works on the prompt);
* **TTFT** = first token − arrival (the first token comes out of the prefill);
* **TBT** = the mean (and the max) gap between its consecutive tokens (requests of >= 2 tokens;
  the gap between the first token, out of the prefill, and the second includes the KV hand-off);
* **E2E** = last token − arrival; **hand-off** = the KV move's duration (0 if none).

Per run: throughput (finished requests / the span from the first arrival to the last token),
mean / P50 / P90 / P99 of each, utilisation of each replica (its devices' busy time / the span;
the mean over its devices and the busiest), and **SLO attainment** with Splitwise's slowdown SLOs:
a request's slowdown is its figure divided by the same request's figure *unloaded* (alone on the
plan: :func:`unloaded`), and the run meets the SLOs if the P50 / P90 / P99 slowdowns are within
2 / 3 / 6x for TTFT and 1.25 / 1.5 / 5x for TBT and E2E.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["CSV_COLUMNS", "SLO", "fault_report", "format_faults", "format_summary", "percentiles",
           "request_rows", "summarize", "write_csv"]

#: Splitwise's slowdown SLOs: metric -> {percentile: max slowdown}.
SLO = {"ttft_s": {50: 2.0, 90: 3.0, 99: 6.0}, "tbt_s": {50: 1.25, 90: 1.5, 99: 5.0},
       "e2e_s": {50: 1.25, 90: 1.5, 99: 5.0}}

#: Columns of ``--requests-out``.
CSV_COLUMNS = ("request", "arrival_s", "prompt_tokens", "output_tokens", "waiting_s", "ttft_s",
               "tbt_s", "tbt_max_s", "e2e_s", "handoff_s", "prefill_replica", "decode_replica",
               "restarts", "rejected")

METRICS = ("waiting_s", "ttft_s", "tbt_s", "e2e_s", "handoff_s")


def percentiles(values) -> dict:
    """``{"mean", "p50", "p90", "p99"}`` of ``values`` (None for each if there are none)."""
    v = np.asarray(list(values), dtype=float)
    if v.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"mean": float(v.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def request_rows(records) -> list[dict]:
    """One dict per request (columns :data:`CSV_COLUMNS`; None where it does not apply)."""
    rows = []
    for r in sorted(records, key=lambda r: r.id):
        done = r.done and not r.rejected
        rows.append({
            "request": r.id, "arrival_s": r.arrival_s, "prompt_tokens": r.prompt_tokens,
            "output_tokens": r.output_tokens,
            "waiting_s": r.prefill_start_s - r.arrival_s if r.prefill_start_s is not None else None,
            "ttft_s": r.first_token_s - r.arrival_s if r.first_token_s is not None else None,
            "tbt_s": r.tbt_sum_s / (r.tokens - 1) if done and r.tokens > 1 else None,
            "tbt_max_s": r.tbt_max_s if done and r.tokens > 1 else None,
            "e2e_s": r.end_s - r.arrival_s if done else None,
            "handoff_s": r.handoff_s if done else None,
            "prefill_replica": r.prefill_replica, "decode_replica": r.decode_replica,
            "restarts": r.restarts, "rejected": r.rejected})
    return rows


def write_csv(records, path) -> None:
    """Write :func:`request_rows` to ``path`` (one row per request)."""
    with open(Path(path), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for row in request_rows(records):
            w.writerow({k: ("" if v is None else round(v, 6) if isinstance(v, float) else v)
                        for k, v in row.items()})


def summarize(records, *, busy_s: dict | None = None, replica_devices: dict | None = None,
              unloaded=None) -> dict:
    """The run's figures (module docstring) as a JSON-ready dict.

    ``busy_s``: device -> busy seconds; ``replica_devices``: replica -> its devices (both for the
    utilisation); ``unloaded``: request record -> ``{"ttft_s", "tbt_s", "e2e_s"}`` of that request
    alone (for the SLOs; omitted if None).
    """
    records = list(records)
    rows = request_rows(records)
    done = [row for row in rows if not row["rejected"] and row["e2e_s"] is not None]
    rejected = [{"request": row["request"], "reason": row["rejected"]} for row in rows if row["rejected"]]
    ends = [r.end_s for r in records if r.done and not r.rejected]
    start = min((r.arrival_s for r in records), default=0.0)
    span = (max(ends) - start) if ends else 0.0
    out = {"requests_in": len(records), "requests_done": len(done), "rejected": rejected,
           "duration_s": span, "throughput_rps": len(done) / span if span > 0 else 0.0,
           "summary": {m: percentiles(row[m] for row in done if row[m] is not None) for m in METRICS}}
    out["summary"]["tbt_max_s"] = percentiles(row["tbt_max_s"] for row in done
                                              if row["tbt_max_s"] is not None)
    if busy_s is not None and replica_devices is not None and span > 0:
        out["utilisation"] = {
            name: {"mean": float(np.mean([busy_s[d] for d in devs])) / span,
                   "busiest": max(busy_s[d] for d in devs) / span}
            for name, devs in replica_devices.items()}
    if unloaded is not None and done:
        by_id = {r.id: r for r in records}
        slow = {m: [] for m in SLO}
        for row in done:
            ref = unloaded(by_id[row["request"]])
            for m in SLO:
                if row[m] is not None and ref.get(m):
                    slow[m].append(row[m] / ref[m])
        slo = {}
        for m, limits in SLO.items():
            v = np.asarray(slow[m])
            got = {f"p{p}": (float(np.percentile(v, p)) if v.size else None) for p in limits}
            slo[m] = {"slowdown": got, "limit": {f"p{p}": x for p, x in limits.items()},
                      "met": bool(v.size) and all(got[f"p{p}"] <= x for p, x in limits.items())}
        slo["all_met"] = all(slo[m]["met"] for m in SLO)
        out["slo"] = slo
    return out


def format_summary(result: dict) -> str:
    """A few lines for the terminal: counts, throughput, the latency table, SLOs."""
    s = result["summary"]
    lines = [f"requests: {result['requests_in']} in, {result['requests_done']} done, "
             f"{len(result['rejected'])} rejected; span {result['duration_s']:.1f} s of device time, "
             f"throughput {result['throughput_rps']:.3f} requests/s",
             f"{'(s)':12s} {'mean':>9s} {'P50':>9s} {'P90':>9s} {'P99':>9s}"]
    for m, label in (("waiting_s", "waiting"), ("ttft_s", "TTFT"), ("tbt_s", "TBT"),
                     ("e2e_s", "end-to-end"), ("handoff_s", "KV hand-off")):
        v = s[m]
        if v["mean"] is None:
            continue
        lines.append(f"{label:12s} " + " ".join(f"{v[k]:9.4g}" for k in ("mean", "p50", "p90", "p99")))
    if "slo" in result:
        slo = result["slo"]
        parts = []
        for m, label in (("ttft_s", "TTFT"), ("tbt_s", "TBT"), ("e2e_s", "E2E")):
            sd = slo[m]["slowdown"]
            parts.append(f"{label} " + "/".join("-" if sd[k] is None else f"{sd[k]:.2f}"
                                                for k in ("p50", "p90", "p99"))
                         + f"x {'met' if slo[m]['met'] else 'MISSED'}")
        lines.append("slowdown P50/P90/P99: " + "; ".join(parts))
    for r in result["rejected"][:5]:
        lines.append(f"  rejected request {r['request']}: {r['reason']}")
    if len(result["rejected"]) > 5:
        lines.append(f"  ... and {len(result['rejected']) - 5} more rejected")
    return "\n".join(lines)



def fault_report(records, marks, replans) -> dict:
    """What failures, joins and re-plans did to a run: ``marks`` (the scheduler's, as dicts),
    ``replans`` (one per re-plan: why, when asked and ready, the planner's wall s, predicted
    waiting of the new and the current plan, adopted or not), ``restarted`` (requests re-queued
    after a failure, each keeping its arrival time) and ``unfinished`` (requests not done: each
    with its reason)."""
    records = list(records)
    return {
        "marks": [{"time_s": t, "kind": k, "detail": d} for t, k, d in marks],
        "replans": [dict(r) for r in replans],
        "restarted": sum(1 for r in records if r.restarts),
        "unfinished": [{"request": r.id, "reason": r.rejected or "unfinished"}
                       for r in sorted(records, key=lambda r: r.id) if not r.done],
    }


def format_faults(report: dict) -> list[str]:
    """Terminal lines for :func:`fault_report` (none when nothing happened)."""
    lines = []
    for m in report.get("marks", []):
        if m["kind"] in ("failure", "join", "stopped"):
            lines.append(f"  {m['time_s']:8.2f} s  {m['kind']}: {m['detail']}")
    for r in report.get("replans", []):
        ready = r.get("ready_s")
        lines.append(f"  re-plan ({r['reason']}) asked at {r['asked_s']:.2f} s, "
                     + ("never answered" if ready is None else
                        f"ready at {ready:.2f} s (planner {r.get('planning_s', 0):.2f} s wall): "
                        f"{'adopted' if r.get('adopted') else 'not adopted'} — {r.get('why', '')}"))
    if report.get("restarted"):
        lines.append(f"  {report['restarted']} request(s) re-queued after a failure (arrival times kept)")
    return lines
