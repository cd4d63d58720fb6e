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
  scheduler's record keeps the reason);
* :class:`Replan` — the planner (default :func:`~e2llm_lite.planning.replan.replan`, the same
  as the simulator's) on a background thread while serving goes on; its answer is fed back as
  :class:`PlanReady` when it is ready;
* :class:`LoadReplica` — :meth:`EmulatedCluster.submit_load` (the devices load the layers from
  the GGUF file while the other replicas serve), answered by :class:`ReplicaLoaded`;
  :class:`UnloadReplica` — the replica's KV freed and its devices released.

**Faults.** A worker that dies (``fail``: this driver SIGKILLs the device's worker at the given
device time — a real death, detected like any other) is reported by the runtime
(:meth:`~e2llm_lite.runtime.driver.EmulatedCluster.poll`: a ``"died"`` completion) and fed as
:class:`DeviceFailed` at the device time it was noticed; whatever was in flight on its replica is
forgotten (the scheduler re-queues those requests). A re-queued request's prefill computes its
prompt **plus the tokens it had produced** (its token ids here), so its text goes on unchanged.
A joining device (``join``) is absent until its time: if the cluster was started without it
(``EmulatedCluster(absent=...)``), its worker process starts then and pairs up with the live
ones (:meth:`~e2llm_lite.runtime.driver.EmulatedCluster.join`); then :class:`DeviceJoined`.

Real tokens come out: each request's greedy tokens, in order, in :attr:`RealResult.tokens`
(and to ``on_token`` as they arrive). Every event fed to the scheduler and every action it
answered is logged (:attr:`RealResult.events`, :attr:`RealResult.actions`), so that a test can
replay the events into a fresh scheduler and check that it answers the same actions: the proof
that this adapter made no decision of its own.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from ..errors import ConfigError, E2LLMError, WorkerDied
from ..planning.replan import replan as default_replan
from .adapt import AdaptConfig
from .durations import Durations
from .events import (Arrival, DeviceFailed, DeviceJoined, FreeKV, HandoffDone, IterationDone,
                     LoadReplica, MoveKV, PlanReady, Reject, Replan, ReplicaLoaded, RunIteration,
                     UnloadReplica)
from .metrics import summarize
from .scheduler import Scheduler
from .simulator import script_events

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
    marks: list = field(default_factory=list)        # (device s, kind, detail): the scheduler's
    replans: list = field(default_factory=list)      # one dict per re-plan (the scheduler's log)
    deaths: list = field(default_factory=list)       # {device, detected_s, detected_wall, why,
                                                     #  detected_after_s: wall s after its kill}
    kills: list = field(default_factory=list)        # {device, killed_s, killed_wall}: ``fail``
    stopped: str = ""                                # why the service stopped, if it did

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
    tokens: list = field(default_factory=list)   # (request, token): committed when it is done


class _Adapter:
    def __init__(self, rt, pipes: dict, scheduler: Scheduler, prompts: dict, on_token, replanner):
        self.rt, self.pipes, self.s, self.prompts, self.on_token = rt, dict(pipes), scheduler, prompts, on_token
        self.replanner = replanner
        self.t0 = rt.now_s()
        self.ops: dict[int, tuple] = {}       # operation id -> (devices it touches, what it is)
        self.iterations: dict[tuple, _Iteration] = {}
        self.last: dict[int, int] = {}        # request -> its last token
        self.planned: queue.Queue = queue.Queue()   # PlanReady answers from planner threads
        self.planning = 0                     # planner threads running
        self.told: set = set(rt.dead)         # devices whose death the scheduler knows of
        self.result = RealResult(records=scheduler.records, tokens={}, dilation=rt.dilation)
        for name, rep in scheduler.replicas.items():
            self._note_replica(name, rep.stages)

    def _note_replica(self, name: str, stages) -> None:
        self.result.replica_devices[name] = [d for d, _, _ in stages]
        for d, _, _ in stages:
            self.result.busy_s.setdefault(d, 0.0)

    @property
    def busy(self) -> bool:
        """Operations or a planner in flight, or a worker death the scheduler has not heard of."""
        return bool(self.ops) or self.planning > 0 or bool(set(self.rt.dead) - self.told)

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
        try:
            self._carry_out(a)
        except WorkerDied:
            # a device of it died and the runtime has not reported it yet: its "died"
            # completion comes next, and the scheduler re-queues what this action was for
            if not self.rt.dead:
                raise

    def _carry_out(self, a) -> None:
        rt = self.rt
        if isinstance(a, RunIteration):
            pipe = self.pipes[a.replica]
            key = (a.replica, a.iteration)
            it = self.iterations[key] = _Iteration(a, set())
            devices = set(pipe.devices)
            for rid, tokens, cached in a.prefill:
                rec = self.s.records[rid]
                done = self.result.tokens.get(rid, [])[:rec.redo]   # a re-queued request's tokens
                ids = (list(self.prompts[rid]) + done)[cached:cached + tokens]
                final = cached + tokens == rec.prefill_tokens
                opid = pipe.submit(ids, rid, "prefill", op=rt.new_op())
                it.ops.add(opid)
                self.ops[opid] = (devices, "iteration", key, rid, final)
            if a.decode:
                opid = pipe.submit_decode({rid: self.last[rid] for rid, _ in a.decode})
                it.ops.add(opid)
                self.ops[opid] = (devices, "iteration", key, None, True)
        elif isinstance(a, MoveKV):
            src, dst = self.pipes[a.src], self.pipes[a.dst]
            opid = rt.submit_move_kv(a.request, src, dst)
            self.ops[opid] = (set(src.devices) | set(dst.devices), "handoff", a)
        elif isinstance(a, FreeKV):
            pipe = self.pipes[a.replica]
            if not set(pipe.devices) & set(rt.dead):
                self.ops[rt.submit_free(a.request, pipe)] = (set(pipe.devices), "free", a)
        elif isinstance(a, Replan):
            self.plan_in_background(a)
        elif isinstance(a, LoadReplica):
            pipe = rt.submit_load(list(a.replica.stages), a.name)
            pipe.role, pipe.batch = a.replica.role, a.replica.batch
            self.pipes[a.name] = pipe
            self._note_replica(a.name, a.replica.stages)
            self.ops[pipe.load_op] = (set(pipe.devices), "load", a.name)
        elif isinstance(a, UnloadReplica):
            pipe = self.pipes.pop(a.name)
            pipe.release()
            if not set(pipe.devices) & set(rt.dead):   # its KV (a later LOAD would drop it too)
                self.ops[rt.submit_free(-1, pipe)] = (set(pipe.devices), "free", a)
        elif not isinstance(a, Reject):
            raise TypeError(f"unknown action {a!r}")

    def plan_in_background(self, a: Replan) -> None:
        """Run the planner on a thread; its answer is fed as PlanReady by the serving loop."""
        self.planning += 1
        w = a.window

        def work():
            try:
                got = self.replanner(self.s.cluster, a.devices, a.plan, rate_rps=a.rate_rps,
                                     prompts=None if w is None else w.prompts,
                                     outputs=None if w is None else w.outputs)
                self.planned.put((a.replan, got, None))
            except BaseException as e:  # noqa: BLE001 - reported by the serving loop
                self.planned.put((a.replan, None, e))

        threading.Thread(target=work, name="e2llm-replan", daemon=True).start()

    def plans_ready(self) -> None:
        while True:
            try:
                replan, got, error = self.planned.get_nowait()
            except queue.Empty:
                return
            self.planning -= 1
            if error is not None:
                raise E2LLMError(f"re-planning failed: {type(error).__name__}: {error}")
            self.feed(PlanReady(self.now(), replan, got.plan, got.predicted_s, got.current_s,
                                got.error, got.planning_s))

    # ---- completions -------------------------------------------------------------------------
    def completed(self, c) -> None:
        if c.kind == "died":
            self.died(c)
            return
        what = self.ops.pop(c.request, None)
        if what is None:
            return   # an operation of a replica lost with a device: forgotten at its death
        _, kind, *rest = what
        if c.error is not None:
            raise c.error
        if kind == "iteration":
            key, rid, final = rest
            it = self.iterations[key]
            it.ops.discard(c.request)
            if c.started_s is not None:
                it.started = c.started_s if it.started is None else min(it.started, c.started_s)
            it.end = max(it.end, c.end_s)
            for dev, (a, b) in c.devices.items():
                self.result.busy_s[dev] = self.result.busy_s.get(dev, 0.0) + (b - a)
            if c.tokens is not None:
                it.tokens += list(c.tokens.items())
            elif final:
                it.tokens.append((rid, c.token))
            if not it.ops:
                del self.iterations[key]
                for r, tok in it.tokens:   # the scheduler counts them now
                    self.token(r, tok)
                a = it.action
                start, end = it.started - self.t0, it.end - self.t0
                self.result.iterations.append((a.replica, start, end, len(a.prefill), len(a.decode)))
                self.feed(IterationDone(end, a.replica, a.iteration, start))
        elif kind == "handoff":
            a = rest[0]
            start, end = c.started_s - self.t0, c.end_s - self.t0
            self.result.handoffs.append((a.request, a.src, a.dst, start, end))
            self.feed(HandoffDone(end, a.request, a.src, a.dst, start))
        elif kind == "load":
            self.feed(ReplicaLoaded(c.end_s - self.t0, rest[0]))

    def died(self, c) -> None:
        """A device's worker died: forget what was in flight on it, tell the scheduler."""
        device = c.pipeline
        self.told.add(device)
        if not self.s.replan:
            raise WorkerDied(str(c.error))   # not survived: the run ends with ServeFailed
        wall = time.monotonic()
        kill = next((k for k in self.result.kills if k["device"] == device), None)
        self.result.deaths.append({"device": device, "detected_s": c.end_s - self.t0,
                                   "detected_wall": wall, "why": str(c.error),
                                   "detected_after_s": None if kill is None else wall - kill["killed_wall"]})
        lost = {opid for opid, (devs, *_) in self.ops.items() if device in devs}
        loads = [self.ops[o][2] for o in lost if self.ops[o][1] == "load"]
        for opid in lost:
            del self.ops[opid]
        for key in [k for k in self.iterations if device in self.pipes[k[0]].devices]:
            del self.iterations[key]
        self.feed(DeviceFailed(c.end_s - self.t0, device))
        for name in loads:   # a replica that was loading there: the scheduler drops it
            self.feed(ReplicaLoaded(c.end_s - self.t0, name))

    def token(self, rid: int, tok: int) -> None:
        self.last[rid] = tok
        toks = self.result.tokens.setdefault(rid, [])
        del toks[self.s.records[rid].tokens:]   # what the scheduler has counted stays
        toks.append(tok)
        if self.on_token is not None:
            self.on_token(rid, tok)
def serve_requests(rt, pipes: dict, plan, cluster, requests, prompts: dict, *, costmodel=None,
                   policy: str | None = None, max_batch_tokens: int | None = None,
                   stream_kv: bool = False, decode_microbatches: int = 1, on_token=None,
                   progress: bool = False, fail=(), join=(), replan: bool | None = None,
                   adapt: AdaptConfig | None = None, replanner=None, seed: int = 0) -> RealResult:
    """Serve ``requests`` (:class:`~e2llm_lite.traces.Request`, arrival times in device s from
    now) with ``plan`` on the running emulated cluster ``rt`` whose replicas are ``pipes``
    (:meth:`~e2llm_lite.runtime.driver.EmulatedCluster.load_plan`); ``prompts``: request id ->
    its prompt's token ids (as many as its ``prompt_tokens``). Returns when every request has
    finished or been rejected with a reason; a request left neither when nothing is in flight
    any more is rejected as "unfinished".

    ``fail`` / ``join``: ``[(device, device s), ...]``: SIGKILL that device's worker then / the
    device joins then (absent until then: not in ``plan``). ``replan`` (default: on when there
    are faults, joins or ``adapt``): a worker that dies is survived — its requests re-queued,
    the planner asked for a plan of the devices left (``replanner``, as in
    :func:`~e2llm_lite.serving.simulator.simulate_requests`), the plan rolled in; ``adapt``:
    also re-plan when the workload drifts. With ``replan`` off, a worker that dies (or any
    failed operation) ends the run with :class:`ServeFailed`, naming the device and the
    unfinished requests."""
    requests = sorted(requests, key=lambda r: (r.arrival_s, r.id))
    for r in requests:
        if len(prompts.get(r.id, ())) != r.prompt_tokens:
            raise ValueError(f"request {r.id}: {len(prompts.get(r.id, ()))} prompt token ids for "
                             f"prompt_tokens={r.prompt_tokens}")
    fail, join = script_events(fail, cluster, "fail"), script_events(join, cluster, "join")
    if fail and not rt.spawn:
        raise ConfigError("--fail kills a worker process this driver started: not with workers "
                          "started elsewhere")
    kw = {} if max_batch_tokens is None else {"max_batch_tokens": max_batch_tokens}
    if replan is None:
        replan = bool(fail or join or adapt is not None)
    dead = sorted(set(rt.dead))   # workers that died before this run: never up
    if set(dead) & set(plan.used_devices):
        raise ConfigError(f"the plan uses device(s) {', '.join(sorted(set(dead) & set(plan.used_devices)))} "
                          "whose worker is dead")
    sched = Scheduler(plan, cluster, policy=policy, stream_kv=stream_kv,
                      decode_microbatches=decode_microbatches, replan=replan, adapt=adapt,
                      absent=sorted({d for d, _ in join} | set(dead)), **kw)
    if replanner is None:
        def replanner(cl, devices, pl, **k):
            return default_replan(cl, devices, pl, seed=seed, costmodel=costmodel, **k)
    ad = _Adapter(rt, pipes, sched, prompts, on_token, replanner)
    script = sorted([(t, "fail", d) for d, t in fail] + [(t, "join", d) for d, t in join])
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(requests), desc="serving", unit="req", file=sys.stderr)
    wall0 = time.monotonic()
    todo = list(requests)
    try:
        while todo or ad.busy:
            now = ad.now()
            while script and script[0][0] <= now:
                _, what, dev = script.pop(0)
                if what == "fail":
                    ad.result.kills.append({"device": dev, "killed_s": ad.now(),
                                            "killed_wall": time.monotonic()})
                    rt.kill(dev)
                else:
                    if dev in rt.absent:   # a new worker process joins the running cluster
                        rt.join(dev)
                    ad.feed(DeviceJoined(ad.now(), dev))
            while todo and todo[0].arrival_s <= now:
                r = todo.pop(0)
                ad.feed(Arrival(r.arrival_s, r))
            ad.plans_ready()
            nexts = ([todo[0].arrival_s] if todo else []) + ([script[0][0]] if script else [])
            wait = (min(nexts) - ad.now()) * rt.dilation if nexts else rt.timeout_s
            wait = max(0.0, min(wait, 0.05 if ad.planning else 1.0))
            if not (todo or ad.busy):
                break              # nothing in flight, nothing to come: the scheduler is done
            for c in rt.poll(wait):   # also when idle: a worker that died is reported here
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
    res.marks, res.replans, res.stopped = list(ad.s.marks), list(ad.s.replans), ad.s.stopped
    res.end_s = ad.now()
    res.wall_s = time.monotonic() - wall0
    try:
        res.overruns = {n: int(s["overruns"]) for n, s in rt.stats().items()}
    except E2LLMError:
        pass
    return res
