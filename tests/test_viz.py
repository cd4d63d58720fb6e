"""Plot helpers return Figures with the expected pieces (no pixels are compared)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from e2llm_lite import viz
from e2llm_lite.planning.dp import partition

NAMES = ["A", "B", "C"]
COMPUTE = np.array([[1.0] * 6, [2.0] * 6, [4.0] * 6])
MEM = np.ones(6)
DEV_MEM = np.array([2.0, 3.0, 6.0])
COMM = np.full((3, 3), 2.0) - 2 * np.eye(3)


@pytest.fixture(scope="module")
def plan():
    return partition(COMPUTE, MEM, DEV_MEM, COMM)  # A 0-1, C 2, B 3-5: times 4, 6, 6


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_plot_partition_stacks_compute_and_transfer(plan):
    fig = viz.plot_partition(plan, NAMES, COMM)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    n = len(plan.stages)
    assert len(ax.patches) == 2 * n + 1  # compute + transfer per stage + the bottleneck outline
    heights = [p.get_height() for p in ax.patches[:n]]
    transfers = [p.get_height() for p in ax.patches[n:2 * n]]
    assert heights == pytest.approx([2.0, 4.0, 6.0]) and transfers == pytest.approx([2.0, 2.0, 0.0])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A\nlayers 0–1", "C\nlayer 2", "B\nlayers 3–5"]
    assert any("bottleneck 6" in t.get_text() for t in ax.texts)
    # without comm each stage is one bar
    assert len(viz.plot_partition(plan, NAMES).axes[0].patches) == n + 1


def test_plot_partitions_one_panel_per_plan(plan):
    other = partition(COMPUTE, MEM, DEV_MEM, COMM, objective="latency")
    fig = viz.plot_partitions({"bottleneck": plan, "latency": other}, NAMES, COMM, suptitle="x")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert fig.axes[0].get_ylim() == fig.axes[1].get_ylim()


def test_plot_layer_map_one_segment_per_stage(plan):
    fig = viz.plot_layer_map({"DP": plan, "by hand": [(0, 0, 1), (1, 1, 4), (2, 4, 6)]}, NAMES)
    ax = fig.axes[0]
    assert isinstance(fig, Figure)
    assert len(ax.patches) == 3 + 3
    assert [t.get_text() for t in ax.get_yticklabels()] == ["DP", "by hand"]
    assert ax.get_xlim() == (0, 6)


def test_pipeline_rows_period_is_the_bottleneck(plan):
    rows = viz.pipeline_rows(plan, NAMES, COMM, n_items=4)
    assert len(rows) == 4 * len(plan.stages)
    exits = [r["end_ms"] for r in rows if r["device"] == "B"]
    assert np.diff(exits) == pytest.approx([plan.bottleneck] * 3)
    assert exits[0] == pytest.approx(plan.latency)  # the first item meets no queue
    fig = viz.plot_pipeline(plan, NAMES, COMM, n_items=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].collections) == 4 * 3 + 4 * 2  # compute bars + transfer bars
