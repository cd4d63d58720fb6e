"""The notebooks' widget glue: explorers leave a picture, refuse continuous updates, redraw on change."""

from __future__ import annotations

import ipywidgets as ipw
import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from e2llm_lite.costmodel import CostModel  # noqa: E402
from e2llm_lite.devices import preset  # noqa: E402
from e2llm_lite.widgets import Explorer, dp_what_if, explorer  # noqa: E402


def test_explorer_draws_the_default_then_redraws_on_change():
    calls = []
    ex = explorer(lambda n=1: calls.append(n), "a test",
                  n=ipw.IntSlider(value=2, min=1, max=5, continuous_update=False))
    assert isinstance(ex, Explorer) and calls == [2]      # the static picture of the default state
    ex.controls["n"].value = 4
    assert calls == [2, 4]
    bundle = ex._repr_mimebundle_()
    data = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "application/vnd.jupyter.widget-view+json" in data
    assert data["text/plain"].startswith("[widget: a test")


def test_explorer_refuses_continuous_updates():
    with pytest.raises(ValueError, match="continuous_update=False"):
        explorer(lambda n=1: None, "x", n=ipw.IntSlider(value=1))


def test_dp_what_if_changes_the_plan():
    cm, home4 = CostModel.load(), preset("home4")
    same = dp_what_if(home4, cm, "orin")
    assert same["yours (DP)"].stages == same["home (DP)"].stages
    slow = dp_what_if(home4, cm, "orin", speed=0.125)
    assert slow["yours (DP)"].bottleneck > slow["home (DP)"].bottleneck
