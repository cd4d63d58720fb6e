"""A replica on the emulated devices: its stages in order, and the operations it runs.

Every operation has an asynchronous form that returns at once — :meth:`Pipeline.submit` (a
prompt, or one decode step of one request), :meth:`Pipeline.submit_decode` (one decode step of a
batch) — whose :class:`~e2llm_lite.runtime.ops.Completion` comes from
:meth:`~e2llm_lite.runtime.driver.EmulatedCluster.poll`, and a blocking form built on the same
messages (:meth:`Pipeline.forward`, :meth:`Pipeline.decode`, :meth:`Pipeline.generate`). Any
number of operations may be in flight: each worker works through what it has received in
delivery order, so a pipeline of S stages works on S of them at once.
"""

from __future__ import annotations

from dataclasses import dataclass
import torch

from ..errors import E2LLMError
from ..generation import Generation, greedy_decode
from .protocol import Op

__all__ = ["Pipeline", "StagePlacement"]


@dataclass(frozen=True)
class StagePlacement:
    """Layers [start, end) on the device named ``device``."""

    device: str
    start: int
    end: int


def _phase_code(phase: str) -> int:
    if phase not in ("prefill", "decode"):
        raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
    return int(phase == "decode")


class Pipeline:
    """A replica: devices holding contiguous layer ranges in order, with KV kept on the devices.
    ``runtime``: the :class:`~e2llm_lite.runtime.driver.EmulatedCluster` it runs on; ``role`` and
    ``batch``: a plan's replica's role and decode batch (see ``load_plan``)."""

    def __init__(self, runtime, stages: list[StagePlacement], ranks: list[int],
                 name: str, role: str = "both", batch: int = 1):
        self.runtime, self.stages, self.ranks, self.name = runtime, stages, ranks, name
        self.role, self.batch = role, batch

    @property
    def devices(self) -> list[str]:
        return [s.device for s in self.stages]

    def release(self) -> None:
        """Forget this placement: its devices may then hold another pipeline's layers."""
        for d in self.devices:
            self.runtime.placements.pop(d, None)

    # ---- asynchronous --------------------------------------------------------------------------
    def submit(self, ids: list[int], request: int, phase: str = "prefill",
               logits: bool = False, op: int | None = None) -> int:
        """Start a forward of token ids (a prompt, a chunk of one, or one decode token) of
        ``request`` through every stage and return its operation id at once: ``op`` if given
        (a fresh :meth:`EmulatedCluster.new_op`: late replies of an earlier, failed operation
        of the same request can never be taken for this one's), else ``request``. One operation
        per id may be in flight."""
        code = _phase_code(phase)
        rt = self.runtime
        opid = request if op is None else int(op)
        rt._register(opid, phase, self.name, [request], logits=logits, stages=len(self.ranks),
                     ranks=self.ranks)
        try:
            rt._send(self.ranks[0], Op.FWD, request=request, a=len(ids), b=int(logits), d=code,
                     e=opid, payload=torch.tensor([ids], dtype=torch.int64))
        except BaseException:
            rt._unregister(opid)
            raise
        return opid

    def submit_decode(self, tokens: dict, logits: bool = False) -> int:
        """Start one batched decode step for several requests at once (``{request: last token}``,
        each request's KV already on this pipeline, contexts of any lengths) and return its
        operation id at once; the completion (``tokens``: request -> next greedy token, and
        ``logits`` ``[B, 1, vocab]`` if asked for) comes from ``poll``. Every device accounts
        the whole batch's memory before it computes (DeviceOOM otherwise, nothing done)."""
        if not tokens:
            raise ValueError("a decode batch needs at least one request")
        rt = self.runtime
        ids = [int(r) for r in tokens]
        batch = rt.new_op()
        rt._register(batch, "batch", self.name, ids, logits=logits, stages=len(self.ranks),
                     ranks=self.ranks)
        try:
            rt._send(self.ranks[0], Op.BATCH, request=batch, payload=torch.tensor(ids, dtype=torch.int64))
            rt._send(self.ranks[0], Op.FWD, request=batch, a=len(ids), b=int(logits), c=1, d=1,
                     e=batch, payload=torch.tensor([[int(tokens[r])] for r in ids], dtype=torch.int64))
        except BaseException:
            rt._unregister(batch)
            raise
        return batch

    # ---- blocking ------------------------------------------------------------------------------
    def decode(self, tokens: dict) -> dict:
        """One batched decode step, blocking: ``{request: last token}`` -> ``{request: next}``."""
        done = self.runtime.wait(self.submit_decode(tokens))
        if done.error is not None:
            raise done.error
        return done.tokens

    def forward(self, ids: list[int], request: int = 0, phase: str = "prefill",
                logits: bool = True) -> "torch.Tensor | int":
        """Run token ids through every stage and wait.

        Returns the last position's logits ``[1, 1, vocab]``, or with ``logits=False`` only the
        greedy token (the last device takes the argmax and sends 8 bytes instead of 196 KB).
        Safe to call from several threads at once (distinct requests).
        """
        code = _phase_code(phase)
        rt = self.runtime
        q = rt.dispatch.expect(request)
        try:
            rt._send(self.ranks[0], Op.FWD, request=request, a=len(ids), b=int(logits), d=code,
                     e=request, payload=torch.tensor([ids], dtype=torch.int64))
            msg = rt._take(q, ranks=self.ranks)
            while msg.op == Op.STEP:   # the devices' step reports: not wanted here
                msg = rt._take(q, ranks=self.ranks)
        finally:
            rt.dispatch.done(request)
        if msg.op == Op.ERROR:
            rt._raise(msg)
        return msg.payload.reshape(1, 1, -1) if logits else msg.a

    def generate(self, prompt_ids, max_new_tokens: int, stop_ids=(), request: int = 0,
                 free: bool = True) -> Generation:
        """Greedy generation through the pipeline (prefill at prefill speed, then decode)."""
        calls = [0]

        def forward(ids):
            phase = "prefill" if calls[0] == 0 else "decode"
            calls[0] += 1
            return self.forward(ids, request, phase, logits=False)

        try:
            return greedy_decode(forward, prompt_ids, max_new_tokens, stop_ids)
        finally:
            if free and not self.runtime._stopped:
                try:
                    self.runtime.free(request)
                except E2LLMError:
                    pass
