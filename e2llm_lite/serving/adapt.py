"""When to re-plan for the workload, and when not: the sliding window and the hysteresis.

The scheduler (which never reads a clock) keeps the last ``window`` arrivals — their arrival
times (s), prompt and output lengths (tokens) — in an :class:`ArrivalWindow`. Every
``check_every`` arrivals, once the window is full, it compares the window with what the current
plan was made for (the plan's rate and mean prompt / output):

1. **Shift** (:func:`newest_differ`): the window's newest ``recent`` arrivals differ beyond
   chance from the older ones since the current plan's basis began (the arrivals it was made
   for; all of the window for the starting plan): Welch's t on the log of the prompt lengths,
   the output lengths or the gaps between arrivals above ``AdaptConfig.shift_t``. The workload
   has changed: the scheduler asks for a re-plan (:class:`~.events.Replan`, reason
   ``"workload"``) for those newest arrivals only. A window straddling a shift is a mixture of
   the old and the new workload, and a plan made for the mixture serves neither (measured: made
   when 25 of 100 arrivals were conv, such a plan predicted 0.006 s of waiting and its requests
   waited 22 s).
2. **Drift** (:func:`drift`): else, once the cooldown is over, the largest relative change of
   the whole window's mean prompt, mean output or rate, ``|observed / planned - 1|``, against
   what the plan was made for. Above ``AdaptConfig.drift`` the scheduler asks for a re-plan for
   the whole window (a slow drift, not a shift: no few arrivals stand for it). At or below it
   nothing happens.

   The backend's planner answers with its best plan and the **predicted mean waiting** of that
   plan and of the current plan under the same arrivals (:class:`~.events.PlanReady`).
3. **Gain** (:func:`worth_adopting`): the new plan is rolled in only if the current plan's
   predicted waiting exceeds the new one's by more than ``AdaptConfig.gain`` (relative). Either
   way the planned-for figures become those the re-plan was asked for (a rejected plan means the
   current one is good enough for this workload), so the same drift does not ask again.
4. **Cooldown**: after a workload re-plan, no drift re-plan for ``cooldown`` arrivals (by default
   a whole window: by then the window holds only arrivals of the workload the plan was made
   for). A shift may still be told apart meanwhile: comparing only arrivals since the plan's
   basis began, the arrivals of the old workload do not count as a shift again, and a drift
   re-plan asked just as a shift began (planned for a window of mostly the old workload) does
   not keep the plan for the new one waiting for a whole cooldown (measured on a short phased
   stream: 120 code then 120 conv requests on ``edge16``, such a re-plan 4 arrivals into the conv
   phase held the next one back for 100 arrivals).

The shift threshold, drift, gain and cooldown together are the hysteresis: in a steady phase
the newest arrivals do not differ from the older ones beyond chance (``|t| > 4`` happens about
once in 16,000 tests of one variable for normal data) and the window stays within ``drift`` of
the planned figures (nothing is asked), and a small gain is not worth a rolling change (nothing
is adopted), so roles do not flap. A device failure or join re-plans at once,
without these checks (the current plan is broken, or a device idles).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ..errors import ConfigError
from .events import WindowStats

__all__ = ["AdaptConfig", "ArrivalWindow", "drift", "newest_differ", "welch_t", "worth_adopting"]


@dataclass(frozen=True)
class AdaptConfig:
    """``window``: arrivals in the sliding window; ``check_every``: arrivals between checks;
    ``drift``: relative change of mean prompt, mean output or rate that asks for a re-plan;
    ``gain``: relative predicted-waiting improvement a new plan needs to be adopted;
    ``cooldown``: arrivals after a workload re-plan before a drift re-plan may be asked;
    ``recent``: the newest arrivals a workload re-plan plans for after a shift (default
    ``check_every``); ``shift_t``: the Welch t above which they count as shifted."""

    window: int = 100
    check_every: int = 25
    drift: float = 0.3
    gain: float = 0.2
    cooldown: int = 100
    recent: int | None = None
    shift_t: float = 4.0

    def __post_init__(self):
        for f in ("window", "check_every", "cooldown"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"adapt {f} must be a whole number >= 1, got {v!r}")
        if self.window < 2:
            raise ConfigError("adapt window must hold at least 2 arrivals (a rate needs two)")
        r = self.recent
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or not 2 <= r <= self.window):
            raise ConfigError(f"adapt recent must be a whole number from 2 to the window "
                              f"({self.window}), got {r!r}")
        for f in ("drift", "gain", "shift_t"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"adapt {f} must be a finite number >= 0, got {v!r}")

    @property
    def newest(self) -> int:
        """How many of the newest arrivals a workload re-plan plans for."""
        return self.recent if self.recent is not None else max(2, min(self.check_every, self.window))


class ArrivalWindow:
    """The last ``size`` arrivals: (time s, prompt tokens, output tokens)."""

    def __init__(self, size: int):
        self.items: deque = deque(maxlen=size)

    def add(self, time_s: float, prompt: int, output: int) -> None:
        self.items.append((time_s, prompt, output))

    @property
    def full(self) -> bool:
        return len(self.items) == self.items.maxlen

    def stats(self, newest: int | None = None) -> WindowStats | None:
        """The window's figures (only its ``newest`` arrivals if given); None with fewer than two
        arrivals. The rate is ``(n - 1) / (last arrival - first arrival)`` requests/s (inf if
        they coincide)."""
        items = list(self.items)[-newest:] if newest else list(self.items)
        n = len(items)
        if n < 2:
            return None
        span = items[-1][0] - items[0][0]
        return WindowStats(n, (n - 1) / span if span > 0 else math.inf,
                           tuple(p for _, p, _ in items), tuple(o for _, _, o in items))


def drift(window: WindowStats, rate_rps: float, mean_prompt: float, mean_output: float) -> float:
    """The largest ``|observed / planned - 1|`` over mean prompt, mean output and rate."""
    pairs = ((window.mean_prompt, mean_prompt), (window.mean_output, mean_output),
             (window.rate_rps, rate_rps))
    return max(abs(o / p - 1.0) if p > 0 else math.inf for o, p in pairs)


def worth_adopting(current_s: float, new_s: float, gain: float) -> bool:
    """Whether a plan predicted to wait ``new_s`` should replace one predicted to wait
    ``current_s`` (s): ``current_s > (1 + gain) * new_s``; a new plan that cannot serve (inf)
    never is, a current one that cannot (inf) always is replaced by one that can."""
    if not math.isfinite(new_s):
        return False
    if not math.isfinite(current_s):
        return True
    return current_s > (1.0 + gain) * new_s


def welch_t(a, b) -> float:
    """Welch's t statistic of the means of samples ``a`` and ``b`` (0 if either has < 2 values
    or both have no spread)."""
    if len(a) < 2 or len(b) < 2:
        return 0.0
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1)
    se = math.sqrt(va / len(a) + vb / len(b))
    return (mb - ma) / se if se > 0 else (0.0 if ma == mb else math.copysign(math.inf, mb - ma))


def newest_differ(items, newest: int, threshold: float) -> bool:
    """Whether the ``newest`` of ``items`` (``(time s, prompt, output)``, oldest first) differ from
    the older ones beyond chance: ``|welch_t| > threshold`` on log prompt, log output or log gap
    between arrivals (lengths and gaps are skewed; their logs are near normal). With fewer than
    two older items nothing can be told: False."""
    items = list(items)
    if newest >= len(items) - 1:
        return False
    old, new = items[:-newest], items[-newest:]
    for k in (1, 2):
        if abs(welch_t([math.log(max(1, x[k])) for x in old],
                       [math.log(max(1, x[k])) for x in new])) > threshold:
            return True
    gaps = [math.log(max(1e-9, b[0] - a[0])) for a, b in zip(items, items[1:])]
    return abs(welch_t(gaps[:-newest], gaps[-newest:])) > threshold
