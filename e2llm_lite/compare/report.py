"""A comparison written down: ``summary.md`` (tables a reader can paste), ``summary.csv`` (one
row per strategy x load) and the terminal table.

Figures are seconds unless named otherwise; ``sat.`` marks a saturated strategy x load (its queue
grows: no latency figure); ratios are E2LLM-or-other / Splitwise of the seed-averaged means.
"""

from __future__ import annotations

import csv
from pathlib import Path

from .run import RATIO_METRICS

__all__ = ["CSV_COLUMNS", "format_table", "headline_lines", "write_csv", "write_markdown"]

CSV_COLUMNS = ("strategy", "load", "rate_rps", "saturated", "seeds", "seeds_saturated", "growth",
               "throughput_rps", "waiting_mean_s", "waiting_p90_s", "waiting_p99_s", "ttft_mean_s",
               "ttft_p90_s", "tbt_mean_s", "e2e_mean_s", "e2e_p90_s", "slo_met_share",
               "ratio_waiting", "ratio_ttft", "ratio_e2e", "error")


def _row(e: dict) -> dict:
    def g(metric, q):
        return None if e["saturated"] else e[metric][q]
    r = e.get("ratio_vs_splitwise") or {}
    return {"strategy": e["strategy"], "load": e["load"], "rate_rps": e["rate_rps"],
            "saturated": e["saturated"], "seeds": e["seeds"], "seeds_saturated": e["seeds_saturated"],
            "growth": e["growth"], "throughput_rps": e["throughput_rps"],
            "waiting_mean_s": g("waiting_s", "mean"), "waiting_p90_s": g("waiting_s", "p90"),
            "waiting_p99_s": g("waiting_s", "p99"), "ttft_mean_s": g("ttft_s", "mean"),
            "ttft_p90_s": g("ttft_s", "p90"), "tbt_mean_s": g("tbt_s", "mean"),
            "e2e_mean_s": g("e2e_s", "mean"), "e2e_p90_s": g("e2e_s", "p90"),
            "slo_met_share": e.get("slo_met_share"), "ratio_waiting": r.get("waiting_s"),
            "ratio_ttft": r.get("ttft_s"), "ratio_e2e": r.get("e2e_s"), "error": e.get("error", "")}


def write_csv(results: list, path) -> None:
    """One row per strategy x load (:data:`CSV_COLUMNS`; empty = saturated / undefined)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for e in results:
            w.writerow({k: ("" if v is None else v) for k, v in _row(e).items()})


def _fmt(x, spec=".3g"):
    return "sat." if x is None else format(x, spec)


def format_table(comp) -> str:
    """The terminal / markdown table: mean waiting, TTFT, E2E (s) per strategy and load, and
    E2LLM / Splitwise ratios."""
    loads = comp.loads
    head = "| strategy | metric | " + " | ".join(f"{x:g}x" for x in loads) + " |"
    lines = [head, "|" + "---|" * (len(loads) + 2)]
    for s in comp.strategies:
        for metric, label in (("waiting_s", "mean waiting (s)"), ("ttft_s", "mean TTFT (s)"),
                              ("e2e_s", "mean E2E (s)")):
            cells = []
            for x in loads:
                e = comp.result(s, x)
                cells.append("sat." if e["saturated"] else _fmt(e[metric]["mean"]))
            lines.append(f"| {s} | {label} | " + " | ".join(cells) + " |")
    mains = [s for s in ("e2llm", "e2llm-sim") if s in comp.strategies]
    for main, metric in ((m, k) for m in mains for k in RATIO_METRICS):
        if "splitwise" in comp.strategies:
            cells = []
            for x in loads:
                e = comp.result(main, x)
                r, sp = e["ratio_vs_splitwise"][metric], e["ratio_spread"][metric]
                if r is None:
                    base = comp.result("splitwise", x)
                    cells.append("both sat." if e["saturated"] and base["saturated"] else
                                 "Splitwise sat." if base["saturated"] else "E2LLM sat.")
                else:
                    cells.append(f"{r:.2f}" + (f" ({sp[0]:.2f}-{sp[1]:.2f})" if sp and len(comp.seeds) > 1 else ""))
            label = "E2LLM" if main == "e2llm" else main
            lines.append(f"| **{label} / Splitwise** | {metric[:-2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def headline_lines(comp) -> list[str]:
    """Plain sentences: the saturation rate and, per load, the E2LLM / Splitwise waiting ratio."""
    out = [f"Splitwise's sustainable rate on {comp.cluster} for {comp.workload}: "
           f"{comp.saturation_rps:.3g} requests/s ({len(comp.seeds)} seed(s), {comp.requests} "
           f"requests per run)"]
    if "e2llm" in comp.strategies:
        for x in comp.loads:
            e = comp.result("e2llm", x)
            r = e["ratio_vs_splitwise"]["waiting_s"]
            if r is not None:
                out.append(f"  load {x:g}: E2LLM / Splitwise mean waiting = {r:.2f}"
                           f" ({'<= 0.5: the paper claim holds' if r <= 0.5 else '> 0.5: the paper claim does not hold'})")
            else:
                base = comp.result("splitwise", x)
                who = " and ".join(n for n, v in (("E2LLM", e), ("Splitwise", base)) if v["saturated"])
                out.append(f"  load {x:g}: {who} saturated (queue grows) — no ratio")
    return out


def write_markdown(comp, path, figures: dict | None = None) -> None:
    """``summary.md``: what was run, the table, the headline sentences, the figures' files."""
    lines = [f"# {comp.workload} on {comp.cluster}: E2LLM vs Splitwise", "",
             f"Loads are fractions of Splitwise's sustainable rate, **{comp.saturation_rps:.4g} "
             f"requests/s** (the highest Poisson rate at which its waiting time grows by at most "
             f"0.05 s per s over {comp.requests} requests). Seeds: {', '.join(map(str, comp.seeds))}; "
             f"every strategy serves the same requests at each load (simulator, virtual clock). "
             f"`sat.` = saturated: the queue grows, no latency figure.", "",
             format_table(comp), "", *headline_lines(comp), ""]
    for name, f in (figures or {}).items():
        lines.append(f"![{name}]({Path(f).name})")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
