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

from ..errors import E2LLMError
from ..memory import MIB, MemoryLedger
from .durations import Durations
from .events import Arrival, FreeKV, HandoffDone, IterationDone, MoveKV, Reject, RunIteration
from .metrics import summarize
from .scheduler import Scheduler

__all__ = ["MemoryViolation", "SimResult", "simulate_requests"]


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

    def metrics(self) -> dict:
        """:func:`~e2llm_lite.serving.metrics.summarize` of this run, with utilisation and the
        slowdown SLOs (each request's unloaded figures from :meth:`Durations.unloaded`)."""
        d = self.durations
        return summarize(self.records.values(), busy_s=self.busy_s,
                         replica_devices=self.replica_devices,
                         unloaded=None if d is None else
                         lambda r: d.unloaded(r.prompt_tokens, r.output_tokens))


class _Sim:
    def __init__(self, scheduler: Scheduler, durations: Durations, cluster, record_timeline: bool):
        self.s, self.d = scheduler, durations
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
            self.stages[name] = rep.stages
            self.result.replica_devices[name] = [d for d, _, _ in rep.stages]
            for dev, s, e in rep.stages:
                self.ledgers[dev] = MemoryLedger(dev, int(cluster.device(dev).memory_mib * MIB), s, e,
                                                 scheduler.anatomy)
                self.free_at[dev] = 0.0
                self.busy[dev] = 0.0
        self.result.budget_bytes = {d: led.budget_bytes for d, led in self.ledgers.items()}

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
            elif not isinstance(a, Reject):
                raise TypeError(f"unknown action {a!r}")

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

    def run(self, requests, progress: bool) -> SimResult:
        for r in requests:
            self.push(r.arrival_s, Arrival(r.arrival_s, r))
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(requests), desc="simulating", unit="req", file=sys.stderr)
        finished = 0
        while self.heap:
            self.now, _, event = heapq.heappop(self.heap)
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
        return self.result


def simulate_requests(plan, cluster, requests, *, costmodel=None, policy: str | None = None,
                      max_batch_tokens: int | None = None, stream_kv: bool = False,
                      decode_microbatches: int = 1, timeline: bool = False,
                      progress: bool = False) -> SimResult:
    """Serve ``requests`` (a list of :class:`~e2llm_lite.traces.Request`) with ``plan`` on
    ``cluster`` in virtual time. Every request ends finished or rejected with a reason; one left
    neither when the events run out is rejected as "unfinished" (a scheduler that stalled)."""
    requests = sorted(requests, key=lambda r: (r.arrival_s, r.id))
    kw = {} if max_batch_tokens is None else {"max_batch_tokens": max_batch_tokens}
    sched = Scheduler(plan, cluster, policy=policy, stream_kv=stream_kv,
                      decode_microbatches=decode_microbatches, **kw)
    durations = Durations(plan, cluster, costmodel)
    sim = _Sim(sched, durations, cluster, timeline)
    result = sim.run(requests, progress)
    result.durations = durations
    for rec in result.records.values():
        if not rec.done and not rec.rejected:
            rec.rejected = "unfinished: the scheduler stalled with this request in the system"
    return result
