"""Making a host process run at an emulated device's speed, on a dilated clock.

A worker measures the CPU time its one thread spent on a step (``time.thread_time()``, which
stays right when other workers compete for the host's cores) and then sleeps until

    target wall time = dilation * compute / speed(phase)

has passed since the step began. ``compute / speed`` is the step's time on the device (ms of
*device time*); ``dilation`` (>= 1) stretches every device's clock by the same factor, so that the
fastest device's steps still take longer than the host needs for them. Reported times are device
times: wall time / dilation.

``speed`` is the device's catalog speed for the step's phase, relative to one host thread, times
the worker's ``host_factor`` when the cluster was calibrated (see
``EmulatedCluster.calibrate``): the host's ms now / the cost model's ms for a probe of the same
stage, so that device times follow the cost model's profile instead of this host's speed today.

A step whose real elapsed time already exceeds its target is an **overrun**: the emulation could
not slow it down to the device's speed because the host was too slow (or too busy). Every run
reports overruns; a run with overruns is not faithful.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

OVERRUN_TOLERANCE = 0.05    # an overrun is real elapsed > target * (1 + 5 %) + OVERRUN_SLACK_S
OVERRUN_SLACK_S = 0.0005
OUTLIER_RATIO = 1.5         # a calibration point this many times off its neighbours' line is re-measured


def outlying(points, ratio: float = OUTLIER_RATIO) -> list[int]:
    """Indices of the calibration points ``(x, factor)`` (sorted by ``x`` >= 1, factors > 0; at
    least 3) that are spikes: a factor more than ``ratio`` times above or below what its
    neighbours say -- an inner point: the line, in log ``x``, through the one on each side; an end
    point: its one neighbour. The worst spike is set aside and the rest judged again without it,
    until none is left (a spike's neighbours are not spikes because of it). A slow spell of the
    host during one probe makes such a spike (our reading of a run of 2026-12-04 that did not
    print its probes: steps of B = 8 ran 2.2x too fast, those of B = 4 and 16 25-30 %); so can a
    real quirk of the host, which a second measurement confirms."""
    pts = [(math.log(x), f) for x, f in points]
    keep, out = list(range(len(pts))), []

    def off(j: int) -> float:                       # |log(factor / what the neighbours say)|
        u, f = pts[keep[j]]
        if j in (0, len(keep) - 1):
            ref = pts[keep[1 if j == 0 else -2]][1]
        else:
            (u0, f0), (u1, f1) = pts[keep[j - 1]], pts[keep[j + 1]]
            ref = f0 + (u - u0) * (f1 - f0) / (u1 - u0) if u1 != u0 else (f0 + f1) / 2
        return abs(math.log(f / ref)) if ref > 0 else 0.0

    while len(keep) >= 3:
        worst = max(range(len(keep)), key=off)
        if off(worst) <= math.log(ratio):
            break
        out.append(keep.pop(worst))
    return sorted(out)


def auto_dilation(speeds, concurrency: int = 1, cores: int = 2, margin: float = 1.5) -> float:
    """The cluster-wide dilation factor for a run.

    ``speeds``: every device's speed relative to one host thread (a list), or one number for
    ``concurrency`` devices of that speed. A device at speed ``s`` computes ``s / dilation`` of
    the time; with the ``concurrency`` fastest devices computing at once on ``cores`` host cores,
    their CPU demand must fit the cores, and the fastest device alone must fit one core, with a
    safety ``margin``:
    ``dilation = max(1, margin * max(fastest, sum of the concurrency fastest / cores))``
    (with equal speeds: ``speed * max(1, concurrency / cores) * margin``).
    """
    if isinstance(speeds, (int, float)):
        speeds = [float(speeds)] * (concurrency if isinstance(concurrency, int) else 1)
    speeds = sorted((float(s) for s in speeds), reverse=True)
    if not speeds or not all(s > 0 for s in speeds) or not concurrency >= 1 or not cores >= 1 \
            or not margin >= 1:
        raise ValueError("auto_dilation needs speeds > 0, concurrency >= 1, cores >= 1, margin >= 1")
    busy = speeds[:int(concurrency)]
    return max(1.0, margin * max(busy[0], sum(busy) / cores))


@dataclass
class HostFactor:
    """How much slower (> 1) or faster this host runs a stage now than the cost model predicts,
    as a function of the step's size: per phase, calibration points ``(x, factor)`` where ``x``
    is the prompt's tokens (prefill) or the batch size (decode), and for decode per context (the
    tokens already cached per sequence; prefill: context 0). Between points the factor is
    interpolated linearly in ``log x`` (then in ``log context`` between the two nearest probed
    contexts); outside them it is the nearest point's. No point: 1.

    One factor for all sizes was not enough: on the test host a calibrated 10-layer prefill
    step of 16 tokens took 47 % longer than the cost model said, one of 128 tokens 0 % (the
    point it was calibrated at) -- the host's fixed per-step cost is larger than the profile's.
    Nor was one context for decode: calibrated at a context of 8 only, steps of 16 sequences of
    ~336 tokens ran 22-39 % faster than the profile said (this host's attention over a long
    context is cheaper, relative to its weight reads, than the profiled machine's).
    """

    points: tuple[dict, dict] = field(default_factory=lambda: ({}, {}))

    def add(self, phase: int, x: float, factor: float, context: float = 0) -> None:
        """Record one calibration point (phase 0 prefill, 1 decode; ``x`` >= 1, factor > 0,
        ``context`` >= 0 tokens)."""
        if phase not in (0, 1) or not x >= 1 or not factor > 0 or not context >= 0:
            raise ValueError(f"bad calibration point: phase={phase} x={x} factor={factor} "
                             f"context={context}")
        row = self.points[phase].setdefault(float(context), [])
        row[:] = sorted([p for p in row if p[0] != x] + [(float(x), float(factor))])

    @staticmethod
    def _along(pts: list, x: float) -> float:
        if x <= pts[0][0]:
            return pts[0][1]
        for (x0, f0), (x1, f1) in zip(pts, pts[1:]):
            if x <= x1:
                w = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
                return f0 + w * (f1 - f0)
        return pts[-1][1]

    def at(self, phase: int, x: float, context: float = 0) -> float:
        """The factor for a step of phase ``phase``, size ``x`` (tokens or batch) and
        ``context`` (decode: mean tokens cached per sequence)."""
        rows = self.points[phase]
        if not rows:
            return 1.0
        cs = sorted(rows)
        if len(cs) == 1 or context <= cs[0]:
            return self._along(rows[cs[0]], x)
        if context >= cs[-1]:
            return self._along(rows[cs[-1]], x)
        hi = next(i for i, c in enumerate(cs) if c >= context)
        c0, c1 = cs[hi - 1], cs[hi]
        f0, f1 = self._along(rows[c0], x), self._along(rows[c1], x)
        lo = math.log(max(c0, 1.0))
        w = (math.log(max(context, 1.0)) - lo) / (math.log(max(c1, 1.0)) - lo) if c1 > max(c0, 1.0) else 1.0
        return f0 + w * (f1 - f0)


@dataclass
class Throttle:
    """Stretches each step to ``dilation * cpu_time / speed``; counts sleep, compute and overruns."""

    dilation: float = 1.0
    compute_s: float = 0.0   # CPU seconds of real compute (host thread)
    sleep_s: float = 0.0     # wall seconds slept to reach targets
    steps: int = 0
    overruns: int = 0
    last: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.dilation >= 1.0:
            raise ValueError(f"dilation must be >= 1, got {self.dilation}")

    def run(self, fn, speed: float):
        """Call ``fn()`` and stretch it to the device's speed; returns ``fn``'s result.

        ``self.last`` then holds the step's ``start``/``end`` (wall, ``time.monotonic``),
        ``cpu_s``, ``target_s`` and ``overrun``.
        """
        if not speed > 0:
            raise ValueError(f"device speed must be > 0, got {speed}")
        w0, c0 = time.monotonic(), time.thread_time()
        out = fn()
        cpu = time.thread_time() - c0
        target = self.dilation * cpu / speed
        self.wait_until(w0 + target)
        end = time.monotonic()
        overrun = (end - w0) > target * (1 + OVERRUN_TOLERANCE) + OVERRUN_SLACK_S
        self.compute_s += cpu
        self.steps += 1
        self.overruns += overrun
        self.last = {"start": w0, "end": end, "cpu_s": cpu, "target_s": target, "overrun": overrun}
        return out

    def wait_until(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
            self.sleep_s += remaining
