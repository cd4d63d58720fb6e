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
* :class:`DeviceFailed` — a device stopped; its replica is lost, its requests are re-queued.
* :class:`DeviceJoined` — a device of the cluster became available (the next plan may use it).
* :class:`PlanReady` — the plan a :class:`Replan` asked for (or why there is none), with the
  planner's predicted waiting for it and for the current plan under the same workload.
* :class:`ReplicaLoaded` — a replica a :class:`LoadReplica` asked for has its layers loaded.
* :class:`SwitchPlan` — roll in this plan now, without asking the planner (an operator's
  decision, or the oracle of :mod:`e2llm_lite.compare.adaptation` that knows when a phase starts).

Actions (scheduler -> backend):

* :class:`RunIteration` — run one iteration on a replica: prefill the listed prompts and/or one
  decode step for the listed sequences (with their current context lengths).
* :class:`MoveKV` — move a request's KV cache from one replica to another (each layer's piece to
  the device holding that layer there).
* :class:`FreeKV` — forget a request's KV cache on a replica.
* :class:`Reject` — a request that cannot be served, with the reason (nothing is dropped silently).
* :class:`Replan` — run the planner on the devices that are up (in the background: the service
  goes on); answered by :class:`PlanReady`.
* :class:`LoadReplica` / :class:`UnloadReplica` — put a replica of the new plan on its devices /
  take a drained one off (a rolling change: one replica at a time); answered by
  :class:`ReplicaLoaded` / nothing.

Backends also read :attr:`Replan.reason` and the scheduler's ``marks`` to draw the timeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..traces import Request

__all__ = ["Action", "Arrival", "DeviceFailed", "DeviceJoined", "Event", "FreeKV", "HandoffDone",
           "IterationDone", "LoadReplica", "MoveKV", "PlanReady", "Reject", "Replan", "ReplicaLoaded",
           "Request", "RunIteration", "SwitchPlan", "UnloadReplica", "WindowStats"]


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


@dataclass(frozen=True)
class DeviceJoined:
    time_s: float
    device: str


@dataclass(frozen=True)
class PlanReady:
    """``plan``: the planner's plan (a :class:`~e2llm_lite.planning.Plan`), or None with
    ``error`` saying why there is none (e.g. the devices left cannot hold the model).
    ``predicted_s`` / ``current_s``: the planner's predicted mean waiting (s) of that plan and of
    the current plan under the same workload and rate (``inf``: the current plan cannot serve).
    ``planning_s``: how long the planner took (wall s, for the report)."""

    time_s: float
    replan: int                     # the id of the Replan it answers
    plan: object = None
    predicted_s: float = float("inf")
    current_s: float = float("inf")
    error: str = ""
    planning_s: float = 0.0


@dataclass(frozen=True)
class ReplicaLoaded:
    time_s: float
    replica: str


@dataclass(frozen=True)
class SwitchPlan:
    """Roll ``plan`` in now (a rolling change, as for an adopted re-plan) without a planner."""

    time_s: float
    plan: object


Event = (Arrival | IterationDone | HandoffDone | DeviceFailed | DeviceJoined | PlanReady
         | ReplicaLoaded | SwitchPlan)


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


@dataclass(frozen=True)
class WindowStats:
    """The recent workload the scheduler observed (:mod:`~e2llm_lite.serving.adapt`): the last
    ``n`` arrivals' prompt and output lengths (tokens) and their rate (requests/s)."""

    n: int
    rate_rps: float
    prompts: tuple
    outputs: tuple

    @property
    def mean_prompt(self) -> float:
        return sum(self.prompts) / max(1, len(self.prompts))

    @property
    def mean_output(self) -> float:
        return sum(self.outputs) / max(1, len(self.outputs))


@dataclass(frozen=True)
class Replan:
    """Ask for a plan of ``devices`` (the devices up now) because of ``reason`` (``"failure"``,
    ``"join"``, ``"workload"``). ``plan``: the current plan (the planner's warm start);
    ``window``: the observed workload (None: too few arrivals yet, plan for the current plan's);
    ``rate_rps``: the rate to plan for."""

    replan: int
    reason: str
    devices: tuple
    plan: object
    window: WindowStats | None
    rate_rps: float


@dataclass(frozen=True)
class LoadReplica:
    """Load ``replica`` (a :class:`~e2llm_lite.planning.ReplicaPlan`) under the name ``name``."""

    name: str
    replica: object


@dataclass(frozen=True)
class UnloadReplica:
    name: str


Action = RunIteration | MoveKV | FreeKV | Reject | Replan | LoadReplica | UnloadReplica
