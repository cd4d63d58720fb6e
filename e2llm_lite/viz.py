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
