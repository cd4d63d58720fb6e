"""Where roles pay, and where not: the E2LLM / Splitwise mean-waiting ratio over load x workload.

The workload axis is the share ``w`` of conv-like requests in a stationary mixture of the two
built-in profiles (:meth:`~e2llm_lite.workload.LengthDist.mixture`: ``w = 0`` is all code — long
prompts, short answers — and ``w = 1`` all conv). For each ``w`` a full :func:`~.run.compare` of
``e2llm`` and ``splitwise`` runs at the loads (fractions of Splitwise's sustainable rate *for that
mix*, so each column has its own rate); a cell is the ratio of the seed-averaged mean waiting
times, NaN when either is saturated (drawn "sat.").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..workload import LengthDist, Workload
from .run import compare

__all__ = ["DEFAULT_MIXES", "LoadMap", "load_map", "mix_workload"]

DEFAULT_MIXES = (0.0, 0.25, 0.5, 0.75, 1.0)


def mix_workload(share_conv: float, seed: int = 0) -> Workload:
    """Poisson arrivals (rate replaced later) of the stationary code/conv mixture with
    ``share_conv`` of conv requests."""
    lengths = LengthDist.mixture(LengthDist.profile("code"), LengthDist.profile("conv"), share_conv,
                                 name=f"conv share {share_conv:g}")
    return Workload(lengths, rate=1.0, seed=seed)


@dataclass
class LoadMap:
    """``ratio[i][j]``: load ``loads[i]``, mix ``mixes[j]`` (None = saturated / undefined);
    ``saturation_rps[j]``: Splitwise's sustainable rate for mix ``j`` (requests/s)."""

    cluster: str
    loads: tuple
    mixes: tuple
    ratio: list
    saturation_rps: list
    comparisons: list = field(default_factory=list, repr=False)

    def to_json(self) -> dict:
        return {"cluster": self.cluster, "loads": list(self.loads), "mixes": list(self.mixes),
                "ratio_waiting": [[None if v != v else v for v in row] for row in self.ratio],
                "saturation_rps": self.saturation_rps}


def load_map(cluster, *, loads=(0.3, 0.5, 0.7, 0.9), mixes=DEFAULT_MIXES, seeds=(0,), n: int = 300,
             costmodel=None, progress=None) -> LoadMap:
    """Run the map of the module docstring. ``progress``: called with ``(done, total, text)``
    after each mix."""
    loads = tuple(float(x) for x in loads)
    mixes = tuple(float(w) for w in mixes)
    if any(not 0 <= w <= 1 for w in mixes):
        raise ValueError(f"mixes are shares of conv requests in [0, 1], got {mixes!r}")
    ratio = [[float("nan")] * len(mixes) for _ in loads]
    sat, comps = [], []
    for j, w in enumerate(mixes):
        c = compare(cluster, mix_workload(w), loads=loads, strategies=("e2llm", "splitwise"),
                    seeds=seeds, n=n, costmodel=costmodel)
        comps.append(c)
        sat.append(c.saturation_rps)
        for i, x in enumerate(loads):
            r = c.result("e2llm", x)["ratio_vs_splitwise"]["waiting_s"]
            if r is not None:
                ratio[i][j] = r
        if progress:
            progress(j + 1, len(mixes), f"conv share {w:g}: Splitwise sustains {c.saturation_rps:.3g} req/s")
    return LoadMap(cluster.name, loads, mixes, ratio, sat, comps)
