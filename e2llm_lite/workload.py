"""Workloads: who asks what, and when.

A workload is a list of :class:`Request` (arrival time in s, prompt tokens, output tokens). The
planner reads its *length distribution* (mean prompt / output tokens), the serving scheduler and the
simulator replay its *requests*. Three pieces:

:class:`LengthDist` — how long requests are
    Either a **lognormal** pair fitted to published figures, or an **empirical** distribution that
    resamples the (prompt, output) pairs of a trace. Two built-in profiles are fitted to the Azure
    LLM inference trace 2023 (Patel et al., "Splitwise", ISCA 2024; data CC-BY 4.0):

    ========  ========================  ======================  ===============
    profile   prompt median / mean      output median / mean    character
    ========  ========================  ======================  ===============
    ``code``  1469 / 2048 tokens        13 / 28 tokens          prefill-heavy
    ``conv``  1020 / 1155 tokens        129 / 211 tokens        decode-heavy
    ========  ========================  ======================  ===============

    *Fit.* For a lognormal ``X = exp(mu + sigma Z)`` with ``Z ~ N(0, 1)``, the median is ``e^mu`` and
    the mean ``e^(mu + sigma^2 / 2)``; so ``mu = ln(median)`` and
    ``sigma = sqrt(2 ln(mean / median))`` (this needs mean >= median). Prompt and output lengths are
    drawn independently (the trace's correlation between them is weak and not modelled).

    *Shaping* (the same rule for every kind, in this order):

    1. scale and round: ``n = max(1, round(x * scale))`` (``x`` is the raw lognormal draw or the
       trace's count; ``scale`` defaults to 1; :meth:`LengthDist.scaled` sets it);
    2. caps: ``prompt = min(prompt, max_prompt)``, ``output = min(output, max_output)`` if set;
    3. **context clipping** (the model holds ``context`` = 8192 positions): the prompt keeps at
       most ``context - 1`` tokens (its tail, as a server truncates an over-long context), and the
       output is cut so that ``prompt + output <= context`` (generation stops at the context end).
       So ``1 <= prompt``, ``1 <= output`` and ``prompt + output <= context`` always hold.

    Clipping lowers the means a little: about 1.7 % of ``code`` prompts draw more than 8192 tokens.

:class:`Request`, :class:`Trace`, :func:`read_trace`, :func:`load_trace` — a trace CSV
    Parsed in :mod:`e2llm_lite.traces` (its rules are documented there) and re-exported here.

:class:`Workload` — lengths + arrivals, reproducible from a seed
    ``arrival="poisson"``: exponential inter-arrival times of mean ``1 / rate``.
    ``arrival="bursty"``: a **Gamma renewal process**: inter-arrival times are Gamma with shape
    ``k = 1 / cv^2`` and scale ``1 / (rate k)``, so their mean is ``1 / rate`` (the same mean rate)
    and their coefficient of variation (std / mean) is ``cv`` (default 3; ``cv = 1`` is Poisson).
    With ``cv > 1`` most gaps are much shorter than the mean and a few are very long: arrivals come
    in clumps. (For scale: the Azure ``code`` trace's inter-arrival CV is about 13, ``conv``'s
    about 1.1.)
    ``arrival="trace"``: replay a trace's rows in order; arrival times are divided by
    ``rate / trace.rate`` (so ``rate`` is the replay's mean rate) and the lengths are the rows'
    own, shaped by ``lengths``' scaling / caps / context rule.

    Randomness: ``numpy.random.SeedSequence(seed)`` spawns one generator for arrivals and one for
    lengths, each drawn one request at a time in order, so the first ``k`` requests of
    ``generate(n=N)`` do not depend on ``N`` (and ``generate(duration_s=T)`` is a prefix too).

:func:`workload_from_spec` turns the CLI's ``--workload code|conv|FILE`` into a :class:`Workload`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from .errors import ConfigError
from .model import ANATOMY
from .traces import (TRACE_COLUMNS, Request, Trace, length_stats, load_trace, parse_timestamp, read_only,
                     read_trace, request_stats)

__all__ = ["ARRIVALS", "CONTEXT_TOKENS", "PROFILES", "PROFILE_FIGURES", "TRACE_COLUMNS", "LengthDist", "Request", "Trace",
           "Workload", "load_trace", "parse_timestamp", "read_trace", "request_stats", "workload_from_spec"]

#: Positions the model holds (SmolLM2-135M: 8192): a request's prompt + output must fit.
CONTEXT_TOKENS: int = ANATOMY.max_positions

#: Public figures of the Azure LLM inference trace 2023 (tokens): prompt median / mean,
#: output median / mean. The built-in profiles are lognormals fitted to these.
PROFILE_FIGURES: dict[str, dict[str, float]] = {
    "code": {"prompt_median": 1469, "prompt_mean": 2048, "output_median": 13, "output_mean": 28},
    "conv": {"prompt_median": 1020, "prompt_mean": 1155, "output_median": 129, "output_mean": 211},
}

#: The built-in workload names: the two fitted profiles and ``mix`` (code shifting to conv).
PROFILES: tuple[str, ...] = ("code", "conv", "mix")

ARRIVALS = ("poisson", "bursty", "trace")

_STATS_SAMPLES = 200_000  # Monte-Carlo size for the stats of a lognormal LengthDist
_STATS_SEED = 20231116


# --------------------------------------------------------------------------------------------
# Length distributions
# --------------------------------------------------------------------------------------------


def _rng(rng) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _positive(name: str, x: float) -> float:
    if not (isinstance(x, (int, float, np.number)) and math.isfinite(x) and x > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {x!r}")
    return float(x)


def _cap(name: str, x: int | None) -> int | None:
    if x is None:
        return None
    if int(x) != x or x < 1:
        raise ValueError(f"{name} must be a whole number >= 1 or None, got {x!r}")
    return int(x)


@dataclass(frozen=True, eq=False)
class LengthDist:
    """A distribution of (prompt tokens, output tokens); see the module docstring for the
    lognormal fit and the shaping rule (scale, round, caps, context clipping).

    Build one with :meth:`profile` (``"code"``, ``"conv"``), :meth:`lognormal`,
    :meth:`from_trace` or :meth:`from_pairs`; derive a shorter one with :meth:`scaled`.
    """

    name: str
    kind: Literal["lognormal", "empirical", "mixture"]
    #: lognormal: (prompt mu, prompt sigma, output mu, output sigma) of ln(tokens)
    params: tuple[float, float, float, float] | None = None
    #: empirical: the pairs resampled (int arrays, >= 1)
    prompts: np.ndarray | None = field(default=None, repr=False)
    outputs: np.ndarray | None = field(default=None, repr=False)
    prompt_scale: float = 1.0
    output_scale: float = 1.0
    max_prompt: int | None = None
    max_output: int | None = None
    context: int = CONTEXT_TOKENS
    #: mixture: the two unscaled components, the share drawn from the second, and the ramp flag
    parts: tuple | None = field(default=None, repr=False)
    weight: float = 0.5
    ramp: bool = False

    def __post_init__(self):
        if self.kind == "mixture":
            if self.parts is None or len(self.parts) != 2 or not all(isinstance(p, LengthDist) for p in self.parts):
                raise ValueError("a mixture LengthDist needs parts=(first, second), two LengthDists")
            if not (isinstance(self.weight, (int, float)) and 0 <= self.weight <= 1):
                raise ValueError(f"a mixture's weight must be in [0, 1], got {self.weight!r}")
        elif self.kind == "lognormal":
            if self.params is None or len(self.params) != 4:
                raise ValueError("a lognormal LengthDist needs params=(mu_p, sigma_p, mu_o, sigma_o)")
        elif self.kind == "empirical":
            if self.prompts is None or self.outputs is None or len(self.prompts) == 0 \
                    or len(self.prompts) != len(self.outputs):
                raise ValueError("an empirical LengthDist needs equal-length, non-empty prompts and outputs")
        else:
            raise ValueError(f"unknown LengthDist kind {self.kind!r}")
        _positive("prompt_scale", self.prompt_scale)
        _positive("output_scale", self.output_scale)
        _cap("max_prompt", self.max_prompt)
        _cap("max_output", self.max_output)
        if int(self.context) != self.context or self.context < 2:
            raise ValueError(f"context must be a whole number >= 2, got {self.context!r}")

    # ---- constructors ------------------------------------------------------------------------

    @classmethod
    def lognormal(cls, prompt_median: float, prompt_mean: float, output_median: float,
                  output_mean: float, name: str = "lognormal",
                  context: int = CONTEXT_TOKENS) -> "LengthDist":
        """Independent lognormal prompt and output lengths with the given medians and means
        (tokens): ``mu = ln(median)``, ``sigma = sqrt(2 ln(mean / median))``; mean >= median."""
        params = []
        for what, med, mean in (("prompt", prompt_median, prompt_mean),
                                ("output", output_median, output_mean)):
            _positive(f"{what} median", med)
            _positive(f"{what} mean", mean)
            if mean < med:
                raise ValueError(f"a lognormal has mean >= median; {what}: median {med} > mean {mean}")
            params += [math.log(med), math.sqrt(2.0 * math.log(mean / med))]
        return cls(name=name, kind="lognormal", params=tuple(params), context=context)

    @classmethod
    def profile(cls, name: str, context: int = CONTEXT_TOKENS) -> "LengthDist":
        """A built-in profile fitted to the Azure LLM inference trace 2023: ``"code"`` or
        ``"conv"`` (see :data:`PROFILE_FIGURES`), or ``"mix"``: a stream that shifts from code to
        conv (:meth:`mixture` with ``ramp=True``)."""
        key = str(name).strip().lower()
        if key == "mix":
            return cls.mixture(cls.profile("code", context), cls.profile("conv", context), ramp=True,
                               name="mix", context=context)
        if key not in PROFILE_FIGURES:
            raise ConfigError(f"unknown workload profile {name!r}; known profiles: "
                              f"{', '.join(PROFILES)}")
        return cls.lognormal(**PROFILE_FIGURES[key], name=key, context=context)

    @classmethod
    def mixture(cls, first: "LengthDist", second: "LengthDist", weight: float = 0.5, *,
                ramp: bool = False, name: str | None = None,
                context: int = CONTEXT_TOKENS) -> "LengthDist":
        """Requests drawn from ``first`` or ``second`` (their raw draws; this distribution's own
        scale / caps / context shape them). Stationary: each request comes from ``second`` with
        probability ``weight`` (0 = all ``first``, 1 = all ``second``). ``ramp=True``: a stream
        that shifts from one to the other — request ``i`` of a sample of ``n`` comes from
        ``second`` with probability ``i / (n - 1)`` (``weight`` is then ignored; the summaries are
        the ramp's average, i.e. the 50/50 mixture). Components must be unscaled and uncapped.
        A mixture's sample of ``n`` is not a prefix of a longer one (the ramp depends on ``n``)."""
        for p in (first, second):
            if p.prompt_scale != 1 or p.output_scale != 1 or p.max_prompt or p.max_output:
                raise ValueError("a mixture's components must be unscaled and uncapped (scale the mixture)")
        if not 0 <= weight <= 1:
            raise ValueError(f"a mixture's weight must be in [0, 1], got {weight!r}")
        label = name or (f"{first.name}->{second.name}" if ramp else f"{first.name}+{second.name}@{weight:g}")
        return cls(name=label, kind="mixture", parts=(first, second), weight=float(weight),
                   ramp=bool(ramp), context=context)

    @classmethod
    def from_pairs(cls, prompts, outputs, name: str = "empirical",
                   context: int = CONTEXT_TOKENS) -> "LengthDist":
        """The empirical distribution of the given (prompt, output) pairs (whole numbers >= 1)."""
        p = np.asarray(prompts, dtype=np.int64)
        o = np.asarray(outputs, dtype=np.int64)
        if p.ndim != 1 or p.shape != o.shape or len(p) == 0:
            raise ValueError("prompts and outputs must be non-empty 1-D sequences of equal length")
        if p.min() < 1 or o.min() < 1:
            raise ValueError("token counts must be >= 1")
        return cls(name=name, kind="empirical", prompts=read_only(p.copy()), outputs=read_only(o.copy()),
                   context=context)

    @classmethod
    def from_trace(cls, path: str | os.PathLike | Trace, context: int = CONTEXT_TOKENS) -> "LengthDist":
        """The empirical distribution of a trace CSV's (prompt, output) pairs: sampling resamples
        its rows uniformly with replacement (then shapes them as usual)."""
        trace = path if isinstance(path, Trace) else read_trace(path)
        return cls(name=Path(trace.path).stem, kind="empirical", prompts=trace.prompt_tokens,
                   outputs=trace.output_tokens, context=context)

    def scaled(self, prompt_scale: float = 1.0, output_scale: float = 1.0,
               max_prompt: int | None = None, max_output: int | None = None) -> "LengthDist":
        """The same distribution with samples multiplied by ``prompt_scale`` / ``output_scale``
        (rounded, >= 1) and capped at ``max_prompt`` / ``max_output`` tokens (then clipped to the
        context). Scales multiply with any earlier scaling; caps take the smaller value."""
        def tighter(a, b):
            return b if a is None else a if b is None else min(a, b)
        return replace(self, prompt_scale=self.prompt_scale * _positive("prompt_scale", prompt_scale),
                       output_scale=self.output_scale * _positive("output_scale", output_scale),
                       max_prompt=tighter(self.max_prompt, _cap("max_prompt", max_prompt)),
                       max_output=tighter(self.max_output, _cap("max_output", max_output)))

    # ---- sampling ----------------------------------------------------------------------------

    def sample_raw(self, n: int, rng=None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` raw (prompt, output) draws before any rounding, scaling or clipping (float arrays;
        for an empirical distribution, the resampled counts). One draw per request in order, so a
        longer sample extends a shorter one from the same generator state."""
        g = _rng(rng)
        if self.kind == "mixture":
            if self.ramp:
                share = np.arange(n) / (n - 1) if n > 1 else np.zeros(n)
            else:
                share = np.full(n, self.weight)
            pick = g.random(n) < share
            (p1, o1), (p2, o2) = (part.sample_raw(n, g) for part in self.parts)
            return np.where(pick, p2, p1), np.where(pick, o2, o1)
        if self.kind == "lognormal":
            mp, sp, mo, so = self.params
            z = g.standard_normal((n, 2))
            return np.exp(mp + sp * z[:, 0]), np.exp(mo + so * z[:, 1])
        idx = np.floor(g.random(n) * len(self.prompts)).astype(np.int64)
        return self.prompts[idx].astype(float), self.outputs[idx].astype(float)

    def shape(self, prompts, outputs) -> tuple[np.ndarray, np.ndarray]:
        """Apply this distribution's rule to raw lengths: scale and round (>= 1), cap, clip to the
        context (``prompt <= context - 1``, ``prompt + output <= context``). Int64 arrays."""
        p = np.maximum(1, np.rint(np.asarray(prompts, dtype=float) * self.prompt_scale)).astype(np.int64)
        o = np.maximum(1, np.rint(np.asarray(outputs, dtype=float) * self.output_scale)).astype(np.int64)
        if self.max_prompt is not None:
            p = np.minimum(p, self.max_prompt)
        if self.max_output is not None:
            o = np.minimum(o, self.max_output)
        p = np.minimum(p, self.context - 1)
        o = np.minimum(o, self.context - p)
        return p, o

    def sample(self, n: int, rng=None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` (prompt, output) lengths: int64 arrays, each >= 1, ``prompt + output <= context``.
        ``rng``: a ``numpy.random.Generator`` or a seed."""
        if int(n) != n or n < 0:
            raise ValueError(f"n must be a whole number >= 0, got {n!r}")
        return self.shape(*self.sample_raw(int(n), rng))

    # ---- summaries ---------------------------------------------------------------------------

    @cached_property
    def _stats(self) -> dict:
        if self.kind == "empirical":
            p, o = self.shape(self.prompts, self.outputs)  # exact: every pair, equally likely
        else:
            p, o = self.sample(_STATS_SAMPLES, _STATS_SEED)  # Monte Carlo, fixed seed
        return length_stats(p.astype(float), o.astype(float))

    def stats(self) -> dict:
        """Median, mean and P90 of the *shaped* prompt and output lengths (tokens), as served:
        keys ``prompt_median, prompt_mean, prompt_p90, output_median, output_mean, output_p90``.
        Exact for an empirical distribution; for a lognormal, from 200,000 draws with a fixed
        seed (about 0.5 % error on the means)."""
        return dict(self._stats)

    @property
    def mean_prompt(self) -> float:
        """Mean prompt length (tokens) after shaping."""
        return self._stats["prompt_mean"]

    @property
    def mean_output(self) -> float:
        """Mean output length (tokens) after shaping."""
        return self._stats["output_mean"]


# --------------------------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Workload:
    """Lengths + an arrival process at ``rate`` requests/s, reproducible from ``seed``.

    ``arrival``: ``"poisson"``, ``"bursty"`` (Gamma renewal with inter-arrival CV ``cv``) or
    ``"trace"`` (replay ``trace``, time-scaled to ``rate``); see the module docstring.
    """

    lengths: LengthDist
    rate: float
    arrival: Literal["poisson", "bursty", "trace"] = "poisson"
    seed: int = 0
    cv: float = 3.0
    trace: Trace | None = field(default=None, repr=False)

    def __post_init__(self):
        r = self.rate
        if isinstance(r, bool) or not isinstance(r, (int, float, np.number)) or not math.isfinite(r) or r <= 0:
            raise ConfigError(f"rate must be a finite number of requests/s > 0, got {r!r}")
        if self.arrival not in ARRIVALS:
            raise ConfigError(f"unknown arrival process {self.arrival!r}; known: {', '.join(ARRIVALS)}")
        if not (math.isfinite(self.cv) and self.cv > 0):
            raise ConfigError(f"cv must be a finite number > 0, got {self.cv!r}")
        if self.arrival == "trace" and self.trace is None:
            raise ConfigError("arrival='trace' needs a trace (use Workload.from_trace)")

    @property
    def mean_prompt(self) -> float:
        return self.lengths.mean_prompt

    @property
    def mean_output(self) -> float:
        return self.lengths.mean_output

    @classmethod
    def from_trace(cls, path: str | os.PathLike | Trace, rate_scale: float = 1.0,
                   prompt_scale: float = 1.0, output_scale: float = 1.0,
                   max_prompt: int | None = None, max_output: int | None = None,
                   limit: int | None = None, start_s: float = 0.0, seed: int = 0,
                   context: int = CONTEXT_TOKENS) -> "Workload":
        """Replay a trace CSV: the rows arriving from ``start_s`` (s after the first row; at most
        ``limit`` of them), arrival times divided by ``rate_scale`` (so the mean rate is multiplied
        by it), lengths scaled / capped / clipped as in :meth:`LengthDist.scaled`.

        ``lengths`` is the window's empirical distribution (so the planner sees the same lengths);
        ``rate`` = the window's mean rate x ``rate_scale`` (just ``rate_scale`` for a window whose
        rate is undefined, i.e. one request or all at the same instant)."""
        rate_scale = _positive("rate_scale", rate_scale)
        full = path if isinstance(path, Trace) else read_trace(path)
        trace = full.window(start_s, limit)
        lengths = LengthDist.from_trace(trace, context=context).scaled(
            prompt_scale, output_scale, max_prompt, max_output)
        base = trace.rate
        rate = base * rate_scale if math.isfinite(base) else rate_scale
        return cls(lengths=lengths, rate=rate, arrival="trace", seed=seed, trace=trace)

    def _gaps(self, g: np.random.Generator, n: int) -> np.ndarray:
        if self.arrival == "poisson":
            return g.exponential(1.0 / self.rate, n)
        k = 1.0 / self.cv ** 2
        return g.gamma(k, 1.0 / (self.rate * k), n)

    def generate(self, n: int | None = None, duration_s: float | None = None) -> list[Request]:
        """The first ``n`` requests, or those arriving before ``duration_s`` seconds, or both
        limits (whichever binds first). A trace replay without limits returns the whole window;
        asking a trace for more than it has is an error. Same seed -> same list."""
        if n is not None and (int(n) != n or n < 0):
            raise ValueError(f"n must be a whole number >= 0, got {n!r}")
        if duration_s is not None and not (math.isfinite(duration_s) and duration_s >= 0):
            raise ValueError(f"duration_s must be finite and >= 0, got {duration_s!r}")
        if self.arrival == "trace":
            return self._replay(n, duration_s)
        if n is None and duration_s is None:
            raise ValueError("give n (number of requests) and/or duration_s")
        arr_seq, len_seq = np.random.SeedSequence(self.seed).spawn(2)
        g_arr = np.random.default_rng(arr_seq)
        if duration_s is None:
            times = np.cumsum(self._gaps(g_arr, int(n)))
        else:
            # draw gaps in chunks until past duration_s; each chunk continues the sequential sum
            # ((last + g1) + g2 ...), so the times are bit-identical to generate(n=...)'s prefix
            chunks, last, drawn = [], 0.0, 0
            cap = math.inf if n is None else int(n)
            while last < duration_s and drawn < cap:
                size = int(min(cap - drawn, max(64, self.rate * duration_s * 0.25)))
                t = np.cumsum(np.concatenate(([last], self._gaps(g_arr, size))))[1:]
                chunks.append(t)
                drawn += size
                last = float(t[-1])
            times = np.concatenate(chunks) if chunks else np.empty(0)
            times = times[times < duration_s]
        p, o = self.lengths.sample(len(times), np.random.default_rng(len_seq))
        return [Request(i, float(t), int(a), int(b)) for i, (t, a, b) in enumerate(zip(times, p, o))]

    def _replay(self, n: int | None, duration_s: float | None) -> list[Request]:
        tr = self.trace
        base = tr.rate
        factor = base / self.rate if math.isfinite(base) else 1.0  # trace time -> replay time
        times = tr.arrival_s * factor
        m = len(tr)
        if n is not None:
            if n > m:
                raise ValueError(f"the trace {tr.path} has {m} requests in this window; asked for {n}")
            m = int(n)
        if duration_s is not None:
            m = min(m, int(np.searchsorted(times, duration_s, side="left")))
        p, o = self.lengths.shape(tr.prompt_tokens[:m], tr.output_tokens[:m])
        return [Request(i, float(t), int(a), int(b)) for i, (t, a, b) in enumerate(zip(times[:m], p, o))]


# --------------------------------------------------------------------------------------------
# CLI spec
# --------------------------------------------------------------------------------------------


def workload_from_spec(spec: str | os.PathLike, rate: float | None, seed: int = 0, *,
                       arrival: str | None = None, cv: float = 3.0,
                       prompt_scale: float = 1.0, output_scale: float = 1.0,
                       max_prompt: int | None = None, max_output: int | None = None,
                       limit: int | None = None, start_s: float = 0.0,
                       context: int = CONTEXT_TOKENS) -> Workload:
    """``--workload code|conv|FILE`` -> :class:`Workload`.

    * ``"code"`` / ``"conv"`` / ``"mix"`` (a profile name wins over a file of that name; write ``./code`` for
      the file): the built-in lengths, ``arrival`` default ``"poisson"``; ``rate`` is required.
    * a trace CSV path: ``arrival`` default ``"trace"`` (replay, scaled so the mean rate is
      ``rate``, or the trace's own rate if ``rate`` is None); with ``"poisson"`` / ``"bursty"``
      the trace's lengths are resampled at ``rate`` (default: the trace's rate).

    The scale / cap arguments shape the lengths in every case (see :meth:`LengthDist.scaled`).
    """
    text = os.fspath(spec)
    if arrival is not None and arrival not in ARRIVALS:
        raise ConfigError(f"unknown arrival process {arrival!r}; known: {', '.join(ARRIVALS)}")
    if text.strip().lower() in PROFILES:
        if arrival == "trace":
            raise ConfigError(f"arrival 'trace' needs a trace file, not the profile {text!r}")
        if rate is None:
            raise ConfigError(f"workload {text!r} needs a rate (requests/s)")
        lengths = LengthDist.profile(text, context=context).scaled(
            prompt_scale, output_scale, max_prompt, max_output)
        return Workload(lengths, rate=rate, arrival=arrival or "poisson", seed=seed, cv=cv)
    path = Path(text).expanduser()
    if not path.exists():
        raise ConfigError(f"workload {text!r} is neither a known profile "
                          f"({', '.join(PROFILES)}) nor an existing trace file")
    trace = read_trace(path).window(start_s, limit)
    if not math.isfinite(trace.rate):
        raise ConfigError(f"trace {path}: its {len(trace)} request(s) arrive at one instant, so it "
                          "has no arrival rate to replay or scale; use a profile (code, conv) at "
                          "a rate, or a trace whose timestamps differ")
    if arrival in (None, "trace"):
        rate_scale = 1.0 if rate is None else _positive("rate", rate) / trace.rate
        return Workload.from_trace(trace, rate_scale, prompt_scale, output_scale, max_prompt,
                                   max_output, seed=seed, context=context)
    lengths = LengthDist.from_trace(trace, context=context).scaled(
        prompt_scale, output_scale, max_prompt, max_output)
    if rate is None:
        rate = trace.rate
    return Workload(lengths, rate=rate, arrival=arrival, seed=seed, cv=cv)
