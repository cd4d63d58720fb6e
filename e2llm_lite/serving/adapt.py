"""When to re-plan for the workload, and when not: the sliding window and the hysteresis.

The scheduler (which never reads a clock) keeps the last ``window`` arrivals — their arrival
times (s), prompt and output lengths (tokens) — in an :class:`ArrivalWindow`. Every
``check_every`` arrivals, once the window is full, it compares the window with what the current
plan was made for (the plan's rate and mean prompt / output):

1. **Drift** (:func:`drift`): the largest relative change of mean prompt, mean output or rate,
   ``|observed / planned - 1|``. At or below ``AdaptConfig.drift`` nothing happens.
2. Above it, the scheduler asks for a re-plan (:class:`~.events.Replan`, reason ``"workload"``);
   the backend's planner answers with its best plan for the window and the **predicted mean
   waiting** of that plan and of the current plan under the same window
   (:class:`~.events.PlanReady`).
3. **Gain** (:func:`worth_adopting`): the new plan is rolled in only if the current plan's
   predicted waiting exceeds the new one's by more than ``AdaptConfig.gain`` (relative). Either
   way the planned-for figures become the window's (a rejected plan means the current one is good
   enough for this workload), so the same drift does not ask again.
4. **Cooldown**: after a workload re-plan, no other for ``cooldown`` arrivals.

Drift, gain and cooldown together are the hysteresis: in a steady phase the window stays within
``drift`` of the planned figures (nothing is asked), and a small gain is not worth a rolling
change (nothing is adopted), so roles do not flap. A device failure or join re-plans at once,
without these checks (the current plan is broken, or a device idles).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ..errors import ConfigError
from .events import WindowStats

__all__ = ["AdaptConfig", "ArrivalWindow", "drift", "worth_adopting"]


@dataclass(frozen=True)
class AdaptConfig:
    """``window``: arrivals in the sliding window; ``check_every``: arrivals between checks;
    ``drift``: relative change of mean prompt, mean output or rate that asks for a re-plan;
    ``gain``: relative predicted-waiting improvement a new plan needs to be adopted;
    ``cooldown``: arrivals after a workload re-plan before the next may be asked."""

    window: int = 100
    check_every: int = 25
    drift: float = 0.3
    gain: float = 0.2
    cooldown: int = 100

    def __post_init__(self):
        for f in ("window", "check_every", "cooldown"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"adapt {f} must be a whole number >= 1, got {v!r}")
        if self.window < 2:
            raise ConfigError("adapt window must hold at least 2 arrivals (a rate needs two)")
        for f in ("drift", "gain"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"adapt {f} must be a finite number >= 0, got {v!r}")


class ArrivalWindow:
    """The last ``size`` arrivals: (time s, prompt tokens, output tokens)."""

    def __init__(self, size: int):
        self.items: deque = deque(maxlen=size)

    def add(self, time_s: float, prompt: int, output: int) -> None:
        self.items.append((time_s, prompt, output))

    @property
    def full(self) -> bool:
        return len(self.items) == self.items.maxlen

    def stats(self) -> WindowStats | None:
        """The window's figures; None with fewer than two arrivals. The rate is
        ``(n - 1) / (last arrival - first arrival)`` requests/s (inf if they coincide)."""
        n = len(self.items)
        if n < 2:
            return None
        span = self.items[-1][0] - self.items[0][0]
        return WindowStats(n, (n - 1) / span if span > 0 else math.inf,
                           tuple(p for _, p, _ in self.items), tuple(o for _, _, o in self.items))


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
