"""Widget glue for the notebooks: computed prose, and explorers that leave a picture behind.

* :func:`say` — show Markdown written from computed values, so a sentence with a figure in it is
  an *output* of the notebook and cannot go stale when the profile changes.
* :func:`explorer` — a widget for "what if?": it first draws the default state once as an
  ordinary output (a reader who opens the committed notebook without running it sees that
  picture), then shows the controls; moving one redraws below them. Controls must not update
  continuously (``continuous_update=False``: one redraw per release, not per pixel).
"""

from __future__ import annotations

from typing import Callable

import ipywidgets as ipw
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

__all__ = ["Explorer", "explorer", "say"]


def say(text: str) -> None:
    """Display ``text`` as Markdown (computed prose: write it as an f-string of the figures)."""
    display(Markdown(text))


class Explorer:
    """The controls and output of :func:`explorer`; displays as the widget, and as a one-line
    description where widgets cannot be shown (a notebook viewer without a kernel)."""

    def __init__(self, fn: Callable, controls: dict, description: str):
        self.fn, self.controls, self.description = fn, controls, description
        self.output = ipw.Output()
        for c in controls.values():
            c.observe(self._redraw, names="value")
        self.box = ipw.VBox([ipw.HBox(list(controls.values()), layout=ipw.Layout(flex_flow="row wrap")),
                             self.output])

    @property
    def values(self) -> dict:
        return {k: c.value for k, c in self.controls.items()}

    def _redraw(self, _change=None) -> None:
        with self.output:
            self.output.clear_output(wait=True)
            self.fn(**self.values)
            plt.show()

    def _repr_mimebundle_(self, **kwargs):
        bundle = self.box._repr_mimebundle_(**kwargs)
        data = bundle[0] if isinstance(bundle, tuple) else bundle
        data["text/plain"] = (f"[widget: {self.description} — run the notebook to move it; the "
                              f"picture above is its default state]")
        return bundle


def explorer(fn: Callable, description: str, **controls) -> Explorer:
    """Draw ``fn(**defaults)`` now (a static picture of the default state), then return the widget
    whose ``controls`` (ipywidgets, keyword = ``fn``'s parameter) redraw ``fn`` below them.

    Raises ValueError for a control that updates continuously.
    """
    for name, c in controls.items():
        if getattr(c, "continuous_update", False):
            raise ValueError(f"control {name!r} must have continuous_update=False")
    ex = Explorer(fn, controls, description)
    fn(**ex.values)
    plt.show()
    return ex
