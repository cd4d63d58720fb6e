"""Plots for the notebooks and reports (matplotlib). Every function returns the Figure."""

from __future__ import annotations

import matplotlib.pyplot as plt

from .memory import MIB
from .planning.queueing import mmc_wait

#: Readable at the notebooks' default size: no text below 9 pt.
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9,
         "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 11}
plt.rcParams.update(STYLE)


def plot_anatomy(anatomy, ax=None):
    """Bytes (MiB, fp32) of each piece of the model in pipeline order: embedding, layers, head."""
    names = ["embed"] + [str(i) if i % 5 == 0 and 0 < i < anatomy.n_layers - 2 else ""
                         for i in range(anatomy.n_layers)] + ["norm +\nlm_head"]
    sizes = ([anatomy.embed_bytes] + [anatomy.layer_bytes] * anatomy.n_layers
             + [anatomy.embed_bytes + anatomy.norm_bytes])
    fig, ax = _fig_ax(ax, (10, 3.4))
    colors = ["tab:orange"] + ["tab:blue"] * anatomy.n_layers + ["tab:green"]
    ax.bar(range(len(sizes)), [s / MIB for s in sizes], color=colors)
    ax.set_xticks(range(len(sizes)), names)
    ax.set_xlabel("piece of the model, in pipeline order (decoder layers numbered 0 .. "
                  f"{anatomy.n_layers - 1})")
    ax.set_ylabel("MiB (fp32)")
    ax.set_title("SmolLM2-135M: the weights a stage must hold, by piece\n"
                 "(the lm_head is the tied embedding, copied onto the last stage)")
    fig.tight_layout()
    return fig


def plot_stage_memory(stages, title=None):
    """What each stage holds right now, in two panels (the KV cache is ~1000x smaller than the
    weights, so one stacked bar would hide it): weights (MiB) and KV cache (KiB)."""
    fig, (aw, ak) = plt.subplots(1, 2, figsize=(10, 3.2))
    labels = [f"[{s.start},{s.end})" for s in stages]
    w = [s.weight_bytes / MIB for s in stages]
    kv = [s.kv_bytes() / 2 ** 10 for s in stages]
    for ax, values, color, unit, what in ((aw, w, "tab:blue", "MiB", "weights"),
                                          (ak, kv, "tab:red", "KiB", "KV cache")):
        bars = ax.bar(labels, values, color=color)
        ax.bar_label(bars, [f"{v:.1f}" for v in values], fontsize=9)
        ax.set_ylabel(f"{what} ({unit})")
        ax.set_xlabel("stage (layer range)")
        ax.set_title(what)
        ax.margins(y=0.15)
    if title:
        fig.suptitle(title)
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
    ax.text(lo * 1.3, lo * 1.15, "equally good at both", color="grey", fontsize=9, rotation=45)
    colors = {"host": "black", "edge": "tab:blue", "fog": "tab:red"}
    for kind, e in catalog.items():
        ax.scatter(e["decode_speed"], e["prefill_speed"], s=20 + min(e["memory_mib"], 2000) / 8,
                   color=colors.get(e["tier"], "tab:grey"), alpha=0.7, edgecolor="k")
        ax.annotate(kind, (e["decode_speed"], e["prefill_speed"]), textcoords="offset points",
                    xytext=(6, -3), fontsize=9)
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
    ax.legend(fontsize=9)
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
    ax.set_title("decode: one sequence barely grows with the context;\n"
                 "big batches x long contexts climb (memory-bound)")
    ax.legend(fontsize=9, ncol=2)
    fig.tight_layout()
    return fig


def plot_device_vs_host(cm, device, tokens: int = 512, host=None, ax=None):
    """One decoder layer's time on ``device`` next to one host thread (``host``: a DeviceSpec with
    speeds 1), for the prefill of a ``tokens``-token prompt and for one decode step at that
    context (log scale)."""
    fig, ax = _fig_ax(ax, (8.5, 3))
    s = cm.device_summary(device, tokens=tokens)
    labels = [f"prefill, {tokens} tokens", f"decode step, context {tokens}"]
    ax.barh([0.2, 1.2], [s["prefill_layer_ms"], s["decode_layer_ms"]], 0.4,
            label=getattr(device, "name", "device"))
    if host is not None:
        h = cm.device_summary(host, tokens=tokens)
        ax.barh([-0.2, 0.8], [h["prefill_layer_ms"], h["decode_layer_ms"]], 0.4,
                label="host thread", color="grey")
    ax.set_yticks([0, 1], labels)
    ax.set_xscale("log")
    ax.set_xlabel("ms per decoder layer")
    ax.set_title(f"{getattr(device, 'name', 'device')}: relatively better at {s['better_at']} "
                 f"(prefill / decode speed {s['strength']:.2f})")
    ax.legend()
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
    ax.legend(fontsize=9)
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
    ax.set_xticks(x, [r["device"] for r in rows], rotation=20, ha="right", fontsize=9)
    for i, r in enumerate(rows):
        if r["device"] == highlight:
            ax.get_xticklabels()[i].set_fontweight("bold")
            ax.axvspan(i - 0.5, i + 0.5, color="gold", alpha=0.3, zorder=0)
    ax.set_yscale("log")
    ax.set_ylabel("device ms, whole model (30 layers + ends)")
    ax.set_title("the same work on different devices (cost model)")
    ax.legend(fontsize=9)
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
    if handles:  # below the axes: never on top of a bar
        ax.legend(dict(zip(labels, handles)).values(), dict(zip(labels, handles)).keys(),
                  loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, frameon=False)
    ax.set_title(title or "timeline: compute (bars), link transfers (hatched), waiting (gaps)")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- partitions (notebook 02)

def _stage_split(partition, comm=None):
    """(compute ms, transfer ms) per stage of a Partition; without ``comm`` every transfer is 0.

    A stage's time is compute (+ embedding / head) + the transfer to the next stage, which is
    ``comm[device, next device]``; the last stage sends nothing.
    """
    devs = [d for d, _, _ in partition.stages]
    transfer = [0.0] * len(devs)
    if comm is not None:
        transfer = [float(comm[a][b]) for a, b in zip(devs, devs[1:])] + [0.0]
    compute = [t - x for t, x in zip(partition.stage_times, transfer)]
    return compute, transfer


def _layers(start, end):
    return f"layer {start}" if end - start == 1 else f"layers {start}–{end - 1}"


def plot_partition(partition, device_names, comm=None, ax=None, title=None, unit="ms"):
    """Stage bars of one plan: per stage (pipeline order) compute and transfer to the next stage,
    stacked (ms); the slowest stage — the bottleneck, which sets the pipeline's period — is outlined
    in red and marked by a dashed line.

    ``partition``: a :class:`~e2llm_lite.planning.dp.Partition`; ``device_names[i]`` names device
    index ``i``; ``comm``: the DP's ``comm`` matrix (ms), to split each bar into compute and
    transfer (without it a bar is the stage time in one piece).
    """
    fig, ax = _fig_ax(ax, (1.4 * len(partition.stages) + 2, 3.5))
    compute, transfer = _stage_split(partition, comm)
    x = list(range(len(compute)))
    labels = [f"{device_names[d]}\n{_layers(s, e)}" for d, s, e in partition.stages]
    ax.bar(x, compute, 0.6, color="tab:blue", label="compute")
    if comm is not None:
        ax.bar(x, transfer, 0.6, bottom=compute, color="lightgrey", edgecolor="grey", hatch="///",
               label="transfer to next stage")
    worst = max(range(len(x)), key=lambda i: partition.stage_times[i])
    top = partition.stage_times[worst]
    ax.bar([worst], [top], 0.6, fill=False, edgecolor="tab:red", lw=2.5)
    ax.axhline(top, color="tab:red", ls="--", lw=1)
    ax.annotate(f"bottleneck {top:.3g} {unit}", (worst, top), textcoords="offset points",
                xytext=(0, 4), ha="center", color="tab:red", fontsize=9)
    ax.set_xticks(x, labels, fontsize=9)
    ax.set_ylabel(f"stage time ({unit})")
    ax.set_ylim(0, top * 1.4)
    ax.set_title(title or f"{partition.objective} plan: bottleneck {partition.bottleneck:.3g} {unit}, "
                 f"latency {partition.latency:.3g} {unit}", fontsize=9)
    ax.legend(fontsize=9, loc="upper right", ncol=2)
    fig.tight_layout()
    return fig


def plot_partitions(plans, device_names, comm=None, unit="ms", suptitle=None):
    """Stage bars (see :func:`plot_partition`) of several plans side by side, on one y scale.

    ``plans``: label -> Partition, e.g. ``{"DP": p, "brute force": q, "exo": r}``.
    """
    plans = dict(plans)
    widths = [len(p.stages) + 1 for p in plans.values()]
    fig, axes = plt.subplots(1, len(plans), figsize=(min(0.95 * sum(widths) + 1.5, 15), 3.8), sharey=True,
                             gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, (label, p) in zip(axes[0], plans.items()):
        plot_partition(p, device_names, comm, ax=ax, unit=unit,
                       title=f"{label}\nbottleneck {p.bottleneck:.3g} {unit}, latency {p.latency:.3g} {unit}")
        ax.set_ylim(0, max(q.bottleneck for q in plans.values()) * 1.4)
    for ax in axes[0][1:]:
        ax.set_ylabel("")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def device_colors(device_names):
    """One fixed colour per device index (tab10), so every plot of a notebook agrees."""
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(len(device_names))]


def plot_layer_map(plans, device_names, n_layers=None, ax=None, title=None):
    """Which device holds which layers, one row per plan: a bar from layer 0 to the last, cut into
    the plan's stages, coloured by device (the same colour for a device in every row).

    ``plans``: label -> Partition (or a list of ``(device, start, end)`` stages).
    """
    plans = dict(plans)
    rows = {k: getattr(p, "stages", p) for k, p in plans.items()}
    n_layers = n_layers or max(e for st in rows.values() for _, _, e in st)
    fig, ax = _fig_ax(ax, (10, 0.55 * len(rows) + 1.2))
    colors = device_colors(device_names)
    for y, (label, stages) in enumerate(rows.items()):
        for d, s, e in stages:
            ax.barh(y, e - s, left=s, height=0.7, color=colors[d], edgecolor="white")
            name = str(device_names[d])
            if e - s >= 0.45 * len(name) + 0.5:  # a name that does not fit is left to the legend
                ax.text((s + e) / 2, y, name, ha="center", va="center", fontsize=9, color="white",
                        fontweight="bold")
    ax.set_yticks(range(len(rows)), list(rows))
    ax.invert_yaxis()
    ax.set_xlim(0, n_layers)
    ax.set_xticks(range(0, n_layers + 1, 5 if n_layers > 12 else 1))
    ax.set_xlabel("decoder layer")
    used = sorted({d for st in rows.values() for d, _, _ in st})
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[d]) for d in used]
    ax.legend(handles, [device_names[d] for d in used], fontsize=9, loc="center left",
              bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_title(title or "layer map: which device holds which layers")
    fig.tight_layout()
    return fig


def pipeline_rows(partition, device_names, comm=None, n_items=5, phase="prefill"):
    """A timeline of ``n_items`` requests flowing through a plan's pipeline, for :func:`plot_timeline`.

    All items are waiting at time 0. Item i starts on stage s when it has arrived there (the
    previous stage finished it and sent it) and stage s is free; a stage stays busy while it sends
    (the DP charges the transfer to the sender), so once the pipeline is full an item leaves every
    ``max(stage time)`` ms — the bottleneck is the pipeline's period. Rows: device, phase,
    start_ms, end_ms (compute), link_ms (transfer after it), item.
    """
    compute, transfer = _stage_split(partition, comm)
    rows, free = [], [0.0] * len(compute)
    for i in range(n_items):
        ready = 0.0
        for s, (d, _, _) in enumerate(partition.stages):
            start = max(ready, free[s])
            end = start + compute[s]
            free[s] = end + transfer[s]
            ready = free[s]
            rows.append({"device": device_names[d], "phase": phase, "start_ms": start,
                         "end_ms": end, "link_ms": transfer[s], "item": i})
    return rows


def plot_pipeline(partition, device_names, comm=None, n_items=5, ax=None, unit="ms", title=None):
    """Gantt chart of ``n_items`` requests flowing through a plan's pipeline (:func:`pipeline_rows`):
    one colour per item, transfers hatched, and the moments items leave the last stage marked —
    once the pipeline is full they are one bottleneck apart."""
    rows = pipeline_rows(partition, device_names, comm, n_items)
    names = [device_names[d] for d, _, _ in partition.stages]
    fig, ax = _fig_ax(ax, (10, 0.55 * len(names) + 1.8))
    colors = plt.get_cmap("viridis")([0.1 + 0.8 * i / max(n_items - 1, 1) for i in range(n_items)])
    for r in rows:
        y = names.index(r["device"])
        w = r["end_ms"] - r["start_ms"]
        ax.broken_barh([(r["start_ms"], w)], (y - 0.35, 0.7), color=colors[r["item"]],
                       edgecolor="white")
        ax.text(r["start_ms"] + w / 2, y, str(r["item"] + 1), ha="center", va="center",
                color="white", fontsize=9)
        if r["link_ms"] > 0:
            ax.broken_barh([(r["end_ms"], r["link_ms"])], (y - 0.15, 0.3), facecolor="none",
                           edgecolor="grey", hatch="///")
    exits = [r["end_ms"] for r in rows if r["device"] == names[-1]]
    for t in exits:
        ax.axvline(t, color="tab:red", lw=0.8, ls=":")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.4, -0.9)
    if len(exits) >= 2:
        gap = exits[-1] - exits[-2]
        ax.annotate("", xy=(exits[-1], -0.6), xytext=(exits[-2], -0.6),
                    arrowprops={"arrowstyle": "<->", "color": "tab:red"})
        ax.text((exits[-1] + exits[-2]) / 2, -0.65, f"{gap:.3g} {unit}", ha="center", va="bottom",
                color="tab:red", fontsize=9)
    ax.set_xlabel(f"time ({unit})")
    ax.set_title(title or f"{n_items} requests through the pipeline (numbers = request; hatched = "
                 f"transfer; red dotted = a request leaves)", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- serving plans (notebooks 03, 05)

ROLE_COLORS = {"prefill": "tab:orange", "decoder": "tab:blue", "both": "tab:purple"}


def _history_dict(history):
    """A GA History or its dict form (``plan.search["history"]``) -> dict of lists."""
    return history.to_dict() if hasattr(history, "to_dict") else dict(history)


def plot_convergence(history, ax=None, random_trace=None, title=None, log=True):
    """GA convergence: best-so-far and population median fitness (s) against the number of
    distinct evaluations. ``history``: a :class:`~e2llm_lite.planning.ga.History` or
    ``plan.search["history"]``; ``random_trace``: random search's best-so-far after each
    evaluation (:func:`~e2llm_lite.planning.random_search`), drawn for comparison. Fitness above
    10^4 s means "overloaded" (the evaluator's penalty)."""
    h = _history_dict(history)
    fig, ax = _fig_ax(ax, (7, 3.5))
    ev = h["evaluations"]
    middle = h.get("median") or h["mean"]
    ax.plot(ev, middle, color="tab:grey", lw=1,
            label="population median" if h.get("median") else "population mean")
    ax.step(ev, h["best"], where="post", color="tab:red", lw=2, label="GA best so far")
    if random_trace is not None:
        ax.plot(range(1, len(random_trace) + 1), random_trace, color="tab:blue", lw=1.5, ls="--",
                label="random search best so far")
    if log:
        ax.set_yscale("log")
    ax.axhspan(1e4, max(max(middle), max(h["best"]), 1e4) * 10, color="tab:red", alpha=0.06)
    ax.set_xlabel("distinct evaluations")
    ax.set_ylabel("fitness: mean waiting time (s)")
    ax.set_title(title or "GA convergence (shaded: overloaded plans, penalised)")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def plot_plan(plan, ax=None, title=None):
    """A serving plan: one row per replica (its role in the label, coloured by role — key below),
    a bar over layers 0..30 cut into the replica's stages, coloured by device (one colour per
    device of the cluster, as in :func:`plot_layer_map`; a device's name is written on its stage
    when it fits, the legend on the right names them all). ``plan``: a
    :class:`~e2llm_lite.planning.Plan`."""
    names = plan.devices or sorted({d for r in plan.replicas for d in r.devices})
    colors = dict(zip(names, device_colors(names)))
    L = max(e for r in plan.replicas for _, _, e in r.stages)
    fig, ax = _fig_ax(ax, (11, 0.6 * len(plan.replicas) + 2.0))
    used = []
    for y, r in enumerate(plan.replicas):
        for dev, s, e in r.stages:
            ax.barh(y, e - s, left=s, color=colors.get(dev, "tab:grey"), edgecolor="white", height=0.7)
            used.append(dev)
            if e - s >= 0.42 * len(dev) + 0.5:
                ax.text((s + e) / 2, y, dev, ha="center", va="center", fontsize=9, color="white",
                        fontweight="bold")
        extra = (f"{r.prefill_period_s * 1e3:.0f} ms/prompt" if r.role == "prefill" else
                 f"B={r.batch}, {r.tokens_per_s:.0f} tok/s" if r.role == "decoder" else
                 f"{r.prefill_period_s * 1e3:.0f} ms/prompt, B={r.batch}")
        ax.text(L + 0.3, y, extra, va="center", fontsize=9)
    ax.set_yticks(range(len(plan.replicas)), [f"{r.name} {r.role}" for r in plan.replicas])
    for tick, r in zip(ax.get_yticklabels(), plan.replicas):
        tick.set_color(ROLE_COLORS.get(r.role, "black"))
    ax.set_xlim(0, L * 1.3)
    ax.set_ylim(len(plan.replicas) - 0.5, -0.5)
    ax.set_xlabel("layers")
    devs = [d for d in names if d in used]
    roles = list(dict.fromkeys(r.role for r in plan.replicas))
    handles = ([plt.Rectangle((0, 0), 1, 1, color=colors[d]) for d in devs]
               + [plt.Line2D([], [], ls="", marker="s", color=ROLE_COLORS.get(r, "black")) for r in roles])
    ax.legend(handles, devs + [f"role: {r} (label colour)" for r in roles], loc="center left",
              bbox_to_anchor=(1.01, 0.5), frameon=False, ncol=1 + (len(handles) > 2 * len(plan.replicas) + 4))
    p = plan.predicted or {}
    wait = (f"mean waiting {p['mean_wait_s']:.3g} s" if p.get("feasible")
            else "overloaded" if p else "")
    ax.set_title(title or f"{plan.strategy} on {plan.cluster} — {plan.workload.name} at "
                 f"{plan.rate:g} req/s: {wait}")
    fig.tight_layout()
    return fig


def plot_method_comparison(rows, ax=None, title=None):
    """Horizontal bars of predicted mean waiting (s) per search method: ``rows`` = (label, waiting
    s, evaluations or None)."""
    fig, ax = _fig_ax(ax, (8, 0.5 * len(rows) + 1.2))
    palette = ["tab:green", "tab:red", "tab:blue", "tab:cyan", "tab:grey", "tab:purple"]
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color=palette[:len(rows)])
    for y, (_, f, ev) in enumerate(rows):
        ax.text(f, y, f" {f:.3f} s" + ("" if ev is None else f"  ({ev} evaluations)"), va="center")
    ax.invert_yaxis()
    ax.set_xlim(0, max(r[1] for r in rows) * 1.6)
    ax.set_xlabel("predicted mean waiting time (s), lower is better")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_queueing_basics(loads=None):
    """The queueing formulas of the evaluator, from one server up: left, M/M/1 (mean wait in units
    of the service time vs the load rho); right, c servers sharing one queue with the same total
    capacity (M/M/c, Erlang C), and the Allen-Cunneen factor for less or more variable traffic."""
    import numpy as np

    rho = np.linspace(0.02, 0.97, 120) if loads is None else np.asarray(loads)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    a1.plot(rho, rho / (1 - rho), color="tab:blue", label="M/M/1: $W_q = s\\,\\rho/(1-\\rho)$")
    a1.set_xlabel("load $\\rho = \\lambda s$ (fraction of the server's capacity)")
    a1.set_ylabel("mean wait / service time $s$")
    a1.set_yscale("log")
    a1.set_title("one server: the wait explodes as the load nears 1")
    a1.legend()
    for c, col in zip((1, 2, 4, 8), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        # total capacity 1 request per unit of time: each server is c times slower
        a2.plot(rho, [mmc_wait(r, c, 1.0) for r in rho], color=col, label=f"M/M/c, c = {c}")
    for k, ls in ((0.5, ":"), (2.0, "--")):
        a2.plot(rho, [k * mmc_wait(r, 4, 1.0) for r in rho], color="tab:green", ls=ls,
                label=f"c = 4, $(c_a^2 + c_s^2)/2$ = {k:g}")
    a2.set_xlabel("load $\\lambda / M$ (total capacity $M$ = 1 request per unit of time)")
    a2.set_ylabel("mean wait (units of time)")
    a2.set_yscale("log")
    a2.set_ylim(1e-3, None)
    a2.set_title("c servers, one queue, same total capacity")
    a2.legend(ncol=2)
    fig.tight_layout()
    return fig


def plot_wait_vs_rate(curves, ax=None, title=None):
    """Predicted mean waiting time (s, log scale) against the arrival rate, one line per strategy.
    ``curves``: {strategy: (rates, waits)}; an overloaded point (wait None / inf) ends the line."""
    import math

    fig, ax = _fig_ax(ax, (7, 4))
    for name, (rates, waits) in curves.items():
        pts = [(r, w) for r, w in zip(rates, waits) if w is not None and math.isfinite(w) and w > 0]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (requests/s)")
    ax.set_ylabel("predicted mean waiting time (s)")
    ax.set_title(title or "waiting time vs load (a line ends where the plan is overloaded)")
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


# ---- serving ---------------------------------------------------------------------------------
SERVING_METRICS = {"waiting_s": "waiting", "ttft_s": "TTFT",
                   "tbt_s": "mean TBT", "e2e_s": "end-to-end"}


def plot_latency_cdfs(runs: dict, metrics=("waiting_s", "ttft_s", "e2e_s"), title=None):
    """One panel per metric: the CDF of each run's per-request values (s, log scale).
    ``runs``: label -> rows of :func:`~e2llm_lite.serving.metrics.request_rows`."""
    import numpy as np

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for label, rows in runs.items():
            v = np.sort([r[m] for r in rows if r[m] is not None])
            if v.size:
                ax.step(np.maximum(v, 1e-4), np.arange(1, v.size + 1) / v.size, where="post",
                        label=label)
        ax.set_xscale("log")
        ax.set_xlabel(f"{SERVING_METRICS.get(m, m)} (s)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.suptitle((title + "\n" if title else "") + "per-request CDFs, device time (values under "
                 "0.1 ms drawn at 0.1 ms)")
    fig.tight_layout()
    return fig


def plot_serving_timeline(result, t0: float = 0.0, t1: float | None = None, ax=None, title=None):
    """Replicas over time (a simulation run with ``timeline=True``): each iteration a bar on its
    replica's row — blue: prompts only, orange: decode only, purple: both — and each KV hand-off
    an arrow from the prefill replica to the decoder, between ``t0`` and ``t1`` (s)."""
    from matplotlib.patches import Patch

    names = list(result.replica_devices)
    row = {n: i for i, n in enumerate(names)}
    t1 = result.end_s if t1 is None else t1
    fig, ax = _fig_ax(ax, (11, 0.8 + 0.7 * len(names)))
    colors = {(True, False): "tab:blue", (False, True): "tab:orange", (True, True): "tab:purple"}
    for rep, start, end, prompts, decodes in result.iterations:
        if end < t0 or start > t1:
            continue
        ax.barh(row[rep], end - start, left=start, height=0.6,
                color=colors[(prompts > 0, decodes > 0)], edgecolor="white", linewidth=0.3)
    for _, src, dst, start, end in result.handoffs:
        if t0 <= start <= t1:
            ax.annotate("", xy=(end, row[dst]), xytext=(start, row[src]),
                        arrowprops=dict(arrowstyle="->", color="tab:green", lw=0.8))
    ax.set_yticks(range(len(names)), [f"{n}\n({len(result.replica_devices[n])} dev.)" for n in names])
    ax.set_xlim(t0, t1)
    ax.invert_yaxis()
    ax.set_xlabel("device time (s)")
    ax.legend(handles=[Patch(color="tab:blue", label="prefill"), Patch(color="tab:orange",
                       label="decode step"), Patch(color="tab:purple", label="prefill + decode"),
                       Patch(color="tab:green", label="KV hand-off (arrow)")],
              loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)   # beside the bars
    ax.set_title(title or "what each replica runs over time")
    fig.tight_layout()
    return fig


#: How each kind of scheduler mark is drawn on a timeline: (colour, line style, label).
MARK_STYLE = {"failure": ("tab:red", "-", "device failed"), "join": ("tab:green", "-", "device joined"),
              "replan": ("0.4", ":", "re-plan asked"), "loaded": ("tab:blue", "--", "replica loaded"),
              "stopped": ("black", "-", "service stopped")}


def plot_marks(ax, marks, kinds=tuple(MARK_STYLE)) -> None:
    """Vertical lines at the scheduler's marks (``(time s, kind, detail)``) of ``kinds``."""
    seen = set()
    for t, kind, _ in marks:
        if kind not in kinds or kind not in MARK_STYLE:
            continue
        color, style, label = MARK_STYLE[kind]
        ax.axvline(t, color=color, ls=style, lw=1.2, label=None if kind in seen else label)
        seen.add(kind)


def plot_waiting_over_time(records, marks=(), ax=None, title=None, window: int = 25):
    """Each request's waiting time (s) at its arrival (dots; requests re-queued after a failure
    or evicted by a rolling change in red) with the rolling mean of ``window`` requests, and the scheduler's marks (failures,
    joins, re-plans, replicas loaded) as vertical lines."""
    import numpy as np

    fig, ax = _fig_ax(ax, (10, 3.6))
    rows = sorted((r.arrival_s, r.prefill_start_s - r.arrival_s, r.restarts > 0) for r in records
                  if r.prefill_start_s is not None)
    if rows:
        t = np.array([a for a, _, _ in rows])
        w = np.array([b for _, b, _ in rows])
        again = np.array([c for _, _, c in rows], dtype=bool)
        ax.scatter(t[~again], w[~again], s=6, color="tab:gray", alpha=0.5, label="a request")
        if again.any():
            ax.scatter(t[again], w[again], s=14, color="tab:red",
                       label="re-queued (a failure, or evicted by a roll-out)")
        k = max(1, min(window, len(w)))
        ax.plot(t[k - 1:], np.convolve(w, np.ones(k) / k, mode="valid"), color="tab:blue",
                lw=1.6, label=f"mean of the last {k}")
    plot_marks(ax, marks)
    ax.set_xlabel("arrival (device s)")
    ax.set_ylabel("waiting time (s)")
    ax.set_title(title or "waiting time over the run")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig
