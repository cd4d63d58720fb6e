"""What the planner reads from a workload: mean prompt and output, the design prompt (memory), the
effective prompt (prefill time) and the SCVs of the queueing formula (:class:`WorkloadStats`).

From the workload (:class:`WorkloadStats`): mean prompt ``Tm`` and output ``Om`` tokens, the
**design prompt** ``P`` = the 90th percentile prompt (the prompt a replica reserves memory for;
longer ones wait or are refused by the runtime's memory accounting), and the **effective prompt**
``Te``: the length whose per-layer prefill time equals the *mean* prefill time over the
distribution (``p(Te) = E[p(T)]`` with ``p(T) = p0 + p1 T + p2 T^2`` the cost model's form; the
quadratic attention term makes the mean time longer than the time of the mean prompt).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..costmodel import CostModel
from ..errors import ConfigError
from ..workload import LengthDist, Workload

__all__ = ["WorkloadStats", "effective_prompt", "workload_stats"]

_STATS_SAMPLES = 50_000  # draws used to estimate E[p(T)] and the SCV of a lognormal's prefill time
_STATS_SEED = 20240521


@dataclass(frozen=True)
class WorkloadStats:
    """What the planner reads from a workload (tokens; dimensionless SCVs).

    ``mean_prompt``/``mean_output``: mean tokens; ``design_prompt``: the 90th-percentile prompt
    (memory reserve of a prefill stage); ``prefill_tokens``: the effective prompt ``Te`` with
    ``p(Te) = E[p(T)]`` (see the module docstring); ``prefill_scv``: squared coefficient of
    variation of one prompt's prefill time (Var / mean^2 of ``p(T)``), the service-time SCV of the
    queueing formula; ``arrival_scv``: the inter-arrival SCV (1 Poisson, ``cv^2`` bursty, measured
    for a trace replay). ``name``: where it came from (``"code"``, ``"conv"``, a file name).
    """

    name: str
    mean_prompt: float
    mean_output: float
    design_prompt: int
    prefill_tokens: int
    prefill_scv: float = 1.0
    arrival_scv: float = 1.0

    def __post_init__(self):
        for f in ("mean_prompt", "mean_output", "prefill_scv", "arrival_scv"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"workload {f} must be a finite number >= 0, got {v!r}")
        if self.mean_prompt < 1 or self.mean_output < 1:
            raise ConfigError("workload mean prompt and output must be >= 1 token")
        for f in ("design_prompt", "prefill_tokens"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"workload {f} must be a whole number >= 1, got {v!r}")

    @property
    def context_tokens(self) -> int:
        """``ceil(Tm + Om)``: KV tokens a decoding sequence reserves (its mean full length)."""
        return int(math.ceil(self.mean_prompt + self.mean_output))

    @property
    def decode_context(self) -> int:
        """``round(Tm + Om / 2)``: a sequence's mean context while it decodes."""
        return int(round(self.mean_prompt + self.mean_output / 2))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WorkloadStats":
        if not isinstance(d, dict):
            raise ConfigError(f"workload must be a JSON object, got {type(d).__name__}")
        keys = {"name", "mean_prompt", "mean_output", "design_prompt", "prefill_tokens",
                "prefill_scv", "arrival_scv"}
        if missing := sorted({"name", "mean_prompt", "mean_output", "design_prompt",
                              "prefill_tokens"} - d.keys()):
            raise ConfigError(f"workload is missing {', '.join(map(repr, missing))}")
        return cls(**{k: v for k, v in d.items() if k in keys})


def effective_prompt(prompts: np.ndarray, coef, limit: int) -> tuple[int, float]:
    """(Te, SCV of p(T)) for the prefill-layer form ``p0 + p1 T + p2 T^2``."""
    p0, p1, p2 = (float(c) for c in coef)
    t = prompts.astype(float)
    times = p0 + p1 * t + p2 * t * t
    mean = float(times.mean())
    scv = float(times.var() / mean ** 2) if mean > 0 else 0.0
    if p2 > 0:
        te = (-p1 + math.sqrt(p1 * p1 - 4 * p2 * (p0 - mean))) / (2 * p2)
    elif p1 > 0:
        te = (mean - p0) / p1
    else:
        te = float(t.mean())
    return int(min(max(1, round(te)), limit)), scv


def workload_stats(workload, costmodel: CostModel | None = None, name: str | None = None) -> WorkloadStats:
    """The :class:`WorkloadStats` of a :class:`~e2llm_lite.workload.Workload`, a
    :class:`~e2llm_lite.workload.LengthDist`, or a profile name (``"code"``/``"conv"``).

    Means and the 90th percentile come from ``LengthDist.stats()`` (what the workload serves);
    ``Te`` and the prefill-time SCV from the shaped pairs (empirical) or 50,000 fixed-seed draws
    (lognormal); the arrival SCV from the workload's arrival process.
    """
    cm = costmodel or CostModel.load()
    arrival_scv = 1.0
    if isinstance(workload, str):
        workload = LengthDist.profile(workload)
    if isinstance(workload, Workload):
        lengths = workload.lengths
        if workload.arrival == "bursty":
            arrival_scv = float(workload.cv) ** 2
        elif workload.arrival == "trace" and workload.trace is not None and len(workload.trace) > 2:
            gaps = np.diff(workload.trace.arrival_s)
            if gaps.mean() > 0:
                arrival_scv = float(gaps.var() / gaps.mean() ** 2)
    elif isinstance(workload, LengthDist):
        lengths = workload
    else:
        raise TypeError(f"workload_stats needs a Workload, a LengthDist or a profile name, "
                        f"got {type(workload).__name__}")
    st = lengths.stats()
    if lengths.kind == "empirical":
        prompts, _ = lengths.shape(lengths.prompts, lengths.outputs)
    else:
        prompts, _ = lengths.sample(_STATS_SAMPLES, _STATS_SEED)
    limit = cm.anatomy.max_positions - 1
    te, scv = effective_prompt(prompts, cm.coef["prefill_layer"], limit)
    return WorkloadStats(
        name=name or lengths.name,
        mean_prompt=float(st["prompt_mean"]),
        mean_output=float(st["output_mean"]),
        design_prompt=int(min(max(1, math.ceil(st["prompt_p90"])), limit)),
        prefill_tokens=te,
        prefill_scv=scv,
        arrival_scv=arrival_scv,
    )

