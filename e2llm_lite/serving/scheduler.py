"""The scheduler: one state machine for E2LLM's roles, colocated replicas and Splitwise's pools.

:meth:`Scheduler.on` takes one event (:mod:`~e2llm_lite.serving.events`) and returns the actions
it decides. It never reads a clock and never calls a device, so the simulator and the real
runtime's adapter drive the very same code. It keeps, per request, a :class:`RequestRecord` (the
times it was told of), from which :mod:`~e2llm_lite.serving.metrics` computes every figure.

Iterations (the same rule for every strategy)
---------------------------------------------
A replica runs **iterations**. An iteration takes waiting prompts first (FIFO, as many as fit
the iteration token budget ``max_batch_tokens``, the first always; each needs its KV to fit the
replica's memory), then one decode token for each resident sequence the replica decodes (in
arrival order, up to the plan's decode batch ``B``, within the remaining budget). This is
splitwise-sim's iteration-level batching (prompts first, then tokens, under a token budget), used
here for every replica so both strategies batch by the same rule. What a replica may put into an
iteration depends on its role:

* ``prefill`` (E2LLM PREFILL, Splitwise prompt instance): prompts only, **pipelined** — up to one
  iteration per stage in flight, so a replica of S stages keeps every stage busy;
* ``decoder`` (E2LLM DECODER, Splitwise token instance): decode tokens only, **continuous
  batching** — one iteration in flight (a sequence's next step needs its last token); sequences
  join and leave between iterations; micro-batching is not modelled (as in the planner);
* ``both`` (colocated) and a Splitwise instance lent to the mixed pool: prompts and decode tokens
  in the same iteration, one in flight — a prompt makes that step's decode tokens wait for it
  (the interference of colocation, as in Orca / vLLM without chunked prefill).

The first output token comes out of the prefill (TTFT ends there); a request with one output
token needs no decode step and no hand-off.

Memory
------
The scheduler keeps its own :class:`~e2llm_lite.memory.MemoryLedger` per device (the rule the
workers enforce). A request's KV is reserved in full when it is admitted to a replica: its prompt
on a prefill replica (until the hand-off is done), ``prompt + output`` tokens on the replica that
decodes it, with room left for the replica's largest step (``B`` tokens on a decoder, the token
budget on a prefill replica). So a device is never over its memory and nothing is pre-empted. A
request that cannot fit anywhere even on empty replicas, or whose prompt + output exceeds the
model's context, is rejected at arrival with its reason; one that does not fit *now* waits.

Routing
-------
``policy="e2llm"`` (plans of every strategy but Splitwise):

* Prompts wait in **one FIFO queue**; whenever a prefill-capable replica has room for another
  iteration it takes prompts from the head, the replica with the shortest prefill trip first.
  Among replicas with room, the head goes to the one that would finish it first by the plan's
  figures (its prefill trip, + one prefill period per iteration already in its pipeline): least
  expected completion, from the cost model. A central queue is the M/M/c model the planner's
  formula assumes: nobody waits behind a busy replica while another one idles.
* A prompt that no prefill-capable replica could hold at all (its KV alone is too big for one)
  goes to the least-loaded DECODER that can, which prefills and decodes it (Splitwise's fallback
  to one instance); a prompt that fits a replica's KV but not one step's working memory is
  prefilled in **chunks** (the largest that fit; its first token comes with the last chunk).
* A finished prompt goes to the DECODER (else ``both``) replica with the lowest load (sequences
  held / B), ties broken by the most free memory, among those with room for its ``prompt + output``
  KV and fewer than B sequences held; if none has room it waits (FIFO), its KV held where it is.
  Late binding: the decoder is chosen when the KV is ready, with the freshest load figures.

``policy="splitwise"`` (splitwise-sim's ``MixedPoolScheduler``, re-implemented from its public
``scheduler.py``/``instance.py``): at arrival, the prompt goes to the prompt (then mixed) instance
with the fewest pending prompt tokens unless its queue is "long" (pending + new >
``prompt_max_pending_tokens``); the decode goes to the token (then mixed) instance with the least
scheduled memory unless it is "memory loaded" (the request's ``prompt + output`` KV would not fit
on top of what is scheduled there). When no prompt instance qualifies, the token instance with the
fewest pending tokens is moved into the mixed pool (and a prompt instance, the one with the least
scheduled memory, when no token instance qualifies); failing all that, prompt and decode run on the
instance with the fewest pending tokens. A mixed instance returns to its own pool when it has no
work left. Each instance keeps its own FIFO prompt queue. Not modelled: splitwise-sim's
pre-emption of decode tasks (memory is reserved in full here, so none is needed).

KV streaming (``stream_kv``, off by default; the same option for every strategy): Splitwise
streams the KV cache layer by layer while the prompt is still computing. With it on, the decoder
is chosen (and its memory reserved) when the prompt's prefill starts — E2LLM's late binding gives
way to early binding for that request — and each layer's KV leaves as soon as its stage has
computed it (:class:`MoveKV` ``streamed``); if no decoder has room at that moment the request is
handed off after its prefill as usual.

Decode micro-batches (``decode_microbatches`` k, default 1 as the planner assumes): a replica with
sequences to decode keeps up to ``min(k, stages)`` iterations in flight, each with its share
(``ceil(held / k)``) of the sequences, so the stages of a multi-stage decoder work on different
micro-batches at once instead of waiting for one batch's round trip.

Failures, joins and re-plans
----------------------------
A :class:`DeviceFailed` loses the replica(s) on the device; every request with work or KV there
is **re-queued** (a decoding one re-prefills its prompt + the tokens it produced, then goes on;
its arrival, first wait and first token are kept). With ``replan`` (or ``adapt``) the scheduler
asks for a plan of the devices up (:class:`Replan`; also after a :class:`DeviceJoined`, and when
the workload drifts, :mod:`~e2llm_lite.serving.adapt`) and, when the answer is adopted, **rolls it
in one replica at a time**: replicas equal to a live one stay; for each new replica the old ones
on its devices stop taking work, give back what they hold once their iterations in flight are
back (re-queued as after a failure), are taken off (:class:`UnloadReplica`) and the new one is
loaded (:class:`LoadReplica` -> :class:`ReplicaLoaded`). Requests that no replica can hold while a
plan is on its way wait for it; if the planner finds none, the service stops and every unfinished
request is rejected with its reason.

Thresholds: ``max_batch_tokens`` 2048 and ``prompt_max_pending_tokens`` 8192 are splitwise-sim's
figures, kept as they are: they count tokens of the very same Azure trace's requests, so relative
to a request (conv: mean prompt 1155 tokens) they mean what they meant there; only time is scaled.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..memory import MIB, MemoryLedger
from ..model import ANATOMY
from .adapt import AdaptConfig, ArrivalWindow, drift, newest_differ, worth_adopting
from .events import (Arrival, DeviceFailed, DeviceJoined, FreeKV, HandoffDone, IterationDone,
                     LoadReplica, MoveKV, PlanReady, Reject, Replan, ReplicaLoaded, RunIteration,
                     SwitchPlan, UnloadReplica)

__all__ = ["MAX_BATCH_TOKENS", "POLICIES", "PROMPT_MAX_PENDING_TOKENS", "ReplicaState",
           "RequestRecord", "Scheduler"]

#: The iteration token budget (splitwise-sim's ``max_batch_tokens``).
MAX_BATCH_TOKENS = 2048
#: A prompt queue is "long" past this many pending tokens (splitwise-sim's
#: ``prompt_max_pending_batch_tokens``).
PROMPT_MAX_PENDING_TOKENS = 8192
POLICIES = ("e2llm", "splitwise")


@dataclass
class RequestRecord:
    """What happened to one request (s of device time since the start; None: never happened).

    ``prefill_start_s``: its prefill iteration began (waiting ends); ``first_token_s``: the prefill
    iteration ended (TTFT); ``end_s``: its last token; ``tbt_sum_s`` / ``tbt_max_s`` / ``tokens``:
    gaps between its tokens and the count so far; ``handoff_s``: the KV hand-off's duration;
    ``rejected``: the reason, if it was not served.
    """

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefill_start_s: float | None = None
    first_token_s: float | None = None
    end_s: float | None = None
    tokens: int = 0
    last_token_s: float | None = None
    tbt_sum_s: float = 0.0
    tbt_max_s: float = 0.0
    prefill_replica: str = ""
    decode_replica: str = ""
    handoff_s: float = 0.0
    rejected: str = ""
    redo: int = 0
    restarts: int = 0

    @property
    def done(self) -> bool:
        return self.end_s is not None

    @property
    def prefill_tokens(self) -> int:
        """Tokens its (next) prefill computes: the prompt, + the tokens it had produced before a
        failure re-queued it (``redo``: they are re-prefilled, then it goes on decoding)."""
        return self.prompt_tokens + self.redo

    def token(self, t: float) -> None:
        """One more output token at ``t``."""
        if self.last_token_s is not None:
            gap = t - self.last_token_s
            self.tbt_sum_s += gap
            self.tbt_max_s = max(self.tbt_max_s, gap)
        self.tokens += 1
        self.last_token_s = t
        if self.tokens == self.output_tokens:
            self.end_s = t


@dataclass
class ReplicaState:
    """The scheduler's view of one replica: role / pool, ledgers, queues, iterations in flight."""

    name: str
    role: str                      # the plan's role: prefill, decoder, both
    stages: tuple                  # ((device, start, end), ...)
    batch: int                     # the plan's decode batch B
    trip_s: float                  # the plan's prefill trip (sum of stages), s
    period_s: float                # the plan's prefill period (slowest stage), s
    ledgers: list[MemoryLedger]
    pool: str = ""                 # splitwise: prompt, token or mixed
    prompts: deque = field(default_factory=deque)       # request ids waiting to prefill here
    decoding: list = field(default_factory=list)        # request ids resident here, decoding
    in_flight: dict = field(default_factory=dict)       # iteration id -> RunIteration
    promised: dict = field(default_factory=dict)        # splitwise: request -> KV tokens scheduled
    failed: bool = False
    draining: bool = False         # being replaced: finishes what it holds, takes nothing new

    @property
    def accepting(self) -> bool:
        """Whether new work may be given to it."""
        return not self.failed and not self.draining

    @property
    def devices(self) -> tuple:
        return tuple(d for d, _, _ in self.stages)

    @property
    def depth(self) -> int:
        return len(self.stages)

    def reserved(self, request: int) -> float:
        return self.ledgers[0].kv_tokens.get(request, 0)

    def reserve(self, request: int, tokens: int) -> None:
        for led in self.ledgers:
            led.add_kv(request, tokens)

    def free(self, request: int) -> None:
        for led in self.ledgers:
            led.free(request)

    def room(self, tokens: int, step_tokens: int, rows: int) -> bool:
        """Whether ``tokens`` more KV tokens fit every device with a step of ``step_tokens``."""
        return all(led.fits_step(tokens, step_tokens, rows) for led in self.ledgers)

    def free_bytes(self) -> float:
        return min(led.budget_bytes - led.used_bytes for led in self.ledgers)

    def held(self) -> int:
        """Sequences whose KV this replica holds for decoding (or will)."""
        return len(self.decoding)


class Scheduler:
    """Events in, actions out (module docstring). ``plan``: a :class:`~e2llm_lite.planning.Plan`
    checked against ``cluster``; ``policy``: ``"e2llm"`` or ``"splitwise"`` (default: from the
    plan's strategy); ``max_batch_tokens``: the iteration token budget of every replica."""

    def __init__(self, plan, cluster, *, policy: str | None = None,
                 max_batch_tokens: int = MAX_BATCH_TOKENS, stream_kv: bool = False,
                 decode_microbatches: int = 1,
                 prompt_max_pending_tokens: int = PROMPT_MAX_PENDING_TOKENS, anatomy=ANATOMY,
                 replan: bool = False, adapt: AdaptConfig | None = None, absent=()):
        plan.validate(cluster)
        self.policy = policy or ("splitwise" if plan.strategy == "splitwise" else "e2llm")
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy {self.policy!r}; use one of {', '.join(POLICIES)}")
        for what, v in (("max_batch_tokens", max_batch_tokens),
                        ("prompt_max_pending_tokens", prompt_max_pending_tokens)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{what} must be a whole number >= 1, got {v!r}")
        self.max_batch_tokens = max_batch_tokens
        self.stream_kv = bool(stream_kv)
        if isinstance(decode_microbatches, bool) or not isinstance(decode_microbatches, int) \
                or decode_microbatches < 1:
            raise ConfigError(f"decode_microbatches must be a whole number >= 1, got {decode_microbatches!r}")
        self.microbatches = decode_microbatches
        self.prompt_max_pending_tokens = prompt_max_pending_tokens
        self.anatomy = anatomy
        self.context = anatomy.max_positions
        self.cluster = cluster
        self.replicas: dict[str, ReplicaState] = {}
        for r in plan.replicas:
            self.replicas[r.name] = self._state(r.name, r)
        # ---- failures, joins, re-plans (module docstring of serving.adapt) ----
        unknown = sorted(set(absent) - set(cluster.names))
        if unknown:
            raise ConfigError(f"absent device(s) {', '.join(unknown)} are not in cluster {cluster.name!r}")
        if set(absent) & set(plan.used_devices):
            raise ConfigError("a device absent at the start cannot be in the starting plan")
        self.replan = bool(replan or adapt is not None)
        self.adapt = adapt
        self.plan = plan
        self.up: set = set(cluster.names) - set(absent)   # devices that are up
        self.window = ArrivalWindow(adapt.window if adapt else 100)
        self.planned = _planned_for(plan)
        self.arrivals = 0
        self.cooldown_until = 0
        self.replanning: int | None = None   # the Replan waiting for its PlanReady
        self.asked_for = None                # the WindowStats the last Replan planned for
        self.basis_start = 0                 # arrival count where the current plan's basis began
        self.again = ""                      # a reason to re-plan once the outstanding one answers
        self.rollout: deque = deque()        # replica plans of the new plan still to load
        self.retire: set = set()             # replicas of the old plan still to take off
        self.loading: ReplicaState | None = None
        self.generation = 0
        self.parked: list = []               # requests no replica can serve until the next plan
        self.stopped = ""                    # why the service stopped (nothing can serve)
        self.marks: list = []                # (time s, kind, detail): for timelines and reports
        self.replans: list = []              # one dict per Replan: what it cost and what came of it
        self._now = 0.0
        self.records: dict[int, RequestRecord] = {}
        self.queue: deque = deque()          # e2llm: prompts not yet given to a replica
        self.handoffs: deque = deque()       # requests whose KV waits for a decoder: (id, src)
        self.decoder_of: dict[int, str] = {}  # splitwise: the token instance chosen at arrival
        self.moving: dict[int, tuple] = {}   # request -> (src, dst) while its KV travels
        self.issued: dict[int, int] = {}     # request -> prompt tokens given to iterations so far
        self.bound: dict[int, str] = {}      # stream_kv: request -> decoder chosen before prefill
        self._iteration = 0
        self.events = 0

    def _state(self, name: str, r) -> ReplicaState:
        """The scheduler's state of replica plan ``r`` under ``name``."""
        ledgers = [MemoryLedger(d, int(self.cluster.device(d).memory_mib * MIB), s, e, self.anatomy)
                   for d, s, e in r.stages]
        pool = {"prefill": "prompt", "decoder": "token", "both": "mixed"}[r.role]
        return ReplicaState(name, r.role, tuple(tuple(x) for x in r.stages), max(1, r.batch),
                            r.prefill_latency_s or math.inf, r.prefill_period_s or math.inf,
                            ledgers, pool)

    # ---- the one entry point -------------------------------------------------------------------
    def on(self, event) -> list:
        """Take one event; return the actions it leads to (module docstring)."""
        self.events += 1
        self._touched: set = set()     # replicas whose state this event changed
        self._now = getattr(event, "time_s", self._now)
        out: list = []
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"not a scheduler event: {event!r}")
        getattr(self, handler)(event, out)
        self._advance_rollout(out)
        self._dispatch(out)
        return out

    @property
    def pending(self) -> int:
        """Requests told of that are neither finished nor rejected."""
        return sum(1 for r in self.records.values() if not r.done and not r.rejected)

    # ---- capability --------------------------------------------------------------------------
    def _fits_empty(self, rep: ReplicaState, kv: int, step: int, rows: int) -> bool:
        """Whether ``kv`` tokens of KV and a step of ``step`` tokens fit the replica empty."""
        return all(led.need_with(kv, step, rows) <= led.budget_bytes for led in rep.ledgers)

    def _prefill_capable(self, rep) -> bool:
        return rep.role in ("prefill", "both")

    def _decode_capable(self, rep) -> bool:
        return rep.role in ("decoder", "both")

    def _never_fits(self, req) -> str:
        """Why ``req`` can never be served here ('' if it can)."""
        p, total = req.prefill_tokens, req.prompt_tokens + req.output_tokens
        if total > self.context:
            return (f"prompt ({p}) + output ({req.output_tokens}) tokens exceed the model's "
                    f"context of {self.context}")
        live = [r for r in self.replicas.values() if r.accepting]
        if not live:
            return "no replica is left"
        if self.policy == "splitwise":
            # any instance may end up doing both (the fallback): one that holds it all suffices
            if any(self._fits_empty(r, total, 1 + r.batch, 1 + r.batch) for r in live):
                return ""
            return (f"its KV ({total} tokens) and prompt step do not fit any replica's memory")
        pre = [r for r in live if self._prefill_capable(r)]
        dec = [r for r in live if self._decode_capable(r)]
        if not any(self._fits_empty(r, total, 1 + r.batch, 1 + r.batch) if r.role == "both"
                   else self._fits_empty(r, p, 1, 1) for r in pre) and not any(
                self._fits_empty(r, total, 1 + r.batch, 1 + r.batch) for r in dec):
            return f"its prompt ({p} tokens) does not fit any replica's memory"
        if req.output_tokens > 1 and not any(
                self._fits_empty(r, total, r.batch, r.batch) for r in dec):
            return f"its KV ({total} tokens) does not fit any decoder's memory"
        return ""

    # ---- events ------------------------------------------------------------------------------
    def _arrival(self, ev: Arrival, out: list) -> None:
        req = ev.request
        if req.id in self.records:
            raise ValueError(f"request {req.id} arrived twice")
        rec = RequestRecord(req.id, ev.time_s, req.prompt_tokens, req.output_tokens)
        self.records[req.id] = rec
        self.arrivals += 1
        self.window.add(ev.time_s, req.prompt_tokens, req.output_tokens)
        if rec.prompt_tokens + rec.output_tokens > self.context:
            self._reject(rec, self._never_fits(rec), out)
            return
        self._route(rec, out)
        self._check_workload(out)

    def _reject(self, rec: RequestRecord, why: str, out: list) -> None:
        rec.rejected = why
        out.append(Reject(rec.id, why))

    def _route(self, rec: RequestRecord, out: list) -> None:
        """Give ``rec`` (new, or re-queued after a failure) to the replicas that can serve it; if
        none can, it waits for the next plan (re-planning on) or is rejected with the reason."""
        if self.stopped:
            self._reject(rec, self.stopped, out)
            return
        why = self._never_fits(rec)
        if why:
            if self.loading is not None or self.rollout or (
                    self.replan and (self.replanning is not None or self.again)):
                self.parked.append(rec.id)   # a plan is on its way (or being rolled in)
            else:
                self._reject(rec, why, out)
            return
        if self.policy == "splitwise":
            self._route_splitwise(rec)
        elif self._prefill_home(rec) is not None:
            self._enqueue(rec.id)
        else:   # no prefill replica can ever hold this prompt: a decoder that can does it all
            total = rec.prompt_tokens + rec.output_tokens
            live = [r for r in self.replicas.values() if r.accepting and self._decode_capable(r)
                    and self._fits_empty(r, total, 1 + r.batch, 1 + r.batch)]
            home = min(live, key=lambda r: (r.held() / r.batch, -r.free_bytes(), r.name))
            self.decoder_of[rec.id] = home.name
            home.prompts.append(rec.id)
            self._touched.add(home.name)

    def _enqueue(self, rid: int) -> None:
        """Into the central queue in arrival order (a re-queued request goes before later ones)."""
        t = (self.records[rid].arrival_s, rid)
        if not self.queue or (self.records[self.queue[-1]].arrival_s, self.queue[-1]) < t:
            self.queue.append(rid)
            return
        items = list(self.queue)
        at = next(i for i, q in enumerate(items) if (self.records[q].arrival_s, q) > t)
        items.insert(at, rid)
        self.queue = deque(items)

    def _iteration_done(self, ev: IterationDone, out: list) -> None:
        rep = self.replicas.get(ev.replica)
        if rep is None or ev.iteration not in rep.in_flight:
            return   # it died with its replica (a device failure): its requests were re-queued
        self._touched.add(rep.name)
        it = rep.in_flight.pop(ev.iteration)
        for rid, tokens, cached in it.prefill:
            rec = self.records[rid]
            if rec.rejected:
                continue
            if cached == 0:
                if rec.prefill_start_s is None:   # a re-queued request keeps its first wait
                    rec.prefill_start_s = ev.started_s
                rec.prefill_replica = rep.name
            if cached + tokens < rec.prefill_tokens:
                continue   # a chunk: more of the prompt to come
            self.issued.pop(rid, None)
            if rec.first_token_s is None:
                rec.first_token_s = ev.time_s
            rec.token(ev.time_s)
            if rec.done:
                rep.free(rid)
                out.append(FreeKV(rid, rep.name))
                rep.promised.pop(rid, None)
            elif self._decodes_here(rep, rid):
                rec.decode_replica = rep.name
                rep.decoding.append(rid)
            elif rid in self.bound:   # its KV has been streaming to this decoder already
                dst = self.bound.pop(rid)
                self.moving[rid] = (rep.name, dst)
                out.append(MoveKV(rid, rep.name, dst, rec.prefill_tokens, streamed=True))
            else:
                self.handoffs.append((rid, rep.name))
        for rid, _ in it.decode:
            rec = self.records[rid]
            if rec.rejected:
                continue
            rec.token(ev.time_s)
            if rec.done:
                rep.decoding.remove(rid)
                rep.free(rid)
                rep.promised.pop(rid, None)
                out.append(FreeKV(rid, rep.name))
        self._maybe_return_to_pool(rep)

    def _handoff_done(self, ev: HandoffDone, out: list) -> None:
        if self.moving.get(ev.request) != (ev.src, ev.dst):
            return   # it died with a replica (a device failure): the request was re-queued
        src, dst = self.moving.pop(ev.request)
        self._touched |= {src, dst}
        rec = self.records[ev.request]
        rec.handoff_s = ev.time_s - ev.started_s
        s, d = self.replicas[src], self.replicas[dst]
        s.free(ev.request)
        s.promised.pop(ev.request, None)
        out.append(FreeKV(ev.request, src))
        if rec.rejected:
            return
        d.decoding.append(ev.request)
        self._maybe_return_to_pool(s)

    def _device_failed(self, ev: DeviceFailed, out: list) -> None:
        """Lose the replica(s) on the device; every request with work or KV there is re-queued
        (:meth:`_restart`); with re-planning on, ask for a plan of the devices left."""
        if ev.device not in self.up:
            return   # told twice, or a device that was not up
        self.up.discard(ev.device)
        self.marks.append((ev.time_s, "failure", ev.device))
        hit = [rep for rep in self.replicas.values() if not rep.failed and ev.device in rep.devices]
        if self.loading is not None and ev.device in self.loading.devices:
            self.loading.failed = True   # it is dropped when its load is reported
        if not hit and self.loading is None:
            return   # an idle device: nothing to recover, the next plan will not count on it
        lost: set = set()
        for rep in hit:
            rep.failed = True
            lost |= set(rep.prompts) | set(rep.decoding) | set(rep.promised)
            lost |= {r for it in rep.in_flight.values() for r, *_ in it.prefill + it.decode}
            lost |= {r for r, src in self.handoffs if src == rep.name}
            lost |= {r for r, (a, b) in self.moving.items() if rep.name in (a, b)}
            lost |= {r for r, dst in self.bound.items() if dst == rep.name}
            lost |= {r for r, dst in self.decoder_of.items() if dst == rep.name}
            lost |= set(rep.ledgers[0].kv_tokens)
            rep.prompts.clear()
            rep.decoding.clear()
            rep.in_flight.clear()
            rep.promised.clear()
            for rid in list(rep.ledgers[0].kv_tokens):   # its KV died with it
                rep.free(rid)
        self.handoffs = deque(h for h in self.handoffs if h[0] not in lost)
        self._abort_rollout()
        self._ask_replan("failure", out)   # first: what cannot be served now waits for it
        for rid in sorted(lost, key=lambda r: (self.records[r].arrival_s, r)):
            self._restart(rid, out)
        # queued requests that only the lost replica could hold: re-route them
        for rid in list(self.queue):
            rec = self.records[rid]
            if self._never_fits(rec) or self._prefill_home(rec) is None:
                self.queue.remove(rid)
                self._route(rec, out)

    def _restart(self, rid: int, out: list) -> None:
        """Re-queue ``rid`` after a failure (or an eviction): whatever it holds is freed; its next
        prefill computes its prompt plus the tokens it has produced (the text goes on as if
        nothing had happened); its arrival time, first wait and first token are kept."""
        rec = self.records[rid]
        for other in self.replicas.values():
            if other.failed:
                continue
            if other.reserved(rid):
                other.free(rid)
                out.append(FreeKV(rid, other.name))
            if rid in other.decoding:
                other.decoding.remove(rid)
            if rid in other.prompts:
                other.prompts.remove(rid)
            other.promised.pop(rid, None)
            self._touched.add(other.name)
        self.moving.pop(rid, None)
        self.bound.pop(rid, None)
        self.issued.pop(rid, None)
        self.decoder_of.pop(rid, None)
        self.handoffs = deque(h for h in self.handoffs if h[0] != rid)
        if rid in self.queue:
            self.queue.remove(rid)
        if rec.done or rec.rejected:
            return
        rec.redo = rec.tokens
        rec.restarts += 1
        self._route(rec, out)

    def _device_joined(self, ev: DeviceJoined, out: list) -> None:
        if ev.device not in self.cluster.names:
            raise ValueError(f"device {ev.device!r} joined but is not in cluster {self.cluster.name!r}")
        if ev.device in self.up:
            return
        self.up.add(ev.device)
        self.marks.append((ev.time_s, "join", ev.device))
        self._ask_replan("join", out)

    def _check_workload(self, out: list) -> None:
        """``adapt``: ask for a re-plan when the newest arrivals shifted away from those the
        current plan was made for, or (after the cooldown) the window drifted from its figures."""
        cfg = self.adapt
        if (cfg is None or not self.window.full or self.arrivals % cfg.check_every
                or self._changing()):
            return
        since = self.arrivals - self.basis_start      # arrivals since the plan's basis began
        items = list(self.window.items)
        shifted = newest_differ(items[-since:] if since < len(items) else items, cfg.newest, cfg.shift_t)
        if shifted or (self.arrivals >= self.cooldown_until
                       and drift(self.window.stats(), *self.planned) > cfg.drift):
            self.cooldown_until = self.arrivals + cfg.cooldown
            window = self.window.stats(cfg.newest) if shifted else self.window.stats()
            self._ask_replan("workload", out, window, shifted)

    def _changing(self) -> bool:
        """A re-plan or a rolling change is under way."""
        return bool(self.replanning is not None or self.loading is not None or self.rollout
                    or self.retire)

    def _ask_replan(self, reason: str, out: list, window=None, shifted: bool = False) -> None:
        """Ask the planner for a plan for the devices up and ``window`` (default: the whole
        window once it is full, else the plan's own workload; ``shifted``: it holds the newest
        arrivals after a shift)."""
        if not self.replan:
            return
        if self.replanning is not None:
            self.again = self.again or reason   # asked again once the outstanding one answers
            return
        if window is None and self.window.full:
            window = self.window.stats()
        self.asked_for = window
        rate = window.rate_rps if window is not None and math.isfinite(window.rate_rps) \
            else self.plan.rate
        self.replanning = len(self.replans) + 1
        self.replans.append({"id": self.replanning, "reason": reason, "asked_s": self._now,
                             "devices": sorted(self.up), "rate_rps": rate,
                             "arrivals": window.n if window is not None else 0, "shifted": shifted,
                             "basis_start": self.arrivals - (window.n if window is not None else 0)})
        self.marks.append((self._now, "replan", reason))
        out.append(Replan(self.replanning, reason, tuple(sorted(self.up)), self.plan, window, rate))

    def _plan_ready(self, ev: PlanReady, out: list) -> None:
        if ev.replan != self.replanning:
            return   # an answer nobody waits for any more
        self.replanning = None
        log = self.replans[ev.replan - 1]
        log.update(ready_s=ev.time_s, planning_s=ev.planning_s, predicted_s=ev.predicted_s,
                   current_s=ev.current_s, error=ev.error)
        if self.again:   # the devices changed while it planned: plan again for the new set
            reason, self.again = self.again, ""
            log["adopted"] = False
            log["why"] = "superseded: the devices changed while it planned"
            self._ask_replan(reason, out)
            return
        if log["reason"] == "workload" and self.asked_for is not None:
            w = self.asked_for
            self.planned = (w.rate_rps, w.mean_prompt, w.mean_output)
            self.basis_start = log["basis_start"]
        broken = any(r.failed for r in self.replicas.values()) or not any(
            r.accepting for r in self.replicas.values())
        if ev.plan is None:
            log["adopted"] = False
            log["why"] = ev.error or "no plan"
            if not any(r.accepting for r in self.replicas.values()):
                self._stop(f"the service stopped: {ev.error or 'no plan for the devices left'}", out)
            else:   # the survivors go on; what they cannot serve is reported
                for rid in self.parked:
                    rec = self.records[rid]
                    self._reject(rec, f"{self._never_fits(rec)} (re-planning failed: {ev.error})", out)
                self.parked = []
            return
        gain = self.adapt.gain if self.adapt is not None else 0.0
        adopt = broken or worth_adopting(ev.current_s, ev.predicted_s, gain)
        log["adopted"] = adopt
        log["roles"] = ev.plan.roles()
        log["why"] = ("the current plan lost a replica" if broken else
                      f"predicted waiting {ev.current_s:.4g} s -> {ev.predicted_s:.4g} s"
                      + ("" if adopt else f": not more than {gain:.0%} better"))
        self.marks.append((ev.time_s, "plan", "adopted" if adopt else "kept"))
        if adopt:
            self.plan = ev.plan
            self._start_rollout(ev.plan)
        else:
            self._unpark(out)

    def _switch_plan(self, ev: SwitchPlan, out: list) -> None:
        """Roll ``ev.plan`` in (checked against the cluster and the devices up) in place of the
        current plan; a rolling change under way gives way to it."""
        ev.plan.validate(self.cluster)
        down = sorted(set(ev.plan.used_devices) - self.up)
        if down:
            raise ConfigError(f"cannot switch to a plan on device(s) that are not up: {', '.join(down)}")
        if self.rollout or self.retire:
            self._abort_rollout()
        self.plan = ev.plan
        self.planned = _planned_for(ev.plan)
        self.marks.append((ev.time_s, "plan", "switched"))
        self._start_rollout(ev.plan)

    def _stop(self, why: str, out: list) -> None:
        """Nothing can serve any more: every unfinished request is rejected with ``why``."""
        self.stopped = why
        self.marks.append((self._now, "stopped", why))
        for rec in self.records.values():
            if not rec.done and not rec.rejected:
                self._reject(rec, why, out)
        self.parked = []
        self.queue.clear()

    def _unpark(self, out: list) -> None:
        parked, self.parked = self.parked, []
        for rid in sorted(parked, key=lambda r: (self.records[r].arrival_s, r)):
            if not self.records[rid].rejected:
                self._route(self.records[rid], out)

    # ---- rolling a new plan in: one replica at a time -----------------------------------------
    def _start_rollout(self, plan) -> None:
        """Replicas of ``plan`` equal to a live one (devices, layers, role, batch) stay as they
        are; the others are loaded one at a time, each once the old replicas on its devices have
        drained (finished what they hold, taking nothing new) and been taken off; old replicas
        left over are drained and taken off last."""
        self.generation += 1
        live = {(r.stages, r.role, r.batch): r.name for r in self.replicas.values() if not r.failed}
        kept = set()
        self.rollout = deque()
        for r in plan.replicas:
            key = (tuple(tuple(x) for x in r.stages), r.role, max(1, r.batch))
            if key in live and live[key] not in kept:
                kept.add(live[key])
            else:
                self.rollout.append(r)
        self.retire = {r.name for r in self.replicas.values() if r.name not in kept}
        self.marks.append((self._now, "rollout", f"{len(self.rollout)} to load, {len(kept)} kept"))

    def _abort_rollout(self) -> None:
        """A device failed during a rolling change: what is loaded stays, draining replicas serve
        again, the rest waits for the next plan."""
        self.rollout.clear()
        for name in self.retire:
            rep = self.replicas.get(name)
            if rep is not None and not rep.failed:
                rep.draining = False
                self._touched.add(name)
        self.retire = set()

    def _empty(self, rep: ReplicaState) -> bool:
        return not (rep.in_flight or rep.decoding or rep.prompts or rep.ledgers[0].kv_tokens
                    or rep.promised or any(src == rep.name for _, src in self.handoffs)
                    or any(rep.name in m for m in self.moving.values()))

    def _drain(self, rep: ReplicaState, out: list) -> None:
        """Take nothing new; prompts not started yet go back to be routed elsewhere."""
        if rep.draining or rep.failed:
            return
        rep.draining = True
        self.marks.append((self._now, "drain", rep.name))
        running = {r for it in rep.in_flight.values() for r, *_ in it.prefill}
        back = [rid for rid in rep.prompts if not self.issued.get(rid) and rid not in running
                and self.decoder_of.get(rid, rep.name) in (rep.name, None)]
        for rid in back:
            rep.prompts.remove(rid)
            if rep.reserved(rid):
                rep.free(rid)
            rep.promised.pop(rid, None)
            for other in self.replicas.values():
                other.promised.pop(rid, None)
                if other.reserved(rid) and other is not rep:
                    other.free(rid)
                    out.append(FreeKV(rid, other.name))
            self.decoder_of.pop(rid, None)
            self._route(self.records[rid], out)

    def _evict(self, rep: ReplicaState, out: list) -> None:
        """A draining replica that stands in the way of the next one to load gives up what it
        holds once its iterations in flight are back: every such request is re-queued as after a
        failure (:meth:`_restart`: its prompt + the tokens it produced are re-prefilled
        elsewhere). Waiting for an overloaded replica to work off its backlog could take minutes;
        a re-prefill costs one prefill."""
        if rep.failed:
            return
        busy = {r for it in rep.in_flight.values() for r, *_ in it.prefill + it.decode}
        busy |= {r for r, (a, b) in self.moving.items() if rep.name in (a, b)}
        busy |= {r for r, dst in self.bound.items() if dst == rep.name}
        held = set(rep.decoding) | set(rep.prompts) | set(rep.ledgers[0].kv_tokens) | set(rep.promised)
        held |= {r for r, src in self.handoffs if src == rep.name}
        victims = sorted(held - busy, key=lambda r: (self.records[r].arrival_s, r))
        if victims:
            self.marks.append((self._now, "evict", f"{rep.name}: {len(victims)} request(s)"))
        for rid in victims:
            self._restart(rid, out)

    def _take_off(self, rep: ReplicaState, out: list) -> None:
        del self.replicas[rep.name]
        self.retire.discard(rep.name)
        out.append(UnloadReplica(rep.name))
        self.marks.append((self._now, "unload", rep.name))

    def _advance_rollout(self, out: list) -> None:
        if self.loading is not None or self.replanning is not None:
            return
        while self.rollout:
            gone = [r for r in self.rollout if not set(r.devices) <= self.up]
            for r in gone:   # a device went down meanwhile (a re-plan follows)
                self.rollout.remove(r)
            if not self.rollout:
                break
            # next: the replica whose devices hold the fewest live old replicas (service goes on)
            r = min(self.rollout, key=lambda r: sum(1 for rep in self.replicas.values()
                                                      if not rep.failed and set(rep.devices) & set(r.devices)))
            self.rollout.remove(r)
            self.rollout.appendleft(r)
            blockers = [rep for rep in self.replicas.values() if set(rep.devices) & set(r.devices)]
            for b in blockers:
                self._drain(b, out)
                self._evict(b, out)
            if any(not b.failed and not self._empty(b) for b in blockers):
                return
            for b in blockers:
                self._take_off(b, out)
            self.rollout.popleft()
            self.loading = self._state(f"g{self.generation}-{r.name}", r)
            self.marks.append((self._now, "load", self.loading.name))
            out.append(LoadReplica(self.loading.name, r))
            return
        for name in sorted(self.retire):   # left over: drain, then take off
            rep = self.replicas.get(name)
            if rep is None:
                self.retire.discard(name)
                continue
            self._drain(rep, out)
            if rep.failed or self._empty(rep):
                self._take_off(rep, out)
        if self.parked and not self._changing():
            self._unpark(out)   # the change is done: served now, or rejected with the reason

    def _replica_loaded(self, ev: ReplicaLoaded, out: list) -> None:
        rep = self.loading
        if rep is None or rep.name != ev.replica:
            return
        self.loading = None
        self.marks.append((ev.time_s, "loaded", rep.name))
        if rep.failed or not set(rep.devices) <= self.up:
            out.append(UnloadReplica(rep.name))
            return
        self.replicas[rep.name] = rep
        self._touched.add(rep.name)
        self._unpark(out)

    # ---- decisions ---------------------------------------------------------------------------
    def _prefill_home(self, req):
        """A prefill-capable replica that could hold ``req``'s prompt at all (empty), or None."""
        total = req.prompt_tokens + req.output_tokens
        for r in self.replicas.values():
            if not r.accepting or not self._prefill_capable(r):
                continue
            if (self._fits_empty(r, total, 1 + r.batch, 1 + r.batch) if r.role == "both"
                    else self._fits_empty(r, req.prefill_tokens, 1, 1)):
                return r
        return None

    def _decodes_here(self, rep: ReplicaState, rid: int) -> bool:
        if rid in self.decoder_of:
            return self.decoder_of[rid] == rep.name
        return rep.role == "both"

    def _dispatch(self, out: list) -> None:
        """Start every hand-off and iteration that can start now."""
        self._start_handoffs(out)
        if self.policy == "e2llm":
            self._feed_from_queue(out)
        for name in sorted(self._touched):   # only a replica whose state changed can start more
            rep = self.replicas.get(name)
            if rep is not None and not rep.failed:
                self._start_iterations(rep, out)

    def _start_handoffs(self, out: list) -> None:
        waiting = deque()
        while self.handoffs:
            rid, src = self.handoffs.popleft()
            rec = self.records[rid]
            need = rec.prompt_tokens + rec.output_tokens
            dst = self._pick_decoder(rid, need, src)
            if dst is None:
                if self.policy == "e2llm":   # FIFO: later ones wait behind the head
                    self.handoffs.appendleft((rid, src))
                    self.handoffs.extendleft(reversed(waiting))
                    return
                waiting.append((rid, src))
                continue
            dst.reserve(rid, need)
            self.moving[rid] = (src, dst.name)
            rec.decode_replica = dst.name
            out.append(MoveKV(rid, src, dst.name, rec.prefill_tokens))
        self.handoffs = waiting

    def _bind_decoder(self, rep: ReplicaState, rid: int) -> None:
        """``stream_kv``: choose (and reserve) the decoder as the prompt's prefill starts, so its
        KV can stream there layer by layer; if none has room now, it is handed off afterwards."""
        rec = self.records[rid]
        if rec.output_tokens - rec.redo == 1 or self._decodes_here(rep, rid):
            return
        need = rec.prompt_tokens + rec.output_tokens
        dst = self._pick_decoder(rid, need, rep.name)
        if dst is not None:
            dst.reserve(rid, need)
            self.bound[rid] = dst.name

    def _pick_decoder(self, rid: int, need: int, src: str) -> ReplicaState | None:
        if self.policy == "splitwise":
            dst = self.replicas[self.decoder_of[rid]]
            ok = not dst.failed and dst.room(need, dst.batch, dst.batch)
            return dst if ok else None
        fit = self._decoders_with_room([r for r in self.replicas.values() if r.accepting
                                        and r.name != src], need)
        if not fit:   # during a rolling change: a draining decoder still finishes what is prefilled
            fit = self._decoders_with_room([r for r in self.replicas.values() if r.draining
                                            and not r.failed and r.name != src], need)
        if not fit:
            return None
        return min(fit, key=lambda r: ((r.held() + self._incoming(r)) / r.batch, -r.free_bytes(),
                                       r.name))

    def _decoders_with_room(self, live: list, need: int) -> list:
        pool = [r for r in live if r.role == "decoder"] or [r for r in live if r.role == "both"]
        return [r for r in pool if r.held() + self._incoming(r) < r.batch
                and r.room(need, r.batch, r.batch)]

    def _incoming(self, rep: ReplicaState) -> int:
        return (sum(1 for _, dst in self.moving.values() if dst == rep.name)
                + sum(1 for dst in self.bound.values() if dst == rep.name))

    def _expected_done_s(self, rep: ReplicaState) -> float:
        """When a prompt given to ``rep`` now would be done, from the plan's figures: one prefill
        period per iteration already in flight, then the trip."""
        return len(rep.in_flight) * rep.period_s + rep.trip_s

    def _feed_from_queue(self, out: list) -> None:
        """E2LLM: while prompts wait and a prefill-capable replica has room for an iteration, give
        the head of the queue to the one that would finish it first (module docstring)."""
        while self.queue:
            free = [r for r in self.replicas.values() if r.accepting and self._prefill_capable(r)
                    and not r.prompts and len(r.in_flight) < self._slots(r)]
            for rep in sorted(free, key=lambda r: (self._expected_done_s(r), r.name)):
                if self._take_prompts(rep):
                    self._start_iterations(rep, out)
                    break
            else:
                return   # nobody can take the head now

    def _take_prompts(self, rep: ReplicaState) -> bool:
        """Move prompts from the queue's head to ``rep`` for one iteration: FIFO, within the token
        budget (the first always), each with room for its KV. True if it took any."""
        budget = self.max_batch_tokens
        taken = 0
        while self.queue:
            rid = self.queue[0]
            rec = self.records[rid]
            p = rec.prefill_tokens
            if rep.prompts and p > budget:
                break
            step, rows = taken + p, len(rep.prompts) + 1
            if rep.role == "both":   # its decode batch may share the iteration
                kv, step, rows = rec.prompt_tokens + rec.output_tokens, step + rep.batch, rows + rep.batch
                if rep.held() + len(rep.prompts) + 1 > rep.batch:
                    break
            else:
                kv = p
            if not rep.room(kv, step, rows):
                if rep.prompts or not rep.room(kv, step - p + 1, rows):
                    break
                rep.reserve(rid, kv)   # alone: it will be prefilled in chunks (see _compose)
                self.queue.popleft()
                rep.prompts.append(rid)
                break
            self.queue.popleft()
            rep.reserve(rid, kv)
            rep.prompts.append(rid)
            taken += p
            budget -= p
            if budget <= 0:
                break
        return bool(rep.prompts)

    def _chunk(self, rep: ReplicaState, kv: int, others: int, rows: int, most: int) -> int:
        """The largest prompt chunk (<= ``most`` tokens) whose step, on top of ``others`` tokens,
        fits ``rep`` with ``kv`` more tokens of KV reserved; 0 if not even one token does."""
        lo, hi = 0, most
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if rep.room(kv, others + mid, rows):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _slots(self, rep: ReplicaState) -> int:
        """Iterations that may be in flight: one per stage for prompt-only work; with sequences
        to decode, ``decode_microbatches`` (at most one per stage), else one."""
        prompt_only = rep.role == "prefill" and (self.policy == "e2llm" or rep.pool == "prompt")
        if prompt_only and not rep.decoding:
            return rep.depth
        return min(self.microbatches, rep.depth) if rep.decoding else 1

    def _start_iterations(self, rep: ReplicaState, out: list) -> None:
        while len(rep.in_flight) < self._slots(rep):
            it = self._compose(rep)
            if it is None:
                return
            rep.in_flight[it.iteration] = it
            out.append(it)

    def _compose(self, rep: ReplicaState) -> RunIteration | None:
        """The next iteration of ``rep`` (module docstring), or None if it has nothing to do.

        Memory is checked for the iteration as composed: the KV reserved, the new prompts' KV and
        the working memory of all its tokens (its decode tokens counted first); a prompt whose
        step does not fit goes in the largest chunk that does (or waits, FIFO)."""
        if not rep.prompts and not rep.decoding:
            return None
        if rep.in_flight:
            busy = {r for it in rep.in_flight.values() for r, _ in it.decode}
            ready = [rid for rid in rep.decoding if rid not in busy][:rep.batch]
        else:
            ready = rep.decoding[:rep.batch]
        if self.microbatches > 1:   # a share of the sequences, so the next micro-batch has some
            ready = ready[:-(-min(len(rep.decoding), rep.batch) // min(self.microbatches, rep.depth))]
        d = len(ready)
        budget = self.max_batch_tokens
        taken = 0
        prefill: list = []
        while rep.prompts:
            rid = rep.prompts[0]
            rec = self.records[rid]
            done = self.issued.get(rid, 0)
            left = rec.prefill_tokens - done
            if prefill and left > budget:
                break
            rows = d + len(prefill) + 1
            if not rep.reserved(rid):   # splitwise, or e2llm's fallback to a decoder
                kv = rec.prefill_tokens + (rec.output_tokens - rec.redo if self._decodes_here(rep, rid)
                                           else 0)
                if not rep.room(kv, taken + d + 1, rows):
                    break   # blocked until memory frees (FIFO)
                rep.reserve(rid, kv)
            n = left if rep.room(0, taken + d + left, rows) else (
                0 if prefill else self._chunk(rep, 0, taken + d, rows, left))
            if n < 1:
                break
            if done == 0 and self.stream_kv:
                self._bind_decoder(rep, rid)
            prefill.append((rid, n, done))
            taken += n
            if n < left:   # a chunk: the rest goes in later iterations
                self.issued[rid] = done + n
                break
            rep.prompts.popleft()
            budget -= n
            if budget <= 0:
                break
        decode = [(rid, self.records[rid].prompt_tokens + self.records[rid].tokens - 1)
                  for rid in ready[:max(0, budget)]]
        if not prefill and not decode:
            return None
        self._iteration += 1
        return RunIteration(rep.name, self._iteration, tuple(prefill), tuple(decode))

    # ---- Splitwise's pools ---------------------------------------------------------------------
    def _pools(self, name: str) -> list[ReplicaState]:
        return [r for r in self.replicas.values() if r.pool == name and r.accepting]

    def _pending_tokens(self, rep: ReplicaState) -> int:
        """splitwise-sim's ``sched_pending_tokens``: prompt tokens queued or computing, + one per
        sequence decoding."""
        queued = sum(self.records[r].prefill_tokens for r in rep.prompts)
        running = sum(t for it in rep.in_flight.values() for _, t, _ in it.prefill)
        return queued + running + len(rep.decoding)

    def _scheduled_bytes(self, rep: ReplicaState, extra: int) -> bool:
        """splitwise-sim's ``is_memory_loaded``: the KV scheduled here + ``extra`` tokens (with the
        decode batch's working memory) would not fit."""
        promised = sum(rep.promised.values())
        return not all(led.need_with(promised + extra, rep.batch, rep.batch) <= led.budget_bytes
                       for led in rep.ledgers)

    def _route_splitwise(self, rec: RequestRecord) -> None:
        """splitwise-sim's ``MixedPoolScheduler.schedule`` (module docstring), among the instances
        that could hold the request at all (empty): ours differ in memory, theirs did not."""
        total, p = rec.prompt_tokens + rec.output_tokens, rec.prefill_tokens

        def can_prompt(r):   # in chunks if need be
            return self._fits_empty(r, p, 1, 1)

        def can_token(r):
            return self._fits_empty(r, total, r.batch, r.batch)

        def can_both(r):
            return self._fits_empty(r, total, 1 + r.batch, 1 + r.batch)

        prompt = token = None
        for pool in ("prompt", "mixed"):
            cands = [r for r in self._pools(pool) if can_prompt(r)]
            if cands:
                best = min(cands, key=lambda r: (self._pending_tokens(r), r.name))
                long = best.prompts and (self._pending_tokens(best) + p
                                         > self.prompt_max_pending_tokens)
                if not long:
                    prompt = best
                    break
        for pool in ("token", "mixed"):
            cands = [r for r in self._pools(pool) if can_token(r)]
            if cands:
                best = min(cands, key=lambda r: (sum(r.promised.values()), r.name))
                if not self._scheduled_bytes(best, total):
                    token = best
                    break
        lend = [r for r in self._pools("token") if can_prompt(r)]
        if prompt is None and lend:
            prompt = min(lend, key=lambda r: (self._pending_tokens(r), r.name))
            prompt.pool = "mixed"
        lend = [r for r in self._pools("prompt") if can_token(r)]
        if token is None and lend:
            token = min(lend, key=lambda r: (sum(r.promised.values()), r.name))
            token.pool = "mixed"
        if prompt is None or token is None:
            every = [r for r in self.replicas.values() if r.accepting and can_both(r)]
            prompt = token = min(every, key=lambda r: (self._pending_tokens(r), r.name))
        if rec.output_tokens - rec.redo == 1:
            token = prompt
        self.decoder_of[rec.id] = token.name
        token.promised[rec.id] = total
        if prompt is not token:
            prompt.promised[rec.id] = p
        prompt.prompts.append(rec.id)
        self._touched.add(prompt.name)

    def _maybe_return_to_pool(self, rep: ReplicaState) -> None:
        """splitwise-sim's ``notify_free_instance``: a mixed instance with no work left goes back
        to its own pool."""
        if self.policy != "splitwise" or rep.pool != "mixed" or rep.role == "both":
            return
        if not (rep.prompts or rep.decoding or rep.in_flight or rep.promised):
            rep.pool = "prompt" if rep.role == "prefill" else "token"


def _planned_for(plan) -> tuple:
    """What ``plan`` was made for: (rate requests/s, mean prompt, mean output tokens)."""
    return plan.rate, plan.workload.mean_prompt, plan.workload.mean_output


#: Each event type and the Scheduler method that takes it.
_HANDLERS = {Arrival: "_arrival", IterationDone: "_iteration_done", HandoffDone: "_handoff_done",
             DeviceFailed: "_device_failed", DeviceJoined: "_device_joined",
             PlanReady: "_plan_ready", ReplicaLoaded: "_replica_loaded", SwitchPlan: "_switch_plan"}
