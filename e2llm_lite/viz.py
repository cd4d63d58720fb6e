"""Plots for the notebooks and reports (matplotlib). Every function returns the Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt

MIB = 2 ** 20


def plot_anatomy(anatomy, ax=None):
    """Bytes (MiB, fp32) of each piece of the model in pipeline order: embedding, layers, head."""
    names = ["embed"] + [str(i) for i in range(anatomy.n_layers)] + ["norm+\nlm_head"]
    sizes = ([anatomy.embed_bytes] + [anatomy.layer_bytes] * anatomy.n_layers
             + [anatomy.embed_bytes + anatomy.norm_bytes])
    fig, ax = _fig_ax(ax, (10, 3))
    colors = ["tab:orange"] + ["tab:blue"] * anatomy.n_layers + ["tab:green"]
    ax.bar(range(len(sizes)), [s / MIB for s in sizes], color=colors)
    ax.set_xticks(range(len(sizes)), names, fontsize=7)
    ax.set_ylabel("MiB (fp32)")
    ax.set_title("SmolLM2-135M: weights a stage must hold, by piece "
                 "(the lm_head is the tied embedding, copied onto the last stage)")
    fig.tight_layout()
    return fig


def plot_stage_memory(stages, ax=None):
    """Stacked bars per stage: weights and KV cache (MiB) it holds right now."""
    fig, ax = _fig_ax(ax, (6, 3))
    labels = [f"[{s.start},{s.end})" for s in stages]
    w = [s.weight_bytes / MIB for s in stages]
    kv = [s.kv_bytes() / MIB for s in stages]
    ax.bar(labels, w, label="weights", color="tab:blue")
    ax.bar(labels, kv, bottom=w, label="KV cache", color="tab:red")
    ax.set_ylabel("MiB")
    ax.set_xlabel("stage (layer range)")
    ax.legend()
    fig.tight_layout()
    return fig


def _fig_ax(ax, size):
    if ax is None:
        fig, ax = plt.subplots(figsize=size)
    else:
        fig = ax.figure
    return fig, ax


# ---------------------------------------------------------------- devices and the cost model

def catalog_table(catalog) -> str:
    """The device catalog as a text table: speeds relative to one host thread, memory (MiB)."""
    rows = [f"{'kind':22s} {'tier':5s} {'prefill':>8s} {'decode':>7s} {'pre/dec':>8s} "
            f"{'memory MiB':>10s}  spec (fp32 GFLOP/s, GB/s, RAM GiB)"]
    for kind, e in catalog.items():
        spec = e.get("spec")
        s = (f"{spec['fp32_gflops']:g}, {spec['memory_gbps']:g}, {spec['ram_gib']:g}"
             if spec else "one thread of this host")
        rows.append(f"{kind:22s} {e['tier']:5s} {e['prefill_speed']:8.2f} {e['decode_speed']:7.2f} "
                    f"{e['prefill_speed'] / e['decode_speed']:8.2f} {e['memory_mib']:10.1f}  {s}")
    return "\n".join(rows)


def plot_catalog(catalog, ax=None):
    """Prefill speed vs decode speed of every device kind (log-log); marker area ~ memory budget.

    Above the diagonal a device is relatively better at prefill (compute) than the host thread,
    below it relatively better at decode (memory bandwidth).
    """
    fig, ax = _fig_ax(ax, (6.5, 5))
    lo, hi = 0.3, 40
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
    ax.text(lo * 1.3, lo * 1.15, "equally good at both", color="grey", fontsize=8, rotation=45)
    colors = {"host": "black", "edge": "tab:blue", "fog": "tab:red"}
    for kind, e in catalog.items():
        ax.scatter(e["decode_speed"], e["prefill_speed"], s=20 + min(e["memory_mib"], 2000) / 8,
                   color=colors.get(e["tier"], "tab:grey"), alpha=0.7, edgecolor="k")
        ax.annotate(kind, (e["decode_speed"], e["prefill_speed"]), textcoords="offset points",
                    xytext=(6, -3), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("decode speed (memory GB/s ÷ 10)")
    ax.set_ylabel("prefill speed (fp32 GFLOP/s ÷ 100)")
    ax.set_title("device catalog: speeds relative to one host thread\n"
                 "(marker area ~ memory budget; above the line = relatively better at prefill)")
    fig.tight_layout()
    return fig


def plot_profile(cm, axes=None):
    """Measured per-layer times of a profile (dots: fit points, circles: held out) and the fit.

    Left: prefill vs prompt tokens. Right: decode vs context for several batch sizes.
    """
    import numpy as np

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    else:
        fig = axes[0].figure
    ax = axes[0]
    pre = [m for m in cm.measurements if m["op"] == "prefill_layer"]
    for role, mk in (("fit", "o"), ("holdout", "s")):
        pts = [m for m in pre if m.get("role") == role]
        ax.scatter([m["tokens"] for m in pts], [m["ms"] for m in pts], marker=mk,
                   facecolor="tab:blue" if role == "fit" else "none", edgecolor="tab:blue",
                   label=f"measured ({role})", zorder=3)
    tmax = max([m["tokens"] for m in pre] + [16])
    t = np.unique(np.geomspace(1, tmax * 1.3, 200).astype(int))
    ax.plot(t, [cm.layer_ms("prefill", tokens=int(x)) for x in t], color="tab:blue", label="fit")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("ms per decoder layer (host, 1 thread)")
    ax.set_title("prefill: grows with the prompt (compute-bound)")
    ax.legend(fontsize=8)
    ax = axes[1]
    dec = [m for m in cm.measurements if m["op"] == "decode_layer"]
    batches = sorted({m["batch"] for m in dec}) or [1]
    cmax = max([m["context"] for m in dec] + [64])
    c = np.geomspace(1, cmax * 1.3, 100)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(batches)))
    for b, col in zip(batches, colors):
        pts = [m for m in dec if m["batch"] == b]
        for role, mk in (("fit", "o"), ("holdout", "s")):
            q = [m for m in pts if m.get("role") == role]
            ax.scatter([m["context"] for m in q], [m["ms"] for m in q], marker=mk,
                       facecolor=col if role == "fit" else "none", edgecolor=col, zorder=3)
        ax.plot(c, [cm.layer_ms("decode", batch=b, context=int(x)) for x in c], color=col,
                label=f"batch {b}")
    ax.set_xscale("log")
    ax.set_xlabel("context (tokens already cached per sequence)")
    ax.set_ylabel("ms per decoder layer, one step")
    ax.set_ylim(0, None)
    ax.set_title("decode: nearly flat in context (memory-bound)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def plot_predicted_vs_measured(cm, ax=None):
    """Every measurement of a profile: predicted vs measured ms (log-log), held-out points open."""
    fig, ax = _fig_ax(ax, (5.5, 5))
    colors = {"prefill_layer": "tab:blue", "decode_layer": "tab:orange", "embed": "tab:grey",
              "head": "tab:green"}
    lo, hi = float("inf"), 0.0
    for op, col in colors.items():
        for role in ("fit", "holdout"):
            pts = [m for m in cm.measurements if m["op"] == op and m.get("role") == role and m["ms"] > 0]
            if not pts:
                continue
            x = [m["ms"] for m in pts]
            y = [cm.predict(m) for m in pts]
            lo, hi = min(lo, *x, *y), max(hi, *x, *y)
            ax.scatter(x, y, color=col if role == "fit" else "none", edgecolor=col,
                       label=f"{op} ({role})", s=25)
    if hi > 0:
        ax.plot([lo, hi], [lo, hi], color="k", lw=1)
        ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="grey",
                        alpha=0.15, label="±10 %")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("measured ms")
    ax.set_ylabel("predicted ms")
    ax.set_title("cost model: predicted vs measured")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_device_times(cm, devices, tokens: int = 512, context: int | None = None,
                      highlight: str | None = None, ax=None):
    """For each device: prefill of a ``tokens`` prompt and one decode step, whole model (ms, log)."""
    import numpy as np

    fig, ax = _fig_ax(ax, (10, 4))
    rows = [cm.device_summary(d, tokens=tokens, context=context) for d in devices]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["prefill_ms"] for r in rows], 0.4, label=f"prefill, {tokens} tokens",
           color="tab:blue")
    ax.bar(x + 0.2, [r["decode_step_ms"] for r in rows], 0.4,
           label=f"one decode step (context {rows[0]['context'] if rows else tokens})", color="tab:orange")
    ax.set_xticks(x, [r["device"] for r in rows], rotation=20, ha="right", fontsize=8)
    for i, r in enumerate(rows):
        if r["device"] == highlight:
            ax.get_xticklabels()[i].set_fontweight("bold")
            ax.axvspan(i - 0.5, i + 0.5, color="gold", alpha=0.3, zorder=0)
    ax.set_yscale("log")
    ax.set_ylabel("device ms, whole model (30 layers + ends)")
    ax.set_title("the same work on different devices (cost model)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def roofline_table(cm, cases) -> str:
    """Work and achieved rates of one decoder layer, one row per case.

    cases: list of (phase, shape dict), e.g. ``("prefill", {"tokens": 512})``.
    """
    rows = [f"{'case':34s} {'ms':>7s} {'GFLOP':>7s} {'MB moved':>8s} {'FLOP/B':>7s} "
            f"{'GFLOP/s':>8s} {'GB/s':>6s}"]
    for phase, shape in cases:
        r = cm.roofline(phase, **shape)
        label = phase + " " + ", ".join(f"{k} {v}" for k, v in shape.items())
        rows.append(f"{label:34s} {r['ms']:7.2f} {r['gflop']:7.3f} {r['mbytes']:8.1f} "
                    f"{r['flop_per_byte']:7.1f} {r['gflops']:8.1f} {r['gbps']:6.2f}")
    return "\n".join(rows)


def device_table(cm, devices, tokens: int = 512, context: int | None = None) -> str:
    """Per device: whole-model prefill of a ``tokens`` prompt and one decode step (device ms)."""
    rows = [f"{'device':22s} {'prefill ms':>10s} {'tok/s':>7s} {'decode ms':>10s} {'tok/s':>6s}  "
            f"{'better at':9s}"]
    for d in devices:
        r = cm.device_summary(d, tokens=tokens, context=context)
        rows.append(f"{r['device']:22s} {r['prefill_ms']:10.1f} {r['prefill_tokens_per_s']:7.0f} "
                    f"{r['decode_step_ms']:10.2f} {r['decode_tokens_per_s']:6.1f}  "
                    + (r["better_at"] if r["better_at"] == "balanced" else
                       f"{r['better_at']} (x{max(r['strength'], 1 / r['strength']):.2f})"))
    return "\n".join(rows)


PHASE_COLORS = {"prefill": "tab:orange", "decode": "tab:blue"}


def plot_timeline(rows, ax=None, title: str | None = None):
    """Gantt chart of an emulated run: who computed when (device ms), links hatched, gaps = waiting.

    ``rows`` are ``EmulatedCluster.timeline()`` rows (device, phase, start_ms, end_ms, link_ms).
    """
    devices = list(dict.fromkeys(r["device"] for r in rows))
    fig, ax = _fig_ax(ax, (10, 0.6 * len(devices) + 1.5))
    for y, dev in enumerate(devices):
        mine = [r for r in rows if r["device"] == dev]
        for phase, color in PHASE_COLORS.items():
            spans = [(r["start_ms"], r["end_ms"] - r["start_ms"]) for r in mine if r["phase"] == phase]
            if spans:
                ax.broken_barh(spans, (y - 0.35, 0.7), color=color, label=phase if y == 0 else None)
        links = [(r["end_ms"], r["link_ms"]) for r in mine if r["link_ms"] > 0]
        if links:
            ax.broken_barh(links, (y - 0.15, 0.3), facecolor="none", edgecolor="gray", hatch="///",
                           label="link" if y == 0 else None)
    ax.set_yticks(range(len(devices)), devices)
    ax.invert_yaxis()
    ax.set_xlabel("device time (ms)")
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(),
                  loc="upper right", fontsize=8)
    ax.set_title(title or "timeline: compute (bars), link transfers (hatched), waiting (gaps)")
    fig.tight_layout()
    return fig
