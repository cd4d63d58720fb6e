"""The discrete-event simulator: the scheduler on a virtual clock, with cost-model durations.

A heap of events ordered by time (ties: the order they were scheduled, so a run is deterministic).
The simulator holds no scheduling logic: it hands each event to the
:class:`~e2llm_lite.serving.scheduler.Scheduler` and carries out the actions it returns:

* :class:`RunIteration`: the iteration goes through the replica's stages in order; each device
  works on one iteration at a time, first come first served (so several prompt iterations pipeline
  through a prefill replica); a stage is busy for its :class:`~.durations.Durations` time; the
  iteration is done when the last stage's tokens are back at the first device.
* :class:`MoveKV`: done after :meth:`Durations.handoff_ms` (links are not shared between
  hand-offs: contention on a link is not modelled).
* :class:`FreeKV`, :class:`Reject`: bookkeeping.
* :class:`Replan`: the ``replanner`` (default :func:`~e2llm_lite.planning.replan.replan`) is
  called at once; its answer comes back as :class:`PlanReady` ``replan_delay_s`` later (a
  constant of the run, so that a run is deterministic; the planner's wall time is reported
  beside it).
* :class:`LoadReplica`: the replica's devices load their layers in parallel from local storage,
  ``weights / LOAD_MB_PER_S`` each; :class:`ReplicaLoaded` when the slowest is done.
  :class:`UnloadReplica`: forgotten.
* Scripted faults: ``fail=[(device, t)]`` feeds :class:`DeviceFailed` at ``t`` (the replica's
  iterations in flight are lost with it: their completions are ignored), ``join=[(device, t)]``
  :class:`DeviceJoined` (that device is absent from the start until then); ``switch=[(t, plan)]``
  :class:`SwitchPlan` (roll that plan in at ``t``, no planner asked).

Memory is checked at every step: the simulator counts the KV each replica holds (every stage of a
replica holds the same requests' tokens: one count per replica), adds each step's new KV, each
imported KV cache, and checks every device's need during the step — weights + KV + the step's
working memory, the rule the workers enforce (:meth:`~e2llm_lite.memory.MemoryLedger.need_with`) —
raising :class:`MemoryViolation` if one would go over its budget (the scheduler's admission should
make that impossible; the tests hold it to that).
"""

from __future__ import annotations

import heapq
import sys
from dataclasses import dataclass, field

from ..errors import ConfigError, E2LLMError
from ..memory import MIB, MemoryLedger
from ..planning.replan import replan as default_replan
from .adapt import AdaptConfig
from .durations import Durations
from .events import (Arrival, DeviceFailed, DeviceJoined, FreeKV, HandoffDone, IterationDone,
                     LoadReplica, MoveKV, PlanReady, Reject, Replan, ReplicaLoaded, RunIteration,
                     SwitchPlan, UnloadReplica)
from .metrics import summarize
from .scheduler import Scheduler

__all__ = ["LOAD_MB_PER_S", "MemoryViolation", "REPLAN_DELAY_S", "SimResult", "script_events",
           "simulate_requests"]

#: How fast a device reads its layers from local storage when a replica is (re)loaded, MB/s
#: (a constant of the emulation: an SD card / eMMC reads sequentially at ~40-100 MB/s).
LOAD_MB_PER_S = 50.0
#: Simulated time from a re-plan's request to its plan (s): a constant so runs are deterministic
#: (the quick GA of a re-plan took 1-10 s wall on these machines; the measured wall time is
#: reported with each re-plan).
REPLAN_DELAY_S = 5.0


class MemoryViolation(E2LLMError):
    """A device went over its memory budget in the simulation (a scheduler bug)."""


@dataclass
class SimResult:
    """A finished simulation: the scheduler's records, what each replica and device did."""

    records: dict
    busy_s: dict                        # device -> seconds computing or sending
    iterations: list = field(default_factory=list)  # (replica, start_s, end_s, prompts, decodes)
    handoffs: list = field(default_factory=list)    # (request, src, dst, start_s, end_s)
    peak_bytes: dict = field(default_factory=dict)  # device -> peak bytes held
    budget_bytes: dict = field(default_factory=dict)
    events: int = 0
    end_s: float = 0.0
    replica_devices: dict = field(default_factory=dict)
    durations: Durations | None = None
    marks: list = field(default_factory=list)       # (time s, kind, detail): failures, re-plans...
    replans: list = field(default_factory=list)     # one dict per re-plan (Scheduler.replans)

    def metrics(self) -> dict:
        """:func:`~e2llm_lite.serving.metrics.summarize` of this run, with utilisation and the
        slowdown SLOs (each request's unloaded figures from :meth:`Durations.unloaded`)."""
        d = self.durations
        return summarize(self.records.values(), busy_s=self.busy_s,
                         replica_devices=self.replica_devices,
                         unloaded=None if d is None else
                         lambda r: d.unloaded(r.prompt_tokens, r.output_tokens))


class _Sim:
    def __init__(self, scheduler: Scheduler, durations: Durations, cluster, record_timeline: bool,
                 replanner=None, replan_delay_s: float = REPLAN_DELAY_S):
        self.s, self.d = scheduler, durations
        self.cluster = cluster
        self.replanner, self.replan_delay_s = replanner, replan_delay_s
        self.heap: list = []
        self.seq = 0
        self.now = 0.0
        self.free_at: dict[str, float] = {}
        self.busy: dict[str, float] = {}
        self.timeline = record_timeline
        self.result = SimResult(records=scheduler.records, busy_s=self.busy)
        self.ledgers: dict[str, MemoryLedger] = {}
        self.stage_ends: dict[int, dict] = {}   # request -> device -> end of its last prefill there
        # KV tokens held, per replica: every stage of a replica holds the same requests' tokens
        self.kv: dict[str, dict] = {name: {} for name in scheduler.replicas}
        self.kv_total: dict[str, float] = {name: 0.0 for name in scheduler.replicas}
        self.peak: dict[str, int] = {}
        self.stages = {}
        for name, rep in scheduler.replicas.items():
            self.add_replica(name, rep.stages)

    def add_replica(self, name: str, stages) -> None:
        self.stages[name] = stages
        self.kv.setdefault(name, {})
        self.kv_total.setdefault(name, 0.0)
        self.result.replica_devices[name] = [d for d, _, _ in stages]
        for dev, s, e in stages:
            self.ledgers[dev] = MemoryLedger(dev, int(self.cluster.device(dev).memory_mib * MIB), s, e,
                                             self.s.anatomy)
            self.free_at.setdefault(dev, 0.0)
            self.busy.setdefault(dev, 0.0)
            self.result.budget_bytes[dev] = self.ledgers[dev].budget_bytes

    def push(self, t: float, event) -> None:
        heapq.heappush(self.heap, (t, self.seq, event))
        self.seq += 1

    def apply(self, actions: list) -> None:
        for a in actions:
            if isinstance(a, RunIteration):
                self.run_iteration(a)
            elif isinstance(a, MoveKV):
                ends = self.stage_ends.pop(a.request, None)
                if a.streamed and ends:   # each source sends once its stage finished the prompt
                    per_source = self.d.handoff_per_source_ms(a.src, a.dst, a.tokens)
                    end = max([self.now] + [ends[dev] + ms / 1e3 for dev, ms in per_source.items()])
                else:
                    end = self.now + self.d.handoff_ms(a.src, a.dst, a.tokens) / 1e3
                self.add_kv(a.dst, [(a.request, a.tokens)], 0, 0, f"the KV of request {a.request}")
                if self.timeline:
                    self.result.handoffs.append((a.request, a.src, a.dst, self.now, end))
                self.push(end, HandoffDone(end, a.request, a.src, a.dst, self.now))
            elif isinstance(a, FreeKV):
                self.kv_total[a.replica] -= self.kv[a.replica].pop(a.request, 0)
                if self.s.records[a.request].done:
                    self.stage_ends.pop(a.request, None)
            elif isinstance(a, Replan):
                self.replan(a)
            elif isinstance(a, LoadReplica):
                stages = tuple(tuple(x) for x in a.replica.stages)
                self.d.add_replica(a.name, stages)
                self.add_replica(a.name, stages)
                load_s = max(self.ledgers[dev].weight_bytes for dev, _, _ in stages) / (LOAD_MB_PER_S * 1e6)
                end = self.now + load_s
                for dev, _, _ in stages:   # loading keeps the device busy
                    self.free_at[dev] = max(self.free_at[dev], end)
                self.push(end, ReplicaLoaded(end, a.name))
            elif isinstance(a, UnloadReplica):
                self.kv.pop(a.name, None)
                self.kv_total.pop(a.name, None)
            elif not isinstance(a, Reject):
                raise TypeError(f"unknown action {a!r}")

    def replan(self, a: Replan) -> None:
        """Ask the planner now; its plan arrives ``replan_delay_s`` later."""
        w = a.window
        got = self.replanner(self.cluster, a.devices, a.plan, rate_rps=a.rate_rps,
                             prompts=None if w is None else w.prompts,
                             outputs=None if w is None else w.outputs)
        t = self.now + self.replan_delay_s
        self.push(t, PlanReady(t, a.replan, got.plan, got.predicted_s, got.current_s, got.error,
                               got.planning_s))

    def fail(self, device: str) -> None:
        """The device's replicas lose every KV they hold (the scheduler re-queues their requests)."""
        for name, stages in self.stages.items():
            if name in self.kv and device in [d for d, _, _ in stages]:
                self.kv[name] = {}
                self.kv_total[name] = 0.0

    def add_kv(self, replica: str, new_kv, step_tokens: int, rows: int, what: str) -> None:
        """Count new KV on every stage of ``replica`` and check each device's need during a step
        of ``step_tokens`` tokens (the workers' rule: :meth:`MemoryLedger.need_with`)."""
        book = self.kv[replica]
        for rid, tokens in new_kv:
            book[rid] = book.get(rid, 0) + tokens
        self.kv_total[replica] += sum(t for _, t in new_kv)
        total = self.kv_total[replica]
        for dev, _, _ in self.stages[replica]:
            led = self.ledgers[dev]
            need = led.need_with(total, step_tokens, rows)
            if need > self.peak.get(dev, 0):
                self.peak[dev] = need
            if need > led.budget_bytes:
                raise MemoryViolation(f"at {self.now:.6f} s: device {dev!r} needs {need / MIB:.1f} MiB "
                                      f"for {what} on {replica} but has "
                                      f"{led.budget_bytes / MIB:.1f} MiB")

    def run_iteration(self, it: RunIteration) -> None:
        stages = self.stages[it.replica]
        busy, back_ms = self.d.iteration_ms(it)
        step_tokens = it.tokens
        rows = len(it.prefill) + len(it.decode)
        new_kv = [(rid, tokens) for rid, tokens, _ in it.prefill] + [(rid, 1) for rid, _ in it.decode]
        self.add_kv(it.replica, new_kv, step_tokens, rows, f"iteration {it.iteration}")
        t = self.now
        started = None
        ends = {}
        free_at, busy_s = self.free_at, self.busy
        for (dev, _, _), ms in zip(stages, busy):
            start = free_at[dev] if free_at[dev] > t else t
            if started is None:
                started = start
            t = start + ms / 1e3
            free_at[dev] = t
            busy_s[dev] += ms / 1e3
            ends[dev] = t
        for rid, _, _ in it.prefill:   # when each stage finished (the last chunk of) the prompt
            self.stage_ends[rid] = ends
        end = t + back_ms / 1e3
        if self.timeline:
            self.result.iterations.append((it.replica, started, end, len(it.prefill), len(it.decode)))
        self.push(end, IterationDone(end, it.replica, it.iteration, started))

    def run(self, requests, progress: bool, fail=(), join=(), switch=()) -> SimResult:
        for r in requests:
            self.push(r.arrival_s, Arrival(r.arrival_s, r))
        for t, plan in switch:
            self.push(t, SwitchPlan(t, plan))
        for dev, t in fail:
            self.push(t, DeviceFailed(t, dev))
        for dev, t in join:
            self.push(t, DeviceJoined(t, dev))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(requests), desc="simulating", unit="req", file=sys.stderr)
        finished = 0
        while self.heap:
            self.now, _, event = heapq.heappop(self.heap)
            if isinstance(event, DeviceFailed):
                self.fail(event.device)
            self.apply(self.s.on(event))
            if bar is not None and isinstance(event, IterationDone) and self.s.events % 256 == 0:
                done = len(self.s.records) - self.s.pending
                if done > finished:
                    bar.update(done - finished)
                    finished = done
        if bar is not None:
            bar.update(len(requests) - finished)
            bar.close()
        self.result.events = self.s.events
        self.result.end_s = self.now
        self.result.peak_bytes = {d: self.peak.get(d, led.weight_bytes) for d, led in self.ledgers.items()}
        self.result.marks = list(self.s.marks)
        self.result.replans = list(self.s.replans)
        return self.result


def simulate_requests(plan, cluster, requests, *, costmodel=None, policy: str | None = None,
                      max_batch_tokens: int | None = None, stream_kv: bool = False,
                      decode_microbatches: int = 1, timeline: bool = False,
                      progress: bool = False, fail=(), join=(), replan: bool | None = None,
                      adapt: AdaptConfig | None = None, replanner=None,
                      replan_delay_s: float = REPLAN_DELAY_S, switch=(), seed: int = 0) -> SimResult:
    """Serve ``requests`` (a list of :class:`~e2llm_lite.traces.Request`) with ``plan`` on
    ``cluster`` in virtual time. Every request ends finished or rejected with a reason; one left
    neither when the events run out is rejected as "unfinished" (a scheduler that stalled).

    ``fail`` / ``join``: ``[(device, time s), ...]`` scripted failures / joins (a joining device
    is absent until then). ``replan`` (default: on when there are faults, joins or ``adapt``):
    re-plan on the devices up after a failure or join; ``adapt``: also when the workload drifts
    (:mod:`~e2llm_lite.serving.adapt`). ``replanner(cluster, devices, plan, rate_rps=, prompts=,
    outputs=)``: default :func:`~e2llm_lite.planning.replan.replan` with ``seed``. ``switch``:
    ``[(time s, plan), ...]``: roll each plan in at its time (:class:`~.events.SwitchPlan`)."""
    requests = sorted(requests, key=lambda r: (r.arrival_s, r.id))
    fail, join = script_events(fail, cluster, "fail"), script_events(join, cluster, "join")
    if not (isinstance(replan_delay_s, (int, float)) and 0 <= replan_delay_s < float("inf")):
        raise ConfigError(f"replan_delay_s must be a finite number >= 0, got {replan_delay_s!r}")
    kw = {} if max_batch_tokens is None else {"max_batch_tokens": max_batch_tokens}
    if replan is None:
        replan = bool(fail or join or adapt is not None)
    sched = Scheduler(plan, cluster, policy=policy, stream_kv=stream_kv,
                      decode_microbatches=decode_microbatches, replan=replan, adapt=adapt,
                      absent=[d for d, _ in join], **kw)
    durations = Durations(plan, cluster, costmodel)
    if replanner is None:
        def replanner(cl, devices, pl, **k):
            return default_replan(cl, devices, pl, seed=seed, costmodel=costmodel, **k)
    sim = _Sim(sched, durations, cluster, timeline, replanner, replan_delay_s)
    try:
        switch = sorted(((float(t), p) for t, p in switch or ()), key=lambda x: x[0])
    except (TypeError, ValueError):
        raise ConfigError(f"switch takes [(time s, plan), ...], got {switch!r}") from None
    if not all(0 <= t < float("inf") for t, _ in switch):
        raise ConfigError("switch times must be finite numbers of seconds >= 0")
    result = sim.run(requests, progress, fail, join, switch)
    result.durations = durations
    for rec in result.records.values():
        if not rec.done and not rec.rejected:
            rec.rejected = "unfinished: the scheduler stalled with this request in the system"
    return result


def script_events(items, cluster, what: str) -> list:
    """``[(device, time s), ...]`` checked against the cluster: one clear error per problem."""
    out = []
    for item in items or ():
        try:
            dev, t = item
            t = float(t)
        except (TypeError, ValueError):
            raise ConfigError(f"--{what} takes DEVICE@SECONDS, got {item!r}") from None
        if dev not in cluster.names:
            raise ConfigError(f"--{what}: no device {dev!r} in cluster {cluster.name!r} "
                              f"(it has {', '.join(cluster.names)})")
        if not (t >= 0 and t < float("inf")):
            raise ConfigError(f"--{what}: the time must be a finite number of seconds >= 0, got {t!r}")
        out.append((dev, t))
    return out
