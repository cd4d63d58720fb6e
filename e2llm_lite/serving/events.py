"""What flows between the scheduler and a backend: **events** in, **actions** out.

The scheduler (:mod:`e2llm_lite.serving.scheduler`) never reads a clock and never touches a
device. A backend — the simulator (virtual clock, cost-model durations) or the real runtime's
adapter (wall clock, emulated devices) — tells it what happened, with the time it happened
(seconds of **device time** since the run's start), and carries out what it answers.

Events (backend -> scheduler):

* :class:`Arrival` — a request arrived.
* :class:`IterationDone` — an iteration the scheduler started has left the replica's last stage:
  every prompt in it has its first token, every sequence decoded in it has one more token.
  ``started_s``: when its first stage began computing it (a prompt's waiting time ends there).
* :class:`HandoffDone` — a request's KV cache arrived at its decoder (every layer's piece).
* :class:`DeviceFailed` — a device stopped; its replica is lost (the failure issue builds on it).

Actions (scheduler -> backend):

* :class:`RunIteration` — run one iteration on a replica: prefill the listed prompts and/or one
  decode step for the listed sequences (with their current context lengths).
* :class:`MoveKV` — move a request's KV cache from one replica to another (each layer's piece to
  the device holding that layer there).
* :class:`FreeKV` — forget a request's KV cache on a replica.
* :class:`Reject` — a request that cannot be served, with the reason (nothing is dropped silently).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..traces import Request

__all__ = ["Action", "Arrival", "DeviceFailed", "Event", "FreeKV", "HandoffDone", "IterationDone",
           "MoveKV", "Reject", "Request", "RunIteration"]


# ---- events ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arrival:
    time_s: float
    request: Request


@dataclass(frozen=True)
class IterationDone:
    time_s: float
    replica: str
    iteration: int        # the id the scheduler gave it in RunIteration
    started_s: float      # when its first stage started computing it


@dataclass(frozen=True)
class HandoffDone:
    time_s: float
    request: int
    src: str              # replica names
    dst: str
    started_s: float


@dataclass(frozen=True)
class DeviceFailed:
    time_s: float
    device: str


Event = Arrival | IterationDone | HandoffDone | DeviceFailed


# ---- actions ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunIteration:
    """``prefill``: ((request id, prompt tokens to compute now, prompt tokens already cached),
    ...) — a prompt too large for a replica's memory in one step is prefilled in chunks (its
    first token comes with the last chunk); ``decode``: ((request id, context tokens before this
    step), ...). Either may be empty, not both."""

    replica: str
    iteration: int
    prefill: tuple[tuple[int, int, int], ...] = ()
    decode: tuple[tuple[int, int], ...] = ()

    @property
    def tokens(self) -> int:
        """Tokens this iteration computes (the iteration token budget counts these)."""
        return sum(t for _, t, _ in self.prefill) + len(self.decode)


@dataclass(frozen=True)
class MoveKV:
    """Move ``tokens`` tokens of ``request``'s KV cache from replica ``src`` to replica ``dst``.
    ``streamed``: the destination was chosen before the prefill ran, so each layer's piece could
    leave as soon as its stage had computed it (Splitwise's layer-wise KV streaming)."""

    request: int
    src: str
    dst: str
    tokens: int
    streamed: bool = False


@dataclass(frozen=True)
class FreeKV:
    request: int
    replica: str


@dataclass(frozen=True)
class Reject:
    request: int
    reason: str


Action = RunIteration | MoveKV | FreeKV | Reject
