"""The driver's asynchronous operations: what is outstanding, and the :class:`Completion` each
one ends with.

An operation is a forward (a prompt or one decode step of one request: its id is the request's),
a batched decode step, a KV hand-off or a free (ids handed out by the driver, far above any
request id). Every message that belongs to one is filed under its id by the
:class:`~e2llm_lite.runtime.dispatch.Dispatcher`; :meth:`Operations.collect` folds them in:

* ``STEP`` — one device's timed step of it: its interval and the bytes it sent on;
* ``RESULT`` — the last stage's tokens (and logits) back at the driver: the forward is done;
* ``ACK`` — one piece of a KV hand-off stored at its destination, or one device's free: the
  operation is done when every piece / device has answered;
* ``ERROR`` — the operation failed (the first error ends it; later replies are ignored).

Times in a completion are **device time** in seconds since the cluster started, on the driver's
clock (every worker reports on it): wall time / dilation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from ..errors import WorkerDied
from ..model import ANATOMY
from .protocol import Message, Op

__all__ = ["Completion", "Operations"]


@dataclass
class Completion:
    """An operation that ended (:meth:`EmulatedCluster.poll`).

    request: the operation's id (a forward's: its request; a batch, hand-off or free: the id
        ``submit_*`` returned).
    kind: ``"prefill"``, ``"decode"``, ``"batch"`` (a batched decode step), ``"kv"``, ``"free"``,
        ``"load"`` (a replica's layers loaded: :meth:`EmulatedCluster.submit_load`), or
        ``"died"``: not an operation but the news that a device's worker died (``pipeline`` is
        the device's name, ``error`` the WorkerDied, ``end_s`` when it was detected; it comes
        before the failed completions of the operations that touched the device).
    requests: the request ids it concerns (a batch's members; the hand-off's or free's request).
    token / tokens: the greedy next token (a forward) / request -> next token (a batch).
    logits: ``[1, 1, vocab]`` (a forward) or ``[B, 1, vocab]`` (a batch, in ``requests`` order),
        if asked for.
    error: why it failed (WorkerDied, DeviceOOM, ValueError ... naming the device), else None.
    started_s, end_s: device s since the cluster started: when its first device began computing
        (a hand-off: when it was submitted) and when its result was back at the driver.
    devices: device -> (start_s, end_s) of its step there (device s).
    bytes: bytes it put on the wire between devices (hidden states, tokens, KV pieces).
    overruns: its steps that overran their target (see :mod:`~e2llm_lite.runtime.throttle`).
    """

    request: int
    pipeline: str
    token: int | None = None
    logits: "torch.Tensor | None" = None
    error: BaseException | None = None
    tokens: dict | None = None
    kind: str = "prefill"
    requests: tuple = ()
    started_s: float | None = None
    end_s: float | None = None
    devices: dict = field(default_factory=dict)
    bytes: int = 0
    overruns: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Op:
    kind: str
    pipeline: str
    requests: tuple
    logits: bool = False
    expect: int = 0            # ACKs that end it (a hand-off's pieces, a free's devices)
    submitted_s: float = 0.0
    steps: dict = field(default_factory=dict)   # device -> (start_s, end_s)
    bytes: int = 0
    overruns: int = 0
    acks: int = 0
    stages: int = 0            # STEP reports to expect (a forward or batch: its pipeline's stages)
    ranks: frozenset = frozenset()   # the workers it involves (it fails if one of them dies)
    result: Message | None = None   # a RESULT back before every STEP report: held (see collect)
    held_since: float = 0.0


class Operations:
    """The outstanding operations of one cluster (thread-safe enough for one poller: the
    dispatcher's queues carry the messages; only the poller's thread calls :meth:`collect`).

    device_name: rank -> device name; device_s: driver-clock us -> device s since the start;
    error_of: (an ERROR message, the ranks its operation involves) -> the exception it stands for.
    """

    def __init__(self, device_name, device_s, error_of):
        self.device_name, self.device_s, self.error_of = device_name, device_s, error_of
        self.ops: dict[int, _Op] = {}

    #: How long a RESULT waits for STEP reports still on their way (wall s): each device sends its
    #: report before its output, but reports from different devices travel separately.
    HOLD_S = 1.0

    def add(self, opid: int, kind: str, pipeline: str, requests, *, logits: bool = False,
            expect: int = 0, stages: int = 0, ranks=()) -> None:
        self.ops[opid] = _Op(kind, pipeline, tuple(int(r) for r in requests), logits, expect,
                             self.device_s(time.monotonic() * 1e6), stages=stages,
                             ranks=frozenset(ranks))

    def __contains__(self, opid: int) -> bool:
        return opid in self.ops

    def collect(self, opid: int, msg: Message) -> Completion | None:
        """Fold one message of operation ``opid`` in; returns its completion when it ends."""
        op = self.ops.get(opid)
        if op is None:
            return None   # a late reply of an operation that already ended (after an error)
        if msg.op == Op.STEP:
            op.steps[self.device_name(msg.src)] = (self.device_s(msg.a), self.device_s(msg.b))
            op.bytes += msg.c
            op.overruns += msg.d >> 1
            if op.result is not None and len(op.steps) >= op.stages:
                return self._result(opid, op, op.result)
            return None
        arrived = self.device_s((msg.arrived or time.monotonic()) * 1e6)
        if msg.op == Op.ERROR:
            return self._end(opid, arrived, error=self.error_of(msg, op.ranks))
        if msg.op == Op.ACK:
            op.acks += 1
            if msg.a == Op.KV_PUT:
                op.bytes += (msg.c - msg.b) * msg.d * ANATOMY.kv_bytes_per_token_layer
            return self._end(opid, arrived) if op.acks >= op.expect else None
        if msg.op == Op.RESULT:
            if len(op.steps) < op.stages:   # a device's report is still on its way: hold it
                op.result, op.held_since = msg, time.monotonic()
                return None
            return self._result(opid, op, msg)
        return None

    def overdue(self) -> list[Completion]:
        """Held results whose missing STEP reports did not come within HOLD_S: ended without
        them (their ``devices`` then lack those devices)."""
        now = time.monotonic()
        return [self._result(opid, op, op.result) for opid, op in list(self.ops.items())
                if op.result is not None and now - op.held_since > self.HOLD_S]

    def _result(self, opid: int, op: _Op, msg: Message) -> Completion:
        arrived = self.device_s((msg.arrived or time.monotonic()) * 1e6)
        if msg.c:   # a batched decode step
            if msg.b:
                logits = msg.payload.reshape(len(op.requests), 1, -1)
                tokens = logits[:, 0].argmax(-1).tolist()
            else:
                logits, tokens = None, msg.payload.tolist()
            return self._end(opid, arrived, tokens=dict(zip(op.requests, tokens)), logits=logits)
        return self._end(opid, arrived, token=msg.a,
                         logits=msg.payload.reshape(1, 1, -1) if op.logits else None)

    def _end(self, opid: int, arrived: float, **kw) -> Completion:
        op = self.ops.pop(opid)
        starts = [s for s, _ in op.steps.values()]
        started = min(starts) if starts else (op.submitted_s if op.kind in ("kv", "free", "load") else None)
        return Completion(opid, op.pipeline, kind=op.kind, requests=op.requests, started_s=started,
                          end_s=arrived, devices=dict(op.steps), bytes=op.bytes,
                          overruns=op.overruns, **kw)

    def fail_all(self, error: BaseException, rank: int | None = None) -> list[Completion]:
        """Every outstanding operation (or, with ``rank``, every one that involves that worker),
        failed with a WorkerDied naming its requests."""
        out = []
        for opid in sorted(self.ops):
            op = self.ops[opid]
            if rank is not None and rank not in op.ranks:
                continue
            what = (f"request {op.requests[0]}" if len(op.requests) == 1
                    else f"requests {list(op.requests)}")
            out.append(self._end(opid, self.device_s(time.monotonic() * 1e6), error=WorkerDied(
                f"{error} — {what} ({op.kind} on {op.pipeline!r}) lost")))
        return out
