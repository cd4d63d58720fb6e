"""Figures of a comparison (matplotlib; every function returns the Figure).

:func:`plot_waiting_vs_load` — mean waiting time against load per strategy, the seeds' spread as
a band, saturated loads marked on the top edge; :func:`plot_ratio_vs_load` — E2LLM / Splitwise
ratios with the paper's 0.5 line; :func:`plot_comparison_cdfs` — per-request CDFs at one load;
:func:`plot_plans` — every strategy's plan (replicas, roles, splits); :func:`plot_ratio_map` — the
load x workload-mix heatmap with its 0.5 contour.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..serving.metrics import request_rows
from ..viz import plot_latency_cdfs, plot_plan

__all__ = ["plot_comparison_cdfs", "plot_plans", "plot_ratio_map", "plot_ratio_vs_load",
           "plot_waiting_vs_load"]

LABELS = {"waiting_s": "mean waiting", "ttft_s": "mean TTFT", "tbt_s": "mean TBT", "e2e_s": "mean E2E"}


def plot_waiting_vs_load(comp, metric: str = "waiting_s", ax=None, title=None):
    """``metric``'s seed-averaged mean (s, log scale) against load for every strategy; the band is
    the seeds' min..max; an ``x`` on the top edge marks a saturated strategy x load."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 4.2))
    else:
        fig = ax.figure
    top = max([e[metric]["mean"] for e in comp.results if not e["saturated"] and e[metric]["mean"]] or [1.0])
    for k, s in enumerate(comp.strategies):
        color = f"C{k}"
        pts = [(e["load"], e[metric]["mean"], *e["seed_spread"][metric]) for e in comp.results
               if e["strategy"] == s and not e["saturated"] and e[metric]["mean"] is not None]
        sat = [e["load"] for e in comp.results if e["strategy"] == s and e["saturated"]]
        if pts:
            x, y, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
            floor = 1e-4
            ax.plot(x, np.maximum(y, floor), "o-", color=color, label=s)
            ax.fill_between(x, np.maximum(lo, floor), np.maximum(hi, floor), color=color, alpha=0.15)
        if sat:
            ax.plot(np.array(sat) + 0.008 * (k - len(comp.strategies) / 2), [top * 3] * len(sat),
                    "x", color=color, ms=9, mew=2,
                    label=None if pts else f"{s} (saturated)")
    ax.set_yscale("log")
    ax.set_xlabel(f"load (x Splitwise's sustainable rate, {comp.saturation_rps:.3g} req/s)")
    ax.set_ylabel(f"{LABELS.get(metric, metric)} (s)")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title or f"{comp.workload} on {comp.cluster}: {LABELS.get(metric, metric)} "
                 f"(band: {len(comp.seeds)} seeds; x at top: saturated)")
    fig.tight_layout()
    return fig


def plot_ratio_vs_load(comp, strategy: str = "e2llm", ax=None, title=None):
    """``strategy`` / Splitwise of mean waiting, TTFT and E2E against load, with the per-seed
    spread as error bars and the paper's 0.5 target."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.8))
    else:
        fig = ax.figure
    for k, m in enumerate(("waiting_s", "ttft_s", "e2e_s")):
        pts = [(e["load"], e["ratio_vs_splitwise"][m], *(e["ratio_spread"][m] or (np.nan, np.nan)))
               for e in comp.results if e["strategy"] == strategy and e["ratio_vs_splitwise"][m] is not None]
        if not pts:
            continue
        x, y, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
        ax.errorbar(x + 0.01 * (k - 1), y, yerr=[np.nan_to_num(y - lo), np.nan_to_num(hi - y)],
                    fmt="o-", capsize=3, label=LABELS[m][5:], color=f"C{k}")
    ax.axhline(1.0, color="grey", lw=1)
    ax.axhline(0.5, color="red", ls="--", lw=1, label="paper: 0.5")
    ax.set_xlabel("load (x Splitwise's sustainable rate)")
    ax.set_ylabel(f"{strategy} / splitwise")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    ax.set_title(title or f"{comp.workload} on {comp.cluster}: {strategy} / Splitwise (mean over "
                 f"seeds; bars: per-seed range)")
    fig.tight_layout()
    return fig


def plot_comparison_cdfs(comp, load: float, title=None):
    """Per-request CDFs of waiting, TTFT and E2E at ``load`` (the first seed; needs a comparison
    run with ``keep_records=True``)."""
    runs = {s: request_rows(comp.records[(s, load)]) for s in comp.strategies
            if (s, load) in comp.records}
    return plot_latency_cdfs(runs, title=title or f"{comp.workload} on {comp.cluster} at load {load:g} "
                             f"({load * comp.saturation_rps:.3g} req/s)")


def plot_plans(comp):
    """Every strategy's plan (at the highest load of the first seed), one panel each."""
    plans = [(s, comp.plans[s]) for s in comp.strategies if s in comp.plans]
    fig, axes = plt.subplots(len(plans), 1, figsize=(11, sum(0.6 * len(p.replicas) + 1.4 for _, p in plans)),
                             squeeze=False)
    for ax, (s, p) in zip(axes[:, 0], plans):
        plot_plan(p, ax=ax, title=f"{s}: {len(p.replicas)} replica(s) at {p.rate:.3g} req/s")
    fig.tight_layout()
    return fig


def plot_ratio_map(loadmap, ax=None, title=None):
    """The heatmap of E2LLM / Splitwise mean waiting over workload mix (x) and load (y), log
    colour scale centred on 1, the 0.5 contour drawn; saturated cells hatched grey.
    ``loadmap``: :class:`~e2llm_lite.compare.loadmap.LoadMap`."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.5, 4.5))
    else:
        fig = ax.figure
    z = np.array(loadmap.ratio, dtype=float)  # rows: loads, columns: mixes; nan = undefined
    x = np.array(loadmap.mixes, dtype=float)
    y = np.array(loadmap.loads, dtype=float)
    logz = np.log2(np.clip(z, 1 / 16, 16))
    mesh = ax.pcolormesh(x, y, np.ma.masked_invalid(logz), cmap="RdBu_r", vmin=-4, vmax=4, shading="nearest")
    for i in range(len(y)):
        for j in range(len(x)):
            ax.text(x[j], y[i], "sat." if np.isnan(z[i, j]) else f"{z[i, j]:.2f}", ha="center",
                    va="center", fontsize=9, color="black")
    if np.isfinite(z).sum() >= 4 and np.nanmin(z) < 0.5 < np.nanmax(z):
        ax.contour(x, y, np.where(np.isfinite(z), z, np.nan), levels=[0.5], colors="black", linewidths=2)
    cb = fig.colorbar(mesh, ax=ax)
    cb.set_ticks([-4, -2, -1, 0, 1, 2, 4], labels=["1/16", "1/4", "1/2", "1", "2", "4", "16"])
    cb.set_label("E2LLM / Splitwise mean waiting")
    ax.set_xlabel("share of conv-like requests (0 = code-like, 1 = conv-like)")
    ax.set_ylabel("load (x Splitwise's sustainable rate)")
    ax.set_title(title or f"{loadmap.cluster}: E2LLM / Splitwise mean waiting (black line: ratio 0.5)")
    fig.tight_layout()
    return fig
