"""The scheduler on the emulated devices: the real-runtime driver of
:class:`~e2llm_lite.serving.scheduler.Scheduler` (the simulator is the other one).

It holds no scheduling logic. It feeds the scheduler

* :class:`Arrival` when a request's arrival time (device s since the run started) has come on the
  runtime's clock (:meth:`~e2llm_lite.runtime.driver.EmulatedCluster.now_s`: wall / dilation);
* :class:`IterationDone` when every operation it submitted for an iteration has completed, at the
  latest completion's device time, with the earliest first-stage start as ``started_s``;
* :class:`HandoffDone` when a KV hand-off's every piece is stored,

and carries out the actions it answers with the runtime's asynchronous API:

* :class:`RunIteration` — one :meth:`Pipeline.submit` per prompt (or chunk: the prompt's token ids
  ``[cached, cached + tokens)``) and one :meth:`Pipeline.submit_decode` for its decode list (each
  request's last token); the workers run them in order, so an iteration's operations follow each
  other through the stages like the simulator's one iteration;
* :class:`MoveKV` — :meth:`EmulatedCluster.submit_move_kv` (a *streamed* hand-off is sent when the
  prefill is done: the runtime does not stream layer by layer during a prefill);
* :class:`FreeKV` — :meth:`EmulatedCluster.submit_free`; :class:`Reject` — nothing (the
  scheduler's record keeps the reason).

Real tokens come out: each request's greedy tokens, in order, in :attr:`RealResult.tokens`
(and to ``on_token`` as they arrive). Every event fed to the scheduler and every action it
answered is logged (:attr:`RealResult.events`, :attr:`RealResult.actions`), so that a test can
replay the events into a fresh scheduler and check that it answers the same actions: the proof
that this adapter made no decision of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import E2LLMError
from .durations import Durations
from .events import Arrival, FreeKV, HandoffDone, IterationDone, MoveKV, Reject, RunIteration
from .metrics import summarize
from .scheduler import Scheduler

__all__ = ["RealResult", "ServeFailed", "serve_requests"]


class ServeFailed(E2LLMError):
    """The run could not go on (a device worker died, an operation failed): the message names
    the device and the unfinished requests; :attr:`result` holds what was done until then."""

    def __init__(self, message: str, result: "RealResult"):
        super().__init__(message)
        self.result = result


@dataclass
class RealResult:
    """A finished real run: the scheduler's records, the tokens, what each replica did."""

    records: dict
    tokens: dict                                     # request -> greedy tokens, in order
    iterations: list = field(default_factory=list)   # (replica, start_s, end_s, prompts, decodes)
    handoffs: list = field(default_factory=list)     # (request, src, dst, start_s, end_s)
    events: list = field(default_factory=list)       # every event fed to the scheduler
    actions: list = field(default_factory=list)      # the actions it answered, per event
    busy_s: dict = field(default_factory=dict)       # device -> device s computing
    overruns: dict = field(default_factory=dict)     # device -> steps that overran
    replica_devices: dict = field(default_factory=dict)
    end_s: float = 0.0
    wall_s: float = 0.0
    dilation: float = 1.0
    durations: Durations | None = None

    def metrics(self) -> dict:
        """:func:`~e2llm_lite.serving.metrics.summarize` of this run (as for the simulator)."""
        d = self.durations
        return summarize(self.records.values(), busy_s=self.busy_s,
                         replica_devices=self.replica_devices,
                         unloaded=None if d is None else
                         lambda r: d.unloaded(r.prompt_tokens, r.output_tokens))


@dataclass
class _Iteration:
    action: RunIteration
    ops: set
    started: float | None = None
    end: float = 0.0


class _Adapter:
    def __init__(self, rt, pipes: dict, scheduler: Scheduler, prompts: dict, on_token):
        self.rt, self.pipes, self.s, self.prompts, self.on_token = rt, pipes, scheduler, prompts, on_token
        self.t0 = rt.now_s()
        self.ops: dict[int, tuple] = {}       # operation id -> what it belongs to
        self.iterations: dict[tuple, _Iteration] = {}
        self.last: dict[int, int] = {}        # request -> its last token
        self.result = RealResult(records=scheduler.records, tokens={}, dilation=rt.dilation)
        for name, rep in scheduler.replicas.items():
            self.result.replica_devices[name] = [d for d, _, _ in rep.stages]
            for d, _, _ in rep.stages:
                self.result.busy_s[d] = 0.0

    # ---- events in ---------------------------------------------------------------------------
    def feed(self, event) -> None:
        actions = self.s.on(event)
        self.result.events.append(event)
        self.result.actions.append(actions)
        for a in actions:
            self.carry_out(a)

    def now(self) -> float:
        return self.rt.now_s() - self.t0

    # ---- actions out -------------------------------------------------------------------------
    def carry_out(self, a) -> None:
        if isinstance(a, RunIteration):
            pipe = self.pipes[a.replica]
            key = (a.replica, a.iteration)
            it = self.iterations[key] = _Iteration(a, set())
            for rid, tokens, cached in a.prefill:
                ids = self.prompts[rid][cached:cached + tokens]
                final = cached + tokens == len(self.prompts[rid])
                it.ops.add(pipe.submit(ids, rid, "prefill"))
                self.ops[rid] = ("iteration", key, final)
            if a.decode:
                opid = pipe.submit_decode({rid: self.last[rid] for rid, _ in a.decode})
                it.ops.add(opid)
                self.ops[opid] = ("iteration", key, True)
        elif isinstance(a, MoveKV):
            opid = self.rt.submit_move_kv(a.request, self.pipes[a.src], self.pipes[a.dst])
            self.ops[opid] = ("handoff", a)
        elif isinstance(a, FreeKV):
            self.ops[self.rt.submit_free(a.request, self.pipes[a.replica])] = ("free", a)
        elif not isinstance(a, Reject):
            raise TypeError(f"unknown action {a!r}")

    # ---- completions -------------------------------------------------------------------------
    def completed(self, c) -> None:
        what = self.ops.pop(c.request)
        if c.error is not None:
            raise c.error
        if what[0] == "iteration":
            _, key, final = what
            it = self.iterations[key]
            it.ops.discard(c.request)
            if c.started_s is not None:
                it.started = c.started_s if it.started is None else min(it.started, c.started_s)
            it.end = max(it.end, c.end_s)
            for dev, (a, b) in c.devices.items():
                self.result.busy_s[dev] = self.result.busy_s.get(dev, 0.0) + (b - a)
            if c.tokens is not None:
                for rid, tok in c.tokens.items():
                    self.token(rid, tok)
            elif final:
                self.token(c.request, c.token)
            if not it.ops:
                del self.iterations[key]
                a = it.action
                start, end = it.started - self.t0, it.end - self.t0
                self.result.iterations.append((a.replica, start, end, len(a.prefill), len(a.decode)))
                self.feed(IterationDone(end, a.replica, a.iteration, start))
        elif what[0] == "handoff":
            a = what[1]
            start, end = c.started_s - self.t0, c.end_s - self.t0
            self.result.handoffs.append((a.request, a.src, a.dst, start, end))
            self.feed(HandoffDone(end, a.request, a.src, a.dst, start))

    def token(self, rid: int, tok: int) -> None:
        self.last[rid] = tok
        self.result.tokens.setdefault(rid, []).append(tok)
        if self.on_token is not None:
            self.on_token(rid, tok)


def serve_requests(rt, pipes: dict, plan, cluster, requests, prompts: dict, *, costmodel=None,
                   policy: str | None = None, max_batch_tokens: int | None = None,
                   stream_kv: bool = False, decode_microbatches: int = 1, on_token=None,
                   progress: bool = False) -> RealResult:
    """Serve ``requests`` (:class:`~e2llm_lite.traces.Request`, arrival times in device s from
    now) with ``plan`` on the running emulated cluster ``rt`` whose replicas are ``pipes``
    (:meth:`~e2llm_lite.runtime.driver.EmulatedCluster.load_plan`); ``prompts``: request id ->
    its prompt's token ids (as many as its ``prompt_tokens``). Returns when every request has
    finished or been rejected with a reason; a request left neither when nothing is in flight
    any more is rejected as "unfinished". A failed operation (a worker died, a device refused)
    ends the run with :class:`ServeFailed`, naming the device and the unfinished requests."""
    requests = sorted(requests, key=lambda r: (r.arrival_s, r.id))
    for r in requests:
        if len(prompts.get(r.id, ())) != r.prompt_tokens:
            raise ValueError(f"request {r.id}: {len(prompts.get(r.id, ()))} prompt token ids for "
                             f"prompt_tokens={r.prompt_tokens}")
    kw = {} if max_batch_tokens is None else {"max_batch_tokens": max_batch_tokens}
    sched = Scheduler(plan, cluster, policy=policy, stream_kv=stream_kv,
                      decode_microbatches=decode_microbatches, **kw)
    ad = _Adapter(rt, pipes, sched, prompts, on_token)
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(requests), desc="serving", unit="req", file=sys.stderr)
    wall0 = time.monotonic()
    todo = list(requests)
    try:
        while todo or ad.ops:
            while todo and todo[0].arrival_s <= ad.now():
                r = todo.pop(0)
                ad.feed(Arrival(r.arrival_s, r))
            wait = (todo[0].arrival_s - ad.now()) * rt.dilation if todo else rt.timeout_s
            if not ad.ops:
                if not todo:
                    break          # nothing in flight, nothing to come: the scheduler is done
                time.sleep(max(0.0, min(wait, 1.0)))
                continue
            for c in rt.poll(max(0.0, min(wait, 1.0))):
                ad.completed(c)
            if bar is not None:
                bar.n = len(sched.records) - sched.pending
                bar.refresh()
    except (E2LLMError, ValueError) as e:   # WorkerDied, DeviceOOM are E2LLMErrors
        unfinished = sorted(rid for rid, rec in sched.records.items() if not rec.done and not rec.rejected)
        unfinished += [r.id for r in todo]
        for rid in unfinished:
            if rid in sched.records:
                sched.records[rid].rejected = f"unfinished: {e}"
        raise ServeFailed(f"{e}; unfinished requests: {unfinished}", _finish(ad, rt, wall0)) from e
    finally:
        if bar is not None:
            bar.close()
    for rec in sched.records.values():
        if not rec.done and not rec.rejected:
            rec.rejected = "unfinished: the scheduler stalled with this request in the system"
    result = _finish(ad, rt, wall0)
    result.durations = Durations(plan, cluster, costmodel)
    return result


def _finish(ad: _Adapter, rt, wall0: float) -> RealResult:
    res = ad.result
    res.end_s = ad.now()
    res.wall_s = time.monotonic() - wall0
    try:
        res.overruns = {n: int(s["overruns"]) for n, s in rt.stats().items()}
    except E2LLMError:
        pass
    return res
